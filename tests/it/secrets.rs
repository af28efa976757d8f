//! Secrets: a builder's steps get them as environment variables, a build of a user's patch
//! never does, and no form of a secret's value reaches the stored log, the API or the pages.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::harness::{
    BIN, MasterSetup, TestMaster, current_user, http_client, run_with_timeout, text, wait_until,
};
use crate::repo::Checkout;

const TOKEN: &str = "tok-9f8e7d6c5b4a/+=secret";

fn secret_file(dir: &Path, mode: u32) -> std::path::PathBuf {
    let path = dir.join("deploy_token");
    std::fs::write(&path, format!("{TOKEN}\n")).expect("secret written");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    path
}

/// One step prints the token plainly, split across two writes with a pause between them (two
/// output frames), base64'd at two alignments and URL-encoded; and says whether it had one.
const STEP: &str = r#"{ name = "leak", command = "echo \"has=[${DEPLOY_TOKEN:+given}]\"; printf 'plain %s\n' \"$DEPLOY_TOKEN\"; printf '%s' \"$DEPLOY_TOKEN\" | head -c 7; sleep 0.5; printf '%s\n' \"$DEPLOY_TOKEN\" | tail -c +8; printf '%s' \"$DEPLOY_TOKEN\" | base64 -w0; echo; printf 'ab%s' \"$DEPLOY_TOKEN\" | base64 -w0; echo; printf '%s\n' \"$DEPLOY_TOKEN\" | sed 's|/|%2F|g; s|+|%2B|g; s|=|%3D|g'" },"#;

fn get(master: &TestMaster, path: &str) -> String {
    let url = format!("http://127.0.0.1:{}{path}", master.http_port);
    let response = http_client()
        .get(&url)
        .send()
        .unwrap_or_else(|err| panic!("GET {url}: {err}"));
    assert_eq!(response.status().as_u16(), 200, "GET {url}");
    response.text().expect("body")
}

fn assert_clean(what: &str, text: &str) {
    use base64::Engine as _;
    let forms = [
        TOKEN.to_string(),
        base64::engine::general_purpose::STANDARD.encode(TOKEN)[..30].to_string(),
        "tok-9f8e".to_string(),
        "%2f%2B".to_string(),
        "%2F%2B".to_string(),
        "A==".to_string(),
    ];
    for form in forms {
        assert!(!text.contains(&form), "{what} shows {form:?}:\n{text}");
    }
}

#[test]
fn a_builders_steps_get_its_secret_and_no_form_of_it_is_ever_shown() {
    let secrets = tempfile::tempdir().expect("temp dir");
    let file = secret_file(secrets.path(), 0o600);
    let checkout = Checkout::new();
    let mut setup = MasterSetup::linux_builder(&["s1"], &checkout.upstream, STEP);
    setup.edits.push((
        "branch = \"main\"\nsteps",
        "branch = \"main\"\nsecrets = [\"deploy_token\"]\nsteps",
    ));
    setup.extra_config.push_str(&format!(
        "\n[[secret]]\nname = \"deploy_token\"\nfile = \"{}\"\n",
        file.display()
    ));
    let master = TestMaster::start_with(setup);
    let _slave = master.start_slave("s1");

    let forced = master.ssh(
        &master.user_key,
        &current_user(),
        "force linux --reason deploy",
    );
    assert!(forced.status.success(), "{}", text(&forced.stderr));
    wait_until("linux #1 to finish", || {
        let build = master.newest_build("linux");
        build["number"] == 1 && build["running"] == false
    });
    let log_path = master.path().join("logs/linux/1/2-leak.stdout");
    let log = std::fs::read_to_string(&log_path).expect("step log");
    assert!(log.contains("has=[given]"), "the step got no secret: {log}");
    assert_clean("the stored log", &log);
    // The plain line, the one split across two writes, two base64 forms and the URL form.
    assert_eq!(
        log.matches("[secret deploy_token]").count(),
        5,
        "every form is replaced: {log}"
    );
    assert!(log.contains("plain [secret deploy_token]\n"), "{log}");
    assert_clean("/api/builds", &get(&master, "/api/builds?builder=linux"));
    assert_clean("the build page", &get(&master, "/builders/linux/builds/1"));
    let raw = get(&master, "/builders/linux/builds/1/steps/2/logs/stdout/raw");
    assert_eq!(raw, log, "the web serves the redacted log");
    assert_clean(
        "the log page",
        &get(&master, "/builders/linux/builds/1/steps/2/logs/stdout"),
    );

    // A try job runs the user's code: the same builder gives it nothing.
    let tried = run_with_timeout(master.try_command(&checkout.work, "linux", true), None);
    assert!(
        tried.status.success(),
        "{}\n{}",
        text(&tried.stdout),
        text(&tried.stderr)
    );
    let log = std::fs::read_to_string(master.path().join("logs/linux/2/2-leak.stdout"))
        .expect("try step log");
    assert!(log.contains("has=[]"), "a try build got the secret: {log}");
    assert_clean("the try build's log", &log);
}

#[test]
fn a_secret_file_others_may_read_is_refused_with_one_line() {
    let secrets = tempfile::tempdir().expect("temp dir");
    let file = secret_file(secrets.path(), 0o644);
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("m");
    let created = run_with_timeout(
        {
            let mut command = Command::new(BIN);
            command.arg("create-master").arg(&dir);
            command
        },
        None,
    );
    assert!(created.status.success(), "{}", text(&created.stderr));
    let config_path = dir.join("master.toml");
    let mut config = std::fs::read_to_string(&config_path).expect("config");
    config.push_str(&format!(
        "\n[[secret]]\nname = \"deploy_token\"\nfile = \"{}\"\n",
        file.display()
    ));
    std::fs::write(&config_path, &config).expect("config written");
    let checked = run_with_timeout(
        {
            let mut command = Command::new(BIN);
            command.arg("checkconfig").arg(&dir);
            command
        },
        None,
    );
    assert_eq!(checked.status.code(), Some(1), "{}", text(&checked.stdout));
    let stderr = text(&checked.stderr);
    let line = config.lines().count();
    let expected = format!(
        "master.toml:{line}: secret \"deploy_token\": {}: readable or writable by group or others (mode 0644); chmod 600 it",
        file.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.contains("deploy_token"))
            .count(),
        1,
        "{stderr}"
    );
}
