//! The attacks of issue #13, each as a regression test against a real master, run as root with
//! throwaway unix users and groups: key files sshd's StrictModes would not trust, key files
//! that hang or exhaust the reader, and a spool whose directories a try-group member swaps for
//! symlinks; listeners flooded with slow, idle or unauthenticated connections, uploads that
//! stall, and connections that open channel after channel. Each test also shows the honest
//! case working, so a refusal is not an accident.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::{
    BIN, MasterSetup, PATIENCE, SLACK, TempAccount, TestKey, TestMaster, current_user, http_client,
    output_with_deadline, run_with_timeout, text, wait_until,
};
use crate::repo::Checkout;

/// What an authenticated login gets for a command the master does not know; a refused key gets
/// ssh's own 255.
const AUTHENTICATED: i32 = 127;
const REFUSED: i32 = 255;

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn chown(path: &Path, account: &TempAccount) {
    nix::unistd::chown(path, Some(account.uid()), Some(account.gid)).expect("chown");
}

fn login(master: &TestMaster, key: &TestKey, user: &str) -> Output {
    master.ssh(key, user, "no-such-command")
}

fn assert_login(output: &Output, expected: i32, master: &TestMaster) {
    assert_eq!(
        output.status.code(),
        Some(expected),
        "stderr: {}\nmaster log:\n{}",
        text(&output.stderr),
        master.log()
    );
}

fn keys_d(master: &TestMaster, user: &str) -> PathBuf {
    master.path().join("authorized_keys.d").join(user)
}

#[test]
fn a_world_writable_authorized_keys_d_file_is_refused() {
    let alice = TempAccount::create("a_world_writable_authorized_keys_d_file_is_refused");
    let master = TestMaster::start();
    let key = TestKey::ed25519(master.keys_dir.path(), "alice");
    master.authorize(&alice.user, &key.public_line);
    assert_login(&login(&master, &key, &alice.user), AUTHENTICATED, &master);

    chmod(&keys_d(&master, &alice.user), 0o666);
    assert_login(&login(&master, &key, &alice.user), REFUSED, &master);
    assert!(
        master
            .log()
            .contains("writable by group or others (mode 0666)"),
        "{}",
        master.log()
    );
}

#[test]
fn a_key_planted_in_a_world_writable_home_is_refused() {
    let victim = TempAccount::create("a_key_planted_in_a_world_writable_home_is_refused");
    let mallory = TempAccount::create("a_key_planted_in_a_world_writable_home_is_refused");
    let homes = tempfile::tempdir().expect("temp dir");
    chmod(homes.path(), 0o755);
    let home = homes.path().join("victim");
    std::fs::create_dir_all(home.join(".ssh")).expect("home");
    chown(&home, &victim);
    chown(&home.join(".ssh"), &victim);
    victim.set_home(&home);
    let mut setup = MasterSetup::default();
    setup.edits.push((
        "authorized_keys = [\"authorized_keys.d/%u\"]",
        "authorized_keys = [\"%h/.ssh/authorized_keys\", \"authorized_keys.d/%u\"]",
    ));
    let master = TestMaster::start_with(setup);
    let key = TestKey::ed25519(master.keys_dir.path(), "mallory");
    let planted = home.join(".ssh/authorized_keys");
    std::fs::write(&planted, format!("{}\n", key.public_line)).expect("planted");
    chmod(&planted, 0o644);

    // The honest set-up first: the victim's own file in a 0755 home lets the key in.
    chown(&planted, &victim);
    chmod(&home, 0o755);
    assert_login(&login(&master, &key, &victim.user), AUTHENTICATED, &master);

    // The attack: a 0777 home, and mallory's file in it.
    chmod(&home, 0o777);
    chown(&planted, &mallory);
    assert_login(&login(&master, &key, &victim.user), REFUSED, &master);
    let log = master.log();
    assert!(
        log.contains(&format!("owned by uid {}", mallory.uid())),
        "{log}"
    );
    // Even mallory's file aside, the home itself is what sshd refuses.
    chown(&planted, &victim);
    assert_login(&login(&master, &key, &victim.user), REFUSED, &master);
    assert!(
        master
            .log()
            .contains("writable by group or others (mode 0777)"),
        "{}",
        master.log()
    );
}

