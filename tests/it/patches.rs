//! Try patches on a real slave that no patch can take down: the patch step runs in a child
//! process (`buildbot apply-patch`), so a crash or a hang there ends the build as `exception`
//! while the slave stays connected; and a submodule pointer change applies, and is checked out
//! when the builder asks for submodules.
//!
//! The crash and the hang are injected with `BUILDBOT_APPLY_PATCH_FAULT`, which only the child
//! side of the patch step reads (see `slave::checkout::sandbox`).

use std::path::Path;
use std::process::{Command, Output};

use crate::harness::{BIN, MasterSetup, TestMaster, TestSlave, run_with_timeout, text};
use crate::repo::{Checkout, git};

fn master_for(slave: &str, repo: &Path, steps: &str, submodules: bool) -> TestMaster {
    let mut setup = MasterSetup::linux_builder(&[slave], repo, steps);
    if submodules {
        setup.extra_config = setup.extra_config.replacen(
            "branch = \"main\"\n",
            "branch = \"main\"\nsubmodules = true\n",
            1,
        );
    }
    TestMaster::start_with(setup)
}

fn try_wait(master: &TestMaster, cwd: &Path) -> Output {
    run_with_timeout(master.try_command(cwd, "linux", true), None)
}

/// The build ended as exception with `reason`, and the slave process is alive and connected.
fn assert_exception_and_slave_alive(
    master: &TestMaster,
    slave: &mut TestSlave,
    output: &Output,
    reason: &str,
) {
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("exception"),
        "stdout: {stdout}\nstderr: {}",
        text(&output.stderr)
    );
    let build = master.api_last_build("linux");
    assert_eq!(build["result"], "exception", "{build}");
    let recorded = build["reason"].as_str().unwrap_or_default();
    assert!(recorded.contains(reason), "{build}");
    assert!(slave.is_running(), "the slave died:\n{}", slave.log());
    assert!(
        master.slave_connected("patcher"),
        "the slave is not connected"
    );
}

#[test]
fn a_patch_step_that_crashes_ends_the_build_as_exception_and_the_slave_stays() {
    let checkout = Checkout::new();
    let master = master_for(
        "patcher",
        &checkout.upstream,
        r#"{ name = "test", command = "true" },"#,
        false,
    );
    let mut slave = master.start_slave_env(
        "patcher",
        |_| {},
        &[("BUILDBOT_APPLY_PATCH_FAULT", "abort")],
    );
    let output = try_wait(&master, &checkout.work);
    assert_exception_and_slave_alive(&master, &mut slave, &output, "crashed (SIGABRT)");
}

#[test]
fn a_patch_step_that_hangs_is_killed_at_its_time_limit() {
    let checkout = Checkout::new();
    let master = master_for(
        "patcher",
        &checkout.upstream,
        r#"{ name = "test", command = "true" },"#,
        false,
    );
    // slave.toml has one table, [slave]: an appended key belongs to it.
    let mut slave = master.start_slave_env(
        "patcher",
        |config| config.push_str("patch_timeout = \"2s\"\n"),
        &[("BUILDBOT_APPLY_PATCH_FAULT", "hang")],
    );
    let output = try_wait(&master, &checkout.work);
    assert_exception_and_slave_alive(&master, &mut slave, &output, "took longer than 2s");
}

/// Runs git with file URLs allowed for submodules (git refuses them by default).
fn git_sub(dir: &Path, args: &[&str]) -> String {
    let mut all = vec!["-c", "protocol.file.allow=always"];
    all.extend_from_slice(args);
    git(dir, &all)
}

