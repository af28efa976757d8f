//! Runs the scheduler: one task that owns the [`Queue`], feeds it one [`Input`] at a time, and
//! performs the [`Effect`]s it decides: starting builds on the slaves the roster links to,
//! recording cancelled requests, closing unusable connections. All decisions are in
//! `scheduler`; this is the thin I/O around them.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::master::build;
use crate::master::control::{Control, Mail};
use crate::master::history;
use crate::master::scheduler::{Effect, Input, Queue};
use crate::status::{BuildEvent, RequestState};

/// How long a slave has to answer the ping before a build.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// How long running builds get to end when the master stops; what they leave unfinished is
/// recovered at the next start.
const BUILDS_GRACE: Duration = Duration::from_secs(1);

/// Runs the scheduler until `shutdown`; requests left pending in the history at start are
/// queued first.
pub async fn run(
    control: Arc<Control>,
    mut inputs: mpsc::Receiver<Mail>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (interrupted, pending) = control
        .history
        .run(|connection| {
            let interrupted = history::recover_interrupted_builds(connection)?;
            Ok((interrupted, history::pending_requests(connection)?))
        })
        .await?;
    if interrupted > 0 {
        tracing::warn!(
            builds = interrupted,
            "builds interrupted by a master restart are marked exception and queued again"
        );
    }
    let pools: HashMap<String, Vec<String>> = control
        .config
        .builders
        .iter()
        .map(|builder| (builder.name.clone(), builder.slaves.clone()))
        .collect();
    let collapsing = control
        .config
        .builders
        .iter()
        .filter(|builder| builder.collapse_requests)
        .map(|builder| builder.name.clone())
        .collect();
    let mut queue = Queue::new(pools, collapsing);
    let builds = TaskTracker::new();
    // Inputs that come from performing effects, handled before the next one from outside.
    let mut follow_ups = VecDeque::from([Input::Requests(pending)]);
    loop {
        let (input, reply) = match follow_ups.pop_front() {
            Some(input) => (input, None),
            None => tokio::select! {
                _ = shutdown.cancelled() => break,
                mail = inputs.recv() => match mail {
                    Some(Mail::Input(input)) => (input, None),
                    Some(Mail::CancelRequest { builder, request_id, by, reply }) => {
                        (Input::CancelRequest { builder, request_id, by }, Some((request_id, reply)))
                    }
                    None => break,
                },
            },
        };
        let effects = queue.apply(input);
        if let Some((request_id, reply)) = reply {
            let cancelled = effects.iter().any(|effect| {
                matches!(effect, Effect::RecordCancelled { requests, .. }
                    if requests.iter().any(|(id, ..)| *id == request_id))
            });
            // The asker may have given up; the cancellation stands anyway.
            let _ = reply.send(cancelled);
        }
        for effect in effects {
            if let Some(follow_up) = perform(&control, effect, &builds, &shutdown) {
                follow_ups.push_back(follow_up);
            }
        }
        control.set_queued(queue.queued_per_builder());
    }
    builds.close();
    let _ = tokio::time::timeout(BUILDS_GRACE, builds.wait()).await;
    Ok(())
}

fn perform(
    control: &Arc<Control>,
    effect: Effect,
    builds: &TaskTracker,
    shutdown: &CancellationToken,
) -> Option<Input> {
    match effect {
        Effect::StartBuild {
            request,
            slave,
            conn_id,
        } => {
            let Some(link) = control.roster.link(&slave, conn_id) else {
                // Gone between the decision and now: the request goes back to the front.
                return Some(Input::BuildEnded {
                    request_id: request.id,
                    retry: true,
                    slave_unusable: true,
                });
            };
            let control = Arc::clone(control);
            let shutdown = shutdown.clone();
            builds.spawn(async move {
                let request_id = request.id;
                let outcome = build::run(&control, *request, link, PING_TIMEOUT, shutdown).await;
                control
                    .scheduler_input(Input::BuildEnded {
                        request_id,
                        retry: outcome.retry,
                        slave_unusable: outcome.slave_unusable,
                    })
                    .await;
            });
            None
        }
        Effect::RecordCancelled { by, requests } => {
            tracing::info!(%by, requests = ?requests, "queued requests cancelled");
            let control = Arc::clone(control);
            builds.spawn(async move {
                let ids: Vec<i64> = requests.iter().map(|(id, ..)| *id).collect();
                let recorded = control
                    .history
                    .run(move |connection| {
                        for id in ids {
                            history::set_request_state(connection, id, RequestState::Cancelled)?;
                        }
                        Ok(())
                    })
                    .await;
                if let Err(err) = recorded {
                    tracing::error!("cannot record cancelled requests: {err}");
                }
                for (request_id, job_name, builder) in requests {
                    control.events.publish(BuildEvent::RequestCancelled {
                        job_name,
                        builder,
                        request_id,
                        by: by.clone(),
                    });
                }
            });
            None
        }
        Effect::Collapsed {
            into,
            requests,
            change_ids,
        } => {
            tracing::info!(into, merged = ?requests, "queued requests collapsed");
            let control = Arc::clone(control);
            builds.spawn(async move {
                let ids: Vec<i64> = requests.iter().map(|(id, ..)| *id).collect();
                let recorded = control
                    .history
                    .run(move |connection| {
                        for id in ids {
                            history::set_request_state(connection, id, RequestState::Cancelled)?;
                        }
                        history::changes::link_changes(connection, into, &change_ids)
                    })
                    .await;
                if let Err(err) = recorded {
                    tracing::error!("cannot record collapsed requests: {err}");
                }
                for (request_id, job_name, builder) in requests {
                    control.events.publish(BuildEvent::RequestCancelled {
                        job_name,
                        builder,
                        request_id,
                        by: format!("collapsed into request {into}"),
                    });
                }
            });
            None
        }
        Effect::CloseSlave { name, conn_id } => {
            control.roster.close(&name, conn_id);
            None
        }
    }
}
