//! What each exec command does for the identity that asked: the routing table of the design
//! ("Exec commands the SSH server understands"). Commands see plain async byte streams, never
//! russh types, so they can be tested and reused without an SSH connection.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::master::results::BuildResult;
use crate::master::state::BuildEvent;
use crate::spool::maildir::Maildir;
use crate::spool::submit;
use crate::sshd::accounts::UnixAccount;
use crate::sshd::exec::{self, EXIT_UNKNOWN_COMMAND, EXIT_USAGE, ExecCommand};
use crate::sshd::{Identity, SshdContext};

/// The standard streams of one exec channel.
pub struct ExecIo<'a> {
    pub stdin: &'a mut (dyn AsyncRead + Unpin + Send),
    pub stdout: &'a mut (dyn AsyncWrite + Unpin + Send),
    pub stderr: &'a mut (dyn AsyncWrite + Unpin + Send),
    /// Cancelled when the client closes the channel (Ctrl-C on `try --wait`).
    pub client_gone: tokio_util::sync::CancellationToken,
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
    peer: SocketAddr,
    command: &str,
    _original: Option<&str>,
    io: &mut ExecIo<'_>,
) -> u32 {
    let parsed = exec::parse(command);
    let user = match identity {
        Identity::Slave { name } => {
            if parsed == ExecCommand::Slave {
                return crate::master::slaves::serve(&ctx.master, name, peer, io).await;
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
        ExecCommand::Watch { builders, follow } => watch(ctx, &builders, follow, io).await,
        ExecCommand::TryServer { jobdir } => submit_job(ctx, user, Some(&jobdir), io).await.0,
        ExecCommand::Try { wait } => {
            // Subscribe before the job exists, so no event about it can be missed.
            let events = ctx.master.subscribe();
            let (status, job_name) = submit_job(ctx, user, None, io).await;
            match job_name {
                Some(job_name) if wait => wait_for_builds(ctx, &job_name, events, io).await,
                _ => status,
            }
        }
        ExecCommand::Stop {
            builder,
            build,
            reason,
        } => stop_build(ctx, user, &builder, build, &reason, io).await,
        ExecCommand::WebLogin => {
            let token = ctx.web_sessions.new_login_token(user.clone());
            io.print(&format!(
                "{}/login?token={token}\n(open it within {} s; it works once)\n",
                ctx.master.web_url,
                crate::web::auth::LOGIN_TOKEN_LIFETIME.as_secs()
            ))
            .await;
            0
        }
    }
}

/// Takes a try job from stdin into the spool, for `tryserver --jobdir DIR` (classic) and `try`.
/// Refusals are one line on stderr and exit status 1; nothing is written for a refused job.
/// Returns the exit status and, when accepted, the job's name in the spool.
async fn submit_job(
    ctx: &SshdContext,
    user: &UnixAccount,
    jobdir: Option<&str>,
    io: &mut ExecIo<'_>,
) -> (u32, Option<String>) {
    let config = &ctx.config;
    let spool = &config.spool.dir;
    let checked = crate::master::access::may_try(user, config).and_then(|()| match jobdir {
        Some(jobdir) => submit::check_jobdir(jobdir, spool, &config.master_dir, &user.home),
        None => Ok(()),
    });
    if let Err(err) = checked {
        tracing::info!(user = %user.name, "try refused: {err}");
        io.say(&format!("buildbot: {err}")).await;
        return (1, None);
    }
    let received = match submit::read_job(io.stdin, config.spool.max_patch_bytes).await {
        Ok(received) => received,
        Err(err) => {
            tracing::info!(user = %user.name, "try refused: {err}");
            io.say(&format!("buildbot: {err}")).await;
            return (1, None);
        }
    };
    let (bytes, job) = received;
    let builders = match submit::check_builders(&job, &config.try_builders()) {
        Ok(builders) => builders,
        Err(err) => {
            tracing::info!(user = %user.name, "try refused: {err}");
            io.say(&format!("buildbot: {err}")).await;
            return (1, None);
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
            (0, Some(name))
        }
        Err(err) => {
            tracing::error!(user = %user.name, "cannot spool a try job: {err}");
            io.say(&format!("buildbot: {err}")).await;
            (1, None)
        }
    }
}

/// `stop BUILDER [N] --reason TEXT`: interrupts a running build. Needs the right to try.
async fn stop_build(
    ctx: &SshdContext,
    user: &UnixAccount,
    builder: &str,
    number: Option<u64>,
    reason: &str,
    io: &mut ExecIo<'_>,
) -> u32 {
    let config = &ctx.config;
    if let Err(message) = crate::master::access::may_stop(user, config) {
        io.say(&format!("buildbot: {message}")).await;
        return 1;
    }
    if !config.builders.iter().any(|b| b.name == builder) {
        io.say(&format!("buildbot: no builder named '{builder}'"))
            .await;
        return EXIT_USAGE;
    }
    let running = ctx.master.running_builds(builder);
    let target = match number {
        Some(number) => running
            .into_iter()
            .find(|(n, _)| i64::try_from(number).is_ok_and(|wanted| wanted == *n)),
        None if running.len() == 1 => running.into_iter().next(),
        None if running.is_empty() => None,
        None => {
            let numbers: Vec<String> = running.iter().map(|(n, _)| format!("#{n}")).collect();
            io.say(&format!(
                "buildbot: {builder} is running {}; say which: stop {builder} NUMBER --reason ...",
                numbers.join(", ")
            ))
            .await;
            return EXIT_USAGE;
        }
    };
    let Some((number, control)) = target else {
        let which = number.map_or(String::new(), |n| format!(" #{n}"));
        io.say(&format!("buildbot: {builder}{which} is not running"))
            .await;
        return 1;
    };
    let mut events = ctx.master.subscribe();
    tracing::info!(user = %user.name, %builder, number, %reason, "stop requested");
    control.request_stop(&user.name, reason);
    // Report the result; the build finishes within seconds even on a dead slave.
    let finished = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            match events.recv().await.map(|sequenced| sequenced.event) {
                Ok(BuildEvent::BuildFinished {
                    builder: b,
                    number: n,
                    result,
                    ..
                }) if b == builder && n == number => {
                    return Some(result);
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .await;
    match finished {
        Ok(Some(result)) => {
            io.print(&format!(
                "{builder} #{number}: {result} (stopped by {}: {reason})\n",
                user.name
            ))
            .await;
            0
        }
        _ => {
            io.say(&format!(
                "buildbot: asked {builder} #{number} to stop; it has not finished yet"
            ))
            .await;
            1
        }
    }
}

/// One line for a build event, as `try --wait` and `watch --follow` print it.
pub fn describe_event(event: &BuildEvent) -> String {
    match event {
        BuildEvent::RequestsQueued { builders, .. } => {
            format!("queued for {}", builders.join(", "))
        }
        BuildEvent::BuildStarted {
            builder,
            number,
            slave,
            expected,
            ..
        } => match expected {
            Some(expected) => format!(
                "{builder} #{number}: started on {slave} (ETA {})",
                crate::master::results::format_eta(*expected)
            ),
            None => format!("{builder} #{number}: started on {slave}"),
        },
        BuildEvent::StepStarted {
            builder,
            number,
            name,
            ..
        } => format!("{builder} #{number}: {name} ..."),
        BuildEvent::StepFinished {
            builder,
            number,
            name,
            result,
            summary,
            ..
        } => format!("{builder} #{number}: {name} {result} ({summary})"),
        BuildEvent::BuildFinished {
            builder,
            number,
            result,
            reason,
            will_retry,
            ..
        } => {
            let retry = if *will_retry {
                " (will be retried)"
            } else {
                ""
            };
            match reason {
                Some(reason) => format!("{builder} #{number}: {result}: {reason}{retry}"),
                None => format!("{builder} #{number}: {result}{retry}"),
            }
        }
    }
}

/// `try --wait`: streams the progress of the job's builds until all have finished. Exit 0 when
/// every build succeeded (or had warnings), 1 otherwise.
async fn wait_for_builds(
    ctx: &SshdContext,
    job_name: &str,
    mut events: tokio::sync::broadcast::Receiver<crate::master::state::SequencedEvent>,
    io: &mut ExecIo<'_>,
) -> u32 {
    use tokio::sync::broadcast::error::RecvError;
    let mut waiting_for: Option<Vec<String>> = None;
    // (builder, number, result, will another build follow?)
    let mut finished: Vec<(String, i64, BuildResult, bool)> = Vec::new();
    loop {
        let received = tokio::select! {
            received = events.recv() => received,
            _ = io.client_gone.cancelled() => {
                // Ctrl-C on the client: the job's unfinished builds are not wanted any more.
                let by = "try --wait (client disconnected)";
                let stopped = ctx.master.stop_job(job_name, by, "the submitter went away");
                ctx.master
                    .scheduler_event(crate::master::scheduler::SchedulerEvent::CancelJob {
                        job_name: job_name.to_string(),
                        by: by.to_string(),
                    })
                    .await;
                tracing::info!(job = %job_name, stopped, "try --wait client went away; job cancelled");
                return 1;
            }
        };
        let event = match received {
            Ok(sequenced) => sequenced.event,
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "try --wait fell behind the build events");
                continue;
            }
            Err(RecvError::Closed) => {
                io.say("buildbot: the master stopped before the builds finished")
                    .await;
                return EXIT_USAGE;
            }
        };
        if event.job_name() != job_name {
            continue;
        }
        match &event {
            BuildEvent::RequestsQueued { builders, .. } => waiting_for = Some(builders.clone()),
            BuildEvent::BuildFinished {
                builder,
                number,
                result,
                will_retry,
                ..
            } => finished.push((builder.clone(), *number, *result, *will_retry)),
            _ => {}
        }
        let line = describe_event(&event);
        io.print(&format!("{line}\n")).await;
        let Some(builders) = &waiting_for else {
            continue;
        };
        // A build retried after a lost slave finishes twice; the last one of each counts.
        let done = builders.iter().all(|builder| {
            finished
                .iter()
                .rev()
                .find(|(name, ..)| name == builder)
                .is_some_and(|(.., will_retry)| !will_retry)
        });
        if done {
            break;
        }
    }
    let mut all_good = true;
    let mut summary = String::from("summary:\n");
    let builders = waiting_for.unwrap_or_default();
    for builder in &builders {
        if let Some((_, number, result, _)) =
            finished.iter().rev().find(|(name, ..)| name == builder)
        {
            all_good &= result.is_good();
            summary.push_str(&format!(
                "  {builder} #{number}: {result}  {}/builders/{builder}/builds/{number}\n",
                ctx.master.web_url
            ));
        }
    }
    io.print(&summary).await;
    if all_good { 0 } else { 1 }
}

/// The status of the builders asked for (all when none are named): one line each.
async fn watch(ctx: &SshdContext, builders: &[String], follow: bool, io: &mut ExecIo<'_>) -> u32 {
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
    // Subscribe before printing the status, so nothing between the two is missed.
    let mut events = ctx.master.subscribe();
    let status = ctx.master.status_lines(builders);
    io.print(&status).await;
    if !follow {
        return 0;
    }
    loop {
        let received = tokio::select! {
            received = events.recv() => received,
            _ = io.client_gone.cancelled() => return 0,
        };
        let event = match received {
            Ok(sequenced) => sequenced.event,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                io.print(&format!(
                    "({missed} events skipped: this watcher fell behind)\n"
                ))
                .await;
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return 0,
        };
        let builder = match &event {
            BuildEvent::RequestsQueued {
                builders: queued, ..
            } => queued.first(),
            BuildEvent::BuildStarted { builder, .. }
            | BuildEvent::StepStarted { builder, .. }
            | BuildEvent::StepFinished { builder, .. }
            | BuildEvent::BuildFinished { builder, .. } => Some(builder),
        };
        let wanted = builders.is_empty()
            || match &event {
                BuildEvent::RequestsQueued {
                    builders: queued, ..
                } => queued.iter().any(|b| builders.contains(b)),
                _ => builder.is_some_and(|b| builders.contains(b)),
            };
        if wanted {
            io.print(&format!("{}\n", describe_event(&event))).await;
        }
    }
}
