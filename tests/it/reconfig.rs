//! Issue 15: `buildbot reconfig DIR` and SIGHUP put a new master.toml in force without a
//! restart; running builds and connections are kept, a broken file changes nothing.

use std::path::Path;
use std::process::{Command, Output};

use crate::harness::{
    BIN, MasterSetup, TestMaster, current_user, run_with_timeout, signal, text, wait_until,
};
use crate::repo::Checkout;

fn reconfig(master: &TestMaster) -> Output {
    let mut command = Command::new(BIN);
    command.arg("reconfig").arg(master.path());
    run_with_timeout(command, None)
}

fn edit_config(master: &TestMaster, edit: impl FnOnce(String) -> String) -> String {
    let path = master.path().join("master.toml");
    let config = std::fs::read_to_string(&path).expect("config");
    let edited = edit(config);
    std::fs::write(&path, &edited).expect("config written");
    edited
}

fn builder_names(master: &TestMaster) -> Vec<String> {
    master
        .api("/api/builders")
        .as_array()
        .expect("a list of builders")
        .iter()
        .filter_map(|builder| builder["name"].as_str().map(str::to_string))
        .collect()
}

/// A step that runs until `gate` exists (at most a minute), then succeeds.
fn gated_step(gate: &Path) -> String {
    format!(
        "{{ name = \"gated\", command = \"i=0; while [ ! -e {gate} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; test -e {gate}\" }},",
        gate = gate.display()
    )
}

#[test]
fn reconfig_adds_a_builder_and_removes_one_while_its_build_runs() {
    let checkout = Checkout::new();
    let gates = tempfile::tempdir().expect("temp dir");
    let gate = gates.path().join("go");
    let master = TestMaster::start_with(MasterSetup::linux_builder(
        &["s1"],
        &checkout.upstream,
        &gated_step(&gate),
    ));
    let _slave = master.start_slave("s1");
    let forced = master.user_ssh("force linux --reason first");
    assert_eq!(forced.status.code(), Some(0), "{}", text(&forced.stderr));
    let mut running = serde_json::Value::Null;
    wait_until("linux #1 to run", || {
        let builds = master.api("/api/builds?builder=linux");
        running = builds[0].clone();
        running["number"] == 1 && running["running"] == true
    });
    // A second request waits: s1 runs one build at a time.
    let queued = master.user_ssh("force linux --reason second");
    assert_eq!(queued.status.code(), Some(0), "{}", text(&queued.stderr));
    wait_until("the second request to be queued", || {
        master.api("/api/builders/linux")["queued"] == 1
    });

    // linux goes, mac comes (on the same slave).
    edit_config(&master, |config| {
        config
            .replace("name = \"linux\"", "name = \"mac\"")
            .replace("builders = [\"linux\"]", "builders = [\"mac\"]")
            + &format!(
                "\n[[builder]]\nname = \"linux-next\"\nslaves = [\"s1\"]\nrepo = \"{}\"\n\
             steps = [ {{ name = \"ok\", command = \"true\" }} ]\n",
                checkout.upstream.display()
            )
    });
    let output = reconfig(&master);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    for line in [
        "builder mac added",
        "builder linux-next added",
        "builder linux removed",
    ] {
        assert!(stdout.contains(line), "{line}: {stdout}");
    }
    assert!(
        stdout.starts_with("reconfig: the master applied master.toml (generation 1)"),
        "{stdout}"
    );
    assert_eq!(text(&output.stderr), "", "no restart-only change was made");
    let names = builder_names(&master);
    assert!(names.contains(&"mac".to_string()), "{names:?}");
    assert!(!names.contains(&"linux".to_string()), "{names:?}");
    // The queued request of the removed builder is cancelled, with the reason.
    wait_until("the queued linux request to be cancelled", || {
        master
            .log()
            .contains("builder linux was removed from the configuration")
    });

    // The running build goes on, and is recorded when it ends.
    std::fs::write(&gate, "").expect("gate opened");
    let id = running["id"].clone();
    wait_until("the removed builder's build to finish", || {
        master.api(&format!("/api/builds/{id}"))["result"] == "success"
    });
    let forced = master.user_ssh("force mac --reason new");
    assert_eq!(forced.status.code(), Some(0), "{}", text(&forced.stderr));
    wait_until("mac #1 to succeed", || {
        let builds = master.api("/api/builds?builder=mac");
        builds[0]["number"] == 1 && builds[0]["result"] == "success"
    });
}

