//! Notifications (issue 28): a real SMTP server (aiosmtpd, in the Python venv scripts/test.sh
//! builds) gets one mail per event across a master's kill -9, and a real HTTP receiver gets
//! signed webhooks, checks the signature, and sees a 500 retried and a 404 given up.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use crate::harness::{MasterSetup, TestMaster, current_user, wait_until};
use crate::repo::Checkout;

/// The venv's Python with aiosmtpd, installed by scripts/test.sh.
fn smtp_python() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyvenv/bin/python");
    let has_aiosmtpd = Command::new(&python)
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        has_aiosmtpd,
        "aiosmtpd is missing from target/pyvenv: run `bash scripts/test.sh` (it installs it)"
    );
    python
}

const SMTP_SERVER: &str = r#"
import itertools, os, sys
from aiosmtpd.controller import Controller

class Keep:
    def __init__(self, into):
        self.into, self.count = into, itertools.count()
    async def handle_DATA(self, server, session, envelope):
        name = os.path.join(self.into, "%d-%d.eml" % (os.getpid(), next(self.count)))
        with open(name + ".tmp", "wb") as out:
            out.write(("X-Rcpt: %s\r\n" % ",".join(envelope.rcpt_tos)).encode())
            out.write(envelope.content)
        os.rename(name + ".tmp", name)
        return "250 kept"

controller = Controller(Keep(sys.argv[2]), hostname="127.0.0.1", port=int(sys.argv[1]))
controller.start()
print("ready", flush=True)
sys.stdin.read()
controller.stop()
"#;

/// An aiosmtpd server on loopback keeping each mail as a file in `into`; stopped on drop.
struct SmtpServer {
    child: Child,
}

impl SmtpServer {
    fn start(port: u16, into: &Path) -> SmtpServer {
        let mut child = Command::new(smtp_python())
            .args(["-c", SMTP_SERVER, &port.to_string()])
            .arg(into)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start aiosmtpd");
        let stdout = child.stdout.take().expect("piped stdout");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = ready_tx.send(line);
        });
        let line = ready_rx
            .recv_timeout(crate::harness::PATIENCE)
            .expect("aiosmtpd says it is ready");
        assert_eq!(line.trim(), "ready", "aiosmtpd did not start");
        SmtpServer { child }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

fn mails(dir: &Path) -> Vec<String> {
    let mut found: Vec<(PathBuf, String)> = std::fs::read_dir(dir)
        .expect("mail dir")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "eml"))
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("mail");
            (path, text)
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, text)| text).collect()
}

/// As `wait_until`, showing the master's log when it times out.
fn wait_or_show(master: &TestMaster, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + crate::harness::PATIENCE;
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}; the master's log:\n{}",
            master.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// What every test here builds: an upstream, and a flag file that fails the build while it
/// exists.
struct Scene {
    checkout: Checkout,
    scratch: tempfile::TempDir,
    flag: PathBuf,
}

impl Scene {
    fn new() -> Scene {
        let scratch = tempfile::tempdir().expect("temp dir");
        Scene {
            checkout: Checkout::new(),
            flag: scratch.path().join("fail"),
            scratch,
        }
    }

    /// A linux builder whose one step fails while the flag exists, and `notifiers`.
    fn setup(&self, notifiers: &str) -> MasterSetup {
        let mut setup = MasterSetup::linux_builder(
            &["s1"],
            &self.checkout.upstream,
            &format!(
                r#"{{ name = "unit-tests", command = "test ! -e {}" }},"#,
                self.flag.display()
            ),
        );
        setup.extra_config.push_str(notifiers);
        setup
    }

    /// Build 1 succeeds on `green`; build 2, with the flag set, fails on `red` (the same
    /// master, or another of its cluster).
    fn green_then_red(&self, green: &TestMaster, red: &TestMaster) {
        green.ssh_ok("force linux --reason green");
        assert_eq!(green.finished_build("linux", 1)["result"], "success");
        std::fs::write(&self.flag, "").expect("flag");
        red.ssh_ok("force linux --reason red");
        assert_eq!(red.finished_build("linux", 2)["result"], "failure");
    }
}

