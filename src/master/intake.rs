//! The spool's way into the queue: each try job the watcher claims is recorded as build
//! requests, one per builder, durably, after which the spool file is only an archive. At start,
//! jobs claimed by a master that stopped before recording them are taken first: the spool is
//! the source of truth until a request is recorded.

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::master::control::{ControlError, IntakeHandle};
use crate::master::history::{self, NewRequest};
use crate::spool::maildir::Spool;
use crate::spool::watcher::SpooledJob;
use crate::status::RequestKind;

/// Jobs in `spool/cur/` that the history does not know: claimed, never recorded.
pub async fn recover_claimed_jobs(
    intake: &IntakeHandle,
    maildir: &Spool,
) -> anyhow::Result<Vec<SpooledJob>> {
    let claimed = maildir.list_cur().context("cannot list spool/cur")?;
    let unrecorded = intake
        .history
        .run(move |connection| {
            let mut unrecorded = Vec::new();
            for name in claimed {
                if !history::is_job_recorded(connection, &name)? {
                    unrecorded.push(name);
                }
            }
            Ok(unrecorded)
        })
        .await?;
    let config = intake.config();
    let try_builders: Vec<String> = config
        .try_builders()
        .iter()
        .map(ToString::to_string)
        .collect();
    let mut recovered = Vec::new();
    for name in unrecorded {
        tracing::warn!(job = %name, "job claimed but never recorded (master stopped); taking it now");
        if let Some(spooled) = crate::spool::watcher::check_claimed(
            maildir,
            &name,
            &try_builders,
            config.spool.max_patch_bytes,
        )? {
            recovered.push(spooled);
        }
    }
    Ok(recovered)
}

/// Records each job claimed from the spool (the recovered ones first) until `shutdown`.
pub async fn run(
    intake: IntakeHandle,
    recovered: Vec<SpooledJob>,
    mut jobs: mpsc::Receiver<SpooledJob>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    for spooled in recovered {
        record(&intake, spooled).await;
    }
    loop {
        let spooled = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            spooled = jobs.recv() => match spooled {
                Some(spooled) => spooled,
                None => return Ok(()),
            },
        };
        record(&intake, spooled).await;
    }
}

async fn record(intake: &IntakeHandle, spooled: SpooledJob) {
    let name = spooled.name.clone();
    if let Err(err) = record_spooled(intake, spooled).await {
        // It stays in spool/cur/, unrecorded: the next start takes it again.
        tracing::error!(job = %name, "cannot record the job's requests: {err}");
    }
}

/// Records a spooled job's requests, queues them, and tells the followers.
async fn record_spooled(intake: &IntakeHandle, spooled: SpooledJob) -> Result<(), ControlError> {
    intake
        .enqueue(requests_of(&spooled, history::now()))
        .await?;
    Ok(())
}

/// One request per builder the job names.
fn requests_of(spooled: &SpooledJob, submitted_at: f64) -> Vec<NewRequest> {
    spooled
        .builders
        .iter()
        .map(|builder| NewRequest {
            job_name: spooled.name.clone(),
            jobid: spooled.job.jobid.clone(),
            builder: builder.clone(),
            who: spooled.job.who.clone(),
            comment: spooled.job.comment.clone(),
            repository: spooled.job.repository.clone(),
            branch: spooled.job.branch.clone(),
            baserev: spooled.job.baserev.clone(),
            patch: spooled.job.patch.clone(),
            patch_level: spooled.job.patch_level,
            submitted_at,
            properties: spooled.job.properties.clone(),
            kind: RequestKind::Try,
            reason: Some(match &spooled.job.who {
                Some(who) => format!("try by {who}"),
                None => "try".to_string(),
            }),
            change_ids: Vec::new(),
        })
        .collect()
}
