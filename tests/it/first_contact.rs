//! A new user's first minutes (issue 15): what the master prints to paste, what a wrong or
//! unknown host key says, and the refusals of `master` and `create-master` that say what to do.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use crate::harness::{BIN, PATIENCE, TestMaster, current_user, reap, run_with_timeout, text};

fn buildbot(args: &[&str]) -> std::process::Output {
    let mut command = Command::new(BIN);
    command.args(args);
    run_with_timeout(command, None)
}

/// `buildbot watch --once` against `master` with `ssh` as the ssh command and `extra` flags.
fn watch_once(master: &TestMaster, ssh: &str, extra: &[&str]) -> std::process::Output {
    let mut command = Command::new(BIN);
    command
        .args(["watch", "--once", "--host", "127.0.0.1", "--port"])
        .arg(master.ssh_port.to_string())
        .args(["-u", &current_user(), "--ssh", ssh])
        .args(extra);
    run_with_timeout(command, None)
}

/// The user's ssh with no opinion about host keys: ssh's defaults with an empty known_hosts.
fn strict_ssh(master: &TestMaster) -> String {
    format!(
        "ssh -F /dev/null -i {} -o BatchMode=yes -o IdentitiesOnly=yes -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
        master.user_key.private.display()
    )
}

#[test]
fn a_host_key_failure_is_reported_as_such() {
    let master = TestMaster::start();
    let host_key = std::fs::read_to_string(master.path().join("host_key.pub")).expect("pub key");

    // Unknown key (nothing pinned, nothing in known_hosts).
    let output = watch_once(&master, &strict_ssh(&master), &[]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("the master's host key is not known: add master_host_key = "),
        "{stderr}"
    );
    assert!(!stderr.contains("authorized_keys"), "{stderr}");

    // A wrong pin, even with an ssh command that would not check at all.
    let output = watch_once(
        &master,
        &master.ssh_for_try(&master.user_key),
        &["--master-host-key", master.user_key.public_line.trim()],
    );
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("the master's host key is not the pinned master_host_key"),
        "{stderr}"
    );

    // The right pin gets in.
    let output = watch_once(
        &master,
        &strict_ssh(&master),
        &["--master-host-key", host_key.trim()],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).starts_with("master example:"));
}

#[test]
fn the_master_prints_the_lines_to_paste() {
    let fresh = tempfile::tempdir().expect("temp dir");
    let dir = fresh.path().join("m");
    let created = buildbot(&[
        "create-master",
        dir.to_str().expect("utf-8"),
        "--ssh-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
    ]);
    assert!(created.status.success(), "{}", text(&created.stderr));
    let fresh_key = std::fs::read_to_string(dir.join("host_key.pub")).expect("pub key");
    let mut child = Command::new(BIN)
        .arg("master")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("master starts");
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + PATIENCE;
    let mut lines = Vec::new();
    while !lines
        .iter()
        .any(|line: &String| line.starts_with("-----------"))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => break,
        }
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid")),
        nix::sys::signal::Signal::SIGTERM,
    );
    reap(&mut child);
    let printed = lines.join("\n");
    let pin = format!("master_host_key = \"{}\"", fresh_key.trim());
    assert!(
        printed.lines().filter(|line| line.trim() == pin).count() == 2,
        "the .buildbot and slave.toml lines: {printed}"
    );
    assert!(printed.contains("host = \"127.0.0.1\""), "{printed}");
    assert!(printed.contains("---- to reach this master"), "{printed}");
}

#[test]
fn master_without_a_config_suggests_create_master() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let output = buildbot(&["master", tmp.path().to_str().expect("utf-8")]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "there is no master here; make one with `buildbot create-master {}`",
            tmp.path().display()
        )),
        "{stderr}"
    );
}

