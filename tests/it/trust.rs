//! The attacks of issue #22 on the trust between users, each against a real master with
//! throwaway unix users: a try user, an operator, and a user whose rights are taken away while
//! connected. Each test also shows the honest case working, so a refusal is no accident.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use crate::harness::{
    MasterSetup, TempAccount, TestKey, TestMaster, current_user, run_with_timeout, text, wait_until,
};
use crate::repo::{Checkout, git};

/// `gpasswd -a/-d USER GROUP`, retried while another test holds the group file's lock.
fn gpasswd(flag: &str, user: &str, group: &str) {
    let mut last = String::new();
    for _ in 0..50 {
        let mut command = Command::new("gpasswd");
        command.args([flag, user, group]);
        let output = run_with_timeout(command, None);
        if output.status.success() {
            return;
        }
        last = text(&output.stderr);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("gpasswd {flag} {user} {group}: {last}");
}

/// Shares the master's spool with `group` as `create-master --try-group` does, and lets
/// others through the master directory to it.
fn share_spool(master: &TestMaster, group: &TempAccount) {
    let chmod = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod")
    };
    chmod(master.path(), 0o755);
    let spool = master.path().join("spool");
    for sub in ["", "tmp", "new"] {
        let dir = spool.join(sub);
        nix::unistd::chown(&dir, None, Some(group.gid)).expect("chgrp");
        chmod(&dir, 0o3770);
    }
}

/// A user with a key the master knows.
struct User {
    account: TempAccount,
    key: TestKey,
}

impl User {
    fn new(master: &TestMaster, why: &str) -> User {
        let account = TempAccount::create(why);
        let key = TestKey::ed25519(master.keys_dir.path(), &account.user);
        master.authorize(&account.user, &key.public_line);
        User { account, key }
    }

    fn name(&self) -> &str {
        &self.account.user
    }

    fn ssh(&self, master: &TestMaster, command: &str) -> Output {
        master.ssh(&self.key, self.name(), command)
    }

    /// A try job for `builder` of the upstream's main, claiming to be `who`.
    fn try_job(
        &self,
        master: &TestMaster,
        builder: &str,
        who: &str,
        patch: Option<&[u8]>,
    ) -> Output {
        let job = buildbot::tryjob::encode(&buildbot::tryjob::Job {
            version: 5,
            jobid: format!("{}-{}", self.name(), rand_suffix()),
            branch: Some("main".into()),
            baserev: None,
            patch_level: 1,
            patch: patch.map(<[u8]>::to_vec),
            repository: String::new(),
            project: String::new(),
            who: Some(who.into()),
            comment: None,
            builders: vec![builder.into()],
            properties: Default::default(),
        });
        master.ssh_with(&self.key, self.name(), "try", &[], Some(&job))
    }
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64)
}

fn refused(output: &Output, mentions: &str) {
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    assert!(stderr.contains(mentions), "{stderr}");
}

fn ok(output: &Output) -> String {
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    text(&output.stdout)
}

/// A farm: `linux` (try and force, slave s1, a long step) and the trusted `deploy` (slave
/// s2, built from changes on main), try users in group `tryers`, operators in `ops`.
struct Farm {
    master: TestMaster,
    checkout: Checkout,
    tryers: TempAccount,
    ops: TempAccount,
}

fn farm(why: &str, extra: &str) -> Farm {
    let checkout = Checkout::new();
    let tryers = TempAccount::create(why);
    let ops = TempAccount::create(why);
    let mut setup = MasterSetup {
        slaves: vec!["s1".into(), "s2".into()],
        ..MasterSetup::default()
    };
    setup.extra_config = format!(
        "\n[[builder]]\nname = \"linux\"\nslaves = [\"s1\"]\nrepo = \"{repo}\"\nsteps = [ {{ name = \"sleep\", command = \"sleep 600\" }} ]\n\
         \n[[builder]]\nname = \"deploy\"\nslaves = [\"s2\"]\nrepo = \"{repo}\"\ntrusted = true\nsteps = [ {{ name = \"deploy\", command = \"true\" }} ]\n\
         \n[[scheduler]]\nkind = \"try\"\nbuilders = [\"linux\", \"deploy\"]\n\
         \n[[scheduler]]\nkind = \"force\"\nbuilders = [\"linux\"]\n\
         \n[[scheduler]]\nkind = \"branch\"\nname = \"deploys\"\nbuilders = [\"deploy\"]\nbranches = [\"main\"]\ntree_stable_timer = \"1s\"\n\
         \n[changes]\ngroup = \"{tryers}\"\n{extra}",
        repo = checkout.upstream.display(),
        tryers = tryers.group,
    );
    let operators: &'static str =
        Box::leak(format!("name = \"example\"\noperators = \"{}\"", ops.group).into_boxed_str());
    setup.edits.push(("name = \"example\"", operators));
    let master = TestMaster::start_with(setup);
    share_spool(&master, &tryers);
    Farm {
        master,
        checkout,
        tryers,
        ops,
    }
}

