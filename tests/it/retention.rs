//! Retention: the logs and artifacts of old builds go (on disk and in the store), the newest
//! `keep_last` keep everything, and the pages of pruned builds still render.

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

#[test]
fn old_builds_lose_logs_and_artifacts_and_the_newest_keep_them() {
    let checkout = Checkout::new();
    let mut setup = MasterSetup::linux_builder(&["s1"], &checkout.upstream, STEPS);
    setup
        .extra_config
        .push_str("\n[retention]\nlogs = \"1s\"\nartifacts = \"1s\"\nkeep_last = 1\n");
    let mut master = TestMaster::start_with(setup);
    let slave = master.start_slave("s1");
    for number in 1..=3u64 {
        let forced = master.ssh(&master.user_key, &current_user(), "force linux --reason r");
        assert!(forced.status.success(), "{}", text(&forced.stderr));
        wait_until(&format!("linux #{number} to finish"), || {
            let build = master.api_last_build("linux");
            build["number"] == number && build["running"] == false
        });
    }
    for number in 1..=3 {
        let (status, _) = get(
            &master,
            &format!("/builders/linux/builds/{number}/artifacts/out.txt"),
        );
        assert_eq!(status, 200, "#{number} kept its artifact before retention");
    }
    drop(slave);
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
