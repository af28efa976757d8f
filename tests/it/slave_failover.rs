//! A slave with several masters (`master = [A, B]`): it dials them in turn, moves on at once
//! when its master dies or an address does not answer, and pins one host key for all of them
//! (a master with another key gets nothing from it). The masters here are independent (each
//! its own SQLite), configured alike, the second with a copy of the first's host key.

use std::path::Path;

use std::process::Command;

use crate::harness::{
    BIN, MasterSetup, TestKey, TestMaster, current_user, process_running, run_with_timeout, text,
    wait_until,
};
use crate::repo::Checkout;

const STEPS: &str = r#"{ name = "test", command = "true" },"#;

/// A step that passes, or hangs (its pid in `dir/pid`) while `dir/hang` exists.
fn hanging_steps(dir: &Path) -> String {
    format!(
        r#"{{ name = "test", command = "sh -c 'if [ -e {d}/hang ]; then echo $$ > {d}/pid; exec sleep 300; fi'" }},"#,
        d = dir.display()
    )
}

/// A master configured as `first` is (its linux builder on the slave s1, with s1's key), with
/// `first`'s host key when `same_host_key`.
fn member_of(first: &TestMaster, repo: &Path, steps: &str, same_host_key: bool) -> TestMaster {
    let slave_key = std::fs::read_to_string(first.slaves_dir.path().join("s1/slave_key.pub"))
        .expect("s1's public key");
    let mut setup = MasterSetup::linux_builder(&[], repo, steps);
    setup.extra_config = format!(
        "\n[[slave]]\nname = \"s1\"\npublic_key = \"{}\"\n{}",
        slave_key.trim(),
        setup
            .extra_config
            .replace("slaves = []", "slaves = [\"s1\"]")
    );
    if same_host_key {
        setup.host_key_of = Some(first.path().to_path_buf());
    }
    TestMaster::start_with(setup)
}

fn first_master(repo: &Path, steps: &str) -> TestMaster {
    TestMaster::start_with(MasterSetup::linux_builder(&["s1"], repo, steps))
}

/// Edits slave.toml to list these addresses as its masters.
fn masters(addresses: Vec<String>) -> impl FnOnce(&mut String) {
    move |config: &mut String| {
        let start = config.find("master = ").expect("master line");
        let end = start + config[start..].find('\n').expect("line end");
        let list: Vec<String> = addresses.iter().map(|a| format!("\"{a}\"")).collect();
        config.replace_range(start..end, &format!("master = [{}]", list.join(", ")));
    }
}

fn address(master: &TestMaster) -> String {
    format!("127.0.0.1:{}", master.ssh_port)
}

/// Forces a build of linux on `master` and waits for build `number` to finish.
fn force_and_finish(master: &TestMaster, number: u64) -> serde_json::Value {
    let forced = master.ssh(
        &master.user_key,
        &current_user(),
        "force linux --reason 'which master?'",
    );
    assert_eq!(forced.status.code(), Some(0), "{}", text(&forced.stderr));
    let mut build = serde_json::Value::Null;
    wait_until(&format!("linux #{number} to finish"), || {
        build = master.newest_build("linux");
        build["number"] == number && build["running"] == false
    });
    build
}

/// The slave's log from the first line containing `from` on.
fn log_from(log: &str, from: &str) -> String {
    let start = log
        .find(from)
        .unwrap_or_else(|| panic!("no {from:?} in the slave's log:\n{log}"));
    log[start..].to_string()
}

#[test]
fn a_slave_whose_master_is_killed_builds_for_the_next_one() {
    let checkout = Checkout::new();
    let shared = tempfile::tempdir().expect("temp dir");
    let steps = hanging_steps(shared.path());
    let mut a = first_master(&checkout.upstream, &steps);
    let b = member_of(&a, &checkout.upstream, &steps, true);
    let slave = a.launch_slave("s1", masters(vec![address(&a), address(&b)]));
    a.wait_connected("s1");
    assert!(!b.slave_connected("s1"), "{}", b.api("/api/slaves"));
    let on_a = force_and_finish(&a, 1);
    assert_eq!(on_a["result"], "success", "{on_a}");
    assert_eq!(on_a["slave"], "s1", "{on_a}");

    // A's second build is still running when A dies.
    std::fs::write(shared.path().join("hang"), "").expect("hang marker");
    let forced = a.ssh(&a.user_key, &current_user(), "force linux --reason hang");
    assert_eq!(forced.status.code(), Some(0), "{}", text(&forced.stderr));
    let pid_file = shared.path().join("pid");
    let mut step_pid = None;
    wait_until("the hanging step to start", || {
        step_pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|text| text.trim().parse::<i32>().ok());
        step_pid.is_some()
    });
    let step_pid = step_pid.expect("the step's pid");
    assert!(process_running(step_pid));
    a.kill_hard();
    b.wait_connected("s1");
    // The slave killed what it ran for the master it lost before serving another.
    wait_until("the lost master's step to be gone", || {
        !process_running(step_pid)
    });
    std::fs::remove_file(shared.path().join("hang")).expect("marker removed");
    let on_b = force_and_finish(&b, 1);
    assert_eq!(on_b["result"], "success", "{on_b}");
    assert_eq!(on_b["slave"], "s1", "{on_b}");

    // Straight from the dead master to the next, without the backoff of a full round; and the
    // log says which master the slave serves.
    let log = slave.log();
    let after_loss = log_from(
        &log,
        &format!("connection to the master lost ({})", address(&a)),
    );
    let connected = format!("to master example at {}", address(&b));
    let until_b = &after_loss[..after_loss
        .find(&connected)
        .unwrap_or_else(|| panic!("no {connected:?} in the slave's log:\n{log}"))];
    assert!(!until_b.contains("reconnecting in"), "{log}");
}

