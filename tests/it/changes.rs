//! Continuous integration proper (#10): real pushes into a bare repository with the shipped
//! post-receive hook, `sendchange` over real ssh, the git poller, branch and dependent
//! schedulers, force/rebuild/cancel from the web (forms and headless Chromium), properties in
//! steps, and the refusal of bad changes.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{
    BIN, MasterSetup, PATIENCE, SLACK, TestMaster, current_user, http_client, run_with_timeout,
    text, wait_until,
};
use crate::repo::{Checkout, git};

/// The step every builder here runs first (step 2, after the checkout): what it was asked to
/// build and what it has.
const SHOW_REVISION: &str = r#"{ name = "rev", command = "echo env=$BUILDBOT_REVISION; echo head=$(git rev-parse HEAD); echo branch=$BUILDBOT_BRANCH" },"#;

/// A branch scheduler on `main` for `linux`, with `settings` (TOML lines) added.
pub(crate) fn branch_scheduler(name: &str, builders: &str, settings: &str) -> String {
    format!(
        "\n[[scheduler]]\nkind = \"branch\"\nname = \"{name}\"\nbuilders = [{builders}]\nbranches = [\"main\"]\n{settings}\n"
    )
}

/// A master with the try builder `linux` (slave `s1`) on the checkout's upstream running
/// `steps`, and `extra` config appended.
pub(crate) fn master_with(checkout: &Checkout, steps: &str, extra: &str) -> TestMaster {
    let mut setup = MasterSetup::linux_builder(&["s1"], &checkout.upstream, steps);
    setup.extra_config.push_str(extra);
    // Sending changes is off unless a group is named; the tests send as root.
    setup
        .extra_config
        .push_str("\n[changes]\ngroup = \"root\"\n");
    TestMaster::start_with(setup)
}

/// A fresh clone of the upstream, as a second developer would push from (its commits are
/// Alice's: the `git` helper sets the author).
fn pusher(checkout: &Checkout, name: &str) -> PathBuf {
    let parent = checkout.upstream.parent().expect("temp dir");
    git(
        parent,
        &[
            "clone",
            "-q",
            checkout.upstream.to_str().expect("utf-8"),
            name,
        ],
    );
    parent.join(name)
}

/// Writes `files` in `dir`, commits them and returns the new commit id.
fn commit(dir: &Path, files: &[(&str, &str)], message: &str) -> String {
    for (name, content) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
        std::fs::write(&path, content).expect("write");
    }
    // `-A`, not the names: a name may be `*` or start with `-`.
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", message]);
    git(dir, &["rev-parse", "HEAD"]).trim().to_string()
}

/// `git push origin HEAD:main`; returns what the push printed on stderr (the hook's output).
fn push(dir: &Path) -> String {
    let mut command = Command::new("git");
    command
        .args(["push", "origin", "HEAD:main"])
        .current_dir(dir);
    let output = run_with_timeout(command, None);
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "git push: {stderr}");
    stderr
}

/// The id in the hook's `change N accepted` line (relayed by git as `remote: ...`).
fn accepted_change(push_output: &str) -> i64 {
    push_output
        .lines()
        .find_map(|line| {
            line.trim_start_matches("remote:")
                .trim()
                .strip_prefix("change ")?
                .strip_suffix(" accepted")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("the hook reported no accepted change: {push_output}"))
}

/// Installs the shipped `etc/hooks/post-receive` in `bare`, configured for this master.
fn install_hook(master: &TestMaster, bare: &Path) {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/hooks/post-receive");
    let hook = bare.join("hooks/post-receive");
    std::fs::copy(&shipped, &hook).expect("hook copied");
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let port = master.ssh_port.to_string();
    let ssh = master.ssh_for_try(&master.user_key);
    let user = current_user();
    for (key, value) in [
        ("buildbot.host", "127.0.0.1"),
        ("buildbot.port", port.as_str()),
        ("buildbot.username", user.as_str()),
        ("buildbot.ssh", ssh.as_str()),
        ("buildbot.command", BIN),
    ] {
        git(bare, &["config", key, value]);
    }
}

/// `ssh master sendchange` with `json` on stdin.
pub(crate) fn sendchange(master: &TestMaster, json: &[u8]) -> Output {
    master.ssh_with(
        &master.user_key,
        &current_user(),
        "sendchange",
        &[],
        Some(json),
    )
}

/// Every build of `builder`, newest first.
fn builds(master: &TestMaster, builder: &str) -> Vec<Value> {
    master
        .api(&format!("/api/builds?builder={builder}"))
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("/api/builds is not a list"))
}

/// Waits for build `number` of `builder` to finish and returns its detail (/api/builds/ID).
pub(crate) fn finished_build(master: &TestMaster, builder: &str, number: u64) -> Value {
    let mut found = Value::Null;
    wait_until(&format!("{builder} #{number} to finish"), || {
        found = builds(master, builder)
            .into_iter()
            .find(|build| build["number"] == number)
            .unwrap_or(Value::Null);
        found["running"] == false
    });
    master.api(&format!("/api/builds/{}", found["id"]))
}

