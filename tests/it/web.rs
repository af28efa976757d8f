//! The web status page and the JSON API with a real HTTP client against a real master.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::time::Duration;

use crate::harness::{
    MasterSetup, PATIENCE, TestMaster, current_user, element_text, output_with_deadline, text,
    wait_until,
};
use crate::repo::Checkout;

fn master_with(repo: &Path, steps: &str) -> TestMaster {
    TestMaster::start_with(MasterSetup::linux_builder(&["s1"], repo, steps))
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

fn url(master: &TestMaster, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", master.http_port)
}

fn get(master: &TestMaster, path: &str) -> (u16, String) {
    let response = client().get(url(master, path)).send().expect("GET");
    let status = response.status().as_u16();
    (status, response.text().unwrap_or_default())
}

fn spawn_try(master: &TestMaster, cwd: &Path) -> std::process::Child {
    master
        .try_command(cwd, "linux", true)
        .spawn()
        .expect("try runs")
}

/// The waterfall's entry for linux build `number`: its link text and the result after it.
fn waterfall_block(waterfall: &str, number: u32) -> Option<String> {
    let after = waterfall
        .split(&format!("href=\"/builders/linux/builds/{number}\">"))
        .nth(1)?;
    let end = after.find(" <span")?;
    Some(after[..end].trim().to_string())
}

fn pages_render(master: &TestMaster, build: Option<i64>) {
    let mut paths = vec![
        "/".to_string(),
        "/summary".into(),
        "/slaves".into(),
        "/builders/linux".into(),
    ];
    paths.extend(
        [
            "/api/builders",
            "/api/builders/linux",
            "/api/builds?builder=linux",
            "/api/slaves",
        ]
        .map(String::from),
    );
    if let Some(number) = build {
        paths.push(format!("/builders/linux/builds/{number}"));
        paths.push(format!("/builders/linux/builds/{number}/steps/1/logs/info"));
    }
    for path in paths {
        let (status, body) = get(master, &path);
        assert_eq!(status, 200, "{path}: {body}");
        assert!(!body.is_empty(), "{path}");
    }
    let (status, body) = get(master, "/builders/nope");
    assert_eq!(status, 404, "{body}");
    assert_eq!(body.trim(), "no builder named 'nope'");
}

#[test]
fn every_page_renders_empty_running_and_finished() {
    let checkout = Checkout::new();
    let master = master_with(
        &checkout.upstream,
        r#"{ name = "wait", command = "echo begin; while [ ! -e ../go ]; do sleep 0.1; done; echo end" },"#,
    );
    pages_render(&master, None);
    let slave = master.start_slave("s1");
    let waiting = master
        .try_command(&checkout.work, "linux", true)
        .args(["--property", "flavour=debug"])
        .spawn()
        .expect("try runs");
    wait_until("the build to run", || {
        get(&master, "/api/builds?builder=linux")
            .1
            .contains("\"running\":true")
    });
    let build = master.api_last_build("linux");
    assert_eq!(build["number"], 1, "{build}");
    assert_eq!(build["running"], true, "{build}");
    pages_render(&master, Some(1));
    let (_, page) = get(&master, "/builders/linux/builds/1");
    assert_eq!(
        element_text(&page, "id=\"result\"").as_deref(),
        Some("running"),
        "{page}"
    );
    assert!(
        page.contains("Log in") && !page.contains("id=\"stop-button\""),
        "read-only visitors see no Stop button: {page}"
    );
    let (_, waterfall) = get(&master, "/");
    assert_eq!(
        waterfall_block(&waterfall, 1).as_deref(),
        Some("#1</a> running"),
        "the waterfall links build #1, running: {waterfall}"
    );
    std::fs::write(slave.dir.join("build/go"), "").expect("release the step");
    let output = output_with_deadline(waiting, "try --wait", PATIENCE);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stdout));
    assert_eq!(master.api_last_build("linux")["result"], "success");
    pages_render(&master, Some(1));
    let (_, page) = get(&master, "/builders/linux/builds/1");
    assert_eq!(
        element_text(&page, "id=\"result\"").as_deref(),
        Some("success"),
        "{page}"
    );
    let (_, waterfall) = get(&master, "/");
    assert_eq!(
        waterfall_block(&waterfall, 1).as_deref(),
        Some("#1</a> success"),
        "{waterfall}"
    );
    // The job's who is the user the master authenticated (issue 22), not the client's git
    // identity; escaping of user text is covered by `every_template_renders`.
    assert!(
        page.contains(&current_user()) && !page.contains("alice@example.org"),
        "who: {page}"
    );
    assert!(
        page.contains("property flavour</th><td>debug"),
        "the job's properties: {page}"
    );
    // A try patch is for its owner and operators, logged in (issue 22; the download itself is
    // covered in trust.rs): a visitor is told how to log in, and sees none of it.
    let (status, patch) = get(&master, "/builders/linux/builds/1/patch");
    assert_eq!(status, 403, "{patch}");
    assert!(
        patch.contains("web-login") && !patch.contains("+unstaged line"),
        "{patch}"
    );
    let (_, build) = get(&master, "/api/builds?builder=linux");
    let builds: serde_json::Value = serde_json::from_str(&build).expect("json");
    let id = builds[0]["id"].as_i64().expect("id");
    let (status, one) = get(&master, &format!("/api/builds/{id}"));
    assert_eq!(status, 200);
    let one: serde_json::Value = serde_json::from_str(&one).expect("json");
    assert_eq!(
        one["steps"][1]["logs"][0]["url"],
        "/builders/linux/builds/1/steps/2/logs/stdout"
    );
}

