//! The master's SSH server as a user meets it: real `ssh`, real keys, real authorized_keys files.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::harness::{
    MasterSetup, PATIENCE, SHUTDOWN_GRACE, SLACK, TestKey, TestMaster, current_user, reap, text,
    wait_until,
};

/// A reset is the server closing too (it may drop a connection with unread data in it).
fn is_reset(err: Option<&std::io::Error>) -> bool {
    err.is_some_and(|err| err.kind() == std::io::ErrorKind::ConnectionReset)
}

fn assert_denied(output: &std::process::Output) {
    assert_eq!(
        output.status.code(),
        Some(255),
        "stderr: {}",
        text(&output.stderr)
    );
    assert!(
        text(&output.stderr).contains("Permission denied"),
        "stderr: {}",
        text(&output.stderr)
    );
}

fn assert_watch_works(output: &std::process::Output) {
    assert!(
        output.status.success(),
        "status {:?}, stderr: {}",
        output.status,
        text(&output.stderr)
    );
    assert!(
        text(&output.stdout).starts_with("master example:"),
        "stdout: {}",
        text(&output.stdout)
    );
}

#[test]
fn every_supported_key_type_logs_in_with_real_openssh() {
    let master = TestMaster::start();
    let user = current_user();
    let keys = [
        ("ed25519", None, vec![]),
        ("ecdsa", Some(256), vec![]),
        ("ecdsa", Some(384), vec![]),
        ("ecdsa", Some(521), vec![]),
        (
            "rsa",
            Some(3072),
            vec!["-o", "PubkeyAcceptedAlgorithms=rsa-sha2-256"],
        ),
        (
            "rsa",
            Some(3072),
            vec!["-o", "PubkeyAcceptedAlgorithms=rsa-sha2-512"],
        ),
    ];
    for (index, (kind, bits, options)) in keys.iter().enumerate() {
        let key = TestKey::generate(master.keys_dir.path(), &format!("k{index}"), kind, *bits);
        master.authorize(&user, &key.public_line);
        let output = master.ssh_with(&key, &user, "watch", options, None);
        assert_watch_works(&output);
    }
    // RSA keys signed with the SHA-2 algorithms each client asked for (never ssh-rsa's SHA-1).
    let log = master.log();
    for algorithm in ["rsa-sha2-256", "rsa-sha2-512"] {
        assert!(
            log.lines().any(|line| line.contains("accepted user")
                && line.contains(&format!("algorithm={algorithm}"))),
            "no login with {algorithm}: {log}"
        );
    }
}

#[test]
fn a_connection_gets_max_auth_tries_key_offers() {
    let master = TestMaster::start_with(MasterSetup {
        edits: vec![("max_auth_tries = 6", "max_auth_tries = 2")],
        ..MasterSetup::default()
    });
    let user = current_user();
    let wrong_one = TestKey::ed25519(master.keys_dir.path(), "wrong-1");
    let wrong_two = TestKey::ed25519(master.keys_dir.path(), "wrong-2");
    // The right key comes third: with two tries allowed, the connection is gone by then.
    let offers_three = |master: &TestMaster| {
        master.ssh_with(
            &wrong_one,
            &user,
            "watch",
            &[
                "-i",
                wrong_two.private.to_str().expect("utf-8"),
                "-i",
                master.user_key.private.to_str().expect("utf-8"),
            ],
            None,
        )
    };
    let output = offers_three(&master);
    assert_eq!(output.status.code(), Some(255), "{}", text(&output.stderr));
    assert!(
        master.log().contains("too many authentication attempts"),
        "{}",
        master.log()
    );
    // Two wrong keys then the right one fit in the default of six.
    let relaxed = TestMaster::start();
    assert_watch_works(&offers_three(&relaxed));
}

#[test]
fn a_key_not_in_the_file_is_refused() {
    let master = TestMaster::start();
    let stranger = TestKey::ed25519(master.keys_dir.path(), "stranger");
    assert_denied(&master.ssh(&stranger, &current_user(), "watch"));
}

/// A login no key can pass: ssh exits 255 and prints the master's reason (the disconnect
/// message), not only "Permission denied".
fn assert_refused_with(output: &std::process::Output, reason: &str) {
    assert_eq!(
        output.status.code(),
        Some(255),
        "stderr: {}",
        text(&output.stderr)
    );
    assert!(
        text(&output.stderr).contains(reason),
        "no '{reason}' in ssh's stderr: {}",
        text(&output.stderr)
    );
}