/// The raw stdout log of step `step` (1 is the checkout) of `builder` #`number`.
pub(crate) fn step_log(master: &TestMaster, builder: &str, number: u64, step: u64) -> String {
    let url = format!(
        "http://127.0.0.1:{}/builders/{builder}/builds/{number}/steps/{step}/logs/stdout/raw",
        master.http_port
    );
    let response = http_client()
        .get(&url)
        .send()
        .unwrap_or_else(|err| panic!("GET {url}: {err}"));
    assert_eq!(response.status().as_u16(), 200, "GET {url}");
    response.text().expect("log text")
}

/// The ids of the changes a build lists.
fn change_ids(detail: &Value) -> Vec<i64> {
    detail["changes"]
        .as_array()
        .unwrap_or_else(|| panic!("no changes list: {detail}"))
        .iter()
        .map(|change| change["id"].as_i64().expect("change id"))
        .collect()
}

/// Waits out `period` (for asserting that something does not happen).
fn quiet_for(period: Duration) {
    std::thread::sleep(period);
}

#[test]
fn a_push_through_the_shipped_hook_builds_the_pushed_revision() {
    let checkout = Checkout::new();
    let master = master_with(
        &checkout,
        SHOW_REVISION,
        &branch_scheduler("on-main", "\"linux\"", "tree_stable_timer = \"1s\""),
    );
    let _slave = master.start_slave("s1");
    install_hook(&master, &checkout.upstream);

    let clone = pusher(&checkout, "bob");
    let pushed = commit(&clone, &[("src/lib.rs", "fn main() {}\n")], "add lib");
    let output = push(&clone);
    let change_id = accepted_change(&output);

    let detail = finished_build(&master, "linux", 1);
    assert_eq!(detail["result"], "success", "{detail}");
    assert_eq!(detail["baserev"], pushed.as_str(), "{detail}");
    assert_eq!(detail["branch"], "main", "{detail}");
    assert_eq!(change_ids(&detail), vec![change_id], "{detail}");
    let why = detail["why"].as_str().unwrap_or_default();
    assert!(
        why.contains(&format!("change {change_id} on main")),
        "{why}"
    );
    assert_eq!(
        step_log(&master, "linux", 1, 2),
        format!("env={pushed}\nhead={pushed}\nbranch=main\n")
    );

    let changes = master.api("/api/changes");
    let listed = changes.as_array().expect("a list");
    assert_eq!(listed.len(), 1, "{changes}");
    let change = &listed[0];
    assert_eq!(change["id"], change_id);
    assert_eq!(change["revision"], pushed.as_str());
    assert_eq!(change["branch"], "main");
    // The test helper `git` commits as Alice, whatever the clone's config says.
    assert_eq!(change["who"], "Alice <alice@example.org>");
    assert_eq!(change["comments"].as_str().map(str::trim), Some("add lib"));
    assert_eq!(change["files"], serde_json::json!(["src/lib.rs"]));
    assert_eq!(change["sent_by"], current_user().as_str());
    assert_eq!(
        change["builds"],
        serde_json::json!([{"builder": "linux", "number": 1, "url": "/builders/linux/builds/1"}]),
        "{change}"
    );
    assert_eq!(builds(&master, "linux").len(), 1);
}

#[test]
fn the_hook_sends_awkward_names_and_messages_as_they_are_and_skips_deletions_and_tags() {
    let checkout = Checkout::new();
    let master = master_with(&checkout, SHOW_REVISION, "");
    install_hook(&master, &checkout.upstream);
    let clone = pusher(&checkout, "bob");
    let message = "--help is not an option\n\n-x neither; $(id) `id` *";
    let revision = commit(
        &clone,
        &[
            ("*", "star\n"),
            ("-dash.txt", "dash\n"),
            ("src/[x].rs", "x\n"),
        ],
        message,
    );
    let output = push(&clone);
    let id = accepted_change(&output);
    let changes = master.api("/api/changes");
    let change = &changes[0];
    assert_eq!(change["id"], id, "{changes}");
    assert_eq!(change["revision"], revision.as_str());
    assert_eq!(
        change["files"],
        serde_json::json!(["*", "-dash.txt", "src/[x].rs"]),
        "{change}"
    );
    assert_eq!(change["comments"], message, "{change}");

    // A new branch is one change of its own commit; deleting it and pushing a tag send none.
    git(&clone, &["push", "-q", "origin", "HEAD:refs/heads/topic"]);
    let mut delete = Command::new("git");
    delete
        .args(["push", "origin", ":refs/heads/topic"])
        .current_dir(&clone);
    let deleted = text(&run_with_timeout(delete, None).stderr);
    assert!(
        deleted.contains("buildbot: branch topic was deleted; no change sent"),
        "{deleted}"
    );
    let mut tag = Command::new("git");
    tag.args(["push", "origin", "HEAD:refs/tags/v1"])
        .current_dir(&clone);
    let tagged = text(&run_with_timeout(tag, None).stderr);
    assert!(
        tagged.contains("buildbot: refs/tags/v1 is not a branch; no change sent"),
        "{tagged}"
    );
    let changes = master.api("/api/changes");
    let listed = changes.as_array().expect("list");
    assert_eq!(listed.len(), 2, "{changes}");
    assert_eq!(listed[0]["branch"], "topic", "newest first: {changes}");
    assert_eq!(listed[0]["revision"], revision.as_str());
    assert_eq!(
        listed[0]["files"],
        serde_json::json!(["*", "-dash.txt", "src/[x].rs"]),
        "a new branch lists its commit's files: {changes}"
    );
}