#[test]
fn a_key_file_symlinked_to_a_file_mallory_owns_is_refused() {
    let alice = TempAccount::create("a_key_file_symlinked_to_a_file_mallory_owns_is_refused");
    let mallory = TempAccount::create("a_key_file_symlinked_to_a_file_mallory_owns_is_refused");
    let master = TestMaster::start();
    let key = TestKey::ed25519(master.keys_dir.path(), "mallory");
    let outside = tempfile::tempdir().expect("temp dir");
    let mallorys = outside.path().join("keys");
    std::fs::write(&mallorys, format!("{}\n", key.public_line)).expect("written");
    chown(&mallorys, &mallory);
    std::os::unix::fs::symlink(&mallorys, keys_d(&master, &alice.user)).expect("symlink");
    assert_login(&login(&master, &key, &alice.user), REFUSED, &master);
    assert!(
        master.log().contains("is a symbolic link"),
        "{}",
        master.log()
    );
}

#[test]
fn a_fifo_as_authorized_keys_hangs_neither_ssh_nor_the_web() {
    let bob = TempAccount::create("a_fifo_as_authorized_keys_hangs_neither_ssh_nor_the_web");
    let master = TestMaster::start();
    let key = TestKey::ed25519(master.keys_dir.path(), "bob");
    nix::unistd::mkfifo(
        &keys_d(&master, &bob.user),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .expect("mkfifo");
    // Two attempts as bob froze everything before the fix.
    let attempts: Vec<_> = (0..2)
        .map(|_| {
            let mut ssh = master.ssh_command(&key, &bob.user, &[]);
            ssh.arg("no-such-command")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            ssh.spawn().expect("ssh starts")
        })
        .collect();
    let started = Instant::now();
    assert_login(
        &login(&master, &master.user_key, &current_user()),
        AUTHENTICATED,
        &master,
    );
    let response = http_client()
        .get(format!("http://127.0.0.1:{}/", master.http_port))
        .timeout(Duration::from_secs(10))
        .send()
        .expect("the web answers");
    assert!(response.status().is_success());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "another login and the web took {:?}",
        started.elapsed()
    );
    for attempt in attempts {
        let output = output_with_deadline(attempt, "ssh as bob", PATIENCE);
        assert_login(&output, REFUSED, &master);
    }
    assert!(
        master.log().contains("is not a regular file"),
        "{}",
        master.log()
    );
}

#[test]
fn a_key_file_symlinked_to_dev_zero_is_refused_without_growing_the_master() {
    let bob = TempAccount::create("a_key_file_symlinked_to_dev_zero_is_refused");
    let master = TestMaster::start();
    let key = TestKey::ed25519(master.keys_dir.path(), "bob");
    std::os::unix::fs::symlink("/dev/zero", keys_d(&master, &bob.user)).expect("symlink");
    let before = master.peak_rss_kib();
    for _ in 0..2 {
        assert_login(&login(&master, &key, &bob.user), REFUSED, &master);
    }
    let growth = master.peak_rss_kib().saturating_sub(before);
    // Before the fix: 2 GB in 4 s.
    assert!(growth < 32 * 1024, "peak RSS grew by {growth} KiB");
    assert!(
        master.log().contains("is a symbolic link"),
        "{}",
        master.log()
    );
}

/// Starts `buildbot master` on a master directory whose spool was tampered with; it must refuse
/// (exit non-zero) within the deadline and say why on stderr.
fn refused_start(master_dir: &Path) -> String {
    let mut command = Command::new(BIN);
    command.arg("master").arg(master_dir);
    let output = run_with_timeout(command, None);
    assert!(!output.status.success(), "the master started");
    text(&output.stderr)
}

