//! The IRC status bot against a real IRC server: Debian's `ngircd` (scripts/test.sh installs
//! it), one instance per test on a free loopback port with a generated config, driven by a
//! small raw-socket IRC client.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::harness::{
    MasterSetup, PATIENCE, TestMaster, current_user, reap, signal, text, wait_until,
    wait_with_timeout,
};
use crate::repo::Checkout;

const BOT: &str = "buildbot";

/// A private ngircd on 127.0.0.1. Penalties are off (`MaxPenaltyTime = 0`): the server passes
/// lines on as fast as they come, so what a client sees is the bot's own pacing.
struct IrcServer {
    dir: tempfile::TempDir,
    port: u16,
    /// The TLS port, with a self-signed certificate for `localhost` in `cert.pem`.
    tls_port: Option<u16>,
    password: Option<String>,
    child: Option<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

impl IrcServer {
    fn start() -> IrcServer {
        IrcServer::start_with(false, None)
    }

    /// With `tls`, a TLS port too (certificate made with `openssl`); with `password`, every
    /// client must send it.
    fn start_with(tls: bool, password: Option<&str>) -> IrcServer {
        let dir = tempfile::Builder::new()
            .prefix("buildbot-ngircd-")
            .tempdir()
            .expect("temp dir");
        let port = free_port();
        let mut config = format!(
            "[Global]\nName = irc.test.local\nInfo = buildbot test server\nListen = 127.0.0.1\n\
             Ports = {port}\nMotdPhrase = \"test server\"\nPidFile = {pid}\n{password}\
             [Limits]\nMaxPenaltyTime = 0\nPingTimeout = 120\n\
             [Options]\nDNS = no\nIdent = no\nPAM = no\n",
            pid = dir.path().join("ngircd.pid").display(),
            password = password
                .map(|password| format!("Password = {password}\n"))
                .unwrap_or_default(),
        );
        let tls_port = tls.then(|| {
            // A CA and a server certificate for `localhost` it signed (rustls refuses a CA
            // certificate as the server's own).
            let path = |name: &str| dir.path().join(name).display().to_string();
            std::fs::write(
                dir.path().join("ext.cnf"),
                "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n",
            )
            .expect("extensions written");
            let ec = [
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
            ];
            for args in [
                [
                    &[
                        "req",
                        "-x509",
                        "-days",
                        "2",
                        "-subj",
                        "/CN=buildbot test CA",
                    ][..],
                    &ec,
                ]
                .concat()
                .into_iter()
                .map(str::to_string)
                .chain([
                    "-keyout".into(),
                    path("ca-key.pem"),
                    "-out".into(),
                    path("ca.pem"),
                ])
                .collect::<Vec<String>>(),
                [&["req", "-subj", "/CN=localhost"][..], &ec]
                    .concat()
                    .into_iter()
                    .map(str::to_string)
                    .chain([
                        "-keyout".into(),
                        path("key.pem"),
                        "-out".into(),
                        path("req.pem"),
                    ])
                    .collect(),
                ["x509", "-req", "-days", "2", "-CAcreateserial"]
                    .into_iter()
                    .map(str::to_string)
                    .chain([
                        "-in".into(),
                        path("req.pem"),
                        "-CA".into(),
                        path("ca.pem"),
                        "-CAkey".into(),
                        path("ca-key.pem"),
                        "-extfile".into(),
                        path("ext.cnf"),
                        "-out".into(),
                        path("cert.pem"),
                    ])
                    .collect(),
            ] {
                let mut openssl = Command::new("openssl");
                openssl.args(&args);
                let made = crate::harness::run_with_timeout(openssl, None);
                assert!(
                    made.status.success(),
                    "openssl {args:?}: {}",
                    text(&made.stderr)
                );
            }
            let tls_port = free_port();
            config.push_str(&format!(
                "[SSL]\nCertFile = {}\nKeyFile = {}\nPorts = {tls_port}\n",
                dir.path().join("cert.pem").display(),
                dir.path().join("key.pem").display()
            ));
            tls_port
        });
        std::fs::write(dir.path().join("ngircd.conf"), config).expect("config written");
        let mut server = IrcServer {
            dir,
            port,
            tls_port,
            password: password.map(str::to_string),
            child: None,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("ngircd.log"))
            .expect("log file");
        let child = Command::new(ngircd())
            .arg("-n")
            .arg("-f")
            .arg(self.dir.path().join("ngircd.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("ngircd starts (scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + PATIENCE;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "ngircd did not listen on {}; log:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ngircd.log")).unwrap_or_default()
    }

    /// SIGKILL: the server vanishes without a word to its clients.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), nix::sys::signal::Signal::SIGKILL);
            reap(&mut child);
        }
    }

    /// The `[irc]` section a master needs to use this server (fast pacing and backoff).
    fn master_config(&self, extra: &str) -> String {
        self.master_config_with_backoff("100ms", "1s", extra)
    }

    fn master_config_with_backoff(&self, min: &str, max: &str, extra: &str) -> String {
        format!(
            "\n[irc]\nserver = \"127.0.0.1:{}\"\nnick = \"{BOT}\"\nchannels = [\"#ci\"]\n\
             line_interval = \"100ms\"\nburst = 4\nreconnect_min = \"{min}\"\nreconnect_max = \"{max}\"\n{extra}",
            self.port
        )
    }
}