#[test]
fn two_pushes_inside_the_stable_timer_give_one_build_listing_both() {
    let checkout = Checkout::new();
    // Long enough for two pushes through ssh on a loaded machine.
    let timer = Duration::from_secs(6);
    let master = master_with(
        &checkout,
        SHOW_REVISION,
        &branch_scheduler("on-main", "\"linux\"", "tree_stable_timer = \"6s\""),
    );
    let _slave = master.start_slave("s1");
    install_hook(&master, &checkout.upstream);
    let clone = pusher(&checkout, "bob");

    let started = Instant::now();
    commit(&clone, &[("a.txt", "a\n")], "first");
    let first = accepted_change(&push(&clone));
    let second_rev = commit(&clone, &[("b.txt", "b\n")], "second");
    let second = accepted_change(&push(&clone));
    assert!(
        started.elapsed() < timer,
        "the two pushes took {:?}, longer than the timer: the test proves nothing",
        started.elapsed()
    );

    let detail = finished_build(&master, "linux", 1);
    assert_eq!(change_ids(&detail), vec![first, second], "{detail}");
    assert_eq!(
        detail["baserev"],
        second_rev.as_str(),
        "the newest revision"
    );
    assert!(
        step_log(&master, "linux", 1, 2).contains(&format!("head={second_rev}\n")),
        "the build checked out the newest revision"
    );
    // No second build comes later for either change.
    quiet_for(Duration::from_secs(2));
    assert_eq!(builds(&master, "linux").len(), 1);
    for change in master.api("/api/changes").as_array().expect("list") {
        assert_eq!(
            change["builds"].as_array().map(Vec::len),
            Some(1),
            "{change}"
        );
    }
}

#[test]
fn a_push_touching_only_docs_skips_a_scheduler_watching_src() {
    let checkout = Checkout::new();
    let master = master_with(
        &checkout,
        SHOW_REVISION,
        &branch_scheduler(
            "src-only",
            "\"linux\"",
            "tree_stable_timer = \"1s\"\nfiles = [\"src/**\"]",
        ),
    );
    let _slave = master.start_slave("s1");
    install_hook(&master, &checkout.upstream);
    let clone = pusher(&checkout, "bob");

    commit(&clone, &[("docs/guide.md", "# guide\n")], "docs only");
    let docs = accepted_change(&push(&clone));
    quiet_for(Duration::from_secs(1) + SLACK / 2);
    assert!(builds(&master, "linux").is_empty(), "a docs push built");
    assert_eq!(master.api("/api/requests"), serde_json::json!([]));
    let changes = master.api("/api/changes");
    assert_eq!(changes[0]["id"], docs, "the change is recorded: {changes}");
    assert_eq!(changes[0]["builds"], serde_json::json!([]), "{changes}");

    let src_rev = commit(
        &clone,
        &[("src/deep/x.rs", "x\n"), ("docs/more.md", "m\n")],
        "code",
    );
    let code = accepted_change(&push(&clone));
    let detail = finished_build(&master, "linux", 1);
    assert_eq!(detail["baserev"], src_rev.as_str());
    assert_eq!(
        change_ids(&detail),
        vec![code],
        "only the src change: {detail}"
    );
    assert_eq!(builds(&master, "linux").len(), 1);
}

#[test]
fn the_poller_builds_a_new_commit_once_and_not_again_after_a_restart() {
    let checkout = Checkout::new();
    let extra = format!(
        "{}\n[[change_source]]\nkind = \"git-poll\"\nrepo = \"{}\"\nbranches = [\"main\"]\ninterval = \"1s\"\n",
        branch_scheduler("on-main", "\"linux\"", "tree_stable_timer = \"1s\""),
        checkout.upstream.display()
    );
    let mut master = master_with(&checkout, SHOW_REVISION, &extra);
    let slave = master.start_slave("s1");
    wait_until("the first poll", || {
        master
            .log()
            .contains("first poll: the current heads are recorded")
    });
    let clone = pusher(&checkout, "bob");
    let first = commit(&clone, &[("src/a.rs", "a\n")], "polled one");
    // No hook: only the poller can see this.
    push(&clone);

    let detail = finished_build(&master, "linux", 1);
    assert_eq!(detail["baserev"], first.as_str(), "{detail}");
    assert_eq!(detail["result"], "success", "{detail}");
    let changes = master.api("/api/changes");
    assert_eq!(changes.as_array().map(Vec::len), Some(1), "{changes}");
    assert_eq!(changes[0]["revision"], first.as_str());
    assert_eq!(
        changes[0]["sent_by"],
        format!("poller {}", checkout.upstream.display()).as_str()
    );
    // Several more polls see nothing new.
    quiet_for(Duration::from_secs(3));
    assert_eq!(builds(&master, "linux").len(), 1);

    master.terminate();
    drop(slave);
    // A commit lands while the master is down: the restarted poller must build it (and only
    // it), which shows it polls again; the head it built before is not built again.
    let second = commit(&clone, &[("src/b.rs", "b\n")], "while down");
    push(&clone);
    let master = master.start_again();
    let _slave = master.start_slave("s1");
    let detail = finished_build(&master, "linux", 2);
    assert_eq!(detail["baserev"], second.as_str(), "{detail}");
    quiet_for(Duration::from_secs(3));
    let all = builds(&master, "linux");
    assert_eq!(all.len(), 2, "{all:?}");
    let changes = master.api("/api/changes");
    let revisions: Vec<&str> = changes
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|change| change["revision"].as_str())
        .collect();
    assert_eq!(revisions.len(), 2, "{changes}");
    assert!(revisions.contains(&first.as_str()) && revisions.contains(&second.as_str()));
}