#[test]
fn a_submodule_bump_applies_and_is_checked_out_when_the_builder_asks() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let sub = tmp.path().join("sub");
    std::fs::create_dir(&sub).expect("mkdir");
    git(&sub, &["init", "-q"]);
    let mut sub_commits = Vec::new();
    for version in 0..2 {
        std::fs::write(sub.join("lib.txt"), format!("version {version}\n")).expect("write");
        git(&sub, &["add", "."]);
        git(&sub, &["commit", "-q", "-m", "lib"]);
        sub_commits.push(git(&sub, &["rev-parse", "HEAD"]).trim().to_string());
    }
    let upstream = tmp.path().join("upstream");
    std::fs::create_dir(&upstream).expect("mkdir");
    git(&upstream, &["init", "-q"]);
    std::fs::write(upstream.join("main.c"), "int main;\n").expect("write");
    let url = sub.display().to_string();
    git(
        &upstream,
        &["config", "-f", ".gitmodules", "submodule.lib.path", "lib"],
    );
    git(
        &upstream,
        &["config", "-f", ".gitmodules", "submodule.lib.url", &url],
    );
    std::fs::create_dir(upstream.join("lib")).expect("mkdir");
    let gitlink = |commit: &str| format!("160000,{commit},lib");
    git(
        &upstream,
        &[
            "update-index",
            "--add",
            "--cacheinfo",
            &gitlink(&sub_commits[0]),
        ],
    );
    git(&upstream, &["add", "-A"]);
    git(&upstream, &["commit", "-q", "-m", "base"]);
    let base = git(&upstream, &["rev-parse", "HEAD"]).trim().to_string();
    // The change a developer tries: the submodule bumped, and a file edited.
    git(&upstream, &["checkout", "-q", "-b", "topic"]);
    git(
        &upstream,
        &["update-index", "--cacheinfo", &gitlink(&sub_commits[1])],
    );
    std::fs::write(upstream.join("main.c"), "int main2;\n").expect("write");
    git(&upstream, &["commit", "-q", "-am", "bump"]);
    let patch = git_sub(&upstream, &["diff", "--binary", "-M", &base, "topic"]);
    assert!(patch.contains("+Subproject commit"), "{patch}");
    git(&upstream, &["checkout", "-q", "main"]);

    let master = master_for(
        "patcher",
        &upstream,
        r#"{ name = "show", command = "git ls-files -s lib; cat lib/lib.txt main.c" },"#,
        true,
    );
    let mut slave = master.start_slave("patcher");
    let mut command = Command::new(BIN);
    command
        .args([
            "try",
            "--wait",
            "--diff",
            "-",
            "-p",
            "1",
            "--baserev",
            &base,
        ])
        .args(["-b", "linux"])
        .args(master.client_args())
        .current_dir(tmp.path());
    let output = run_with_timeout(command, Some(patch.as_bytes()));
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {}\nslave: {}",
        text(&output.stderr),
        slave.log()
    );
    let log = std::fs::read_to_string(master.path().join("logs/linux/1/2-show.stdout"))
        .expect("step log");
    assert!(
        log.contains(&format!("160000 {} 0\tlib", sub_commits[1])),
        "{log}"
    );
    assert!(log.contains("version 1"), "{log}");
    assert!(log.contains("int main2;"), "{log}");
    assert!(slave.is_running());
}

/// A build that kills its slave (the step runs `kill -9` on its parent, the slave process) is
/// retried once on the restarted slave, then ends as exception and is not handed out again.
#[test]
fn a_request_whose_slave_is_lost_twice_ends_as_exception() {
    let checkout = Checkout::new();
    let master = master_for(
        "patcher",
        &checkout.upstream,
        r#"{ name = "kill", command = "kill -9 $PPID; sleep 30" },"#,
        false,
    );
    let mut first = master.start_slave("patcher");
    let mut waiting = master.try_command(&checkout.work, "linux", true);
    let waiting = waiting.spawn().expect("try --wait starts");
    crate::harness::wait_until("the first slave to die", || !first.is_running());
    // Not start_slave: the retry reaches the second slave at once and kills it, often before
    // a poll of /api/slaves could see it connected.
    let mut second = master.launch_slave("patcher", |_| {});
    crate::harness::wait_until("the second slave to die", || !second.is_running());
    let output =
        crate::harness::output_with_deadline(waiting, "try --wait", crate::harness::PATIENCE);
    let stdout = text(&output.stdout);
    assert!(stdout.contains("exception"), "{stdout}");
    let builds = master.api("/api/builds?builder=linux");
    assert_eq!(builds.as_array().map(Vec::len), Some(2), "{builds}");
    assert_eq!(builds[0]["result"], "exception", "{builds}");
    assert_eq!(
        builds[0]["reason"], "slave lost twice while building this request",
        "{builds}"
    );
    // A third slave gets nothing to run: the request is not queued any more.
    let mut third = master.start_slave("patcher");
    assert!(third.is_running());
    assert_eq!(
        master
            .api("/api/builds?builder=linux")
            .as_array()
            .map(Vec::len),
        Some(2)
    );
}
