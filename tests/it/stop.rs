//! Stopping builds: `ssh master stop`, a stop against a frozen slave, and a `try --wait` whose
//! developer pressed Ctrl-C.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Instant;

use nix::sys::signal::Signal;

use crate::harness::{
    MasterSetup, PATIENCE, SLACK, TempAccount, TestMaster, current_user, default_sigint,
    output_with_deadline, text, wait_until,
};
use crate::repo::Checkout;

fn master_with(repo: &Path, steps: &str) -> TestMaster {
    TestMaster::start_with(MasterSetup::linux_builder(&["s1"], repo, steps))
}

fn spawn_try_wait(master: &TestMaster, cwd: &Path) -> std::process::Child {
    let mut command = master.try_command(cwd, "linux", true);
    // Its own process group, as a terminal's foreground job is, which Ctrl-C reaches even when
    // the test runner ignores SIGINT.
    default_sigint(command.process_group(0))
        .spawn()
        .expect("try runs")
}

/// Waits until build #1 is running `step` (its last step, not finished), as the JSON API says.
fn wait_building(master: &TestMaster, step: &str) {
    wait_until(&format!("build #1 to run step {step}"), || {
        let build = master.api("/api/builds?builder=linux")[0].clone();
        let last = build["steps"]
            .as_array()
            .and_then(|steps| steps.last())
            .cloned()
            .unwrap_or_default();
        build["number"] == 1
            && build["running"] == true
            && last["name"] == step
            && last["result"].is_null()
    });
}

fn api_build(master: &TestMaster) -> serde_json::Value {
    master.api_last_build("linux")
}

fn pid_alive(pid: i32) -> bool {
    crate::harness::process_running(pid)
}

#[test]
fn stop_over_ssh_interrupts_a_long_step_with_the_reason() {
    let checkout = Checkout::new();
    let shared = tempfile::tempdir().expect("temp dir");
    let pid_file = shared.path().join("pid");
    let step = format!(
        r#"{{ name = "sleep", command = "echo $$ > {}; exec sleep 600" }}, {{ name = "after", command = "true" }},"#,
        pid_file.display()
    );
    let master = master_with(&checkout.upstream, &step);
    let _slave = master.start_slave("s1");
    let waiting = spawn_try_wait(&master, &checkout.work);
    wait_building(&master, "sleep");
    let pid = crate::harness::wait_for_pid(&pid_file);

    let round_trip = master.ssh_round_trip();
    let started = Instant::now();
    let output = master.ssh(
        &master.user_key,
        &current_user(),
        "stop linux 1 --reason 'wrong branch'",
    );
    let took = started.elapsed();
    println!("stop over ssh took {took:?}");
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(
        text(&output.stdout).trim(),
        format!(
            "linux #1: interrupted (stopped by {}: wrong branch)",
            current_user()
        )
    );
    // The step would sleep 600 s: the stop ends it, rather than waiting for it.
    assert!(
        took < round_trip + SLACK,
        "took {took:?} (an ssh round trip takes {round_trip:?})"
    );
    assert!(!pid_alive(pid), "the step's process survived the stop");

    let output = output_with_deadline(waiting, "try --wait", PATIENCE);
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("linux #1: interrupted"), "{stdout}");
    assert!(
        !stdout.contains("after"),
        "the remaining steps are skipped: {stdout}"
    );
    let build = api_build(&master);
    assert_eq!(build["result"], "interrupted");
    assert_eq!(
        build["reason"],
        format!("stopped by {}: wrong branch", current_user())
    );
    let log =
        std::fs::read_to_string(master.path().join("logs/linux/1/2-sleep.info")).expect("log");
    assert!(
        log.trim_end()
            .ends_with(&format!("interrupted by {}: wrong branch", current_user())),
        "{log}"
    );

    // The same through the client command, as a developer types it.
    let mut stop = std::process::Command::new(crate::harness::BIN);
    stop.args(["stop", "linux", "--reason", "again"])
        .args(master.client_args());
    let output = crate::harness::run_with_timeout(stop, None);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        text(&output.stderr).trim(),
        "buildbot: linux is not running"
    );
}

