//! Automatic bisection (issue 28): a branch that goes from green to red over sixteen commits is
//! bisected on the idle slave and the first bad commit named, in at most ⌈log2 16⌉ + repeats
//! builds; a commit that cannot be built (the skip exit code) is built around; a test failing
//! one time in three names no innocent commit; a bisection takes no busy slave and lets a new
//! request go first; the builder page shows its progress and its result.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::{MasterSetup, TestMaster, element_text, wait_until};
use crate::repo::git;

/// An upstream with a base commit and sixteen more on main: the `culprit`-th adds the file
/// `broken`; the `nobuild`-th adds `nobuild` and the next removes it. Returns (dir guard,
/// upstream, base, the sixteen ids).
pub fn sixteen_commits(
    culprit: usize,
    nobuild: Option<usize>,
) -> (tempfile::TempDir, std::path::PathBuf, String, Vec<String>) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).expect("dir");
    git(&work, &["init", "-q"]);
    std::fs::write(work.join("n.txt"), "0\n").expect("write");
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "base"]);
    let base = git(&work, &["rev-parse", "HEAD"]).trim().to_string();
    let mut ids = Vec::new();
    for i in 1..=16 {
        std::fs::write(work.join("n.txt"), format!("{i}\n")).expect("write");
        if i == culprit {
            std::fs::write(work.join("broken"), "").expect("write");
        }
        if Some(i) == nobuild {
            std::fs::write(work.join("nobuild"), "").expect("write");
        }
        if nobuild.is_some_and(|n| n + 1 == i) {
            std::fs::remove_file(work.join("nobuild")).expect("remove");
        }
        git(&work, &["add", "-A"]);
        let title = if i == culprit {
            "Refactor parser".to_string()
        } else {
            format!("commit {i}")
        };
        git(&work, &["commit", "-q", "-m", &title]);
        ids.push(git(&work, &["rev-parse", "HEAD"]).trim().to_string());
    }
    git(
        tmp.path(),
        &["clone", "-q", "--bare", "work", "upstream.git"],
    );
    let upstream = tmp.path().join("upstream.git");
    (tmp, upstream, base, ids)
}

fn master_bisecting(upstream: &Path, repeats: u32) -> TestMaster {
    master_bisecting_with(
        upstream,
        repeats,
        "if [ -e nobuild ]; then exit 125; fi; test ! -e broken",
        "",
    )
}

/// A master with slave s1 and `linux` (on s1, bisecting, its one step `sh -c 'SCRIPT'`), plus
/// `extra` (more slaves and builders).
pub fn master_bisecting_with(
    upstream: &Path,
    repeats: u32,
    script: &str,
    extra: &str,
) -> TestMaster {
    let mut slaves = vec!["s1".to_string()];
    if extra.contains("\"s2\"") {
        slaves.push("s2".into());
    }
    TestMaster::start_with(MasterSetup {
        slaves,
        extra_config: format!(
            "\n[[builder]]\nname = \"linux\"\nslaves = [\"s1\"{}]\nrepo = \"{}\"\nbranch = \"main\"\n\
             bisect = {{ max_builds = 16, repeats = {repeats}, skip_exit_code = 125 }}\n\
             steps = [ {{ name = \"test\", command = \"sh -c '{script}'\" }} ]\n{extra}",
            if extra.contains("\"s2\"") {
                ", \"s2\""
            } else {
                ""
            },
            upstream.display()
        ),
        ..MasterSetup::default()
    })
}

