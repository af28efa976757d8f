//! The spool's way into the queue: each try job the watcher claims is recorded as build
//! requests, one per builder, durably, after which the spool file is only an archive. At start,
//! jobs claimed by a master that stopped before recording them are taken first: the spool is
//! the source of truth until a request is recorded.

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::master::control::{ControlError, IntakeHandle, start_try_policy};
use crate::master::store::{NewRequest, now};
use crate::spool::maildir::Spool;
use crate::spool::watcher::SpooledJob;
use crate::status::RequestKind;

/// Jobs in `spool/cur/` that the history does not know: claimed, never recorded.
pub async fn recover_claimed_jobs(
    intake: &IntakeHandle,
    maildir: &Spool,
) -> anyhow::Result<Vec<SpooledJob>> {
    let claimed = maildir.list_cur().context("cannot list spool/cur")?;
    let mut unrecorded = Vec::new();
    let mut recorded = Vec::new();
    for name in claimed {
        if intake.store.is_job_recorded(&name).await? {
            recorded.push(name);
        } else {
            unrecorded.push(name);
        }
    }
    // Jobs recorded before this version deleted them, or before a crash between recording
    // and deleting: the history has them.
    for name in recorded {
        if let Err(err) = maildir.remove_recorded(&name) {
            tracing::warn!("cannot remove a recorded job from spool/cur: {err}");
        }
    }
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
    spool: Spool,
    recovered: Vec<SpooledJob>,
    mut jobs: mpsc::Receiver<SpooledJob>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    for spooled in recovered {
        record(&intake, &spool, spooled, &shutdown).await;
    }
    loop {
        let spooled = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            spooled = jobs.recv() => match spooled {
                Some(spooled) => spooled,
                None => return Ok(()),
            },
        };
        record(&intake, &spool, spooled, &shutdown).await;
    }
}

/// How long the intake waits before it tries again to record a job the store refused
/// (unreachable, restarting), at first and at most.
const RECORD_RETRY_FIRST: std::time::Duration = std::time::Duration::from_secs(1);
const RECORD_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(30);

async fn record(
    intake: &IntakeHandle,
    spool: &Spool,
    spooled: SpooledJob,
    shutdown: &CancellationToken,
) {
    let name = spooled.name.clone();
    let mut wait = RECORD_RETRY_FIRST;
    let recorded = loop {
        match record_spooled(intake, spooled.clone()).await {
            // The store cannot take it now (a database restarting): the job waits in
            // spool/cur/ and is tried again, with a log line, until it is recorded.
            Err(ControlError::History(err)) if !shutdown.is_cancelled() => {
                tracing::warn!(job = %name, "cannot record the job's requests yet, retrying in {wait:?}: {err}");
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(RECORD_RETRY_MAX);
            }
            other => break other,
        }
    };
    match recorded {
        Ok(()) => {}
        // Refused by a builder's rules (trusted, .gitmodules URLs): rejected with the reason,
        // as a malformed job is.
        Err(ControlError::NotAllowed(refusal)) => {
            let spool = spool.clone();
            let why = refusal.to_string();
            let rejected = tokio::task::spawn_blocking(move || spool.reject(&name, &why)).await;
            if !matches!(rejected, Ok(Ok(_))) {
                tracing::error!("cannot move a refused job to spool/rejected");
            }
            return;
        }
        Err(err) => {
            // It stays in spool/cur/, unrecorded: the next start takes it again.
            tracing::error!(job = %name, "cannot record the job's requests: {err}");
            return;
        }
    }
    // Recorded durably: the history holds all of it, so the spool's copy goes.
    let spool = spool.clone();
    let removed = tokio::task::spawn_blocking(move || spool.remove_recorded(&name)).await;
    match removed {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!("cannot remove a recorded job from spool/cur: {err}"),
        Err(err) => tracing::warn!("removing a recorded job panicked: {err}"),
    }
}

/// Records a spooled job's requests, queues them, and tells the followers.
async fn record_spooled(intake: &IntakeHandle, spooled: SpooledJob) -> Result<(), ControlError> {
    let mut spooled = spooled;
    let config = intake.config();
    // A job written into the spool directly is its file owner's, whatever it says; one the
    // master wrote itself came over SSH, where `submit_try` set the authenticated user.
    if spooled.owner_uid != nix::unistd::geteuid().as_raw() {
        spooled.job.who = Some(
            crate::unix::accounts::user_name(spooled.owner_uid)
                .unwrap_or_else(|| format!("uid {}", spooled.owner_uid)),
        );
    }
    let mut refused = None;
    let allowed: Vec<String> = spooled
        .builders
        .iter()
        .filter(
            |builder| match start_try_policy(&spooled.job, builder, &config) {
                Ok(()) => true,
                Err(err) => {
                    tracing::warn!(job = %spooled.name, %builder, "try job refused for this builder: {err}");
                    refused = Some(err);
                    false
                }
            },
        )
        .cloned()
        .collect();
    // Refused for every builder it names: nothing to record; the caller rejects the file with
    // the reason.
    if allowed.is_empty()
        && let Some(err) = refused
    {
        return Err(err.into());
    }
    intake
        .enqueue(requests_of(&spooled, &allowed, now()))
        .await?;
    Ok(())
}

/// One request per builder the job may go to.
fn requests_of(spooled: &SpooledJob, builders: &[String], submitted_at: f64) -> Vec<NewRequest> {
    builders
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
