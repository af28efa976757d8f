//! Locks and slave pools with a real master and real slaves: steps record when they start and
//! end into a file of the test's, and the tests assert on those intervals (never on the
//! master's own account of them).

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::harness::{
    MasterSetup, PATIENCE, SLACK, TestMaster, current_user, process_running, wait_until,
};
use crate::repo::Checkout;

/// One run of a recorded step: when it started and ended (seconds since the epoch, on this
/// machine's clock, which the slaves share), its tag, and the directory it ran in.
#[derive(Debug, Clone)]
struct Run {
    start: f64,
    end: f64,
    tag: String,
    dir: String,
}

impl Run {
    fn overlaps(&self, other: &Run) -> bool {
        self.start < other.end && other.start < self.end
    }

    /// The slave of `slaves` whose directory the step ran in.
    fn slave<'a>(&self, slaves: &[&'a str]) -> &'a str {
        slaves
            .iter()
            .find(|name| self.dir.contains(&format!("/{name}/")))
            .unwrap_or_else(|| panic!("{self:?} ran in none of {slaves:?}"))
    }
}

/// A temp dir where steps record their runs (removed on drop).
struct Stamps {
    dir: tempfile::TempDir,
}

impl Stamps {
    fn new() -> Stamps {
        Stamps {
            dir: tempfile::Builder::new()
                .prefix("buildbot-locks-")
                .tempdir()
                .expect("temp dir"),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The shell snippet that records one run of `body` tagged `tag` (one line per run, one
    /// write, so concurrent steps do not interleave).
    fn recorded(&self, tag: &str, body: &str) -> String {
        format!(
            r#"s=$(date +%s.%N); {body}; e=$(date +%s.%N); echo "$s $e {tag} $PWD" >> {}/runs"#,
            self.path().display()
        )
    }

    /// A step (a TOML array item) that records a run of `sleep secs`; `extra` goes into the
    /// step's table (e.g. `, locks = [...]`).
    fn step(&self, tag: &str, secs: f64, extra: &str) -> String {
        let command = self.recorded(tag, &format!("sleep {secs}"));
        format!("{{ name = \"{tag}\", command = '{command}'{extra} }},")
    }

    /// A step that records a run which lasts until the test creates `go` (at most a minute).
    fn gated_step(&self, tag: &str) -> String {
        let body = format!(
            "for i in $(seq 600); do [ -e {} ] && break; sleep 0.1; done",
            self.go().display()
        );
        let command = self.recorded(tag, &body);
        format!("{{ name = \"{tag}\", command = '{command}' }},")
    }

    fn go(&self) -> std::path::PathBuf {
        self.path().join("go")
    }

    fn release(&self) {
        std::fs::write(self.go(), "").expect("go written");
    }

    fn runs(&self) -> Vec<Run> {
        let runs = std::fs::read_to_string(self.path().join("runs")).unwrap_or_default();
        runs.lines()
            .map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                assert_eq!(fields.len(), 4, "a run line: {line:?}");
                let time = |field: &str| -> f64 {
                    field
                        .parse()
                        .unwrap_or_else(|err| panic!("a time in {line:?}: {err}"))
                };
                let run = Run {
                    start: time(fields[0]),
                    end: time(fields[1]),
                    tag: fields[2].to_string(),
                    dir: fields[3].to_string(),
                };
                assert!(run.start <= run.end, "{run:?}");
                run
            })
            .collect()
    }

    fn runs_of(&self, tags: &[&str]) -> Vec<Run> {
        self.runs()
            .into_iter()
            .filter(|run| tags.contains(&run.tag.as_str()))
            .collect()
    }
}

/// The most runs that were going on at any one moment.
fn max_overlap(runs: &[Run]) -> usize {
    // At equal times an end comes before a start: touching intervals do not overlap.
    let mut events: Vec<(f64, i32)> = runs
        .iter()
        .flat_map(|run| [(run.start, 1), (run.end, -1)])
        .collect();
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut most) = (0i32, 0i32);
    for (_, change) in events {
        now += change;
        most = most.max(now);
    }
    usize::try_from(most).unwrap_or_default()
}

