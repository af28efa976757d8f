//! The attacks of issue #13, each as a regression test against a real master, run as root with
//! throwaway unix users and groups: key files sshd's StrictModes would not trust, key files
//! that hang or exhaust the reader, and a spool whose directories a try-group member swaps for
//! symlinks. Each test also shows the honest case working, so a refusal is not an accident.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::harness::{
    BIN, MasterSetup, PATIENCE, TempAccount, TestKey, TestMaster, current_user, http_client,
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
