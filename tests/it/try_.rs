//! `buildbot try` end to end: a developer's dirty checkout, the real `ssh`, the master's spool.

use std::path::{Path, PathBuf};
use std::process::Command;

use buildbot::tryjob as job;

use crate::harness::{
    BIN, MasterSetup, TempAccount, TestKey, TestMaster, current_user, run_with_timeout, text,
    wait_until,
};
use crate::repo::{Checkout, git};

fn try_master(builders: &[&str]) -> TestMaster {
    TestMaster::start_with(MasterSetup::with_try_builders(
        builders,
        "/srv/git/project.git",
    ))
}

fn buildbot_try(master: &TestMaster, cwd: &Path, extra: &[&str]) -> std::process::Output {
    let mut command = Command::new(BIN);
    command
        .arg("try")
        .args(master.client_args())
        .args(extra)
        .current_dir(cwd);
    run_with_timeout(command, None)
}

/// The single job the master took in, as it recorded it in its history (the spool's copy is
/// deleted once recorded). `version` is the one the master would write (5; 6 for a patch that
/// is not UTF-8), `who` the authenticated user.
fn the_claimed_job(master: &TestMaster) -> job::Job {
    let path = master.path().join("state.sqlite");
    let read = || -> Option<job::Job> {
        let connection = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .ok()?;
        let mut statement = connection
            .prepare(
                "SELECT jobid, builder, who, comment, repository, branch, baserev, patch, \
                 patch_level, properties FROM requests ORDER BY id",
            )
            .ok()?;
        type Row = (
            String,
            String,
            Option<String>,
            Option<String>,
            String,
            Option<String>,
            Option<String>,
            Option<Vec<u8>>,
            u32,
            String,
        );
        let rows: Vec<Row> = statement
            .query_map([], |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                    row.get(5)?,
                    row.get(6)?,
                    row.get(7)?,
                    row.get(8)?,
                    row.get(9)?,
                ))
            })
            .ok()?
            .collect::<Result<_, _>>()
            .ok()?;
        let first = rows.first()?.clone();
        let (jobid, _, who, comment, repository, branch, baserev, patch, patch_level, properties) =
            first;
        let version = match &patch {
            Some(bytes) if std::str::from_utf8(bytes).is_err() => 6,
            _ => 5,
        };
        Some(job::Job {
            version,
            jobid,
            branch,
            baserev,
            patch_level,
            patch,
            repository,
            project: String::new(),
            who,
            comment,
            builders: rows.into_iter().map(|row| row.1).collect(),
            properties: serde_json::from_str(&properties).unwrap_or_default(),
        })
    };
    let mut found = None;
    wait_until("the master to record the job", || {
        found = read();
        found.is_some()
    });
    found.expect("recorded")
}

#[test]
fn a_dirty_checkout_is_delivered_and_the_patch_reproduces_it() {
    let master = try_master(&["linux", "mac"]);
    let checkout = Checkout::new();
    let output = buildbot_try(
        &master,
        &checkout.work,
        &["-b", "linux", "--comment", "fix greeting"],
    );
    assert!(output.status.success(), "stderr: {}", text(&output.stderr));
    assert!(
        text(&output.stdout).contains("accepted as"),
        "{}",
        text(&output.stdout)
    );

    let job = the_claimed_job(&master);
    let upstream_head = git(&checkout.work, &["rev-parse", "origin/main"]);
    assert_eq!(job.baserev.as_deref(), Some(upstream_head.trim()));
    assert_eq!(job.branch.as_deref(), Some("main"));
    assert_eq!(job.builders, vec!["linux".to_string()]);
    // The job's who is the user the master authenticated, not the name the client sent.
    assert_eq!(job.who.as_deref(), Some(current_user().as_str()));
    assert_eq!(job.comment.as_deref(), Some("fix greeting"));
    assert_eq!(job.patch_level, 1);
    let patch = job.patch.as_deref().expect("a patch");
    checkout.assert_patch_reproduces_the_work(upstream_head.trim(), patch);

    master.wait_queued("linux", 1);
}

