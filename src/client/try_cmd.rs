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
use crate::client::patch::{self, FileStat, PatchOptions};
use crate::client::ssh_stderr::{self, SshTrouble};
use crate::tryjob::{self as job, Job};

pub const EXIT_OK: u8 = crate::commands::EXIT_OK;
pub const EXIT_BUILD_FAILED: u8 = crate::commands::EXIT_FAILED;
pub const EXIT_TROUBLE: u8 = crate::commands::EXIT_USAGE;

/// The try command's arguments, as parsed by the CLI.
#[derive(Debug, Clone, Default)]
pub struct TryArgs {
    pub builders: Vec<String>,
    pub wait: bool,
    /// With `wait`: how many lines of a failed step's log to show.
    pub tail: usize,
    /// A ready patch instead of the checkout's changes; `-` is stdin.
    pub diff: Option<PathBuf>,
    pub patchlevel: u32,
    pub branch: Option<String>,
    pub baserev: Option<String>,
    pub dryrun: bool,
    /// With `dryrun`, print the patch too.
    pub verbose: bool,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub username: Option<String>,
    pub ssh: Option<String>,
    /// Pins the master's host key ("ssh-ed25519 AAAA..."), as `master_host_key` in `.buildbot`.
    pub master_host_key: Option<String>,
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
    let (job, files) = build_job(args, &defaults, cwd)?;
    let connection = Connection::resolve(args, &defaults, dotfile_path.as_deref())?;
    if args.dryrun {
        print_summary(&job, files.as_deref(), connection.as_ref());
        if args.verbose {
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(job.patch.as_deref().unwrap_or_default());
            let _ = stdout.flush();
        }
        return Ok(EXIT_OK);
    }
    let Some(connection) = connection else {
        return Err(TryError::new(
            "no master to send the job to: give --host (and --port, --username), or put them in a .buildbot file at the top of your checkout",
        ));
    };
    let encoded = job::encode(&job);
    connection.deliver(&encoded, args.wait.then_some(args.tail))
}

/// The job, and the files its patch touches when they can be told (for the dry run).
fn build_job(
    args: &TryArgs,
    defaults: &DotBuildbot,
    cwd: &Path,
) -> Result<(Job, Option<Vec<FileStat>>), TryError> {
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
        let patch = read_diff(diff)?;
        // An empty diff (a commit that reverts to its parent, `--diff /dev/null`) is a job
        // without a patch: the builders build the base as it is, as Buildbot's client does.
        if patch.is_empty() {
            eprintln!(
                "patch: --diff {} is empty; the job is sent without a patch (the builders build {})",
                diff.display(),
                args.baserev
                    .as_deref()
                    .map_or("their branch's tip".to_string(), |rev| format!(
                        "--baserev {rev}"
                    ))
            );
            return Ok((job, Some(Vec::new())));
        }
        if let Some(level) = job::patch_level_hint(&patch, args.patchlevel) {
            return Err(TryError::new(format!(
                "--diff {}: its paths start with a/ and b/, as git writes them, so -p {} would find no file: try -p {level}",
                diff.display(),
                args.patchlevel
            )));
        }
        let files = patch::stats_of(&patch);
        job.patch = Some(patch);
        return Ok((job, files));
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
            "no changes to try: the working tree is the same as the base {} ({}); to build the base as it is, send an empty diff: --diff /dev/null --baserev {}",
            short(&computed.baserev),
            computed.base_from,
            computed.baserev
        )));
    }
    eprintln!(
        "patch: {} against {} ({})",
        crate::status::text::diffstat_summary(
            computed.files_changed,
            computed.insertions,
            computed.deletions
        ),
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
    Ok((job, Some(computed.files)))
}

fn read_diff(path: &Path) -> Result<Vec<u8>, TryError> {
    let mut bytes = Vec::new();
    let read = if path == Path::new("-") {
        std::io::stdin().read_to_end(&mut bytes).map(|_| ())
    } else {
        std::fs::File::open(path).and_then(|mut file| file.read_to_end(&mut bytes).map(|_| ()))
    };
    read.map_err(|err| TryError::new(format!("cannot read --diff {}: {err}", path.display())))?;
    Ok(bytes)
}

fn short(rev: &str) -> &str {
    rev.get(..12).unwrap_or(rev)
}

fn print_summary(job: &Job, files: Option<&[FileStat]>, connection: Option<&Connection>) {
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
        "\tPatch: {}, {}",
        crate::status::text::count(patch.len(), "byte", "bytes"),
        crate::status::text::count(
            patch.iter().filter(|&&b| b == b'\n').count(),
            "line",
            "lines"
        )
    );

    match connection {
        Some(connection) => println!("\tWould run: {}", connection.describe()),
        None => println!("\tMaster: none configured (give --host or a .buildbot file)"),
    }
    if let Some(files) = files {
        println!("Files:");
        print!("{}", patch::diffstat(files));
    }
}