/// Regression (issue 15): `stop B N --reason wrong branch` with the words unquoted, as
/// docs/try.md shows it, was a usage error; an unknown builder is told the builders there are.
#[test]
fn stop_takes_an_unquoted_reason_and_names_the_builders() {
    let checkout = Checkout::new();
    let master = master_with(&checkout.upstream, "");
    let output = master.ssh(
        &master.user_key,
        &current_user(),
        "stop linux 4 --reason wrong branch",
    );
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    // Build #4 never existed: that, not "not running" (issue 21).
    assert_eq!(
        text(&output.stderr).trim(),
        "buildbot: linux has no build #4"
    );

    let mut stop = std::process::Command::new(crate::harness::BIN);
    stop.args(["stop", "nope", "--reason", "wrong", "branch"])
        .args(master.client_args());
    let output = crate::harness::run_with_timeout(stop, None);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    assert_eq!(
        text(&output.stderr).trim(),
        "buildbot: no builder named 'nope' (builders: linux)"
    );

    // A usage mistake is 2, over ssh and through the client alike.
    let output = master.ssh(&master.user_key, &current_user(), "stop linux --reason");
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
}

#[test]
fn a_stop_against_a_frozen_slave_finishes_at_once() {
    let checkout = Checkout::new();
    let master = master_with(
        &checkout.upstream,
        r#"{ name = "sleep", command = "sleep 600" },"#,
    );
    let slave = master.start_slave("s1");
    let waiting = spawn_try_wait(&master, &checkout.work);
    wait_building(&master, "sleep");
    let round_trip = master.ssh_round_trip();
    slave.signal(Signal::SIGSTOP);
    let started = Instant::now();
    let output = master.ssh(
        &master.user_key,
        &current_user(),
        "stop linux --reason 'slave hangs'",
    );
    let took = started.elapsed();
    println!("stop against a frozen slave took {took:?}");
    slave.signal(Signal::SIGCONT);
    assert!(output.status.success(), "{}", text(&output.stderr));
    // A stop that waited for the frozen slave would wait for its keepalive timeout (30 s) or
    // for ever.
    assert!(
        took < round_trip + SLACK,
        "took {took:?} (an ssh round trip takes {round_trip:?})"
    );
    let output = output_with_deadline(waiting, "try --wait", PATIENCE);
    assert!(
        text(&output.stdout).contains("linux #1: interrupted"),
        "{}",
        text(&output.stdout)
    );
}

#[test]
fn ctrl_c_on_try_wait_cancels_the_jobs_unfinished_builds() {
    let checkout = Checkout::new();
    let shared = tempfile::tempdir().expect("temp dir");
    let pid_file = shared.path().join("pid");
    let step = format!(
        r#"{{ name = "sleep", command = "echo $$ > {}; exec sleep 600" }},"#,
        pid_file.display()
    );
    let master = master_with(&checkout.upstream, &step);
    let _slave = master.start_slave("s1");
    let waiting = spawn_try_wait(&master, &checkout.work);
    wait_building(&master, "sleep");
    let pid = crate::harness::wait_for_pid(&pid_file);
    // Ctrl-C reaches the terminal's whole foreground group: ssh dies with the client.
    let group = nix::unistd::Pid::from_raw(i32::try_from(waiting.id()).expect("pid"));
    nix::sys::signal::killpg(group, Signal::SIGINT).expect("SIGINT to the try group");
    let output = output_with_deadline(waiting, "try --wait after Ctrl-C", PATIENCE);
    assert!(!output.status.success(), "{:?}", output.status);
    // The last line says what became of the builds.
    let stderr = text(&output.stderr);
    assert!(
        stderr.trim_end().lines().last().is_some_and(|last| last
            .starts_with("buildbot try: interrupted: the master stops this job's builds")),
        "{stderr}"
    );
    wait_until("the build to be interrupted", || {
        api_build(&master)["result"] == "interrupted"
    });
    assert_eq!(
        api_build(&master)["reason"],
        "stopped by try --wait (client disconnected): the submitter went away"
    );
    wait_until("the step's process to end", || !pid_alive(pid));
}

