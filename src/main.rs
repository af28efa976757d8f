//! The `buildbot` command: parses arguments, sets up logging, and calls into the library.
//!
//! Exit codes: 0 success; 1 an error (one line on stderr saying what to do, or one line per
//! problem for `checkconfig`); 2 a usage error (bad arguments).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use buildbot::client::try_cmd::{self, TryArgs};
use buildbot::daemon;
use buildbot::master::config::Config;

#[derive(Parser)]
#[command(
    name = "buildbot",
    version,
    about = "An SSH-native continuous-integration system: one master, many build slaves, and `buildbot try`.",
    after_help = "Exit codes: 0 success, 1 error (the message says what to do), 2 usage error.\n\
                  New here? `buildbot demo` shows the whole thing in one command; then\n\
                  `buildbot create-master DIR` and `buildbot master DIR` for a real master."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new master directory: master.toml (from the commented example), an ed25519
    /// host key, authorized_keys.d/ and the try spool.
    #[command(
        after_help = "Then add [[slave]], [[builder]] and [[scheduler]] sections to DIR/master.toml,\n\
                            put user keys in DIR/authorized_keys.d/USER, and run `buildbot master DIR`."
    )]
    CreateMaster {
        /// The master directory to create (created if missing).
        dir: PathBuf,
        /// Address the SSH server listens on (default 127.0.0.1:2222).
        #[arg(long, value_name = "ADDR")]
        ssh_listen: Option<SocketAddr>,
        /// Address the web status page listens on (default 127.0.0.1:8010).
        #[arg(long, value_name = "ADDR")]
        http_listen: Option<SocketAddr>,
        /// Replace the config and host key of an existing master.
        #[arg(long)]
        force: bool,
        /// Give the spool to this unix group (chgrp, chmod 3770: setgid + sticky): its
        /// members may submit try jobs.
        #[arg(long, value_name = "GROUP")]
        try_group: Option<String>,
    },
    /// Run the master in the foreground. Logs go to stderr (RUST_LOG=debug for more);
    /// SIGTERM or Ctrl-C stop it gracefully.
    Master {
        /// The master directory (made by create-master).
        dir: PathBuf,
    },
    /// Create a slave directory: slave.toml and an ed25519 key. Prints the [[slave]] block to
    /// add to the master's master.toml.
    CreateSlave {
        /// The slave directory to create.
        dir: PathBuf,
        /// The master's SSH address.
        #[arg(long, value_name = "HOST:PORT")]
        master: String,
        /// The slave's name (its login name on the master).
        #[arg(long)]
        name: String,
        /// The master's host key, the line from its host_key.pub (pinned in slave.toml).
        #[arg(long, value_name = "KEY")]
        master_host_key: Option<String>,
        /// Replace an existing slave.toml and key.
        #[arg(long)]
        force: bool,
    },
    /// Run the slave in the foreground; it reconnects to its master forever. SIGTERM or
    /// Ctrl-C stop it (running commands are terminated first).
    Slave {
        /// The slave directory (made by create-slave).
        dir: PathBuf,
    },
    /// Send your uncommitted work to the master's build farm (from inside a git checkout).
    ///
    /// The patch is the working tree (and index, and unpushed commits) against the merge-base
    /// with your upstream branch. Connection defaults come from a .buildbot file (TOML: host,
    /// port, username, builders, ssh, master_host_key, who) in this directory or a parent.
    #[command(
        after_help = "Exit codes: 0 delivered (with --wait: all builds succeeded), 1 a build failed, 2 usage or connection problem."
    )]
    Try(TryCli),
    /// Watch the master: the status of its builders, then every build event as it happens
    /// (Ctrl-C to stop). Connection defaults come from .buildbot, as for try.
    Watch {
        /// Only these builders (repeatable; default: all).
        #[arg(short = 'b', long = "builder", value_name = "BUILDER")]
        builders: Vec<String>,
        /// Print the status once and exit.
        #[arg(long)]
        once: bool,
        /// Print one JSON object per line (the status, then each event with its sequence
        /// number) instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: ConnectionCli,
    },
    /// Stop a running build (it ends as interrupted, with your name and reason). Needs the right
    /// to try, or membership of the master's admin group.
    Stop {
        /// The builder.
        builder: String,
        /// The build number (default: the builder's only running build).
        number: Option<u64>,
        /// Why: recorded with the build.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        connection: ConnectionCli,
    },
    /// Queue a build of BUILDER by hand, of its branch (or --branch) at its head (or
    /// --revision). Needs the right to try, or membership of the master's admin group.
    Force {
        /// The builder.
        builder: String,
        /// The branch to build (default: the builder's).
        #[arg(long)]
        branch: Option<String>,
        /// The revision to build (default: the branch's head).
        #[arg(long)]
        revision: Option<String>,
        /// Why: recorded with the build.
        #[arg(long)]
        reason: String,
        /// A build property NAME=VALUE (repeatable).
        #[arg(long = "property", value_name = "NAME=VALUE")]
        properties: Vec<String>,
        #[command(flatten)]
        connection: ConnectionCli,
    },
    /// Tell the master about a new revision on a branch (what the git post-receive hook in
    /// etc/hooks runs). Needs the right to try, or membership of the master's [changes] group.
    Sendchange {
        /// The repository, as the master's builders name it.
        #[arg(long)]
        repository: String,
        #[arg(long)]
        branch: String,
        /// The commit id.
        #[arg(long)]
        revision: String,
        /// Who made the change (default: none).
        #[arg(long)]
        who: Option<String>,
        /// The commit message.
        #[arg(long)]
        comments: Option<String>,
        /// A file the change touches (repeatable).
        #[arg(long = "file", value_name = "PATH")]
        files: Vec<String>,
        /// A property NAME=VALUE (repeatable).
        #[arg(long = "property", value_name = "NAME=VALUE")]
        properties: Vec<String>,
        #[command(flatten)]
        connection: ConnectionCli,
    },
    /// Internal, for bench/run.sh: COUNT real slaves in one process (directories DIR/swarm-N).
    /// With --master and --master-host-key, creates them and prints their [[slave]] blocks;
    /// without, runs them until SIGTERM.
    #[command(name = "bench-swarm", hide = true)]
    BenchSwarm {
        dir: PathBuf,
        #[arg(long)]
        count: usize,
        #[arg(long, requires = "master_host_key")]
        master: Option<String>,
        #[arg(long)]
        master_host_key: Option<String>,
    },
    /// Internal: a slave's patch step, run by the slave in a child process under a time and
    /// memory limit. Reads the patch on stdin, applies it to WORKDIR, writes a JSON report.
    #[command(name = "apply-patch", hide = true)]
    ApplyPatch {
        /// Leading path components to strip, as `patch -pN`.
        #[arg(long, default_value_t = 1)]
        level: u32,
        /// The checked-out work tree.
        workdir: PathBuf,
    },
    /// Read a try job on stdin and write it into the maildir DIR (the classic Buildbot ssh
    /// path, for masters reached through a real sshd).
    Tryserver {
        /// The spool maildir (must already have tmp/ and new/).
        #[arg(long, value_name = "DIR")]
        jobdir: PathBuf,
    },
    /// See it work: a throwaway master, one slave and an example builder on loopback, and a try
    /// of a sample change through the real SSH path. Prints the web URL; Ctrl-C stops it and
    /// removes its temp dir. Needs git and the OpenSSH client.
    Demo,
    /// Reload DIR/master.toml into the running master (the same as sending it SIGHUP): check
    /// the file, signal the master, print what changed or the master's errors. Exits 1 when the
    /// file is refused (the master keeps its old config) or the master does not answer.
    Reconfig {
        /// The master directory.
        dir: PathBuf,
    },
    /// Check DIR/master.toml without starting anything. Prints one line per problem as
    /// master.toml:LINE: message and exits 1 if there is any.
    Checkconfig {
        /// The master directory.
        dir: PathBuf,
    },
}

