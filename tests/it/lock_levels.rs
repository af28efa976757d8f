//! Issue 22: a reconfig that moves locks between build and step level, with two real builds:
//! before the fix, a build of the old config held `db` for its build and waited for `disk` at
//! a step, while a build of the new config held `disk` for its build and waited for `db` at a
//! step, for good.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::harness::{
    BIN, MasterSetup, PATIENCE, TestMaster, current_user, run_with_timeout, text, wait_until,
};
use crate::repo::Checkout;

/// Builder `a` on s1 and s2: `build_lock` for the whole build; a first step that waits for
/// `gate`, then a step that takes `step_lock`.
fn config(repo: &Path, gate: &Path, build_lock: &str, step_lock: &str) -> String {
    format!(
        r#"
[[lock]]
name = "db"
kind = "master"

[[lock]]
name = "disk"
kind = "master"

[[builder]]
name = "a"
slaves = ["s1", "s2"]
repo = "{repo}"
branch = "main"
locks = [ {{ lock = "{build_lock}" }} ]
steps = [
  {{ name = "gate", command = "i=0; while [ ! -e {gate} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; test -e {gate}" }},
  {{ name = "locked", command = "true", locks = [ {{ lock = "{step_lock}" }} ] }},
]

[[scheduler]]
kind = "force"
builders = ["a"]
"#,
        repo = repo.display(),
        gate = gate.display()
    )
}

fn force(master: &TestMaster) {
    let output = master.ssh(&master.user_key, &current_user(), "force a --reason r");
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
}

fn builds(master: &TestMaster) -> Vec<Value> {
    master
        .api("/api/builds?builder=a")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn a_reconfig_swapping_lock_levels_does_not_deadlock_two_builds() {
    let checkout = Checkout::new();
    let scratch = tempfile::tempdir().expect("temp dir");
    let gate = scratch.path().join("go");
    let master = TestMaster::start_with(MasterSetup {
        slaves: vec!["s1".into(), "s2".into()],
        extra_config: config(&checkout.upstream, &gate, "db", "disk"),
        ..MasterSetup::default()
    });
    let _s1 = master.start_slave("s1");
    let _s2 = master.start_slave("s2");
    force(&master);
    wait_until("build 1 to run its gated step", || {
        builds(&master)
            .first()
            .is_some_and(|build| build["running"] == true)
    });

    // The same builder now takes `disk` for the build and `db` for the step.
    let path = master.path().join("master.toml");
    let old = std::fs::read_to_string(&path).expect("config");
    let new = old.replace(
        &config(&checkout.upstream, &gate, "db", "disk"),
        &config(&checkout.upstream, &gate, "disk", "db"),
    );
    assert_ne!(old, new, "the config was edited");
    std::fs::write(&path, new).expect("config written");
    let mut reconfig = Command::new(BIN);
    reconfig.arg("reconfig").arg(master.path());
    let output = run_with_timeout(reconfig, None);
    assert!(output.status.success(), "{}", text(&output.stderr));

    force(&master);
    wait_until("request 2 to be recorded", || {
        builds(&master).len() == 2
            || master
                .api("/api/requests")
                .as_array()
                .is_some_and(|requests| !requests.is_empty())
    });
    std::fs::write(&gate, "").expect("gate opened");
    let deadline = std::time::Instant::now() + PATIENCE * 2;
    loop {
        let all = builds(&master);
        let done = all.len() == 2 && all.iter().all(|build| build["running"] == false);
        if done {
            for build in &all {
                assert_eq!(build["result"], "success", "{all:?}");
            }
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "both builds end (no deadlock): {all:?} {}",
            master.api("/api/locks")
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