/// A `[[notifier]]` posting to `/PATH` of the receiver on `port`, with more `keys` (TOML lines).
fn webhook(name: &str, port: u16, events: &str, keys: &str) -> String {
    format!(
        "\n[[notifier]]\nname = \"{name}\"\nkind = \"webhook\"\n\
         url = \"http://127.0.0.1:{port}/{name}\"\nevents = [{events}]\n{keys}"
    )
}

/// How many requests the receiver got at `path`.
fn received_at(received: &Mutex<Vec<Received>>, path: &str) -> usize {
    received
        .lock()
        .expect("lock")
        .iter()
        .filter(|r| r.path == path)
        .count()
}

#[test]
fn one_mail_per_event_and_recipient_reaches_a_real_smtp_server_across_a_kill_9() {
    let scene = Scene::new();
    let inbox = scene.scratch.path().join("inbox");
    std::fs::create_dir(&inbox).expect("inbox");
    let smtp_port = free_port();
    // The try user: who forced the builds, mailed at USER@user_domain.
    let notifiers = format!(
        "\n[[notifier]]\nkind = \"mail\"\nto = [\"ci@example.org\", \"author\", \"try_user\"]\n\
         user_domain = \"users.example.org\"\n\
         events = [\"failure\", \"broken\", \"fixed\"]\nsmtp = \"127.0.0.1:{smtp_port}\"\n\
         smtp_tls = \"none\"\nfrom = \"buildbot@example.org\"\nbuilders = [\"linux\"]\n\
         retry_max = \"1s\"\n"
    );
    let user_address = format!("{}@users.example.org", current_user());
    let mut master = TestMaster::start_with(scene.setup(&notifiers));
    let _slave = master.start_slave("s1");

    // Green, then red while the SMTP server is down: the mail waits in the outbox.
    scene.green_then_red(&master, &master);
    wait_until("a failed attempt to send the mail", || {
        master
            .log()
            .contains("notification build:linux:2 to ci@example.org (mail-1) not sent yet")
    });
    master.kill_hard();

    let mut master = master.start_again();
    let _slave_again = master.start_slave("s1");
    std::fs::remove_file(&scene.flag).expect("unflag");
    master.ssh_ok("force linux --reason fixed");
    assert_eq!(master.finished_build("linux", 3)["result"], "success");
    // The server comes up: the kept mails and the new ones arrive, once each.
    let _server = SmtpServer::start(smtp_port, &inbox);
    wait_or_show(&master, "four mails", || mails(&inbox).len() >= 4);
    wait_until("all marked sent", || {
        let log = master.log();
        ["build:linux:2", "build:linux:3"].iter().all(|key| {
            log.contains(&format!("sent notification {key} to ci@example.org"))
                && log.contains(&format!("sent notification {key} to {user_address}"))
        })
    });
    // One more round of the delivery loop after all were marked: nothing is sent again.
    master.ssh_ok("force linux --reason 'still green'");
    assert_eq!(master.finished_build("linux", 4)["result"], "success");
    let got = mails(&inbox);
    assert_eq!(got.len(), 4, "one mail per event and recipient: {got:#?}");
    let to_user = got
        .iter()
        .filter(|mail| mail.starts_with(&format!("X-Rcpt: {user_address}\r\n")))
        .count();
    assert_eq!(to_user, 2, "the try user gets both: {got:#?}");
    let broken = got
        .iter()
        .find(|mail| mail.contains("build 2") && mail.contains("X-Rcpt: ci@example.org"))
        .expect("the mail about build 2");
    assert!(
        broken.contains("Subject: [buildbot] linux build 2: failure in step unit-tests (broken)"),
        "{broken}"
    );
    assert!(broken.contains("Failing step: unit-tests"), "{broken}");
    assert!(broken.contains("What to do next"), "{broken}");
    assert!(
        broken.contains(&format!(
            "http://127.0.0.1:{}/builders/linux/builds/2",
            master.http_port
        )),
        "{broken}"
    );
    let fixed = got
        .iter()
        .find(|mail| mail.contains("build 3"))
        .expect("the mail about build 3");
    assert!(fixed.contains("(fixed)"), "{fixed}");
    master.kill_hard();
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// A small HTTP/1.1 receiver: answers 500 to the first POST to /hook and 200 after, 404 to
/// /gone; keeps every request.
fn start_receiver() -> (u16, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let received = Arc::new(Mutex::new(Vec::<Received>::new()));
    let kept = Arc::clone(&received);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(crate::harness::PATIENCE));
            let mut reader = BufReader::new(stream);
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_string();
            let mut headers = Vec::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() || line.trim().is_empty() {
                    break;
                }
                if let Some((key, value)) = line.split_once(':') {
                    headers.push((key.trim().to_string(), value.trim().to_string()));
                }
            }
            let length = headers
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, value)| value.parse::<usize>().ok())
                .unwrap_or(0);
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let status = {
                let mut all = kept.lock().expect("lock");
                let earlier = all.iter().filter(|r| r.path == path).count();
                all.push(Received {
                    path: path.clone(),
                    headers,
                    body,
                });
                match path.as_str() {
                    "/hook" if earlier == 0 => "500 Internal Server Error",
                    "/hook" => "200 OK",
                    _ => "404 Not Found",
                }
            };
            let mut stream = reader.into_inner();
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    (port, received)
}

