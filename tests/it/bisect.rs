//! Automatic bisection (issue 28): a branch that goes from green to red over sixteen commits is
//! bisected on the idle slave and the first bad commit named, in about log2(16) builds plus the
//! confirmations; a commit that cannot be built (the skip exit code) is built around.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::{MasterSetup, TestMaster, current_user, text};
use crate::repo::git;

/// An upstream with a base commit and sixteen more on main: the `culprit`-th adds the file
/// `broken`; the `nobuild`-th adds `nobuild` and the next removes it. Returns (dir guard,
/// upstream, base, the sixteen ids).
fn sixteen_commits(
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
    let steps = r#"{ name = "test", command = "sh -c 'if [ -e nobuild ]; then exit 125; fi; test ! -e broken'" }"#;
    TestMaster::start_with(MasterSetup {
        slaves: vec!["s1".into()],
        extra_config: format!(
            "\n[[builder]]\nname = \"linux\"\nslaves = [\"s1\"]\nrepo = \"{}\"\nbranch = \"main\"\n\
             bisect = {{ max_builds = 12, repeats = {repeats}, skip_exit_code = 125 }}\n\
             steps = [ {steps} ]\n",
            upstream.display()
        ),
        ..MasterSetup::default()
    })
}

fn ssh(master: &TestMaster, command: &str) {
    let output = master.ssh(&master.user_key, &current_user(), command);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
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

fn wait_for_build(master: &TestMaster, number: u64) -> serde_json::Value {
    let mut build = serde_json::Value::Null;
    crate::harness::wait_until(&format!("linux #{number} to finish"), || {
        build = master.api_last_build("linux");
        build["number"] == number && build["running"] == false
    });
    build
}

#[test]
fn a_branch_broken_over_sixteen_commits_is_bisected_and_the_culprit_named() {
    let (_tmp, upstream, base, ids) = sixteen_commits(11, None);
    let repeats = 1;
    let master = master_bisecting(&upstream, repeats);
    let _slave = master.start_slave("s1");
    ssh(
        &master,
        &format!("force linux --revision {base} --reason green"),
    );
    assert_eq!(wait_for_build(&master, 1)["result"], "success");
    ssh(&master, "force linux --reason red");
    assert_eq!(wait_for_build(&master, 2)["result"], "failure");

    let bisect = finished_bisect(&master);
    assert_eq!(bisect["state"], "found", "{bisect}");
    assert_eq!(bisect["builder"], "linux", "{bisect}");
    assert_eq!(bisect["good"], base.as_str(), "{bisect}");
    assert_eq!(bisect["bad"], ids[15].as_str(), "{bisect}");
    assert_eq!(bisect["culprit"], ids[10].as_str(), "{bisect}");
    let builds = bisect["builds"].as_i64().expect("builds");
    // ⌈log2 16⌉ to find it, then the suspect and its parent once more each.
    assert!(builds <= 4 + 2 * i64::from(repeats), "{bisect}");
    let summary = bisect["summary"].as_str().expect("summary");
    assert!(
        summary.starts_with(&format!(
            "first bad: {} by Alice <alice@example.org> 'Refactor parser' — ",
            &ids[10][..7]
        )),
        "{summary}"
    );
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
    ssh(
        &master,
        &format!("force linux --revision {base} --reason green"),
    );
    assert_eq!(wait_for_build(&master, 1)["result"], "success");
    ssh(&master, "force linux --reason red");
    assert_eq!(wait_for_build(&master, 2)["result"], "failure");
    let bisect = finished_bisect(&master);
    assert_eq!(bisect["state"], "found", "{bisect}");
    assert_eq!(bisect["culprit"], ids[10].as_str(), "{bisect}");
}
