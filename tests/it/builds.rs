//! Builds on real slaves: `buildbot slave` processes dialling the master over SSH, a try job
//! checked out and patched on them, steps run, logs and history kept.

use std::path::{Path, PathBuf};
use std::process::Command;

use buildbot::tryjob as job;

use crate::harness::{
    BIN, MasterSetup, PATIENCE, TestMaster, current_user, output_with_deadline, run_with_timeout,
    text, wait_until,
};
use crate::repo::{Checkout, git};

fn master_with(pool: &[&str], repo: &Path, steps: &str) -> TestMaster {
    TestMaster::start_with(MasterSetup::linux_builder(pool, repo, steps))
}

fn try_wait(master: &TestMaster, cwd: &Path) -> std::process::Output {
    run_with_timeout(master.try_command(cwd, "linux", true), None)
}

fn log_file(master: &TestMaster, number: u32, step: &str) -> PathBuf {
    master
        .path()
        .join("logs/linux")
        .join(number.to_string())
        .join(step)
}

fn api_builds(master: &TestMaster) -> serde_json::Value {
    let url = format!(
        "http://127.0.0.1:{}/api/builds?builder=linux",
        master.http_port
    );
    let body = reqwest::blocking::get(&url)
        .and_then(|r| r.text())
        .expect("GET /api/builds");
    serde_json::from_str(&body).unwrap_or_else(|err| panic!("{err}: {body}"))
}

#[test]
fn a_try_builds_on_a_pool_slave_which_sees_the_patched_file() {
    let checkout = Checkout::new();
    let master = master_with(
        &["pool-1", "pool-2"],
        &checkout.upstream,
        r#"{ name = "show", command = "cat hello.txt; test -x run.sh && head -c 4 logo.bin | od -c | head -1" },"#,
    );
    let _one = master.start_slave("pool-1");
    let _two = master.start_slave("pool-2");
    let output = try_wait(&master, &checkout.work);
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {}",
        text(&output.stderr)
    );
    assert!(stdout.contains("linux #1: started on pool-"), "{stdout}");
    assert!(stdout.contains("linux #1: show success"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "http://127.0.0.1:{}/builders/linux/builds/1",
            master.http_port
        )),
        "{stdout}"
    );
    let log = std::fs::read_to_string(log_file(&master, 1, "2-show.stdout")).expect("step log");
    assert!(
        log.contains("unstaged line"),
        "the step did not see the patched file: {log}"
    );
    assert!(
        log.contains("211   P   N"),
        "the binary file is there: {log}"
    );
}

#[test]
fn a_failing_step_fails_the_build_and_halts_the_sequence() {
    let checkout = Checkout::new();
    let master = master_with(
        &["s1"],
        &checkout.upstream,
        r#"{ name = "fails", command = "echo about to fail; exit 3" },
           { name = "never", command = "touch ran-anyway" },"#,
    );
    let slave = master.start_slave("s1");
    let output = try_wait(&master, &checkout.work);
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("linux #1: fails failure (exit 3"),
        "{stdout}"
    );
    assert!(stdout.contains("linux #1: failure"), "{stdout}");
    assert!(!stdout.contains("never"), "{stdout}");
    assert!(!slave.dir.join("build/linux/ran-anyway").exists());
    let builds = api_builds(&master);
    assert_eq!(builds[0]["result"], "failure", "{builds}");
}