#[test]
fn a_200_mb_log_downloads_byte_exact_in_pieces_and_live() {
    let checkout = Checkout::new();
    let master = master_with(
        &checkout.upstream,
        r#"{ name = "big", command = "head -c 209715200 /dev/urandom > ../big.bin; for i in 1 2; do sleep 1; echo tick; done; cat ../big.bin" },"#,
    );
    let slave = master.start_slave("s1");
    let waiting = spawn_try(&master, &checkout.work);
    wait_until("the step to start", || {
        get(&master, "/api/builds?builder=linux")
            .1
            .contains("\"name\":\"big\"")
    });
    // Follow it live from the start: the response ends when the step ends.
    let raw = url(&master, "/builders/linux/builds/1/steps/2/logs/stdout/raw");
    let mut followed = Vec::new();
    let before = master.peak_rss_kib();
    client()
        .get(format!("{raw}?follow=1"))
        .send()
        .expect("follow")
        .read_to_end(&mut followed)
        .expect("read to the end");
    let output = output_with_deadline(waiting, "try --wait", PATIENCE);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stdout));
    let expected: Vec<u8> = [
        b"tick\ntick\n".to_vec(),
        std::fs::read(slave.dir.join("build/big.bin")).expect("big"),
    ]
    .concat();
    assert_eq!(followed.len(), expected.len());
    assert!(followed == expected, "the followed log differs");
    // The whole download, then a range.
    let mut whole = Vec::new();
    client()
        .get(&raw)
        .send()
        .expect("GET")
        .read_to_end(&mut whole)
        .expect("read");
    assert!(whole == expected, "the downloaded log differs");
    let grown = master.peak_rss_kib().saturating_sub(before);
    println!("master peak RSS grew {grown} KiB while 400 MB of log were served");
    assert!(grown < 64 * 1024, "grew {grown} KiB");
    let response = client()
        .get(&raw)
        .header("Range", "bytes=5-9")
        .send()
        .expect("range");
    assert_eq!(response.status().as_u16(), 206);
    assert_eq!(response.bytes().expect("body").as_ref(), b"tick\n");
    // The page shows the end of a huge log, not all of it.
    let (status, page) = get(
        &master,
        "/builders/linux/builds/1/steps/2/logs/stdout?tail=1000",
    );
    assert_eq!(status, 200);
    assert!(page.len() < 64 * 1024, "{} bytes", page.len());
    assert!(
        page.contains("showing the last"),
        "{}",
        &page[..500.min(page.len())]
    );
}

