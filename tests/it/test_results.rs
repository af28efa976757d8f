//! Test results (issue 26) through real builds: a step's reports collected by the slave,
//! parsed and stored by the master, classified new / known / flaky over a scripted series of
//! builds, shown on the build page and the API; real pytest `--junitxml` reports; hostile
//! reports (DOCTYPE entity bomb, malformed XML, a symlink out of the work tree, a file over
//! the size limit, a name that is not UTF-8) each a line in the log, the build's result and
//! the master unaffected.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::harness::{MasterSetup, TestMaster, current_user, http_client, text};
use crate::repo::{Checkout, git};

/// A master whose linux builder copies `scenario/<build number>/` into `reports/` of its work
/// tree, and reads `reports/*.xml` as JUnit and `reports/*.tap` as TAP.
fn master_with_scenario(checkout: &Checkout, scenario: &Path) -> TestMaster {
    let step = format!(
        r#"{{ name = "test", command = "rm -rf reports && mkdir reports && cp -a {}/$BUILDBOT_BUILDNUMBER/. reports/ && exit $(cat reports/exit 2>/dev/null || echo 0)", test_results = ["junit:reports/*.xml", "tap:reports/*.tap"] }},"#,
        scenario.display()
    );
    TestMaster::start_with(MasterSetup::linux_builder(
        &["s1"],
        &checkout.upstream,
        &step,
    ))
}

fn force(master: &TestMaster) {
    let forced = master.ssh(
        &master.user_key,
        &current_user(),
        "force linux --reason tests",
    );
    assert_eq!(forced.status.code(), Some(0), "{}", text(&forced.stderr));
}

/// A new commit on upstream's main, so each build has a revision of its own.
fn new_revision(checkout: &Checkout, n: u64) {
    std::fs::write(checkout.work.join("counter.txt"), format!("{n}\n")).expect("write");
    git(&checkout.work, &["add", "counter.txt"]);
    git(
        &checkout.work,
        &["commit", "-q", "-m", &format!("change {n}")],
    );
    git(&checkout.work, &["push", "-q", "origin", "HEAD:main"]);
}

fn junit(cases: &[(&str, &str)]) -> String {
    let mut xml = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites><testsuite name=\"demo\">\n",
    );
    for (name, result) in cases {
        match *result {
            "pass" => xml.push_str(&format!(
                "<testcase classname=\"demo\" name=\"{name}\" time=\"0.25\"/>\n"
            )),
            "fail" => xml.push_str(&format!(
                "<testcase classname=\"demo\" name=\"{name}\" time=\"0.5\"><failure message=\"{name} broke\">at demo.rs:1</failure></testcase>\n"
            )),
            _ => xml.push_str(&format!(
                "<testcase classname=\"demo\" name=\"{name}\"><skipped/></testcase>\n"
            )),
        }
    }
    xml.push_str("</testsuite></testsuites>\n");
    xml
}

fn scenario_dir(scenario: &Path, number: u64) -> PathBuf {
    let dir = scenario.join(number.to_string());
    std::fs::create_dir_all(&dir).expect("scenario dir");
    dir
}

fn get_text(master: &TestMaster, path: &str) -> (u16, String) {
    let url = format!("http://127.0.0.1:{}{path}", master.http_port);
    let response = http_client()
        .get(&url)
        .send()
        .unwrap_or_else(|err| panic!("GET {url}: {err}"));
    let status = response.status().as_u16();
    (status, response.text().unwrap_or_default())
}

fn test_of<'a>(tests: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    tests["tests"]
        .as_array()
        .and_then(|all| all.iter().find(|test| test["name"] == name))
        .unwrap_or_else(|| panic!("no test {name} in {tests}"))
}