/// Issue 21, item 7: `try --wait` ends a failed build with the last lines of the failing
/// step's log (20 by default, `--tail N`, none with `--tail 0`), sent by the master in the
/// typed stream, before the summary.
#[test]
fn try_wait_shows_the_end_of_the_failing_steps_log() {
    let checkout = Checkout::new();
    let master = master_with(
        &["s1"],
        &checkout.upstream,
        r#"{ name = "tests", command = 'for i in $(seq 1 30); do echo line $i; done; printf "bad \033[31mred\n" >&2; exit 3' },"#,
    );
    let _slave = master.start_slave("s1");
    let output = try_wait(&master, &checkout.work);
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    let tail_at = stdout
        .find("linux #1, step 2 (tests): failure: exit 3")
        .unwrap_or_else(|| panic!("no tail header: {stdout}"));
    let summary_at = stdout.find("summary:").expect("a summary");
    assert!(
        tail_at < summary_at,
        "the tail comes before the summary: {stdout}"
    );
    assert!(
        stdout.contains("  stdout (last 20 lines):\n    line 11\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("    line 30\n  stderr:\n    bad \u{fffd}[31mred\n"),
        "{stdout}"
    );
    assert!(!stdout.contains("    line 10\n"), "{stdout}");
    assert!(
        !stdout.contains('\u{1b}'),
        "no escape reaches the terminal: {stdout}"
    );

    let mut command = master.try_command(&checkout.work, "linux", true);
    command.args(["--tail", "3"]);
    let stdout = text(&run_with_timeout(command, None).stdout);
    assert!(
        stdout.contains("  stdout (last 3 lines):\n    line 28\n    line 29\n    line 30\n"),
        "{stdout}"
    );

    let mut command = master.try_command(&checkout.work, "linux", true);
    command.args(["--tail", "0"]);
    let output = run_with_timeout(command, None);
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("linux #3: failure"), "{stdout}");
    assert!(
        !stdout.contains("line 30"),
        "--tail 0 shows no log: {stdout}"
    );
}

#[test]
fn large_and_binary_output_is_stored_byte_exact() {
    let checkout = Checkout::new();
    let master = master_with(
        &["s1"],
        &checkout.upstream,
        r#"{ name = "noise", command = "head -c 52428800 /dev/urandom > ../noise.bin && cat ../noise.bin && echo to-stderr >&2" },"#,
    );
    let slave = master.start_slave("s1");
    let output = try_wait(&master, &checkout.work);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stdout));
    let expected =
        std::fs::read(slave.dir.join("build/noise.bin")).expect("noise written by the step");
    let stored = std::fs::read(log_file(&master, 1, "2-noise.stdout")).expect("log");
    assert_eq!(stored.len(), 52_428_800);
    assert!(
        stored == expected,
        "the stored log differs from what the step printed"
    );
    assert_eq!(
        std::fs::read_to_string(log_file(&master, 1, "2-noise.stderr")).expect("stderr log"),
        "to-stderr\n"
    );
}

#[test]
fn a_patch_leaving_the_tree_is_refused_and_the_workdir_untouched() {
    let checkout = Checkout::new();
    let master = master_with(
        &["s1"],
        &checkout.upstream,
        r#"{ name = "test", command = "true" },"#,
    );
    let slave = master.start_slave("s1");
    let evil =
        b"--- a/../../escaped.txt\n+++ b/../../escaped.txt\n@@ -0,0 +1 @@\n+gotcha\n".to_vec();
    let baserev = git(&checkout.work, &["rev-parse", "origin/main"]);
    let job = job::encode(&job::Job {
        version: 5,
        jobid: "evil".into(),
        branch: Some("main".into()),
        baserev: Some(baserev.trim().to_string()),
        patch_level: 1,
        patch: Some(evil),
        repository: String::new(),
        project: String::new(),
        who: None,
        comment: None,
        builders: vec!["linux".into()],
        properties: Default::default(),
    });
    let output = master.ssh_with(
        &master.user_key,
        &current_user(),
        "try --wait",
        &[],
        Some(&job),
    );
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("linux #1: checkout failure"), "{stdout}");
    assert!(!slave.dir.join("escaped.txt").exists());
    assert!(
        !slave
            .dir
            .parent()
            .expect("parent")
            .join("escaped.txt")
            .exists()
    );
    let info =
        std::fs::read_to_string(log_file(&master, 1, "1-checkout.info")).expect("checkout log");
    assert!(info.contains("escaped.txt"), "{info}");
    let status = git(&slave.dir.join("build/linux"), &["status", "--porcelain"]);
    assert_eq!(status, "", "the work tree was changed");
}

#[test]
fn a_slave_refuses_a_master_with_another_host_key() {
    let master = master_with(
        &["s1"],
        Path::new("/nonexistent"),
        r#"{ name = "t", command = "true" },"#,
    );
    let other = tempfile::tempdir().expect("temp dir");
    let impostor = crate::harness::TestKey::ed25519(other.path(), "impostor");
    let slave = master.launch_slave("s1", |config| {
        let start = config.find("master_host_key = ").expect("line");
        let end = start + config[start..].find('\n').expect("end");
        config.replace_range(
            start..end,
            &format!("master_host_key = \"{}\"", impostor.public_line),
        );
    });
    wait_until("the slave to report the mismatch", || {
        slave.log().contains("MASTER HOST KEY MISMATCH")
    });
    assert!(
        !master.slave_connected("s1"),
        "{}",
        master.api("/api/slaves")
    );
}

