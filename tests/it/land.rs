//! `buildbot land` (issue 24, docs/land.md): a bare repository is the shared remote, the
//! master's builder builds it on a real slave, the client is the real CLI over real ssh.
//! The builds run the repository's own `check.sh`, which waits for a gate file (so a test can
//! act while a series is being tested) and fails when the tree has a file `FAIL`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::harness::{
    BIN, MasterSetup, PATIENCE, TempAccount, TestKey, TestMaster, TestSlave, output_with_deadline,
    text, wait_until,
};

/// `repo::git`, its output trimmed.
fn git(dir: &Path, args: &[&str]) -> String {
    crate::repo::git(dir, args).trim().to_string()
}

/// A shared remote, a developer's clone, and a gate the builds wait for.
struct Project {
    tmp: tempfile::TempDir,
    upstream: PathBuf,
    work: PathBuf,
    gate: PathBuf,
}

impl Project {
    fn new() -> Project {
        let tmp = tempfile::tempdir().expect("temp dir");
        let upstream = tmp.path().join("upstream.git");
        let gate = tmp.path().join("gate");
        let seed = tmp.path().join("seed");
        std::fs::create_dir(&seed).expect("dir");
        git(&seed, &["init", "-q"]);
        // The gate's wait is bounded, so a test that forgets to open it still ends.
        std::fs::write(
            seed.join("check.sh"),
            format!(
                "i=0\nwhile [ ! -e '{}' ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\ntest ! -e FAIL\n",
                gate.display()
            ),
        )
        .expect("write");
        std::fs::write(seed.join("hello.txt"), "hello\n").expect("write");
        git(&seed, &["add", "."]);
        git(&seed, &["commit", "-q", "-m", "base"]);
        git(
            tmp.path(),
            &["clone", "-q", "--bare", "seed", "upstream.git"],
        );
        let work = tmp.path().join("work");
        git(tmp.path(), &["clone", "-q", "upstream.git", "work"]);
        let project = Project {
            tmp,
            upstream,
            work,
            gate,
        };
        project.open_gate();
        project
    }

    fn open_gate(&self) {
        std::fs::write(&self.gate, "").expect("gate");
    }

    fn close_gate(&self) {
        let _ = std::fs::remove_file(&self.gate);
    }