#[test]
fn a_broken_file_keeps_the_old_config_and_reconfig_says_why() {
    let checkout = Checkout::new();
    let master = TestMaster::start_with(MasterSetup::linux_builder(
        &["s1"],
        &checkout.upstream,
        r#"{ name = "ok", command = "true" },"#,
    ));
    let broken = edit_config(&master, |config| {
        config
            .replace(
                "[[builder]]\nname = \"linux\"",
                "[[builder]]\nname = \"mac\"\nslavs = []",
            )
            .replace("builders = [\"linux\"]", "builders = [\"mac\"]")
    });
    let line = broken
        .lines()
        .position(|line| line.starts_with("slavs"))
        .expect("the typo is in the file")
        + 1;
    let output = reconfig(&master);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stdout));
    let stderr = text(&output.stderr);
    assert!(
        stderr.starts_with(&format!(
            "master.toml:{line}: unknown field `slavs` in [[builder]] 1 (did you mean `slaves`?)\n"
        )),
        "{stderr}"
    );
    assert_eq!(builder_names(&master), vec!["linux".to_string()]);

    // The master checks the file itself too: a SIGHUP with the broken file changes nothing,
    // and its answer names the problem.
    signal(master.pid(), nix::sys::signal::Signal::SIGHUP);
    let mut result = serde_json::Value::Null;
    wait_until("the master to answer the SIGHUP", || {
        result = std::fs::read_to_string(master.path().join("reconfig.result"))
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        result["attempt"] == 1
    });
    assert_eq!(result["ok"], false, "{result}");
    assert_eq!(result["generation"], 0, "{result}");
    assert!(
        result["errors"][0]
            .as_str()
            .is_some_and(|error| error.contains("unknown field `slavs`")),
        "{result}"
    );
    assert_eq!(builder_names(&master), vec!["linux".to_string()]);

    // A listener cannot move without a restart: said, and kept.
    edit_config(&master, |config| {
        config.replace("slavs = []\n", "").replace(
            &format!("listen = \"127.0.0.1:{}\"", master.ssh_port),
            "listen = \"127.0.0.1:1\"",
        )
    });
    let output = reconfig(&master);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(
        text(&output.stderr),
        format!(
            "master.toml: [sshd] listen change needs a restart; kept 127.0.0.1:{}\n",
            master.ssh_port
        )
    );
    assert_eq!(builder_names(&master), vec!["mac".to_string()]);
    assert!(
        master.user_ssh("watch").status.success(),
        "still on its port"
    );
}

#[test]
fn sighup_reloads_the_config_and_access_settings_apply_to_new_logins() {
    let checkout = Checkout::new();
    let mut setup = MasterSetup::linux_builder(
        &["s1"],
        &checkout.upstream,
        r#"{ name = "ok", command = "true" },"#,
    );
    setup.allow_root = false;
    let master = TestMaster::start_with(setup);
    let as_root = current_user() == "root";
    if as_root {
        let refused = master.user_ssh("watch");
        assert!(!refused.status.success(), "root needs allow_root");
    }
    edit_config(&master, |config| {
        config.replace("allow_root = false", "allow_root = true")
            + &format!(
                "\n[[builder]]\nname = \"mac\"\nslaves = [\"s1\"]\nrepo = \"{}\"\n",
                checkout.upstream.display()
            )
    });
    signal(master.pid(), nix::sys::signal::Signal::SIGHUP);
    wait_until("mac to appear", || {
        builder_names(&master).contains(&"mac".to_string())
    });
    let watched = master.user_ssh("watch");
    assert!(watched.status.success(), "{}", text(&watched.stderr));
    // The master is still the same process, and a reconfig can follow.
    let output = reconfig(&master);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(
        text(&output.stdout).contains("(generation 2)"),
        "{}",
        text(&output.stdout)
    );
}

#[test]
fn a_slave_removed_from_the_config_finishes_its_build_is_disconnected_and_may_come_back() {
    let checkout = Checkout::new();
    let gates = tempfile::tempdir().expect("temp dir");
    let gate = gates.path().join("go");
    let master = TestMaster::start_with(MasterSetup::linux_builder(
        &["s1", "s2"],
        &checkout.upstream,
        &gated_step(&gate),
    ));
    let s1 = master.start_slave("s1");
    let mut s2 = master.start_slave("s2");
    // Two builds: one on each slave of the pool.
    for reason in ["one", "two"] {
        let forced = master.user_ssh(&format!("force linux --reason {reason}"));
        assert_eq!(forced.status.code(), Some(0), "{}", text(&forced.stderr));
    }
    wait_until("both builds to run", || {
        let builds = master.api("/api/builds?builder=linux");
        builds[0]["running"] == true && builds[1]["running"] == true
    });
    let builds = master.api("/api/builds?builder=linux");
    let on_s2 = builds
        .as_array()
        .expect("a list of builds")
        .iter()
        .find(|build| build["slave"] == "s2")
        .unwrap_or_else(|| panic!("a build on s2: {builds}"))["id"]
        .clone();

    let original = edit_config(&master, |config| config);
    edit_config(&master, |config| {
        let start = config
            .find("[[slave]]\nname = \"s2\"")
            .expect("the s2 block");
        let end = start
            + config[start..]
                .find("public_key")
                .and_then(|key| config[start + key..].find('\n').map(|eol| key + eol + 1))
                .expect("the end of the s2 block");
        let mut edited = config.clone();
        edited.replace_range(start..end, "");
        edited.replace("slaves = [\"s1\", \"s2\"]", "slaves = [\"s1\"]")
    });
    let output = reconfig(&master);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(
        text(&output.stdout).contains("slave s2 removed"),
        "{}",
        text(&output.stdout)
    );
    // s2 keeps its connection while it builds.
    assert!(s2.is_running());
    assert!(master.log().contains("slave s2 removed"));
    std::fs::write(&gate, "").expect("gate opened");
    wait_until("s2's build to be recorded", || {
        master.api(&format!("/api/builds/{on_s2}"))["result"] == "success"
    });
    // Then the master closes it, and its key no longer logs in.
    wait_until("s2 to be refused", || {
        master
            .log()
            .lines()
            .any(|line| line.contains("refused login: no unix account s2"))
    });
    // Added back, it may connect again (it has kept trying).
    edit_config(&master, |_| original);
    let output = reconfig(&master);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(
        text(&output.stdout).contains("slave s2 added"),
        "{}",
        text(&output.stdout)
    );
    master.wait_connected("s2");
    drop(s1);
}