#[test]
fn a_ready_patch_from_stdin_with_its_patchlevel() {
    let master = try_master(&["linux"]);
    let outside = tempfile::tempdir().expect("temp dir");
    let patch = b"--- a/src/main.c\n+++ b/src/main.c\n@@ -1 +1 @@\n-int x;\n+int y;\n";
    let mut command = Command::new(BIN);
    command
        .args([
            "try",
            "--diff",
            "-",
            "-p",
            "1",
            "--baserev",
            "abc123",
            "-b",
            "linux",
        ])
        .args(master.client_args())
        .current_dir(outside.path());
    let output = run_with_timeout(command, Some(patch));
    assert!(output.status.success(), "{}", text(&output.stderr));
    let job = the_claimed_job(&master);
    assert_eq!(job.patch.as_deref(), Some(&patch[..]));
    assert_eq!(job.patch_level, 1);
    assert_eq!(job.baserev.as_deref(), Some("abc123"));
}

/// Issue 21, item 12: an empty `--diff` (a commit that reverts to its parent) is a job without
/// a patch, built at its base revision, not refused as "nothing to try".
#[test]
fn an_empty_diff_is_sent_without_a_patch_and_builds_the_base() {
    let checkout = Checkout::new();
    let base = git(&checkout.upstream, &["rev-parse", "main"]);
    let base = base.trim();
    let master = TestMaster::start_with(MasterSetup::linux_builder(
        &["s1"],
        &checkout.upstream,
        r#"{ name = "head", command = "git rev-parse HEAD; git status --porcelain" },"#,
    ));
    let _slave = master.start_slave("s1");
    let outside = tempfile::tempdir().expect("temp dir");
    let mut command = Command::new(BIN);
    command
        .args([
            "try",
            "--diff",
            "/dev/null",
            "--baserev",
            base,
            "-b",
            "linux",
            "--wait",
        ])
        .args(master.client_args())
        .current_dir(outside.path());
    let output = run_with_timeout(command, None);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    assert!(
        text(&output.stderr).contains("sent without a patch"),
        "{}",
        text(&output.stderr)
    );
    let job = the_claimed_job(&master);
    assert_eq!(job.patch, None);
    assert_eq!(job.baserev.as_deref(), Some(base));
    let log = std::fs::read_to_string(master.path().join("logs/linux/1/2-head.stdout"))
        .expect("the step's log");
    assert_eq!(log, format!("{base}\n"), "the base, unpatched and clean");
}

/// Regression (issue 15): a plain `git diff` sent without `-p 1` failed on the slave with a path
/// that does not exist; the client now says which level to use, before sending.
#[test]
fn a_git_diff_with_the_wrong_patchlevel_is_told_to_use_p1() {
    let master = try_master(&["linux"]);
    let outside = tempfile::tempdir().expect("temp dir");
    let patch = b"diff --git a/src/main.c b/src/main.c\n--- a/src/main.c\n+++ b/src/main.c\n@@ -1 +1 @@\n-int x;\n+int y;\n";
    let mut command = Command::new(BIN);
    command
        .args(["try", "--diff", "-", "--baserev", "abc123", "-b", "linux"])
        .args(master.client_args())
        .current_dir(outside.path());
    let output = run_with_timeout(command, Some(patch));
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(stderr.trim_end().ends_with("try -p 1"), "{stderr}");
    assert!(!stderr.contains("does not exist"), "{stderr}");
}