/// The newest build of `builder`, or null while it has none.
fn requests(master: &TestMaster) -> Vec<serde_json::Value> {
    master
        .api("/api/requests")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn owners_act_on_their_own_builds_operators_on_all_and_rebuild_obeys_the_force_rules() {
    let why = "owners_act_on_their_own_builds_operators_on_all";
    let farm = farm(why, "");
    let master = &farm.master;
    let alice = User::new(master, why);
    let mallory = User::new(master, why);
    let oscar = User::new(master, why);
    gpasswd("-a", alice.name(), &farm.tryers.group);
    gpasswd("-a", mallory.name(), &farm.tryers.group);
    gpasswd("-a", oscar.name(), &farm.ops.group);
    let _s1 = master.start_slave("s1");
    let _s2 = master.start_slave("s2");

    // A deploy of main, from a change alice (a pusher) sends.
    let head = git(&farm.checkout.upstream, &["rev-parse", "main"]);
    let change = format!(
        r#"{{"repository": "{}", "branch": "main", "revision": "{}"}}"#,
        farm.checkout.upstream.display(),
        head.trim()
    );
    let sent = master.ssh_with(
        &alice.key,
        alice.name(),
        "sendchange",
        &[],
        Some(change.as_bytes()),
    );
    ok(&sent);
    wait_until("deploy #1 to finish", || {
        let build = master.newest_build("deploy");
        build["number"] == 1 && build["running"] == false
    });
    // Item 2: no force scheduler lists deploy, so nobody re-runs an old deploy by rebuilding it.
    refused(
        &mallory.ssh(master, "rebuild deploy 1 --reason again"),
        "deploy may not be forced",
    );
    // Patch builds never run on a trusted builder.
    refused(
        &alice.try_job(master, "deploy", "alice", None),
        "deploy is a trusted builder",
    );

    // Item 10: the "who" of a try job is the authenticated user, not what the job says.
    ok(&alice.try_job(master, "linux", mallory.name(), None));
    wait_until("linux #1 to run", || {
        master.newest_build("linux")["running"] == true
    });
    let build = master.api_last_build("linux");
    let detail = master.api(&format!("/api/builds/{}", build["id"]));
    assert_eq!(detail["who"], alice.name(), "{detail}");

    // Someone else's build: mallory may neither stop it nor pause its slave.
    refused(
        &mallory.ssh(master, "stop linux 1 --reason mine-now"),
        "only its owner and operators may",
    );
    refused(&mallory.ssh(master, "pause-slave s1"), "only operators may");
    // A forced build of mallory's own waits behind alice's; alice may not cancel it.
    let forced = ok(&mallory.ssh(master, "force linux --reason mine"));
    let request_id = forced
        .trim()
        .rsplit(' ')
        .next()
        .expect("request id")
        .to_string();
    refused(
        &alice.ssh(master, &format!("cancel linux {request_id}")),
        "only its owner and operators may",
    );
    // The owner may; the operator may act on anyone's.
    ok(&mallory.ssh(master, &format!("cancel linux {request_id}")));
    ok(&oscar.ssh(master, "pause-slave s1"));
    ok(&oscar.ssh(master, "unpause-slave s1"));
    let stopped = ok(&alice.ssh(master, "stop linux 1 --reason done"));
    assert!(stopped.contains("stopped by"), "{stopped}");
}

#[test]
fn rights_taken_away_end_on_an_open_connection() {
    let why = "rights_taken_away_end_on_an_open_connection";
    let farm = farm(why, "");
    let master = &farm.master;
    let alice = User::new(master, why);
    gpasswd("-a", alice.name(), &farm.tryers.group);
    // One SSH connection, kept open (OpenSSH connection sharing): later commands ride on it
    // without logging in again.
    let control = tempfile::tempdir().expect("temp dir");
    let socket = control.path().join("c");
    let path_option = format!("ControlPath={}", socket.display());
    let options = [
        "-o",
        "ControlMaster=auto",
        "-o",
        path_option.as_str(),
        "-o",
        "ControlPersist=120",
    ];
    let force = || {
        master.ssh_with(
            &alice.key,
            alice.name(),
            "force linux --reason r",
            &options,
            None,
        )
    };
    ok(&force());
    assert!(socket.exists(), "the shared connection is open");

    gpasswd("-d", alice.name(), &farm.tryers.group);
    let mut last = String::new();
    wait_until("the removed user's next action to be refused", || {
        let output = force();
        last = text(&output.stderr);
        output.status.code() == Some(1)
    });
    assert!(last.contains("may not force builds"), "{last}");
    assert!(socket.exists(), "still the same connection");

    // A key taken out of the user's file ends the connection it opened.
    master.authorize(alice.name(), "");
    let output = master.ssh_with(&alice.key, alice.name(), "watch", &options, None);
    // The refusal line races the disconnect through OpenSSH's connection sharing (the shared
    // master may exit before it relays the line), so the master's log is the witness.
    assert!(!output.status.success(), "{}", text(&output.stdout));
    assert!(output.stdout.is_empty(), "{}", text(&output.stdout));
    wait_until("the master to log why it closed the connection", || {
        master
            .log()
            .contains("closing a connection whose login no longer holds")
    });
    wait_until("the shared connection to be closed by the master", || {
        let mut check = Command::new("ssh");
        check.args(["-o", &path_option, "-O", "check", "x"]);
        !run_with_timeout(check, None).status.success()
    });
}

#[test]
fn sendchange_is_off_unless_configured_and_a_revision_must_be_on_its_branch() {
    let why = "sendchange_is_off_unless_configured";
    // Without [changes] group nobody may send changes, not even root.
    let plain = TestMaster::start();
    let change = br#"{"repository": "/r.git", "branch": "main", "revision": "0123456789abcdef"}"#;
    refused(
        &plain.ssh_with(
            &plain.user_key,
            &current_user(),
            "sendchange",
            &[],
            Some(change),
        ),
        "takes no changes over SSH",
    );
    drop(plain);

    let farm = farm(why, "");
    let master = &farm.master;
    let alice = User::new(master, why);
    gpasswd("-a", alice.name(), &farm.tryers.group);
    // A commit on a release branch, labelled "main", would make deploy build it.
    let work = &farm.checkout.work;
    std::fs::write(work.join("release.txt"), "release only\n").expect("write");
    git(work, &["add", "release.txt"]);
    git(work, &["commit", "-q", "-m", "release only"]);
    git(work, &["push", "-q", "origin", "HEAD:refs/heads/release"]);
    let release = git(work, &["rev-parse", "HEAD"]);
    let send = |revision: &str| {
        let change = format!(
            r#"{{"repository": "{}", "branch": "main", "revision": "{}"}}"#,
            farm.checkout.upstream.display(),
            revision.trim()
        );
        master.ssh_with(
            &alice.key,
            alice.name(),
            "sendchange",
            &[],
            Some(change.as_bytes()),
        )
    };
    refused(&send(&release), "is not on branch main");
    let main = git(&farm.checkout.upstream, &["rev-parse", "main"]);
    assert_eq!(ok(&send(&main)), "change 1 accepted\n");
}

#[test]
fn quotas_bulk_cancel_and_submodule_urls() {
    let why = "quotas_bulk_cancel_and_submodule_urls";
    let farm = farm(why, "\n[limits]\nmax_queued_per_user = 3\n");
    let master = &farm.master;
    let alice = User::new(master, why);
    let mallory = User::new(master, why);
    let oscar = User::new(master, why);
    gpasswd("-a", alice.name(), &farm.tryers.group);
    gpasswd("-a", mallory.name(), &farm.tryers.group);
    gpasswd("-a", oscar.name(), &farm.ops.group);
    // No slave runs: everything waits in the queue.
    for _ in 0..3 {
        ok(&mallory.ssh(master, "force linux --reason flood"));
    }
    refused(
        &mallory.ssh(master, "force linux --reason flood"),
        "at most 3 may wait per user",
    );
    refused(
        &mallory.try_job(master, "linux", "mallory", None),
        "at most 3 may wait per user",
    );
    // Another user is not held up by mallory's quota.
    ok(&alice.ssh(master, "force linux --reason mine"));
    // Bulk cancel is for operators.
    refused(
        &mallory.ssh(master, "cancel linux --all"),
        "only operators may",
    );
    let cancelled = ok(&oscar.ssh(
        master,
        &format!("cancel linux --all --user {}", mallory.name()),
    ));
    assert_eq!(cancelled, "linux: 3 queued requests cancelled\n");
    wait_until("mallory's requests to be cancelled", || {
        !requests(master)
            .iter()
            .any(|request| request["who"] == mallory.name())
    });
    ok(&mallory.ssh(master, "force linux --reason again"));

    // A job written into the spool directly (the classic `tryserver --jobdir`, run as alice)
    // is alice's, whatever name it carries.
    let job = buildbot::tryjob::encode(&buildbot::tryjob::Job {
        version: 5,
        jobid: "written-by-alice".into(),
        branch: Some("main".into()),
        baserev: None,
        patch_level: 1,
        patch: None,
        repository: String::new(),
        project: String::new(),
        who: Some(mallory.name().into()),
        comment: None,
        builders: vec!["linux".into()],
        properties: Default::default(),
    });
    let mut tryserver = Command::new("runuser");
    tryserver
        .args([
            "-u",
            alice.name(),
            "--",
            crate::harness::BIN,
            "tryserver",
            "--jobdir",
        ])
        .arg(master.path().join("spool"));
    ok(&run_with_timeout(tryserver, Some(&job)));
    wait_until("the spooled job to be recorded as alice's", || {
        requests(master)
            .iter()
            .any(|request| request["who"] == alice.name() && request["kind"] == "try")
    });
    // Mallory's only waiting request is the build mallory forced.
    let mallorys: Vec<_> = requests(master)
        .into_iter()
        .filter(|request| request["who"] == mallory.name())
        .collect();
    assert_eq!(mallorys.len(), 1, "{mallorys:?}");
    assert_eq!(mallorys[0]["kind"], "force", "{mallorys:?}");

    // Item 8: a patch that points a submodule elsewhere is refused at the master.
    let patch = b"diff --git a/.gitmodules b/.gitmodules\nnew file mode 100644\n--- /dev/null\n+++ b/.gitmodules\n@@ -0,0 +1,3 @@\n+[submodule \"lib\"]\n+\tpath = lib\n+\turl = https://evil.example/lib.git\n";
    refused(
        &alice.try_job(master, "linux", "alice", Some(patch)),
        "changes a submodule URL in .gitmodules",
    );
}

/// A session cookie for `user` (`ssh master web-login`, then the link it prints).
fn web_cookie(master: &TestMaster, user: &User) -> String {
    let login = ok(&user.ssh(master, "web-login"));
    let url = login
        .lines()
        .next()
        .expect("a login URL")
        .trim()
        .to_string();
    let client = reqwest::blocking::Client::builder()
        .timeout(crate::harness::PATIENCE)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let response = client.get(&url).send().expect("login");
    assert_eq!(response.status().as_u16(), 303, "{url}");
    response.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .split(';')
        .next()
        .expect("pair")
        .to_string()
}

#[test]
fn a_private_farm_shows_nothing_to_visitors_and_patches_only_to_their_owner() {
    let why = "a_private_farm_shows_nothing_to_visitors";
    let checkout = Checkout::new();
    let tryers = TempAccount::create(why);
    let mut setup = MasterSetup::linux_builder(
        &["s1"],
        &checkout.upstream,
        r#"{ name = "sleep", command = "sleep 600" },"#,
    );
    setup.edits.push(("[http]\n", "[http]\npublic = false\n"));
    let master = TestMaster::start_with(setup);
    share_spool(&master, &tryers);
    let alice = User::new(&master, why);
    let mallory = User::new(&master, why);
    gpasswd("-a", alice.name(), &tryers.group);
    gpasswd("-a", mallory.name(), &tryers.group);
    // Not start_slave: it asks the (now private) API whether the slave is connected.
    let _s1 = master.launch_slave("s1", |_| {});
    let patch = b"diff --git a/secret.txt b/secret.txt\nnew file mode 100644\n--- /dev/null\n+++ b/secret.txt\n@@ -0,0 +1 @@\n+not public yet\n";
    ok(&alice.try_job(&master, "linux", "alice", Some(patch)));

    let client = crate::harness::http_client();
    let get = |path: &str, cookie: Option<&str>| {
        let mut request = client.get(format!("http://127.0.0.1:{}{path}", master.http_port));
        if let Some(cookie) = cookie {
            request = request.header("Cookie", cookie);
        }
        let response = request.send().expect("request");
        let status = response.status().as_u16();
        (status, response.text().unwrap_or_default())
    };
    // Visitors: nothing, not the pages, not the API, not the metrics.
    for path in ["/", "/slaves", "/api/builds", "/api/slaves", "/metrics"] {
        let (status, body) = get(path, None);
        assert_eq!(status, 401, "{path}: {body}");
        assert!(body.contains("web-login"), "{path}: {body}");
    }
    let alice_cookie = web_cookie(&master, &alice);
    let mallory_cookie = web_cookie(&master, &mallory);
    wait_until("linux #1 to start", || {
        get("/api/builds?builder=linux", Some(&alice_cookie))
            .1
            .contains("\"number\":1")
    });
    let patch_path = "/builders/linux/builds/1/patch";
    let (status, body) = get(patch_path, Some(&alice_cookie));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("not public yet"), "{body}");
    // Another try user is signed in, sees the farm, but not alice's patch.
    assert_eq!(get("/", Some(&mallory_cookie)).0, 200);
    let (status, body) = get(patch_path, Some(&mallory_cookie));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("only its owner and operators"), "{body}");

    // Item 3: an account deleted ends its open web session within seconds.
    let mut last = String::new();
    let mut deleted = false;
    for _ in 0..50 {
        let mut userdel = Command::new("userdel");
        userdel.arg(mallory.name());
        let output = run_with_timeout(userdel, None);
        if output.status.success() {
            deleted = true;
            break;
        }
        last = text(&output.stderr);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(deleted, "userdel {}: {last}", mallory.name());
    wait_until("the deleted user's session to end", || {
        get("/", Some(&mallory_cookie)).0 == 401
    });
    assert_eq!(get("/", Some(&alice_cookie)).0, 200);
}

