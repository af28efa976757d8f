//! Several masters on one PostgreSQL acting as one CI: a job sent to one master builds on a
//! slave of another, everybody sees it live wherever they look, a stop works from anywhere, a
//! killed or stalled master loses nothing (its builds are retried elsewhere, exactly once, and
//! a stalled one coming back is fenced off), and the cluster-wide jobs run once.
//!
//! Each test gets a fresh database in the private PostgreSQL server of this test binary
//! (`tests/support/postgres.rs`).

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::{
    MasterSetup, TestMaster, current_user, keepalive, process_running, run_with_timeout, signal,
    text, wait_until,
};
use crate::postgres;
use crate::repo::Checkout;

/// The shortest lease the config accepts: failover tests wait for it to run out.
const LEASE: &str = "2s";

fn fresh_database() -> String {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the database set-up")
        .block_on(postgres::fresh_database())
}

/// A step that passes, or hangs (its pid in `dir/pid`) while `dir/hang` exists.
fn hanging_steps(dir: &Path) -> String {
    format!(
        r#"{{ name = "test", command = "sh -c 'if [ -e {d}/hang ]; then echo $$ > {d}/pid; exec sleep 300; fi; echo built'" }},"#,
        d = dir.display()
    )
}

fn database_section(url: &str) -> String {
    format!("\n[database]\nurl = \"{url}\"\nlease = \"{LEASE}\"\n")
}

fn named(name: &str) -> (&'static str, &'static str) {
    (
        "name = \"example\"",
        Box::leak(format!("name = \"{name}\"").into_boxed_str()),
    )
}

/// The first master of a cluster: builder linux (try) on the slave s1.
fn first_master(url: &str, repo: &Path, steps: &str) -> TestMaster {
    let mut setup = MasterSetup::linux_builder(&["s1"], repo, steps);
    setup.extra_config.push_str(&database_section(url));
    setup.edits.push(named("ci-a"));
    TestMaster::start_with(setup)
}

/// Another master of `first`'s cluster: the same builders and slaves, the same host key.
fn member_of(first: &TestMaster, name: &str, url: &str, repo: &Path, steps: &str) -> TestMaster {
    let slave_key = std::fs::read_to_string(first.slaves_dir.path().join("s1/slave_key.pub"))
        .expect("s1's public key");
    let mut setup = MasterSetup::linux_builder(&[], repo, steps);
    setup.extra_config = format!(
        "\n[[slave]]\nname = \"s1\"\npublic_key = \"{}\"\n{}{}",
        slave_key.trim(),
        setup
            .extra_config
            .replace("slaves = []", "slaves = [\"s1\"]"),
        database_section(url),
    );
    setup.host_key_of = Some(first.path().to_path_buf());
    setup.edits.push(named(name));
    TestMaster::start_with(setup)
}

/// Edits slave.toml to list these masters (and keep quiet links short, so a stalled master is
/// noticed within seconds).
fn masters(list: &[&TestMaster]) -> impl FnOnce(&mut String) {
    let addresses: Vec<String> = list
        .iter()
        .map(|master| format!("\"127.0.0.1:{}\"", master.ssh_port))
        .collect();
    move |config: &mut String| {
        keepalive("1s", "3s")(config);
        let start = config.find("master = ").expect("master line");
        let end = start + config[start..].find('\n').expect("line end");
        config.replace_range(start..end, &format!("master = [{}]", addresses.join(", ")));
    }
}

fn builds(master: &TestMaster) -> Vec<serde_json::Value> {
    master
        .api("/api/builds?builder=linux&limit=50")
        .as_array()
        .cloned()
        .expect("a list of builds")
}

fn wait_for_pid(file: &Path) -> i32 {
    let mut pid = None;
    wait_until("the hanging step to start", || {
        pid = std::fs::read_to_string(file)
            .ok()
            .and_then(|text| text.trim().parse::<i32>().ok());
        pid.is_some()
    });
    pid.expect("a pid")
}

