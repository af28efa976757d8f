//! What each exec command does for the identity that asked: the routing table of the design
//! ("Exec commands the SSH server understands"). Each command parses its words (`exec`), calls
//! the control layer, and renders the typed answer as text, or as JSON lines with `--json`.
//! Commands see plain async streams ([`ExecIo`]), never russh types.

use std::net::SocketAddr;

use crate::exec_io::ExecIo;
use crate::master::control::{ControlError, ForceRequest, Queued};
use crate::master::events::{Followed, Follower};
use crate::master::sessions::LOGIN_TOKEN_LIFETIME;
use crate::sshd::exec::{self, EXIT_UNKNOWN_COMMAND, EXIT_USAGE, ExecCommand, Resume};
use crate::sshd::{Identity, SshdContext};
use crate::status::{BuildEvent, JobProgress, StreamItem, text, unix_now};
use crate::unix::accounts::UnixAccount;

/// Runs `command` for `identity` and returns the exit status to send.
pub async fn run(
    ctx: &SshdContext,
    identity: &Identity,
    peer: SocketAddr,
    command: &str,
    io: &mut ExecIo<'_>,
) -> u32 {
    let parsed = exec::parse(command);
    let user = match identity {
        Identity::Slave { name } => {
            if parsed == ExecCommand::Slave {
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
        ExecCommand::Watch {
            builders,
            follow,
            json,
            since,
        } => watch(ctx, &builders, follow, json, since, io).await,
        ExecCommand::TryServer { jobdir } => {
            match ctx.control.submit_try(user, Some(&jobdir), io.stdin).await {
                Ok(accepted) => {
                    let line = accepted_line(&accepted);
                    io.say(&line).await;
                    0
                }
                Err(err) => refuse_try(user, &err, io).await,
            }
        }
        ExecCommand::Try { wait, json } => {
            // Follow before the job exists, so no event about it can be missed.
            let follower = ctx.control.events.follow();
            let accepted = match ctx.control.submit_try(user, None, io.stdin).await {
                Ok(accepted) => accepted,
                Err(err) => return refuse_try(user, &err, io).await,
            };
            if json {
                io.print_json(&StreamItem::Accepted {
                    job_name: accepted.job_name.clone(),
                    jobid: accepted.jobid.clone(),
                    builders: accepted.builders.clone(),
                    web_url: ctx.control.web_url.clone(),
                })
                .await;
            } else {
                io.print(&format!("{}\n", accepted_line(&accepted))).await;
            }
            if !wait {
                return 0;
            }
            wait_for_job(ctx, &accepted.job_name, follower, json, io).await
        }
        ExecCommand::Stop {
            builder,
            build,
            reason,
        } => stop(ctx, user, &builder, build, &reason, io).await,
        ExecCommand::Force {
            builder,
            branch,
            revision,
            reason,
            properties,
        } => {
            let force = ForceRequest {
                branch,
                revision,
                reason,
                properties,
            };
            let queued = ctx.control.force(user, &builder, force).await;
            report_queued(queued, "forced build", io).await
        }
        ExecCommand::Rebuild {
            builder,
            build,
            reason,
        } => {
            let queued = ctx.control.rebuild(user, &builder, build, &reason).await;
            report_queued(queued, &format!("rebuild of #{build}"), io).await
        }
        ExecCommand::Cancel {
            builder,
            request_id,
        } => match ctx.control.cancel_request(user, &builder, request_id).await {
            Ok(()) => {
                io.print(&format!("{builder}: request {request_id} cancelled\n"))
                    .await;
                0
            }
            Err(err) => refuse(&err, io).await,
        },
        ExecCommand::CancelAll { builder, user: of } => {
            match ctx.control.cancel_all(user, &builder, of.as_deref()).await {
                Ok(count) => {
                    io.print(&format!("{builder}: {count} queued requests cancelled\n"))
                        .await;
                    0
                }
                Err(err) => refuse(&err, io).await,
            }
        }
        ExecCommand::SendChange => send_change(ctx, user, io).await,
        ExecCommand::PauseSlave { name, paused } => {
            match ctx.control.pause_slave(user, &name, paused).await {
                Ok(()) => {
                    let what = if paused {
                        "paused: it finishes its builds and takes no new ones"
                    } else {
                        "unpaused"
                    };
                    io.print(&format!("slave {name} {what}\n")).await;
                    0
                }
                Err(err) => refuse(&err, io).await,
            }
        }
        ExecCommand::IrcLink { list } => irc_link(ctx, user, list, io).await,
        ExecCommand::WebLogin => {
            let url = ctx.control.web_login(user);
            io.print(&format!(
                "{url}\n(open it within {} s; it works once)\n",
                LOGIN_TOKEN_LIFETIME.as_secs()
            ))
            .await;
            0
        }
    }
}

/// `irc-link`: a one-time code to say to the bot; `irc-link --list`: who is linked.
async fn irc_link(ctx: &SshdContext, user: &UnixAccount, list: bool, io: &mut ExecIo<'_>) -> u32 {
    let config = ctx.control.config();
    let Some(irc) = &config.irc else {
        io.say("buildbot: this master has no IRC bot (no [irc] section in master.toml)")
            .await;
        return 1;
    };
    let links = &ctx.control.irc_links;
    if list {
        let now = unix_now();
        let mut out = String::new();
        for binding in links.list() {
            out.push_str(&format!(
                "{} -> {} (linked {} ago, ends in {})\n",
                binding.nick,
                binding.account.name,
                crate::durations::format_eta(std::time::Duration::from_secs_f64(
                    (now - binding.since).max(0.0)
                )),
                crate::durations::format_eta(binding.expires_in)
            ));
        }
        if out.is_empty() {
            out.push_str("no IRC nicks are linked\n");
        }
        io.print(&out).await;
        return 0;
    }
    let code = links.new_code(user.clone());
    tracing::info!(user = %user.name, "IRC link code issued");
    io.print(&format!(
        "{code}\nsay on IRC, within {} minutes: /msg {} link {code}\n(the link lasts {} at most, and ends when that nick quits or changes nick)\n",
        crate::master::irc_links::LINK_CODE_LIFETIME.as_secs() / 60,
        irc.nick,
        crate::durations::format_eta(links.ttl()),
    ))
    .await;
    0
}

/// How long a sender has to deliver its change.
const CHANGE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// `sendchange`: one change as JSON on stdin, read with a size cap and a deadline.
async fn send_change(ctx: &SshdContext, user: &UnixAccount, io: &mut ExecIo<'_>) -> u32 {
    use tokio::io::AsyncReadExt;
    let mut bytes = Vec::new();
    let limit = crate::change::MAX_CHANGE_BYTES as u64 + 1;
    let read = tokio::time::timeout(
        CHANGE_DEADLINE,
        (&mut *io.stdin).take(limit).read_to_end(&mut bytes),
    )
    .await;
    match read {
        Ok(Ok(_)) => {}
        Ok(Err(err)) => {
            io.say(&format!("buildbot: cannot read the change: {err}"))
                .await;
            return 1;
        }
        Err(_) => {
            io.say(&format!(
                "buildbot: no complete change within {}s (send one JSON object on stdin, then close it)",
                CHANGE_DEADLINE.as_secs()
            ))
            .await;
            return 1;
        }
    }
    let change = match crate::change::decode(&bytes) {
        Ok(change) => change,
        Err(err) => {
            tracing::info!(user = %user.name, "change refused: {err}");
            io.say(&format!("buildbot: {err}")).await;
            return 1;
        }
    };
    match ctx.control.send_change(user, change).await {
        Ok(stored) => {
            io.print(&format!("change {} accepted\n", stored.id)).await;
            0
        }
        Err(err) => refuse(&err, io).await,
    }
}

/// `linux: forced build queued as request 12`, or the refusal.
async fn report_queued(
    queued: Result<Queued, ControlError>,
    what: &str,
    io: &mut ExecIo<'_>,
) -> u32 {
    match queued {
        Ok(queued) => {
            io.print(&format!(
                "{}: {what} queued as request {}\n",
                queued.builder, queued.request_id
            ))
            .await;
            0
        }
        Err(err) => refuse(&err, io).await,
    }
}

fn accepted_line(accepted: &crate::master::control::Accepted) -> String {
    text::describe_accepted(&accepted.jobid, &accepted.job_name, &accepted.builders)
}

async fn refuse_try(user: &UnixAccount, err: &ControlError, io: &mut ExecIo<'_>) -> u32 {
    match err {
        ControlError::Submit(crate::spool::submit::SubmitError::Spool(_))
        | ControlError::History(_) => {
            tracing::error!(user = %user.name, "cannot take a try job: {err}")
        }
        _ => tracing::info!(user = %user.name, "try refused: {err}"),
    }
    refuse_try_job(err, io).await
}

/// One line on stderr for a refused try job: an unknown builder exits 2 (a usage mistake of the
/// submitter, which `try --wait` must not report as a failed build), other refusals 1.
async fn refuse_try_job(err: &ControlError, io: &mut ExecIo<'_>) -> u32 {
    let status = refuse(err, io).await;
    match err {
        ControlError::NoSuchBuilder { .. } => EXIT_USAGE,
        _ => status,
    }
}

/// One line on stderr for a refused action, with the documented exit codes of `stop`,
/// `force`, `rebuild`, `cancel` and `pause-slave` (docs/try.md, "Exit codes"): 1 refused or not
/// found (no such builder, build or request; not running; no right), 2 a usage mistake (a
/// builder running several builds needs the number).
async fn refuse(err: &ControlError, io: &mut ExecIo<'_>) -> u32 {
    match err {
        ControlError::NoSuchBuilder { name, known } => {
            let known = if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            };
            io.say(&format!(
                "buildbot: no builder named '{name}' (builders: {known})"
            ))
            .await;
            1
        }
        ControlError::Ambiguous { builder, .. } => {
            io.say(&format!(
                "buildbot: {err}: stop {builder} NUMBER --reason ..."
            ))
            .await;
            EXIT_USAGE
        }
        _ => {
            io.say(&format!("buildbot: {err}")).await;
            1
        }
    }
}

/// `stop BUILDER [N] --reason TEXT`: the control layer's stop, rendered as one line.
async fn stop(
    ctx: &SshdContext,
    user: &UnixAccount,
    builder: &str,
    number: Option<i64>,
    reason: &str,
    io: &mut ExecIo<'_>,
) -> u32 {
    match ctx.control.stop_build(user, builder, number, reason).await {
        Ok(stopped) => match stopped.result {
            Some(result) => {
                io.print(&format!(
                    "{builder} #{}: {result} (stopped by {}: {reason})\n",
                    stopped.number, user.name
                ))
                .await;
                0
            }
            None => {
                io.say(&format!(
                    "buildbot: asked {builder} #{} to stop; it has not finished yet",
                    stopped.number
                ))
                .await;
                1
            }
        },
        Err(err) => refuse(&err, io).await,
    }
}

/// `try --wait`: streams the progress of the job's builds until all have ended for good. Exit
/// 0 when every build succeeded (or had warnings), 1 otherwise. If the client goes away, the
/// job is cancelled: its builds are not wanted any more.
async fn wait_for_job(
    ctx: &SshdContext,
    job_name: &str,
    mut follower: Follower,
    json: bool,
    io: &mut ExecIo<'_>,
) -> u32 {
    let mut progress = JobProgress::default();
    loop {
        let followed = tokio::select! {
            followed = follower.next() => followed,
            _ = io.client_gone.cancelled() => {
                ctx.control
                    .cancel_job(job_name, "try --wait (client disconnected)", "the submitter went away")
                    .await;
                return 1;
            }
        };
        let sequenced = match followed {
            Followed::Event(sequenced) => sequenced,
            Followed::Missed(count) => {
                tracing::warn!(missed = count, "try --wait fell behind the build events");
                continue;
            }
            Followed::Closed => {
                io.say("buildbot: the master is shutting down before the builds finished")
                    .await;
                return EXIT_USAGE;
            }
        };
        if sequenced.event.job_name() != job_name {
            continue;
        }
        let done = progress.observe(&sequenced.event);
        let queued_for = match &sequenced.event {
            BuildEvent::RequestsQueued { builders, .. } => builders.clone(),
            _ => Vec::new(),
        };
        if json {
            io.print_json(&StreamItem::Event(sequenced)).await;
        } else {
            io.print(&format!("{}\n", text::describe_event(&sequenced.event)))
                .await;
        }
        for builder in queued_for {
            report_position(ctx, job_name, &builder, json, io).await;
        }
        if done {
            break;
        }
    }
    if !json {
        io.print(&text::try_summary(&ctx.control.web_url, &progress))
            .await;
    }
    if progress.all_good() { 0 } else { 1 }
}

/// Where the job's request stands in `builder`'s queue, when it has to wait at all.
async fn report_position(
    ctx: &SshdContext,
    job_name: &str,
    builder: &str,
    json: bool,
    io: &mut ExecIo<'_>,
) {
    let Ok(estimates) = ctx.control.queue_estimates(builder).await else {
        return;
    };
    let request_of_job = ctx.control.request_ids_of_job(job_name, builder).await;
    let Some(estimate) = estimates
        .iter()
        .find(|estimate| request_of_job.contains(&estimate.request_id))
    else {
        return;
    };
    if json {
        io.print_json(&StreamItem::Queued {
            builder: builder.to_string(),
            position: estimate.position,
            starts_in_secs: estimate.starts_in,
        })
        .await;
    } else {
        let line = text::describe_queued(builder, estimate.position, estimate.starts_in);
        io.print(&format!("{line}\n")).await;
    }
}

/// The status of the builders asked for (all when none are named), then with `follow` every
/// event about them. With `since` of this master run, the events after it come first.
async fn watch(
    ctx: &SshdContext,
    builders: &[String],
    follow: bool,
    json: bool,
    since: Option<Resume>,
    io: &mut ExecIo<'_>,
) -> u32 {
    let events = &ctx.control.events;
    // Follow before taking the status, so nothing between the two is missed.
    let mut follower = match &since {
        Some(resume) if resume.epoch == events.epoch() => events.follow_since(resume.seq),
        // Another run of the master: everything it kept is new to this follower.
        Some(_) => events.follow_since(0),
        None => events.follow(),
    };
    let snapshot = match ctx.control.status(builders) {
        Ok(snapshot) => snapshot,
        Err(err) => return refuse(&err, io).await,
    };
    if json {
        io.print_json(&StreamItem::Status {
            epoch: events.epoch().to_string(),
            snapshot,
        })
        .await;
    } else {
        io.print(&text::status_lines(&snapshot, unix_now())).await;
    }
    if !follow {
        return 0;
    }
    loop {
        let followed = tokio::select! {
            followed = follower.next() => followed,
            _ = io.client_gone.cancelled() => return 0,
        };
        match followed {
            Followed::Event(sequenced) if sequenced.event.concerns_any(builders) => {
                if json {
                    io.print_json(&StreamItem::Event(sequenced)).await;
                } else {
                    io.print(&format!("{}\n", text::describe_event(&sequenced.event)))
                        .await;
                }
            }
            Followed::Event(_) => {}
            Followed::Missed(count) => {
                if json {
                    io.print_json(&StreamItem::Missed { count }).await;
                } else {
                    io.print(&format!(
                        "({count} events skipped: this watcher fell behind)\n"
                    ))
                    .await;
                }
            }
            Followed::Closed => return 0,
        }
    }
}