/// Issue 21, item 5: a polled change lists the files and authors of what the head brought, so
/// a `files` filter decides on it as on a pushed one; and the hook plus a poller on one
/// repository record one change for one revision, whichever arrives first.
#[test]
fn polled_changes_list_files_and_authors_and_a_revision_is_one_change_however_it_came() {
    let checkout = Checkout::new();
    let extra = format!(
        "{}\n[[change_source]]\nkind = \"git-poll\"\nrepo = \"{}\"\nbranches = [\"main\"]\ninterval = \"1s\"\n",
        branch_scheduler(
            "src-only",
            "\"linux\"",
            "tree_stable_timer = \"1s\"\nfiles = [\"src/**\"]"
        ),
        checkout.upstream.display()
    );
    let master = master_with(&checkout, SHOW_REVISION, &extra);
    let _slave = master.start_slave("s1");
    wait_until("the first poll", || {
        master
            .log()
            .contains("first poll: the current heads are recorded")
    });
    let clone = pusher(&checkout, "bob");

    // No hook yet: only the poller sees this push, which touches docs only.
    let docs = commit(
        &clone,
        &[("docs/guide.md", "# guide\n"), ("docs/faq.md", "faq\n")],
        "docs only",
    );
    push(&clone);
    let mut changes = Value::Null;
    wait_until("the poller to record the docs change", || {
        changes = master.api("/api/changes");
        changes[0]["revision"] == docs.as_str()
    });
    let mut files: Vec<&str> = changes[0]["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    files.sort_unstable();
    assert_eq!(files, ["docs/faq.md", "docs/guide.md"], "{changes}");
    assert_eq!(changes[0]["who"], "Alice <alice@example.org>", "{changes}");
    assert_eq!(changes[0]["comments"], "docs only", "{changes}");
    quiet_for(Duration::from_secs(1) + SLACK / 2);
    assert!(
        builds(&master, "linux").is_empty(),
        "a polled docs change passed the src filter"
    );

    // Now the hook too: the push reaches the master twice, and is one change and one build.
    install_hook(&master, &checkout.upstream);
    git(
        &checkout.upstream,
        &[
            "config",
            "buildbot.repository",
            checkout.upstream.to_str().expect("utf-8"),
        ],
    );
    let code = commit(&clone, &[("src/lib.rs", "code\n")], "code");
    let accepted = accepted_change(&push(&clone));
    wait_until("the second arrival of the revision", || {
        master.log().contains("change already recorded")
    });
    let detail = finished_build(&master, "linux", 1);
    assert_eq!(detail["baserev"], code.as_str(), "{detail}");
    assert_eq!(change_ids(&detail), vec![accepted], "{detail}");
    let changes = master.api("/api/changes");
    let of_code: Vec<&Value> = changes
        .as_array()
        .expect("list")
        .iter()
        .filter(|change| change["revision"] == code.as_str())
        .collect();
    assert_eq!(of_code.len(), 1, "one change for one revision: {changes}");
    assert_eq!(of_code[0]["id"], accepted, "{changes}");
    quiet_for(Duration::from_secs(1) + SLACK / 2);
    assert_eq!(builds(&master, "linux").len(), 1);
}

#[test]
fn a_dependent_builder_runs_after_its_upstream_succeeded_on_the_same_revision() {
    let checkout = Checkout::new();
    // linux fails when the tree has a file named `broken`; deploy records what it deploys.
    let steps = r#"{ name = "test", command = "sleep 1; test ! -e broken && echo tested=$BUILDBOT_REVISION" },"#;
    let extra = format!(
        "\n[[builder]]\nname = \"deploy\"\nslaves = [\"s1\"]\nrepo = \"{}\"\nbranch = \"main\"\nsteps = [\n{SHOW_REVISION}\n]\n{}\n[[scheduler]]\nkind = \"dependent\"\nname = \"after-main\"\nbuilders = [\"deploy\"]\nupstream = \"on-main\"\n",
        checkout.upstream.display(),
        branch_scheduler("on-main", "\"linux\"", "tree_stable_timer = \"1s\""),
    );
    let master = master_with(&checkout, steps, &extra);
    let _slave = master.start_slave("s1");
    install_hook(&master, &checkout.upstream);
    let clone = pusher(&checkout, "bob");

    let good = commit(&clone, &[("src/ok.rs", "ok\n")], "good");
    push(&clone);
    let upstream = finished_build(&master, "linux", 1);
    assert_eq!(upstream["result"], "success", "{upstream}");
    let deploy = finished_build(&master, "deploy", 1);
    assert_eq!(deploy["result"], "success", "{deploy}");
    assert_eq!(deploy["baserev"], good.as_str(), "{deploy}");
    assert_eq!(
        step_log(&master, "deploy", 1, 2),
        format!("env={good}\nhead={good}\nbranch=main\n")
    );
    let upstream_end = upstream["finished_at"].as_f64().expect("finished");
    let deploy_start = deploy["started_at"].as_f64().expect("started");
    assert!(
        deploy_start >= upstream_end,
        "deploy started at {deploy_start}, before linux ended at {upstream_end}"
    );
    let why = deploy["why"].as_str().unwrap_or_default();
    assert!(
        why.contains("after on-main succeeded") && why.contains(&good[..12]),
        "{why}"
    );

    // A failed upstream does not trigger it.
    commit(&clone, &[("broken", "yes\n")], "break it");
    push(&clone);
    let failed = finished_build(&master, "linux", 2);
    assert_eq!(failed["result"], "failure", "{failed}");
    quiet_for(Duration::from_secs(3));
    assert_eq!(
        builds(&master, "deploy").len(),
        1,
        "deploy ran after a failure"
    );
    assert_eq!(master.api("/api/requests"), serde_json::json!([]));
}

/// A web session (`ssh master web-login`): the cookie pair and the CSRF token of its pages.
pub(crate) struct WebSession {
    pub(crate) cookie: String,
    csrf: String,
}

fn web_url(master: &TestMaster, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", master.http_port)
}

pub(crate) fn web_login(master: &TestMaster) -> WebSession {
    let login = text(&master.user_ssh("web-login").stdout);
    let url = login
        .lines()
        .next()
        .expect("a login URL")
        .trim()
        .to_string();
    let client = reqwest::blocking::Client::builder()
        .timeout(PATIENCE)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let response = client.get(&url).send().expect("login");
    assert_eq!(response.status().as_u16(), 303, "{url}");
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .split(';')
        .next()
        .expect("pair")
        .to_string();
    let page = client
        .get(web_url(master, "/builders/linux"))
        .header("Cookie", &cookie)
        .send()
        .and_then(|r| r.text())
        .expect("builder page");
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no CSRF token on the builder page: {page}"))
        .to_string();
    WebSession { cookie, csrf }
}

impl WebSession {
    /// POSTs a form; returns the status and the Location it redirects to.
    pub(crate) fn post(
        &self,
        master: &TestMaster,
        path: &str,
        fields: &[(&str, &str)],
    ) -> (u16, String) {
        let mut form: Vec<(&str, &str)> = vec![("csrf", self.csrf.as_str())];
        form.extend_from_slice(fields);
        let client = reqwest::blocking::Client::builder()
            .timeout(PATIENCE)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let response = client
            .post(web_url(master, path))
            .header("Cookie", &self.cookie)
            .form(&form)
            .send()
            .unwrap_or_else(|err| panic!("POST {path}: {err}"));
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get("location")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = response.text().unwrap_or_default();
        assert!(
            status == 303 || status >= 400,
            "POST {path}: {status} {body}"
        );
        (status, location)
    }
}

#[test]
fn force_cancel_and_rebuild_from_the_web_forms() {
    let checkout = Checkout::new();
    // The developer's commit goes to a branch `release`; main stays without it.
    git(
        &checkout.work,
        &["push", "-q", "origin", "HEAD:refs/heads/release"],
    );
    let release = git(&checkout.upstream, &["rev-parse", "release"])
        .trim()
        .to_string();
    let master = master_with(
        &checkout,
        r#"{ name = "show", command = "echo rev=$BUILDBOT_REVISION flavour=$BUILDBOT_PROP_FLAVOUR ticket=%(prop:ticket)s; git rev-parse HEAD" },"#,
        "",
    );
    let session = web_login(&master);

    // Without the token, nothing is queued.
    let client = reqwest::blocking::Client::builder()
        .timeout(PATIENCE)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let refused = client
        .post(web_url(&master, "/builders/linux/force"))
        .header("Cookie", &session.cookie)
        .form(&[("reason", "no token")])
        .send()
        .expect("POST");
    assert_eq!(refused.status().as_u16(), 403);

    // No slave yet: both forced builds wait in the queue.
    let (status, location) = session.post(
        &master,
        "/builders/linux/force",
        &[("reason", "doomed"), ("branch", "main")],
    );
    assert_eq!((status, location.as_str()), (303, "/builders/linux"));
    let (status, _) = session.post(
        &master,
        "/builders/linux/force",
        &[
            ("reason", "release check"),
            ("branch", "release"),
            ("revision", &release),
            ("properties", "flavour=fast\r\nticket=42\r\n"),
        ],
    );
    assert_eq!(status, 303);
    let queue = master.api("/api/requests");
    let queued = queue.as_array().expect("list");
    assert_eq!(queued.len(), 2, "{queue}");
    assert_eq!(queued[0]["position"], 1);
    assert_eq!(queued[1]["position"], 2);
    assert_eq!(queued[0]["kind"], "force", "{queue}");
    assert_eq!(
        queued[0]["why"],
        format!("forced by {}: doomed", current_user()).as_str()
    );
    assert_eq!(queued[1]["revision"], release.as_str());
    let doomed = queued[0]["id"].as_i64().expect("id");

    let (status, _) = session.post(
        &master,
        &format!("/builders/linux/requests/{doomed}/cancel"),
        &[],
    );
    assert_eq!(status, 303);
    let queue = master.api("/api/requests");
    assert_eq!(queue.as_array().map(Vec::len), Some(1), "{queue}");
    assert_eq!(queue[0]["position"], 1, "{queue}");
    assert_eq!(queue[0]["branch"], "release", "{queue}");

    let _slave = master.start_slave("s1");
    let first = finished_build(&master, "linux", 1);
    assert_eq!(first["result"], "success", "{first}");
    assert_eq!(first["comment"], "release check", "{first}");
    assert_eq!(first["who"], current_user().as_str());
    assert_eq!(first["baserev"], release.as_str());
    assert_eq!(
        step_log(&master, "linux", 1, 2),
        format!("rev={release} flavour=fast ticket=42\n{release}\n")
    );

    let (status, _) = session.post(
        &master,
        "/builders/linux/builds/1/rebuild",
        &[("reason", "again please")],
    );
    assert_eq!(status, 303);
    let second = finished_build(&master, "linux", 2);
    assert_eq!(
        second["comment"], "rebuild of linux #1: again please",
        "{second}"
    );
    assert_eq!(second["baserev"], release.as_str());
    assert_eq!(second["properties"], first["properties"]);
    assert_eq!(
        step_log(&master, "linux", 2, 2),
        step_log(&master, "linux", 1, 2)
    );
    assert_eq!(
        builds(&master, "linux").len(),
        2,
        "the cancelled one never ran"
    );
}

#[test]
fn a_person_forces_a_build_in_chromium() {
    let checkout = Checkout::new();
    let master = master_with(
        &checkout,
        r#"{ name = "show", command = "echo colour=$BUILDBOT_PROP_COLOUR" },"#,
        "",
    );
    let _slave = master.start_slave("s1");
    let web = web_url(&master, "");
    let driver = crate::browser::Driver::start();
    driver.goto(&format!("{web}/builders/linux"));
    assert_eq!(
        driver.count("#force-button"),
        0,
        "read-only before logging in"
    );

    let login = text(&master.user_ssh("web-login").stdout);
    driver.goto(login.lines().next().expect("login URL").trim());
    driver.goto(&format!("{web}/builders/linux"));
    assert_eq!(driver.count("#force-button"), 1, "{}", driver.source());
    driver.type_into("#force-reason", "clicked in a browser");
    driver.type_into("#force-properties", "colour=blue");
    driver.click("#force-button");

    let detail = finished_build(&master, "linux", 1);
    assert_eq!(detail["comment"], "clicked in a browser", "{detail}");
    assert_eq!(detail["who"], current_user().as_str());
    assert_eq!(step_log(&master, "linux", 1, 2), "colour=blue\n");
    driver.goto(&format!("{web}/builders/linux/builds/1"));
    let page = driver.source();
    assert!(
        page.contains(&format!(
            "forced by {}: clicked in a browser",
            current_user()
        )),
        "the build page says why: {page}"
    );
}

#[test]
fn a_property_with_shell_metacharacters_arrives_intact_and_unexecuted() {
    let checkout = Checkout::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let marker = dir.path().join("pwned");
    let evil = format!(
        "x'; touch {m}-1; echo '$(touch {m}-2)`touch {m}-3`\"; touch {m}-4; \"$$ %s \\ *",
        m = marker.display()
    );
    let master = master_with(
        &checkout,
        r#"{ name = "show", command = "printf 'interp=[%s]\\n' %(prop:evil)s; printf 'env=[%s]\\n' \"$BUILDBOT_PROP_EVIL\"" },"#,
        "",
    );
    let _slave = master.start_slave("s1");

    // Over ssh, the value quoted for the master's command-line split.
    let quoted = format!("'{}'", format!("evil={evil}").replace('\'', r"'\''"));
    let forced = master.user_ssh(&format!(
        "force linux --reason metachars --property {quoted}"
    ));
    assert_eq!(forced.status.code(), Some(0), "{}", text(&forced.stderr));
    let detail = finished_build(&master, "linux", 1);
    assert_eq!(detail["properties"]["evil"], evil.as_str(), "{detail}");
    assert_eq!(
        step_log(&master, "linux", 1, 2),
        format!("interp=[{evil}]\nenv=[{evil}]\n")
    );

    // Through the client, which quotes for ssh itself.
    let mut client = Command::new(BIN);
    client
        .args(["force", "linux", "--reason", "client", "--property"])
        .arg(format!("evil={evil}"))
        .args(master.client_args());
    let output = run_with_timeout(client, None);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    finished_build(&master, "linux", 2);
    assert_eq!(
        step_log(&master, "linux", 2, 2),
        format!("interp=[{evil}]\nenv=[{evil}]\n")
    );

    let created: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|entry| entry.expect("entry").file_name())
        .collect();
    assert!(created.is_empty(), "a property ran a command: {created:?}");
}