#[test]
fn an_admin_group_member_may_stop_without_the_right_to_try() {
    let admin = TempAccount::create("an_admin_group_member_may_stop_without_the_right_to_try");
    let user = admin.user.as_str();
    let checkout = Checkout::new();
    let mut setup = MasterSetup::linux_builder(
        &["s1"],
        &checkout.upstream,
        r#"{ name = "sleep", command = "sleep 600" },"#,
    );
    let admin_line: &'static str = Box::leak(
        format!("name = \"example\"\nadmin_group = \"{}\"", admin.group).into_boxed_str(),
    );
    setup.edits.push(("name = \"example\"", admin_line));
    let master = TestMaster::start_with(setup);
    master.authorize(user, &master.user_key.public_line);
    let _slave = master.start_slave("s1");
    let waiting = spawn_try_wait(&master, &checkout.work);
    wait_building(&master, "sleep");
    // The user may not try (the master dir is private to its owner) ...
    let output = master.ssh_with(&master.user_key, user, "try", &[], Some(b"1:5,2:{},"));
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains(&format!("{user} may not submit try jobs")),
        "{}",
        text(&output.stderr)
    );
    // ... but may stop, being in the admin group.
    let output = master.ssh(
        &master.user_key,
        user,
        "stop linux --reason 'admin says so'",
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        text(&output.stdout).contains(&format!("stopped by {user}: admin says so")),
        "{}",
        text(&output.stdout)
    );
    let output = output_with_deadline(waiting, "try --wait", PATIENCE);
    assert!(
        text(&output.stdout).contains("linux #1: interrupted"),
        "{}",
        text(&output.stdout)
    );
}

/// Issue 15: a master that shuts down while `try --wait` follows its builds is reported as
/// such, not with the hint about keys and authorized_keys.
#[test]
fn a_master_shutting_down_during_try_wait_is_reported_as_such() {
    let checkout = Checkout::new();
    let step = r#"{ name = "sleep", command = "exec sleep 600" },"#;
    let mut master = master_with(&checkout.upstream, step);
    let _slave = master.start_slave("s1");
    let waiting = spawn_try_wait(&master, &checkout.work);
    wait_building(&master, "sleep");
    let (status, _) = master.terminate();
    assert!(status.success(), "{status:?}");
    let output = output_with_deadline(waiting, "try --wait while the master stops", PATIENCE);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "buildbot try: the master is shutting down; your build will run again when it is back"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("authorized_keys"), "{stderr}");
    // And it does run again when the master is back.
    drop(_slave);
    let master = master.start_again();
    let _slave = master.start_slave("s1");
    wait_until("the build to run again after the restart", || {
        let build = master.api("/api/builds?builder=linux")[0].clone();
        build["number"] == 2 && build["running"] == true
    });
}

/// Issue 21: `stop --json` answers one typed object with the build, its URL and its result.
#[test]
fn stop_answers_in_json() {
    let checkout = Checkout::new();
    let master = master_with(
        &checkout.upstream,
        r#"{ name = "sleep", command = "exec sleep 600" },"#,
    );
    let _slave = master.start_slave("s1");
    let waiting = spawn_try_wait(&master, &checkout.work);
    wait_building(&master, "sleep");
    let output = master.ssh(
        &master.user_key,
        &current_user(),
        "stop linux --reason typed --json",
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let answer: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("one JSON object");
    assert_eq!(answer["action"], "stop", "{answer}");
    assert_eq!(answer["builder"], "linux", "{answer}");
    assert_eq!(answer["number"], 1, "{answer}");
    assert_eq!(answer["result"], "interrupted", "{answer}");
    assert!(
        answer["url"]
            .as_str()
            .is_some_and(|url| url.ends_with("/builders/linux/builds/1")),
        "{answer}"
    );
    let waited = output_with_deadline(waiting, "try --wait", PATIENCE);
    assert_eq!(waited.status.code(), Some(1), "{}", text(&waited.stdout));
}