/// A `[[builder]]` block building `repo`'s main branch on `slaves`; `extra` holds more of its
/// keys (locks, priority, ...), `steps` its TOML step items.
fn builder(name: &str, slaves: &[&str], repo: &Path, extra: &str, steps: &str) -> String {
    let names: Vec<String> = slaves.iter().map(|slave| format!("\"{slave}\"")).collect();
    format!(
        "\n[[builder]]\nname = \"{name}\"\nslaves = [{}]\nrepo = \"{}\"\nbranch = \"main\"\n{extra}\nsteps = [\n{steps}\n]\n",
        names.join(", "),
        repo.display()
    )
}

/// A master with these slaves (each taking up to `max_builds` builds at once) and `config`
/// ([[lock]] and [[builder]] blocks) after them.
fn master(slaves: &[&str], max_builds: usize, config: String) -> TestMaster {
    let edits = slaves
        .iter()
        .map(|name| -> (&'static str, &'static str) {
            let old = format!("name = \"{name}\"\npublic_key");
            let new = format!("name = \"{name}\"\nmax_builds = {max_builds}\npublic_key");
            (
                Box::leak(old.into_boxed_str()),
                Box::leak(new.into_boxed_str()),
            )
        })
        .collect();
    TestMaster::start_with(MasterSetup {
        slaves: slaves.iter().map(ToString::to_string).collect(),
        extra_config: config,
        edits,
        ..MasterSetup::default()
    })
}

/// Queues a build of `builder` by hand.
fn force(master: &TestMaster, builder: &str) {
    let said = master.ssh_ok(&format!("force {builder} --reason locks"));
    assert!(said.contains("forced build queued"), "{said}");
}