    /// A commit in the developer's clone by `author`.
    fn commit(&self, file: &str, content: &str, message: &str, author: &str) -> String {
        std::fs::write(self.work.join(file), content).expect("write");
        git(&self.work, &["add", file]);
        git(
            &self.work,
            &[
                "-c",
                &format!("user.name={author}"),
                "-c",
                &format!("user.email={}@example.org", author.to_lowercase()),
                "commit",
                "-q",
                "-m",
                message,
            ],
        );
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// Someone else pushes a commit to the remote's main.
    fn push_elsewhere(&self, file: &str, content: &str) -> String {
        let other = self.tmp.path().join(format!("other-{}", rand_suffix()));
        git(
            self.tmp.path(),
            &[
                "clone",
                "-q",
                "upstream.git",
                other.to_str().expect("utf-8"),
            ],
        );
        std::fs::write(other.join(file), content).expect("write");
        git(&other, &["add", file]);
        git(
            &other,
            &["commit", "-q", "-m", &format!("elsewhere: {file}")],
        );
        git(&other, &["push", "-q", "origin", "HEAD:main"]);
        git(&other, &["rev-parse", "HEAD"])
    }

    fn main(&self) -> String {
        git(&self.upstream, &["rev-parse", "main"])
    }
}

fn rand_suffix() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A master with builder `linux` on slave `s1` building the project, and `[[land]]` for main.
fn master(project: &Project, land_extra: &str) -> (TestMaster, TestSlave) {
    let mut setup = MasterSetup::linux_builder(
        &["s1"],
        &project.upstream,
        "{ name = \"check\", command = \"sh check.sh\" },",
    );
    setup.extra_config.push_str(&format!(
        "\n[[land]]\nbranch = \"main\"\nbuilders = [\"linux\"]\n{land_extra}\n"
    ));
    let master = TestMaster::start_with(setup);
    let slave = master.start_slave("s1");
    (master, slave)
}

fn land_command(master: &TestMaster, cwd: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .arg("land")
        .args(args)
        .args(master.client_args())
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn land(master: &TestMaster, cwd: &Path, args: &[&str]) -> Output {
    let child = land_command(master, cwd, args)
        .spawn()
        .expect("buildbot land runs");
    output_with_deadline(child, "buildbot land", PATIENCE * 3)
}

/// The queue's entry `id` as `/api/land` shows it (queued or recent).
fn entry(master: &TestMaster, id: i64) -> Option<serde_json::Value> {
    let queues = master.api("/api/land");
    queues.as_array()?.iter().find_map(|queue| {
        ["queue", "recent"].iter().find_map(|part| {
            queue[part]
                .as_array()?
                .iter()
                .find(|entry| entry["id"] == id)
                .cloned()
        })
    })
}

fn state_of(master: &TestMaster, id: i64) -> String {
    entry(master, id)
        .and_then(|entry| entry["state"].as_str().map(str::to_string))
        .unwrap_or_default()
}

#[test]
fn a_clean_series_lands_with_ids_authors_and_messages_kept() {
    let project = Project::new();
    let (master, _slave) = master(&project, "");
    project.commit("a.txt", "a\n", "add a\n\nwith a body", "Alice");
    let head = project.commit("b.txt", "b\n", "add b", "Bob");
    let out = land(&master, &project.work, &["--wait"]);
    let said = text(&out.stdout);
    assert!(out.status.success(), "{said}\n{}", text(&out.stderr));
    assert!(
        said.contains("land #1: 2 commits queued for main (position 1"),
        "{said}"
    );
    assert!(said.contains("linux #1"), "the build is shown: {said}");
    assert!(
        said.contains(&format!(
            "landed 2 commits by {} on main: {}",
            crate::harness::current_user(),
            &head[..7]
        )),
        "{said}"
    );
    // The series sat on main: its commits land as they are.
    assert_eq!(project.main(), head);
    let log = git(
        &project.upstream,
        &["log", "--format=%an|%s|%b", "-2", "main"],
    );
    assert!(log.contains("Bob|add b|"), "{log}");
    assert!(log.contains("Alice|add a|with a body"), "{log}");
    let landed = entry(&master, 1).expect("entry in /api/land");
    assert_eq!(landed["state"], "landed");
    assert_eq!(landed["landed_sha"], head.as_str());
    let page = crate::harness::http_client()
        .get(format!("http://127.0.0.1:{}/land", master.http_port))
        .send()
        .and_then(|response| response.text())
        .expect("/land");
    assert!(page.contains("land-entry-1"), "{page}");
    let build = crate::harness::http_client()
        .get(format!(
            "http://127.0.0.1:{}/builders/linux/builds/1",
            master.http_port
        ))
        .send()
        .and_then(|response| response.text())
        .expect("build page");
    assert!(
        build.contains("href=\"/land#land-entry-1\""),
        "the build links its landing: {build}"
    );
}

#[test]
fn a_failing_series_is_rejected_and_main_does_not_move() {
    let project = Project::new();
    let (master, _slave) = master(&project, "");
    let before = project.main();
    project.commit("FAIL", "x\n", "break the build", "Alice");
    let out = land(&master, &project.work, &["--wait"]);
    let said = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}\n{}", text(&out.stderr));
    assert!(said.contains("rejected: linux #1: failure"), "{said}");
    assert_eq!(project.main(), before);
    assert_eq!(state_of(&master, 1), "rejected");
}

#[test]
fn a_push_during_the_test_is_rebased_on_and_tested_again() {
    let project = Project::new();
    let (master, _slave) = master(&project, "");
    project.close_gate();
    project.commit("mine.txt", "mine\n", "my change", "Alice");
    let waiting = land_command(&master, &project.work, &["--wait"])
        .spawn()
        .expect("land runs");
    wait_until("the series is being tested", || {
        state_of(&master, 1) == "testing"
    });
    let theirs = project.push_elsewhere("theirs.txt", "theirs\n");
    project.open_gate();
    let out = output_with_deadline(waiting, "land --wait", PATIENCE * 3);
    let said = text(&out.stdout);
    assert!(out.status.success(), "{said}\n{}", text(&out.stderr));
    let main = project.main();
    // Rebased onto their commit, tested again (a second build), authored as before.
    assert_eq!(git(&project.upstream, &["rev-parse", "main^"]), theirs);
    assert_eq!(
        git(&project.upstream, &["log", "-1", "--format=%an|%s", "main"]),
        "Alice|my change"
    );
    let landed = entry(&master, 1).expect("entry");
    assert_eq!(landed["attempts"], 2, "{landed}");
    assert_eq!(landed["landed_sha"], main.as_str());
    assert!(said.contains("linux #2"), "tested again: {said}");
    // The second test built exactly the tree that landed.
    let build = master.api_last_build("linux");
    assert_eq!(build["result"], "success", "{build}");
    let files = git(&project.upstream, &["ls-tree", "--name-only", "main"]);
    assert!(
        files.contains("theirs.txt") && files.contains("mine.txt"),
        "{files}"
    );
}

#[test]
fn ff_only_refuses_when_the_target_moved() {
    let project = Project::new();
    let (master, _slave) = master(&project, "");
    project.close_gate();
    project.commit("mine.txt", "mine\n", "my change", "Alice");
    let waiting = land_command(&master, &project.work, &["--wait", "--ff-only"])
        .spawn()
        .expect("land runs");
    wait_until("the series is being tested", || {
        state_of(&master, 1) == "testing"
    });
    let theirs = project.push_elsewhere("theirs.txt", "theirs\n");
    project.open_gate();
    let out = output_with_deadline(waiting, "land --wait --ff-only", PATIENCE * 3);
    let said = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("--ff-only refuses to rebase"), "{said}");
    assert_eq!(project.main(), theirs);
    // Submitted now, the series no longer sits on main: refused at once, nothing queued.
    let out = land(&master, &project.work, &["--ff-only"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--ff-only: the series does not sit on the branch's tip"),
        "{}",
        text(&out.stderr)
    );
    assert!(entry(&master, 2).is_none());
}

#[test]
fn a_conflict_is_refused_with_the_file_names() {
    let project = Project::new();
    let (master, _slave) = master(&project, "");
    project.commit("hello.txt", "hello from me\n", "mine", "Alice");
    project.push_elsewhere("hello.txt", "hello from them\n");
    let before = project.main();
    let out = land(&master, &project.work, &[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("does not apply") && err.contains("conflicts in hello.txt"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(entry(&master, 1).is_none(), "nothing queued");
    assert_eq!(project.main(), before);
}

#[test]
fn bad_input_is_refused_in_one_line_and_nothing_is_queued() {
    let project = Project::new();
    let (master, _slave) = master(&project, "");
    let key = &master.user_key;
    let user = crate::harness::current_user();
    let refused = |command: &str, input: &[u8], expected: &str| {
        let out = master.ssh_with(key, &user, command, &[], Some(input));
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{command}: {err}");
        assert!(err.contains(expected), "{command}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    };
    refused(
        "land --onto main",
        b"this is not a bundle",
        "not a git bundle",
    );
    refused(
        "land --onto nope",
        b"",
        "no [[land]] queue for branch 'nope'",
    );
    // A commit whose tree has a .git directory, made with plumbing (git add refuses it).
    let blob = git_stdin(
        &project.work,
        &["hash-object", "-w", "--stdin"],
        b"[core]\n",
    );
    let inner = git_stdin(
        &project.work,
        &["mktree"],
        format!("100644 blob {blob}\tconfig\n").as_bytes(),
    );
    let base_tree = git(&project.work, &["rev-parse", "HEAD^{tree}"]);
    let listing = git(&project.work, &["ls-tree", &base_tree]);
    let tree = git_stdin(
        &project.work,
        &["mktree"],
        format!("{listing}\n040000 tree {inner}\t.git\n").as_bytes(),
    );
    let commit = git(
        &project.work,
        &["commit-tree", &tree, "-p", "HEAD", "-m", "sneaky"],
    );
    git(&project.work, &["branch", "sneaky", &commit]);
    let bundle = project.tmp.path().join("sneaky.bundle");
    git(
        &project.work,
        &[
            "bundle",
            "create",
            "-q",
            bundle.to_str().expect("utf-8"),
            "origin/main..sneaky",
        ],
    );
    refused(
        "land --onto main",
        &std::fs::read(&bundle).expect("bundle"),
        ".git",
    );
    // The client says it before anything is sent: no commits on top of main.
    let out = land(&master, &project.work, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("nothing to land"),
        "{}",
        text(&out.stderr)
    );
    assert!(entry(&master, 1).is_none(), "nothing queued");
}

fn git_stdin(dir: &Path, args: &[&str], input: &[u8]) -> String {
    let mut command = Command::new("git");
    command.args(args).current_dir(dir);
    let out = crate::harness::run_with_timeout(command, Some(input));
    assert!(out.status.success(), "git {args:?}: {}", text(&out.stderr));
    text(&out.stdout).trim().to_string()
}

#[test]
fn a_user_outside_the_group_is_refused() {
    let project = Project::new();
    let (master, _slave) = master(&project, "group = \"bbtest-landers-nobody\"");
    let account = TempAccount::create("land rights");
    let key = TestKey::ed25519(master.keys_dir.path(), "outsider");
    master.authorize(&account.user, &key.public_line);
    project.commit("a.txt", "a\n", "a", "Alice");
    let out = master.ssh_with(&key, &account.user, "land --onto main", &[], Some(b"x"));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("{} may not land onto this branch", account.user))
            && err.contains("bbtest-landers-nobody"),
        "{err}"
    );
    assert!(entry(&master, 1).is_none());
}

#[test]
fn cancel_takes_the_entry_out_and_stops_its_build() {
    let project = Project::new();
    let (master, _slave) = master(&project, "");
    project.close_gate();
    let before = project.main();
    project.commit("a.txt", "a\n", "a", "Alice");
    let out = land(&master, &project.work, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_until("the series is being tested", || {
        state_of(&master, 1) == "testing"
    });
    let out = land(&master, &project.work, &["--cancel"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("land #1 on main cancelled"));
    assert_eq!(state_of(&master, 1), "cancelled");
    wait_until("the build is stopped", || {
        master.newest_build("linux")["result"] == "interrupted"
    });
    project.open_gate();
    assert_eq!(project.main(), before);
    let out = land(&master, &project.work, &["--cancel"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("nothing of yours waits"),
        "{}",
        text(&out.stderr)
    );

    // The web page's Cancel button does the same, behind a session and its CSRF token.
    project.close_gate();
    let out = land(&master, &project.work, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_until("the series is being tested", || {
        state_of(&master, 2) == "testing"
    });
    let client = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let base = format!("http://127.0.0.1:{}", master.http_port);
    let cancel_url = format!("{base}/land/2/cancel");
    let refused = client
        .post(&cancel_url)
        .form(&[("csrf", "x")])
        .send()
        .expect("POST");
    assert_eq!(refused.status().as_u16(), 403, "no session");
    let login = text(
        &master
            .ssh(
                &master.user_key,
                &crate::harness::current_user(),
                "web-login",
            )
            .stdout,
    );
    let login_url = login.lines().next().expect("a URL").trim().to_string();
    let response = client.get(&login_url).send().expect("login");
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .to_string();
    let session = cookie.split(';').next().expect("pair").to_string();
    let page = client
        .get(format!("{base}/land"))
        .header("Cookie", &session)
        .send()
        .and_then(|response| response.text())
        .expect("page");
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page has a Cancel form")
        .to_string();
    let response = client
        .post(&cancel_url)
        .header("Cookie", &session)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .expect("POST");
    assert_eq!(response.status().as_u16(), 303);
    assert_eq!(state_of(&master, 2), "cancelled");
    project.open_gate();
    assert_eq!(project.main(), before);
}

#[test]
fn after_a_kill_9_during_the_test_the_queue_resumes_and_lands_once() {
    let project = Project::new();
    let (mut master, slave) = master(&project, "");
    project.close_gate();
    let head = project.commit("a.txt", "a\n", "a", "Alice");
    let out = land(&master, &project.work, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_until("the build runs", || {
        let builds = master.api("/api/builds?builder=linux");
        builds[0].is_object() && builds[0]["result"].is_null() && state_of(&master, 1) == "testing"
    });
    master.kill_hard();
    drop(slave);
    let master = master.start_again();
    let _slave = master.start_slave("s1");
    project.open_gate();
    wait_until("the series landed after the restart", || {
        state_of(&master, 1) == "landed"
    });
    assert_eq!(project.main(), head);
    // Exactly one copy of the commit on main, and a passing build of it.
    assert_eq!(
        git(&project.upstream, &["rev-list", "--count", "main"]),
        "2"
    );
    let build = master.api_last_build("linux");
    assert_eq!(build["result"], "success", "{build}");
}

/// A series of its own in a fresh clone of the remote, as a bundle `land` takes.
fn series_bundle(project: &Project, name: &str, file: &str) -> Vec<u8> {
    let clone = project.tmp.path().join(format!("clone-{name}"));
    git(
        project.tmp.path(),
        &[
            "clone",
            "-q",
            "upstream.git",
            clone.to_str().expect("utf-8"),
        ],
    );
    std::fs::write(clone.join(file), format!("{name}\n")).expect("write");
    git(&clone, &["add", file]);
    git(&clone, &["commit", "-q", "-m", &format!("{name}'s change")]);
    let bundle = project.tmp.path().join(format!("{name}.bundle"));
    git(
        &clone,
        &[
            "bundle",
            "create",
            "-q",
            bundle.to_str().expect("utf-8"),
            "origin/main..HEAD",
        ],
    );
    std::fs::read(&bundle).expect("bundle")
}

#[test]
fn window_3_with_the_middle_failing_lands_first_and_third_linearly() {
    let project = Project::new();
    let landers = TempAccount::create("land window");
    let (master, _slave) = master(
        &project,
        &format!("group = \"{}\"\nwindow = 3", landers.group),
    );
    // Three people of the landers' group, each with a series on the same main.
    let others = [
        TempAccount::create("land window"),
        TempAccount::create("land window"),
    ];
    for other in &others {
        let added = crate::harness::run_with_timeout(
            {
                let mut usermod = Command::new("usermod");
                usermod.args(["-a", "-G", &landers.group, &other.user]);
                usermod
            },
            None,
        );
        assert!(added.status.success(), "usermod: {}", text(&added.stderr));
    }
    let users = [&landers, &others[0], &others[1]];
    let series = [
        series_bundle(&project, "first", "first.txt"),
        series_bundle(&project, "second", "FAIL"),
        series_bundle(&project, "third", "third.txt"),
    ];
    let before = project.main();
    project.close_gate();
    for (index, (user, bundle)) in users.iter().zip(&series).enumerate() {
        let key = TestKey::ed25519(master.keys_dir.path(), &format!("lander-{index}"));
        master.authorize(&user.user, &key.public_line);
        let out = master.ssh_with(&key, &user.user, "land --onto main", &[], Some(bundle));
        assert!(out.status.success(), "{}: {}", user.user, text(&out.stderr));
    }
    wait_until("all three are tested at once", || {
        (1..=3).all(|id| state_of(&master, id) == "testing")
    });
    project.open_gate();
    wait_until("the queue is done", || {
        (1..=3).all(|id| ["landed", "rejected"].contains(&state_of(&master, id).as_str()))
    });
    assert_eq!(state_of(&master, 1), "landed");
    assert_eq!(state_of(&master, 2), "rejected");
    assert_eq!(state_of(&master, 3), "landed");
    let second = entry(&master, 2).expect("entry");
    assert!(
        second["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("failure"),
        "{second}"
    );
    // The third was tested on the second, evicted when it failed, tested again on the first.
    let third = entry(&master, 3).expect("entry");
    assert_eq!(third["attempts"], 2, "{third}");
    // Linear history: base, first, third; the tip is what the third's last test built.
    let log = git(&project.upstream, &["log", "--format=%s", "main"]);
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        ["third's change", "first's change", "base"]
    );
    assert_eq!(git(&project.upstream, &["rev-parse", "main~2"]), before);
    assert_eq!(third["landed_sha"], project.main().as_str());
    let files = git(&project.upstream, &["ls-tree", "--name-only", "main"]);
    assert!(!files.contains("FAIL"), "{files}");
}