#[test]
fn a_spool_sub_directory_that_is_a_symlink_or_not_the_masters_stops_the_master() {
    let member = TempAccount::create("a_spool_sub_directory_that_is_a_symlink");
    let mut master = TestMaster::start();
    master.terminate();
    let spool = master.path().join("spool");
    let root_only = tempfile::tempdir().expect("temp dir");
    for sub in ["new", "rejected"] {
        std::fs::rename(spool.join(sub), spool.join(format!("{sub}.orig"))).expect("moved");
        std::os::unix::fs::symlink(root_only.path(), spool.join(sub)).expect("symlink");
        let stderr = refused_start(master.path());
        assert!(
            stderr.contains(&format!("spool/{sub} is a symbolic link")),
            "{stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        std::fs::remove_file(spool.join(sub)).expect("symlink removed");
        std::fs::rename(spool.join(format!("{sub}.orig")), spool.join(sub)).expect("back");
    }
    chown(&spool.join("new"), &member);
    let stderr = refused_start(master.path());
    assert!(
        stderr.contains(&format!("spool/new is owned by uid {}", member.uid())),
        "{stderr}"
    );
    assert!(
        std::fs::read_dir(root_only.path())
            .expect("dir")
            .next()
            .is_none()
    );
}

#[test]
fn new_swapped_for_a_symlink_while_the_master_runs_is_not_written_through() {
    let checkout = Checkout::new();
    let master = TestMaster::start_with(MasterSetup::with_try_builders(
        &["linux"],
        &checkout.upstream.display().to_string(),
    ));
    let spool = master.path().join("spool");
    let root_only = tempfile::tempdir().expect("temp dir");
    std::fs::rename(spool.join("new"), spool.join("new.orig")).expect("moved");
    std::os::unix::fs::symlink(root_only.path(), spool.join("new")).expect("symlink");
    let mut try_cmd = master.try_command(&checkout.work, "linux", false);
    try_cmd.stdin(std::process::Stdio::null());
    let output = output_with_deadline(try_cmd.spawn().expect("try"), "try", PATIENCE);
    assert!(!output.status.success(), "{}", text(&output.stderr));
    assert!(
        std::fs::read_dir(root_only.path())
            .expect("dir")
            .next()
            .is_none(),
        "the master wrote through the symlink"
    );
    assert!(
        master.log().contains("spool/new is a symbolic link"),
        "{}",
        master.log()
    );
}

#[test]
fn rejected_swapped_for_a_symlink_while_the_master_runs_is_not_written_through() {
    let master = TestMaster::start();
    let spool = master.path().join("spool");
    let victim = tempfile::tempdir().expect("temp dir");
    std::fs::rename(spool.join("rejected"), spool.join("rejected.orig")).expect("moved");
    std::os::unix::fs::symlink(victim.path(), spool.join("rejected")).expect("symlink");
    // A bad job, delivered as a writer would: tmp/ then a rename into new/.
    std::fs::write(spool.join("tmp/1.bad"), "not a job").expect("written");
    std::fs::rename(spool.join("tmp/1.bad"), spool.join("new/1.bad")).expect("delivered");
    let why = spool.join("rejected.orig/1.bad.why");
    wait_until("the bad job to be rejected", || why.exists());
    assert!(spool.join("rejected.orig/1.bad").exists());
    assert!(
        std::fs::read_dir(victim.path())
            .expect("dir")
            .next()
            .is_none(),
        "the master wrote through the symlink"
    );
}

#[test]
fn create_master_with_a_try_group_makes_the_spool_setgid_and_sticky() {
    let group = TempAccount::create("create_master_with_a_try_group");
    let dir = tempfile::tempdir().expect("temp dir");
    let master_dir = dir.path().join("master");
    let mut create = Command::new(BIN);
    create
        .arg("create-master")
        .arg(&master_dir)
        .args(["--try-group", &group.group]);
    let output = run_with_timeout(create, None);
    assert!(output.status.success(), "{}", text(&output.stderr));
    use std::os::unix::fs::MetadataExt;
    for (sub, mode) in [
        ("", 0o3770),
        ("tmp", 0o3770),
        ("new", 0o3770),
        ("cur", 0o2750),
        ("rejected", 0o2750),
    ] {
        let metadata = std::fs::metadata(master_dir.join("spool").join(sub)).expect("spool dir");
        assert_eq!(metadata.mode() & 0o7777, mode, "spool/{sub}");
        assert_eq!(metadata.gid(), group.gid.as_raw(), "spool/{sub}");
    }
    let mut create = Command::new(BIN);
    create
        .arg("create-master")
        .arg(dir.path().join("other"))
        .args(["--try-group", "no-such-group-here"]);
    let output = run_with_timeout(create, None);
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("no such group: no-such-group-here"),
        "{}",
        text(&output.stderr)
    );
}