/// Issue 15: the dry run lists the files (a diffstat) and, with -v, prints the patch; an
/// untracked `.buildbot` is never sent, even with --include-untracked.
#[test]
fn dryrun_shows_a_diffstat_and_include_untracked_leaves_dot_buildbot_out() {
    let checkout = Checkout::new();
    std::fs::write(
        checkout.work.join(".buildbot"),
        "host = \"ci.example.org\"\n",
    )
    .expect("write .buildbot");
    std::fs::write(checkout.work.join("untracked.txt"), "new\n").expect("write");
    let mut command = Command::new(BIN);
    command
        .args(["try", "--dryrun", "-v", "--include-untracked"])
        .current_dir(&checkout.work);
    let output = run_with_timeout(command, None);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let stat_line = |path: &str| {
        stdout
            .lines()
            .find(|line| line.trim_start().starts_with(path) && line.contains(" | "))
            .map(str::to_string)
    };
    assert!(
        stat_line("hello.txt").is_some_and(|line| line.ends_with("| 3 ++-")),
        "{stdout}"
    );
    assert!(stat_line("untracked.txt").is_some(), "{stdout}");
    assert!(
        stat_line("old-name.txt => new-name.txt").is_some(),
        "{stdout}"
    );
    assert!(
        stat_line("logo.bin").is_some_and(|line| line.ends_with("| Bin")),
        "{stdout}"
    );
    assert!(
        stdout.contains("+++ b/untracked.txt"),
        "the patch: {stdout}"
    );
    assert!(!stdout.contains(".buildbot"), "{stdout}");

    // Without -v: the diffstat, no patch.
    let mut command = Command::new(BIN);
    command
        .args(["try", "--dryrun", "--include-untracked"])
        .current_dir(&checkout.work);
    let output = run_with_timeout(command, None);
    let stdout = text(&output.stdout);
    assert!(
        stdout
            .lines()
            .any(|line| line.trim_start().starts_with("untracked.txt ") && line.ends_with("| 1 +")),
        "{stdout}"
    );
    assert!(!stdout.contains("+++ b/"), "{stdout}");
}

