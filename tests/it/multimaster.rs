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

pub(crate) fn fresh_database() -> String {
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

pub(crate) fn database_section(url: &str) -> String {
    format!("\n[database]\nurl = \"{url}\"\nlease = \"{LEASE}\"\n")
}

pub(crate) fn named(name: &str) -> (&'static str, &'static str) {
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

/// Another master of `first`'s cluster, named `name`: everything `first`'s master.toml has
/// after its own sections (slaves, builders, schedulers, locks, the database, limits), and
/// `first`'s host key.
pub(crate) fn join(first: &TestMaster, name: &str) -> TestMaster {
    let config = std::fs::read_to_string(first.path().join("master.toml")).expect("config");
    let start = config.find("\n[[slave]]").expect("slave blocks") + 1;
    TestMaster::start_with(MasterSetup {
        extra_config: format!("\n{}", &config[start..]),
        host_key_of: Some(first.path().to_path_buf()),
        edits: vec![named(name)],
        ..MasterSetup::default()
    })
}

/// Edits slave.toml to list these masters (and keep quiet links short, so a stalled master is
/// noticed within seconds).
pub(crate) fn masters(list: &[&TestMaster]) -> impl FnOnce(&mut String) {
    let addresses: Vec<String> = list
        .iter()
        .map(|master| format!("\"127.0.0.1:{}\"", master.ssh_port))
        .collect();
    move |config: &mut String| {
        keepalive("2s", "1s")(config);
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
    let b = join(&a, "ci-b");
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
    // A's master list shows both, alive, with one config, and (from B's next renewal of its
    // lease) the slave on B.
    let mut masters_seen = serde_json::Value::Null;
    wait_until("A to show s1 on B", || {
        masters_seen = a.api("/api/masters");
        masters_seen.as_array().is_some_and(|rows| {
            rows.iter()
                .any(|row| row["name"] == "ci-b" && row["slaves"] == serde_json::json!(["s1"]))
        })
    });
    let rows = masters_seen.as_array().expect("masters");
    assert_eq!(rows.len(), 2, "{masters_seen}");
    // Each master's /metrics says where it stands in the cluster.
    wait_until("A's metrics to count both masters", || {
        crate::harness::http_client()
            .get(format!("http://127.0.0.1:{}/metrics", a.http_port))
            .send()
            .and_then(|response| response.text())
            .is_ok_and(|text| text.contains("buildbot_masters_alive 2"))
    });
    assert!(
        rows.iter()
            .all(|row| row["alive"] == true && row["config_differs"] == false),
        "{masters_seen}"
    );

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
    let b = join(&a, "ci-b");
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
    let b = join(&a, "ci-b");
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

/// The masters' rows in `master`'s `/api/masters`, by name.
fn leader_of(master: &TestMaster) -> Option<String> {
    master
        .api("/api/masters")
        .as_array()
        .expect("masters")
        .iter()
        .find(|row| row["leads"] == true && row["alive"] == true)
        .and_then(|row| row["name"].as_str().map(str::to_string))
}

/// Builds of `builder` as `master` lists them (newest first).
fn builds_of(master: &TestMaster, builder: &str) -> Vec<serde_json::Value> {
    master
        .api(&format!("/api/builds?builder={builder}&limit=200"))
        .as_array()
        .cloned()
        .expect("a list of builds")
}

#[test]
fn a_periodic_scheduler_and_a_poller_fire_once_per_cluster_and_go_on_after_the_leader_dies() {
    let url = fresh_database();
    let checkout = Checkout::new();
    let steps = r#"{ name = "test", command = "true" },"#;
    let cluster_jobs = format!(
        "\n[[builder]]\nname = \"polled\"\nslaves = [\"s1\"]\nrepo = \"{repo}\"\nbranch = \"main\"\n\
         steps = [ {{ name = \"test\", command = \"true\" }} ]\n\
         \n[[scheduler]]\nkind = \"periodic\"\nname = \"tick\"\nbuilders = [\"linux\"]\ninterval = \"3s\"\nbranch = \"main\"\n\
         \n[[scheduler]]\nkind = \"branch\"\nname = \"on-main\"\nbuilders = [\"polled\"]\nbranches = [\"main\"]\ntree_stable_timer = \"1s\"\n\
         \n[[change_source]]\nkind = \"git-poll\"\nrepo = \"{repo}\"\nbranches = [\"main\"]\ninterval = \"1s\"\n",
        repo = checkout.upstream.display()
    );
    let mut setup = MasterSetup::linux_builder(&["s1"], &checkout.upstream, steps);
    setup.extra_config.push_str(&cluster_jobs);
    setup.extra_config.push_str(&database_section(&url));
    setup.edits.push(named("ci-a"));
    let a = TestMaster::start_with(setup);
    let b = join(&a, "ci-b");
    let c = join(&a, "ci-c");
    // The slave builds on C (then B, then A).
    let _slave = a.launch_slave("s1", masters(&[&c, &b, &a]));
    c.wait_connected("s1");
    let mut leader = None;
    wait_until("one master to lead the cluster's jobs", || {
        leader = leader_of(&c);
        leader.is_some()
    });
    let leader = leader.expect("a leader");
    let rows = c.api("/api/masters");
    let leading: Vec<_> = rows
        .as_array()
        .expect("masters")
        .iter()
        .filter(|row| row["leads"] == true)
        .collect();
    assert_eq!(leading.len(), 1, "{rows}");

    // Three masters, one period of 3 s: about one build per period, not three.
    let window = Duration::from_secs(12);
    let before = builds_of(&c, "linux").len();
    std::thread::sleep(window);
    let fired = builds_of(&c, "linux").len() - before;
    assert!(
        (2..=5).contains(&fired),
        "{fired} periodic builds in {window:?} at one per 3 s"
    );

    // A commit pushed once is polled and built once.
    let clone = {
        let parent = checkout.upstream.parent().expect("temp dir");
        crate::repo::git(
            parent,
            &[
                "clone",
                "-q",
                checkout.upstream.to_str().expect("utf-8"),
                "pusher",
            ],
        );
        parent.join("pusher")
    };
    let push = |file: &str| {
        std::fs::write(clone.join(file), file).expect("write");
        crate::repo::git(&clone, &["add", "-A"]);
        crate::repo::git(&clone, &["commit", "-q", "-m", file]);
        crate::repo::git(&clone, &["push", "-q", "origin", "HEAD:main"]);
        crate::repo::git(&clone, &["rev-parse", "HEAD"])
            .trim()
            .to_string()
    };
    let first = push("one.txt");
    wait_until("the pushed commit to be built", || {
        builds_of(&c, "polled")
            .iter()
            .any(|build| build["running"] == false)
    });

    // The leader dies: another master leads, the period goes on, the poller too.
    let mut by_name: Vec<(String, TestMaster)> =
        vec![("ci-a".into(), a), ("ci-b".into(), b), ("ci-c".into(), c)];
    let index = by_name
        .iter()
        .position(|(name, _)| *name == leader)
        .expect("the leader is one of them");
    let (_, mut dead) = by_name.remove(index);
    dead.kill_hard();
    wait_until("s1 on a surviving master", || {
        by_name
            .iter()
            .any(|(_, master)| master.slave_connected("s1"))
    });
    let (_, survivor) = &by_name[0];
    wait_until("another master to lead", || {
        leader_of(survivor).is_some_and(|now| now != leader)
    });
    let before = builds_of(survivor, "linux").len();
    std::thread::sleep(window);
    let fired = builds_of(survivor, "linux").len() - before;
    assert!(
        (2..=5).contains(&fired),
        "{fired} periodic builds in {window:?} after the leader died"
    );
    let second = push("two.txt");
    wait_until("the second commit to be built", || {
        builds_of(survivor, "polled").len() >= 2
            && builds_of(survivor, "polled")
                .iter()
                .all(|build| build["running"] == false)
    });
    std::thread::sleep(Duration::from_secs(3));
    let polled = builds_of(survivor, "polled");
    assert_eq!(polled.len(), 2, "each commit built once: {polled:?}");
    let changes = survivor.api("/api/changes");
    let revisions: Vec<&str> = changes
        .as_array()
        .expect("changes")
        .iter()
        .filter_map(|change| change["revision"].as_str())
        .collect();
    assert_eq!(revisions.len(), 2, "{changes}");
    assert!(revisions.contains(&first.as_str()) && revisions.contains(&second.as_str()));
}

/// (jobid, requests, successful builds, other builds not explained by a lost master) per job.
fn outcome_per_job(url: &str) -> Vec<(String, i64, i64, i64)> {
    let query = async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        let connection = tokio::spawn(connection);
        let rows = client
            .query(
                "SELECT r.jobid, COUNT(DISTINCT r.id),
                   COUNT(b.id) FILTER (WHERE b.result = 'success'),
                   COUNT(b.id) FILTER (WHERE b.result IS DISTINCT FROM 'success'
                     AND NOT (b.reason LIKE 'master % lost%' OR b.reason = 'master restarted'
                              OR b.reason LIKE '%slave%'))
                 FROM requests r LEFT JOIN builds b ON b.request_id = r.id
                 GROUP BY r.jobid",
                &[],
            )
            .await?;
        drop(client);
        let _ = connection.await;
        Ok::<_, tokio_postgres::Error>(
            rows.iter()
                .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
                .collect::<Vec<_>>(),
        )
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(query)
        .unwrap_or_else(|err| panic!("reading the outcome: {err:?}"))
}

#[test]
fn many_try_jobs_over_three_masters_one_killed_twice_each_build_exactly_once() {
    use std::io::Write;
    use std::process::Stdio;

    const JOBS: usize = 300;
    let url = fresh_database();
    let checkout = Checkout::new();
    // Long enough that the kills find builds running.
    let steps = r#"{ name = "test", command = "sleep 0.3" },"#;
    let pool = ["s1", "s2", "s3"];
    let mut setup = MasterSetup::linux_builder(&pool, &checkout.upstream, steps);
    setup.extra_config.push_str(&database_section(&url));
    // Many jobs from one user at once: the per-user quotas are not under test here.
    setup
        .extra_config
        .push_str("\n[limits]\nmax_queued_per_user = 1000\nmax_requests_per_minute = 100000\n");
    setup.edits.push(named("ci-a"));
    let a = TestMaster::start_with(setup);
    let b = join(&a, "ci-b");
    let c = join(&a, "ci-c");
    let _s1 = a.launch_slave("s1", masters(&[&a, &b, &c]));
    let _s2 = a.launch_slave("s2", masters(&[&b, &c, &a]));
    let _s3 = a.launch_slave("s3", masters(&[&c, &a, &b]));
    for (master, slave) in [(&a, "s1"), (&b, "s2"), (&c, "s3")] {
        master.wait_connected(slave);
    }
    let mut cluster = vec![a, b, c];
    let baserev = crate::repo::git(&checkout.work, &["rev-parse", "origin/main"])
        .trim()
        .to_string();
    let mut accepted = Vec::new();
    let mut kills = 0;
    for batch in 0..JOBS / 30 {
        let mut children = Vec::new();
        for index in batch * 30..(batch + 1) * 30 {
            let master = &cluster[index % 3];
            let jobid = format!("job-{index:03}");
            let job = buildbot::tryjob::encode(&buildbot::tryjob::Job {
                version: 5,
                jobid: jobid.clone(),
                branch: Some("main".into()),
                baserev: Some(baserev.clone()),
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
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(&job);
            }
            children.push((jobid, child));
        }
        // Twice, while jobs arrive, the master running a build dies (and comes back).
        let mut killed = None;
        if batch == 3 || batch == 6 {
            let mut busy = None;
            wait_until("a master with a running build", || {
                busy = cluster.iter().position(|master| {
                    master.api("/api/slaves").as_array().is_some_and(|rows| {
                        rows.iter().any(|row| {
                            row["connected"] == true
                                && row["building"].as_str().is_some_and(|b| !b.is_empty())
                        })
                    })
                });
                busy.is_some()
            });
            let index = busy.expect("a busy master");
            cluster[index].kill_hard();
            kills += 1;
            killed = Some(index);
        }
        for (jobid, mut child) in children {
            let status =
                crate::harness::wait_with_deadline(&mut child, &jobid, crate::harness::PATIENCE);
            if status.success() {
                accepted.push(jobid);
            }
        }
        if let Some(index) = killed {
            let dead = cluster.remove(index);
            cluster.insert(index, dead.start_again());
        }
    }
    assert_eq!(kills, 2);
    assert!(accepted.len() > JOBS / 2, "{} accepted", accepted.len());
    let started = Instant::now();
    let mut last;
    // Three slaves work off the jobs: this takes a while, so the usual patience is not enough.
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        last = outcome_per_job(&url);
        let done = accepted.iter().all(|jobid| {
            last.iter().any(|(id, requests, successes, _)| {
                id == jobid && *requests == 1 && *successes == 1
            })
        });
        if done {
            break;
        }
        let finished = last
            .iter()
            .filter(|(_, _, successes, _)| *successes > 0)
            .count();
        assert!(
            Instant::now() < deadline,
            "timed out: {finished} of {} accepted jobs built: {:?}",
            accepted.len(),
            last.iter()
                .filter(|(_, _, successes, _)| *successes != 1)
                .take(10)
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "{} jobs accepted of {JOBS}, all built once {:?} after the last submission",
        accepted.len(),
        started.elapsed()
    );
    let cut_short: i64 = {
        let query = async {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
            let connection = tokio::spawn(connection);
            let row = client
                .query_one(
                    "SELECT COUNT(*) FROM builds WHERE reason LIKE 'master % lost%'
                           OR reason = 'master restarted'",
                    &[],
                )
                .await?;
            drop(client);
            let _ = connection.await;
            Ok::<i64, tokio_postgres::Error>(row.get(0))
        };
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(query)
            .expect("count")
    };
    eprintln!("{cut_short} builds cut short by the kills and built again");
    assert!(
        cut_short >= 1,
        "the kills interrupted no build: the test proves nothing"
    );
    // Nothing built twice, nothing else failed.
    for (jobid, requests, successes, unexplained) in &last {
        assert_eq!(
            (*requests, *successes, *unexplained),
            (1, 1, 0),
            "job {jobid}: {requests} requests, {successes} successful builds, {unexplained} other builds"
        );
    }
}

/// The most of `runs` (start, end) going on at one moment; touching ones do not overlap.
fn most_at_once(runs: &[(f64, f64)]) -> usize {
    let mut edges: Vec<(f64, i32)> = runs
        .iter()
        .flat_map(|(start, end)| [(*start, 1), (*end, -1)])
        .collect();
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut most) = (0i32, 0i32);
    for (_, change) in edges {
        now += change;
        most = most.max(now);
    }
    usize::try_from(most).unwrap_or_default()
}

fn recorded_runs(file: &Path) -> Vec<(f64, f64)> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let (start, end) = line.split_once(' ').expect("start end");
            (
                start.parse().expect("a start time"),
                end.parse().expect("an end time"),
            )
        })
        .collect()
}

#[test]
fn master_locks_hold_across_masters() {
    let url = fresh_database();
    let checkout = Checkout::new();
    let runs = tempfile::tempdir().expect("temp dir");
    let record = |file: &str| {
        format!(
            r#"s=$(date +%s.%N); sleep 0.4; e=$(date +%s.%N); echo "$s $e" >> {}/{file}"#,
            runs.path().display()
        )
    };
    // linux takes the exclusive lock for the whole build; counted's step takes a counting
    // lock of two.
    let steps = format!(
        "{{ name = \"test\", command = '{}' }},",
        record("exclusive")
    );
    let locks_and_counted = format!(
        "\n[[lock]]\nname = \"db\"\nkind = \"master\"\nmax_count = 1\n\
         \n[[lock]]\nname = \"pool\"\nkind = \"master\"\nmax_count = 2\n\
         \n[[builder]]\nname = \"counted\"\nslaves = [\"s1\", \"s2\", \"s3\"]\nrepo = \"{}\"\nbranch = \"main\"\n\
         steps = [ {{ name = \"test\", command = '{}', locks = [ {{ lock = \"pool\", access = \"counting\" }} ] }} ]\n",
        checkout.upstream.display(),
        record("counting")
    );
    let with_lock = |config: String| {
        config.replacen(
            "branch = \"main\"\nsteps",
            "branch = \"main\"\nlocks = [ { lock = \"db\", access = \"exclusive\" } ]\nsteps",
            1,
        )
    };
    let pool = ["s1", "s2", "s3"];
    let mut setup = MasterSetup::linux_builder(&pool, &checkout.upstream, &steps);
    setup.extra_config =
        with_lock(setup.extra_config) + &locks_and_counted + &database_section(&url);
    setup.edits.push(named("ci-a"));
    let a = TestMaster::start_with(setup);
    let b = join(&a, "ci-b");
    let c = join(&a, "ci-c");
    let _s1 = a.launch_slave("s1", masters(&[&a]));
    let _s2 = a.launch_slave("s2", masters(&[&b]));
    let _s3 = a.launch_slave("s3", masters(&[&c]));
    for (master, slave) in [(&a, "s1"), (&b, "s2"), (&c, "s3")] {
        master.wait_connected(slave);
    }
    // Each master builds on its own slave: without the cluster's locks all three would run
    // at once.
    for _ in 0..3 {
        for master in [&a, &b, &c] {
            for builder in ["linux", "counted"] {
                let forced = master.ssh(
                    &master.user_key,
                    &current_user(),
                    &format!("force {builder} --reason locks"),
                );
                assert_eq!(forced.status.code(), Some(0), "{}", text(&forced.stderr));
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    while recorded_runs(&runs.path().join("exclusive")).len() < 9
        || recorded_runs(&runs.path().join("counting")).len() < 9
    {
        assert!(
            Instant::now() < deadline,
            "not every build ran: {} exclusive, {} counting",
            recorded_runs(&runs.path().join("exclusive")).len(),
            recorded_runs(&runs.path().join("counting")).len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let exclusive = recorded_runs(&runs.path().join("exclusive"));
    assert_eq!(
        most_at_once(&exclusive),
        1,
        "the exclusive lock overlapped: {exclusive:?}"
    );
    let counting = recorded_runs(&runs.path().join("counting"));
    assert!(
        most_at_once(&counting) <= 2,
        "the counting lock of two held by more: {counting:?}"
    );
}

#[test]
fn migrate_db_moves_a_single_masters_history_into_postgresql() {
    let url = fresh_database();
    let checkout = Checkout::new();
    let steps = r#"{ name = "test", command = "true" },"#;
    let mut master = TestMaster::start_with(MasterSetup::linux_builder(
        &["s1"],
        &checkout.upstream,
        steps,
    ));
    let slave = master.start_slave("s1");
    let forced = master.ssh(
        &master.user_key,
        &current_user(),
        "force linux --reason before",
    );
    assert_eq!(forced.status.code(), Some(0), "{}", text(&forced.stderr));
    wait_until("build #1 to finish", || {
        builds(&master)
            .iter()
            .any(|build| build["number"] == 1 && build["running"] == false)
    });
    let master_dir = master.path().to_path_buf();
    let migrate = || {
        let mut command = std::process::Command::new(crate::harness::BIN);
        command
            .arg("migrate-db")
            .arg(&master_dir)
            .args(["--to", &url]);
        run_with_timeout(command, None)
    };
    // Not while the master runs.
    let refused = migrate();
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains("is running"),
        "{}",
        text(&refused.stderr)
    );

    master.terminate();
    drop(slave);
    let copied = migrate();
    let stdout = text(&copied.stdout);
    assert_eq!(
        copied.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&copied.stderr)
    );
    assert!(
        stdout.contains("requests: 1 rows") && stdout.contains("builds: 1 rows"),
        "{stdout}"
    );
    // Into a database that holds a history: one line, nothing copied twice.
    let again = migrate();
    let stderr = text(&again.stderr);
    assert_eq!(again.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("already holds a history (1 requests)"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    // The master on PostgreSQL finds its history and goes on numbering.
    let config = master.path().join("master.toml");
    let mut text_of = std::fs::read_to_string(&config).expect("config");
    text_of.push_str(&database_section(&url));
    std::fs::write(&config, text_of).expect("config written");
    let master = master.start_again();
    let _slave = master.start_slave("s1");
    let first = builds(&master);
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0]["result"], "success", "{first:?}");
    let forced = master.ssh(
        &master.user_key,
        &current_user(),
        "force linux --reason after",
    );
    assert_eq!(forced.status.code(), Some(0), "{}", text(&forced.stderr));
    wait_until("build #2 to finish", || {
        builds(&master)
            .iter()
            .any(|build| build["number"] == 2 && build["result"] == "success")
    });
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
    let b = join(&a, "ci-b");
    // The slave knows only A: the build runs there, and B has no log file of it.
    let _slave = a.launch_slave("s1", masters(&[&a]));
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
    wait_until("B to serve the first line", || {
        get(&raw("stdout")) == "first\n"
    });
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

#[test]
fn a_slaves_newer_connection_to_another_master_closes_its_older_one() {
    let url = fresh_database();
    let checkout = Checkout::new();
    let a = first_master(
        &url,
        &checkout.upstream,
        r#"{ name = "test", command = "true" },"#,
    );
    let b = join(&a, "ci-b");
    let slave = a.launch_slave("s1", masters(&[&a]));
    a.wait_connected("s1");
    // The same slave (its key and name) starts again elsewhere and reaches B.
    let config = slave.dir.join("slave.toml");
    let mut text_of = std::fs::read_to_string(&config).expect("slave.toml");
    masters(&[&b])(&mut text_of);
    std::fs::write(&config, text_of).expect("slave.toml written");
    let parent = tempfile::tempdir().expect("temp dir");
    let twin = slave.twin(parent.path());
    b.wait_connected("s1");
    // A hears of it through the cluster and drops its older connection.
    wait_until("A to drop its older connection of s1", || {
        a.log()
            .contains("slave connected to another master; dropping its older connection here")
    });
    drop(slave);
    wait_until("s1 on B alone", || {
        b.slave_connected("s1") && !a.slave_connected("s1")
    });
    drop(twin);
}

#[test]
fn a_shell_asked_of_another_master_is_sent_where_the_slave_is_and_a_release_anywhere_ends_it() {
    let url = fresh_database();
    let checkout = Checkout::new();
    // Fails, so it is held (the default hold: on failure, 10 minutes).
    let steps = r#"{ name = "test", command = "sh -c 'echo kept > kept.txt; exit 1'" },"#;
    let a = first_master(&url, &checkout.upstream, steps);
    let b = join(&a, "ci-b");
    // One login for the whole cluster: B's user key is authorized on A too.
    a.authorize(
        &current_user(),
        &format!("{}\n{}", a.user_key.public_line, b.user_key.public_line),
    );
    // The slave knows only A.
    let _slave = a.launch_slave("s1", masters(&[&a]));
    a.wait_connected("s1");
    let forced = a.ssh(&a.user_key, &current_user(), "force linux --reason 'hold'");
    assert_eq!(forced.status.code(), Some(0), "{}", text(&forced.stderr));
    wait_until("B to see linux #1 fail", || {
        builds(&b)
            .iter()
            .any(|build| build["number"] == 1 && build["result"] == "failure")
    });
    // B's heartbeat names the slaves of A once A renews its lease.
    wait_until("B to know that s1 is on A", || {
        b.api("/api/masters").as_array().is_some_and(|masters| {
            masters
                .iter()
                .any(|m| m["name"] == "ci-a" && m["slaves"].to_string().contains("\"s1\""))
        })
    });

    // Straight ssh to B: one line saying where to go, with the command to type.
    let asked = b.ssh(
        &b.user_key,
        &current_user(),
        "shell linux 1 -- cat kept.txt",
    );
    assert_eq!(asked.status.code(), Some(1), "{}", text(&asked.stderr));
    let told = text(&asked.stderr);
    assert!(
        told.contains(&format!(
            "connected to master ci-a, not this one: ssh -t -p {} 127.0.0.1 shell linux 1",
            a.ssh_port
        )) && told.trim().lines().count() == 1,
        "{told}"
    );
    let place = b.ssh(&b.user_key, &current_user(), "shell linux 1 --where");
    assert_eq!(place.status.code(), Some(0), "{}", text(&place.stderr));
    let place: serde_json::Value = serde_json::from_str(&text(&place.stdout)).expect("JSON");
    assert_eq!(place["here"], false, "{place}");
    assert_eq!(place["master"], "ci-a", "{place}");
    assert_eq!(place["port"], a.ssh_port, "{place}");
    assert!(
        place["host_key"]
            .as_str()
            .is_some_and(|key| key.starts_with("ssh-")),
        "{place}"
    );

    // `buildbot shell` pointed at B goes to A by itself.
    let mut client = std::process::Command::new(crate::harness::BIN);
    client
        .arg("shell")
        .args(b.client_args())
        .args(["linux", "1", "--", "cat kept.txt"])
        .stdin(std::process::Stdio::null());
    let ran = run_with_timeout(client, None);
    assert_eq!(ran.status.code(), Some(0), "{}", text(&ran.stderr));
    assert_eq!(text(&ran.stdout), "kept\n");
    assert!(
        text(&ran.stderr).contains("is connected to master ci-a; opening the shell there"),
        "{}",
        text(&ran.stderr)
    );

    // B's build page shows those who may the command that works: A's.
    let session = crate::changes::web_login(&b);
    let page = crate::harness::http_client()
        .get(format!(
            "http://127.0.0.1:{}/builders/linux/builds/1",
            b.http_port
        ))
        .header("Cookie", &session.cookie)
        .send()
        .and_then(|response| response.text())
        .expect("build page");
    assert!(
        page.contains(&format!("ssh -t -p {} 127.0.0.1 shell linux 1", a.ssh_port)),
        "{page}"
    );

    // A shell relayed by A ends when the hold is released on B.
    let mut open = a.ssh_command(&a.user_key, &current_user(), &[]);
    open.arg("shell linux 1 -- 'echo started; exec sleep 120'")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut running = open.spawn().expect("ssh");
    let mut stdout = running.stdout.take().expect("stdout");
    let mut first = [0u8; 8];
    stdout.read_exact(&mut first).expect("the command started");
    assert_eq!(&first, b"started\n");
    let released = b.ssh(&b.user_key, &current_user(), "shell linux 1 --release");
    assert_eq!(
        released.status.code(),
        Some(0),
        "{}",
        text(&released.stderr)
    );
    let ended = crate::harness::wait_with_deadline(
        &mut running,
        "the shell on A to end after the release on B",
        crate::harness::PATIENCE,
    );
    assert_eq!(ended.code(), Some(255));
    let mut said = String::new();
    running
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut said)
        .expect("stderr");
    assert!(
        said.contains(&format!("{} released the hold of linux #1", current_user())),
        "{said}"
    );
}