/// How to reach the master (try, watch, stop); each flag overrides `.buildbot`.
#[derive(clap::Args)]
struct ConnectionCli {
    /// The master's host.
    #[arg(long, value_name = "H")]
    host: Option<String>,
    /// The master's SSH port.
    #[arg(long, value_name = "P")]
    port: Option<u16>,
    /// Your unix account on the master.
    #[arg(short = 'u', long, value_name = "U")]
    username: Option<String>,
    /// The ssh command to run (default: ssh), e.g. "ssh -i ~/.ssh/ci_key".
    #[arg(long, value_name = "CMD")]
    ssh: Option<String>,
}

impl ConnectionCli {
    /// The connection part of the client's arguments.
    fn into_try_args(self) -> TryArgs {
        TryArgs {
            host: self.host,
            port: self.port,
            username: self.username,
            ssh: self.ssh,
            ..TryArgs::default()
        }
    }
}

/// A client command's result as an exit code; its error is one line on stderr.
fn client_outcome(command: &str, result: Result<u8, try_cmd::TryError>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("buildbot {command}: {err}");
            ExitCode::from(try_cmd::EXIT_TROUBLE)
        }
    }
}

#[derive(clap::Args)]
struct TryCli {
    /// A builder to try on (repeatable; default: .buildbot's builders, else all try builders).
    #[arg(short = 'b', long = "builder", value_name = "BUILDER")]
    builders: Vec<String>,
    /// Stay connected and show each build's progress and result.
    #[arg(long)]
    wait: bool,
    /// Send this ready patch (- for stdin) instead of the checkout's changes.
    #[arg(long, value_name = "FILE")]
    diff: Option<PathBuf>,
    /// Strip this many leading path components when applying --diff (like patch -p).
    #[arg(
        short = 'p',
        long = "patchlevel",
        value_name = "N",
        default_value_t = 0
    )]
    patchlevel: u32,
    /// The branch the job names (default: your current branch).
    #[arg(long, value_name = "B")]
    branch: Option<String>,
    /// The base revision to diff against (default: merge-base with your upstream).
    #[arg(long, value_name = "REV")]
    baserev: Option<String>,
    /// Print the job and the patch stats; do not connect.
    #[arg(short = 'n', long)]
    dryrun: bool,
    #[command(flatten)]
    connection: ConnectionCli,
    /// A build property KEY=VALUE (repeatable).
    #[arg(long = "property", value_name = "K=V")]
    properties: Vec<String>,
    /// Include untracked files in the patch too.
    #[arg(long)]
    include_untracked: bool,
    /// Who the job is from (default: git's user.name <user.email>).
    #[arg(short = 'w', long, value_name = "WHO")]
    who: Option<String>,
    /// A comment shown with the builds.
    #[arg(short = 'C', long, value_name = "TEXT")]
    comment: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("buildbot: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::CreateMaster {
            dir,
            ssh_listen,
            http_listen,
            force,
            try_group,
        } => {
            let created = daemon::create::create_master(&daemon::create::CreateMaster {
                dir: dir.clone(),
                ssh_listen,
                http_listen,
                force,
                try_group,
            })?;
            println!("created master in {}", dir.display());
            println!("config: {}", created.config.display());
            println!("host key: {}", created.host_key_fingerprint);
            println!(
                "next: edit the config, then run: buildbot master {}",
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Master { dir } => {
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(async {
                let shutdown = CancellationToken::new();
                spawn_signal_handler(shutdown.clone())?;
                daemon::run(&dir, shutdown, |listening| {
                    println!("{listening}");
                })
                .await?;
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::CreateSlave {
            dir,
            master,
            name,
            master_host_key,
            force,
        } => {
            let snippet = buildbot::slave::create_slave(
                &dir,
                &master,
                &name,
                master_host_key.as_deref(),
                force,
            )?;
            println!("created slave {name} in {}", dir.display());
            println!(
                "add this to the master's master.toml (and name the slave in a builder's slaves):\n"
            );
            print!("{snippet}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Slave { dir } => {
            let config = buildbot::slave::SlaveConfig::load(&dir)?;
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(async {
                let shutdown = CancellationToken::new();
                spawn_signal_handler(shutdown.clone())?;
                buildbot::slave::run(config, shutdown).await?;
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Demo => {
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(async {
                let shutdown = CancellationToken::new();
                spawn_signal_handler(shutdown.clone())?;
                buildbot::demo::run(shutdown).await?;
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Try(args) => {
            let cwd = std::env::current_dir().context("cannot find the current directory")?;
            let args = TryArgs {
                builders: args.builders,
                wait: args.wait,
                diff: args.diff,
                patchlevel: args.patchlevel,
                branch: args.branch,
                baserev: args.baserev,
                dryrun: args.dryrun,
                properties: args.properties,
                include_untracked: args.include_untracked,
                who: args.who,
                comment: args.comment,
                ..args.connection.into_try_args()
            };
            Ok(client_outcome("try", try_cmd::run(&args, &cwd)))
        }
        Command::Watch {
            builders,
            once,
            json,
            connection,
        } => {
            let cwd = std::env::current_dir().context("cannot find the current directory")?;
            let connection = connection.into_try_args();
            let options = buildbot::client::watch::WatchOptions {
                builders,
                once,
                json,
            };
            let result = buildbot::client::watch::run(&options, &connection, &cwd);
            Ok(client_outcome("watch", result))
        }
        Command::Stop {
            builder,
            number,
            reason,
            connection,
        } => {
            let cwd = std::env::current_dir().context("cannot find the current directory")?;
            let connection = connection.into_try_args();
            let result =
                buildbot::client::remote::stop(&builder, number, &reason, &connection, &cwd);
            Ok(client_outcome("stop", result))
        }
        Command::Force {
            builder,
            branch,
            revision,
            reason,
            properties,
            connection,
        } => {
            let cwd = std::env::current_dir().context("cannot find the current directory")?;
            let force = buildbot::client::remote::ForceArgs {
                builder,
                branch,
                revision,
                reason,
                properties,
            };
            let result = buildbot::client::remote::force(&force, &connection.into_try_args(), &cwd);
            Ok(client_outcome("force", result))
        }
        Command::Sendchange {
            repository,
            branch,
            revision,
            who,
            comments,
            files,
            properties,
            connection,
        } => {
            let cwd = std::env::current_dir().context("cannot find the current directory")?;
            let parsed = match buildbot::client::remote::parse_properties(&properties) {
                Ok(parsed) => parsed,
                Err(err) => return Ok(client_outcome("sendchange", Err(err))),
            };
            let change = buildbot::change::ChangeSpec {
                repository,
                branch,
                revision,
                who,
                comments,
                files,
                properties: parsed,
            };
            let connection = connection.into_try_args();
            let result = buildbot::client::remote::send_change(&change, &connection, &cwd);
            Ok(client_outcome("sendchange", result))
        }
        Command::BenchSwarm {
            dir,
            count,
            master,
            master_host_key,
        } => {
            if let (Some(master), Some(host_key)) = (master, master_host_key) {
                print!(
                    "{}",
                    buildbot::slave::swarm::create(&dir, count, &master, &host_key)?
                );
                return Ok(ExitCode::SUCCESS);
            }
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(async {
                let shutdown = CancellationToken::new();
                spawn_signal_handler(shutdown.clone())?;
                buildbot::slave::swarm::run(&dir, count, shutdown).await?;
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::ApplyPatch { level, workdir } => {
            buildbot::slave::checkout::run_apply_patch_child(
                &workdir,
                level,
                &mut std::io::stdin().lock(),
                &mut std::io::stdout().lock(),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Tryserver { jobdir } => {
            let name = buildbot::spool::submit::tryserver_local(&jobdir, &mut std::io::stdin())?;
            eprintln!("buildbot: job accepted as {name}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Reconfig { dir } => Ok(ExitCode::from(daemon::reconfig::command(&dir))),
        Command::Checkconfig { dir } => match Config::load(&dir) {
            Ok(config) => {
                println!(
                    "{}: OK ({} slaves, {} builders)",
                    dir.join(buildbot::master::config::CONFIG_FILE).display(),
                    config.slaves.len(),
                    config.builders.len()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(err) => {
                for problem in &err.0 {
                    eprintln!("{problem}");
                }
                Ok(ExitCode::from(1))
            }
        },
    }
}

/// SIGINT and SIGTERM cancel `shutdown`; everything else stops from there.
fn spawn_signal_handler(shutdown: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: stopping"),
            _ = interrupt.recv() => tracing::info!("SIGINT: stopping"),
        }
        shutdown.cancel();
    });
    Ok(())
}