#[test]
fn bad_changes_are_refused_with_one_line_and_nothing_is_recorded() {
    let checkout = Checkout::new();
    let master = master_with(
        &checkout,
        SHOW_REVISION,
        &branch_scheduler("on-main", "\"linux\"", "tree_stable_timer = \"1s\""),
    );
    let head = git(&checkout.upstream, &["rev-parse", "main"]);
    let revision = head.trim();
    let huge = format!(
        r#"{{"repository": "/r.git", "branch": "main", "revision": "{revision}", "comments": "{}"}}"#,
        "a".repeat(10 * 1024 * 1024)
    );
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "missing revision",
            br#"{"repository": "/r.git", "branch": "main"}"#.to_vec(),
            "revision",
        ),
        (
            "empty revision",
            br#"{"repository": "/r.git", "branch": "main", "revision": ""}"#.to_vec(),
            "revision",
        ),
        (
            "unknown field",
            format!(
                r#"{{"repository": "/r.git", "branch": "main", "revision": "{revision}", "surprise": 1}}"#
            )
            .into_bytes(),
            "surprise",
        ),
        ("non-JSON", b"this is not json\n".to_vec(), "JSON"),
        ("10 MB of JSON", huge.into_bytes(), "larger than"),
        (
            "a revision with a newline",
            br#"{"repository": "/r.git", "branch": "main", "revision": "HEAD\nsecond line"}"#
                .to_vec(),
            "revision",
        ),
        (
            "a branch with a newline",
            format!(
                r#"{{"repository": "/r.git", "branch": "a\nb", "revision": "{revision}"}}"#
            )
            .into_bytes(),
            "branch",
        ),
        (
            "an unknown field with a newline in its name",
            format!(
                r#"{{"repository": "/r.git", "branch": "main", "revision": "{revision}", "x\ny": 1}}"#
            )
            .into_bytes(),
            "unknown field",
        ),
    ];
    for (what, input, mentions) in cases {
        let output = sendchange(&master, &input);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{what}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{what}: one line: {stderr:?}");
        assert!(stderr.starts_with("buildbot: "), "{what}: {stderr}");
        assert!(stderr.contains(mentions), "{what}: {stderr}");
        assert!(output.stdout.is_empty(), "{what}: {}", text(&output.stdout));
    }
    // The client checks before it connects, with one line too.
    let mut client = Command::new(BIN);
    client
        .args([
            "sendchange",
            "--repository",
            "/r.git",
            "--branch",
            "main",
            "--revision",
            "HEAD~1",
        ])
        .args(master.client_args());
    let output = run_with_timeout(client, None);
    assert_ne!(output.status.code(), Some(0));
    assert_eq!(
        text(&output.stderr).lines().count(),
        1,
        "{}",
        text(&output.stderr)
    );

    assert_eq!(master.api("/api/changes"), serde_json::json!([]));
    assert_eq!(master.api("/api/requests"), serde_json::json!([]));
    // The first good change is still change 1.
    let good = format!(r#"{{"repository": "/r.git", "branch": "main", "revision": "{revision}"}}"#);
    let output = sendchange(&master, good.as_bytes());
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "change 1 accepted\n");
    assert_eq!(master.api("/api/changes").as_array().map(Vec::len), Some(1));
}

