//! The exec commands the SSH server understands, one file each (as mini-redis's `cmd/`): each
//! defines its arguments (the command line is split and parsed with clap in `parse`) and `apply`, which calls the
//! control layer for the identity that asked and renders the typed answer as text, or as JSON
//! with `--json`. Commands see plain async streams ([`ExecIo`]), never russh types. A refusal
//! is rendered once, by [`refuse`], from `ControlError`'s own line and exit status.

mod cancel;
mod fetch;
mod force;
mod help;
mod irc_link;
mod land;
mod parse;
mod pause_slave;
mod rebuild;
mod sendchange;
mod shell;
mod stop;
mod try_;
mod tryserver;
mod wait;
mod watch;
mod web_login;

use std::net::SocketAddr;

pub use cancel::Cancel;
pub use fetch::Fetch;
pub use force::Force;
pub use help::Help;
pub use irc_link::IrcLink;
pub use land::Land;
pub use parse::{ExecCommand, parse};
pub use pause_slave::PauseSlave;
pub use rebuild::Rebuild;
pub use sendchange::Sendchange;
pub use shell::Shell;
pub use stop::Stop;
pub use try_::Try;
pub use tryserver::Tryserver;
pub use watch::{Resume, Watch};

use crate::commands::{EXIT_UNKNOWN_COMMAND, EXIT_USAGE};
use crate::exec_io::ExecIo;
use crate::master::control::ControlError;
use crate::sshd::{Identity, SshdContext};
use crate::unix::accounts::UnixAccount;

/// Every command, as clap reads it from the words of the command line.
#[derive(Debug, Clone, PartialEq, Eq, clap::Parser)]
#[command(
    name = "ssh MASTER",
    no_binary_name = true,
    disable_help_subcommand = true,
    disable_help_flag = true,
    disable_version_flag = true
)]
pub enum Command {
    /// The classic Buildbot ssh try path: a job on stdin into the spool.
    Tryserver(Tryserver),
    /// Our client's try: a job on stdin; with --wait the builds' progress comes back.
    Try(Try),
    /// The builders' status; with --follow every build event as it happens.
    Watch(Watch),
    /// Stop a running build, recording who and why.
    Stop(Stop),
    /// Queue a build by hand.
    Force(Force),
    /// Queue a finished build again: the same source, patch and properties.
    Rebuild(Rebuild),
    /// Drop a queued request before it is built.
    Cancel(Cancel),
    /// One change as JSON on stdin (what the git hook sends).
    Sendchange(Sendchange),
    /// The slave finishes its builds and takes no new ones.
    PauseSlave(PauseSlave),
    /// The slave takes builds again.
    UnpauseSlave(PauseSlave),
    /// A one-time URL that logs a browser into the web page.
    WebLogin,
    /// A one-time code that binds an IRC nick to this user; --list shows the links.
    IrcLink(IrcLink),
    /// The commands, or one command's arguments.
    Help(Help),
    /// A series (a git bundle) on stdin into a branch's merge queue.
    Land(Land),
    /// The RPC channel of a build slave (a slave's key only).
    Slave,
    /// A terminal (ssh -t) or one command (after --) in a held build's directory on its slave.
    Shell(Shell),
    /// An artifact of a build on stdout.
    Fetch(Fetch),
}

/// Runs `command` for `identity` and returns the exit status to send.
pub async fn run(
    ctx: &SshdContext,
    identity: &Identity,
    peer: SocketAddr,
    command: &str,
    io: &mut ExecIo<'_>,
) -> u32 {
    let parsed = parse(command);
    let user = match identity {
        Identity::Slave { name } => {
            if parsed == ExecCommand::Run(Command::Slave) {
                return ctx.control.serve_slave(name, peer, io).await;
            }
            io.say(&format!(
                "buildbot: the key of slave {name} may only open the slave RPC, not '{command}'"
            ))
            .await;
            return 1;
        }
        Identity::User { account, .. } => account,
    };
    let command = match parsed {
        ExecCommand::Run(command) => command,
        ExecCommand::Unknown { name } => {
            io.say(&format!(
                "buildbot: unknown command '{name}' (`help` lists the commands)"
            ))
            .await;
            return EXIT_UNKNOWN_COMMAND.into();
        }
        ExecCommand::Usage { message } => {
            io.say(&format!("buildbot: {message}")).await;
            return EXIT_USAGE.into();
        }
    };
    apply(ctx, user, peer, command, io).await
}

async fn apply(
    ctx: &SshdContext,
    user: &UnixAccount,
    peer: SocketAddr,
    command: Command,
    io: &mut ExecIo<'_>,
) -> u32 {
    match command {
        Command::Tryserver(command) => command.apply(ctx, user, io).await,
        Command::Try(command) => command.apply(ctx, user, io).await,
        Command::Watch(command) => command.apply(ctx, io).await,
        Command::Stop(command) => command.apply(ctx, user, io).await,
        Command::Force(command) => command.apply(ctx, user, io).await,
        Command::Rebuild(command) => command.apply(ctx, user, io).await,
        Command::Cancel(command) => command.apply(ctx, user, io).await,
        Command::Sendchange(command) => command.apply(ctx, user, io).await,
        Command::PauseSlave(command) => command.apply(ctx, user, true, io).await,
        Command::UnpauseSlave(command) => command.apply(ctx, user, false, io).await,
        Command::WebLogin => web_login::apply(ctx, user, io).await,
        Command::IrcLink(command) => command.apply(ctx, user, io).await,
        Command::Help(command) => command.apply(io).await,
        Command::Land(command) => command.apply(ctx, user, io).await,
        Command::Shell(command) => command.apply(ctx, user, peer, io).await,
        Command::Fetch(command) => command.apply(ctx, io).await,
        Command::Slave => {
            tracing::warn!(user = %user.name, "a user key tried to open the slave RPC");
            io.say("buildbot: the slave RPC needs a slave's key; user keys may not open it")
                .await;
            1
        }
    }
}

/// One line on stderr for a refused action and its exit status, the same for every command
/// (docs/try.md, "Exit codes"); an ambiguous stop also says how to name the build.
async fn refuse(err: &ControlError, io: &mut ExecIo<'_>) -> u32 {
    let line = err.user_line();
    let line = match err {
        ControlError::Ambiguous { builder, .. } => {
            format!("{line}: stop {builder} NUMBER --reason ...")
        }
        _ => line,
    };
    io.say(&format!("buildbot: {line}")).await;
    err.exit_code().into()
}