impl Drop for IrcServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), nix::sys::signal::Signal::SIGTERM);
            if wait_with_timeout(&mut child, Duration::from_secs(5)).is_none() {
                reap(&mut child);
            }
        }
    }
}

fn ngircd() -> PathBuf {
    for candidate in ["/usr/sbin/ngircd", "/usr/bin/ngircd"] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    PathBuf::from("ngircd")
}

/// A person on IRC: a raw socket and a reader thread.
struct IrcClient {
    nick: String,
    stream: TcpStream,
    lines: mpsc::Receiver<String>,
    /// Every line received so far.
    seen: Vec<String>,
}

/// `(target, text)` of a PRIVMSG or NOTICE from `from` in `line`.
fn privmsg_from<'a>(line: &'a str, from: &str) -> Option<(&'a str, &'a str)> {
    let rest = line.strip_prefix(':')?;
    let (prefix, rest) = rest.split_once(' ')?;
    let nick = prefix.split('!').next()?;
    if !nick.eq_ignore_ascii_case(from) {
        return None;
    }
    // The bot answers people in private with NOTICEs, channels with PRIVMSGs.
    let rest = rest
        .strip_prefix("PRIVMSG ")
        .or_else(|| rest.strip_prefix("NOTICE "))?;
    let (target, text) = rest.split_once(" :")?;
    Some((target, text))
}

impl IrcClient {
    fn connect(server: &IrcServer, nick: &str) -> IrcClient {
        let stream = TcpStream::connect(("127.0.0.1", server.port)).expect("connect to ngircd");
        let reader = stream.try_clone().expect("clone socket");
        let (lines_tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(reader).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut client = IrcClient {
            nick: nick.to_string(),
            stream,
            lines,
            seen: Vec::new(),
        };
        if let Some(password) = &server.password {
            client.send(&format!("PASS {password}"));
        }
        client.send(&format!("NICK {nick}"));
        // ngIRCd takes only plain user names (`dev[a]` is a valid nick, not a user name).
        let user: String = nick.chars().filter(char::is_ascii_alphanumeric).collect();
        client.send(&format!("USER {user} 0 * :{nick}"));
        client.wait_line("welcome", |line| line.contains(" 001 "));
        client
    }

    fn send(&mut self, line: &str) {
        self.stream
            .write_all(format!("{line}\r\n").as_bytes())
            .expect("write to ngircd");
    }

    fn join(&mut self, channel: &str) {
        self.send(&format!("JOIN {channel}"));
        let me = format!(":{}!", self.nick);
        self.wait_line("own join", |line| {
            line.starts_with(&me) && line.contains(" JOIN ")
        });
    }

    fn say(&mut self, target: &str, text: &str) {
        self.send(&format!("PRIVMSG {target} :{text}"));
    }

    /// The next line (answering PINGs on the way) that `matches`; panics at the deadline.
    fn wait_line(&mut self, what: &str, mut matches: impl FnMut(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.lines.recv_timeout(left) {
                Ok(line) => line,
                Err(_) => panic!(
                    "{}: timed out waiting for {what}; saw:\n{}",
                    self.nick,
                    self.seen.join("\n")
                ),
            };
            if let Some(token) = line.strip_prefix("PING ") {
                self.send(&format!("PONG {token}"));
            }
            self.seen.push(line.clone());
            if matches(&line) {
                return line;
            }
        }
    }

    /// The text of the next thing the bot says to `target` that contains `needle`.
    fn wait_bot(&mut self, target: &str, needle: &str) -> String {
        let line = self.wait_line(&format!("the bot saying '{needle}' to {target}"), |line| {
            privmsg_from(line, BOT)
                .is_some_and(|(to, text)| to.eq_ignore_ascii_case(target) && text.contains(needle))
        });
        privmsg_from(&line, BOT)
            .map(|(_, text)| text.to_string())
            .unwrap_or_default()
    }

    /// Asks the bot in #ci and returns its answer there containing `needle`.
    fn ask(&mut self, command: &str, needle: &str) -> String {
        self.say("#ci", &format!("{BOT}: {command}"));
        self.wait_bot("#ci", needle)
    }

    fn wait_bot_join(&mut self) {
        self.wait_line("the bot joining #ci", |line| {
            line.starts_with(&format!(":{BOT}!")) && line.contains(" JOIN ")
        });
    }

    fn quit(mut self) {
        self.send("QUIT :bye");
        let _ = self.wait_line_within(Duration::from_secs(5), |line| line.starts_with("ERROR"));
    }

    fn wait_line_within(
        &mut self,
        patience: Duration,
        mut matches: impl FnMut(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + patience;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).ok()?;
            self.seen.push(line.clone());
            if matches(&line) {
                return Some(line);
            }
        }
    }

    /// What the bot said to `target`, of everything seen so far.
    fn bot_lines(&self, target: &str) -> Vec<String> {
        self.seen
            .iter()
            .filter_map(|line| privmsg_from(line, BOT))
            .filter(|(to, _)| to.eq_ignore_ascii_case(target))
            .map(|(_, text)| text.to_string())
            .collect()
    }
}