// ---- listener limits (#13 parts 4 and 5) ----------------------------------------------------

/// Reads from `stream` until the server closes it (EOF or reset), writing `trickle` every
/// 200 ms meanwhile; returns how long that took, or None if it was still open after PATIENCE.
fn wait_closed_by_server(stream: &mut TcpStream, trickle: Option<&[u8]>) -> Option<Duration> {
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    let mut buf = [0u8; 4096];
    while started.elapsed() < PATIENCE {
        match stream.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => continue,
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if let Some(bytes) = trickle
                    && stream.write_all(bytes).is_err()
                {
                    return Some(started.elapsed());
                }
            }
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}

#[test]
fn a_slowloris_client_is_cut_off_after_the_header_timeout() {
    let master = TestMaster::start_with(MasterSetup {
        edits: vec![(
            "# header_read_timeout = \"30s\"",
            "header_read_timeout = \"1s\"",
        )],
        ..MasterSetup::default()
    });
    let timeout = Duration::from_secs(1);
    let addr = format!("127.0.0.1:{}", master.http_port);

    // Headers sent a line every 200 ms never finish: the connection is cut at the timeout.
    let mut slow = TcpStream::connect(&addr).expect("connect");
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .expect("request line");
    let took = wait_closed_by_server(&mut slow, Some(b"X-Slow: 1\r\n"))
        .unwrap_or_else(|| panic!("a slowloris connection stayed open for {PATIENCE:?}"));
    println!("a slowloris connection was cut after {took:?} (header_read_timeout {timeout:?})");
    assert!(
        took + Duration::from_millis(300) >= timeout,
        "cut too early: {took:?}"
    );
    assert!(took < timeout + SLACK, "took {took:?}");

    // A connection that says nothing at all is cut the same way.
    let mut silent = TcpStream::connect(&addr).expect("connect");
    let took = wait_closed_by_server(&mut silent, None).expect("a silent connection is cut");
    assert!(took < timeout + SLACK, "took {took:?}");

    // An honest request is answered, and the kept-alive connection is closed once idle.
    let mut honest = TcpStream::connect(&addr).expect("connect");
    honest
        .write_all(b"GET /api/slaves HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    honest
        .set_read_timeout(Some(PATIENCE))
        .expect("read timeout");
    let mut head = [0u8; 64];
    let read = honest.read(&mut head).expect("a response");
    assert!(
        head[..read].starts_with(b"HTTP/1.1 200"),
        "{}",
        text(&head[..read])
    );
    let idle = wait_closed_by_server(&mut honest, None).expect("an idle keep-alive is closed");
    assert!(idle < timeout + SLACK, "took {idle:?}");
}

#[test]
fn idle_http_connections_past_the_cap_do_not_lock_out_ssh() {
    // 400 descriptors: without a cap, a few hundred idle HTTP connections take them all and
    // SSH accepts fail with EMFILE. With it, HTTP gets 400 - 256 = 144 and waits for more.
    let master = TestMaster::start_with(MasterSetup {
        open_file_limit: Some(400),
        ..MasterSetup::default()
    });
    let cap = 144;
    // Logged when the web server starts, just after the master prints its addresses.
    wait_until("the master to report the lowered HTTP cap", || {
        master
            .log()
            .contains("[http] max_connections lowered from 512 to 144")
    });
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", master.http_port)
        .parse()
        .expect("address");
    let mut idle = Vec::new();
    for _ in 0..cap + 300 {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(stream) => idle.push(stream),
            // The backlog is full: enough held either way.
            Err(_) => break,
        }
    }
    assert!(
        idle.len() > cap,
        "only {} connections were opened",
        idle.len()
    );
    let started = Instant::now();
    let watch = master.ssh(&master.user_key, &current_user(), "watch");
    assert!(
        watch.status.success(),
        "ssh with {} idle HTTP connections open: {}\nmaster log:\n{}",
        idle.len(),
        text(&watch.stderr),
        master.log()
    );
    println!(
        "ssh watch with {} idle HTTP connections open took {:?}",
        idle.len(),
        started.elapsed()
    );
    assert!(!master.log().contains("accept failed"), "{}", master.log());
    // The web serves again once the idle connections go.
    drop(idle);
    let client = http_client();
    wait_until("the web answers after the idle connections closed", || {
        client
            .get(format!("http://127.0.0.1:{}/api/slaves", master.http_port))
            .send()
            .is_ok_and(|response| response.status().is_success())
    });
}