#[test]
fn an_unknown_login_is_told_there_is_no_such_account() {
    let master = TestMaster::start();
    master.authorize("no-such-user-xyz", &master.user_key.public_line);
    let output = master.ssh(&master.user_key, "no-such-user-xyz", "watch");
    assert_refused_with(
        &output,
        "buildbot: no unix account no-such-user-xyz on this master",
    );
}

#[test]
fn with_tell_unknown_users_off_an_unknown_login_is_refused_like_a_wrong_key() {
    let mut setup = MasterSetup::default();
    setup
        .edits
        .push(("tell_unknown_users = true", "tell_unknown_users = false"));
    let master = TestMaster::start_with(setup);
    master.authorize("no-such-user-xyz", &master.user_key.public_line);
    let output = master.ssh(&master.user_key, "no-such-user-xyz", "watch");
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(255), "{stderr}");
    assert!(stderr.contains("Permission denied"), "{stderr}");
    assert!(
        !stderr.contains("no unix account"),
        "the name's absence was told: {stderr}"
    );
    wait_until("the refusal to be logged", || {
        master.log().contains("no-such-user-xyz")
    });
}

#[test]
fn root_is_refused_unless_allow_root() {
    let master = TestMaster::start_with(MasterSetup {
        allow_root: false,
        ..MasterSetup::default()
    });
    master.authorize("root", &master.user_key.public_line);
    let output = master.ssh(&master.user_key, "root", "watch");
    assert_refused_with(
        &output,
        "buildbot: root may not log in (allow_root = false)",
    );
    assert!(
        master.log().contains("root may not log in"),
        "{}",
        master.log()
    );
}

#[test]
fn from_restricts_where_a_key_may_come_from() {
    let master = TestMaster::start();
    let user = current_user();
    let key = &master.user_key;
    master.authorize(
        &user,
        &format!("from=\"10.1.2.3,192.168.*\" {}", key.public_line),
    );
    assert_denied(&master.ssh(key, &user, "watch"));
    assert!(
        master.log().contains("from= does not allow 127.0.0.1"),
        "{}",
        master.log()
    );
    master.authorize(
        &user,
        &format!("from=\"!10.*,127.0.0.?\" {}", key.public_line),
    );
    assert_watch_works(&master.ssh(key, &user, "watch"));
    master.authorize(&user, &format!("from=\"*,!127.0.0.1\" {}", key.public_line));
    assert_denied(&master.ssh(key, &user, "watch"));
}

#[test]
fn an_expired_key_is_refused() {
    let master = TestMaster::start();
    let user = current_user();
    let key = &master.user_key;
    master.authorize(
        &user,
        &format!("expiry-time=\"20200101\" {}", key.public_line),
    );
    assert_denied(&master.ssh(key, &user, "watch"));
    master.authorize(
        &user,
        &format!("expiry-time=\"29991231\" {}", key.public_line),
    );
    assert_watch_works(&master.ssh(key, &user, "watch"));
}

#[test]
fn a_forced_command_replaces_the_requested_one() {
    let master = TestMaster::start();
    let user = current_user();
    let key = &master.user_key;
    master.authorize(
        &user,
        &format!("restrict,command=\"watch\" {}", key.public_line),
    );
    let output = master.ssh(key, &user, "rm -rf /");
    assert_watch_works(&output);
    // A forced command also answers a request for a shell.
    assert_watch_works(&master.ssh(key, &user, ""));
}

#[test]
fn an_unknown_command_exits_127_with_a_message() {
    let master = TestMaster::start();
    let output = master.ssh(&master.user_key, &current_user(), "frobnicate --now");
    assert_eq!(output.status.code(), Some(127));
    assert_eq!(
        text(&output.stderr).trim(),
        "buildbot: unknown command 'frobnicate' (`help` lists the commands)"
    );
}

#[test]
fn no_shell_no_port_forwarding_and_a_terminal_only_changes_line_ends() {
    let master = TestMaster::start();
    let user = current_user();
    let output = master.ssh(&master.user_key, &user, "");
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("no interactive shell"),
        "{}",
        text(&output.stderr)
    );
    // A terminal is granted (`shell` relays one to a slave, docs/shell.md); other commands
    // answer as without one, in CR LF lines for the client's raw terminal.
    let output = master.ssh_with(&master.user_key, &user, "watch", &["-tt"], None);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let shown = text(&output.stdout);
    assert!(shown.contains("\r\n"), "{shown:?}");
    assert!(!shown.replace("\r\n", "").contains('\n'), "{shown:?}");
    let output = master.ssh_with(
        &master.user_key,
        &user,
        "",
        &["-N", "-o", "ExitOnForwardFailure=yes", "-W", "127.0.0.1:9"],
        None,
    );
    assert_ne!(output.status.code(), Some(0));
    assert!(
        master.log().contains("refused port forwarding"),
        "{}",
        master.log()
    );
}

