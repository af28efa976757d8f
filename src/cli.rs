//! The command line of `buildbot`, as clap reads it: every subcommand, flag and help text. The
//! binary (`src/main.rs`) parses with it and calls in; `generate-docs` renders it into man pages
//! and shell completions, so the docs cannot drift from the parser.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};

use crate::client::try_cmd::TryArgs;

#[derive(Parser)]
#[command(
    name = "buildbot",
    version,
    about = "An SSH-native continuous-integration system: one master, many build slaves, and `buildbot try`.",
    after_help = "Exit codes: 0 success, 1 error (the message says what to do), 2 usage error.\n\
                  New here? `buildbot demo` shows the whole thing in one command; then\n\
                  `buildbot create-master DIR` and `buildbot master DIR` for a real master."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Create a new master directory: master.toml (from the commented example), an ed25519
    /// host key, authorized_keys.d/ and the try spool.
    #[command(
        after_help = "Then add [[slave]], [[builder]] and [[scheduler]] sections to DIR/master.toml,\n\
                            put user keys in DIR/authorized_keys.d/USER, and run `buildbot master DIR`."
    )]
    CreateMaster {
        /// The master directory to create (created if missing).
        dir: PathBuf,
        /// The master's name, shown on the web page, in `watch` and by the IRC bot
        /// (default "example"; [master] name in master.toml).
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
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
        /// The master's SSH address. Several masters of one cluster: repeat the option or
        /// separate them with commas; the slave dials them in this order and moves on to the
        /// next when one is gone.
        #[arg(long, value_name = "HOST:PORT", required = true, value_delimiter = ',')]
        master: Vec<String>,
        /// The slave's name (its login name on the master).
        #[arg(long)]
        name: String,
        /// The master's host key, the line from its host_key.pub (pinned in slave.toml; the
        /// master prints it when it starts). One key for several masters: the masters of a
        /// cluster share their host key (docs/multimaster.md).
        #[arg(long, value_name = "KEY", required = true)]
        master_host_key: Option<String>,
        /// Replace an existing slave.toml and key.
        #[arg(long)]
        force: bool,
    },
    /// Run the slave in the foreground; it reconnects to its master (the next of its masters,
    /// when slave.toml lists several) forever. SIGTERM or Ctrl-C stop it (running commands are
    /// terminated first).
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
    /// A terminal in held build N of BUILDER, in its directory on its slave with its
    /// environment (or, after --, one command there); --release ends the hold. For the build's
    /// requester and the master's admin group.
    Shell {
        /// The builder.
        builder: String,
        /// The held build's number.
        number: u64,
        /// End the hold now: the directory is free for the next build.
        #[arg(long)]
        release: bool,
        /// A command to run instead of an interactive shell.
        #[arg(last = true)]
        command: Vec<String>,
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
        /// Why: recorded with the build. The words after --reason need no quotes.
        #[arg(long, num_args = 1.., required = true, value_name = "TEXT")]
        reason: Vec<String>,
        #[command(flatten)]
        connection: ConnectionCli,
    },
    /// Download an artifact a build kept (as its page lists it): to stdout, or with -o into a
    /// file that appears only once the whole artifact arrived.
    Fetch {
        /// The builder whose build kept it.
        builder: String,
        /// The build number.
        number: u64,
        /// The artifact's path, e.g. target/release/app.
        path: String,
        /// Write it to FILE instead of stdout.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<std::path::PathBuf>,
        #[command(flatten)]
        connection: ConnectionCli,
    },
    /// Queue a build of BUILDER by hand, of its branch (or --branch) at its head (or
    /// --revision). Needs the right to try, or membership of the master's admin group.
    Force {
        #[command(flatten)]
        force: crate::commands::ForceArgs,
        /// Stay connected and report the build's progress, as `try --wait` does; exit 0 only if
        /// it succeeds.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        connection: ConnectionCli,
    },
    /// Land the commits of HEAD that the target branch lacks: the master rebases them onto
    /// the branch's tip, builds the result on the branch's builders and pushes it only if all
    /// pass (docs/land.md). Connection defaults come from .buildbot, as for try.
    Land {
        /// The target branch (default: the upstream's branch, else main).
        #[arg(long, value_name = "BRANCH")]
        onto: Option<String>,
        /// Test on this builder too (repeatable).
        #[arg(short = 'b', long = "builder", value_name = "BUILDER")]
        builders: Vec<String>,
        /// Stay connected until the series landed or was rejected; exit 0 only if it landed.
        #[arg(long)]
        wait: bool,
        /// Refuse instead of rebasing when the series does not sit on the branch's tip.
        #[arg(long)]
        ff_only: bool,
        /// Take your queued entry for the branch out of the queue.
        #[arg(long)]
        cancel: bool,
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
    /// Copy the history of the (stopped) master in DIR, its SQLite file, into an empty
    /// PostgreSQL database, ids and all; then point [database] url at it (several masters).
    #[command(name = "migrate-db")]
    MigrateDb {
        /// The master directory.
        dir: PathBuf,
        /// The PostgreSQL database: postgresql://USER@HOST/DB or "host=/run/postgresql dbname=DB".
        #[arg(long, value_name = "URL")]
        to: String,
    },
    /// Check DIR/master.toml without starting anything. Prints one line per problem as
    /// master.toml:LINE: message and exits 1 if there is any.
    Checkconfig {
        /// The master directory.
        dir: PathBuf,
    },
    /// Write the man pages (OUT/man1/) and the bash, zsh and fish completions
    /// (OUT/completions/), generated from this command line. scripts/install-docs.sh installs
    /// them.
    #[command(name = "generate-docs", hide = true)]
    GenerateDocs {
        /// Where to write them.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Print the completion script for SHELL on stdout, e.g.
    /// `buildbot completions bash > /etc/bash_completion.d/buildbot`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// How to reach the master (try, watch, stop); each flag overrides `.buildbot`.
#[derive(clap::Args)]
pub struct ConnectionCli {
    /// The master's host.
    #[arg(long, value_name = "H")]
    pub host: Option<String>,
    /// The master's SSH port.
    #[arg(long, value_name = "P")]
    pub port: Option<u16>,
    /// Your unix account on the master.
    #[arg(short = 'u', long, value_name = "U")]
    pub username: Option<String>,
    /// The ssh command to run (default: ssh), e.g. "ssh -i ~/.ssh/ci_key".
    #[arg(long, value_name = "CMD")]
    pub ssh: Option<String>,
    /// Pin the master's host key, the line from its host_key.pub ("ssh-ed25519 AAAA..."; the
    /// master prints it when it starts), instead of trusting known_hosts. Overrides
    /// master_host_key in .buildbot.
    #[arg(long, value_name = "KEY")]
    pub master_host_key: Option<String>,
}

impl ConnectionCli {
    /// The connection part of the client's arguments.
    pub fn into_try_args(self) -> TryArgs {
        TryArgs {
            host: self.host,
            port: self.port,
            username: self.username,
            ssh: self.ssh,
            master_host_key: self.master_host_key,
            ..TryArgs::default()
        }
    }
}

#[derive(clap::Args)]
pub struct TryCli {
    /// A builder to try on (repeatable; default: .buildbot's builders, else all try builders).
    #[arg(short = 'b', long = "builder", value_name = "BUILDER")]
    pub builders: Vec<String>,
    /// Stay connected and show each build's progress and result.
    #[arg(long)]
    pub wait: bool,
    /// With --wait, show the last N lines of the log of each build's failed step (0: none).
    #[arg(long, value_name = "N", default_value_t = crate::status::DEFAULT_TAIL_LINES)]
    pub tail: usize,
    /// Send this ready patch (- for stdin) instead of the checkout's changes.
    #[arg(long, value_name = "FILE")]
    pub diff: Option<PathBuf>,
    /// Strip this many leading path components when applying --diff (like patch -p).
    #[arg(
        short = 'p',
        long = "patchlevel",
        value_name = "N",
        default_value_t = 0
    )]
    pub patchlevel: u32,
    /// The branch the job names (default: your current branch).
    #[arg(long, value_name = "B")]
    pub branch: Option<String>,
    /// The base revision to diff against (default: merge-base with your upstream).
    #[arg(long, value_name = "REV")]
    pub baserev: Option<String>,
    /// Print the job and the files it changes (a diffstat); do not connect.
    #[arg(short = 'n', long)]
    pub dryrun: bool,
    /// With --dryrun, print the patch too.
    #[arg(short = 'v', long)]
    pub verbose: bool,
    #[command(flatten)]
    pub connection: ConnectionCli,
    /// A build property KEY=VALUE (repeatable).
    #[arg(long = "property", value_name = "K=V")]
    pub properties: Vec<String>,
    /// Keep the builds' directories on their slaves when they end, whatever their result, for
    /// `buildbot shell BUILDER N` (the property hold=1).
    #[arg(long)]
    pub hold: bool,
    /// Include untracked files in the patch too.
    #[arg(long)]
    pub include_untracked: bool,
    /// Who the job is from (default: git's user.name <user.email>).
    #[arg(short = 'w', long, value_name = "WHO")]
    pub who: Option<String>,
    /// A comment shown with the builds.
    #[arg(short = 'C', long, value_name = "TEXT")]
    pub comment: Option<String>,
}