#[test]
fn one_host_holding_unauthenticated_sockets_does_not_lock_out_another() {
    // max_startups 8: a source address may hold 2 unauthenticated connections.
    let master = TestMaster::start_with(MasterSetup {
        edits: vec![("max_startups = \"10:30:100\"", "max_startups = 8")],
        ..MasterSetup::default()
    });
    let addr = format!("127.0.0.1:{}", master.ssh_port);
    let mut held = Vec::new();
    let mut dropped = 0;
    for _ in 0..10 {
        let mut stream = TcpStream::connect(&addr).expect("connect");
        stream
            .set_read_timeout(Some(PATIENCE))
            .expect("read timeout");
        let mut banner = [0u8; 64];
        match stream.read(&mut banner) {
            Ok(read) if read > 0 => held.push(stream),
            _ => dropped += 1,
        }
    }
    assert_eq!((held.len(), dropped), (2, 8), "{}", master.log());
    assert!(
        master.log().contains("(max_startups_per_source)"),
        "{}",
        master.log()
    );
    // The same host is over its share; another one still logs in.
    let same_host = master.ssh(&master.user_key, &current_user(), "watch");
    assert_eq!(
        same_host.status.code(),
        Some(REFUSED),
        "{}",
        text(&same_host.stderr)
    );
    let other_host = master.ssh_with(
        &master.user_key,
        &current_user(),
        "watch",
        &["-b", "127.0.0.2"],
        None,
    );
    assert!(
        other_host.status.success(),
        "a login from 127.0.0.2: {}\nmaster log:\n{}",
        text(&other_host.stderr),
        master.log()
    );
    drop(held);
    wait_until("the first host logs in once its sockets are gone", || {
        master
            .ssh(&master.user_key, &current_user(), "watch")
            .status
            .success()
    });
}