#[test]
fn failures_are_new_then_known_then_flaky_over_a_series_of_builds() {
    let checkout = Checkout::new();
    let scenario = tempfile::tempdir().expect("temp dir");
    let master = master_with_scenario(&checkout, scenario.path());
    let _slave = master.start_slave("s1");
    let series: [&[(&str, &str)]; 5] = [
        &[("alpha", "pass"), ("beta", "pass"), ("gamma", "skip")],
        &[("alpha", "fail"), ("beta", "pass"), ("gamma", "skip")],
        &[("alpha", "fail"), ("beta", "fail"), ("gamma", "skip")],
        &[("alpha", "fail"), ("beta", "pass"), ("gamma", "skip")],
        &[("alpha", "fail"), ("beta", "fail"), ("gamma", "pass")],
    ];
    let mut ids = Vec::new();
    for (i, cases) in series.iter().enumerate() {
        let number = i as u64 + 1;
        std::fs::write(
            scenario_dir(scenario.path(), number).join("junit.xml"),
            junit(cases),
        )
        .expect("write");
        new_revision(&checkout, number);
        if number < 5 {
            force(&master);
        } else {
            // `--wait` ends with the tests' summary and the new failures' names.
            let waited = master.ssh(
                &master.user_key,
                &current_user(),
                "force linux --reason tests --wait",
            );
            let out = text(&waited.stdout);
            assert!(
                out.contains(
                    "linux #5 tests: 1 passed · 2 failed (1 new, 1 known since #2) · 1 flaky; 1 new failure (beta)"
                ),
                "{out}"
            );
        }
        let build = master.finished_build("linux", number);
        // Failing tests do not fail a build whose command passed: the report is information.
        assert_eq!(build["result"], "success", "{build}");
        ids.push(build["id"].clone());
    }

    let first = master.api(&format!("/api/builds/{}/tests", ids[0]));
    assert_eq!(
        first["summary"],
        serde_json::json!({"passed": 2, "failed": 0, "new": 0, "skipped": 1})
    );

    let second = master.api(&format!("/api/builds/{}/tests", ids[1]));
    assert_eq!(
        second["summary"],
        serde_json::json!({"passed": 1, "failed": 1, "new": 1, "skipped": 1})
    );
    // The contract's shape, exactly.
    assert_eq!(
        test_of(&second, "alpha"),
        &serde_json::json!({
            "suite": "demo", "name": "alpha", "result": "failed", "duration": 0.5,
            "message": "alpha broke\nat demo.rs:1", "new": true, "failing_since": null,
            "flaky": false
        })
    );
    assert_eq!(
        second
            .as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["summary".to_string(), "tests".to_string()])
    );

    let third = master.api(&format!("/api/builds/{}/tests", ids[2]));
    assert_eq!(third["summary"]["new"], 1, "{third}");
    let alpha = test_of(&third, "alpha");
    assert_eq!(
        (alpha["new"].clone(), alpha["failing_since"].clone()),
        (false.into(), 2.into())
    );
    assert_eq!(test_of(&third, "beta")["new"], true);

    let fifth = master.api(&format!("/api/builds/{}/tests", ids[4]));
    let alpha = test_of(&fifth, "alpha");
    assert_eq!(alpha["failing_since"], 2, "{fifth}");
    assert_eq!(alpha["flaky"], false, "{fifth}");
    let beta = test_of(&fifth, "beta");
    assert_eq!(beta["new"], true, "{fifth}");
    assert_eq!(
        beta["flaky"], true,
        "beta failed in #3 and passed in #4: {fifth}"
    );
    assert_eq!(test_of(&fifth, "gamma")["flaky"], false);

    // The build page leads with the summary line, then each failure with its log.
    let (status, page) = get_text(&master, "/builders/linux/builds/5");
    assert_eq!(status, 200);
    assert!(
        page.contains("1 passed · 2 failed (1 new, 1 known since #2) · 1 flaky"),
        "{page}"
    );
    assert!(
        page.contains("/builders/linux/builds/5/steps/2/logs/stdout"),
        "{page}"
    );
    let (status, page) = get_text(&master, "/builders/linux/builds/5/tests");
    assert_eq!(status, 200);
    assert!(page.contains("id=\"slowest\""), "{page}");
    assert!(
        page.contains("id=\"flaky\"") && page.contains("beta"),
        "{page}"
    );

    // A test's history: a strip of its results and the duration trend.
    let history = master.api("/api/tests?builder=linux&name=beta");
    let results: Vec<_> = history["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|row| {
            (
                row["build"].as_i64(),
                row["result"].as_str().map(str::to_string),
            )
        })
        .collect();
    assert_eq!(
        results,
        [
            (Some(5), Some("failed".to_string())),
            (Some(4), Some("passed".to_string())),
            (Some(3), Some("failed".to_string())),
            (Some(2), Some("passed".to_string())),
            (Some(1), Some("passed".to_string())),
        ]
    );
    let (status, page) = get_text(&master, "/builders/linux/tests?name=beta&suite=demo");
    assert_eq!(status, 200);
    assert_eq!(page.matches("class=\"cell ").count(), 5, "{page}");
    assert!(page.contains("<svg class=\"trend\""), "{page}");
    let (status, _) = get_text(&master, "/api/tests?builder=linux");
    assert_eq!(status, 400);

    // The counts reach /metrics.
    let (_, metrics) = get_text(&master, "/metrics");
    assert!(
        metrics.contains("buildbot_test_cases_total{result=\"failed\"} 6"),
        "{metrics}"
    );
}

