//! What a slave leaves behind, with real processes: a step's daemonised descendants (setsid,
//! out of the step's process group) end with the step, under both mechanisms (a cgroup per
//! step, and the environment tag with the slave as subreaper); a slave killed with SIGKILL
//! and started again kills what its previous run left; a second `buildbot slave` on one
//! directory is refused.

use std::path::Path;
use std::process::{Command, Stdio};

use nix::sys::signal::Signal;

use crate::harness::{
    BIN, MasterSetup, PATIENCE, TestMaster, output_with_deadline, process_running, text, wait_until,
};
use crate::repo::Checkout;

/// The pids of live processes whose command line mentions `marker`.
fn processes_mentioning(marker: &Path) -> Vec<i32> {
    let marker = marker.to_string_lossy().into_owned();
    let own = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != own && process_running(*pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(&marker))
        })
        .collect()
}

/// A step that leaves a `setsid` loop appending to `marker` (the issue's reproduction),
/// then, with `then`, does something more.
fn daemonising_step(marker: &Path, then: &str) -> String {
    format!(
        r#"{{ name = "daemon", command = "setsid sh -c 'while :; do date >> {m}; sleep 0.1; done' & {then}" }},"#,
        m = marker.display()
    )
}

fn run_try(master: &TestMaster, cwd: &Path) -> std::process::Output {
    let child = master
        .try_command(cwd, "linux", true)
        .spawn()
        .expect("try runs");
    output_with_deadline(child, "try --wait", PATIENCE * 3)
}

fn a_setsid_loop_is_gone_after_its_build(slave_toml: impl FnOnce(&mut String), mechanism: &str) {
    let checkout = Checkout::new();
    let scratch = tempfile::tempdir().expect("temp dir");
    let marker = scratch.path().join("loop-output");
    let step = daemonising_step(&marker, "sleep 0.5; test -s {m}")
        .replace("{m}", &marker.display().to_string());
    let master = TestMaster::start_with(MasterSetup::linux_builder(
        &["s1"],
        &checkout.upstream,
        &step,
    ));
    let slave = master.start_slave_with("s1", slave_toml);
    assert!(
        slave.log().contains(mechanism),
        "the slave's start log names its mechanism ({mechanism}): {}",
        slave.log()
    );
    let output = run_try(&master, &checkout.work);
    assert!(
        output.status.success(),
        "the build passes (the loop ran while the step did): {}{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    // The build is over: nothing of its loop may be left to write into a later build.
    wait_until("the step's setsid loop to be gone", || {
        processes_mentioning(&marker).is_empty()
    });
    let size = std::fs::metadata(&marker).expect("the loop wrote").len();
    // Past the loop's period: a live loop would have appended by then.
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        std::fs::metadata(&marker).expect("marker").len(),
        size,
        "nothing appends to the file after the build"
    );
}

#[test]
fn a_setsid_loop_a_step_leaves_is_gone_after_its_build_with_cgroups() {
    a_setsid_loop_is_gone_after_its_build(|_| {}, "steps run in a cgroup each");
}

#[test]
fn a_setsid_loop_a_step_leaves_is_gone_after_its_build_without_cgroups() {
    a_setsid_loop_is_gone_after_its_build(
        |config| config.push_str("step_cgroups = false\n"),
        "with the slave as their subreaper",
    );
}

fn a_restarted_slave_kills_what_its_killed_run_left(slave_toml: fn(&mut String)) {
    let checkout = Checkout::new();
    let scratch = tempfile::tempdir().expect("temp dir");
    let marker = scratch.path().join("loop-output");
    let step = daemonising_step(&marker, "exec sleep 300");
    let master = TestMaster::start_with(MasterSetup::linux_builder(
        &["s1"],
        &checkout.upstream,
        &step,
    ));
    let first = master.start_slave_with("s1", slave_toml);
    let try_wait = master
        .try_command(&checkout.work, "linux", true)
        .spawn()
        .expect("try runs");
    wait_until("the loop to run", || {
        marker.exists() && !processes_mentioning(&marker).is_empty()
    });
    first.signal(Signal::SIGKILL);
    drop(first);
    // The slave had no chance to clean up: the loop survives it (the premise of the test).
    std::thread::sleep(std::time::Duration::from_millis(300));
    let leftovers = processes_mentioning(&marker);
    assert!(
        !leftovers.is_empty(),
        "the setsid loop outlived the SIGKILLed slave"
    );
    let second = master.launch_slave("s1", |_| {});
    // By pid: the request is retried on the restarted slave, whose new step starts a loop of
    // its own.
    wait_until("the restarted slave to kill the leftover loop", || {
        leftovers.iter().all(|pid| !process_running(*pid))
    });
    wait_until("the restart to log what it killed", || {
        second
            .log()
            .contains("that a previous run of this slave left running")
    });
    drop(try_wait);
}

#[test]
fn a_slave_restarted_after_sigkill_kills_its_previous_runs_leftovers_with_cgroups() {
    a_restarted_slave_kills_what_its_killed_run_left(|_| {});
}

#[test]
fn a_slave_restarted_after_sigkill_kills_its_previous_runs_leftovers_without_cgroups() {
    a_restarted_slave_kills_what_its_killed_run_left(|config| {
        config.push_str("step_cgroups = false\n")
    });
}

#[test]
fn a_second_slave_on_one_directory_is_refused_naming_the_first() {
    let checkout = Checkout::new();
    let master = TestMaster::start_with(MasterSetup::linux_builder(
        &["s1"],
        &checkout.upstream,
        r#"{ name = "ok", command = "true" },"#,
    ));
    let mut first = master.start_slave("s1");
    let second = Command::new(BIN)
        .arg("slave")
        .arg(&first.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("second slave starts");
    let output = output_with_deadline(second, "the second slave", PATIENCE);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let expected = format!(
        "another slave is running in {} (pid {})",
        first.dir.display(),
        first.pid()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(first.is_running(), "the first slave runs on");
    assert!(master.slave_connected("s1"));
}
