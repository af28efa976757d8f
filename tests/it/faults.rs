//! Connections that go wrong, with real processes: killed and stopped slaves, a killed master,
//! duplicate slaves, a crash during submissions, long silent steps. Detection times are printed
//! (run with --nocapture to see them).

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::harness::{
    KILL_GRACE, MasterSetup, PATIENCE, SLACK, TestMaster, current_user, keepalive,
    output_with_deadline, reap, text, wait_until,
};
use crate::repo::Checkout;

fn master_with(pool: &[&str], repo: &Path, steps: &str) -> TestMaster {
    TestMaster::start_with(MasterSetup::linux_builder(pool, repo, steps))
}

/// `buildbot try --wait` running in the background.
fn spawn_try_wait(master: &TestMaster, cwd: &Path) -> Child {
    master
        .try_command(cwd, "linux", true)
        .spawn()
        .expect("try runs")
}

fn finish(child: Child) -> std::process::Output {
    output_with_deadline(child, "try --wait", PATIENCE * 3)
}

fn alive(pid: i32) -> bool {
    crate::harness::process_running(pid)
}

#[test]
fn a_killed_slave_is_an_exception_of_the_step_and_a_pool_mate_runs_the_retry() {
    let checkout = Checkout::new();
    let shared = tempfile::tempdir().expect("temp dir");
    let marker = shared.path().join("first-run");
    let step = format!(
        r#"{{ name = "work", command = "if [ -e {m} ]; then echo second run; else touch {m}; sleep 60; fi" }},"#,
        m = marker.display()
    );
    let master = master_with(&["s1", "s2"], &checkout.upstream, &step);
    let first = master.start_slave("s1");
    let waiting = spawn_try_wait(&master, &checkout.work);
    wait_until("the first run to start", || marker.exists());
    let killed_at = Instant::now();
    first.signal(Signal::SIGKILL);
    wait_until("the master to drop s1", || !master.slave_connected("s1"));
    println!(
        "slave SIGKILL detected by the master after {:?}",
        killed_at.elapsed()
    );
    let _second = master.start_slave("s2");
    let output = finish(waiting);
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&output.stderr)
    );
    assert!(
        stdout.contains("linux #1: work exception (slave lost)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("linux #1: exception: slave lost (will be retried)"),
        "{stdout}"
    );
    assert!(stdout.contains("linux #2: started on s2"), "{stdout}");
    assert!(stdout.contains("linux #2: success"), "{stdout}");
    let log =
        std::fs::read_to_string(master.path().join("logs/linux/1/2-work.info")).expect("step log");
    assert!(log.contains("slave lost"), "{log}");
}

/// A step that records that it started, then runs long (the first run) or passes (a retry).
fn first_run_hangs(marker: &Path) -> String {
    format!(
        r#"{{ name = "work", command = "if [ -e {m} ]; then echo second run; else touch {m}; sleep 60; fi" }},"#,
        m = marker.display()
    )
}

#[test]
fn a_slave_restarted_during_a_build_is_an_exception_and_the_build_is_retried() {
    let checkout = Checkout::new();
    let shared = tempfile::tempdir().expect("temp dir");
    let marker = shared.path().join("first-run");
    let master = master_with(&["s1", "s2"], &checkout.upstream, &first_run_hangs(&marker));
    let first = master.start_slave("s1");
    let waiting = spawn_try_wait(&master, &checkout.work);
    wait_until("the first run to start", || marker.exists());
    // What systemd does on a restart or a reboot.
    first.signal(Signal::SIGTERM);
    wait_until("the master to drop s1", || !master.slave_connected("s1"));
    let _second = master.start_slave("s2");
    let output = finish(waiting);
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&output.stderr)
    );
    assert!(
        stdout.contains("linux #1: work exception (slave shutting down)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("linux #1: exception: slave shutting down (will be retried)"),
        "{stdout}"
    );
    assert!(stdout.contains("linux #2: started on s2"), "{stdout}");
    assert!(stdout.contains("linux #2: success"), "{stdout}");
    let log =
        std::fs::read_to_string(master.path().join("logs/linux/1/2-work.info")).expect("step log");
    assert!(log.contains("slave shutting down"), "{log}");
}