#[test]
fn an_unreachable_polled_repository_is_logged_and_retried_without_stopping_the_master() {
    let checkout = Checkout::new();
    let missing = checkout
        .upstream
        .parent()
        .expect("temp dir")
        .join("not-there.git");
    let extra = format!(
        "{}\n[[change_source]]\nkind = \"git-poll\"\nrepo = \"{}\"\nbranches = [\"main\"]\ninterval = \"1s\"\n",
        branch_scheduler("on-main", "\"linux\"", "tree_stable_timer = \"1s\""),
        missing.display()
    );
    let master = master_with(&checkout, SHOW_REVISION, &extra);
    wait_until("two failed polls", || {
        master.log().matches("poll failed").count() >= 2
    });
    assert_eq!(master.api("/api/changes"), serde_json::json!([]));

    // Once the repository exists, the first successful poll only records its heads; the next
    // commit is a change.
    git(
        checkout.upstream.parent().expect("temp dir"),
        &[
            "clone",
            "-q",
            "--bare",
            checkout.upstream.to_str().expect("utf-8"),
            "not-there.git",
        ],
    );
    wait_until("the first good poll", || {
        master
            .log()
            .contains("first poll: the current heads are recorded")
    });
    assert_eq!(master.api("/api/changes"), serde_json::json!([]));
    let clone = checkout.upstream.parent().expect("temp dir").join("late");
    git(
        checkout.upstream.parent().expect("temp dir"),
        &["clone", "-q", missing.to_str().expect("utf-8"), "late"],
    );
    let revision = commit(&clone, &[("src/late.rs", "late\n")], "late");
    push(&clone);
    wait_until("the poller to record the new head", || {
        master.api("/api/changes")[0]["revision"] == revision.as_str()
    });
}