/// A step that waits for `gate` to exist, then runs `then`.
fn gated_step(gate: &Path, then: &str) -> String {
    format!(
        r#"{{ name = "work", command = "while [ ! -e {} ]; do sleep 0.1; done; {then}" }},"#,
        gate.display()
    )
}

fn master_with(server: &IrcServer, repo: &Path, steps: &str, irc_extra: &str) -> TestMaster {
    let mut setup = MasterSetup::linux_builder(&["s1"], repo, steps);
    setup
        .extra_config
        .push_str(&server.master_config(irc_extra));
    TestMaster::start_with(setup)
}

fn wait_result(master: &TestMaster, number: i64) -> String {
    let mut result = String::new();
    wait_until(&format!("linux #{number} to finish"), || {
        let builds = master.api("/api/builds?builder=linux");
        let found = builds
            .as_array()
            .and_then(|builds| builds.iter().find(|build| build["number"] == number))
            .and_then(|build| build["result"].as_str())
            .map(str::to_string);
        result = found.unwrap_or_default();
        !result.is_empty()
    });
    result
}

#[test]
fn irc_status_last_and_watch_follow_a_real_build_and_the_bot_rejoins_after_a_kick() {
    let server = IrcServer::start();
    let checkout = Checkout::new();
    let gates = tempfile::tempdir().expect("temp dir");
    let gate = gates.path().join("go");
    // First in the channel: an operator, who may kick.
    let mut alice = IrcClient::connect(&server, "alice");
    alice.join("#ci");
    let master = master_with(&server, &checkout.upstream, &gated_step(&gate, "true"), "");
    alice.wait_bot_join();
    let _slave = master.start_slave("s1");

    let idle = alice.ask("status linux", "linux:");
    assert!(idle.ends_with("linux: idle, 0 queued"), "{idle}");
    let none = alice.ask("last linux", "linux");
    assert!(none.ends_with("linux has no finished builds yet"), "{none}");

    master.ssh_ok("force linux --reason 'irc test'");
    wait_until("linux #1 to run", || {
        master.api("/api/builds?builder=linux")[0]["running"] == true
    });
    let building = alice.ask("status", "linux:");
    assert!(
        building.contains("linux: building #1 (") && building.ends_with(", 0 queued"),
        "{building}"
    );
    let watching = alice.ask("watch linux", "watching");
    assert!(
        watching.ends_with("watching linux #1: I will say here when it finishes"),
        "{watching}"
    );

    std::fs::write(&gate, "").expect("gate opened");
    let finished = alice.wait_bot("#ci", "linux #1: success");
    assert!(
        finished.contains(&format!(
            "http://127.0.0.1:{}/builders/linux/builds/1",
            master.http_port
        )),
        "{finished}"
    );
    let last = alice.ask("last linux", "linux #1");
    assert!(
        last.contains("linux #1: success") && last.contains(" ago (took "),
        "{last}"
    );

    // Malformed lines and unknown commands: one line pointing at help, and the bot goes on.
    let unknown = alice.ask("frobnicate the build", "unknown");
    assert!(
        unknown.ends_with("unknown command 'frobnicate'; say help for the commands"),
        "{unknown}"
    );
    let usage = alice.ask("stop build", "usage");
    assert!(
        usage.starts_with("stop: which builder? (usage: stop build BUILDER"),
        "{usage}"
    );
    alice.say(
        "#ci",
        &format!("{BOT}: \u{1}\u{2}\u{3}4,5 \u{7f}status \u{1}"),
    );
    alice.say(BOT, "");
    alice.send(&format!("PRIVMSG {BOT} :{}", "x".repeat(450)));
    let help = alice.ask("help force", "usage: force");
    assert!(help.contains("REASON"), "{help}");
    let version = alice.ask("version", "buildbot ");
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");

    // Kicked: the bot comes back.
    alice.send(&format!("KICK #ci {BOT} :testing"));
    alice.wait_bot_join();
    let after = alice.ask("status linux", "linux:");
    assert!(after.ends_with("linux: idle, 0 queued"), "{after}");
}

#[test]
fn irc_announces_failure_and_fixed_in_the_channel() {
    let server = IrcServer::start();
    let checkout = Checkout::new();
    let flags = tempfile::tempdir().expect("temp dir");
    let flag = flags.path().join("good");
    let step = format!(
        r#"{{ name = "test", command = "test -e {}" }},"#,
        flag.display()
    );
    let mut alice = IrcClient::connect(&server, "alice");
    alice.join("#ci");
    let master = master_with(&server, &checkout.upstream, &step, "");
    alice.wait_bot_join();
    let _slave = master.start_slave("s1");

    master.ssh_ok("force linux --reason 'first'");
    let failed = alice.wait_bot("#ci", "linux #1: failure");
    assert!(
        !failed.contains("broken") && !failed.contains("fixed"),
        "{failed}"
    );
    std::fs::write(&flag, "").expect("flag");
    master.ssh_ok("force linux --reason 'second'");
    let fixed = alice.wait_bot("#ci", "linux #2: success");
    assert!(fixed.contains("(fixed)"), "{fixed}");
    // The default notify set (failure, fixed, exception) says nothing about a plain success
    // or a start; a third, passing build stays quiet.
    master.ssh_ok("force linux --reason 'third'");
    assert_eq!(wait_result(&master, 3), "success");
    let _ = alice.ask("version", "buildbot");
    let said = alice.bot_lines("#ci");
    assert!(
        !said
            .iter()
            .any(|line| line.contains("linux #3") || line.contains("started")),
        "{said:#?}"
    );
}

