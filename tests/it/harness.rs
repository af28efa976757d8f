//! The test harness: real `buildbot master` processes in temp dirs on loopback ports chosen at
//! run time, driven with the real OpenSSH client. Everything started here stops on drop.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_buildbot");

/// How long a test waits for something that should take milliseconds.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The unix account the tests log in as: whoever runs them (root in CI, hence allow_root).
pub fn current_user() -> String {
    let uid = nix::unistd::getuid();
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|user| user.name)
        .expect("the test runner's uid has an account")
}

/// An SSH key pair made with the real ssh-keygen.
pub struct TestKey {
    pub private: PathBuf,
    pub public_line: String,
}

impl TestKey {
    /// `kind` is ssh-keygen's `-t` value, with `bits` for ecdsa/rsa.
    pub fn generate(dir: &Path, name: &str, kind: &str, bits: Option<u32>) -> TestKey {
        let private = dir.join(name);
        let mut command = Command::new("ssh-keygen");
        command
            .args(["-q", "-N", "", "-C", name, "-t", kind, "-f"])
            .arg(&private);
        if let Some(bits) = bits {
            command.args(["-b", &bits.to_string()]);
        }
        let output = run_with_timeout(command, None);
        assert!(
            output.status.success(),
            "ssh-keygen -t {kind} failed: {}",
            text(&output.stderr)
        );
        let public_line = std::fs::read_to_string(private.with_extension("pub"))
            .expect("public key written")
            .trim()
            .to_string();
        TestKey {
            private,
            public_line,
        }
    }

    pub fn ed25519(dir: &Path, name: &str) -> TestKey {
        TestKey::generate(dir, name, "ed25519", None)
    }
}

/// A running master. Dropping it kills the process and removes its directory.
pub struct TestMaster {
    pub dir: TempDir,
    pub ssh_port: u16,
    pub http_port: u16,
    pub host_key_fingerprint: String,
    child: Option<Child>,
    log_path: PathBuf,
    /// A key pre-authorized for `current_user()`.
    pub user_key: TestKey,
    pub keys_dir: TempDir,
    /// The directories of the slaves made by `create-slave` for this master.
    pub slaves_dir: TempDir,
    open_file_limit: Option<u64>,
}

pub struct MasterSetup {
    /// Slaves to create with `create-slave` (their [[slave]] blocks go into master.toml).
    pub slaves: Vec<String>,
    /// Appended to (or replacing parts of) the generated master.toml.
    pub extra_config: String,
    pub allow_root: bool,
    /// (old, new) replacements applied to the generated master.toml, e.g. to change a setting.
    pub edits: Vec<(&'static str, &'static str)>,
    /// RLIMIT_NOFILE (soft and hard) the master process starts with, to run it short of file
    /// descriptors.
    pub open_file_limit: Option<u64>,
    /// A master directory whose `host_key` (and `.pub`) replace the fresh ones, as every
    /// master of one cluster presents one host key (docs/multimaster.md).
    pub host_key_of: Option<PathBuf>,
}

impl MasterSetup {
    /// A master with try builders of these names, each on a slave of its own (the slaves need
    /// not be running for jobs to be accepted and queued).
    pub fn with_try_builders(builders: &[&str], repo: &str) -> MasterSetup {
        let keys = tempfile::tempdir().expect("temp dir");
        let mut extra = String::new();
        for (index, builder) in builders.iter().enumerate() {
            let slave_key = TestKey::ed25519(keys.path(), &format!("slave-{index}"));
            extra.push_str(&format!(
                "\n[[slave]]\nname = \"slave-{index}\"\npublic_key = \"{}\"\n\
                 [[builder]]\nname = \"{builder}\"\nslaves = [\"slave-{index}\"]\nrepo = \"{repo}\"\n\
                 steps = [ {{ name = \"test\", command = \"true\" }} ]\n",
                slave_key.public_line
            ));
        }
        let names: Vec<String> = builders.iter().map(|b| format!("\"{b}\"")).collect();
        extra.push_str(&format!(
            "\n[[scheduler]]\nkind = \"try\"\nbuilders = [{}]\n",
            names.join(", ")
        ));
        MasterSetup {
            extra_config: extra,
            ..MasterSetup::default()
        }
    }
}

