//! The schedulers that start builds without a person: one task that feeds the pure
//! [`engine::Engine`] the recorded changes, the build results (for dependents) and the clock,
//! and queues the builds it decides on through the control layer. Idle, it sleeps until the
//! next thing that can be due: no timer runs when nothing is pending.
//!
//! In a cluster every master runs the same engine on the same inputs (each change and build
//! result comes to all through the shared event log), so any of them can take over; only the
//! master that leads the cluster's jobs queues what the engine fires.

pub mod engine;

use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::master::control::SchedulersHandle;
use crate::master::events::Followed;
use crate::master::git_remote;
use crate::master::store::{NewRequest, StoredChange, now};
use crate::status::{BuildEvent, RequestKind};
use engine::{Engine, Fire};

/// Runs the schedulers until `shutdown`.
pub async fn run(
    control: SchedulersHandle,
    mut changes: mpsc::Receiver<StoredChange>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut config_changes = control.config_changes();
    let mut schedulers = control.config().schedulers.clone();
    let mut engine = Engine::new(&schedulers, Instant::now(), chrono::Local::now());
    let mut follower = control.follow();
    loop {
        let deadline = engine.next_deadline();
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            change = changes.recv() => match change {
                Some(change) => engine.on_change(&change, Instant::now()),
                None => return Ok(()),
            },
            followed = follower.next() => match followed {
                Followed::Event(sequenced) => match sequenced.event {
                    BuildEvent::BuildFinished { job_name, builder, result, will_retry, .. } => {
                        for fire in engine.on_build_finished(&job_name, &builder, result, will_retry) {
                            queue(&control, &mut engine, fire).await;
                        }
                    }
                    BuildEvent::ChangeAdded { change_id, .. } if control.shared() => {
                        match control.change(change_id).await {
                            Ok(Some(change)) => engine.on_change(&change, Instant::now()),
                            Ok(None) => tracing::warn!(change = change_id, "a change announced but not found"),
                            Err(err) => tracing::warn!(change = change_id, "cannot read a change: {err}"),
                        }
                    }
                    _ => {}
                },
                Followed::Missed(count) => {
                    tracing::warn!(missed = count, "schedulers fell behind the build events; a dependent build may not start");
                }
                Followed::Closed => return Ok(()),
            },
            changed = config_changes.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let config = config_changes.borrow_and_update().clone();
                // A new engine only when the schedulers changed: it forgets pending
                // tree-stable timers and when periodic ones last fired.
                if config.schedulers != schedulers {
                    tracing::info!("reconfig: schedulers replaced");
                    schedulers = config.schedulers.clone();
                    engine = Engine::new(&schedulers, Instant::now(), chrono::Local::now());
                }
            }
            _ = sleep_until(deadline) => {}
        }
        let now = Instant::now();
        for fire in engine.due_branches(now) {
            queue(&control, &mut engine, fire).await;
        }
        for due in engine.due_timed(now, chrono::Local::now()) {
            // Only the leader builds it: the others keep time without asking the repository.
            let revision = if control.leads() {
                head_of(&control, &due.builders, due.branch.as_deref()).await
            } else {
                None
            };
            if let Some(fire) = engine.timed_fire(&due, revision) {
                queue(&control, &mut engine, fire).await;
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// The head of `branch` (default: the builder's own) in the repository of the first builder.
async fn head_of(
    control: &SchedulersHandle,
    builders: &[String],
    branch: Option<&str>,
) -> Option<String> {
    let builder = builders
        .iter()
        .find_map(|name| control.config().builder(name).cloned())?;
    let branch = branch.unwrap_or(&builder.branch);
    let repo = builder.repo.clone();
    match git_remote::heads(&repo).await {
        Ok(heads) => heads
            .into_iter()
            .find(|(name, _)| name == branch)
            .map(|(_, revision)| revision),
        Err(err) => {
            tracing::warn!("{err}; building the branch head as the slave finds it");
            None
        }
    }
}

/// Queues one build per builder of a firing, as one job (the leader of a cluster does; the
/// others only keep their engine in step).
async fn queue(control: &SchedulersHandle, engine: &mut Engine, fire: Fire) {
    if !control.leads() {
        tracing::debug!(scheduler = %fire.scheduler, "fired; the leading master queues it");
        return;
    }
    let job_name = format!("{}-{:016x}", fire.scheduler, rand::random::<u64>());
    let submitted_at = now();
    let requests: Vec<NewRequest> = fire
        .builders
        .iter()
        .filter_map(|name| control.config().builder(name).cloned())
        .map(|builder| NewRequest {
            job_name: job_name.clone(),
            jobid: String::new(),
            builder: builder.name.clone(),
            who: None,
            comment: None,
            repository: builder.repo.clone(),
            branch: fire.source.branch.clone(),
            baserev: fire.source.revision.clone(),
            patch: None,
            patch_level: 1,
            submitted_at,
            properties: fire.source.properties.clone(),
            kind: RequestKind::Scheduled,
            reason: Some(fire.reason.clone()),
            change_ids: fire.source.change_ids.clone(),
        })
        .collect();
    match control.enqueue(requests).await {
        Ok(_) => {
            tracing::info!(scheduler = %fire.scheduler, job = %job_name, reason = %fire.reason, "scheduler queued builds");
            engine.fired(&job_name, &fire);
        }
        Err(err) => tracing::error!(scheduler = %fire.scheduler, "cannot queue the builds: {err}"),
    }
}
