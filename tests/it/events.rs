//! Typed events end to end: `buildbot watch --json` prints one JSON object per line and, when
//! its connection drops, resumes after the last event it saw: nothing lost, nothing twice.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use serde_json::Value;

use crate::harness::{
    BIN, MasterSetup, PATIENCE, TestMaster, run_with_timeout, text, wait_until, wait_with_timeout,
};
use crate::repo::Checkout;

/// A `buildbot watch` process and its stdout lines; the whole process group dies on drop.
struct Watcher {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Watcher {
    fn start(master: &TestMaster, extra: &[&str]) -> Watcher {
        let mut child = Command::new(BIN)
            .arg("watch")
            .args(extra)
            .args(master.client_args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("buildbot watch runs");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (lines_tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        Watcher { child, lines }
    }

    /// The next line as JSON; fails the test after PATIENCE.
    fn next_json(&self, seen: &[Value]) -> Value {
        let line = self
            .lines
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("watch --json printed nothing more; seen: {seen:#?}"));
        serde_json::from_str(&line)
            .unwrap_or_else(|err| panic!("not one JSON object: {line:?}: {err}"))
    }

    /// Events until build `number` of linux has finished.
    fn events_until_finished(&self, number: i64, seen: &mut Vec<Value>) {
        loop {
            let event = self.next_json(seen);
            let finished = event["type"] == "build_finished" && event["number"] == number;
            seen.push(event);
            if finished {
                return;
            }
        }
    }

    /// The pids of the ssh processes this watch runs now.
    fn ssh_children(&self) -> Vec<i32> {
        let output = Command::new("pgrep")
            .args(["-P", &self.child.id().to_string(), "ssh"])
            .output()
            .expect("pgrep runs");
        text(&output.stdout)
            .lines()
            .filter_map(|line| line.trim().parse().ok())
            .collect()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = wait_with_timeout(&mut self.child, PATIENCE);
    }
}

#[test]
fn watch_json_prints_events_and_resumes_after_a_dropped_connection_without_loss_or_repeat() {
    let checkout = Checkout::new();
    let master = TestMaster::start_with(MasterSetup::linux_builder(
        &["s1"],
        &checkout.upstream,
        r#"{ name = "test", command = "true" },"#,
    ));
    let _slave = master.start_slave("s1");
    let watcher = Watcher::start(&master, &["--json", "-b", "linux"]);

    let status = watcher.next_json(&[]);
    assert_eq!(status["item"], "status", "{status}");
    assert_eq!(
        status["snapshot"]["builders"][0]["name"], "linux",
        "{status}"
    );
    assert_eq!(
        status["snapshot"]["builders"][0]["slaves"][0]["connected"], true,
        "{status}"
    );

    let mut seen = Vec::new();
    let first = run_with_timeout(master.try_command(&checkout.work, "linux", true), None);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stdout));
    watcher.events_until_finished(1, &mut seen);

    // Cut the watch's connection; while it waits to reconnect, a second build runs.
    let ssh = watcher.ssh_children();
    assert_eq!(ssh.len(), 1, "one ssh under watch: {ssh:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(ssh[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill watch's ssh");
    wait_until("watch to notice the lost connection", || {
        watcher.ssh_children() != ssh
    });
    let second = run_with_timeout(master.try_command(&checkout.work, "linux", true), None);
    assert_eq!(second.status.code(), Some(0), "{}", text(&second.stdout));
    watcher.events_until_finished(2, &mut seen);

    drop(watcher);
    // The second session asked to resume (the master logs a session when it ends).
    wait_until("the master to log the resumed watch session", || {
        master
            .log()
            .contains("command=watch --json --follow --since ")
    });
    let seqs: Vec<u64> = seen
        .iter()
        .map(|event| {
            event["seq"]
                .as_u64()
                .unwrap_or_else(|| panic!("no seq: {event}"))
        })
        .collect();
    let consecutive: Vec<u64> = (seqs[0]..seqs[0] + seqs.len() as u64).collect();
    assert_eq!(seqs, consecutive, "every event once, in order: {seen:#?}");
    for kind in [
        "requests_queued",
        "build_started",
        "step_started",
        "step_finished",
    ] {
        assert_eq!(
            seen.iter().filter(|event| event["type"] == kind).count(),
            if kind.starts_with("step") { 4 } else { 2 },
            "{kind} events of two builds with two steps each: {seen:#?}"
        );
    }
    assert!(
        seen.iter()
            .filter(|event| event["type"] == "build_finished")
            .all(|event| event["result"] == "success"),
        "{seen:#?}"
    );
}

#[test]
fn the_master_refuses_a_resume_point_it_cannot_read() {
    let master = TestMaster::start();
    let output = master.ssh(
        &master.user_key,
        &crate::harness::current_user(),
        "watch --since 42",
    );
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    assert!(
        text(&output.stderr).contains("--since <EPOCH:SEQ>': needs EPOCH:SEQ"),
        "{}",
        text(&output.stderr)
    );
}