#[test]
fn slave_keys_and_user_keys_stay_apart() {
    let keys = tempfile::tempdir().expect("temp dir");
    let slave_key = TestKey::ed25519(keys.path(), "slave");
    let master = TestMaster::start_with(MasterSetup {
        extra_config: format!(
            "\n[[slave]]\nname = \"linux-1\"\npublic_key = \"{}\"\n",
            slave_key.public_line
        ),
        ..MasterSetup::default()
    });
    let user = current_user();
    // Even listed in the user's own file, a slave's key does not log in as a user.
    master.authorize(
        &user,
        &format!("{}\n{}", master.user_key.public_line, slave_key.public_line),
    );
    assert_denied(&master.ssh(&slave_key, &user, "watch"));
    // The slave key as its slave may open only the slave RPC.
    let output = master.ssh(&slave_key, "linux-1", "watch");
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("may only open the slave RPC"),
        "{}",
        text(&output.stderr)
    );
    // A user key never opens the slave RPC, nor logs in as the slave.
    let output = master.ssh(&master.user_key, &user, "slave");
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("user keys may not open it"),
        "{}",
        text(&output.stderr)
    );
    assert_denied(&master.ssh(&master.user_key, "linux-1", "slave"));
}

#[test]
fn editing_authorized_keys_takes_effect_without_restart() {
    let master = TestMaster::start();
    let user = current_user();
    let newcomer = TestKey::ed25519(master.keys_dir.path(), "newcomer");
    assert_denied(&master.ssh(&newcomer, &user, "watch"));
    master.authorize(
        &user,
        &format!("{}\n{}", master.user_key.public_line, newcomer.public_line),
    );
    assert_watch_works(&master.ssh(&newcomer, &user, "watch"));
    // Removing it takes effect too.
    master.authorize(&user, &master.user_key.public_line);
    assert_denied(&master.ssh(&newcomer, &user, "watch"));
}

#[test]
fn a_malformed_line_is_skipped_and_the_rest_of_the_file_works() {
    let master = TestMaster::start();
    let user = current_user();
    let second = TestKey::ed25519(master.keys_dir.path(), "second");
    master.authorize(
        &user,
        &format!(
            "bogus-option {first}\nssh-ed25519 AAAA-not-base64 broken\n{second}\nenvironment=\"A=b\" {first}",
            first = master.user_key.public_line,
            second = second.public_line
        ),
    );
    assert_watch_works(&master.ssh(&second, &user, "watch"));
    // The first key is listed on a bad line and again with environment= (ignored, still valid).
    assert_watch_works(&master.ssh(&master.user_key, &user, "watch"));
    let log = master.log();
    assert!(
        log.contains(&format!("authorized_keys.d/{user}:line 1")),
        "{log}"
    );
    assert!(
        log.contains(&format!("authorized_keys.d/{user}:line 2")),
        "{log}"
    );
    assert!(log.contains("environment= is ignored"), "{log}");
}

#[test]
fn sigterm_stops_the_master_within_two_seconds() {
    let mut master = TestMaster::start();
    // An open session must not hold the shutdown up.
    let mut idle = master
        .ssh_command(&master.user_key, &current_user(), &[])
        .arg("watch --follow")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("ssh starts");
    // Open for sure: it printed the status and follows the events.
    let stdout = idle.stdout.take().expect("piped stdout");
    let (first_tx, first_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut first = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut first);
        let _ = first_tx.send(first);
    });
    let first = first_rx
        .recv_timeout(PATIENCE)
        .expect("the session prints the status");
    assert!(first.starts_with("master example:"), "{first}");
    // The master disconnects it and waits at most SHUTDOWN_GRACE (src/master/mod.rs) for it.
    let (status, took) = master.terminate();
    assert_eq!(status.code(), Some(0), "log: {}", master.log());
    println!("SIGTERM with an open session: the master stopped after {took:?}");
    assert!(took < SHUTDOWN_GRACE + SLACK, "took {took:?}");
    reap(&mut idle);
}

