//! Following a job's builds to their end, for `try --wait`, `force --wait` and
//! `rebuild --wait`: one line (or JSON stream item) per event of the job, where each request
//! stands in its queue, and a summary. Exit 0 when every build succeeded (or had warnings), 1
//! otherwise. If the client goes away, the job is cancelled: its builds are not wanted any more.

use crate::commands::{EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::exec_io::ExecIo;
use crate::master::events::{Followed, Follower};
use crate::sshd::SshdContext;
use crate::status::{BuildEvent, JobProgress, StreamItem, text};

/// `command` names the waiting command (`try --wait`, ...) in the record of a cancellation.
pub async fn for_job(
    ctx: &SshdContext,
    command: &str,
    job_name: &str,
    mut follower: Follower,
    json: bool,
    tail: usize,
    io: &mut ExecIo<'_>,
) -> u32 {
    let mut progress = JobProgress::default();
    loop {
        let followed = tokio::select! {
            followed = follower.next() => followed,
            _ = io.client_gone.cancelled() => {
                let by = format!("{command} (client disconnected)");
                ctx.control
                    .cancel_job(job_name, &by, "the submitter went away")
                    .await;
                return EXIT_FAILED.into();
            }
        };
        let sequenced = match followed {
            Followed::Event(sequenced) => sequenced,
            Followed::Missed(count) => {
                tracing::warn!(missed = count, "{command} fell behind the build events");
                // The events that would end the job may be among those missed: the history
                // says where it stands.
                let record = match ctx.control.job_record(job_name).await {
                    Ok(record) => record,
                    Err(err) => {
                        tracing::error!("cannot read the job's record: {err}");
                        continue;
                    }
                };
                let done = progress.resync(&record);
                if json {
                    io.print_json(&StreamItem::Missed { count }).await;
                    io.print_json(&StreamItem::Resync { record }).await;
                } else {
                    io.print(&format!(
                        "({count} events skipped: fell behind the master)\n"
                    ))
                    .await;
                }
                if done {
                    break;
                }
                continue;
            }
            Followed::Closed => {
                io.say(&format!(
                    "{} before the builds finished",
                    crate::commands::Farewell::ShuttingDown
                ))
                .await;
                return EXIT_USAGE.into();
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
        let finished = match &sequenced.event {
            BuildEvent::BuildFinished {
                builder,
                number,
                will_retry: false,
                ..
            } => Some((builder.clone(), *number)),
            _ => None,
        };
        let failed = match &sequenced.event {
            BuildEvent::BuildFinished {
                builder,
                number,
                result,
                will_retry: false,
                ..
            } if !result.is_good() => Some((builder.clone(), *number)),
            _ => None,
        };
        if json {
            io.print_json(&StreamItem::Event(sequenced)).await;
        } else {
            io.print(&format!("{}\n", text::describe_event(&sequenced.event)))
                .await;
        }
        if !json
            && let Some((builder, number)) = &finished
            && let Some(line) = ctx.control.test_line(builder, *number).await
        {
            io.print(&format!("{line}\n")).await;
        }
        for builder in queued_for {
            report_position(ctx, job_name, &builder, json, io).await;
        }
        if let Some((builder, number)) = failed {
            match ctx.control.failed_step_tail(&builder, number, tail).await {
                Ok(Some(step_tail)) if json => {
                    io.print_json(&StreamItem::StepTail(step_tail)).await
                }
                Ok(Some(step_tail)) => {
                    io.print(&format!("{}\n", text::describe_tail(&step_tail)))
                        .await
                }
                Ok(None) => {}
                Err(err) => tracing::warn!("cannot read the failed step's log: {err}"),
            }
        }
        if done {
            break;
        }
    }
    if !json {
        io.print(&text::try_summary(ctx.control.web_url(), &progress))
            .await;
    }
    if progress.all_good() {
        EXIT_OK.into()
    } else {
        EXIT_FAILED.into()
    }
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
            waiting_for_lock: estimate.waiting_for_lock.clone(),
        })
        .await;
    } else {
        let line = text::describe_queued(
            builder,
            estimate.position,
            estimate.starts_in,
            estimate.waiting_for_lock.as_deref(),
        );
        io.print(&format!("{line}\n")).await;
    }
}