/// The whole command definition (for man pages and completions).
pub fn command() -> clap::Command {
    Cli::command()
}

/// Writes a man page per command (`buildbot.1`, `buildbot-try.1`, ...) into `out/man1/` and the
/// bash, zsh and fish completions into `out/completions/`; returns the files written.
pub fn generate_docs(out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let man_dir = out.join("man1");
    std::fs::create_dir_all(&man_dir)
        .with_context(|| format!("cannot create {}", man_dir.display()))?;
    let root = command();
    let mut pages = vec![("buildbot".to_string(), root.clone())];
    for sub in root.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        // The page is buildbot-master(1), but the command is typed `buildbot master`: the
        // synopsis shows it as typed.
        let name = format!("buildbot-{}", sub.get_name());
        let typed = format!("buildbot {}", sub.get_name());
        pages.push((name.clone(), sub.clone().display_name(name).bin_name(typed)));
    }
    for (name, page) in pages {
        let path = man_dir.join(format!("{name}.1"));
        let mut bytes = Vec::new();
        clap_mangen::Man::new(page)
            .render(&mut bytes)
            .with_context(|| format!("cannot render the man page {name}"))?;
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    let completions = out.join("completions");
    std::fs::create_dir_all(&completions)
        .with_context(|| format!("cannot create {}", completions.display()))?;
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        let path = clap_complete::generate_to(shell, &mut command(), "buildbot", &completions)
            .with_context(|| format!("cannot write the {shell} completion"))?;
        written.push(path);
    }
    Ok(written)
}

/// Prints the completion script for `shell` on stdout. Generated into memory first: clap
/// panics on a failed write, and a reader such as `head` may close the pipe early, which is
/// no error.
pub fn print_completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    use std::io::Write;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command(), "buildbot", &mut script);
    match std::io::stdout().lock().write_all(&script) {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(err).context("cannot write the completion script")
        }
        _ => Ok(()),
    }
}