#[test]
fn irc_force_and_stop_need_a_linked_nick_and_a_taken_over_nick_inherits_nothing() {
    let server = IrcServer::start();
    let checkout = Checkout::new();
    let gates = tempfile::tempdir().expect("temp dir");
    let gate = gates.path().join("never");
    let mut alice = IrcClient::connect(&server, "alice");
    alice.join("#ci");
    let master = master_with(&server, &checkout.upstream, &gated_step(&gate, "true"), "");
    alice.wait_bot_join();
    let _slave = master.start_slave("s1");

    let refused = alice.ask("force linux please", "not linked");
    assert!(
        refused.starts_with("alice: your nick is not linked to a unix user"),
        "{refused}"
    );
    assert_eq!(
        master
            .api("/api/builds?builder=linux")
            .as_array()
            .map(Vec::len),
        Some(0),
        "nothing was forced"
    );

    let issued = master.ssh_ok("irc-link");
    let code = issued.lines().next().expect("a code").trim().to_string();
    assert!(
        issued.contains(&format!("/msg {BOT} link {code}")),
        "{issued}"
    );
    alice.say(BOT, &format!("link {code}"));
    let linked = alice.wait_bot("alice", "speaks for");
    assert!(
        linked.starts_with(&format!(
            "alice now speaks for unix user {}",
            current_user()
        )),
        "{linked}"
    );
    let list = master.ssh_ok("irc-link --list");
    assert!(
        list.starts_with(&format!("alice -> {} (linked ", current_user())),
        "{list}"
    );
    // A code works once.
    let mut mallory = IrcClient::connect(&server, "mallory");
    mallory.join("#ci");
    mallory.say(BOT, &format!("link {code}"));
    mallory.wait_bot("mallory", "unknown or expired link code");

    let forced = alice.ask("force linux from irc", "forced build");
    assert!(
        forced.starts_with("linux: forced build queued as request "),
        "{forced}"
    );
    wait_until("linux #1 to run", || {
        master.api("/api/builds?builder=linux")[0]["running"] == true
    });
    let refused = mallory.ask("stop build linux 1 mine now", "not linked");
    assert!(refused.starts_with("mallory: "), "{refused}");
    let stopped = alice.ask("stop build linux 1 enough of that", "linux #1");
    assert_eq!(
        stopped,
        format!(
            "linux #1: interrupted (stopped by {}: enough of that (IRC, alice))",
            current_user()
        )
    );
    let build = master.api_last_build("linux");
    assert_eq!(build["result"], "interrupted");

    // alice quits; mallory takes her nick and inherits nothing.
    alice.quit();
    wait_until("alice's link to end", || {
        master
            .ssh_ok("irc-link --list")
            .starts_with("no IRC nicks are linked")
    });
    mallory.send("NICK alice");
    mallory.wait_line("the nick change", |line| {
        line.starts_with(":mallory!") && line.contains(" NICK ")
    });
    mallory.nick = "alice".to_string();
    let refused = mallory.ask("force linux it is mine now", "not linked");
    assert!(
        refused.starts_with("alice: your nick is not linked"),
        "{refused}"
    );
    assert_eq!(
        master
            .api("/api/builds?builder=linux")
            .as_array()
            .map(Vec::len),
        Some(1),
        "no second build"
    );
}

#[test]
fn irc_output_is_paced_and_a_hundred_lines_do_not_get_the_bot_kicked() {
    let server = IrcServer::start();
    let checkout = Checkout::new();
    let mut setup = MasterSetup::linux_builder(&["s1"], &checkout.upstream, "");
    for n in 1..100 {
        setup.extra_config.push_str(&format!(
            "\n[[builder]]\nname = \"b{n:02}\"\nslaves = [\"s1\"]\nrepo = \"{}\"\n",
            checkout.upstream.display()
        ));
    }
    setup
        .extra_config
        .push_str(&server.master_config("max_lines = 200\n"));
    let mut alice = IrcClient::connect(&server, "alice");
    alice.join("#ci");
    let _master = TestMaster::start_with(setup);
    alice.wait_bot_join();

    let started = Instant::now();
    alice.say("#ci", &format!("{BOT}: status"));
    let mut arrivals = Vec::new();
    let mut texts = Vec::new();
    while texts.len() < 100 {
        let line = alice.wait_bot("#ci", ": offline, 0 queued");
        arrivals.push(started.elapsed());
        texts.push(line);
    }
    let first = arrivals[0];
    let spread = arrivals[99] - first;
    println!("100 lines in {spread:?} after the first ({first:?} to the first)");
    // A burst of 4, then one line per 100 ms: 96 intervals at least.
    assert!(
        spread >= Duration::from_millis(9000),
        "not paced: {spread:?}"
    );
    assert!(spread < Duration::from_secs(30), "far too slow: {spread:?}");
    let names: Vec<bool> = texts
        .iter()
        .enumerate()
        .map(|(index, line)| match index {
            0 => line.starts_with("linux: offline"),
            n => line.starts_with(&format!("b{n:02}: offline")),
        })
        .collect();
    assert!(
        names.iter().all(|ok| *ok),
        "out of order or lost: {texts:#?}"
    );
    // Still there, still answering: not kicked, not disconnected.
    let version = alice.ask("version", "buildbot ");
    assert!(version.contains("buildbot"), "{version}");
    assert!(
        !alice.seen.iter().any(|line| {
            line.starts_with(&format!(":{BOT}!"))
                && (line.contains(" QUIT ") || line.contains(" PART "))
                || line.contains(&format!(" KICK #ci {BOT}"))
        }),
        "the bot left: {:#?}",
        alice.seen
    );
}

