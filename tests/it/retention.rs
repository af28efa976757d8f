//! Retention: the logs and artifacts of old builds go (on disk and in the store), older builds
//! go whole, the newest `keep_last` keep everything, and the pages still render; what a
//! crashed upload left goes at start; the admin page shows what the master keeps.

use crate::harness::{MasterSetup, TestMaster, current_user, http_client, text, wait_until};
use crate::repo::Checkout;

const STEPS: &str = r#"{ name = "make", command = "echo built $BUILDBOT_BUILDNUMBER; echo $BUILDBOT_BUILDNUMBER > out.txt", artifacts = ["out.txt"] },"#;

fn get(master: &TestMaster, path: &str) -> (u16, String) {
    let response = http_client()
        .get(format!("http://127.0.0.1:{}{path}", master.http_port))
        .send()
        .expect("GET");
    let status = response.status().as_u16();
    (status, response.text().expect("body"))
}

/// A master with builder `linux` whose steps keep an artifact, `[retention]` as `retention`
/// (none: no section), that has run builds 1..=`builds` and is still running.
fn master_with_builds(retention: Option<&str>, builds: u64) -> (Checkout, TestMaster) {
    let checkout = Checkout::new();
    let mut setup = MasterSetup::linux_builder(&["s1"], &checkout.upstream, STEPS);
    if let Some(retention) = retention {
        setup
            .extra_config
            .push_str(&format!("\n[retention]\n{retention}\n"));
    }
    let master = TestMaster::start_with(setup);
    let slave = master.start_slave("s1");
    for number in 1..=builds {
        let forced = master.ssh(&master.user_key, &current_user(), "force linux --reason r");
        assert!(forced.status.success(), "{}", text(&forced.stderr));
        wait_until(&format!("linux #{number} to finish"), || {
            let build = master.newest_build("linux");
            build["number"] == number && build["running"] == false
        });
    }
    drop(slave);
    (checkout, master)
}

#[test]
fn old_builds_lose_logs_and_artifacts_and_the_newest_keep_them() {
    let (_checkout, mut master) =
        master_with_builds(Some("logs = \"1s\"\nartifacts = \"1s\"\nkeep_last = 1"), 3);
    for number in 1..=3 {
        let (status, _) = get(
            &master,
            &format!("/builders/linux/builds/{number}/artifacts/out.txt"),
        );
        assert_eq!(status, 200, "#{number} kept its artifact before retention");
    }
    // A round runs at start: older than a second, and not the newest build.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    master.terminate();
    let master = master.start_again();
    let logs = master.path().join("logs/linux");
    let artifacts = master.path().join("artifacts/linux");
    wait_until("builds 1 and 2 to be pruned", || {
        !logs.join("1").exists()
            && !logs.join("2").exists()
            && !artifacts.join("1").exists()
            && !artifacts.join("2").exists()
    });
    assert!(logs.join("3").exists(), "the newest build keeps its logs");
    assert!(
        artifacts.join("3/out.txt").exists(),
        "the newest build keeps its artifact"
    );
    let (status, body) = get(&master, "/builders/linux/builds/3/artifacts/out.txt");
    assert_eq!((status, body.as_str()), (200, "3\n"));
    for number in 1..=2 {
        let (status, _) = get(
            &master,
            &format!("/builders/linux/builds/{number}/artifacts/out.txt"),
        );
        assert_eq!(status, 404, "#{number}'s artifact is gone");
        let (status, page) = get(&master, &format!("/builders/linux/builds/{number}"));
        assert_eq!(status, 200, "#{number}'s page still renders");
        assert!(
            !page.contains("out.txt"),
            "#{number} lists no artifact: {page}"
        );
        let (status, _) = get(
            &master,
            &format!("/builders/linux/builds/{number}/steps/2/logs/stdout"),
        );
        assert!(
            matches!(status, 200 | 404),
            "the log page answers: {status}"
        );
    }
    let listed = master.api("/api/builds?builder=linux");
    assert!(
        listed.as_array().is_some_and(|builds| builds.len() == 3),
        "the builds' records stay: {listed}"
    );
    let (status, _) = get(&master, "/builders/linux");
    assert_eq!(status, 200);
    let (status, metrics) = get(&master, "/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("buildbot_storage_bytes{kind=\"artifacts\"}"),
        "{metrics}"
    );
}