#[test]
fn a_job_sent_to_one_master_builds_on_another_and_is_seen_and_stopped_from_the_first() {
    let url = fresh_database();
    let checkout = Checkout::new();
    let shared = tempfile::tempdir().expect("temp dir");
    let steps = hanging_steps(shared.path());
    let a = first_master(&url, &checkout.upstream, &steps);
    let b = member_of(&a, "ci-b", &url, &checkout.upstream, &steps);
    // The slave knows only B.
    let _slave = a.launch_slave("s1", masters(&[&b]));
    b.wait_connected("s1");
    assert!(!a.slave_connected("s1"));

    // A try job sent to A: it builds on B's slave, and `try --wait` on A follows it to the end.
    let waited = run_with_timeout(a.try_command(&checkout.work, "linux", true), None);
    let stdout = text(&waited.stdout);
    assert_eq!(
        waited.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&waited.stderr)
    );
    assert!(stdout.contains("linux #1"), "{stdout}");
    let on_a = &builds(&a)[0];
    assert_eq!(on_a["number"], 1, "{on_a}");
    assert_eq!(on_a["result"], "success", "{on_a}");
    assert_eq!(on_a["slave"], "s1", "{on_a}");
    // B's master list shows both, alive, with one config.
    let masters_seen = b.api("/api/masters");
    let rows = masters_seen.as_array().expect("masters");
    assert_eq!(rows.len(), 2, "{masters_seen}");
    assert!(
        rows.iter()
            .all(|row| row["alive"] == true && row["config_differs"] == false),
        "{masters_seen}"
    );
    let slaves_of_b = rows
        .iter()
        .find(|row| row["name"] == "ci-b")
        .map(|row| row["slaves"].clone())
        .expect("B's row");
    assert_eq!(slaves_of_b, serde_json::json!(["s1"]), "{masters_seen}");

    // A hanging build forced on A runs on B; a stop asked on A stops it there.
    std::fs::write(shared.path().join("hang"), "").expect("hang marker");
    let forced = a.ssh(
        &a.user_key,
        &current_user(),
        "force linux --reason 'hang on B'",
    );
    assert_eq!(forced.status.code(), Some(0), "{}", text(&forced.stderr));
    let step_pid = wait_for_pid(&shared.path().join("pid"));
    wait_until("A to see build #2 running", || {
        builds(&a)
            .iter()
            .any(|build| build["number"] == 2 && build["running"] == true)
    });
    let stopped = a.ssh(
        &a.user_key,
        &current_user(),
        "stop linux 2 --reason 'stopped from A'",
    );
    assert_eq!(
        stopped.status.code(),
        Some(0),
        "{}\n{}",
        text(&stopped.stdout),
        text(&stopped.stderr)
    );
    wait_until("the step on B's slave to be killed", || {
        !process_running(step_pid)
    });
    let second = builds(&b)
        .into_iter()
        .find(|build| build["number"] == 2)
        .expect("build #2");
    assert_eq!(second["result"], "interrupted", "{second}");
}