#[test]
fn irc_server_killed_and_restarted_the_bot_rejoins_and_announces_what_finished_once() {
    let mut server = IrcServer::start();
    let checkout = Checkout::new();
    let step = r#"{ name = "test", command = "false" },"#;
    let mut alice = IrcClient::connect(&server, "alice");
    alice.join("#ci");
    // A fixed backoff of 5s: after the bot's first failed attempt, the test has time to bring
    // the server back and be in the channel before the bot is.
    let mut setup = MasterSetup::linux_builder(&["s1"], &checkout.upstream, step);
    setup
        .extra_config
        .push_str(&server.master_config_with_backoff("5s", "5s", ""));
    let master = TestMaster::start_with(setup);
    alice.wait_bot_join();
    let _slave = master.start_slave("s1");
    drop(alice);
    server.kill();
    wait_until("the bot to notice", || {
        master.log().contains("IRC connection lost")
    });

    master.ssh_ok("force linux --reason 'while the bot is away'");
    assert_eq!(wait_result(&master, 1), "failure");
    let failed_attempts = || master.log().matches("cannot connect").count();
    wait_until("a failed reconnect", || failed_attempts() >= 1);

    server.launch();
    let mut alice = IrcClient::connect(&server, "alice");
    alice.join("#ci");
    alice.wait_bot_join();
    let announced = alice.wait_bot("#ci", "linux #1: failure");
    assert!(
        announced.contains("/builders/linux/builds/1"),
        "{announced}"
    );
    // Everything the bot had to say before this answer has been said.
    let _ = alice.ask("version", "buildbot ");
    let count = alice
        .bot_lines("#ci")
        .iter()
        .filter(|line| line.starts_with("linux #1: failure"))
        .count();
    assert_eq!(count, 1, "announced once: {:#?}", alice.bot_lines("#ci"));
    // And a build after the reconnect is announced live.
    master.ssh_ok("force linux --reason 'after'");
    alice.wait_bot("#ci", "linux #2: failure");
}

#[test]
fn irc_over_tls_with_a_server_password_and_a_taken_nick() {
    let server = IrcServer::start_with(true, Some("s3cret"));
    let checkout = Checkout::new();
    // Someone already has the bot's nick: it takes the first fallback.
    let mut squatter = IrcClient::connect(&server, BOT);
    squatter.join("#ci");
    let mut alice = IrcClient::connect(&server, "alice");
    alice.join("#ci");
    let mut setup = MasterSetup::linux_builder(&["s1"], &checkout.upstream, "");
    setup.extra_config.push_str(&format!(
        "\n[irc]\nserver = \"localhost:{}\"\ntls = true\nca_file = \"{}\"\npassword = \"s3cret\"\n\
         nick = \"{BOT}\"\nchannels = [\"#ci\"]\nreconnect_min = \"100ms\"\nreconnect_max = \"1s\"\n",
        server.tls_port.expect("a TLS port"),
        server.dir.path().join("ca.pem").display()
    ));
    let master = TestMaster::start_with(setup);
    let fallback = format!("{BOT}_");
    alice.wait_line("the bot joining under its fallback nick", |line| {
        line.starts_with(&format!(":{fallback}!")) && line.contains(" JOIN ")
    });
    alice.say("#ci", &format!("{fallback}: version"));
    let answer = alice.wait_line("the bot's answer", |line| {
        privmsg_from(line, &fallback).is_some_and(|(_, text)| text.starts_with("buildbot "))
    });
    assert!(answer.contains(env!("CARGO_PKG_VERSION")), "{answer}");
    assert!(
        master.log().contains("tls=true"),
        "the bot said it connected with TLS"
    );
}