impl MasterSetup {
    /// A try builder `linux` on the pool `slaves` (made with `create-slave`), building `repo`
    /// with `steps` (TOML array items, e.g. `{ name = "test", command = "make" },`).
    pub fn linux_builder(slaves: &[&str], repo: &Path, steps: &str) -> MasterSetup {
        let names: Vec<String> = slaves.iter().map(|name| format!("\"{name}\"")).collect();
        MasterSetup {
            slaves: slaves.iter().map(ToString::to_string).collect(),
            extra_config: format!(
                "\n[[builder]]\nname = \"linux\"\nslaves = [{}]\nrepo = \"{}\"\nbranch = \"main\"\nsteps = [\n{steps}\n]\n\
                 \n[[scheduler]]\nkind = \"try\"\nbuilders = [\"linux\"]\n",
                names.join(", "),
                repo.display()
            ),
            ..MasterSetup::default()
        }
    }
}

impl Default for MasterSetup {
    fn default() -> Self {
        MasterSetup {
            slaves: Vec::new(),
            extra_config: String::new(),
            allow_root: true,
            edits: Vec::new(),
            open_file_limit: None,
            host_key_of: None,
        }
    }
}

impl TestMaster {
    pub fn start() -> TestMaster {
        TestMaster::start_with(MasterSetup::default())
    }