fn hmac_hex(key: &[u8], body: &[u8]) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key).expect("key");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[test]
fn signed_webhooks_reach_a_real_receiver_a_500_is_retried_and_a_404_given_up() {
    use std::os::unix::fs::PermissionsExt;
    let scene = Scene::new();
    let secret = scene.scratch.path().join("hook.secret");
    std::fs::write(&secret, "s3cret-key\n").expect("secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let (port, received) = start_receiver();
    let notifiers = webhook(
        "hook",
        port,
        "\"broken\", \"fixed\"",
        &format!("secret_file = \"{}\"\n", secret.display()),
    ) + &webhook("gone", port, "\"failure\"", "");
    let master = TestMaster::start_with(scene.setup(&notifiers));
    let _slave = master.start_slave("s1");
    scene.green_then_red(&master, &master);

    wait_until("the webhook delivered after a 500", || {
        received_at(&received, "/hook") >= 2
    });
    wait_until("the 404 given up", || {
        master
            .log()
            .contains("gave up notification build:linux:2 to http://127.0.0.1:")
    });
    let all = received.lock().expect("lock").clone();
    let hooks: Vec<&Received> = all.iter().filter(|r| r.path == "/hook").collect();
    assert_eq!(hooks.len(), 2, "one 500, then delivered: {hooks:#?}");
    assert_eq!(hooks[0].body, hooks[1].body, "a retry sends the same body");
    for hook in &hooks {
        let expected = format!("sha256={}", hmac_hex(b"s3cret-key", &hook.body));
        assert_eq!(hook.header("X-Buildbot-Signature"), Some(expected.as_str()));
        assert_eq!(hook.header("Content-Type"), Some("application/json"));
        assert_eq!(hook.header("X-Buildbot-Event"), Some("build_finished"));
    }
    let event: serde_json::Value = serde_json::from_slice(&hooks[0].body).expect("JSON");
    assert_eq!(event["type"], "build_finished", "{event}");
    assert_eq!(event["builder"], "linux", "{event}");
    assert_eq!(event["number"], 2, "{event}");
    assert_eq!(event["result"], "failure", "{event}");
    assert_eq!(event["notification"], "broken", "{event}");
    assert_eq!(
        event["url"],
        format!(
            "http://127.0.0.1:{}/builders/linux/builds/2",
            master.http_port
        ),
        "{event}"
    );
    let gone: Vec<&Received> = all.iter().filter(|r| r.path == "/gone").collect();
    assert_eq!(gone.len(), 1, "a 404 is not retried: {gone:#?}");
    assert_eq!(
        gone[0].header("X-Buildbot-Signature"),
        None,
        "no secret, no signature"
    );
}

#[test]
fn a_secret_file_open_to_others_is_refused_on_its_line() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = tempfile::tempdir().expect("temp dir");
    let secret = scratch.path().join("hook.secret");
    std::fs::write(&secret, "key").expect("secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let config = format!(
        "[master]\nname = \"m\"\n[sshd]\nlisten = \"127.0.0.1:0\"\n\
         [[notifier]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/x\"\nsecret_file = \"{}\"\n\
         [[notifier]]\nkind = \"mail\"\nto = [\"not an address\", \"try_user\"]\nsmtp = \"mail.example.org\"\n\
         events = [\"sometimes\"]\n",
        secret.display()
    );
    let problems = buildbot::master::config::Config::from_toml(&config, scratch.path())
        .expect_err("refused")
        .to_string();
    assert!(
        problems.contains("master.toml:8: [[notifier]] secret_file:")
            && problems.contains("run chmod 600 on it"),
        "{problems}"
    );
    assert!(
        problems
            .contains("master.toml:11: [[notifier]] to: \"not an address\" is not a mail address"),
        "{problems}"
    );
    assert!(
        problems.contains(
            "master.toml:11: [[notifier]] to = [\"try_user\"] needs user_domain = \"example.org\""
        ),
        "{problems}"
    );
    assert!(
        problems
            .contains("master.toml:12: [[notifier]] smtp = \"mail.example.org\" is not HOST:PORT"),
        "{problems}"
    );
    assert!(
        problems.contains("master.toml:13: [[notifier]] events: unknown event \"sometimes\""),
        "{problems}"
    );
}