#[test]
fn defaults_come_from_the_nearest_dot_buildbot_file() {
    let master = try_master(&["linux"]);
    let checkout = Checkout::new();
    std::fs::write(
        checkout.work.join(".buildbot"),
        format!(
            "host = \"127.0.0.1\"\nport = {}\nusername = \"{}\"\nssh = \"{}\"\nbuilders = [\"linux\"]\n",
            master.ssh_port,
            current_user(),
            master.ssh_for_try(&master.user_key)
        ),
    )
    .expect("write .buildbot");
    let sub = checkout.work.join("sub/dir");
    std::fs::create_dir_all(&sub).expect("dirs");
    let output = run_with_timeout(
        {
            let mut command = Command::new(BIN);
            command.args(["try", "--dryrun"]).current_dir(&sub);
            command
        },
        None,
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let summary = text(&output.stdout);
    assert!(summary.contains("Builders: linux"), "{summary}");
    assert!(
        summary.contains(&format!("-p {}", master.ssh_port)),
        "{summary}"
    );
    assert!(
        std::fs::read_dir(master.path().join("spool/new"))
            .expect("new")
            .next()
            .is_none()
    );

    let mut command = Command::new(BIN);
    command.arg("try").current_dir(&sub);
    let output = run_with_timeout(command, None);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(the_claimed_job(&master).builders, vec!["linux".to_string()]);
}

#[test]
fn errors_a_new_user_hits_say_what_to_do() {
    let master = try_master(&["linux", "mac"]);
    let outside = tempfile::tempdir().expect("temp dir");
    let output = buildbot_try(&master, outside.path(), &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("not inside a git working tree"),
        "{}",
        text(&output.stderr)
    );

    let checkout = Checkout::new();
    let output = buildbot_try(&master, &checkout.work, &["-b", "windows"]);
    // Refused, like a refused force: exit 1 (usage and connection trouble are 2).
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr)
            .contains("buildbot: unknown builder 'windows' (try builders here: linux, mac)"),
        "{}",
        text(&output.stderr)
    );

    // A property only the master sets (a bisection's mark) is refused, not smuggled in.
    let output = buildbot_try(
        &master,
        &checkout.work,
        &["-b", "linux", "--property", "bisect=1"],
    );
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    assert!(
        text(&output.stderr).contains("the property 'bisect' is set by the master itself"),
        "{}",
        text(&output.stderr)
    );

    let mut command = Command::new(BIN);
    command.arg("try").current_dir(&checkout.work);
    let output = run_with_timeout(command, None);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("give --host"),
        "{}",
        text(&output.stderr)
    );

    let stranger = TestKey::ed25519(master.keys_dir.path(), "stranger");
    let mut command = Command::new(BIN);
    command
        .arg("try")
        .args(master.client_args_with(&stranger))
        .current_dir(&checkout.work);
    let output = run_with_timeout(command, None);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("Permission denied"),
        "{}",
        text(&output.stderr)
    );
    assert!(
        text(&output.stderr).contains("authorized_keys"),
        "{}",
        text(&output.stderr)
    );

    git(&checkout.work, &["stash", "-q", "--include-untracked"]);
    git(&checkout.work, &["reset", "-q", "--hard", "origin/main"]);
    let output = buildbot_try(&master, &checkout.work, &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("no changes to try"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn a_job_spooled_while_the_master_is_down_is_processed_at_start() {
    let mut master = try_master(&["linux", "mac os"]);
    let (status, _) = master.terminate();
    assert!(status.success());
    let sample = include_bytes!("../data/try-samples/job-v5-git.bin");
    let mut command = Command::new(BIN);
    command
        .args(["tryserver", "--jobdir"])
        .arg(master.path().join("spool"));
    let output = run_with_timeout(command, Some(sample));
    assert!(output.status.success(), "{}", text(&output.stderr));
    let master = master.start_again();
    let job = the_claimed_job(&master);
    assert_eq!(job.jobid, "1795464251.701242-859904");
    master.wait_queued("mac%20os", 1);
}

#[test]
fn malformed_and_unknown_builder_jobs_land_in_rejected_with_a_reason() {
    let master = try_master(&["linux"]);
    let new = master.path().join("spool/new");
    std::fs::write(new.join("garbage"), b"this is not a netstring").expect("write");
    std::fs::write(
        new.join("wrong-builder"),
        include_bytes!("../data/try-samples/job-v5-git.bin"),
    )
    .expect("write");
    let rejected = master.path().join("spool/rejected");
    // The master writes NAME.why first and then moves the job in beside it: the job's
    // arrival means the reason is complete.
    wait_until("both jobs rejected", || {
        ["wrong-builder", "garbage"].iter().all(|name| {
            rejected.join(name).exists() && rejected.join(format!("{name}.why")).exists()
        })
    });
    let why = std::fs::read_to_string(rejected.join("wrong-builder.why")).expect("why");
    assert!(why.contains("unknown builder"), "{why}");
    let why = std::fs::read_to_string(rejected.join("garbage.why")).expect("why");
    assert!(why.starts_with("bad job:"), "{why}");
    assert_eq!(
        std::fs::read(rejected.join("wrong-builder")).expect("kept"),
        include_bytes!("../data/try-samples/job-v5-git.bin")
    );
}

#[test]
fn a_job_over_the_limit_is_refused_without_buffering_it() {
    // The default limit is 10 MiB.
    let master = try_master(&["linux"]);
    // One command first, so what the master allocates once (its first SSH session, tasks
    // still starting on a loaded machine) is not counted against the job.
    let warm = master.ssh_with(&master.user_key, &current_user(), "help", &[], None);
    assert!(warm.status.success(), "{}", text(&warm.stderr));
    let before = master.peak_rss_kib();
    let patch = vec![b'+'; 20 * 1024 * 1024];
    let job = job::encode(&job::Job {
        version: 5,
        jobid: "big".into(),
        branch: None,
        baserev: None,
        patch_level: 1,
        patch: Some(patch),
        repository: String::new(),
        project: String::new(),
        who: None,
        comment: None,
        builders: vec![],
        properties: Default::default(),
    });
    let output = master.ssh_with(&master.user_key, &current_user(), "try", &[], Some(&job));
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("larger than this master's limit of 10485760 bytes"),
        "{}",
        text(&output.stderr)
    );
    let grown_kib = master.peak_rss_kib().saturating_sub(before);
    assert!(
        grown_kib < 16 * 1024,
        "master peak RSS grew by {grown_kib} KiB for a 20 MiB job"
    );
    assert!(
        std::fs::read_dir(master.path().join("spool/new"))
            .expect("new")
            .next()
            .is_none()
    );
    assert!(
        std::fs::read_dir(master.path().join("spool/tmp"))
            .expect("tmp")
            .next()
            .is_none()
    );
}

#[test]
fn the_classic_tryserver_path_only_writes_into_the_spool() {
    let master = try_master(&["linux", "mac os"]);
    let sample = include_bytes!("../data/try-samples/job-v5-git.bin");
    let output = master.ssh_with(
        &master.user_key,
        &current_user(),
        "buildbot tryserver --jobdir spool",
        &[],
        Some(sample),
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        text(&output.stderr).contains("accepted as"),
        "{}",
        text(&output.stderr)
    );
    let output = master.ssh_with(
        &master.user_key,
        &current_user(),
        "/usr/bin/buildbot tryserver --jobdir=/tmp",
        &[],
        Some(sample),
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("is not this master's spool"),
        "{}",
        text(&output.stderr)
    );
    let job = the_claimed_job(&master);
    assert_eq!(
        job.builders,
        vec!["linux".to_string(), "mac os".to_string()]
    );
}

#[test]
fn the_spool_mode_bits_decide_who_may_try() {
    // A user of its own, whose group the spool is then given to (creating it needs root).
    let account = TempAccount::create("the_spool_mode_bits_decide_who_may_try");
    let user = account.user.as_str();
    let master = try_master(&["linux"]);
    master.authorize(user, &master.user_key.public_line);
    // The temp dir is private to root; the spool's ancestors must let the user through.
    std::fs::set_permissions(
        master.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let spool = master.path().join("spool");
    std::fs::set_permissions(&spool, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let sample = include_bytes!("../data/try-samples/job-v5-empty-diff.bin");
    let output = master.ssh_with(&master.user_key, user, "try", &[], Some(sample));
    assert_eq!(output.status.code(), Some(1));
    // Regression (issue 15): a fresh spool is root:root 0755, and the advice was "ask an admin
    // to add you to group root". It now says how to set up a try group.
    let stderr = text(&output.stderr);
    assert!(
        stderr.trim().starts_with(&format!(
            "buildbot: {user} may not submit try jobs (no write permission on the spool; the spool is shared with no try group yet: an admin sets one up with `buildbot create-master --try-group GROUP`"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("group root"), "{stderr}");
    // chgrp to the user's group and chmod 2770: now the user may try.
    nix::unistd::chown(&spool, None, Some(account.gid)).expect("chgrp");
    std::fs::set_permissions(&spool, std::os::unix::fs::PermissionsExt::from_mode(0o2770))
        .expect("chmod");
    let output = master.ssh_with(&master.user_key, user, "try", &[], Some(sample));
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        text(&output.stdout).contains("accepted as"),
        "{}",
        text(&output.stdout)
    );
}

/// The Python client, installed by scripts/test.sh into target/pyvenv (or named by
/// BUILDBOT_PY_CLIENT).
fn classic_client() -> PathBuf {
    if let Some(path) = std::env::var_os("BUILDBOT_PY_CLIENT") {
        return PathBuf::from(path);
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyvenv/bin/buildbot");
    assert!(
        path.is_file(),
        "the real Python Buildbot client is missing: run `bash scripts/test.sh` (it installs buildbot==4.3.0 into target/pyvenv) or set BUILDBOT_PY_CLIENT"
    );
    path
}

#[test]
fn the_real_python_buildbot_client_delivers_unchanged() {
    let client = classic_client();
    let master = try_master(&["linux", "mac"]);
    let checkout = Checkout::new();
    let mut command = Command::new(&client);
    command
        .args(["try", "--connect=ssh", "--vc=git", "--host", "127.0.0.1"])
        .args([
            "--port",
            &master.ssh_port.to_string(),
            "--username",
            &current_user(),
        ])
        .args([
            "--jobdir",
            "spool",
            "-b",
            "linux",
            "--who",
            "Alice",
            "--comment",
            "from python",
        ])
        .args(["--ssh", &master.ssh_for_try(&master.user_key)])
        .current_dir(&checkout.work);
    let output = run_with_timeout(command, None);
    assert!(
        output.status.success(),
        "stdout: {}\nstderr: {}",
        text(&output.stdout),
        text(&output.stderr)
    );
    assert!(
        text(&output.stdout).contains("job has been delivered"),
        "{}",
        text(&output.stdout)
    );
    let job = the_claimed_job(&master);
    assert_eq!(job.version, 5);
    assert_eq!(job.builders, vec!["linux".to_string()]);
    assert_eq!(job.who.as_deref(), Some(current_user().as_str()));
    assert_eq!(job.comment.as_deref(), Some("from python"));
    let upstream_head = git(&checkout.work, &["rev-parse", "origin/main"]);
    assert_eq!(job.baserev.as_deref(), Some(upstream_head.trim()));
    let patch = text(job.patch.as_deref().expect("patch"));
    assert!(patch.contains("+unstaged line"), "{patch}");
}
