//! Builds started by hand: `ssh master force`, `rebuild` and `cancel`, and the `buildbot force`
//! client, all through the master's one control layer.

use std::process::Command;

use crate::harness::{
    BIN, MasterSetup, TestMaster, current_user, run_with_timeout, text, wait_until,
};
use crate::repo::{Checkout, git};

/// A master whose linux builder passes only when the checkout has the developer's commit.
fn master_needing_the_new_commit(checkout: &Checkout) -> TestMaster {
    TestMaster::start_with(MasterSetup::linux_builder(
        &["s1"],
        &checkout.upstream,
        r#"{ name = "has-commit", command = "grep -q 'café' hello.txt" },"#,
    ))
}

#[test]
fn a_forced_build_builds_the_branch_and_revision_asked_for_and_says_who_and_why() {
    let checkout = Checkout::new();
    // The developer's commit goes to a branch of the upstream; main stays without it.
    git(
        &checkout.work,
        &["push", "-q", "origin", "HEAD:refs/heads/release"],
    );
    let main_head = git(&checkout.upstream, &["rev-parse", "main"]);
    let master = master_needing_the_new_commit(&checkout);
    let _slave = master.start_slave("s1");

    let forced = master.user_ssh(
        "force linux --branch release --reason 'check the release' --property flavour=fast",
    );
    assert_eq!(forced.status.code(), Some(0), "{}", text(&forced.stderr));
    assert!(
        text(&forced.stdout).starts_with("linux: forced build queued as request "),
        "{}",
        text(&forced.stdout)
    );
    let first = master.finished_build("linux", 1);
    assert_eq!(
        first["result"], "success",
        "the release branch has the commit: {first}"
    );
    let detail = master.api(&format!("/api/builds/{}", first["id"]));
    assert_eq!(detail["who"], current_user().as_str(), "{detail}");
    assert_eq!(detail["comment"], "check the release", "{detail}");
    assert_eq!(detail["branch"], "release", "{detail}");
    assert_eq!(detail["properties"]["flavour"], "fast", "{detail}");

    // The same branch at main's revision does not have the commit.
    let pinned = master.user_ssh(&format!(
        "force linux --revision {} --reason 'old base'",
        main_head.trim()
    ));
    assert_eq!(pinned.status.code(), Some(0), "{}", text(&pinned.stderr));
    assert_eq!(master.finished_build("linux", 2)["result"], "failure");

    // A rebuild of #1 builds what #1 built.
    let rebuilt = master.user_ssh("rebuild linux 1 --reason 'flaky?'");
    assert_eq!(rebuilt.status.code(), Some(0), "{}", text(&rebuilt.stderr));
    let third = master.finished_build("linux", 3);
    assert_eq!(third["result"], "success", "{third}");
    let detail = master.api(&format!("/api/builds/{}", third["id"]));
    assert_eq!(detail["comment"], "rebuild of linux #1: flaky?", "{detail}");

    // The client does the same over the user's ssh.
    let mut client = Command::new(BIN);
    client
        .args([
            "force",
            "linux",
            "--branch",
            "release",
            "--reason",
            "from the client",
        ])
        .args(master.client_args());
    let output = run_with_timeout(client, None);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(master.finished_build("linux", 4)["result"], "success");
}

#[test]
fn refusals_are_one_line_each() {
    let checkout = Checkout::new();
    let master = master_needing_the_new_commit(&checkout);
    for (command, status, message) in [
        (
            "force nope --reason x",
            1,
            "buildbot: no builder named 'nope' (builders: linux)",
        ),
        ("force linux", 2, "buildbot: force: "),
        (
            "force linux --reason x --property upstream_job=force-1",
            1,
            "buildbot: the property 'upstream_job' is set by the master itself",
        ),
        ("rebuild linux 9", 1, "buildbot: linux has no build #9"),
        (
            "cancel linux 99",
            1,
            "buildbot: linux has no queued request 99",
        ),
    ] {
        let output = master.user_ssh(command);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(status), "{command}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{command}: one line: {stderr}");
        assert!(stderr.starts_with(message), "{command}: {stderr}");
    }
}