#[test]
fn without_retries_a_slave_shutting_down_is_an_exception_not_a_failure() {
    let checkout = Checkout::new();
    let shared = tempfile::tempdir().expect("temp dir");
    let marker = shared.path().join("first-run");
    let mut setup =
        MasterSetup::linux_builder(&["s1"], &checkout.upstream, &first_run_hangs(&marker));
    setup.edits.push((
        "branch = \"main\"\nsteps = [",
        "branch = \"main\"\nretry_on_slave_lost = false\nsteps = [",
    ));
    let master = TestMaster::start_with(setup);
    let slave = master.start_slave("s1");
    let waiting = spawn_try_wait(&master, &checkout.work);
    wait_until("the first run to start", || marker.exists());
    slave.signal(Signal::SIGTERM);
    let output = finish(waiting);
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("linux #1: exception: slave shutting down"),
        "{stdout}"
    );
    assert!(!stdout.contains("will be retried"), "{stdout}");
    let build = master.api_last_build("linux");
    assert_eq!(build["result"], "exception", "{build}");
}

#[test]
fn a_stopped_slave_is_detected_within_one_keepalive_interval() {
    let master = master_with(
        &["s1"],
        Path::new("/nonexistent"),
        r#"{ name = "t", command = "true" },"#,
    );
    let (interval, timeout) = (Duration::from_secs(3), Duration::from_secs(1));
    let slave = master.start_slave_with("s1", keepalive("3s", "1s"));
    let stopped_at = Instant::now();
    slave.signal(Signal::SIGSTOP);
    wait_until("the master to notice the quiet loss", || {
        !master.slave_connected("s1")
    });
    let detected = stopped_at.elapsed();
    println!("SIGSTOPped slave detected by the master after {detected:?} (keepalive_interval 3s)");
    // Without the keepalive the connection of a stopped process looks alive for ever (the
    // default interval is 10 minutes).
    assert!(detected < interval + timeout + SLACK, "took {detected:?}");
    slave.signal(Signal::SIGCONT);
    master.wait_connected("s1");
    let log = master.log();
    assert_eq!(log.matches("slave connected slave=s1").count(), 2, "{log}");
    assert!(!log.contains("dropping the older connection"), "{log}");
    assert!(
        slave.log().contains("connection to the master lost"),
        "{}",
        slave.log()
    );
}

#[test]
fn a_frozen_master_is_detected_by_the_slave_which_kills_the_step() {
    let checkout = Checkout::new();
    let shared = tempfile::tempdir().expect("temp dir");
    let pid_file = shared.path().join("pid");
    let step = format!(
        r#"{{ name = "hang", command = "echo $$ > {}; exec sleep 300" }},"#,
        pid_file.display()
    );
    let master = master_with(&["s1"], &checkout.upstream, &step);
    let (interval, timeout) = (Duration::from_secs(3), Duration::from_secs(1));
    let slave = master.start_slave_with("s1", keepalive("3s", "1s"));
    let mut waiting = spawn_try_wait(&master, &checkout.work);
    let pid = crate::harness::wait_for_pid(&pid_file);
    let stopped_at = Instant::now();
    crate::harness::signal(master.pid(), Signal::SIGSTOP);
    wait_until("the slave to notice the quiet loss", || {
        slave.log().contains("connection to the master lost")
    });
    let detected = stopped_at.elapsed();
    wait_until("the step's process to end", || !alive(pid));
    println!(
        "SIGSTOPped master detected by the slave after {detected:?} (keepalive_interval 3s); step killed after {:?}",
        stopped_at.elapsed()
    );
    crate::harness::signal(master.pid(), Signal::SIGCONT);
    assert!(detected < interval + timeout + SLACK, "took {detected:?}");
    assert!(
        slave.log().contains("no traffic from the master"),
        "{}",
        slave.log()
    );
    reap(&mut waiting);
}