    /// Creates a master with `create-master`, points its key lookup at the temp dir only (tests
    /// never read the real home directory's files), and starts it.
    pub fn start_with(setup: MasterSetup) -> TestMaster {
        let dir = tempfile::Builder::new()
            .prefix("buildbot-master-")
            .tempdir()
            .expect("temp dir");
        let keys_dir = tempfile::Builder::new()
            .prefix("buildbot-keys-")
            .tempdir()
            .expect("temp dir");
        let mut create = Command::new(BIN);
        create.arg("create-master").arg(dir.path()).args([
            "--ssh-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ]);
        let created = run_with_timeout(create, None);
        assert!(
            created.status.success(),
            "create-master failed: {}",
            text(&created.stderr)
        );
        let config_path = dir.path().join("master.toml");
        let mut config = std::fs::read_to_string(&config_path).expect("config written");
        config = config.replace(
            "authorized_keys = [\"%h/.ssh/authorized_keys\", \"authorized_keys.d/%u\"]",
            "authorized_keys = [\"authorized_keys.d/%u\"]",
        );
        if setup.allow_root {
            config = config.replace("allow_root = false", "allow_root = true");
        }
        let slaves_dir = tempfile::Builder::new()
            .prefix("buildbot-slaves-")
            .tempdir()
            .expect("temp dir");
        if let Some(other) = &setup.host_key_of {
            // The commands of docs/multimaster.md: cp -p keeps the private key's mode 0600.
            for file in ["host_key", "host_key.pub"] {
                let copied = run_with_timeout(
                    {
                        let mut cp = Command::new("cp");
                        cp.arg("-p")
                            .arg(other.join(file))
                            .arg(dir.path().join(file));
                        cp
                    },
                    None,
                );
                assert!(
                    copied.status.success(),
                    "cp {file}: {}",
                    text(&copied.stderr)
                );
            }
        }
        let host_key = std::fs::read_to_string(dir.path().join("host_key.pub")).expect("host key");
        for name in &setup.slaves {
            let mut create = Command::new(BIN);
            create
                .arg("create-slave")
                .arg(slaves_dir.path().join(name))
                // The real port is known once the master runs; start_slave writes it in.
                .args([
                    "--master",
                    "127.0.0.1:1",
                    "--name",
                    name,
                    "--master-host-key",
                    host_key.trim(),
                ]);
            let created = run_with_timeout(create, None);
            assert!(
                created.status.success(),
                "create-slave: {}",
                text(&created.stderr)
            );
            let snippet = text(&created.stdout);
            let block = &snippet[snippet.find("[[slave]]").expect("snippet printed")..];
            config.push('\n');
            config.push_str(block);
        }
        config.push_str(&setup.extra_config);
        for (old, new) in &setup.edits {
            assert!(config.contains(old), "master.toml has no {old}");
            config = config.replace(old, new);
        }
        std::fs::write(&config_path, config).expect("config rewritten");

        let user_key = TestKey::ed25519(keys_dir.path(), "user");
        let master = TestMaster {
            log_path: dir.path().join("master.log"),
            dir,
            ssh_port: 0,
            http_port: 0,
            host_key_fingerprint: String::new(),
            child: None,
            user_key,
            keys_dir,
            slaves_dir,
            open_file_limit: setup.open_file_limit,
        };
        master.authorize(&current_user(), &master.user_key.public_line);
        master.launched()
    }

    fn launched(mut self) -> TestMaster {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("log file");
        let mut command = Command::new(BIN);
        if let Some(limit) = self.open_file_limit {
            use std::os::unix::process::CommandExt;
            // SAFETY: runs between fork and exec; setrlimit(2) is async-signal-safe and the
            // closure allocates nothing.
            unsafe {
                command.pre_exec(move || {
                    nix::sys::resource::setrlimit(
                        nix::sys::resource::Resource::RLIMIT_NOFILE,
                        limit,
                        limit,
                    )
                    .map_err(std::io::Error::from)
                });
            }
        }
        let mut child = command
            .arg("master")
            .arg(self.dir.path())
            .env("RUST_LOG", "debug,russh=info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("master starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines_tx, lines_rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keeps draining after the harness has what it needs, so the master's later
            // output never meets a closed pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        self.child = Some(child);
        let deadline = Instant::now() + PATIENCE;
        while self.host_key_fingerprint.is_empty() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let line = match lines_rx.recv_timeout(remaining) {
                Ok(line) => line,
                Err(_) => panic!("master did not start; log:\n{}", self.log()),
            };
            if let Some(addr) = line.strip_prefix("ssh: ") {
                self.ssh_port = port_of(addr);
            } else if let Some(url) = line.strip_prefix("web: ") {
                self.http_port = port_of(url.trim_start_matches("http://").trim_end_matches('/'));
            } else if let Some(fingerprint) = line.strip_prefix("host key: ") {
                self.host_key_fingerprint = fingerprint.to_string();
            }
        }
        // A restart must come back on the same ports, where slaves and clients look for it.
        let config_path = self.path().join("master.toml");
        let config = std::fs::read_to_string(&config_path).expect("config");
        let pinned = config
            .replacen(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"127.0.0.1:{}\"", self.ssh_port),
                1,
            )
            .replacen(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"127.0.0.1:{}\"", self.http_port),
                1,
            );
        std::fs::write(&config_path, pinned).expect("config written");
        self
    }

    /// Starts `buildbot slave` for a slave made at setup, pointed at this master's port, and
    /// waits until the master counts it as connected.
    pub fn start_slave(&self, name: &str) -> TestSlave {
        let slave = self.launch_slave(name, |_| {});
        self.wait_connected(name);
        slave
    }

    /// `start_slave` with changes to its slave.toml (e.g. keepalive settings).
    pub fn start_slave_with(&self, name: &str, edit: impl FnOnce(&mut String)) -> TestSlave {
        let slave = self.launch_slave(name, edit);
        self.wait_connected(name);
        slave
    }

    pub fn wait_connected(&self, name: &str) {
        wait_until(&format!("slave {name} to connect"), || {
            self.slave_connected(name)
        });
    }