#[test]
fn a_lock_is_held_no_longer_than_max_lock_hold() {
    let checkout = Checkout::new();
    let mut setup = MasterSetup::linux_builder(
        &["s1"],
        &checkout.upstream,
        r#"{ name = "hog", command = "sleep 600" },"#,
    );
    setup.extra_config.push_str(
        "\n[[lock]]\nname = \"db\"\nkind = \"master\"\n\n[limits]\nmax_lock_hold = \"3s\"\n",
    );
    setup.edits.push((
        "branch = \"main\"\nsteps",
        "branch = \"main\"\nlocks = [ { lock = \"db\" } ]\nsteps",
    ));
    let master = TestMaster::start_with(setup);
    let _s1 = master.start_slave("s1");
    ok(&master.ssh(
        &master.user_key,
        &current_user(),
        "force linux --reason hog",
    ));
    wait_until("the lock holder to be stopped at the limit", || {
        let build = master.newest_build("linux");
        build["number"] == 1 && build["running"] == false
    });
    let build = master.newest_build("linux");
    assert_eq!(build["result"], "interrupted", "{build}");
    let detail = master.api(&format!("/api/builds/{}", build["id"]));
    assert!(detail.to_string().contains("max_lock_hold"), "{detail}");
}

/// Issue 22, item 3: a removed key ends the connections it opened even when they send no new
/// command: a `watch --follow` that runs for ever is closed by the master, and so is a
/// connection of a user whose account is deleted.
#[test]
fn a_removed_key_ends_a_running_watch_without_a_new_command() {
    let why = "a_removed_key_ends_a_running_watch";
    let farm = farm(why, "");
    let master = &farm.master;
    let alice = User::new(master, why);
    let mut watch = master.ssh_command(&alice.key, alice.name(), &[]);
    watch
        .arg("watch --follow")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = watch.spawn().expect("ssh runs");
    // The watch runs once it has printed the status: read it line by line meanwhile.
    let stdout = child.stdout.take().expect("piped stdout");
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = lines
        .recv_timeout(crate::harness::PATIENCE)
        .expect("the watch prints the status first");
    assert!(first.contains("builders"), "{first}");
    // Nothing else happens on the connection: only the key file changes.
    master.authorize(alice.name(), "");
    let status = crate::harness::wait_with_deadline(
        &mut child,
        "the watch of a user whose key was removed",
        crate::harness::PATIENCE,
    );
    assert!(!status.success(), "{status:?}");
    let output = Output {
        status,
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    assert!(!output.status.success(), "{}", text(&output.stdout));
    assert!(
        master
            .log()
            .contains("closing a connection whose login no longer holds"),
        "{}",
        master.log()
    );
}