#[test]
fn the_event_stream_resumes_from_a_sequence_number() {
    let checkout = Checkout::new();
    let master = master_with(&checkout.upstream, r#"{ name = "ok", command = "true" },"#);
    let _slave = master.start_slave("s1");
    let output = output_with_deadline(spawn_try(&master, &checkout.work), "try --wait", PATIENCE);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stdout));
    // Resume after event 2: the replay starts at 3 and carries ids.
    let response = client()
        .get(url(&master, "/api/events"))
        .header("Last-Event-ID", "2")
        .send()
        .expect("events");
    let mut lines = BufReader::new(response).lines();
    let mut ids = Vec::new();
    let mut data = Vec::new();
    // Keep-alive comments arrive every few seconds, so the read timeout alone never ends this.
    let deadline = std::time::Instant::now() + PATIENCE;
    while ids.len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {ids:?} replayed within {PATIENCE:?}"
        );
        let line = lines.next().expect("more events").expect("line");
        if let Some(id) = line.strip_prefix("id: ") {
            ids.push(id.parse::<u64>().expect("numeric id"));
        } else if let Some(json) = line.strip_prefix("data: ") {
            data.push(json.to_string());
        }
    }
    assert_eq!(ids, vec![3, 4, 5]);
    assert!(
        data.iter().all(|json| json.contains("\"type\":")),
        "{data:?}"
    );
    let (_, all) = get(&master, "/api/builders");
    assert!(all.contains("\"name\":\"linux\""), "{all}");
}

#[test]
fn stopping_from_the_web_needs_a_session_and_the_csrf_token() {
    let checkout = Checkout::new();
    let master = master_with(
        &checkout.upstream,
        r#"{ name = "sleep", command = "sleep 600" },"#,
    );
    let _slave = master.start_slave("s1");
    let waiting = spawn_try(&master, &checkout.work);
    wait_until("the build to run", || {
        get(&master, "/api/builds?builder=linux")
            .1
            .contains("\"name\":\"sleep\"")
    });
    let stop_url = url(&master, "/builders/linux/builds/1/stop");
    let response = client()
        .post(&stop_url)
        .form(&[("reason", "x")])
        .send()
        .expect("POST");
    assert_eq!(response.status().as_u16(), 403, "no session");

    let login = text(
        &master
            .ssh(&master.user_key, &current_user(), "web-login")
            .stdout,
    );
    let login_url = login.lines().next().expect("a URL").trim().to_string();
    assert!(
        login_url.starts_with(&url(&master, "/login?token=")),
        "{login}"
    );
    let response = client().get(&login_url).send().expect("login");
    assert_eq!(response.status().as_u16(), 303);
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().expect("pair").to_string();
    assert_eq!(
        client()
            .get(&login_url)
            .send()
            .expect("again")
            .status()
            .as_u16(),
        403,
        "single use"
    );

    let response = client()
        .post(&stop_url)
        .header("Cookie", &session)
        .form(&[("reason", "x")])
        .send()
        .expect("POST");
    assert_eq!(response.status().as_u16(), 403, "no CSRF token");
    let page = client()
        .get(url(&master, "/builders/linux/builds/1"))
        .header("Cookie", &session)
        .send()
        .expect("page")
        .text()
        .expect("body");
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page carries a CSRF token")
        .to_string();
    let response = client()
        .post(&stop_url)
        .header("Cookie", &session)
        .form(&[("csrf", csrf.as_str()), ("reason", "from the browser")])
        .send()
        .expect("POST");
    assert_eq!(response.status().as_u16(), 303);
    let output = output_with_deadline(waiting, "try --wait", PATIENCE);
    assert!(
        text(&output.stdout).contains("linux #1: interrupted"),
        "{}",
        text(&output.stdout)
    );
    let (_, page) = get(&master, "/builders/linux/builds/1");
    assert!(
        page.contains(&format!("stopped by {}: from the browser", current_user())),
        "{page}"
    );
}