    /// Whether the JSON API (`/api/slaves`) counts the slave as connected.
    pub fn slave_connected(&self, name: &str) -> bool {
        let slaves = self.api("/api/slaves");
        let slave = slaves
            .as_array()
            .unwrap_or_else(|| panic!("/api/slaves is not a list: {slaves}"))
            .iter()
            .find(|slave| slave["name"] == name)
            .unwrap_or_else(|| panic!("no slave {name} in /api/slaves: {slaves}"));
        slave["connected"]
            .as_bool()
            .unwrap_or_else(|| panic!("no connected flag for {name}: {slave}"))
    }

    /// GETs `path` (e.g. `/api/builds?builder=linux`) from this master's web server and parses
    /// the JSON; panics on anything but a 200 with JSON.
    pub fn api(&self, path: &str) -> serde_json::Value {
        let body = self.page(path);
        serde_json::from_str(&body).unwrap_or_else(|err| panic!("GET {path}: {err}: {body}"))
    }

    /// GETs the HTML page at `path` (e.g. `/builders/linux`); panics on anything but a 200.
    pub fn page(&self, path: &str) -> String {
        let url = format!("http://127.0.0.1:{}{path}", self.http_port);
        let response = http_client()
            .get(&url)
            .send()
            .unwrap_or_else(|err| panic!("GET {url}: {err}"));
        let status = response.status();
        let body = response
            .text()
            .unwrap_or_else(|err| panic!("GET {url}: {err}"));
        assert_eq!(status.as_u16(), 200, "GET {url}: {body}");
        body
    }

    /// Waits for build `number` of `builder` to have finished and returns it as `/api/builds`
    /// shows it. Asked by number: the build may not have started yet when this is called, and
    /// another may follow it at once.
    pub fn finished_build(&self, builder: &str, number: u64) -> serde_json::Value {
        let mut build = serde_json::Value::Null;
        wait_until(&format!("{builder} #{number} to finish"), || {
            let all = self.api(&format!("/api/builds?builder={builder}&limit=50"));
            build = all
                .as_array()
                .and_then(|all| all.iter().find(|b| b["number"] == number))
                .cloned()
                .unwrap_or_default();
            build["running"] == false
        });
        build
    }

    /// The builder's most recent build as `/api/builds` shows it, or `Null` while it has none:
    /// for waits, in which the first build may not be recorded yet.
    pub fn newest_build(&self, builder: &str) -> serde_json::Value {
        self.api(&format!("/api/builds?builder={builder}"))[0].clone()
    }

    /// The builder's most recent build as `/api/builds` shows it (panics when there is none).
    pub fn api_last_build(&self, builder: &str) -> serde_json::Value {
        let builds = self.api(&format!("/api/builds?builder={builder}"));
        let last = builds[0].clone();
        assert!(last.is_object(), "{builder} has no build yet: {builds}");
        last
    }

    /// How long a round trip of `ssh master watch` takes now: the baseline that a command over
    /// ssh is measured against on a machine that may be loaded.
    pub fn ssh_round_trip(&self) -> Duration {
        let started = Instant::now();
        let output = self.ssh(&self.user_key, &current_user(), "watch");
        assert!(output.status.success(), "{}", text(&output.stderr));
        started.elapsed()
    }

