//! `buildbot try`: builds a try job from the user's checkout (or a ready patch) and pipes it
//! over the user's own `ssh` to the master's `try` command, so ssh-agent, `~/.ssh/config` and
//! known_hosts work as the user expects.
//!
//! Exit codes: 0 delivered (with `--wait`: every build succeeded), 1 a build failed (`--wait`),
//! 2 a usage or infrastructure problem (the message says what to do).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::client::dotfile::{self, DotBuildbot};
use crate::client::patch::{self, PatchOptions};
use crate::tryjob::{self as job, Job};

pub const EXIT_OK: u8 = 0;
pub const EXIT_BUILD_FAILED: u8 = 1;
pub const EXIT_TROUBLE: u8 = 2;

/// The try command's arguments, as parsed by the CLI.
#[derive(Debug, Clone, Default)]
pub struct TryArgs {
    pub builders: Vec<String>,
    pub wait: bool,
    /// A ready patch instead of the checkout's changes; `-` is stdin.
    pub diff: Option<PathBuf>,
    pub patchlevel: u32,
    pub branch: Option<String>,
    pub baserev: Option<String>,
    pub dryrun: bool,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub username: Option<String>,
    pub ssh: Option<String>,
    pub properties: Vec<String>,
    pub include_untracked: bool,
    pub who: Option<String>,
    pub comment: Option<String>,
}

/// A problem worth one line to the user, and exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TryError(pub String);

impl TryError {
    fn new(message: impl Into<String>) -> TryError {
        TryError(message.into())
    }
}

/// Runs `buildbot try` from `cwd`, printing for the user on stdout/stderr; returns the exit code.
pub fn run(args: &TryArgs, cwd: &Path) -> Result<u8, TryError> {
    let dotfile = dotfile::find(cwd).map_err(|err| TryError::new(err.to_string()))?;
    let (dotfile_path, defaults) = match dotfile {
        Some((path, defaults)) => (Some(path), defaults),
        None => (None, DotBuildbot::default()),
    };
    let job = build_job(args, &defaults, cwd)?;
    let connection = Connection::resolve(args, &defaults, dotfile_path.as_deref())?;
    if args.dryrun {
        print_summary(&job, connection.as_ref());
        return Ok(EXIT_OK);
    }
    let Some(connection) = connection else {
        return Err(TryError::new(
            "no master to send the job to: give --host (and --port, --username), or put them in a .buildbot file at the top of your checkout",
        ));
    };
    let encoded = job::encode(&job);
    connection.deliver(&encoded, args.wait)
}

fn build_job(args: &TryArgs, defaults: &DotBuildbot, cwd: &Path) -> Result<Job, TryError> {
    let builders = if args.builders.is_empty() {
        defaults.builders.clone()
    } else {
        args.builders.clone()
    };
    let mut properties = BTreeMap::new();
    for property in &args.properties {
        let Some((key, value)) = property.split_once('=') else {
            return Err(TryError::new(format!(
                "--property {property}: write it as KEY=VALUE"
            )));
        };
        properties.insert(key.to_string(), value.to_string());
    }
    let jobid = format!(
        "{}-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs_f64())
            .unwrap_or_default(),
        rand::random::<u32>() % 1_000_000
    );
    let mut job = Job {
        version: 5,
        jobid,
        branch: args.branch.clone(),
        baserev: args.baserev.clone(),
        patch_level: args.patchlevel,
        patch: None,
        repository: String::new(),
        project: String::new(),
        who: args.who.clone().or_else(|| defaults.who.clone()),
        comment: args.comment.clone(),
        builders,
        properties,
    };
    if let Some(diff) = &args.diff {
        job.patch = Some(read_diff(diff)?);
        return Ok(job);
    }
    let computed = patch::compute(
        cwd,
        &PatchOptions {
            baserev: args.baserev.as_deref(),
            include_untracked: args.include_untracked,
        },
    )
    .map_err(|err| TryError::new(err.to_string()))?;
    if computed.patch.is_empty() {
        return Err(TryError::new(format!(
            "no changes to try: the working tree is the same as the base {} ({})",
            short(&computed.baserev),
            computed.base_from
        )));
    }
    eprintln!(
        "patch: {} files changed, {} insertions(+), {} deletions(-) against {} ({})",
        computed.files_changed,
        computed.insertions,
        computed.deletions,
        short(&computed.baserev),
        computed.base_from
    );
    job.baserev = Some(computed.baserev);
    job.branch = args.branch.clone().or(computed.branch);
    job.repository = computed.repository;
    job.patch_level = 1;
    job.patch = Some(computed.patch);
    if job.who.is_none() {
        job.who = computed.author;
    }
    Ok(job)
}

