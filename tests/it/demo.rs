//! `buildbot demo`, as a new user runs it first.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use crate::harness::{
    BIN, PATIENCE, default_sigint, element_text, http_client, signal, wait_with_deadline,
};

#[test]
fn the_demo_runs_a_try_to_a_result_and_cleans_up_on_ctrl_c() {
    let stderr_file = tempfile::NamedTempFile::new().expect("temp file");
    let mut command = Command::new(BIN);
    let mut demo = default_sigint(&mut command)
        .arg("demo")
        // As a new user runs it: no RUST_LOG.
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr_file.reopen().expect("reopen"))
        .spawn()
        .expect("demo starts");
    let stdout = demo.stdout.take().expect("stdout");
    let (lines_tx, lines_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut page = None;
    let mut directory = None;
    let deadline = Instant::now() + PATIENCE * 3;
    while page.is_none() {
        let line = lines_rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("the demo stalled; it said:\n{}", seen.join("\n")));
        if let Some(url) = line.strip_prefix("web page: ") {
            page = Some(url.to_string());
        }
        if let Some(rest) = line.strip_prefix("demo directory: ") {
            directory = rest.split(' ').next().map(std::path::PathBuf::from);
        }
        seen.push(line);
    }
    let said = seen.join("\n");
    assert!(said.contains("demo #1: success"), "{said}");
    assert!(said.contains("result: success"), "{said}");
    let body = http_client()
        .get(page.expect("url"))
        .send()
        .and_then(|r| r.text())
        .expect("build page");
    // The tab title leads with the status light (#17), then the page.
    assert!(body.contains("<title>✔ demo — demo #1</title>"), "{body}");
    assert_eq!(
        element_text(&body, "id=\"result\"").as_deref(),
        Some("success"),
        "{body}"
    );
    // The try job is the authenticated user's (issue 22), whatever name the client sends.
    let user = crate::harness::current_user();
    assert!(body.contains(&user), "{body}");
    signal(demo.id(), nix::sys::signal::Signal::SIGINT);
    let status = wait_with_deadline(&mut demo, "the demo after Ctrl-C", PATIENCE);
    assert!(status.success(), "{status:?}");
    // Issue 15: what the demo says is not mixed with INFO log lines.
    let stderr = std::fs::read_to_string(stderr_file.path()).expect("stderr");
    assert!(!stderr.contains(" INFO "), "{stderr}");
    let directory = directory.expect("the demo names its directory");
    assert!(
        !directory.exists(),
        "{} was left behind",
        directory.display()
    );
}