#[test]
fn a_queued_request_can_be_cancelled_before_it_is_built() {
    let checkout = Checkout::new();
    // No slave is connected: whatever is forced waits in the queue.
    let master = master_needing_the_new_commit(&checkout);
    let forced = master.user_ssh("force linux --reason 'waits'");
    assert_eq!(forced.status.code(), Some(0), "{}", text(&forced.stderr));
    let request_id: i64 = text(&forced.stdout)
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("a request id: {}", text(&forced.stdout)));
    wait_until("the request to be queued", || {
        master.api("/api/builders/linux")["queued"] == 1
    });

    let cancelled = master.user_ssh(&format!("cancel linux {request_id}"));
    assert_eq!(
        cancelled.status.code(),
        Some(0),
        "{}",
        text(&cancelled.stderr)
    );
    assert_eq!(
        text(&cancelled.stdout).trim(),
        format!("linux: request {request_id} cancelled")
    );
    wait_until("the queue to be empty", || {
        master.api("/api/builders/linux")["queued"] == 0
    });
    let again = master.user_ssh(&format!("cancel linux {request_id}"));
    assert_eq!(again.status.code(), Some(1), "{}", text(&again.stderr));

    // When a slave comes, only what is still queued runs: the next build is #1 and it is the
    // one forced after the cancellation.
    let _slave = master.start_slave("s1");
    let after = master.user_ssh("force linux --reason 'after the cancel'");
    assert_eq!(after.status.code(), Some(0), "{}", text(&after.stderr));
    let first = master.finished_build("linux", 1);
    let detail = master.api(&format!("/api/builds/{}", first["id"]));
    assert_eq!(detail["comment"], "after the cancel", "{detail}");
    assert_eq!(
        master
            .api("/api/builds?builder=linux")
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}

/// Reads `child`'s stdout lines on a thread; returns the receiver.
fn lines_of(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("stdout is piped");
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

#[test]
fn try_wait_users_see_their_place_in_the_queue_and_when_it_starts() {
    let checkout = Checkout::new();
    let master = TestMaster::start_with(MasterSetup::linux_builder(
        &["s1"],
        &checkout.upstream,
        r#"{ name = "work", command = "sleep 2" },"#,
    ));
    let _slave = master.start_slave("s1");
    // One build first, so the master knows how long a build takes.
    assert_eq!(
        master
            .user_ssh("force linux --reason warm-up")
            .status
            .code(),
        Some(0)
    );
    master.finished_build("linux", 1);
    assert_eq!(
        master.user_ssh("force linux --reason busy").status.code(),
        Some(0)
    );
    wait_until("build #2 to run", || {
        master.newest_build("linux")["number"] == 2
    });
    let mut clients = Vec::new();
    let mut starts = Vec::new();
    for place in ["1st", "2nd", "3rd"] {
        let mut client = master
            .try_command(&checkout.work, "linux", true)
            .spawn()
            .expect("try --wait runs");
        let lines = lines_of(&mut client);
        let deadline = std::time::Instant::now() + crate::harness::PATIENCE;
        let queued = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.starts_with("queued: ") => break line,
                Ok(_) => {}
                Err(_) => panic!("try --wait said nothing about its place ({place})"),
            }
        };
        // The busy build is overdue by its estimate soon, so the first may "start now".
        let now = format!("queued: {place} for linux, starts now");
        let prefix = format!("queued: {place} for linux, starts in ~");
        let secs: u64 = if queued == now {
            0
        } else {
            assert!(queued.starts_with(&prefix), "{queued}");
            queued[prefix.len()..]
                .trim_end_matches('s')
                .parse()
                .unwrap_or_else(|_| panic!("an ETA in seconds: {queued}"))
        };
        starts.push(secs);
        clients.push((client, lines));
    }
    // Each waits about one build (2 s) longer than the one before it.
    assert!(
        starts.windows(2).all(|pair| pair[1] > pair[0]),
        "{starts:?}"
    );
    assert!(starts[2] <= 30, "{starts:?}");
    let stopped = master.user_ssh("stop linux 2 --reason 'enough'");
    assert_eq!(stopped.status.code(), Some(0), "{}", text(&stopped.stderr));
    for (mut client, _lines) in clients {
        let status = crate::harness::wait_with_deadline(
            &mut client,
            "try --wait",
            crate::harness::PATIENCE * 2,
        );
        assert!(status.success());
    }
}

#[test]
fn a_force_scheduler_limits_what_may_be_forced_over_ssh_too() {
    let checkout = Checkout::new();
    let mut setup = MasterSetup::linux_builder(
        &["s1"],
        &checkout.upstream,
        r#"{ name = "noop", command = "true" },"#,
    );
    setup.extra_config.push_str(&format!(
        "\n[[builder]]\nname = \"docs\"\nslaves = [\"s1\"]\nrepo = \"{}\"\nbranch = \"main\"\nsteps = [ {{ name = \"noop\", command = \"true\" }} ]\n\
         \n[[scheduler]]\nkind = \"force\"\nname = \"by-hand\"\nbuilders = [\"linux\"]\n",
        checkout.upstream.display()
    ));
    let master = TestMaster::start_with(setup);
    let refused = master.user_ssh("force docs --reason 'not listed'");
    let stderr = text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("docs may not be forced"),
        "the refusal says why: {stderr}"
    );
    let allowed = master.user_ssh("force linux --reason 'listed'");
    assert_eq!(allowed.status.code(), Some(0), "{}", text(&allowed.stderr));
}