#[test]
fn killing_the_master_kills_the_steps_processes_on_the_slave() {
    let checkout = Checkout::new();
    let shared = tempfile::tempdir().expect("temp dir");
    let pids = shared.path().join("pids");
    let step = format!(
        r#"{{ name = "hang", command = "sh -c 'sleep 300 & echo $! >> {p}; sleep 300 & echo $! >> {p}; echo $$ >> {p}; wait'" }},"#,
        p = pids.display()
    );
    let mut master = master_with(&["s1"], &checkout.upstream, &step);
    let slave = master.start_slave("s1");
    let waiting = spawn_try_wait(&master, &checkout.work);
    wait_until("three pids", || {
        std::fs::read_to_string(&pids).is_ok_and(|t| t.lines().count() == 3)
    });
    let step_pids: Vec<i32> = std::fs::read_to_string(&pids)
        .expect("pids")
        .lines()
        .map(|line| line.trim().parse().expect("pid"))
        .collect();
    assert!(step_pids.iter().all(|pid| alive(*pid)));
    let killed_at = Instant::now();
    master.kill_hard();
    wait_until("the slave to notice", || {
        slave.log().contains("connection to the master lost")
    });
    let noticed = killed_at.elapsed();
    wait_until("every process of the step to be gone", || {
        step_pids.iter().all(|pid| !alive(*pid))
    });
    let gone = killed_at.elapsed();
    println!("master SIGKILL: slave noticed after {noticed:?}, step processes gone after {gone:?}");
    // The slave kills them as soon as it notices (SIGTERM, then SIGKILL after KILL_GRACE),
    // rather than letting them run out their 300 s.
    assert!(
        gone - noticed < KILL_GRACE + SLACK,
        "processes lived {:?} after the slave noticed",
        gone - noticed
    );
    // The developer's `try --wait` loses its master too, and says so.
    let output = finish(waiting);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
}

#[test]
fn a_second_connection_of_the_same_slave_replaces_the_first() {
    let master = master_with(
        &["s1"],
        Path::new("/nonexistent"),
        r#"{ name = "t", command = "true" },"#,
    );
    let first = master.start_slave("s1");
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let _second = first.twin(elsewhere.path());
    wait_until("the master to replace the connection", || {
        master.log().contains("dropping the older connection")
    });
    let log = master.log();
    let line = log
        .lines()
        .find(|line| line.contains("dropping the older connection"))
        .expect("line");
    assert!(
        line.contains("old=127.0.0.1:") && line.contains("new=127.0.0.1:"),
        "{line}"
    );
    assert!(master.slave_connected("s1"));
    // The older connection is really closed, not just forgotten.
    let old_peer = line
        .split_whitespace()
        .find_map(|field| field.strip_prefix("old="))
        .expect("old peer")
        .to_string();
    wait_until("the master to close the older connection", || {
        master.log().lines().any(|line| {
            line.contains("slave disconnected: connection replaced")
                && line.contains(&format!("peer={old_peer}"))
        })
    });
}

#[test]
fn a_step_silent_for_several_keepalive_intervals_is_not_a_lost_slave() {
    let checkout = Checkout::new();
    let master = master_with(
        &["s1"],
        &checkout.upstream,
        r#"{ name = "quiet", command = "sleep 7; echo done" },"#,
    );
    let _slave = master.start_slave_with("s1", keepalive("2s", "1s"));
    let output = finish(spawn_try_wait(&master, &checkout.work));
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("linux #1: quiet success"), "{stdout}");
    assert!(
        !master.log().contains("slave disconnected"),
        "{}",
        master.log()
    );
}

#[test]
fn a_master_killed_during_submissions_and_builds_loses_no_accepted_job() {
    let checkout = Checkout::new();
    let mut master = master_with(
        &["s1"],
        &checkout.upstream,
        r#"{ name = "work", command = "sleep 2" },"#,
    );
    let _slave = master.start_slave("s1");
    let baserev = crate::repo::git(&checkout.work, &["rev-parse", "origin/main"]);
    let submissions: Vec<_> = (0..50)
        .map(|index| {
            let job = buildbot::tryjob::encode(&buildbot::tryjob::Job {
                version: 5,
                jobid: format!("parallel-{index:02}"),
                branch: Some("main".into()),
                baserev: Some(baserev.trim().to_string()),
                patch_level: 1,
                patch: None,
                repository: String::new(),
                project: String::new(),
                who: None,
                comment: None,
                builders: vec![],
                properties: Default::default(),
            });
            let mut command = master.ssh_command(&master.user_key, &current_user(), &[]);
            command
                .arg("try")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let mut child = command.spawn().expect("ssh runs");
            (index, job, child.stdin.take(), child)
        })
        .collect();
    let mut children = Vec::new();
    for (index, job, stdin, child) in submissions {
        if let Some(mut stdin) = stdin {
            use std::io::Write;
            let _ = stdin.write_all(&job);
        }
        children.push((index, child));
        if index == 25 {
            // Let some land and a build start, then pull the plug.
            wait_until("a build to start", || {
                master.path().join("logs/linux/1").exists()
            });
            master.kill_hard();
        }
    }
    let accepted: Vec<String> = children
        .into_iter()
        .filter_map(|(index, mut child)| {
            let status = crate::harness::wait_with_deadline(
                &mut child,
                &format!("submission {index}"),
                PATIENCE,
            );
            status.success().then(|| format!("parallel-{index:02}"))
        })
        .collect();
    println!(
        "{} of 50 submissions succeeded before the master was killed",
        accepted.len()
    );
    assert!(!accepted.is_empty());
    let master = master.start_again();
    let db = master.path().join("state.sqlite");
    wait_until("every accepted job to be recorded", || {
        let Ok(connection) = rusqlite::Connection::open(&db) else {
            return false;
        };
        accepted.iter().all(|jobid| {
            connection
                .query_row(
                    "SELECT COUNT(*) FROM requests WHERE jobid = ?1",
                    [jobid],
                    |row| row.get::<_, i64>(0),
                )
                .is_ok_and(|count| count == 1)
        })
    });
    let count = |sql: &str| -> i64 {
        rusqlite::Connection::open(&db)
            .and_then(|connection| connection.query_row(sql, [], |row| row.get(0)))
            .unwrap_or(0)
    };
    // The restarted master marks the build the crash interrupted, and runs its request again.
    wait_until("the interrupted build to be marked", || {
        count("SELECT COUNT(*) FROM builds WHERE reason = 'master restarted'") >= 1
    });

    wait_until("the interrupted request to run again", || {
        count(
            "SELECT COUNT(*) FROM requests r WHERE r.id IN (SELECT request_id FROM builds WHERE reason = 'master restarted')
             AND (SELECT COUNT(*) FROM builds b WHERE b.request_id = r.id) > 1",
        ) >= 1
    });
}