fn read_diff(path: &Path) -> Result<Vec<u8>, TryError> {
    let mut bytes = Vec::new();
    let read = if path == Path::new("-") {
        std::io::stdin().read_to_end(&mut bytes).map(|_| ())
    } else {
        std::fs::File::open(path).and_then(|mut file| file.read_to_end(&mut bytes).map(|_| ()))
    };
    read.map_err(|err| TryError::new(format!("cannot read --diff {}: {err}", path.display())))?;
    if bytes.is_empty() {
        return Err(TryError::new(format!(
            "--diff {} is empty: nothing to try",
            path.display()
        )));
    }
    Ok(bytes)
}

fn short(rev: &str) -> &str {
    rev.get(..12).unwrap_or(rev)
}

fn print_summary(job: &Job, connection: Option<&Connection>) {
    let patch = job.patch.as_deref().unwrap_or_default();
    println!("Job (dry run, nothing sent):");
    println!("\tRepository: {}", job.repository);
    println!("\tBranch: {}", job.branch.as_deref().unwrap_or("(none)"));
    println!("\tRevision: {}", job.baserev.as_deref().unwrap_or("(none)"));
    println!("\tPatch level: {}", job.patch_level);
    println!(
        "\tBuilders: {}",
        if job.builders.is_empty() {
            "(all try builders)".to_string()
        } else {
            job.builders.join(", ")
        }
    );
    println!("\tWho: {}", job.who.as_deref().unwrap_or("(unknown)"));
    println!(
        "\tPatch: {} bytes, {} lines",
        patch.len(),
        patch.iter().filter(|&&b| b == b'\n').count()
    );
    match connection {
        Some(connection) => println!("\tWould run: {}", connection.describe()),
        None => println!("\tMaster: none configured (give --host or a .buildbot file)"),
    }
}

/// How to reach the master: the user's ssh with flags from the CLI and `.buildbot`.
pub struct Connection {
    ssh_argv: Vec<String>,
    host: String,
    port: Option<u16>,
    username: Option<String>,
    master_host_key: Option<String>,
}

impl Connection {
    /// `Ok(None)` when no host is configured anywhere.
    pub fn resolve(
        args: &TryArgs,
        defaults: &DotBuildbot,
        dotfile: Option<&Path>,
    ) -> Result<Option<Connection>, TryError> {
        let Some(host) = args.host.clone().or_else(|| defaults.host.clone()) else {
            return Ok(None);
        };
        let ssh_command = args
            .ssh
            .clone()
            .or_else(|| defaults.ssh.clone())
            .unwrap_or_else(|| "ssh".to_string());
        let ssh_argv = shlex::split(&ssh_command)
            .filter(|argv| !argv.is_empty())
            .ok_or_else(|| {
                let origin = if args.ssh.is_some() {
                    "--ssh".to_string()
                } else {
                    dotfile.map_or("ssh".to_string(), |path| path.display().to_string())
                };
                TryError::new(format!(
                    "{origin}: cannot split the ssh command '{ssh_command}'"
                ))
            })?;
        Ok(Some(Connection {
            ssh_argv,
            host,
            port: args.port.or(defaults.port),
            username: args.username.clone().or_else(|| defaults.username.clone()),
            master_host_key: defaults.master_host_key.clone(),
        }))
    }

    fn command(&self, remote: &str, known_hosts: Option<&Path>) -> Command {
        let mut command = Command::new(&self.ssh_argv[0]);
        command.args(&self.ssh_argv[1..]);
        if let Some(port) = self.port {
            command.args(["-p", &port.to_string()]);
        }
        if let Some(username) = &self.username {
            command.args(["-l", username]);
        }
        if let Some(known_hosts) = known_hosts {
            command
                .arg("-o")
                .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
                .args(["-o", "StrictHostKeyChecking=yes"]);
        }
        command.arg(&self.host).arg(remote);
        command
    }