    /// Waits until `builder` (URL-encoded), which has no slave, holds `count` queued requests,
    /// as the JSON API says (the master claims a job before its scheduler queues it).
    pub fn wait_queued(&self, builder: &str, count: u64) {
        wait_until(&format!("{count} queued for {builder}"), || {
            let view = self.api(&format!("/api/builders/{builder}"));
            assert_eq!(view["state"], "offline", "{view}");
            view["queued"] == count
        });
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGKILL: the master gets no chance to clean up.
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            wait_with_deadline(&mut child, "the SIGKILLed master", PATIENCE);
        }
    }

    /// Starts a slave without waiting for it to connect; `edit` may change its slave.toml.
    pub fn launch_slave(&self, name: &str, edit: impl FnOnce(&mut String)) -> TestSlave {
        self.launch_slave_env(name, edit, &[])
    }

    /// `start_slave_with`, the slave process also getting `env` (e.g. fault injection).
    pub fn start_slave_env(
        &self,
        name: &str,
        edit: impl FnOnce(&mut String),
        env: &[(&str, &str)],
    ) -> TestSlave {
        let slave = self.launch_slave_env(name, edit, env);
        self.wait_connected(name);
        slave
    }

    fn launch_slave_env(
        &self,
        name: &str,
        edit: impl FnOnce(&mut String),
        env: &[(&str, &str)],
    ) -> TestSlave {
        let dir = self.slaves_dir.path().join(name);
        let config_path = dir.join("slave.toml");
        let mut config = std::fs::read_to_string(&config_path).expect("slave.toml");
        let start = config.find("master = ").expect("master line");
        let end = start + config[start..].find('\n').expect("line end");
        config.replace_range(
            start..end,
            &format!("master = \"127.0.0.1:{}\"", self.ssh_port),
        );
        edit(&mut config);
        std::fs::write(&config_path, config).expect("slave.toml written");
        TestSlave::launch(dir, env)
    }

    /// Starts a stopped master again.
    pub fn start_again(mut self) -> TestMaster {
        assert!(self.child.is_none(), "master still running");
        self.host_key_fingerprint.clear();
        self.launched()
    }

    /// Peak resident memory of the master process so far, in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().expect("master running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc status")
    }

    /// The flags that point `buildbot try`, `watch` and `stop` at this master as the test user,
    /// with `key`.
    pub fn client_args_with(&self, key: &TestKey) -> Vec<String> {
        vec![
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            self.ssh_port.to_string(),
            "-u".into(),
            current_user(),
            "--ssh".into(),
            self.ssh_for_try(key),
        ]
    }

    /// `client_args_with` the test user's authorized key.
    pub fn client_args(&self) -> Vec<String> {
        self.client_args_with(&self.user_key)
    }

    /// `buildbot try [--wait] -b BUILDER` against this master as the test user, from `cwd`;
    /// stdin null, output piped, not started.
    pub fn try_command(&self, cwd: &Path, builder: &str, wait: bool) -> Command {
        let mut command = Command::new(BIN);
        command.arg("try");
        if wait {
            command.arg("--wait");
        }
        command
            .args(["-b", builder])
            .args(self.client_args())
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// The ssh command line `buildbot try --ssh` should run to reach this master as the test
    /// user (no real home-directory files involved).
    pub fn ssh_for_try(&self, key: &TestKey) -> String {
        format!(
            "ssh -F /dev/null -i {} -o BatchMode=yes -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
            key.private.display()
        )
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Writes `authorized_keys.d/USER` with the given lines (replacing what was there).
    pub fn authorize(&self, user: &str, lines: &str) {
        let path = self.path().join("authorized_keys.d").join(user);
        std::fs::write(&path, format!("{lines}\n")).expect("authorized_keys written");
    }

    /// Runs `command` over SSH as the current user with the user key; panics (with its
    /// stderr) unless it succeeds; returns its stdout.
    pub fn ssh_ok(&self, command: &str) -> String {
        let output = self.ssh(&self.user_key, &current_user(), command);
        assert_eq!(
            output.status.code(),
            Some(0),
            "ssh {command}: {}",
            text(&output.stderr)
        );
        text(&output.stdout)
    }

    /// Runs `command` over SSH as the current user with the user key.
    pub fn user_ssh(&self, command: &str) -> Output {
        self.ssh(&self.user_key, &current_user(), command)
    }

    pub fn ssh(&self, key: &TestKey, user: &str, command: &str) -> Output {
        self.ssh_with(key, user, command, &[], None)
    }

    /// Runs the real OpenSSH client against this master, with nothing from the real home
    /// directory (`-F /dev/null`, no known_hosts, only the given key).
    pub fn ssh_with(
        &self,
        key: &TestKey,
        user: &str,
        command: &str,
        extra_options: &[&str],
        stdin: Option<&[u8]>,
    ) -> Output {
        let mut ssh = self.ssh_command(key, user, extra_options);
        if !command.is_empty() {
            ssh.arg(command);
        }
        run_with_timeout(ssh, stdin)
    }

    pub fn ssh_command(&self, key: &TestKey, user: &str, extra_options: &[&str]) -> Command {
        let mut ssh = Command::new("ssh");
        ssh.args(["-F", "/dev/null", "-p", &self.ssh_port.to_string(), "-i"])
            .arg(&key.private)
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "ConnectTimeout=10",
            ])
            .args(extra_options)
            .arg(format!("{user}@127.0.0.1"));
        ssh
    }

    /// Sends SIGTERM and waits for the process; returns its exit status and how long it took.
    pub fn terminate(&mut self) -> (ExitStatus, Duration) {
        let mut child = self.child.take().expect("master running");
        let started = Instant::now();
        signal(child.id(), nix::sys::signal::Signal::SIGTERM);
        let status = wait_with_timeout(&mut child, PATIENCE).expect("master exits after SIGTERM");
        (status, started.elapsed())
    }
}