#[test]
fn create_master_refuses_a_directory_that_holds_something_else() {
    let tmp = tempfile::tempdir().expect("temp dir");
    std::fs::write(tmp.path().join("notes.txt"), "mine").expect("write");
    let dir = tmp.path().to_str().expect("utf-8");
    let output = buildbot(&["create-master", dir]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("is not empty and holds no master; refusing to create a master in it"),
        "{stderr}"
    );
    assert!(!tmp.path().join("master.toml").exists());
    let forced = buildbot(&["create-master", "--force", dir]);
    assert!(forced.status.success(), "{}", text(&forced.stderr));
    assert!(tmp.path().join("master.toml").is_file());
}

#[test]
fn create_slave_help_shows_the_host_key_as_required() {
    let output = buildbot(&["create-slave", "--help"]);
    assert!(output.status.success());
    let help = text(&output.stdout);
    let usage = help
        .lines()
        .find(|line| line.starts_with("Usage:"))
        .unwrap_or_default();
    assert!(usage.contains("--master-host-key <KEY>"), "{help}");
    assert!(
        !usage.contains("[--master-host-key"),
        "shown as optional: {usage}"
    );
    let tmp = tempfile::tempdir().expect("temp dir");
    let output = buildbot(&[
        "create-slave",
        tmp.path().join("s").to_str().expect("utf-8"),
        "--master",
        "127.0.0.1:2222",
        "--name",
        "s1",
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
}

#[test]
fn create_master_takes_the_masters_name() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("m");
    let dir = dir.to_str().expect("utf-8");
    let output = buildbot(&["create-master", "--name", "Team \"A\" CI", dir]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let config = std::fs::read_to_string(tmp.path().join("m/master.toml")).expect("config");
    let parsed: toml::Table = toml::from_str(&config).expect("valid TOML");
    assert_eq!(parsed["master"]["name"].as_str(), Some("Team \"A\" CI"));
    let checked = buildbot(&["checkconfig", dir]);
    assert!(checked.status.success(), "{}", text(&checked.stderr));
    assert!(
        text(&checked.stdout).contains("OK (0 slaves, 0 builders)"),
        "{}",
        text(&checked.stdout)
    );

    let empty = buildbot(&[
        "create-master",
        "--name",
        " ",
        tmp.path().join("n").to_str().expect("utf-8"),
    ]);
    assert_eq!(empty.status.code(), Some(1));
    assert!(!tmp.path().join("n/master.toml").exists());
}

#[test]
fn checkconfig_shows_every_mistake_in_one_run_with_suggestions() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("m");
    let dir = dir.to_str().expect("utf-8");
    let created = buildbot(&["create-master", dir]);
    assert!(created.status.success(), "{}", text(&created.stderr));
    let path = tmp.path().join("m/master.toml");
    let mut config = std::fs::read_to_string(&path).expect("config");
    config.push_str(
        r#"
[[builder]]
name = "linux"
slaves = []
repo = "/srv/git/p.git"
steps = [ { name = "a", command = "make", env = { A = 1 }, workdir = "../.." } ]
[[scheduler]]
kind = "force"
builders = ["linx"]
"#,
    );
    std::fs::write(&path, &config).expect("config written");
    let output = buildbot(&["checkconfig", dir]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    let line_of = |text: &str| {
        let offset = config.rfind(text).expect("in the config");
        config[..offset].matches('\n').count() + 1
    };
    for (at, message) in [
        ("name = \"linux\"", "builder \"linux\" names no slaves"),
        (
            "steps = [ {",
            "invalid type: integer `1`, expected a string",
        ),
        (
            "steps = [ {",
            "step \"a\": workdir \"../..\" must be a relative path",
        ),
        (
            "builders = [\"linx\"]",
            "scheduler names builder \"linx\", which is not defined by any [[builder]] (did you mean `linux`?)",
        ),
    ] {
        let want = format!("master.toml:{}: {message}", line_of(at));
        assert!(stderr.contains(&want), "missing {want:?} in:\n{stderr}");
    }
}
