//! `buildbot watch`: the status, then every build event as it happens.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use crate::harness::{
    BIN, MasterSetup, PATIENCE, TestMaster, default_sigint, run_with_timeout, text, wait_until,
    wait_with_deadline,
};
use crate::repo::Checkout;

fn watch_command(master: &TestMaster, extra: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command.arg("watch").args(extra).args(master.client_args());
    command
}

/// `buildbot watch ARGS` following a master, in a process group of its own (Ctrl-C goes to
/// it alone), its lines read as they come.
pub struct Watching {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl Watching {
    pub fn start(master: &TestMaster, extra: &[&str]) -> Watching {
        let mut command = watch_command(master, extra);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0);
        let mut child = default_sigint(&mut command).spawn().expect("watch runs");
        let stdout = child.stdout.take().expect("stdout");
        let (lines_tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        Watching { child, lines }
    }

    /// The lines up to and with the first that `matches`; panics after `PATIENCE`.
    pub fn until(&self, matches: impl Fn(&str) -> bool) -> Vec<String> {
        let mut seen = Vec::new();
        let deadline = Instant::now() + PATIENCE;
        while !seen.last().is_some_and(|line: &String| matches(line)) {
            seen.push(
                self.lines
                    .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                    .unwrap_or_else(|_| panic!("watch saw only: {seen:?}")),
            );
        }
        seen
    }

    /// Ctrl-C, as a terminal would send it, and the process's end.
    pub fn interrupt(mut self) {
        let group = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGINT).expect("SIGINT to watch");
        wait_with_deadline(&mut self.child, "watch after Ctrl-C", PATIENCE);
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        // A test that failed before `interrupt` leaves no watch behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn watch_shows_the_status_then_follows_the_builds() {
    let checkout = Checkout::new();
    let master = TestMaster::start_with(MasterSetup::linux_builder(
        &["s1"],
        &checkout.upstream,
        r#"{ name = "test", command = "true" },"#,
    ));
    let _slave = master.start_slave("s1");

    let once = run_with_timeout(watch_command(&master, &["--once"]), None);
    assert!(once.status.success(), "{}", text(&once.stderr));
    assert!(
        text(&once.stdout).contains("linux: idle, 0 queued; slaves: s1 (connected)"),
        "{}",
        text(&once.stdout)
    );

    let watching = Watching::start(&master, &["-b", "linux"]);
    let first = watching.until(|_| true);
    assert!(first[0].starts_with("master example:"), "{first:?}");
    let output = run_with_timeout(master.try_command(&checkout.work, "linux", true), None);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stdout));
    let seen = watching.until(|line| line == "linux #1: success");
    assert!(
        seen.iter().any(|line| line == "queued for linux"),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|line| line.starts_with("linux #1: test success")),
        "{seen:?}"
    );
    watching.interrupt();
    wait_until("the master to end the watch session", || {
        master.log().contains(
            "command=watch --json --follow linux}: buildbot::sshd::session: exec finished",
        )
    });
}