#[test]
fn connections_that_never_log_in_are_dropped_after_the_grace_time() {
    let master = TestMaster::start_with(MasterSetup {
        edits: vec![
            ("login_grace_time = \"2m\"", "login_grace_time = \"1s\""),
            (
                "max_startups = \"10:30:100\"",
                "max_startups = 2\nmax_startups_per_source = 2",
            ),
        ],
        ..MasterSetup::default()
    });
    let addr = format!("127.0.0.1:{}", master.ssh_port);
    let grace = Duration::from_secs(1);
    let mut first = TcpStream::connect(&addr).expect("connect");
    let mut second = TcpStream::connect(&addr).expect("connect");
    first.set_read_timeout(Some(PATIENCE)).expect("timeout");
    second.set_read_timeout(Some(PATIENCE)).expect("timeout");
    // Both took the banner, so the server counts them as unauthenticated.
    let mut banner = [0u8; 64];
    assert!(first.read(&mut banner).expect("banner") > 0);
    assert!(second.read(&mut banner).expect("banner") > 0);
    // A third one over max_startups is dropped at once.
    let mut third = TcpStream::connect(&addr).expect("connect");
    third.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut buf = [0u8; 64];
    let read = third.read(&mut buf);
    assert!(
        matches!(read, Ok(0)) || is_reset(read.as_ref().err()),
        "the third connection was not dropped: {read:?}"
    );
    // The idle ones are cut after login_grace_time: the server closes (EOF), rather than the
    // read timing out.
    let started = Instant::now();
    let _ = first.write_all(b"SSH-2.0-test\r\n");
    let mut sink = Vec::new();
    let closed = first.read_to_end(&mut sink);
    let took = started.elapsed();
    println!("an idle connection was cut after {took:?} (login_grace_time {grace:?})");
    assert!(
        closed.is_ok() || is_reset(closed.as_ref().err()),
        "the idle connection was not closed: {closed:?} after {took:?}"
    );
    assert!(took < grace + SLACK, "took {took:?}");
    drop(second);
    // And a real login still works once places are free again.
    wait_until("a login after the idle connections were dropped", || {
        master
            .ssh(&master.user_key, &current_user(), "watch")
            .status
            .success()
    });
}

/// Issue 21: `help` lists the commands (it was "unknown command"); `help CMD` explains one.
#[test]
fn help_lists_the_commands_and_explains_one() {
    let master = TestMaster::start();
    let output = master.ssh(&master.user_key, &current_user(), "help");
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let listed = text(&output.stdout);
    for command in [
        "try",
        "watch",
        "stop",
        "force",
        "rebuild",
        "cancel",
        "sendchange",
    ] {
        assert!(
            listed
                .lines()
                .any(|line| line.trim_start().starts_with(&format!("{command} "))),
            "{command}: {listed}"
        );
    }
    let output = master.ssh(&master.user_key, &current_user(), "help stop");
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let stop = text(&output.stdout);
    assert!(stop.contains("ssh MASTER stop"), "{stop}");
    assert!(
        stop.contains("--reason") && stop.contains("--json"),
        "{stop}"
    );
    let output = master.ssh(&master.user_key, &current_user(), "help frobnicate");
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        text(&output.stderr).trim(),
        "buildbot: unknown command 'frobnicate' (`help` lists the commands)"
    );
}

#[test]
fn a_client_that_leaves_is_noticed_though_the_command_never_read_what_it_typed() {
    let master = TestMaster::start_with(MasterSetup::default());
    let mut ssh = master.ssh_command(&master.user_key, &current_user(), &[]);
    ssh.arg("watch")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut client = ssh.spawn().expect("ssh");
    let mut stdin = client.stdin.take().expect("stdin");
    // Typed ahead into a command that reads no input: it waits unread on the master.
    stdin.write_all(b"typed ahead\n").expect("type");
    stdin.flush().expect("flush");
    let mut stdout = client.stdout.take().expect("stdout");
    let mut first = [0u8; 7];
    stdout.read_exact(&mut first).expect("watch's first line");
    assert_eq!(&first, b"master ");
    client.kill().expect("kill ssh");
    reap(&mut client);
    wait_until("the master to notice the client left", || {
        master
            .log()
            .contains("command=watch}: buildbot::sshd::session: exec finished")
    });
}