#[test]
fn a_slave_that_does_not_answer_the_ping_is_dropped_and_the_build_goes_to_another() {
    let checkout = Checkout::new();
    let master = master_with(
        &["s1", "s2"],
        &checkout.upstream,
        r#"{ name = "test", command = "true" },"#,
    );
    let frozen = master.start_slave("s1");
    // Frozen, but its connection looks alive: only the ping before the build can tell.
    frozen.signal(Signal::SIGSTOP);
    let _healthy = master.start_slave("s2");
    let output = finish(spawn_try_wait(&master, &checkout.work));
    frozen.signal(Signal::SIGCONT);
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("linux #1: started on s2"), "{stdout}");
    // Both were free and s1 comes first in the pool, so s1 was chosen and its ping went unanswered.
    let log = master.log();
    let line = log
        .lines()
        .find(|line| line.contains("no pong within"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("slave=s1"), "{line}");
}

/// A retry after a lost slave is kept in the history, not only in memory: a master restarted
/// before any slave came back still runs it.
#[test]
fn a_retry_after_a_lost_slave_survives_a_master_restart() {
    let checkout = Checkout::new();
    let shared = tempfile::tempdir().expect("temp dir");
    let marker = shared.path().join("first-run");
    let step = format!(
        r#"{{ name = "work", command = "if [ -e {m} ]; then echo second run; else touch {m}; kill -9 $PPID; sleep 60; fi" }},"#,
        m = marker.display()
    );
    let mut master = master_with(&["s1"], &checkout.upstream, &step);
    let mut slave = master.launch_slave("s1", |_| {});
    let forced = master.ssh(
        &master.user_key,
        &crate::harness::current_user(),
        "force linux --reason 'lose the slave'",
    );
    assert_eq!(forced.status.code(), Some(0), "{}", text(&forced.stderr));
    wait_until("the slave to be killed by its step", || !slave.is_running());
    wait_until("build #1 to end as exception", || {
        master.newest_build("linux")["result"] == "exception"
    });
    // One rule for a step cut short, whether its slave or its master went away (issue 21,
    // item 13): the step is an exception too, not a failure of the command.
    let first = master.api_last_build("linux");
    let detail = master.api(&format!("/api/builds/{}", first["id"]));
    let work = &detail["steps"][1];
    assert_eq!(
        (
            work["name"].as_str(),
            work["result"].as_str(),
            work["summary"].as_str()
        ),
        (Some("work"), Some("exception"), Some("slave lost")),
        "{detail}"
    );
    let (status, _) = master.terminate();
    assert!(status.success());

    let master = master.start_again();
    let _slave = master.start_slave("s1");
    wait_until("the retry to run after the restart", || {
        let build = master.newest_build("linux");
        build["number"] == 2 && build["result"] == "success"
    });
    let log = std::fs::read_to_string(master.path().join("logs/linux/2/2-work.stdout"))
        .unwrap_or_default();
    assert!(
        log.contains("second run"),
        "build #2 ran the step again: {log}"
    );
}
