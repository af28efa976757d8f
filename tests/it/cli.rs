//! The command line as a new user meets it: create-master, checkconfig, --help.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use crate::harness::{BIN, TestKey, run_with_timeout, text};

fn buildbot(args: &[&str]) -> std::process::Output {
    let mut command = Command::new(BIN);
    command.args(args);
    run_with_timeout(command, None)
}

#[test]
fn create_master_lays_out_a_master_and_refuses_to_overwrite_it() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("m");
    let dir_arg = dir.to_str().expect("utf-8 path");
    let output = buildbot(&["create-master", dir_arg]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        text(&output.stdout).contains("host key: SHA256:"),
        "{}",
        text(&output.stdout)
    );
    let mode = std::fs::metadata(dir.join("host_key"))
        .expect("host key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(dir.join("host_key.pub").is_file());
    assert!(dir.join("authorized_keys.d").is_dir());
    for sub in ["tmp", "new", "cur"] {
        assert!(dir.join("spool").join(sub).is_dir(), "spool/{sub}");
    }
    let config = std::fs::read_to_string(dir.join("master.toml")).expect("config");
    assert!(config.contains("# "), "the config is commented");
    let checked = buildbot(&["checkconfig", dir_arg]);
    assert!(checked.status.success(), "{}", text(&checked.stderr));

    let again = buildbot(&["create-master", dir_arg]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again.stderr).contains("refusing to overwrite"),
        "{}",
        text(&again.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("master.toml")).expect("config"),
        config
    );
    let forced = buildbot(&["create-master", "--force", dir_arg]);
    assert!(forced.status.success(), "{}", text(&forced.stderr));
}

#[test]
fn checkconfig_reports_each_problem_with_its_line() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("m");
    let dir_arg = dir.to_str().expect("utf-8 path");
    assert!(buildbot(&["create-master", dir_arg]).status.success());
    let key = TestKey::ed25519(tmp.path(), "s1");
    let config_path = dir.join("master.toml");
    let mut config = std::fs::read_to_string(&config_path).expect("config");
    let base_lines = config.lines().count();
    config.push_str(&format!(
        "\n[[slave]]\nname = \"s1\"\npublic_key = \"{}\"\n\
         [[slave]]\nname = \"s2\"\npublic_key = \"keys/s2.pub\"\n\
         [[builder]]\nname = \"linux\"\nslaves = [\"s1\", \"ghost\"]\nrepo = \"/srv/p.git\"\n\
         steps = [ {{ name = \"t\", command = \"true\", timeout = \"ten minutes\" }} ]\n",
        key.public_line
    ));
    std::fs::write(&config_path, config).expect("config written");
    let output = buildbot(&["checkconfig", dir_arg]);
    assert_eq!(output.status.code(), Some(1));
    let lines: Vec<String> = text(&output.stderr).lines().map(str::to_string).collect();
    let line = |offset: usize| base_lines + offset;
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(
        lines[0].starts_with(&format!("master.toml:{}: cannot read key file", line(7))),
        "{lines:?}"
    );
    assert!(
        lines[1].starts_with(&format!(
            "master.toml:{}: builder \"linux\" names slave \"ghost\"",
            line(10)
        )),
        "{lines:?}"
    );
    assert!(
        lines[2].starts_with(&format!(
            "master.toml:{}: bad duration \"ten minutes\"",
            line(12)
        )),
        "{lines:?}"
    );

    // An unknown key is reported with its line too.
    let mut config = std::fs::read_to_string(&config_path).expect("config");
    config = config.replace(
        "allow_root = false",
        "allow_root = false\nallow_rooot = true",
    );
    std::fs::write(&config_path, config.clone()).expect("config written");
    let output = buildbot(&["checkconfig", dir_arg]);
    assert_eq!(output.status.code(), Some(1));
    let wanted = config
        .lines()
        .position(|l| l.starts_with("allow_rooot"))
        .expect("line")
        + 1;
    assert!(
        text(&output.stderr).starts_with(&format!(
            "master.toml:{wanted}: unknown field `allow_rooot`"
        )),
        "{}",
        text(&output.stderr)
    );
}

/// Issue 15: checkconfig used to stop at the first unknown key, so fixing a file took one run
/// per typo.
#[test]
fn checkconfig_reports_three_typos_at_once() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("m");
    let dir_arg = dir.to_str().expect("utf-8 path");
    assert!(buildbot(&["create-master", dir_arg]).status.success());
    let config_path = dir.join("master.toml");
    let config = std::fs::read_to_string(&config_path)
        .expect("config")
        .replacen("allow_root = false", "alow_root = false", 1)
        .replacen("[http]", "[http]\nlisen = \"127.0.0.1:1\"", 1)
        .replacen("max_patch_bytes =", "max_patch_byte =", 1);
    std::fs::write(&config_path, &config).expect("config written");
    let line_of = |needle: &str| {
        config
            .lines()
            .position(|line| line.starts_with(needle))
            .unwrap_or_else(|| panic!("{needle} is in the config"))
            + 1
    };
    let output = buildbot(&["checkconfig", dir_arg]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    let lines: Vec<String> = text(&output.stderr).lines().map(str::to_string).collect();
    assert_eq!(
        lines,
        vec![
            format!(
                "master.toml:{}: unknown field `alow_root` in [sshd] (did you mean `allow_root`?)",
                line_of("alow_root")
            ),
            format!(
                "master.toml:{}: unknown field `lisen` in [http] (did you mean `listen`?)",
                line_of("lisen")
            ),
            format!(
                "master.toml:{}: unknown field `max_patch_byte` in [spool] (did you mean `max_patch_bytes`?)",
                line_of("max_patch_byte")
            ),
        ]
    );
}