impl Drop for TestMaster {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), nix::sys::signal::Signal::SIGTERM);
            if wait_with_timeout(&mut child, Duration::from_secs(5)).is_none() {
                reap(&mut child);
            }
        }
        if std::thread::panicking() {
            eprintln!("---- master log ----\n{}", self.log());
        }
    }
}

pub fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid fits"));
    let _ = nix::sys::signal::kill(pid, signal);
}

pub fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for `child` to exit; when `patience` passes first, kills it and panics naming `what`.
pub fn wait_with_deadline(child: &mut Child, what: &str, patience: Duration) -> ExitStatus {
    match wait_with_timeout(child, patience) {
        Some(status) => status,
        None => {
            reap(child);
            panic!(
                "{what} (pid {}) did not exit within {patience:?}; killed it",
                child.id()
            );
        }
    }
}

/// SIGKILLs a child and reaps it, giving up after a few seconds (for drops and clean-ups, which
/// must not panic).
pub fn reap(child: &mut Child) {
    let _ = child.kill();
    let _ = wait_with_timeout(child, Duration::from_secs(5));
}

/// Collects a spawned child's piped stdout and stderr and waits for it to exit; when `patience`
/// passes first, kills it and panics naming `what` with what it printed so far.
pub fn output_with_deadline(mut child: Child, what: &str, patience: Duration) -> Output {
    fn collect(pipe: Option<impl std::io::Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
        let (tx, rx) = mpsc::channel();
        if let Some(mut pipe) = pipe {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                let _ = tx.send(bytes);
            });
        } else {
            let _ = tx.send(Vec::new());
        }
        rx
    }
    let deadline = Instant::now() + patience;
    let stdout = collect(child.stdout.take());
    let stderr = collect(child.stderr.take());
    let status = wait_with_timeout(&mut child, patience);
    // A grandchild (ssh) may hold the pipes open after the child is gone: bound the reads too.
    let left = || deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(1);
    let stdout = stdout.recv_timeout(left());
    let stderr = stderr.recv_timeout(left());
    match (status, stdout, stderr) {
        (Some(status), Ok(stdout), Ok(stderr)) => Output {
            status,
            stdout,
            stderr,
        },
        (status, stdout, stderr) => {
            reap(&mut child);
            panic!(
                "{what} (pid {}) did not finish within {patience:?} (exit status {status:?}); killed it\nstdout: {}\nstderr: {}",
                child.id(),
                text(&stdout.unwrap_or_default()),
                text(&stderr.unwrap_or_default())
            );
        }
    }
}

/// Runs a command to completion (feeding stdin); panics (after killing it) if it takes longer
/// than PATIENCE.
pub fn run_with_timeout(mut command: Command, stdin: Option<&[u8]>) -> Output {
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!("{command:?}");
    let mut child = command
        .spawn()
        .unwrap_or_else(|err| panic!("{what} does not start: {err}"));
    if let Some(bytes) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        let bytes = bytes.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        });
    }
    output_with_deadline(child, &what, PATIENCE)
}