#[test]
fn a_slave_key_presented_for_another_slave_is_refused() {
    let master = master_with(
        &["s1", "s2"],
        Path::new("/nonexistent"),
        r#"{ name = "t", command = "true" },"#,
    );
    let s2_key = master.slaves_dir.path().join("s2/slave_key");
    let slave = master.launch_slave("s1", |config| {
        config.push_str(&format!("key = \"{}\"\n", s2_key.display()));
        *config = config.replacen("key = \"slave_key\"\n", "", 1);
    });
    wait_until("the slave to be refused", || {
        slave.log().contains("refused this slave's key")
    });
    assert!(
        !master.slave_connected("s1") && !master.slave_connected("s2"),
        "{}",
        master.api("/api/slaves")
    );
}

#[test]
fn history_survives_a_master_restart() {
    let checkout = Checkout::new();
    let mut master = master_with(
        &["s1"],
        &checkout.upstream,
        r#"{ name = "test", command = "echo ok" },"#,
    );
    {
        let _slave = master.start_slave("s1");
        let output = try_wait(&master, &checkout.work);
        assert_eq!(output.status.code(), Some(0), "{}", text(&output.stdout));
    }
    let (status, _) = master.terminate();
    assert!(status.success());
    let master = master.start_again();
    let builds = api_builds(&master);
    assert_eq!(builds[0]["number"], 1, "{builds}");
    assert_eq!(builds[0]["result"], "success", "{builds}");
    let steps = builds[0]["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 2, "{builds}");
    assert_eq!(steps[1]["name"], "test");
    // Regression (issue 15): the builder's last build came back empty after a restart.
    let builders = master.api("/api/builders");
    let linux = builders
        .as_array()
        .and_then(|all| all.iter().find(|builder| builder["name"] == "linux"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(linux["last"], "#1 success", "{builders}");
    let watched = master.ssh(&master.user_key, &current_user(), "watch linux");
    let status = text(&watched.stdout);
    assert!(status.contains("last #1 success"), "{status}");
    // The next build numbers on, with an ETA from the first.
    let _slave = master.start_slave("s1");
    let output = try_wait(&master, &checkout.work);
    let stdout = text(&output.stdout);
    assert!(stdout.contains("linux #2: started on s1 (ETA "), "{stdout}");
}

#[test]
fn a_second_build_starts_and_pings_are_answered_while_200_mb_stream() {
    let checkout = Checkout::new();
    let master = TestMaster::start_with(MasterSetup {
        slaves: vec!["s1".into()],
        extra_config: format!(
            "\n[[builder]]\nname = \"big\"\nslaves = [\"s1\"]\nrepo = \"{repo}\"\n\
             steps = [ {{ name = \"stream\", command = \"for i in $(seq 200); do head -c 1048576 /dev/zero; sleep 0.01; done\" }} ]\n\
             \n[[builder]]\nname = \"quick\"\nslaves = [\"s1\"]\nrepo = \"{repo}\"\n\
             steps = [ {{ name = \"hello\", command = \"echo quick\" }} ]\n\
             \n[[scheduler]]\nkind = \"try\"\nbuilders = [\"big\", \"quick\"]\n",
            repo = checkout.upstream.display()
        ),
        edits: vec![(
            "[[slave]]\nname = \"s1\"\n",
            "[[slave]]\nname = \"s1\"\nmax_builds = 2\n",
        )],
        ..MasterSetup::default()
    });
    let _slave = master.start_slave("s1");
    let try_on = |builder: &str| {
        let mut command = Command::new(BIN);
        command
            .args(["try", "--wait", "-b", builder])
            .args(master.client_args())
            .current_dir(&checkout.work)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        command
    };
    let big = try_on("big").spawn().expect("try big");
    wait_until("the big step to stream", || {
        std::fs::metadata(master.path().join("logs/big/1/2-stream.stdout"))
            .is_ok_and(|m| m.len() > 0)
    });
    let quick = run_with_timeout(try_on("quick"), None);
    assert_eq!(quick.status.code(), Some(0), "{}", text(&quick.stdout));
    assert!(
        text(&quick.stdout).contains("quick #1: success"),
        "{}",
        text(&quick.stdout)
    );
    let build = master.api_last_build("big");
    assert!(
        build["number"] == 1 && build["running"] == true && build["steps"][1]["name"] == "stream",
        "big must still be streaming: {build}"
    );
    let big = output_with_deadline(big, "try --wait -b big", PATIENCE * 3);
    assert_eq!(big.status.code(), Some(0), "{}", text(&big.stdout));
    let size = std::fs::metadata(master.path().join("logs/big/1/2-stream.stdout"))
        .expect("log")
        .len();
    assert_eq!(size, 200 * 1024 * 1024);
}