#[test]
fn help_and_usage_errors() {
    let help = buildbot(&["--help"]);
    assert!(help.status.success());
    let help = text(&help.stdout);
    // Each command has its own line in the list (a bare `contains("master")` would be
    // satisfied by create-master).
    for command in ["create-master", "master", "checkconfig"] {
        assert!(
            help.lines()
                .any(|line| line.split_whitespace().next() == Some(command)),
            "{command} missing from --help: {help}"
        );
    }
    assert!(help.contains("Exit codes"), "{help}");
    let wrong = buildbot(&["create-master"]);
    assert_eq!(wrong.status.code(), Some(2));
    let missing = buildbot(&["master", "/nonexistent/master"]);
    assert_eq!(missing.status.code(), Some(1));
    let stderr = text(&missing.stderr);
    assert!(
        stderr.contains("cannot read /nonexistent/master/master.toml"),
        "{stderr}"
    );
}

/// Issue 15: man pages and completions come from the command line's own definition.
#[test]
fn generate_docs_writes_man_pages_and_completions() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let output = buildbot(&[
        "generate-docs",
        "--out",
        tmp.path().to_str().expect("utf-8"),
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let try_page =
        std::fs::read_to_string(tmp.path().join("man1/buildbot-try.1")).expect("try's man page");
    assert!(try_page.contains("master\\-host\\-key"), "{try_page}");
    // The page is named buildbot-master, the synopsis shows the command as it is typed.
    let master_page = std::fs::read_to_string(tmp.path().join("man1/buildbot-master.1"))
        .expect("master's man page");
    let synopsis = master_page
        .split(".SH SYNOPSIS")
        .nth(1)
        .and_then(|rest| rest.split(".SH").next())
        .unwrap_or_else(|| panic!("no SYNOPSIS: {master_page}"));
    assert!(synopsis.contains("buildbot master"), "{synopsis}");
    assert!(!synopsis.contains("buildbot\\-master"), "{synopsis}");
    assert!(
        master_page.contains("buildbot\\-master"),
        "the page keeps its name"
    );
    assert!(
        !tmp.path().join("man1/buildbot-apply-patch.1").exists(),
        "hidden commands have no page"
    );
    for file in ["buildbot.bash", "_buildbot", "buildbot.fish"] {
        let script = std::fs::read_to_string(tmp.path().join("completions").join(file))
            .unwrap_or_else(|err| panic!("{file}: {err}"));
        assert!(script.contains("create-master"), "{file}");
    }
}

/// Issue 15: `buildbot tryserver` says what is wrong with a job once, not twice.
#[test]
fn tryserver_reports_a_bad_job_once() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut command = Command::new(BIN);
    command.args(["tryserver", "--jobdir"]).arg(tmp.path());
    let output = run_with_timeout(command, Some(b"not a job"));
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert_eq!(stderr.matches("malformed netstring").count(), 1, "{stderr}");
}

/// `buildbot completions bash | head -1`: a reader that goes away early is no error.
#[test]
fn completions_to_a_closed_pipe_exit_quietly() {
    let mut child = Command::new(BIN)
        .args(["completions", "bash"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("buildbot starts");
    // Close the read end before the script is written: the write fails with EPIPE.
    drop(child.stdout.take());
    let output =
        crate::harness::output_with_deadline(child, "completions", crate::harness::PATIENCE);
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status,
        text(&output.stderr)
    );
    assert_eq!(text(&output.stderr), "", "nothing on stderr");
}

/// `buildbot land` in the wrong place says where the problem is in one line, before it looks
/// for a master: outside a checkout, and in a checkout that never fetched the target branch.
#[test]
fn land_outside_a_checkout_or_without_the_target_branch_says_which() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let run_in = |dir: &std::path::Path, args: &[&str]| {
        let mut command = Command::new(BIN);
        command.args(args).current_dir(dir);
        run_with_timeout(command, None)
    };
    let outside = run_in(tmp.path(), &["land"]);
    assert_eq!(outside.status.code(), Some(2), "a usage problem");
    let stderr = text(&outside.stderr);
    assert!(stderr.contains("is not in a git checkout"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    let repo = tmp.path().join("repo");
    std::fs::create_dir(&repo).expect("repo dir");
    crate::repo::git(&repo, &["init", "-q", "-b", "work"]);
    crate::repo::git(&repo, &["commit", "-q", "--allow-empty", "-m", "one"]);
    let unfetched = run_in(&repo, &["land", "--onto", "release"]);
    assert_eq!(unfetched.status.code(), Some(2), "a usage problem");
    let stderr = text(&unfetched.stderr);
    assert!(
        stderr.contains("there is no origin/release here"),
        "{stderr}"
    );
}