#[test]
fn old_builds_go_whole_and_the_pages_still_render() {
    let (_checkout, mut master) = master_with_builds(Some("builds = \"1s\"\nkeep_last = 1"), 3);
    assert_eq!(
        master
            .api("/api/builds?builder=linux")
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    // A round runs at start: older than a second, and not the newest build.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    master.terminate();
    let master = master.start_again();
    let logs = master.path().join("logs/linux");
    let artifacts = master.path().join("artifacts/linux");
    wait_until("builds 1 and 2 to be removed", || {
        master
            .api("/api/builds?builder=linux")
            .as_array()
            .is_some_and(|builds| builds.len() == 1)
    });
    let listed = master.api("/api/builds?builder=linux");
    assert_eq!(listed[0]["number"], 3, "the newest stays: {listed}");
    for number in 1..=2 {
        assert!(!logs.join(number.to_string()).exists(), "#{number}'s logs");
        assert!(
            !artifacts.join(number.to_string()).exists(),
            "#{number}'s artifacts"
        );
        let (status, _) = get(&master, &format!("/builders/linux/builds/{number}"));
        assert_eq!(status, 404, "#{number} is gone, and says so");
    }
    assert!(artifacts.join("3/out.txt").exists());
    let (status, body) = get(&master, "/builders/linux/builds/3/artifacts/out.txt");
    assert_eq!((status, body.as_str()), (200, "3\n"));
    for page in [
        "/",
        "/waterfall",
        "/summary",
        "/builders/linux",
        "/builders/linux/tests",
    ] {
        let (status, body) = get(&master, page);
        assert_eq!(status, 200, "{page}: {body}");
        assert!(
            !body.contains("/builders/linux/builds/1\""),
            "{page} links to a removed build: {body}"
        );
    }
    for api in [
        "/api/builders",
        "/api/builders/linux",
        "/api/bisects",
        "/api/tests?builder=linux&name=t",
    ] {
        let (status, body) = get(&master, api);
        assert_eq!(status, 200, "{api}: {body}");
    }
    assert_eq!(master.api_last_build("linux")["number"], 3);
}

#[test]
fn a_crashed_uploads_leftovers_go_at_start_and_finished_artifacts_stay() {
    let (_checkout, mut master) = master_with_builds(None, 1);
    master.terminate();
    let builder_dir = master.path().join("artifacts/linux");
    let leftover = builder_dir.join(".incoming-1-1-0");
    std::fs::write(&leftover, "half a file").expect("leftover written");
    let master = master.start_again();
    // The master announces its ports before it opens its store and sweeps.
    wait_until("the unfinished upload to be removed at start", || {
        !leftover.exists()
    });
    assert_eq!(
        std::fs::read_to_string(builder_dir.join("1/out.txt")).expect("artifact"),
        "1\n",
        "a finished artifact is untouched"
    );
    // The admin page shows what this master keeps, measured at start.
    wait_until("the storage figures on /masters", || {
        get(&master, "/masters")
            .1
            .contains("id=\"storage-artifacts\"")
    });
    let (status, page) = get(&master, "/masters");
    assert_eq!(status, 200);
    for kind in ["artifacts", "logs", "database"] {
        let row = page
            .split(&format!("id=\"storage-{kind}\""))
            .nth(1)
            .and_then(|rest| rest.split("</tr>").next())
            .unwrap_or_else(|| panic!("no {kind} row: {page}"));
        assert!(
            [" B<", " kB<", " MB<", " GB<"]
                .iter()
                .any(|unit| row.contains(unit)),
            "{kind} in human units: {row}"
        );
    }
    let artifacts_row = page
        .split("id=\"storage-artifacts\"")
        .nth(1)
        .unwrap_or_default();
    // out.txt is 2 bytes; the leftover (11) is gone before measuring.
    assert!(
        artifacts_row.contains("title=\"2 bytes\""),
        "{artifacts_row}"
    );
}