/// Waits (up to two minutes: a bisection is several builds) for the bisection to end.
fn finished_bisect(master: &TestMaster) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let list = master.api("/api/bisects");
        if let Some(first) = list.as_array().and_then(|all| all.first())
            && first["state"] != "running"
        {
            return first.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the bisection did not end: {list}\n{}",
            master.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Builds `base` (green, build 1) and the branch head (red, build 2), which starts a
/// bisection.
pub fn green_then_red(master: &TestMaster, base: &str) {
    master.ssh_ok(&format!("force linux --revision {base} --reason green"));
    assert_eq!(master.finished_build("linux", 1)["result"], "success");
    master.ssh_ok("force linux --reason red");
    assert_eq!(master.finished_build("linux", 2)["result"], "failure");
}

/// The builder page's line about bisection `id`.
fn page_line(master: &TestMaster, id: &serde_json::Value) -> Option<String> {
    element_text(
        &master.page("/builders/linux"),
        &format!("id=\"bisect-{id}\""),
    )
}

#[test]
fn a_branch_broken_over_sixteen_commits_is_bisected_and_the_culprit_named() {
    let (_tmp, upstream, base, ids) = sixteen_commits(11, None);
    let repeats = 1;
    let master = master_bisecting(&upstream, repeats);
    let _slave = master.start_slave("s1");
    let watching = crate::watch::Watching::start(&master, &["-b", "linux"]);
    watching.until(|line| line.starts_with("master example:"));
    green_then_red(&master, &base);

    let bisect = finished_bisect(&master);
    assert_eq!(bisect["state"], "found", "{bisect}");
    assert_eq!(bisect["builder"], "linux", "{bisect}");
    assert_eq!(bisect["good"], base.as_str(), "{bisect}");
    assert_eq!(bisect["bad"], ids[15].as_str(), "{bisect}");
    assert_eq!(bisect["culprit"], ids[10].as_str(), "{bisect}");
    let builds = bisect["builds"].as_i64().expect("builds");
    // ⌈log2 16⌉ to find it, then the suspect `repeats` more times.
    assert!(builds <= 4 + i64::from(repeats), "{bisect}");
    let summary = bisect["summary"].as_str().expect("summary");
    assert!(
        summary.starts_with(&format!(
            "first bad: {} by Alice <alice@example.org> 'Refactor parser' — ",
            &ids[10][..7]
        )),
        "{summary}"
    );
    assert_eq!(
        page_line(&master, &bisect["id"]).as_deref(),
        Some(format!("main: {summary}").as_str()),
        "the builder page tells the result"
    );
    // `watch` told the start and the result.
    let seen = watching.until(|line| line.starts_with("linux: first bad:"));
    assert!(
        seen.contains(&format!(
            "linux: bisecting {}..{}: 16 commits",
            &base[..7],
            &ids[15][..7]
        )),
        "{seen:?}"
    );
    assert_eq!(seen.last(), Some(&format!("linux: {summary}")), "{seen:?}");
    watching.interrupt();
    // Every build the bisection asked for is a build of linux, after the two.
    let all = master.api("/api/builds?builder=linux&limit=50");
    assert_eq!(
        all.as_array().map(Vec::len),
        Some(2 + builds as usize),
        "{all}"
    );
}

#[test]
fn a_commit_that_does_not_build_is_skipped() {
    // Commit 8 cannot be built (exit 125); the culprit is 11.
    let (_tmp, upstream, base, ids) = sixteen_commits(11, Some(8));
    let master = master_bisecting(&upstream, 1);
    let _slave = master.start_slave("s1");
    green_then_red(&master, &base);
    let bisect = finished_bisect(&master);
    assert_eq!(bisect["state"], "found", "{bisect}");
    assert_eq!(bisect["culprit"], ids[10].as_str(), "{bisect}");
}

#[test]
fn a_bisection_that_cannot_tell_says_so_where_its_start_was_told() {
    // Commit 8 cannot be built and 9 is the first bad one: the culprit is 8 or 9.
    let (_tmp, upstream, base, ids) = sixteen_commits(9, Some(8));
    let master = master_bisecting(&upstream, 1);
    let _slave = master.start_slave("s1");
    let watching = crate::watch::Watching::start(&master, &["-b", "linux"]);
    watching.until(|line| line.starts_with("master example:"));
    green_then_red(&master, &base);
    let bisect = finished_bisect(&master);
    assert_eq!(bisect["state"], "inconclusive", "{bisect}");
    let range = format!("{}..{}", &ids[7][..10], &ids[8][..10]);
    let seen = watching.until(|line| line.starts_with("linux: bisection found no culprit:"));
    let told = seen.last().expect("the line");
    assert!(
        told.contains(&format!("the first bad commit is one of {range}")),
        "{seen:?}"
    );
    watching.interrupt();
}

#[test]
fn a_test_failing_one_time_in_three_names_no_innocent_commit_with_two_repeats() {
    // Every third run of the step fails whatever the commit (a counter outside the checkout:
    // one slave runs the builds one after the other, so which runs flake is fixed); commit 11
    // breaks it for good. With repeats = 2 a suspect is named after three failures in a row,
    // which a one-in-three flake cannot give.
    let (tmp, upstream, base, ids) = sixteen_commits(11, None);
    let counter = tmp.path().join("runs");
    let flakes = tmp.path().join("flakes");
    let script = format!(
        "n=$(( $(cat {counter} 2>/dev/null || echo 0) + 1 )); echo $n > {counter}; \
         test ! -e broken || exit 1; \
         if [ $((n % 3)) -eq 0 ]; then echo $(cat n.txt) >> {flakes}; exit 1; fi",
        counter = counter.display(),
        flakes = flakes.display()
    );
    let master = master_bisecting_with(&upstream, 2, &script, "");
    let _slave = master.start_slave("s1");
    green_then_red(&master, &base);
    let bisect = finished_bisect(&master);
    let flaked = std::fs::read_to_string(&flakes).unwrap_or_default();
    assert!(
        !flaked.trim().is_empty(),
        "no innocent commit's build flaked: the test tested nothing ({bisect})"
    );
    assert_eq!(bisect["state"], "found", "{bisect}\nflaked at: {flaked}");
    assert_eq!(
        bisect["culprit"],
        ids[10].as_str(),
        "{bisect}\nflaked at: {flaked}"
    );
}

#[test]
fn a_bisection_takes_no_busy_slave_and_a_new_request_goes_before_its_next_build() {
    // linux runs on s1 and s2; `other` holds s2 the whole time. The bisection's builds (the
    // commits between base and head) wait while HOLD exists, so one can be caught running.
    let (tmp, upstream, base, ids) = sixteen_commits(11, None);
    let hold = tmp.path().join("HOLD");
    let other_hold = tmp.path().join("OTHER");
    std::fs::write(&hold, "").expect("hold");
    std::fs::write(&other_hold, "").expect("hold");
    let script = format!(
        "n=$(cat n.txt); while [ -e {} ] && [ $n != 0 ] && [ $n != 16 ]; do sleep 0.1; done; \
         test ! -e broken",
        hold.display()
    );
    let extra = format!(
        "\n[[builder]]\nname = \"other\"\nslaves = [\"s2\"]\nrepo = \"{}\"\nbranch = \"main\"\n\
         steps = [ {{ name = \"hold\", command = \"sh -c 'while [ -e {} ]; do sleep 0.1; done'\" }} ]\n",
        upstream.display(),
        other_hold.display()
    );
    let master = master_bisecting_with(&upstream, 1, &script, &extra);
    let _s1 = master.start_slave("s1");
    let _s2 = master.start_slave("s2");
    master.ssh_ok("force other --reason busy");
    wait_until("other #1 running on s2", || {
        let build = master.newest_build("other");
        build["running"] == true && build["slave"] == "s2"
    });
    green_then_red(&master, &base);

    // The bisection's first build runs on s1 and waits; the page shows the progress.
    wait_until("the bisection's first build running", || {
        let build = master.newest_build("linux");
        build["number"] == 3 && build["running"] == true
    });
    let bisect = master.api("/api/bisects")[0].clone();
    assert_eq!(bisect["state"], "running", "{bisect}");
    assert_eq!(
        page_line(&master, &bisect["id"]),
        Some(format!(
            "main: bisecting {}..{}: 0 of ≤5 builds, 16 commits left",
            &base[..7],
            &ids[15][..7]
        )),
        "the builder page tells the progress"
    );

    // A real request arrives while the bisection's build runs: it goes first.
    master.ssh_ok("force linux --reason real");
    wait_until("the real request queued", || {
        master.api("/api/builders/linux")["queued"] == 1
    });
    std::fs::remove_file(&hold).expect("release");
    let bisect = finished_bisect(&master);
    assert_eq!(bisect["state"], "found", "{bisect}");
    assert_eq!(bisect["culprit"], ids[10].as_str(), "{bisect}");

    let other = master.api_last_build("other");
    assert_eq!(other["running"], true, "s2 stayed busy all along: {other}");
    let all = master.api("/api/builds?builder=linux&limit=50");
    let builds = all.as_array().expect("builds");
    for build in builds {
        let number = build["number"].as_i64().expect("number");
        let page = master.api(&format!("/api/builds/{}", build["id"]));
        let of_bisection = page["properties"].get("bisect").is_some();
        assert_eq!(
            of_bisection,
            number == 3 || number >= 5,
            "build {number}: only 1, 2 and 4 are not the bisection's; 4, the real request, \
             is served before the bisection's second build\n{page}"
        );
        assert_eq!(
            build["slave"], "s1",
            "build {number} on a busy slave\n{all}"
        );
    }
    std::fs::remove_file(&other_hold).expect("release");
    wait_until("other #1 to finish", || {
        master.newest_build("other")["running"] == false
    });
}