/// Makes the child start with SIGINT's default action, whatever this process inherited: a
/// test run from a non-interactive shell (`trap '' INT`) ignores SIGINT, and an ignored signal
/// stays ignored across exec. Use it on every child a test sends SIGINT (Ctrl-C) to.
pub fn default_sigint(command: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook runs between fork and exec, where only async-signal-safe calls are
    // allowed; it makes a single sigaction(2) call, which is one.
    unsafe {
        command.pre_exec(|| {
            nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGINT,
                nix::sys::signal::SigHandler::SigDfl,
            )
            .map(drop)
            .map_err(std::io::Error::from)
        });
    }
    command
}

/// An HTTP client for the master's web server that gives up after PATIENCE.
pub fn http_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(PATIENCE)
        .build()
        .expect("HTTP client")
}

/// Generous extra time for timing assertions on a loaded 2-core machine: a bound is the
/// configured interval (or grace) plus this, never a few hundred milliseconds.
pub const SLACK: Duration = Duration::from_secs(8);

/// How long the master waits for open sessions at shutdown (`SHUTDOWN_GRACE` in
/// src/master/mod.rs; not configurable).
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

/// How long a slave lets a step's processes take after SIGTERM before SIGKILL (`KILL_GRACE` in
/// src/slave/work.rs; not configurable).
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// A unix group and a user whose primary group it is, made with groupadd/useradd for one test
/// and removed on drop. Needs root (the tests run as root in CI).
pub struct TempAccount {
    pub user: String,
    pub group: String,
    pub gid: nix::unistd::Gid,
}

/// useradd and friends lock /etc/passwd and fail rather than wait: one at a time.
static ACCOUNTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl TempAccount {
    pub fn create(why: &str) -> TempAccount {
        assert!(
            nix::unistd::getuid().is_root(),
            "{why} needs root to create a temporary unix user and group (groupadd, useradd); run the tests as root, as CI does"
        );
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let index = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("bbtest-{}-{index}", std::process::id());
        let run = |program: &str, args: &[&str]| -> Result<(), String> {
            let mut command = Command::new(program);
            command.args(args);
            let output = run_with_timeout(command, None);
            if output.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{program} {args:?} failed: {}",
                    text(&output.stderr)
                ))
            }
        };
        let created = {
            let _lock = ACCOUNTS
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            run("groupadd", &[&name]).and_then(|()| {
                let user = run(
                    "useradd",
                    &[
                        "-M",
                        "-N",
                        "-g",
                        &name,
                        "-d",
                        "/nonexistent",
                        "-s",
                        "/usr/sbin/nologin",
                        &name,
                    ],
                );
                if user.is_err() {
                    let _ = run("groupdel", &[&name]);
                }
                user
            })
        };
        if let Err(err) = created {
            panic!("{why}: {err}");
        }
        // From here on, dropping the account removes the user and the group.
        let mut account = TempAccount {
            user: name.clone(),
            group: name.clone(),
            gid: nix::unistd::Gid::from_raw(u32::MAX),
        };
        account.gid = nix::unistd::Group::from_name(&name)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("{why}: group {name} was not created"))
            .gid;
        account
    }
}

impl TempAccount {
    /// The account's uid.
    pub fn uid(&self) -> nix::unistd::Uid {
        nix::unistd::User::from_name(&self.user)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("user {} exists", self.user))
            .uid
    }

    /// Points the account's home directory (`%h`) at `home` (`usermod -d`, not moved).
    pub fn set_home(&self, home: &Path) {
        let _lock = ACCOUNTS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut usermod = Command::new("usermod");
        usermod.arg("-d").arg(home).arg(&self.user);
        let output = run_with_timeout(usermod, None);
        assert!(
            output.status.success(),
            "usermod -d: {}",
            text(&output.stderr)
        );
    }
}