/// The hook with the pusher's ssh as it is out of the box: strict host key checking against a
/// known_hosts that does not know the master (here an empty file, as a new pusher's is).
fn install_hook_with_strict_ssh(master: &TestMaster, bare: &Path, known_hosts: &Path) {
    install_hook(master, bare);
    std::fs::write(known_hosts, "").expect("empty known_hosts");
    let ssh = format!(
        "ssh -F /dev/null -i {} -o BatchMode=yes -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={} -o LogLevel=ERROR",
        master.user_key.private.display(),
        known_hosts.display()
    );
    git(bare, &["config", "buildbot.ssh", &ssh]);
}

#[test]
fn an_unknown_master_host_key_is_said_on_the_pushers_terminal_with_the_exact_hint() {
    let checkout = Checkout::new();
    let master = master_with(&checkout, SHOW_REVISION, "");
    let scratch = tempfile::tempdir().expect("temp dir");
    install_hook_with_strict_ssh(
        &master,
        &checkout.upstream,
        &scratch.path().join("known_hosts"),
    );

    let clone = pusher(&checkout, "bob");
    commit(&clone, &[("a.txt", "a\n")], "first");
    let output = push(&clone);
    let hint = format!("[127.0.0.1]:{}", master.ssh_port);
    assert!(
        output.contains("remote: buildbot: no change sent for main"),
        "the pusher is told, on a line of its own, that the change was not sent: {output}"
    );
    assert!(output.contains("buildbot.masterHostKey"), "{output}");
    assert!(
        output.contains(&hint),
        "the known_hosts hint names the host as ssh looks it up: {output}"
    );
    assert!(!output.contains("add 127.0.0.1 to"), "{output}");
    assert_eq!(master.api("/api/changes"), serde_json::json!([]));
}