#[test]
fn an_upload_that_stalls_is_cut_at_its_deadline() {
    let master = TestMaster::start_with(MasterSetup {
        edits: vec![("# upload_timeout = \"5m\"", "upload_timeout = \"2s\"")],
        ..MasterSetup::with_try_builders(&["linux"], "/srv/git/p.git")
    });
    let deadline = Duration::from_secs(2);
    let mut ssh = master.ssh_command(&master.user_key, &current_user(), &[]);
    ssh.arg("try")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = ssh.spawn().expect("ssh starts");
    // The start of a job, and then nothing: the client keeps its end open.
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin.write_all(b"1:5,").expect("a first byte");
    let output = output_with_deadline(child, "a stalled upload", PATIENCE);
    let took = started.elapsed();
    drop(stdin);
    let stderr = text(&output.stderr);
    println!("a stalled upload was cut after {took:?} (upload_timeout {deadline:?}): {stderr}");
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("the job did not arrive within 2s ([spool] upload_timeout)"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(took >= deadline && took < deadline + SLACK, "took {took:?}");
}

/// A russh client that trusts any host key: the test talks to its own master on loopback.
struct AnyHostKey;

impl russh::client::Handler for AnyHostKey {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

#[test]
fn the_eleventh_channel_on_one_connection_is_refused() {
    let master = TestMaster::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let port = master.ssh_port;
    let key_path = master.user_key.private.clone();
    runtime.block_on(async move {
        let steps = async {
            let config = Arc::new(russh::client::Config::default());
            let mut session = russh::client::connect(config, ("127.0.0.1", port), AnyHostKey)
                .await
                .expect("connect");
            let key = russh::keys::load_secret_key(&key_path, None).expect("test key");
            let auth = session
                .authenticate_publickey(
                    current_user(),
                    russh::keys::PrivateKeyWithHashAlg::new(Arc::new(key), None),
                )
                .await
                .expect("authentication");
            assert!(auth.success());
            let mut open = Vec::new();
            for number in 1..=10 {
                let channel = session
                    .channel_open_session()
                    .await
                    .unwrap_or_else(|err| panic!("channel {number}: {err}"));
                open.push(channel);
            }
            let eleventh = session.channel_open_session().await;
            assert!(
                matches!(
                    eleventh,
                    Err(russh::Error::ChannelOpenFailure(
                        russh::ChannelOpenFailure::ResourceShortage
                    ))
                ),
                "{:?}",
                eleventh.map(|channel| channel.id())
            );
            // A closed channel gives its place back.
            let first = open.remove(0);
            first.close().await.expect("close");
            let mut reopened = None;
            for _ in 0..100 {
                if let Ok(channel) = session.channel_open_session().await {
                    reopened = Some(channel);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(reopened.is_some(), "no channel after one was closed");
        };
        tokio::time::timeout(PATIENCE, steps)
            .await
            .expect("the channel test finished within PATIENCE");
    });
    assert!(
        master
            .log()
            .contains("already open on this connection (max_sessions)"),
        "{}",
        master.log()
    );
}

// ---- issue 22 ------------------------------------------------------------------------------

/// Item 7, first half: `master.pid` was opened create+truncate through a symlink before any
/// check, so whoever could write into the master directory had root's master overwrite a file
/// of their choosing. A directory others may write into is refused, and a symlinked pid file
/// is never followed.
#[test]
fn a_master_dir_others_can_write_or_a_symlinked_pid_file_stops_the_master() {
    let mallory = TempAccount::create("a_master_dir_others_can_write");
    let mut master = TestMaster::start();
    master.terminate();
    let dir = master.path().to_path_buf();
    let victims = tempfile::tempdir().expect("temp dir");
    let victim = victims.path().join("root-owned");
    std::fs::write(&victim, "precious\n").expect("victim");
    std::os::unix::fs::symlink(&victim, dir.join("master.pid")).expect("symlink planted");

    let mode = std::fs::metadata(&dir).expect("stat").permissions().mode() & 0o7777;
    chmod(&dir, 0o777);
    let stderr = refused_start(&dir);
    assert!(
        stderr.contains("is writable by group or others (mode 0777) without the sticky bit"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    chmod(&dir, mode);
    chown(&dir, &mallory);
    let stderr = refused_start(&dir);
    assert!(
        stderr.contains(&format!("is owned by uid {}", mallory.uid())),
        "{stderr}"
    );
    nix::unistd::chown(&dir, Some(nix::unistd::geteuid()), None).expect("chown back");
    let stderr = refused_start(&dir);
    assert!(stderr.contains("master.pid is a symbolic link"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&victim).expect("victim"),
        "precious\n",
        "the symlink's target was not touched"
    );
    // The honest case: the link removed, the master starts.
    std::fs::remove_file(dir.join("master.pid")).expect("symlink removed");
    let master = master.start_again();
    assert!(master.api("/api/slaves").is_array());
}

fn reconfig_of(dir: &Path) -> Output {
    let mut command = Command::new(BIN);
    command.arg("reconfig").arg(dir);
    run_with_timeout(command, None)
}

/// Item 7, second half: `buildbot reconfig` sent SIGHUP to whatever pid `master.pid` held as
/// long as someone held its lock, and killed an unrelated process. It now signals only the
/// process that holds the lock, and only if that is a buildbot.
#[test]
fn reconfig_signals_only_the_master_that_holds_the_pid_file() {
    let mut master = TestMaster::start();
    master.terminate();
    let dir = master.path().to_path_buf();
    let pid_path = dir.join("master.pid");
    std::fs::write(&pid_path, "").expect("pid file");
    let mut bystander = Command::new("sleep")
        .arg("600")
        .spawn()
        .expect("an unrelated process");
    // Someone else holds the lock (flock(1), its pid in /proc/locks).
    let mut holder = Command::new("flock")
        .arg(&pid_path)
        .args(["sleep", "600"])
        .spawn()
        .expect("flock holds the pid file");
    wait_until("flock to hold the pid file", || {
        std::fs::read_to_string("/proc/locks")
            .unwrap_or_default()
            .contains(&format!(" {} ", holder.id()))
    });
    for pid in [bystander.id(), holder.id()] {
        std::fs::write(&pid_path, format!("{pid}\n")).expect("pid written");
        let output = reconfig_of(&dir);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!("pid {pid} in "))
                && stderr.contains("is not a buildbot master of this directory"),
            "{stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
    assert!(
        bystander.try_wait().expect("wait").is_none(),
        "the unrelated process was signalled"
    );
    assert!(holder.try_wait().expect("wait").is_none());
    for child in [&mut bystander, &mut holder] {
        let _ = child.kill();
        let _ = child.wait();
    }
    // The honest case: the real master is found and answers.
    std::fs::remove_file(&pid_path).expect("pid file removed");
    let master = master.start_again();
    let output = reconfig_of(master.path());
    assert!(
        output.status.success(),
        "{}\n{}",
        text(&output.stderr),
        master.log()
    );
}

/// Item 4: the header timeout did not cover a request's body, and a form's body was read before
/// its session was checked, so slow bodies from nobody held every connection place. Now a POST
/// without a session is refused before its body is read, and a logged-in one's body must
/// arrive within `header_read_timeout`.
#[test]
fn slow_form_bodies_do_not_take_the_web_down() {
    let master = TestMaster::start_with(MasterSetup {
        edits: vec![
            ("# max_connections = 512", "max_connections = 40"),
            (
                "# max_connections_per_source = 128",
                "max_connections_per_source = 40",
            ),
            (
                "# header_read_timeout = \"30s\"",
                "header_read_timeout = \"2s\"",
            ),
        ],
        ..MasterSetup::with_try_builders(&["linux"], "/srv/git/p.git")
    });
    let addr = format!("127.0.0.1:{}", master.http_port);
    let slow_post = |cookie: Option<&str>| {
        let mut stream = TcpStream::connect(&addr).expect("connect");
        let cookie = cookie
            .map(|cookie| format!("Cookie: {cookie}\r\n"))
            .unwrap_or_default();
        stream
            .write_all(
                format!(
                    "POST /builders/linux/force HTTP/1.1\r\nHost: x\r\n{cookie}\
                     Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 60000\r\n\r\nr"
                )
                .as_bytes(),
            )
            .expect("headers and a first byte");
        stream
    };
    // 100 slow bodies without a session, at most 40 served at once: each is refused at once.
    let mut slow: Vec<TcpStream> = (0..100).map(|_| slow_post(None)).collect();
    let client = http_client();
    let started = Instant::now();
    let page = client
        .get(format!("http://{addr}/"))
        .send()
        .unwrap_or_else(|err| panic!("GET / with 100 slow bodies open: {err}"));
    assert!(page.status().is_success(), "{}", page.status());
    println!(
        "GET / answered in {:?} with 100 slow bodies open",
        started.elapsed()
    );
    let mut answer = String::new();
    slow[0]
        .set_read_timeout(Some(PATIENCE))
        .expect("read timeout");
    let _ = slow[0].read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("log in first"), "{answer}");
    slow.clear();

    // A logged-in form whose body stalls is cut at the deadline.
    let session = crate::changes::web_login(&master);
    let mut stalled = slow_post(Some(&session.cookie));
    let took = wait_closed_by_server(&mut stalled, None)
        .unwrap_or_else(|| panic!("a stalled body stayed open for {PATIENCE:?}"));
    assert!(took < Duration::from_secs(2) + SLACK, "took {took:?}");
    // A body larger than a form can be is refused from its length.
    let mut huge = TcpStream::connect(&addr).expect("connect");
    huge.write_all(
        format!(
            "POST /builders/linux/force HTTP/1.1\r\nHost: x\r\nCookie: {}\r\n\
             Content-Length: 100000000\r\n\r\n",
            session.cookie
        )
        .as_bytes(),
    )
    .expect("headers");
    huge.set_read_timeout(Some(PATIENCE)).expect("read timeout");
    let mut head = [0u8; 64];
    let read = huge.read(&mut head).expect("an answer");
    assert!(
        head[..read].starts_with(b"HTTP/1.1 413"),
        "{}",
        text(&head[..read])
    );
}

/// Item 11: 20,000 idle HTTP connections from one host stalled the web for everyone. One source
/// may hold `max_connections_per_source`; another host is still served.
#[test]
fn one_host_holding_idle_http_connections_does_not_lock_out_another() {
    let master = TestMaster::start_with(MasterSetup {
        edits: vec![("# max_connections = 512", "max_connections = 40")],
        ..MasterSetup::default()
    });
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", master.http_port)
        .parse()
        .expect("address");
    let idle: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok())
        .collect();
    assert!(
        idle.len() > 40,
        "only {} connections were opened",
        idle.len()
    );
    let other_host = reqwest::blocking::Client::builder()
        .timeout(PATIENCE)
        .local_address(Some("127.0.0.2".parse().expect("address")))
        .build()
        .expect("client");
    let started = Instant::now();
    let answer = other_host
        .get(format!("http://127.0.0.1:{}/api/slaves", master.http_port))
        .send()
        .unwrap_or_else(|err| panic!("127.0.0.2 with 200 idle connections from 127.0.0.1: {err}"));
    assert!(answer.status().is_success(), "{}", answer.status());
    println!("another host was served in {:?}", started.elapsed());
    assert!(
        master.log().contains("([http] max_connections_per_source)"),
        "{}",
        master.log()
    );
    drop(idle);
}

/// Item 11: one host holding unauthenticated sockets, even within its per-source share, pushed
/// the count past `start`, and sshd's random early drop then refused every other host too. A
/// host that holds none is no longer in the draw.
#[test]
fn a_busy_host_past_max_startups_start_does_not_get_others_dropped() {
    // Past 2 unauthenticated connections, every source that holds one is dropped.
    let master = TestMaster::start_with(MasterSetup {
        edits: vec![(
            "max_startups = \"10:30:100\"",
            "max_startups = \"2:100:100\"",
        )],
        ..MasterSetup::default()
    });
    let addr = format!("127.0.0.1:{}", master.ssh_port);
    let mut held = Vec::new();
    for _ in 0..6 {
        let mut stream = TcpStream::connect(&addr).expect("connect");
        stream
            .set_read_timeout(Some(PATIENCE))
            .expect("read timeout");
        let mut banner = [0u8; 64];
        if let Ok(read) = stream.read(&mut banner)
            && read > 0
        {
            held.push(stream);
        }
    }
    assert_eq!(held.len(), 2, "{}", master.log());
    assert!(
        master.log().contains("random early drop"),
        "{}",
        master.log()
    );
    let other_host = master.ssh_with(
        &master.user_key,
        &current_user(),
        "watch",
        &["-b", "127.0.0.2"],
        None,
    );
    assert!(
        other_host.status.success(),
        "a login from 127.0.0.2 while 127.0.0.1 holds 2: {}\nmaster log:\n{}",
        text(&other_host.stderr),
        master.log()
    );
    drop(held);
}