impl Drop for TempAccount {
    fn drop(&mut self) {
        let _lock = ACCOUNTS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (program, name) in [("userdel", &self.user), ("groupdel", &self.group)] {
            let spawned = Command::new(program)
                .arg(name)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            if let Ok(mut child) = spawned
                && wait_with_timeout(&mut child, PATIENCE).is_none()
            {
                reap(&mut child);
            }
        }
    }
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr}"))
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Waits for a step to write its pid into `path` and returns it.
pub fn wait_for_pid(path: &Path) -> i32 {
    let read = || {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|text| text.trim().parse::<i32>().ok())
    };
    wait_until(&format!("a pid in {}", path.display()), || read().is_some());
    read().unwrap_or_default()
}

/// Whether a process still runs. A zombie has ended: it only waits for its parent to reap it,
/// which in a container may be a slow PID 1.
pub fn process_running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
    })
}

/// Polls `condition` until it holds or PATIENCE runs out.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A running `buildbot slave`. Dropping it stops the process.
pub struct TestSlave {
    pub dir: PathBuf,
    child: Option<Child>,
    log_path: PathBuf,
}

impl TestSlave {
    fn launch(dir: PathBuf, env: &[(&str, &str)]) -> TestSlave {
        let log_path = dir.join("slave.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("log file");
        let child = Command::new(BIN)
            .arg("slave")
            .arg(&dir)
            .env("RUST_LOG", "debug,russh=info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("slave starts");
        TestSlave {
            dir,
            child: Some(child),
            log_path,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(child) = &self.child {
            signal(child.id(), sig);
        }
    }

    /// Starts another `buildbot slave` process on a copy of this slave's directory: the same
    /// name and key, as a second machine (or a restarted one) would present them.
    pub fn twin(&self, parent: &Path) -> TestSlave {
        let dir = parent.join("twin");
        std::fs::create_dir_all(&dir).expect("twin dir");
        for file in ["slave.toml", "slave_key", "slave_key.pub"] {
            std::fs::copy(self.dir.join(file), dir.join(file)).expect("copy");
        }
        TestSlave::launch(dir, &[])
    }

    /// Whether the `buildbot slave` process is still alive (not exited, not killed).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }
}

/// Edits slave.toml's keepalive settings.
pub fn keepalive(interval: &'static str, timeout: &'static str) -> impl FnOnce(&mut String) {
    move |config: &mut String| {
        *config = config
            .replace(
                "keepalive_interval = \"10m\"",
                &format!("keepalive_interval = \"{interval}\""),
            )
            .replace(
                "keepalive_timeout = \"30s\"",
                &format!("keepalive_timeout = \"{timeout}\""),
            );
    }
}

impl Drop for TestSlave {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), nix::sys::signal::Signal::SIGTERM);
            if wait_with_timeout(&mut child, Duration::from_secs(10)).is_none() {
                reap(&mut child);
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "---- slave log ({}) ----\n{}",
                self.dir.display(),
                self.log()
            );
        }
    }
}

/// The text of the first element whose opening tag contains `marker` (e.g. `id="result"`), up
/// to the next tag: for asserting on one element of a page rather than on the whole page,
/// whose stylesheet names every state.
pub fn element_text(html: &str, marker: &str) -> Option<String> {
    let text = element_html(html, marker)?;
    // Undo the template's escaping (`&amp;` last, so an escaped entity stays one).
    Some(
        [
            ("&lt;", "<"),
            ("&gt;", ">"),
            ("&quot;", "\""),
            ("&#x27;", "'"),
            ("&#39;", "'"),
            ("&#x2F;", "/"),
        ]
        .iter()
        .fold(text, |text, (entity, plain)| text.replace(entity, plain))
        .replace("&amp;", "&"),
    )
}

fn element_html(html: &str, marker: &str) -> Option<String> {
    let at = html.find(marker)?;
    let rest = &html[at..];
    let content = &rest[rest.find('>')? + 1..];
    Some(content[..content.find('<')?].trim().to_string())
}