#[test]
fn reconfig_starts_the_bot_moves_it_to_new_settings_and_stops_it() {
    let server = IrcServer::start();
    let checkout = Checkout::new();
    let mut alice = IrcClient::connect(&server, "alice");
    alice.join("#ci");
    let master = TestMaster::start_with(MasterSetup::linux_builder(
        &["s1"],
        &checkout.upstream,
        r#"{ name = "test", command = "true" },"#,
    ));
    let path = master.path().join("master.toml");
    let before = std::fs::read_to_string(&path).expect("config");
    let reconfig = || {
        let mut command = Command::new(crate::harness::BIN);
        command.arg("reconfig").arg(master.path());
        let output = crate::harness::run_with_timeout(command, None);
        assert!(
            output.status.success(),
            "reconfig: {}{}",
            text(&output.stdout),
            text(&output.stderr)
        );
        text(&output.stdout)
    };

    // No [irc] at start: no bot. Adding the section starts one.
    std::fs::write(&path, format!("{before}{}", server.master_config(""))).expect("config");
    let said = reconfig();
    assert!(said.contains("[irc] changed"), "{said}");
    alice.wait_bot_join();
    alice.ask("version", "buildbot ");

    // A changed section: the bot leaves and comes back with the new settings (a second
    // channel here).
    alice.join("#ops");
    let with_ops = format!("{before}{}", server.master_config(""))
        .replace("channels = [\"#ci\"]", "channels = [\"#ci\", \"#ops\"]");
    std::fs::write(&path, with_ops).expect("config");
    reconfig();
    alice.wait_line("the bot joining #ops", |line| {
        line.starts_with(&format!(":{BOT}!")) && line.contains(" JOIN ") && line.contains("#ops")
    });
    alice.say("#ops", &format!("{BOT}: version"));
    alice.wait_bot("#ops", "buildbot ");

    // The section removed: the bot quits and stays away.
    std::fs::write(&path, &before).expect("config");
    reconfig();
    alice.wait_line("the bot quitting", |line| {
        line.starts_with(&format!(":{BOT}!")) && line.contains(" QUIT")
    });
    alice.say("#ci", &format!("{BOT}: version"));
    let answer = alice.wait_line_within(Duration::from_secs(2), |line| {
        privmsg_from(line, BOT).is_some()
    });
    assert_eq!(answer, None, "a removed bot answered");
}

/// A link ends when its nick changes (the new nick inherits nothing, and neither does whoever
/// takes the old one) and when `link_ttl` runs out.
#[test]
fn irc_a_link_ends_with_a_nick_change_and_with_its_ttl() {
    let server = IrcServer::start();
    let checkout = Checkout::new();
    let mut alice = IrcClient::connect(&server, "alice");
    alice.join("#ci");
    let master = master_with(
        &server,
        &checkout.upstream,
        r#"{ name = "test", command = "true" },"#,
        "link_ttl = \"3s\"\n",
    );
    alice.wait_bot_join();
    let link = |alice: &mut IrcClient| {
        let issued = master.ssh_ok("irc-link");
        let code = issued.lines().next().expect("a code").trim().to_string();
        alice.say(BOT, &format!("link {code}"));
        alice.wait_bot(&alice.nick.clone(), "speaks for");
    };

    link(&mut alice);
    alice.send("NICK alice2");
    alice.wait_line("the nick change", |line| {
        line.starts_with(":alice!") && line.contains(" NICK ")
    });
    alice.nick = "alice2".to_string();
    wait_until("the link to end with the nick change", || {
        master
            .ssh_ok("irc-link --list")
            .starts_with("no IRC nicks are linked")
    });
    let refused = alice.ask("force linux after a nick change", "not linked");
    assert!(refused.starts_with("alice2: "), "{refused}");

    link(&mut alice);
    assert!(
        master.ssh_ok("irc-link --list").starts_with("alice2 -> "),
        "linked again"
    );
    wait_until("the link to expire (link_ttl = 3s)", || {
        master
            .ssh_ok("irc-link --list")
            .starts_with("no IRC nicks are linked")
    });
    let refused = alice.ask("force linux after the ttl", "not linked");
    assert!(refused.starts_with("alice2: "), "{refused}");
    assert_eq!(
        master
            .api("/api/builds?builder=linux")
            .as_array()
            .map(Vec::len),
        Some(0),
        "nothing was forced"
    );
}

// ---- attacks of issue 22 (items 1, 5 and 11) ----------------------------------------------

/// Links `client`'s nick to the test's unix user with a fresh code.
fn link(master: &TestMaster, client: &mut IrcClient) {
    let issued = master.ssh_ok("irc-link");
    let code = issued.lines().next().expect("a code").trim().to_string();
    let nick = client.nick.clone();
    client.say(BOT, &format!("link {code}"));
    let linked = client.wait_bot(&nick, "speaks for");
    assert!(
        linked.starts_with(&format!("{nick} now speaks for")),
        "{linked}"
    );
}

fn build_count(master: &TestMaster) -> usize {
    master
        .api("/api/builds?builder=linux")
        .as_array()
        .map_or(0, Vec::len)
}

/// Item 1: ngIRCd compares nicks in ASCII (it says `CASEMAPPING=ascii`), so `dev{a}` is another
/// person than `dev[a]`. The bot folded rfc1459-style and let `dev{a}` force builds as the unix
/// user linked to `dev[a]`, from outside the channel too.
#[test]
fn irc_a_nick_that_only_folds_like_a_linked_one_acts_as_nobody() {
    let server = IrcServer::start();
    let checkout = Checkout::new();
    let mut owner = IrcClient::connect(&server, "dev[a]");
    owner.join("#ci");
    let master = master_with(&server, &checkout.upstream, "", "");
    owner.wait_bot_join();
    let _slave = master.start_slave("s1");
    wait_until("the bot to learn the server's case mapping", || {
        master.log().contains("casemapping=Ascii")
    });
    link(&master, &mut owner);

    // Another person, not in the channel, in private.
    let mut other = IrcClient::connect(&server, "dev{a}");
    other.say(BOT, "force linux as someone else");
    let refused = other.wait_bot("dev{a}", "dev{a}: ");
    assert!(
        refused.contains("join #ci first") || refused.contains("not linked"),
        "{refused}"
    );
    // In the channel, where the bot sees it: still not linked.
    other.join("#ci");
    let refused = other.ask("force linux from the channel", "dev{a}: ");
    assert!(
        refused.starts_with("dev{a}: your nick is not linked"),
        "{refused}"
    );
    assert_eq!(build_count(&master), 0, "nothing was forced");

    // The linked person still acts, in private too.
    owner.say(BOT, "force linux honest");
    let forced = owner.wait_bot("dev[a]", "forced build");
    assert!(forced.starts_with("linux: forced build queued"), "{forced}");
    assert_eq!(wait_result(&master, 1), "success");
    assert_eq!(build_count(&master), 1);
}