/// Issue 21, item 1: a build asked only for a branch's tip (forced without `--revision`, as
/// periodic and nightly builds are) records the commit its slave checked out, shows it on the
/// build page and in the API, and gives it to the later steps.
#[test]
fn a_forced_build_of_a_branch_tip_records_and_passes_on_the_commit_it_built() {
    let checkout = Checkout::new();
    let head = git(&checkout.upstream, &["rev-parse", "main"]);
    let head = head.trim();
    let master = TestMaster::start_with(MasterSetup::linux_builder(
        &["s1"],
        &checkout.upstream,
        r#"{ name = "env", command = "echo rev=$BUILDBOT_REVISION branch=$BUILDBOT_BRANCH prop=%(prop:revision)s" },"#,
    ));
    let _slave = master.start_slave("s1");
    let forced = master.user_ssh("force linux --reason 'tip of main'");
    assert_eq!(forced.status.code(), Some(0), "{}", text(&forced.stderr));
    let build = master.finished_build("linux", 1);
    assert_eq!(build["result"], "success", "{build}");

    let detail = master.api(&format!("/api/builds/{}", build["id"]));
    assert_eq!(detail["branch"], "main", "{detail}");
    assert_eq!(detail["baserev"], head, "{detail}");
    assert_eq!(detail["revision"], head, "{detail}");
    let log = std::fs::read_to_string(master.path().join("logs/linux/1/2-env.stdout"))
        .expect("the env step's log");
    assert_eq!(
        log.trim(),
        format!("rev={head} branch=main prop={head}"),
        "the later steps see the commit built"
    );
    let page = crate::harness::http_client()
        .get(format!(
            "http://127.0.0.1:{}/builders/linux/builds/1",
            master.http_port
        ))
        .send()
        .and_then(|response| response.text())
        .expect("the build page");
    assert!(page.contains(head), "the page shows the commit: {page}");
}

/// Issue 21: `--json` answers are one typed object, and `buildbot force --wait` follows the
/// build like `try --wait`, with the one exit-code scheme: 0 success, 1 a failed build or a
/// refusal, 2 a usage mistake.
#[test]
fn force_answers_in_json_and_the_client_waits_for_the_result() {
    let checkout = Checkout::new();
    git(
        &checkout.work,
        &["push", "-q", "origin", "HEAD:refs/heads/release"],
    );
    let master = master_needing_the_new_commit(&checkout);

    // No slave yet: the request waits, so the answer has no build number.
    let forced = master.user_ssh("force linux --reason typed answer --json");
    assert_eq!(forced.status.code(), Some(0), "{}", text(&forced.stderr));
    let answer: serde_json::Value =
        serde_json::from_slice(&forced.stdout).expect("one JSON object");
    assert_eq!(answer["action"], "force", "{answer}");
    assert_eq!(answer["builder"], "linux", "{answer}");
    let request_id = answer["request_id"].as_i64().expect("a request id");
    assert!(request_id > 0, "{answer}");
    assert!(answer.get("number").is_none(), "{answer}");
    assert!(
        answer["url"]
            .as_str()
            .is_some_and(|url| url.starts_with("http://") && url.ends_with("/builders/linux")),
        "{answer}"
    );
    let cancelled = master.user_ssh(&format!("cancel linux {request_id} --json"));
    assert_eq!(
        cancelled.status.code(),
        Some(0),
        "{}",
        text(&cancelled.stderr)
    );
    let cancelled: serde_json::Value =
        serde_json::from_slice(&cancelled.stdout).expect("one JSON object");
    assert_eq!(cancelled["action"], "cancel", "{cancelled}");
    assert_eq!(cancelled["request_id"], request_id, "{cancelled}");

    let _slave = master.start_slave("s1");
    let force = |branch: &str| {
        let mut client = Command::new(BIN);
        client
            .args([
                "force", "linux", "--branch", branch, "--reason", "wait", "for", "it",
            ])
            .arg("--wait")
            .args(master.client_args());
        run_with_timeout(client, None)
    };
    // The release branch has the commit: the build succeeds and force exits 0.
    let output = force("release");
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        text(&output.stderr)
    );
    let first = stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("forced build queued as request ")
            && first.contains(" → linux")
            && first.contains(", http://"),
        "{stdout}"
    );
    assert!(stdout.contains("linux #1: success"), "{stdout}");
    assert!(stdout.contains("/builders/linux/builds/1"), "{stdout}");
    // main has not: the build fails and force exits 1, like try --wait.
    let output = force("main");
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(1),
        "{stdout}{}",
        text(&output.stderr)
    );
    assert!(stdout.contains("linux #2: failure"), "{stdout}");

    // A refused force exits 1, a usage mistake 2: through the client as over ssh.
    let mut refused = Command::new(BIN);
    refused
        .args(["force", "nope", "--reason", "x"])
        .args(master.client_args());
    let output = run_with_timeout(refused, None);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    assert_eq!(
        text(&output.stderr).trim(),
        "buildbot: no builder named 'nope' (builders: linux)"
    );
}
