//! Issue 15, the operator's HTTP side: `/metrics` scraped after a real build and read with a
//! real Prometheus text parser, the `/api/` index, and JSON errors under `/api/`.

use crate::harness::{
    MasterSetup, TestKey, TestMaster, current_user, http_client, text, wait_until,
};
use crate::repo::Checkout;

fn scrape(master: &TestMaster) -> prometheus_parse::Scrape {
    let url = format!("http://127.0.0.1:{}/metrics", master.http_port);
    let response = http_client()
        .get(&url)
        .send()
        .unwrap_or_else(|err| panic!("GET {url}: {err}"));
    assert_eq!(response.status().as_u16(), 200);
    let body = response.text().expect("metrics body");
    prometheus_parse::Scrape::parse(body.lines().map(|line| Ok(line.to_string())))
        .unwrap_or_else(|err| panic!("/metrics does not parse: {err}\n{body}"))
}

/// The value of the sample named `name` (a counter's name with or without `_total`) whose
/// labels include `labels`.
fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|sample| sample.metric == name || sample.metric == format!("{name}_total"))
        .find(|sample| {
            labels
                .iter()
                .all(|(key, wanted)| sample.labels.get(key) == Some(*wanted))
        })
        .and_then(|sample| match &sample.value {
            prometheus_parse::Value::Counter(value)
            | prometheus_parse::Value::Gauge(value)
            | prometheus_parse::Value::Untyped(value) => Some(*value),
            _ => None,
        })
}

#[test]
fn metrics_parse_and_count_a_real_build() {
    let checkout = Checkout::new();
    let master = TestMaster::start_with(MasterSetup::linux_builder(
        &["s1"],
        &checkout.upstream,
        r#"{ name = "hello", command = "echo hello from the build" },"#,
    ));
    let _slave = master.start_slave("s1");
    let forced = master.ssh(
        &master.user_key,
        &current_user(),
        "force linux --reason metrics",
    );
    assert_eq!(forced.status.code(), Some(0), "{}", text(&forced.stderr));
    wait_until("linux #1 to succeed", || {
        let builds = master.api("/api/builds?builder=linux");
        builds[0]["number"] == 1 && builds[0]["result"] == "success"
    });
    let stranger = TestKey::ed25519(master.keys_dir.path(), "stranger");
    let refused = master.ssh(&stranger, &current_user(), "watch");
    assert!(!refused.status.success(), "an unlisted key is refused");

    let metrics = scrape(&master);
    let builds = value(
        &metrics,
        "buildbot_builds",
        &[("builder", "linux"), ("result", "success")],
    );
    assert_eq!(builds, Some(1.0));
    assert_eq!(
        value(&metrics, "buildbot_builds", &[("result", "failure")]),
        None,
        "no failure was counted"
    );
    let durations = metrics
        .samples
        .iter()
        .find(|sample| {
            sample.metric == "buildbot_build_duration_seconds"
                && sample.labels.get("builder") == Some("linux")
        })
        .map(|sample| &sample.value);
    match durations {
        Some(prometheus_parse::Value::Histogram(buckets)) => {
            let total = buckets.last().map_or(0.0, |bucket| bucket.count);
            assert_eq!(total, 1.0, "{buckets:?}");
        }
        other => panic!("no duration histogram for linux: {other:?}"),
    }
    assert_eq!(value(&metrics, "buildbot_slaves_connected", &[]), Some(1.0));
    assert_eq!(
        value(&metrics, "buildbot_queue_length", &[("builder", "linux")]),
        Some(0.0)
    );
    assert_eq!(
        value(
            &metrics,
            "buildbot_queue_oldest_age_seconds",
            &[("builder", "linux")]
        ),
        Some(0.0)
    );
    let connections = value(&metrics, "buildbot_ssh_connections", &[]).unwrap_or(0.0);
    assert!(
        connections >= 3.0,
        "slave, force and the refused login: {connections}"
    );
    let refusals = value(
        &metrics,
        "buildbot_ssh_auth_failures",
        &[("reason", "KeyNotListed")],
    )
    .unwrap_or(0.0);
    assert!(refusals >= 1.0, "the stranger's key: {refusals}");
    let log_bytes = value(&metrics, "buildbot_log_bytes_received", &[]).unwrap_or(0.0);
    assert!(
        log_bytes >= "hello from the build\n".len() as f64,
        "{log_bytes}"
    );
}

fn get(master: &TestMaster, path: &str) -> (u16, String, serde_json::Value) {
    let url = format!("http://127.0.0.1:{}{path}", master.http_port);
    let response = http_client()
        .get(&url)
        .send()
        .unwrap_or_else(|err| panic!("GET {url}: {err}"));
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = response.text().expect("body");
    let json = serde_json::from_str(&body).unwrap_or_else(|err| panic!("{path}: {err}: {body}"));
    (status, content_type, json)
}

#[test]
fn the_api_lists_its_endpoints_and_answers_errors_in_json() {
    let master = TestMaster::start_with(MasterSetup::with_try_builders(&["linux"], "/srv/p.git"));
    for index in ["/api/", "/api"] {
        let (status, _, body) = get(&master, index);
        assert_eq!(status, 200, "{index}: {body}");
        let paths: Vec<&str> = body["endpoints"]
            .as_array()
            .unwrap_or_else(|| panic!("{index}: no endpoint list: {body}"))
            .iter()
            .filter_map(|endpoint| endpoint["path"].as_str())
            .collect();
        for wanted in [
            "/api/builders",
            "/api/builds/{id}",
            "/api/events?since={seq}",
            "/metrics",
        ] {
            assert!(paths.contains(&wanted), "{wanted} in {paths:?}");
        }
    }
    for (path, status, says) in [
        ("/api/builders/ghost", 404, "no builder named 'ghost'"),
        ("/api/builds", 400, "builder"),
        ("/api/builds?builder=linux&limit=many", 400, "limit"),
        ("/api/builds/not-a-number", 400, "not-a-number"),
        (
            "/api/no-such-endpoint",
            404,
            "no API endpoint /api/no-such-endpoint",
        ),
    ] {
        let (got, content_type, body) = get(&master, path);
        assert_eq!(got, status, "{path}: {body}");
        assert!(
            content_type.starts_with("application/json"),
            "{path}: {content_type}"
        );
        let error = body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{path}: no error: {body}"));
        assert!(error.contains(says), "{path}: {error}");
    }
}