/// ssh running one master command. Holds the pinned known_hosts file until ssh ends.
pub struct SshRun {
    pub child: std::process::Child,
    stderr: Option<std::thread::JoinHandle<SshTrouble>>,
    _pinned: Option<tempfile::NamedTempFile>,
}

/// How ssh ended: its exit code (255: ssh itself failed) and what its stderr said.
#[derive(Debug, Clone, Copy)]
pub struct SshExit {
    pub code: Option<i32>,
    pub trouble: SshTrouble,
}

impl SshRun {
    /// Waits for ssh and for the last of its stderr.
    pub fn wait(mut self) -> Result<SshExit, TryError> {
        let status = self
            .child
            .wait()
            .map_err(|err| TryError::new(format!("ssh did not finish: {err}")))?;
        let trouble = self
            .stderr
            .take()
            .and_then(|thread| thread.join().ok())
            .unwrap_or_default();
        Ok(SshExit {
            code: status.code(),
            trouble,
        })
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
            master_host_key: args
                .master_host_key
                .clone()
                .or_else(|| defaults.master_host_key.clone()),
        }))
    }

    fn command(&self, remote: &str, known_hosts: Option<&Path>) -> Command {
        self.command_with(remote, known_hosts, &[])
    }

    /// The ssh command, `extra` options before the host.
    fn command_with(&self, remote: &str, known_hosts: Option<&Path>, extra: &[&str]) -> Command {
        let mut command = Command::new(&self.ssh_argv[0]);
        // ssh takes the first value of an option: a pinned key goes before the user's own
        // options (`--ssh "ssh -o StrictHostKeyChecking=no"` must not undo the pin).
        if let Some(known_hosts) = known_hosts {
            command
                .arg("-o")
                .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
                .args(["-o", "StrictHostKeyChecking=yes"]);
        }
        command.args(&self.ssh_argv[1..]);
        if let Some(port) = self.port {
            command.args(["-p", &port.to_string()]);
        }
        if let Some(username) = &self.username {
            command.args(["-l", username]);
        }
        command.args(extra).arg(&self.host).arg(remote);
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

    /// Pipes the job to `ssh HOST try [--wait]`; `wait` holds the `--tail` to ask for. The
    /// master's messages reach the user as they come (ssh's stderr passes through; with
    /// `--wait` its stdout is rendered).
    fn deliver(&self, job: &[u8], wait: Option<usize>) -> Result<u8, TryError> {
        let remote = match wait {
            Some(tail) => format!("try --wait --json --tail {tail}"),
            None => "try".to_string(),
        };
        let wait = wait.is_some();
        let mut run = self.spawn(&remote, Stdio::piped(), wait)?;
        if let Some(mut stdin) = run.child.stdin.take() {
            // A master that refuses early closes the channel: a broken pipe here is expected,
            // and its reason arrives on stderr.
            let _ = stdin.write_all(job);
        }
        let interrupted = if wait {
            crate::client::interrupt::catch()
        } else {
            None
        };
        if let Some(progress) = run.child.stdout.take() {
            let terminal = std::io::stdout().is_terminal();
            crate::client::progress::follow(
                std::io::BufReader::new(progress),
                &mut std::io::stdout(),
                terminal,
            );
        }
        let exit = run.wait()?;
        if interrupted.is_some_and(|caught| caught.happened()) {
            return Err(TryError::new(
                "interrupted: the master stops this job's builds when `try --wait` goes away (send without --wait to leave them running, and follow them with `buildbot watch`)",
            ));
        }
        match exit.code {
            Some(0) => Ok(EXIT_OK),
            // Refused (the master's line is above) or, with --wait, a build that failed: one
            // exit code for both, as for force and stop (`commands`, docs/try.md).
            Some(1) => Ok(EXIT_BUILD_FAILED),
            Some(255) => Err(self.failure(exit.trouble, wait)),
            Some(_) if exit.trouble.shutting_down => Err(self.failure(exit.trouble, wait)),
            Some(_) => Err(TryError::new(
                "the master refused the job (see its message above)",
            )),
            None => Err(TryError::new("ssh was killed by a signal")),
        }
    }

    /// What to tell the user when ssh failed (exit status 255), from what its stderr said.
    pub fn failure(&self, trouble: SshTrouble, waiting_for_builds: bool) -> TryError {
        if trouble.shutting_down {
            return TryError::new(if waiting_for_builds {
                "the master is shutting down; your build will run again when it is back (follow it with `buildbot watch`)"
            } else {
                "the master is shutting down; try again when it is back"
            });
        }
        if trouble.host_key {
            return TryError::new(match &self.master_host_key {
                Some(_) => "the master's host key is not the pinned master_host_key (from --master-host-key or .buildbot): compare it with the master's host_key.pub, which the master prints when it starts"
                .to_string(),
                None => format!(
                    "the master's host key is not known: add master_host_key = \"ssh-ed25519 ...\" to .buildbot (the master prints the line when it starts; it is the master's host_key.pub), or pass --master-host-key, or add the line \"{} ssh-ed25519 ...\" to your known_hosts",
                    self.known_hosts_pattern()
                ),
            });
        }
        if trouble.master_explained {
            return TryError::new("the master refused the login (its reason is above)");
        }
        TryError::new(format!(
            "ssh to {} failed (see above): check the host, port and username, and that your key is in the master's authorized_keys",
            self.host
        ))
    }

    /// Starts ssh running `remote`, with its stdin as given, its stdout piped when `read_stdout`
    /// (else the terminal's), and its stderr passed through to ours and read for the cause of a
    /// failure.
    pub fn spawn(&self, remote: &str, stdin: Stdio, read_stdout: bool) -> Result<SshRun, TryError> {
        let pinned = self.pinned_known_hosts()?;
        let mut command = self.command(remote, pinned.as_ref().map(|file| file.path()));
        command.stdin(stdin).stderr(Stdio::piped());
        if read_stdout {
            command.stdout(Stdio::piped());
        }
        let mut child = command
            .spawn()
            .map_err(|err| TryError::new(format!("cannot run '{}': {err}", self.ssh_argv[0])))?;
        let stderr = child.stderr.take().map(ssh_stderr::pass_through);
        Ok(SshRun {
            child,
            stderr,
            _pinned: pinned,
        })
    }

    /// Runs `remote` on the master with the terminal's stdin/stdout; returns how ssh ended.
    pub fn run_remote(&self, remote: &str) -> Result<SshExit, TryError> {
        self.spawn(remote, Stdio::inherit(), false)?.wait()
    }

    /// Runs `remote` on the master on the user's terminal (`ssh -t` when `terminal`), every
    /// stream the terminal's; returns how ssh ended.
    pub fn run_remote_terminal(&self, remote: &str, terminal: bool) -> Result<SshExit, TryError> {
        let pinned = self.pinned_known_hosts()?;
        let extra: &[&str] = if terminal { &["-t"] } else { &[] };
        let mut command = self.command_with(remote, pinned.as_ref().map(|file| file.path()), extra);
        let status = command
            .status()
            .map_err(|err| TryError::new(format!("cannot run '{}': {err}", self.ssh_argv[0])))?;
        // stderr stays the terminal's: ssh's own complaints and the master's refusal are
        // already in front of the user.
        Ok(SshExit {
            code: status.code(),
            trouble: SshTrouble::default(),
        })
    }

    /// Runs `remote` on the master with `input` on its stdin (stdout is the terminal's);
    /// returns how ssh ended.
    pub fn run_remote_with_input(&self, remote: &str, input: &[u8]) -> Result<SshExit, TryError> {
        let mut run = self.spawn(remote, Stdio::piped(), false)?;
        if let Some(mut stdin) = run.child.stdin.take() {
            // A master that refuses early closes the channel; its reason arrives on stderr.
            let _ = stdin.write_all(input);
        }
        run.wait()
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// The same login on another master (of one cluster), pinned to `host_key` when given.
    pub fn redirected(&self, host: String, port: u16, host_key: Option<String>) -> Connection {
        Connection {
            ssh_argv: self.ssh_argv.clone(),
            host,
            port: Some(port),
            username: self.username.clone(),
            master_host_key: host_key.or_else(|| self.master_host_key.clone()),
        }
    }

    /// The master as ssh looks it up in known_hosts: `[HOST]:PORT` for a port other than 22.
    fn known_hosts_pattern(&self) -> String {
        match self.port {
            Some(port) if port != 22 => format!("[{}]:{port}", self.host),
            _ => self.host.clone(),
        }
    }

    /// A known_hosts file holding only the pinned master key, when `.buildbot` pins one.
    fn pinned_known_hosts(&self) -> Result<Option<tempfile::NamedTempFile>, TryError> {
        let Some(key) = &self.master_host_key else {
            return Ok(None);
        };
        let host_pattern = self.known_hosts_pattern();
        let mut file = tempfile::NamedTempFile::new()
            .map_err(|err| TryError::new(format!("cannot write a temporary known_hosts: {err}")))?;
        writeln!(file, "{host_pattern} {}", key.trim())
            .map_err(|err| TryError::new(format!("cannot write a temporary known_hosts: {err}")))?;
        Ok(Some(file))
    }
}