#[test]
fn a_cluster_records_an_event_once_and_one_master_delivers_it() {
    use crate::multimaster::{database_section, fresh_database, join, masters, named};
    let url = fresh_database();
    let scene = Scene::new();
    let (port, received) = start_receiver();
    let notifiers = webhook("hook", port, "\"broken\"", "retry_max = \"1s\"\n")
        + &webhook("later", port, "\"failure\"", "");
    let mut setup = scene.setup(&notifiers);
    setup.extra_config.push_str(&database_section(&url));
    setup.edits.push(named("ci-a"));
    let a = TestMaster::start_with(setup);
    let b = join(&a, "ci-b");
    let _slave = a.launch_slave("s1", masters(&[&a, &b]));
    a.wait_connected("s1");

    scene.green_then_red(&a, &b);
    wait_until("the webhook delivered after a 500", || {
        received_at(&received, "/hook") >= 2
    });
    // Another failure, told to the other notifier: once that arrives, the leader's delivery
    // went past build 2 for good.
    b.ssh_ok("force linux --reason 'still red'");
    assert_eq!(b.finished_build("linux", 3)["result"], "failure");
    wait_until("build 3 told", || {
        let all = received.lock().expect("lock");
        all.iter().any(|r| {
            r.path == "/later" && String::from_utf8_lossy(&r.body).contains("\"number\":3")
        })
    });
    let all: Vec<Received> = received
        .lock()
        .expect("lock")
        .iter()
        .filter(|r| r.path == "/hook")
        .cloned()
        .collect();
    let deliveries: std::collections::BTreeSet<&str> = all
        .iter()
        .filter_map(|r| r.header("X-Buildbot-Delivery"))
        .collect();
    assert_eq!(
        deliveries.len(),
        1,
        "one notification in the cluster: {all:#?}"
    );
    assert_eq!(all.len(), 2, "a 500, then delivered once: {all:#?}");
    let sent_by: Vec<bool> = [&a, &b]
        .iter()
        .map(|master| master.log().contains("sent notification build:linux:2"))
        .collect();
    assert_eq!(
        sent_by.iter().filter(|sent| **sent).count(),
        1,
        "one master sends: {sent_by:?}"
    );
}