#[test]
fn the_hook_pins_the_master_host_key_from_its_git_setting() {
    let checkout = Checkout::new();
    let master = master_with(&checkout, SHOW_REVISION, "");
    let scratch = tempfile::tempdir().expect("temp dir");
    install_hook_with_strict_ssh(
        &master,
        &checkout.upstream,
        &scratch.path().join("known_hosts"),
    );
    let host_key = std::fs::read_to_string(master.path().join("host_key.pub")).expect("host key");
    git(
        &checkout.upstream,
        &["config", "buildbot.masterHostKey", host_key.trim()],
    );

    let clone = pusher(&checkout, "bob");
    let pushed = commit(&clone, &[("a.txt", "a\n")], "first");
    let change_id = accepted_change(&push(&clone));
    let changes = master.api("/api/changes");
    assert_eq!(changes[0]["id"], change_id, "{changes}");
    assert_eq!(changes[0]["revision"], pushed.as_str(), "{changes}");

    // A wrong pin is refused as such, loudly, and the push still goes through.
    let other =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl other";
    git(
        &checkout.upstream,
        &["config", "buildbot.masterHostKey", other],
    );
    commit(&clone, &[("b.txt", "b\n")], "second");
    let output = push(&clone);
    assert!(
        output.contains("remote: buildbot: no change sent for main"),
        "{output}"
    );
    assert!(output.contains("not the pinned"), "{output}");
    assert_eq!(master.api("/api/changes").as_array().map(Vec::len), Some(1));
}

#[test]
fn a_web_session_survives_a_master_restart_and_a_login_url_does_not() {
    let checkout = Checkout::new();
    let mut master = master_with(&checkout, r#"{ name = "ok", command = "true" },"#, "");
    let session = web_login(&master);
    let unused_login = text(&master.user_ssh("web-login").stdout);
    let unused_login = unused_login
        .lines()
        .next()
        .expect("a URL")
        .trim()
        .to_string();
    let (status, _) = master.terminate();
    assert!(status.success());
    let master = master.start_again();

    let client = reqwest::blocking::Client::builder()
        .timeout(PATIENCE)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let page = client
        .get(web_url(&master, "/builders/linux"))
        .header("Cookie", &session.cookie)
        .send()
        .and_then(|response| response.text())
        .expect("builder page");
    assert!(
        page.contains(&format!("name=\"csrf\" value=\"{}\"", session.csrf)),
        "the page after the restart is the same session's (its CSRF token): {page}"
    );
    let (status, location) = session.post(
        &master,
        "/builders/linux/force",
        &[("reason", "after restart")],
    );
    assert_eq!(status, 303, "the kept session may force: {location}");
    wait_until("the forced build to be queued or run", || {
        !builds(&master, "linux").is_empty() || master.api("/api/requests") != serde_json::json!([])
    });

    // The nav's "waterfall" is a page of its own name too, not a JSON 404.
    let waterfall = client
        .get(web_url(&master, "/waterfall"))
        .send()
        .expect("GET /waterfall");
    assert_eq!(waterfall.status().as_u16(), 200);
    assert!(waterfall.text().expect("page").contains("id=\"waterfall\""));

    // The one-time login URL stays short-lived and in memory: a restart voids it.
    let response = client.get(&unused_login).send().expect("login");
    assert_eq!(response.status().as_u16(), 403);

    // Only a hash of the session id is in the database.
    let id = session.cookie.split_once('=').expect("pair").1;
    let database = std::fs::read(master.path().join("state.sqlite")).expect("database");
    let wal = std::fs::read(master.path().join("state.sqlite-wal")).unwrap_or_default();
    for bytes in [&database, &wal] {
        assert!(
            !bytes
                .windows(id.len())
                .any(|window| window == id.as_bytes()),
            "the session id is not stored in the clear"
        );
    }
}