/// Item 5: a stop reason with a NUL (web form `reason=%00`) made the bot drop off the server
/// and come back under another nick, losing every link; a `\x01` made its announcement a CTCP.
/// Such a reason is refused with one line wherever it comes from, and the bot stays.
#[test]
fn irc_a_stop_reason_with_nul_or_ctcp_is_refused_and_the_bot_stays() {
    let server = IrcServer::start();
    let checkout = Checkout::new();
    let gates = tempfile::tempdir().expect("temp dir");
    let gate = gates.path().join("never");
    let mut alice = IrcClient::connect(&server, "alice");
    alice.join("#ci");
    let master = master_with(&server, &checkout.upstream, &gated_step(&gate, "true"), "");
    alice.wait_bot_join();
    let _slave = master.start_slave("s1");
    link(&master, &mut alice);
    master.ssh_ok("force linux --reason 'to be stopped'");
    wait_until("linux #1 to run", || {
        master.api("/api/builds?builder=linux")[0]["running"] == true
    });
    let watching = alice.ask("watch linux", "watching");
    assert!(watching.contains("linux #1"), "{watching}");

    // The web form.
    let session = crate::changes::web_login(&master);
    let (status, _) = session.post(
        &master,
        "/builders/linux/builds/1/stop",
        &[("reason", "x\0\u{1}ACTION y\u{1}")],
    );
    assert_eq!(status, 400, "a NUL in a web stop reason is refused");
    // SSH (OpenSSH cannot carry a NUL in a command; \x01 it can).
    let over_ssh = master.ssh(
        &master.user_key,
        &current_user(),
        "stop linux 1 --reason '\u{1}ACTION dances\u{1}'",
    );
    let stderr = text(&over_ssh.stderr);
    assert!(!over_ssh.status.success(), "{stderr}");
    assert!(
        stderr.contains("the reason contains a control character (U+0001)"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    // (Over IRC itself the command parser turns control characters into spaces.)
    assert_eq!(
        master.api("/api/builds?builder=linux")[0]["running"],
        true,
        "still running: nothing was stopped"
    );

    // The bot is still here under its nick, alice's link holds, and a plain stop works.
    let list = master.ssh_ok("irc-link --list");
    assert!(list.starts_with("alice -> "), "{list}");
    let stopped = alice.ask("stop build linux 1 plain words", "linux #1");
    assert!(stopped.contains("interrupted"), "{stopped}");
    assert!(
        !master.log().contains("IRC connection lost"),
        "{}",
        master.log()
    );
    assert!(
        !alice
            .seen
            .iter()
            .any(|line| line.contains('\u{1}') || line.contains('\0')),
        "a control character reached the channel: {:#?}",
        alice.seen
    );
}

/// Item 11: link codes could be guessed at the speed of the connection. Five wrong codes a
/// minute per nick, then one clear line; not even a right code goes through until then.
#[test]
fn irc_link_code_guessing_is_limited_per_nick() {
    let server = IrcServer::start();
    let checkout = Checkout::new();
    let mut mallory = IrcClient::connect(&server, "mallory");
    mallory.join("#ci");
    let master = master_with(&server, &checkout.upstream, "", "");
    mallory.wait_bot_join();
    for guess in 0..5 {
        mallory.say(BOT, &format!("link AAAA-AAA{guess}"));
        mallory.wait_bot("mallory", "unknown or expired link code");
    }
    mallory.say(BOT, "link AAAA-AAA9");
    let limited = mallory.wait_bot("mallory", "too many");
    assert!(
        limited.starts_with("too many wrong link codes from this nick; try again in "),
        "{limited}"
    );
    // A real code is not tried for her now (and stays good for its owner).
    let issued = master.ssh_ok("irc-link");
    let code = issued.lines().next().expect("a code").trim().to_string();
    mallory.say(BOT, &format!("link {code}"));
    mallory.wait_bot("mallory", "too many");
    let mut alice = IrcClient::connect(&server, "alice");
    alice.join("#ci");
    alice.say(BOT, &format!("link {code}"));
    alice.wait_bot("alice", "alice now speaks for");
}

/// Item 11: answers and announcements shared one queue, so a channel asking the bot many things
/// delayed a build's result by minutes. Announcements go first.
#[test]
fn irc_an_announcement_overtakes_queued_answers() {
    let server = IrcServer::start();
    let checkout = Checkout::new();
    let gates = tempfile::tempdir().expect("temp dir");
    let gate = gates.path().join("go");
    let mut alice = IrcClient::connect(&server, "alice");
    alice.join("#ci");
    let master = master_with(&server, &checkout.upstream, &gated_step(&gate, "false"), "");
    alice.wait_bot_join();
    let _slave = master.start_slave("s1");
    master.ssh_ok("force linux --reason 'to fail'");
    wait_until("linux #1 to run", || {
        master.api("/api/builds?builder=linux")[0]["running"] == true
    });
    // 150 answers at 100 ms a line: fifteen seconds of talk queued.
    for _ in 0..150 {
        alice.say("#ci", &format!("{BOT}: version"));
    }
    alice.wait_bot("#ci", "buildbot ");
    std::fs::write(&gate, "").expect("gate opened");
    alice.wait_bot("#ci", "linux #1: failure");
    let said = alice.bot_lines("#ci");
    let answers_before = said
        .iter()
        .filter(|line| line.starts_with("buildbot "))
        .count();
    assert!(
        answers_before < 150,
        "the result came after all {answers_before} answers: {said:#?}"
    );
}

/// Issue 24: a series landed by `buildbot land` is announced in the channel with the default
/// notify set: "landed 1 commit by USER on main: SHA".
#[test]
fn irc_announces_a_landing() {
    let server = IrcServer::start();
    let checkout = Checkout::new();
    let mut alice = IrcClient::connect(&server, "alice");
    alice.join("#ci");
    let mut setup = MasterSetup::linux_builder(
        &["s1"],
        &checkout.upstream,
        r#"{ name = "test", command = "true" },"#,
    );
    setup.extra_config.push_str(&server.master_config(""));
    setup
        .extra_config
        .push_str("\n[[land]]\nbranch = \"main\"\nbuilders = [\"linux\"]\n");
    let master = TestMaster::start_with(setup);
    alice.wait_bot_join();
    let _slave = master.start_slave("s1");
    // The checkout's committed (unpushed) work is the series.
    let head = crate::repo::git(&checkout.work, &["rev-parse", "HEAD"]);
    let bundle = checkout.work.join("..").join("series.bundle");
    crate::repo::git(
        &checkout.work,
        &[
            "bundle",
            "create",
            "-q",
            bundle.to_str().expect("utf-8"),
            "origin/HEAD..HEAD",
        ],
    );
    let out = master.ssh_with(
        &master.user_key,
        &current_user(),
        "land --onto main",
        &[],
        Some(&std::fs::read(&bundle).expect("bundle")),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = alice.wait_bot("#ci", "landed 1 commit by");
    assert!(
        said.contains(&format!(
            "by {} on main: {}",
            current_user(),
            &head.trim()[..7]
        )),
        "{said}"
    );
}

/// Issue 26: the announcement of a failed build names its new test failures.
#[test]
fn irc_announces_the_new_test_failures_of_a_failed_build() {
    let server = IrcServer::start();
    let checkout = Checkout::new();
    let report = tempfile::tempdir().expect("temp dir");
    let xml = report.path().join("junit.xml");
    std::fs::write(
        &xml,
        r#"<testsuite name="demo"><testcase name="test_ok"/><testcase name="test_a"><failure message="a"/></testcase><testcase name="test_b"><error message="b"/></testcase></testsuite>"#,
    )
    .expect("write");
    let step = format!(
        r#"{{ name = "test", command = "mkdir -p reports && cp {} reports/ && exit 1", test_results = ["junit:reports/*.xml"] }},"#,
        xml.display()
    );
    let mut alice = IrcClient::connect(&server, "alice");
    alice.join("#ci");
    let master = master_with(&server, &checkout.upstream, &step, "");
    alice.wait_bot_join();
    let _slave = master.start_slave("s1");
    master.ssh_ok("force linux --reason 'tests'");
    let failed = alice.wait_bot("#ci", "linux #1: failure");
    assert!(
        failed.contains("2 new failures (test_b, test_a)"),
        "{failed}"
    );
}

/// Issue 28: a bisection is announced where failures are, when it starts and when it names the
/// culprit, with the builder page.
#[test]
fn irc_announces_a_bisection_and_its_culprit() {
    let server = IrcServer::start();
    let mut alice = IrcClient::connect(&server, "alice");
    alice.join("#ci");
    let (_tmp, upstream, base, ids) = crate::bisect::sixteen_commits(11, None);
    let master = crate::bisect::master_bisecting_with(
        &upstream,
        1,
        "test ! -e broken",
        &server.master_config(""),
    );
    alice.wait_bot_join();
    let _slave = master.start_slave("s1");
    crate::bisect::green_then_red(&master, &base);
    let started = alice.wait_bot("#ci", "linux: bisecting");
    assert!(
        started.starts_with(&format!(
            "linux: bisecting {}..{}: 16 commits http",
            &base[..7],
            &ids[15][..7]
        )) && started.ends_with("/builders/linux"),
        "{started}"
    );
    let found = alice.wait_bot("#ci", "linux: first bad:");
    assert!(
        found.starts_with(&format!(
            "linux: first bad: {} by Alice <alice@example.org> 'Refactor parser' — ",
            &ids[10][..7]
        )) && found.ends_with("/builders/linux"),
        "{found}"
    );
}