    fn describe(&self) -> String {
        let command = self.command("try", None);
        std::iter::once(command.get_program())
            .chain(command.get_args())
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Pipes the job to `ssh HOST try [--wait]`. The master's messages reach the user as they
    /// come (ssh's stdout and stderr are ours).
    fn deliver(&self, job: &[u8], wait: bool) -> Result<u8, TryError> {
        let pinned = self.pinned_known_hosts()?;
        let remote = if wait { "try --wait --json" } else { "try" };
        let mut command = self.command(remote, pinned.as_ref().map(|file| file.path()));
        command.stdin(Stdio::piped());
        if wait {
            command.stdout(Stdio::piped());
        }
        let mut child = command
            .spawn()
            .map_err(|err| TryError::new(format!("cannot run '{}': {err}", self.ssh_argv[0])))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A master that refuses early closes the channel: a broken pipe here is expected,
            // and its reason arrives on stderr.
            let _ = stdin.write_all(job);
        }
        if let Some(progress) = child.stdout.take() {
            let terminal = std::io::stdout().is_terminal();
            crate::client::progress::follow(
                std::io::BufReader::new(progress),
                &mut std::io::stdout(),
                terminal,
            );
        }
        let status = child
            .wait()
            .map_err(|err| TryError::new(format!("ssh did not finish: {err}")))?;
        match status.code() {
            Some(0) => Ok(EXIT_OK),
            Some(1) if wait => Ok(EXIT_BUILD_FAILED),
            Some(255) => Err(TryError::new(format!(
                "ssh to {} failed (see above): check the host, port and username, and that your key is in the master's authorized_keys",
                self.host
            ))),
            Some(_) => Err(TryError::new(
                "the master refused the job (see its message above)",
            )),
            None => Err(TryError::new("ssh was killed by a signal")),
        }
    }

    /// Runs `remote` on the master with the terminal's stdin/stdout/stderr; returns ssh's exit
    /// code (255: ssh itself failed).
    pub fn run_remote(&self, remote: &str) -> Result<i32, TryError> {
        let pinned = self.pinned_known_hosts()?;
        let status = self
            .command(remote, pinned.as_ref().map(|file| file.path()))
            .status()
            .map_err(|err| TryError::new(format!("cannot run '{}': {err}", self.ssh_argv[0])))?;
        Ok(status.code().unwrap_or(255))
    }

    /// Runs `remote` on the master with `input` on its stdin (stdout and stderr are the
    /// terminal's); returns ssh's exit code (255: ssh itself failed).
    pub fn run_remote_with_input(&self, remote: &str, input: &[u8]) -> Result<i32, TryError> {
        let pinned = self.pinned_known_hosts()?;
        let mut child = self
            .command(remote, pinned.as_ref().map(|file| file.path()))
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|err| TryError::new(format!("cannot run '{}': {err}", self.ssh_argv[0])))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A master that refuses early closes the channel; its reason arrives on stderr.
            let _ = stdin.write_all(input);
        }
        let status = child
            .wait()
            .map_err(|err| TryError::new(format!("ssh did not finish: {err}")))?;
        Ok(status.code().unwrap_or(255))
    }

    /// Starts `remote` on the master with its stdout piped to us (stdin closed, stderr the
    /// terminal's). The returned file is the pinned known_hosts; keep it until ssh ends.
    pub fn spawn_remote_reading(
        &self,
        remote: &str,
    ) -> Result<(std::process::Child, Option<tempfile::NamedTempFile>), TryError> {
        let pinned = self.pinned_known_hosts()?;
        let child = self
            .command(remote, pinned.as_ref().map(|file| file.path()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|err| TryError::new(format!("cannot run '{}': {err}", self.ssh_argv[0])))?;
        Ok((child, pinned))
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// A known_hosts file holding only the pinned master key, when `.buildbot` pins one.
    fn pinned_known_hosts(&self) -> Result<Option<tempfile::NamedTempFile>, TryError> {
        let Some(key) = &self.master_host_key else {
            return Ok(None);
        };
        let host_pattern = match self.port {
            Some(port) if port != 22 => format!("[{}]:{port}", self.host),
            _ => self.host.clone(),
        };
        let mut file = tempfile::NamedTempFile::new()
            .map_err(|err| TryError::new(format!("cannot write a temporary known_hosts: {err}")))?;
        writeln!(file, "{host_pattern} {}", key.trim())
            .map_err(|err| TryError::new(format!("cannot write a temporary known_hosts: {err}")))?;
        Ok(Some(file))
    }
}