fn builds(master: &TestMaster, builder: &str) -> Vec<Value> {
    master
        .api(&format!("/api/builds?builder={builder}&limit=100"))
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn build(master: &TestMaster, builder: &str, number: u64) -> Option<Value> {
    builds(master, builder)
        .into_iter()
        .find(|build| build["number"] == number)
}

/// Polls `condition` until it holds; after `patience`, fails showing the locks and builders.
fn wait_for(
    master: &TestMaster,
    what: &str,
    patience: Duration,
    mut condition: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + patience;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {patience:?} waiting for {what}\nlocks: {}\nbuilders: {}",
            master.api("/api/locks"),
            master.api("/api/builders"),
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `builder` has `count` finished builds and asserts they all succeeded.
fn wait_successes(master: &TestMaster, builder: &str, count: usize, patience: Duration) {
    let mut finished = Vec::new();
    wait_for(
        master,
        &format!("{count} finished builds of {builder}"),
        patience,
        || {
            finished = builds(master, builder)
                .into_iter()
                .filter(|build| build["running"] == false)
                .collect();
            finished.len() >= count
        },
    );
    assert_eq!(finished.len(), count, "{finished:?}");
    for build in &finished {
        assert_eq!(build["result"], "success", "{build}");
    }
}

fn lock_view(master: &TestMaster, name: &str) -> Value {
    let locks = master.api("/api/locks");
    locks
        .as_array()
        .and_then(|locks| locks.iter().find(|lock| lock["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no lock {name} in /api/locks: {locks}"))
}

fn holders(master: &TestMaster, lock: &str) -> Vec<Value> {
    lock_view(master, lock)["holders"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn waiters(master: &TestMaster, lock: &str) -> Vec<Value> {
    lock_view(master, lock)["waiters"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn held_by(master: &TestMaster, lock: &str, builder: &str, number: u64) -> bool {
    holders(master, lock)
        .iter()
        .any(|holder| holder["builder"] == builder && holder["number"] == number)
}

fn waited_for_by(master: &TestMaster, lock: &str, builder: &str) -> bool {
    waiters(master, lock)
        .iter()
        .any(|waiter| waiter["builder"] == builder)
}

fn queued(master: &TestMaster, builder: &str) -> u64 {
    master.api(&format!("/api/builders/{builder}"))["queued"]
        .as_u64()
        .unwrap_or_default()
}

const LONG: Duration = Duration::from_secs(120);

#[test]
fn builders_sharing_an_exclusive_master_lock_never_overlap() {
    let checkout = Checkout::new();
    let stamps = Stamps::new();
    let slaves = ["s1", "s2", "s3"];
    let mut config = "\n[[lock]]\nname = \"db\"\nkind = \"master\"\n".to_string();
    for name in ["a", "b", "c"] {
        config.push_str(&builder(
            name,
            &slaves,
            &checkout.upstream,
            "locks = [ { lock = \"db\", access = \"exclusive\" } ]",
            &stamps.step(name, 0.8, ""),
        ));
    }
    let master = master(&slaves, 1, config);
    let _running: Vec<_> = slaves.iter().map(|name| master.start_slave(name)).collect();
    for _ in 0..2 {
        for name in ["a", "b", "c"] {
            force(&master, name);
        }
    }
    for name in ["a", "b", "c"] {
        wait_successes(&master, name, 2, LONG);
    }
    let runs = stamps.runs();
    assert_eq!(runs.len(), 6, "{runs:?}");
    assert_eq!(max_overlap(&runs), 1, "builds overlapped: {runs:?}");
    assert!(holders(&master, "db").is_empty());
}

#[test]
fn a_counting_lock_never_has_more_than_max_count_holders() {
    let checkout = Checkout::new();
    let stamps = Stamps::new();
    let slaves = ["s1", "s2", "s3"];
    let mut config = "\n[[lock]]\nname = \"pool\"\nkind = \"master\"\nmax_count = 2\n".to_string();
    for name in ["a", "b"] {
        config.push_str(&builder(
            name,
            &slaves,
            &checkout.upstream,
            "locks = [ { lock = \"pool\", access = \"counting\" } ]",
            &stamps.step(name, 1.5, ""),
        ));
    }
    config.push_str(&builder(
        "x",
        &slaves,
        &checkout.upstream,
        "locks = [ { lock = \"pool\", access = \"exclusive\" } ]",
        &stamps.step("x", 1.0, ""),
    ));
    let master = master(&slaves, 1, config);
    let _running: Vec<_> = slaves.iter().map(|name| master.start_slave(name)).collect();
    for name in ["a", "b", "a", "x", "b", "a", "b"] {
        force(&master, name);
    }
    wait_successes(&master, "a", 3, LONG);
    wait_successes(&master, "b", 3, LONG);
    wait_successes(&master, "x", 1, LONG);
    let counting = stamps.runs_of(&["a", "b"]);
    assert_eq!(counting.len(), 6, "{counting:?}");
    // Three slaves are free for six builds: the lock, and only the lock, keeps it at two.
    assert_eq!(
        max_overlap(&counting),
        2,
        "counting holders at once: {counting:?}"
    );
    let exclusive = stamps.runs_of(&["x"]);
    assert_eq!(exclusive.len(), 1);
    for run in &counting {
        assert!(
            !run.overlaps(&exclusive[0]),
            "{run:?} overlapped the exclusive holder {:?}",
            exclusive[0]
        );
    }
}

#[test]
fn a_slave_lock_is_per_slave() {
    let checkout = Checkout::new();
    let stamps = Stamps::new();
    let slaves = ["s1", "s2"];
    let mut config = "\n[[lock]]\nname = \"disk\"\nkind = \"slave\"\nmax_count = 1\n".to_string();
    for name in ["a", "b"] {
        config.push_str(&builder(
            name,
            &slaves,
            &checkout.upstream,
            "locks = [ { lock = \"disk\" } ]",
            &stamps.step(name, 1.0, ""),
        ));
    }
    // Each slave could take two builds at once: only the lock keeps it to one.
    let master = master(&slaves, 2, config);
    let _running: Vec<_> = slaves.iter().map(|name| master.start_slave(name)).collect();
    for name in ["a", "b", "a", "b", "a", "b"] {
        force(&master, name);
    }
    wait_for(
        &master,
        "the lock to be held on both slaves",
        PATIENCE,
        || {
            let holders = holders(&master, "disk");
            holders.iter().any(|holder| holder["slave"] == "s1")
                && holders.iter().any(|holder| holder["slave"] == "s2")
        },
    );
    wait_successes(&master, "a", 3, LONG);
    wait_successes(&master, "b", 3, LONG);
    let runs = stamps.runs();
    assert_eq!(runs.len(), 6, "{runs:?}");
    for slave in slaves {
        let on: Vec<Run> = runs
            .iter()
            .filter(|run| run.slave(&slaves) == slave)
            .cloned()
            .collect();
        assert!(!on.is_empty(), "nothing ran on {slave}: {runs:?}");
        assert_eq!(max_overlap(&on), 1, "{slave} held the lock twice: {on:?}");
    }
    assert_eq!(
        max_overlap(&runs),
        2,
        "the two slaves' locks are separate: {runs:?}"
    );
}

#[test]
fn builders_taking_two_locks_in_opposite_orders_never_deadlock() {
    let checkout = Checkout::new();
    let stamps = Stamps::new();
    let slaves = ["s1", "s2"];
    let mut config = String::new();
    for lock in ["A", "B", "C", "D"] {
        config.push_str(&format!(
            "\n[[lock]]\nname = \"{lock}\"\nkind = \"master\"\n"
        ));
    }
    // Build level: A then B, and B then A.
    config.push_str(&builder(
        "ab",
        &slaves,
        &checkout.upstream,
        "locks = [ { lock = \"A\" }, { lock = \"B\" } ]",
        &stamps.step("ab", 0.1, ""),
    ));
    config.push_str(&builder(
        "ba",
        &slaves,
        &checkout.upstream,
        "locks = [ { lock = \"B\" }, { lock = \"A\" } ]",
        &stamps.step("ba", 0.1, ""),
    ));
    // Step level: C then D, and D then C.
    config.push_str(&builder(
        "cd",
        &slaves,
        &checkout.upstream,
        "",
        &stamps.step(
            "cd",
            0.1,
            ", locks = [ { lock = \"C\" }, { lock = \"D\" } ]",
        ),
    ));
    config.push_str(&builder(
        "dc",
        &slaves,
        &checkout.upstream,
        "",
        &stamps.step(
            "dc",
            0.1,
            ", locks = [ { lock = \"D\" }, { lock = \"C\" } ]",
        ),
    ));
    let master = master(&slaves, 2, config);
    let _running: Vec<_> = slaves.iter().map(|name| master.start_slave(name)).collect();
    let started = Instant::now();
    for round in 0..10 {
        force(&master, "ab");
        force(&master, "ba");
        if round < 5 {
            force(&master, "cd");
            force(&master, "dc");
        }
    }
    let deadline = Duration::from_secs(240);
    wait_successes(&master, "ab", 10, deadline);
    wait_successes(&master, "ba", 10, deadline);
    wait_successes(&master, "cd", 5, deadline);
    wait_successes(&master, "dc", 5, deadline);
    println!("30 builds over two locks each took {:?}", started.elapsed());
    let build_level = stamps.runs_of(&["ab", "ba"]);
    assert_eq!(build_level.len(), 20);
    assert_eq!(max_overlap(&build_level), 1, "{build_level:?}");
    let step_level = stamps.runs_of(&["cd", "dc"]);
    assert_eq!(step_level.len(), 10);
    assert_eq!(max_overlap(&step_level), 1, "{step_level:?}");
    for lock in ["A", "B", "C", "D"] {
        assert!(holders(&master, lock).is_empty(), "{lock} still held");
        assert!(waiters(&master, lock).is_empty(), "{lock} still awaited");
    }
}

/// How a holding build is ended in `the_lock_is_free_*`.
enum End {
    SlaveKilled,
    Stopped,
    MasterRestarted,
}

/// `holder` (on s1) holds lock db in a step that sleeps 600 s (its first run only; a rerun
/// passes at once) while `waiter` (on s2) waits for db. Ends the holder by `how`, then checks
/// that nothing holds db for the ended build, and that the waiter then runs and passes.
fn the_lock_is_free_after(how: End) {
    let checkout = Checkout::new();
    let stamps = Stamps::new();
    let pid_file = stamps.path().join("pid");
    let hold = format!(
        "{{ name = \"hold\", command = 'if mkdir {}/held 2>/dev/null; then echo $$ > {}; exec sleep 600; fi' }},",
        stamps.path().display(),
        pid_file.display()
    );
    let mut config = "\n[[lock]]\nname = \"db\"\nkind = \"master\"\n".to_string();
    config.push_str(&builder(
        "holder",
        &["s1"],
        &checkout.upstream,
        "locks = [ { lock = \"db\" } ]",
        &hold,
    ));
    config.push_str(&builder(
        "waiter",
        &["s2"],
        &checkout.upstream,
        "locks = [ { lock = \"db\" } ]",
        &stamps.step("waiter", 0.1, ""),
    ));
    let mut master = master(&["s1", "s2"], 1, config);
    let s1 = master.start_slave("s1");
    let _s2 = master.start_slave("s2");
    force(&master, "holder");
    wait_for(&master, "holder #1 to hold db", PATIENCE, || {
        held_by(&master, "db", "holder", 1)
    });
    let pid = crate::harness::wait_for_pid(&pid_file);
    force(&master, "waiter");
    wait_for(&master, "waiter to wait for db", PATIENCE, || {
        waited_for_by(&master, "db", "waiter")
    });
    assert!(
        builds(&master, "waiter").is_empty(),
        "the waiter started while db was held"
    );

    let ended_at = Instant::now();
    let ended_unix = unix_now();
    match how {
        End::SlaveKilled => s1.signal(Signal::SIGKILL),
        End::Stopped => {
            let said = master.ssh_ok("stop holder 1 --reason 'free the lock'");
            assert!(said.contains("holder #1: interrupted"), "{said}");
        }
        End::MasterRestarted => {
            master.kill_hard();
            master = master.start_again();
            // The status lists the configured locks from the scheduler's first turn on.
            wait_for(&master, "/api/locks to list db", PATIENCE, || {
                master.api("/api/locks")[0]["name"] == "db"
            });
            // Nothing held survives the restart: not even before the slaves are back.
            assert!(
                !held_by(&master, "db", "holder", 1),
                "{}",
                lock_view(&master, "db")
            );
        }
    }
    wait_for(&master, "holder #1 to let go of db", PATIENCE, || {
        !held_by(&master, "db", "holder", 1)
    });
    let freed = ended_at.elapsed();
    println!("db freed {freed:?} after the holder's end");
    assert!(freed < SLACK, "db was freed only after {freed:?}");
    wait_successes(&master, "waiter", 1, PATIENCE);
    let runs = stamps.runs_of(&["waiter"]);
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert!(
        runs[0].start >= ended_unix,
        "the waiter ran before the holder ended: {runs:?}"
    );
    let first = build(&master, "holder", 1).expect("holder #1");
    assert_eq!(first["running"], false, "{first}");
    assert_ne!(first["result"], "success", "{first}");
    if let End::MasterRestarted = how {
        // The interrupted request runs again (and passes at once, its marker made).
        wait_for(&master, "holder #2", PATIENCE, || {
            build(&master, "holder", 2).is_some_and(|build| build["result"] == "success")
        });
    }
    wait_for(&master, "db to be free", PATIENCE, || {
        holders(&master, "db").is_empty() && waiters(&master, "db").is_empty()
    });
    // The step of a SIGKILLed slave is orphaned: end it here.
    if process_running(pid) {
        crate::harness::signal(u32::try_from(pid).expect("pid"), Signal::SIGKILL);
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch")
        .as_secs_f64()
}

#[test]
fn the_lock_is_free_the_moment_the_holders_slave_is_killed() {
    the_lock_is_free_after(End::SlaveKilled);
}

#[test]
fn the_lock_is_free_when_the_holding_build_is_stopped() {
    the_lock_is_free_after(End::Stopped);
}

#[test]
fn no_lock_survives_a_master_kill_and_restart() {
    the_lock_is_free_after(End::MasterRestarted);
}

#[test]
fn a_build_waiting_for_a_lock_holds_no_slave() {
    let checkout = Checkout::new();
    let stamps = Stamps::new();
    let mut config = "\n[[lock]]\nname = \"L\"\nkind = \"master\"\n".to_string();
    config.push_str(&builder(
        "a",
        &["s1"],
        &checkout.upstream,
        "locks = [ { lock = \"L\" } ]",
        &stamps.gated_step("a"),
    ));
    config.push_str(&builder(
        "b",
        &["s1"],
        &checkout.upstream,
        "locks = [ { lock = \"L\" } ]",
        &stamps.step("b", 0.1, ""),
    ));
    config.push_str(&builder(
        "c",
        &["s1"],
        &checkout.upstream,
        "",
        &stamps.step("c", 0.1, ""),
    ));
    // Two builds at once on the one slave: a's, and one more.
    let master = master(&["s1"], 2, config);
    let _s1 = master.start_slave("s1");
    force(&master, "a");
    wait_for(&master, "a #1 to hold L", PATIENCE, || {
        held_by(&master, "L", "a", 1)
    });
    force(&master, "b");
    wait_for(&master, "b to wait for L", PATIENCE, || {
        waited_for_by(&master, "L", "b")
    });
    force(&master, "c");
    // Were b holding the second slot while it waits, c could not run until a ended.
    wait_successes(&master, "c", 1, PATIENCE);
    assert_eq!(
        build(&master, "a", 1).expect("a #1")["running"],
        true,
        "a ended early"
    );
    assert!(
        builds(&master, "b").is_empty(),
        "b started while L was held"
    );
    assert!(waited_for_by(&master, "L", "b"));

    stamps.release();
    wait_successes(&master, "a", 1, PATIENCE);
    wait_successes(&master, "b", 1, PATIENCE);
    let (a, b, c) = (
        &stamps.runs_of(&["a"])[0],
        &stamps.runs_of(&["b"])[0],
        &stamps.runs_of(&["c"])[0],
    );
    assert!(
        a.start < c.start && c.end < a.end,
        "c ran inside a: {a:?} {c:?}"
    );
    assert!(b.start >= a.end, "b ran after a: {a:?} {b:?}");
}

#[test]
fn max_concurrent_keeps_a_builder_to_one_build_across_its_pool() {
    let checkout = Checkout::new();
    let stamps = Stamps::new();
    let slaves = ["s1", "s2"];
    let mut config = builder(
        "one",
        &slaves,
        &checkout.upstream,
        "max_concurrent = 1",
        &stamps.step("one", 0.7, ""),
    );
    config.push_str(&builder(
        "free",
        &slaves,
        &checkout.upstream,
        "",
        &stamps.step("free", 1.5, ""),
    ));
    let master = master(&slaves, 1, config);
    let _running: Vec<_> = slaves.iter().map(|name| master.start_slave(name)).collect();
    for _ in 0..4 {
        force(&master, "one");
    }
    wait_successes(&master, "one", 4, LONG);
    let one = stamps.runs_of(&["one"]);
    assert_eq!(one.len(), 4);
    assert_eq!(max_overlap(&one), 1, "{one:?}");
    // The pool does run two builds at once for a builder without the limit.
    force(&master, "free");
    force(&master, "free");
    wait_successes(&master, "free", 2, LONG);
    let free = stamps.runs_of(&["free"]);
    assert_eq!(max_overlap(&free), 2, "{free:?}");
}

#[test]
fn a_higher_priority_builder_is_served_first() {
    let checkout = Checkout::new();
    let stamps = Stamps::new();
    let mut config = builder(
        "busy",
        &["s1"],
        &checkout.upstream,
        "",
        &stamps.gated_step("busy"),
    );
    config.push_str(&builder(
        "low",
        &["s1"],
        &checkout.upstream,
        "priority = 1",
        &stamps.step("low", 0.1, ""),
    ));
    config.push_str(&builder(
        "high",
        &["s1"],
        &checkout.upstream,
        "priority = 10",
        &stamps.step("high", 0.1, ""),
    ));
    let master = master(&["s1"], 1, config);
    let _s1 = master.start_slave("s1");
    force(&master, "busy");
    wait_for(&master, "busy #1 to run", PATIENCE, || {
        build(&master, "busy", 1).is_some_and(|build| build["running"] == true)
    });
    force(&master, "low");
    force(&master, "low");
    force(&master, "high");
    wait_for(&master, "low and high to be queued", PATIENCE, || {
        queued(&master, "low") == 2 && queued(&master, "high") == 1
    });
    stamps.release();
    wait_successes(&master, "busy", 1, PATIENCE);
    wait_successes(&master, "low", 2, LONG);
    wait_successes(&master, "high", 1, LONG);
    let mut runs = stamps.runs();
    runs.sort_by(|a, b| a.start.total_cmp(&b.start));
    let order: Vec<&str> = runs.iter().map(|run| run.tag.as_str()).collect();
    assert_eq!(order, ["busy", "high", "low", "low"], "{runs:?}");
}

#[test]
fn a_paused_slave_finishes_its_build_and_takes_no_new_one_until_unpaused() {
    let checkout = Checkout::new();
    let stamps = Stamps::new();
    let config = builder(
        "linux",
        &["s1"],
        &checkout.upstream,
        "",
        &stamps.gated_step("linux"),
    );
    let master = master(&["s1"], 1, config);
    let _s1 = master.start_slave("s1");
    force(&master, "linux");
    wait_for(&master, "linux #1 to run", PATIENCE, || {
        build(&master, "linux", 1).is_some_and(|build| build["running"] == true)
    });
    let said = master.ssh_ok("pause-slave s1");
    assert_eq!(
        said.trim(),
        "slave s1 paused: it finishes its builds and takes no new ones"
    );
    force(&master, "linux");
    wait_for(&master, "the second request to be queued", PATIENCE, || {
        queued(&master, "linux") == 1
    });
    stamps.release();
    wait_successes(&master, "linux", 1, PATIENCE);
    // A build would start within a moment on a slave that is not paused (the go file is there:
    // it would pass at once).
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        build(&master, "linux", 2).is_none(),
        "a paused slave took a build"
    );
    assert_eq!(queued(&master, "linux"), 1);
    assert!(master.slave_connected("s1"));

    assert_eq!(
        master.ssh_ok("unpause-slave s1").trim(),
        "slave s1 unpaused"
    );
    wait_successes(&master, "linux", 2, PATIENCE);
    assert_eq!(stamps.runs().len(), 2);
    // Unknown slaves are refused.
    let output = master.ssh(&master.user_key, &current_user(), "pause-slave nope");
    assert_ne!(output.status.code(), Some(0));
    wait_until("nothing queued", || queued(&master, "linux") == 0);
}

/// Issue 21, item 6: a request that a build-level lock keeps from starting shows as waiting
/// for that lock (the builder's state in /api/builders and on its page, and /api/requests),
/// never as idle with "starts in now".
#[test]
fn a_request_waiting_for_a_lock_says_which_lock_everywhere() {
    let checkout = Checkout::new();
    let stamps = Stamps::new();
    let mut config = "\n[[lock]]\nname = \"db\"\nkind = \"master\"\n".to_string();
    config.push_str(&builder(
        "holder",
        &["s1"],
        &checkout.upstream,
        "locks = [ { lock = \"db\" } ]",
        &stamps.gated_step("holder"),
    ));
    config.push_str(&builder(
        "waiter",
        &["s2"],
        &checkout.upstream,
        "locks = [ { lock = \"db\" } ]",
        &stamps.step("waiter", 0.1, ""),
    ));
    let master = master(&["s1", "s2"], 1, config);
    let _s1 = master.start_slave("s1");
    let _s2 = master.start_slave("s2");
    force(&master, "holder");
    wait_for(&master, "holder #1 to hold db", PATIENCE, || {
        held_by(&master, "db", "holder", 1)
    });
    force(&master, "waiter");
    wait_for(&master, "waiter to wait for db", PATIENCE, || {
        master.api("/api/builders/waiter")["waiting_for_lock"] == "db"
    });
    let waiter = master.api("/api/builders/waiter");
    assert_eq!(waiter["state"], "waiting for lock db", "{waiter}");
    let requests = master.api("/api/requests");
    let queued = requests
        .as_array()
        .and_then(|requests| {
            requests
                .iter()
                .find(|request| request["builder"] == "waiter")
        })
        .cloned()
        .unwrap_or_else(|| panic!("the waiter's request in /api/requests: {requests}"));
    assert_eq!(queued["waiting_for_lock"], "db", "{queued}");
    assert_eq!(queued["starts_in"], "waiting for lock db", "{queued}");
    assert_eq!(queued["starts_in_secs"], Value::Null, "{queued}");
    let page = crate::harness::http_client()
        .get(format!(
            "http://127.0.0.1:{}/builders/waiter",
            master.http_port
        ))
        .send()
        .and_then(|response| response.text())
        .expect("the builder page");
    assert!(page.contains("waiting for lock db"), "{page}");
    assert!(!page.contains(">now<"), "no 'starts in now': {page}");

    stamps.release();
    wait_successes(&master, "waiter", 1, LONG);
    wait_for(&master, "the waiter's state to clear", PATIENCE, || {
        master.api("/api/builders/waiter")["waiting_for_lock"].is_null()
    });
}