#[test]
fn an_address_that_does_not_answer_is_passed_over() {
    let checkout = Checkout::new();
    let a = first_master(&checkout.upstream, STEPS);
    // A port nobody listens on: bound and let go.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .to_string();
    let slave = a.launch_slave("s1", masters(vec![dead.clone(), address(&a)]));
    a.wait_connected("s1");
    let log = slave.log();
    let after_dead = log_from(&log, &format!("cannot connect to {dead}"));
    assert!(
        after_dead.contains(&format!("to master example at {}", address(&a))),
        "{log}"
    );
    assert!(!log.contains("reconnecting in"), "{log}");
    let build = force_and_finish(&a, 1);
    assert_eq!(build["result"], "success", "{build}");
}

#[test]
fn a_master_with_another_host_key_gets_nothing_from_the_slave() {
    let checkout = Checkout::new();
    let mut a = first_master(&checkout.upstream, STEPS);
    // Configured for s1 like A, but with a host key of its own: an impostor, or a master
    // someone forgot to give the cluster's key.
    let impostor = member_of(&a, &checkout.upstream, STEPS, false);
    let slave = a.launch_slave("s1", masters(vec![address(&impostor), address(&a)]));
    a.wait_connected("s1");
    let mismatch = format!("MASTER HOST KEY MISMATCH: {} presented", address(&impostor));
    assert!(slave.log().contains(&mismatch), "{}", slave.log());
    assert!(!impostor.slave_connected("s1"));

    // A build waits on the impostor; with A gone the slave goes round its list again and
    // again, and still refuses it each time.
    let forced = impostor.ssh(
        &impostor.user_key,
        &current_user(),
        "force linux --reason impostor",
    );
    assert_eq!(forced.status.code(), Some(0), "{}", text(&forced.stderr));
    impostor.wait_queued("linux", 1);
    a.kill_hard();
    wait_until("the slave to refuse the impostor twice more", || {
        slave.log().matches(&mismatch).count() >= 3
    });
    impostor.wait_queued("linux", 1);
    assert!(!impostor.slave_connected("s1"));
    let builds = impostor.api("/api/builds?builder=linux");
    assert_eq!(builds.as_array().map(Vec::len), Some(0), "{builds}");
}

#[test]
fn create_slave_takes_several_masters_and_refuses_a_bad_one() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let host_key = TestKey::ed25519(tmp.path(), "host").public_line;
    let create = |dir: &str, masters: &[&str]| {
        let mut command = Command::new(BIN);
        command.arg("create-slave").arg(tmp.path().join(dir));
        for list in masters {
            command.args(["--master", list]);
        }
        command.args(["--name", "s1", "--master-host-key", host_key.trim()]);
        run_with_timeout(command, None)
    };
    let created = create("many", &["a.example:2222,b.example:2222", "[::1]:2222"]);
    assert!(created.status.success(), "{}", text(&created.stderr));
    let config = std::fs::read_to_string(tmp.path().join("many/slave.toml")).expect("written");
    assert!(
        config.contains("\nmaster = [\"a.example:2222\", \"b.example:2222\", \"[::1]:2222\"]\n"),
        "{config}"
    );

    let refused = create("bad", &["a.example:2222", "b.example"]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stdout));
    assert_eq!(
        text(&refused.stderr).trim(),
        "buildbot: --master: \"b.example\" is not HOST:PORT (no port)"
    );
    assert!(!tmp.path().join("bad").exists());
    // `buildbot slave` says the same of a slave.toml edited by hand, with its line.
    let edited = config.replace("\"[::1]:2222\"", "\"a.example:2222\"");
    std::fs::write(tmp.path().join("many/slave.toml"), edited).expect("edited");
    let mut slave = Command::new(BIN);
    slave.arg("slave").arg(tmp.path().join("many"));
    let refused = run_with_timeout(slave, None);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stdout));
    let line = text(&refused.stderr);
    assert!(
        line.trim()
            .ends_with("slave.toml:4: master: \"a.example:2222\" is listed twice"),
        "{line}"
    );
    assert_eq!(line.trim().lines().count(), 1, "{line}");
}