#[test]
fn hostile_reports_are_each_a_line_in_the_log_and_change_nothing_else() {
    let checkout = Checkout::new();
    let scenario = tempfile::tempdir().expect("temp dir");
    let master = master_with_scenario(&checkout, scenario.path());
    let _slave = master.start_slave("s1");
    let dir = scenario_dir(scenario.path(), 1);
    std::fs::write(
        dir.join("good.xml"),
        junit(&[("ok_one", "pass"), ("bad_one", "fail")]),
    )
    .expect("write");
    std::fs::write(
        dir.join("bomb.xml"),
        r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;"><!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">]><testsuite><testcase name="&lol2;"/></testsuite>"#,
    )
    .expect("write");
    std::fs::write(
        dir.join("external.xml"),
        r#"<!DOCTYPE t [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><testsuite><testcase name="&xxe;"/></testsuite>"#,
    )
    .expect("write");
    std::fs::write(dir.join("broken.xml"), "<testsuite><testcase name=\"x\">").expect("write");
    std::os::unix::fs::symlink("/etc/passwd", dir.join("escape.xml")).expect("symlink");
    // Sparse: over the 64 MiB per-file limit without costing the disk.
    let big = std::fs::File::create(dir.join("huge.xml")).expect("create");
    big.set_len(70 * 1024 * 1024).expect("truncate");
    let odd = std::ffi::OsStr::from_bytes(b"caf\xe9.xml");
    std::fs::write(dir.join(odd), junit(&[("hidden", "fail")])).expect("write");
    std::fs::write(
        dir.join("out.tap"),
        "TAP version 13\n1..2\nok 1 - tap passes\nnot ok 2 - tap later # TODO not yet\n",
    )
    .expect("write");
    force(&master);
    let build = master.finished_build("linux", 1);
    assert_eq!(build["result"], "success", "{build}");

    let tests = master.api(&format!("/api/builds/{}/tests", build["id"]));
    assert_eq!(
        tests["summary"],
        serde_json::json!({"passed": 2, "failed": 1, "new": 1, "skipped": 1}),
        "{tests}"
    );
    let (status, log) = get_text(&master, "/builders/linux/builds/1/steps/2/logs/info/raw");
    assert_eq!(status, 200);
    for expected in [
        "test results: reports/good.xml: 2 test cases (junit)",
        "test results: reports/out.tap: 2 test cases (tap)",
        "test results: reports/bomb.xml: not read: refused: the report has a DOCTYPE",
        "test results: reports/external.xml: not read: refused: the report has a DOCTYPE",
        "test results: reports/broken.xml: not read: not well-formed XML",
        "test results: reports/escape.xml is a symlink; not followed",
        "test results: reports/huge.xml is 73400320 bytes, over the limit",
        "test results: reports/caf\u{fffd}.xml is not a UTF-8 name; left out",
        "test results: 2 passed · 1 failed · 1 skipped",
    ] {
        assert!(
            log.contains(expected),
            "{expected:?} not in the log:\n{log}"
        );
    }
    assert!(
        !log.contains("root:"),
        "nothing of /etc/passwd is read: {log}"
    );
    // The master is unaffected: it still answers.
    assert_eq!(
        master.api("/api/builders").as_array().map(Vec::len),
        Some(1)
    );
}

/// pytest 8 (installed by scripts/test.sh into target/pytest-venv) writes a real report.
fn pytest() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pytest-venv/bin/pytest");
    assert!(
        path.exists(),
        "pytest is missing: run `bash scripts/test.sh` (it installs pytest into target/pytest-venv)"
    );
    path
}

#[test]
fn a_real_pytest_junit_report_is_read() {
    let pytest = pytest();
    let checkout = Checkout::new();
    let project = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        project.path().join("test_demo.py"),
        "import pytest\n\ndef test_adds():\n    assert 1 + 1 == 2\n\ndef test_breaks():\n    assert 1 == 2\n\n@pytest.mark.skip(reason=\"not today\")\ndef test_later():\n    pass\n\n@pytest.fixture\ndef broken():\n    raise RuntimeError(\"no database\")\n\ndef test_setup(broken):\n    pass\n",
    )
    .expect("write");
    let step = format!(
        r#"{{ name = "pytest", command = "mkdir -p reports && {} -q -p no:cacheprovider --junitxml=reports/junit.xml {}", test_results = ["junit:reports/junit.xml"] }},"#,
        pytest.display(),
        project.path().display()
    );
    let master = TestMaster::start_with(MasterSetup::linux_builder(
        &["s1"],
        &checkout.upstream,
        &step,
    ));
    let _slave = master.start_slave("s1");
    force(&master);
    let build = master.finished_build("linux", 1);
    assert_eq!(build["result"], "failure", "pytest exits 1: {build}");
    let tests = master.api(&format!("/api/builds/{}/tests", build["id"]));
    assert_eq!(
        tests["summary"],
        serde_json::json!({"passed": 1, "failed": 2, "new": 2, "skipped": 1}),
        "{tests}"
    );
    let breaks = test_of(&tests, "test_breaks");
    assert_eq!(breaks["result"], "failed");
    // pytest names the module from its rootdir down.
    assert!(
        breaks["suite"]
            .as_str()
            .is_some_and(|suite| suite.ends_with("test_demo")),
        "{breaks}"
    );
    assert!(
        breaks["message"]
            .as_str()
            .is_some_and(|m| m.contains("assert 1 == 2")),
        "{breaks}"
    );
    let setup = test_of(&tests, "test_setup");
    assert_eq!(setup["result"], "error");
    assert!(
        setup["message"]
            .as_str()
            .is_some_and(|m| m.contains("RuntimeError")),
        "{setup}"
    );
    assert_eq!(test_of(&tests, "test_later")["result"], "skipped");
}