#[test]
fn a_killed_masters_build_is_retried_on_another_exactly_once() {
    let url = fresh_database();
    let checkout = Checkout::new();
    let shared = tempfile::tempdir().expect("temp dir");
    let steps = hanging_steps(shared.path());
    let mut a = first_master(&url, &checkout.upstream, &steps);
    let b = member_of(&a, "ci-b", &url, &checkout.upstream, &steps);
    let _slave = a.launch_slave("s1", masters(&[&a, &b]));
    a.wait_connected("s1");

    std::fs::write(shared.path().join("hang"), "").expect("hang marker");
    let forced = a.ssh(
        &a.user_key,
        &current_user(),
        "force linux --reason 'dies with A'",
    );
    assert_eq!(forced.status.code(), Some(0), "{}", text(&forced.stderr));
    let step_pid = wait_for_pid(&shared.path().join("pid"));
    // The retry may run through.
    std::fs::remove_file(shared.path().join("hang")).expect("hang marker removed");
    let killed_at = Instant::now();
    a.kill_hard();
    b.wait_connected("s1");
    wait_until("the killed master's step to be gone", || {
        !process_running(step_pid)
    });
    wait_until("the build to be retried and finish on B", || {
        builds(&b)
            .iter()
            .any(|build| build["number"] == 2 && build["running"] == false)
    });
    let failover = killed_at.elapsed();
    let all = builds(&b);
    let first = all.iter().find(|build| build["number"] == 1).expect("#1");
    let second = all.iter().find(|build| build["number"] == 2).expect("#2");
    assert_eq!(first["result"], "exception", "{first}");
    assert!(
        first["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("master ci-a lost")),
        "{first}"
    );
    assert_eq!(second["result"], "success", "{second}");
    // Nothing was claimed twice: two builds, one per claim, and no third.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(builds(&b).len(), 2, "{:?}", builds(&b));
    eprintln!("failover after kill -9: {failover:?}");
    let lost = b.api("/api/masters");
    assert!(
        lost.as_array()
            .expect("masters")
            .iter()
            .any(|row| row["name"] == "ci-a" && row["state"] == "lost"),
        "{lost}"
    );
}

#[test]
fn a_stalled_master_coming_back_is_fenced_and_its_build_ran_once_elsewhere() {
    let url = fresh_database();
    let checkout = Checkout::new();
    let shared = tempfile::tempdir().expect("temp dir");
    let steps = hanging_steps(shared.path());
    let mut a = first_master(&url, &checkout.upstream, &steps);
    let b = member_of(&a, "ci-b", &url, &checkout.upstream, &steps);
    let _slave = a.launch_slave("s1", masters(&[&a, &b]));
    a.wait_connected("s1");
    std::fs::write(shared.path().join("hang"), "").expect("hang marker");
    let forced = a.ssh(
        &a.user_key,
        &current_user(),
        "force linux --reason 'A stalls'",
    );
    assert_eq!(forced.status.code(), Some(0), "{}", text(&forced.stderr));
    let step_pid = wait_for_pid(&shared.path().join("pid"));
    std::fs::remove_file(shared.path().join("hang")).expect("hang marker removed");

    signal(a.pid(), nix::sys::signal::Signal::SIGSTOP);
    // The slave gives the silent master up, B takes the build over and runs it again.
    b.wait_connected("s1");
    wait_until("the stalled master's step to be gone", || {
        !process_running(step_pid)
    });
    wait_until("the build to be retried and finish on B", || {
        builds(&b)
            .iter()
            .any(|build| build["number"] == 2 && build["result"] == "success")
    });
    signal(a.pid(), nix::sys::signal::Signal::SIGCONT);
    // A learns it was declared lost at its next renewal and stops; what it still tried to
    // write about build #1 was refused.
    wait_until("the fenced master to stop", || {
        !process_running(a.pid() as i32)
    });
    let log = a.log();
    assert!(log.contains("was declared lost by the cluster"), "{log}");
    let all = builds(&b);
    assert_eq!(all.len(), 2, "{all:?}");
    let first = all.iter().find(|build| build["number"] == 1).expect("#1");
    assert_eq!(first["result"], "exception", "{first}");
    assert!(
        first["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("master ci-a lost")),
        "{first}"
    );
    a.kill_hard();
}

#[test]
fn a_step_log_written_on_one_master_is_served_and_followed_live_on_another() {
    let url = fresh_database();
    let checkout = Checkout::new();
    let shared = tempfile::tempdir().expect("temp dir");
    // Prints a line, waits for the test, prints more on both streams and fails.
    let steps = format!(
        r#"{{ name = "test", command = "sh -c 'echo first; while [ ! -e {d}/go ]; do sleep 0.1; done; echo second; echo oops >&2; exit 1'" }},"#,
        d = shared.path().display()
    );
    let a = first_master(&url, &checkout.upstream, &steps);
    let b = member_of(&a, "ci-b", &url, &checkout.upstream, &steps);
    // The slave knows only A: the build runs there, and B has no log file of it.
    let only_a = format!("master = [\"127.0.0.1:{}\"]", a.ssh_port);
    let _slave = a.launch_slave("s1", move |config: &mut String| {
        let start = config.find("master = ").expect("master line");
        let end = start + config[start..].find('\n').expect("line end");
        config.replace_range(start..end, &only_a);
    });
    a.wait_connected("s1");
    let forced = a.ssh(&a.user_key, &current_user(), "force linux --reason 'logs'");
    assert_eq!(forced.status.code(), Some(0), "{}", text(&forced.stderr));
    let raw = |stream: &str| {
        format!(
            "http://127.0.0.1:{}/builders/linux/builds/1/steps/2/logs/{stream}/raw",
            b.http_port
        )
    };
    let get = |url: &str| {
        crate::harness::http_client()
            .get(url)
            .send()
            .ok()
            .filter(|response| response.status().is_success())
            .and_then(|response| response.text().ok())
            .unwrap_or_default()
    };
    // On B, while the step runs on A: the first line, from the database.
    wait_until("B to serve the first line", || get(&raw("stdout")) == "first\n");
    let follow = {
        let url = format!("{}?follow=1", raw("stdout"));
        std::thread::spawn(move || {
            let mut followed = String::new();
            crate::harness::http_client()
                .get(url)
                .send()
                .expect("follow")
                .read_to_string(&mut followed)
                .expect("read to the end");
            followed
        })
    };
    std::fs::write(shared.path().join("go"), "").expect("go marker");
    assert_eq!(follow.join().expect("the follower"), "first\nsecond\n");
    wait_until("B to see the build fail", || {
        builds(&b)
            .iter()
            .any(|build| build["number"] == 1 && build["result"] == "failure")
    });
    assert_eq!(get(&raw("stderr")), "oops\n");
    let build = &builds(&b)[0];
    let links = build["steps"][1]["logs"].to_string();
    assert!(
        links.contains("stdout") && links.contains("stderr"),
        "{build}"
    );
    assert!(
        !b.path().join("logs/linux/1").exists(),
        "B served the log from its own files"
    );
    assert!(a.path().join("logs/linux/1").exists(), "A keeps its files");
}
