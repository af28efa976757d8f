//! What each exec command does for the identity that asked: the routing table of the design
//! ("Exec commands the SSH server understands"). Commands see plain async byte streams, never
//! russh types, so they can be tested and reused without an SSH connection.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::spool::maildir::Maildir;
use crate::spool::permission::Principal;
use crate::spool::submit;
use crate::sshd::accounts::UnixAccount;
use crate::sshd::exec::{self, EXIT_UNKNOWN_COMMAND, EXIT_USAGE, ExecCommand};
use crate::sshd::{Identity, SshdContext};

/// `try --wait` on a master that cannot wait: the job was accepted, its results cannot be
/// streamed. Distinct from 1 (a build failed) so the client does not report a failure.
pub const EXIT_CANNOT_WAIT: u32 = 3;

/// The standard streams of one exec channel.
pub struct ExecIo<'a> {
    pub stdin: &'a mut (dyn AsyncRead + Unpin + Send),
    pub stdout: &'a mut (dyn AsyncWrite + Unpin + Send),
    pub stderr: &'a mut (dyn AsyncWrite + Unpin + Send),
}

impl ExecIo<'_> {
    /// Writes one line to stderr. A client that went away is not an error worth reporting.
    pub async fn say(&mut self, line: &str) {
        let _ = self.stderr.write_all(format!("{line}\n").as_bytes()).await;
    }

    pub async fn print(&mut self, text: &str) {
        let _ = self.stdout.write_all(text.as_bytes()).await;
    }
}

/// Runs `command` for `identity` and returns the exit status to send.
pub async fn run(
    ctx: &SshdContext,
    identity: &Identity,
    _peer: SocketAddr,
    command: &str,
    _original: Option<&str>,
    io: &mut ExecIo<'_>,
) -> u32 {
    let parsed = exec::parse(command);
    let user = match identity {
        Identity::Slave { name } => {
            if parsed == ExecCommand::Slave {
                io.say("buildbot: this master does not speak the slave RPC yet")
                    .await;
                return 1;
            }
            io.say(&format!(
                "buildbot: the key of slave {name} may only open the slave RPC, not '{command}'"
            ))
            .await;
            return 1;
        }
        Identity::User { account, .. } => account,
    };
    match parsed {
        ExecCommand::Unknown { name } => {
            io.say(&format!("buildbot: unknown command '{name}'")).await;
            EXIT_UNKNOWN_COMMAND
        }
        ExecCommand::Usage { message } => {
            io.say(&format!("buildbot: {message}")).await;
            EXIT_USAGE
        }
        ExecCommand::Slave => {
            tracing::warn!(user = %user.name, "a user key tried to open the slave RPC");
            io.say("buildbot: the slave RPC needs a slave's key; user keys may not open it")
                .await;
            1
        }
        ExecCommand::Watch { builders } => watch(ctx, &builders, io).await,
        ExecCommand::TryServer { jobdir } => submit_job(ctx, user, Some(&jobdir), io).await,
        ExecCommand::Try { wait } => {
            let status = submit_job(ctx, user, None, io).await;
            if status == 0 && wait {
                io.say(
                    "buildbot: --wait: this master does not run builds yet; the job stays queued",
                )
                .await;
            }
            status
        }
        ExecCommand::Stop { .. } | ExecCommand::WebLogin => {
            io.say(&format!(
                "buildbot: '{command}' is not available on this master yet"
            ))
            .await;
            1
        }
    }
}

/// Takes a try job from stdin into the spool, for `tryserver --jobdir DIR` (classic) and `try`.
/// Refusals are one line on stderr and exit status 1; nothing is written for a refused job.
async fn submit_job(
    ctx: &SshdContext,
    user: &UnixAccount,
    jobdir: Option<&str>,
    io: &mut ExecIo<'_>,
) -> u32 {
    let config = &ctx.config;
    let spool = &config.spool.dir;
    let principal = Principal {
        uid: user.uid,
        gids: user.gids.clone(),
    };
    let checked = submit::check_permission(&user.name, &principal, spool, config.sshd.allow_root)
        .and_then(|()| match jobdir {
            Some(jobdir) => submit::check_jobdir(jobdir, spool, &config.master_dir, &user.home),
            None => Ok(()),
        });
    if let Err(err) = checked {
        tracing::info!(user = %user.name, "try refused: {err}");
        io.say(&format!("buildbot: {err}")).await;
        return 1;
    }
    let received = match submit::read_job(io.stdin, config.spool.max_patch_bytes).await {
        Ok(received) => received,
        Err(err) => {
            tracing::info!(user = %user.name, "try refused: {err}");
            io.say(&format!("buildbot: {err}")).await;
            return 1;
        }
    };
    let (bytes, job) = received;
    let builders = match submit::check_builders(&job, &config.try_builders()) {
        Ok(builders) => builders,
        Err(err) => {
            tracing::info!(user = %user.name, "try refused: {err}");
            io.say(&format!("buildbot: {err}")).await;
            return 1;
        }
    };
    match submit::deliver(&Maildir::new(spool), bytes).await {
        Ok(name) => {
            tracing::info!(user = %user.name, job = %name, jobid = %job.jobid, ?builders, "try job spooled");
            let line = format!(
                "buildbot: job {} accepted as {name} for {}",
                job.jobid,
                builders.join(", ")
            );
            if jobdir.is_some() {
                io.say(&line).await;
            } else {
                io.print(&format!("{line}\n")).await;
            }
            0
        }
        Err(err) => {
            tracing::error!(user = %user.name, "cannot spool a try job: {err}");
            io.say(&format!("buildbot: {err}")).await;
            1
        }
    }
}

/// The status of the builders asked for (all when none are named): one line each.
async fn watch(ctx: &SshdContext, builders: &[String], io: &mut ExecIo<'_>) -> u32 {
    let config = &ctx.config;
    for name in builders {
        if !config.builders.iter().any(|builder| &builder.name == name) {
            let known: Vec<&str> = config.builders.iter().map(|b| b.name.as_str()).collect();
            io.say(&format!(
                "buildbot: no builder named '{name}' (builders: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ))
            .await;
            return EXIT_USAGE;
        }
    }
    let status = ctx.master.status_lines(builders);
    io.print(&status).await;
    0
}
