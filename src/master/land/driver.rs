//! The merge queue's driver: one task per master (with a shared store, only the leading
//! master's runs, `lease::while_leading`) that moves each target branch's head entry through
//! its states, all kept in the store so a restarted master resumes where the last one was:
//!
//! ```text
//! queued ──rebase onto tip T, queue builds──▶ testing ──all passed──▶ landing ──push (lease T)──▶ landed
//!   ▲  │ conflict, --ff-only                   │ a build failed           │ target moved: re-test
//!   │  ▼                                        ▼                          │ (at most `retries`)
//!   │ rejected ◀────────────────────────────────┘                          │
//!   └──────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! Every move is a compare-and-set on the entry's state (`Store::land_transition`), so a
//! cancel or another master cannot be overwritten. Nothing lands untested: the push names
//! the exact commit whose tree the builds tested, and only if the target still points at the
//! tip it was rebased onto. Nothing lands twice: a master that died between the push and its
//! record finds the target at the tested commit and records it as landed.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::LandError;
use super::git::Repo;
use super::series::{self, Pushed};
use crate::master::config::{Config, LandConfig};
use crate::master::control::LandHandle;
use crate::master::events::Followed;
use crate::master::store::{LandEntry, LandProgress, LandState, NewRequest, now};
use crate::status::{BuildEvent, BuildResult, RequestKind};

/// How often the queues are looked at when no event wakes the driver (a build's end on
/// another master, a push to the target).
const POLL: Duration = Duration::from_secs(2);

/// Runs the queues until `shutdown`.
pub async fn run(handle: LandHandle, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut follower = handle.follow();
    loop {
        let config = handle.config();
        for land in &config.lands {
            if let Err(err) = drive(&handle, &config, land).await {
                tracing::warn!(branch = %land.branch, "land queue: {err}");
            }
        }
        let wait = async {
            loop {
                match follower.next().await {
                    Followed::Event(event) if concerns_land(&event.event) => return true,
                    Followed::Event(_) => {}
                    Followed::Missed(_) => return true,
                    Followed::Closed => return false,
                }
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            open = wait => if !open { return Ok(()) },
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

/// Events after which a queue may move: a series queued, a land build ended.
fn concerns_land(event: &BuildEvent) -> bool {
    match event {
        BuildEvent::LandQueued { .. } | BuildEvent::LandRejected { .. } => true,
        BuildEvent::BuildFinished { job_name, .. }
        | BuildEvent::RequestCancelled { job_name, .. } => job_name.starts_with("land-"),
        _ => false,
    }
}

/// What one step did to the head entry.
enum Step {
    /// It moved on: look again at once.
    Moved,
    /// It waits for builds, a remote, or nothing.
    Waiting,
}

/// Moves `land`'s head entry as far as it goes now.
async fn drive(handle: &LandHandle, config: &Config, land: &LandConfig) -> anyhow::Result<()> {
    for _ in 0..16 {
        let entries = handle
            .store
            .land_entries(Some(land.branch.clone()), true, 1)
            .await?;
        let Some(head) = entries.into_iter().next() else {
            return Ok(());
        };
        match step(handle, config, land, head).await? {
            Step::Moved => continue,
            Step::Waiting => return Ok(()),
        }
    }
    Ok(())
}

async fn step(
    handle: &LandHandle,
    config: &Config,
    land: &LandConfig,
    entry: LandEntry,
) -> anyhow::Result<Step> {
    tracing::debug!(id = entry.id, branch = %land.branch, state = entry.state.as_str(), "land: the queue's head");
    match entry.state {
        LandState::Queued => start_test(handle, config, land, entry).await,
        LandState::Testing => judge(handle, entry).await,
        LandState::Landing => push(handle, config, land, entry).await,
        LandState::Landed | LandState::Rejected | LandState::Cancelled => Ok(Step::Waiting),
    }
}

async fn work_repo(config: &Config, land: &LandConfig) -> Result<Repo, LandError> {
    let dir = series::work_dir(&config.master_dir, &land.repo, &land.branch);
    Repo::open(&dir)
        .await
        .map_err(|err| LandError::Git(err.to_string()))
}

/// The entry's series in the work repository (imported again from the store's bundle when
/// this master has not seen it: after a restart elsewhere, or a lost work directory).
async fn series_head(
    handle: &LandHandle,
    work: &Repo,
    entry: &LandEntry,
) -> Result<String, LandError> {
    let name = series::entry_ref(entry.id);
    let spec = format!("{name}^{{commit}}");
    let known = work
        .git_status(
            &["rev-parse", "--verify", "-q", &spec],
            super::git::LOCAL_TIMEOUT,
        )
        .await
        .map_err(|err| LandError::Git(err.to_string()))?;
    if known.code == Some(0) {
        return Ok(known.text());
    }
    let bundle = handle
        .store
        .land_bundle(entry.id)
        .await
        .map_err(|err| LandError::Git(err.to_string()))?
        .unwrap_or_default();
    Ok(series::import(work, &bundle, &name).await?.head)
}

/// Queued → testing: rebase onto the tip and queue a build per builder.
async fn start_test(
    handle: &LandHandle,
    config: &Config,
    land: &LandConfig,
    entry: LandEntry,
) -> anyhow::Result<Step> {
    let work = work_repo(config, land).await?;
    let prepared = {
        let _turn = series::turn(&work.dir).await;
        prepare(handle, &work, land, &entry).await
    };
    let (tip, rebased, patch) = match prepared {
        Ok(prepared) => prepared,
        Err(LandError::Git(message)) => anyhow::bail!("#{}: {message}", entry.id),
        Err(refusal) => {
            return reject(handle, &entry, LandState::Queued, &refusal.to_string()).await;
        }
    };
    if let Some(patch) = &patch {
        for builder in &entry.builders {
            let allowed = config
                .builder(builder)
                .is_some_and(|found| found.patch_submodule_urls);
            if !allowed && crate::tryjob::changes_gitmodules_urls(patch) {
                let reason = format!(
                    "the series changes a submodule URL in .gitmodules, which {builder} does not allow"
                );
                return reject(handle, &entry, LandState::Queued, &reason).await;
            }
        }
    }
    let attempts = entry.progress.attempts + 1;
    let job_name = format!("land-{}-{attempts}", entry.id);
    let progress = LandProgress {
        job_name: Some(job_name.clone()),
        tested_base: Some(tip.clone()),
        tested_sha: Some(rebased.clone()),
        attempts,
        ..LandProgress::default()
    };
    if !handle
        .store
        .land_transition(entry.id, LandState::Queued, LandState::Testing, progress)
        .await?
    {
        return Ok(Step::Moved);
    }
    let requests = entry
        .builders
        .iter()
        .map(|builder| NewRequest {
            job_name: job_name.clone(),
            jobid: format!("land-{}", entry.id),
            builder: builder.clone(),
            who: Some(entry.who.clone()),
            comment: Some(entry.summary.clone()),
            repository: land.repo.clone(),
            branch: Some(land.branch.clone()),
            baserev: Some(tip.clone()),
            patch: patch.clone(),
            patch_level: 1,
            submitted_at: now(),
            properties: [
                ("land_id".to_string(), entry.id.to_string()),
                ("land_sha".to_string(), rebased.clone()),
            ]
            .into_iter()
            .collect(),
            kind: RequestKind::Try,
            reason: Some(format!(
                "land #{} onto {} by {} (test {attempts})",
                entry.id, land.branch, entry.who
            )),
            change_ids: Vec::new(),
        })
        .collect();
    handle.enqueuer.enqueue(requests).await?;
    tracing::info!(id = entry.id, branch = %land.branch, %job_name, tip = %series::short(&tip), sha = %series::short(&rebased), "land: testing");
    Ok(Step::Waiting)
}

/// The target's tip, the series rebased onto it, and the diff between them (none: empty).
async fn prepare(
    handle: &LandHandle,
    work: &Repo,
    land: &LandConfig,
    entry: &LandEntry,
) -> Result<(String, String, Option<Vec<u8>>), LandError> {
    let tip = series::fetch_tip(work, &land.repo, &land.branch).await?;
    let head = series_head(handle, work, entry).await?;
    let rebased = series::rebase(work, &head, &tip, entry.ff_only).await?;
    let patch = series::diff(work, &tip, &rebased.sha).await?;
    // The tested commits must survive a `git gc` until they are pushed.
    let _ = work
        .git(
            &[
                "update-ref",
                &format!("refs/land/tested/{}", entry.id),
                &rebased.sha,
            ],
            super::git::LOCAL_TIMEOUT,
        )
        .await;
    Ok((tip, rebased.sha, (!patch.is_empty()).then_some(patch)))
}

/// Testing → landing once every builder passed; rejected when one did not.
async fn judge(handle: &LandHandle, entry: LandEntry) -> anyhow::Result<Step> {
    let Some(job_name) = entry.progress.job_name.clone() else {
        return requeue(handle, &entry, LandState::Testing, 0).await;
    };
    if !handle.store.is_job_recorded(&job_name).await? {
        // The master stopped between the move to testing and queueing the builds: test again.
        return requeue(handle, &entry, LandState::Testing, -1).await;
    }
    let record = handle.store.job_record(&job_name).await?;
    if let Some(builder) = record.cancelled.first() {
        let reason = format!("the build on {builder} was cancelled");
        return reject(handle, &entry, LandState::Testing, &reason).await;
    }
    let mut waiting = false;
    for builder in &entry.builders {
        let last = record
            .finished
            .iter()
            .rev()
            .find(|(name, _, _)| name == builder);
        match last {
            None => waiting = true,
            Some((_, _, BuildResult::Success | BuildResult::Warnings)) => {}
            Some((_, number, result)) => {
                let reason = format!("{builder} #{number}: {}", result.as_str());
                return reject(handle, &entry, LandState::Testing, &reason).await;
            }
        }
    }
    if waiting {
        return Ok(Step::Waiting);
    }
    let moved = handle
        .store
        .land_transition(
            entry.id,
            LandState::Testing,
            LandState::Landing,
            entry.progress.clone(),
        )
        .await?;
    Ok(if moved { Step::Moved } else { Step::Waiting })
}

/// Landing → landed: the compare-and-swap push of the tested commit.
async fn push(
    handle: &LandHandle,
    config: &Config,
    land: &LandConfig,
    entry: LandEntry,
) -> anyhow::Result<Step> {
    let (Some(sha), Some(base)) = (
        entry.progress.tested_sha.clone(),
        entry.progress.tested_base.clone(),
    ) else {
        return requeue(handle, &entry, LandState::Landing, 0).await;
    };
    let work = work_repo(config, land).await?;
    let outcome = {
        let _turn = series::turn(&work.dir).await;
        // A master that died after its push finds the target at the tested commit.
        match series::remote_tip(&work, &land.push_url, &land.branch).await? {
            Some(now_at) if now_at == sha => Pushed::Done,
            _ => {
                // The tested commits must be here (another master may have tested them).
                let spec = format!("{sha}^{{commit}}");
                let present = work
                    .git_status(&["cat-file", "-e", &spec], super::git::LOCAL_TIMEOUT)
                    .await?;
                if present.code != Some(0) {
                    return requeue(handle, &entry, LandState::Landing, 0).await;
                }
                series::push(&work, &land.push_url, &land.branch, &sha, &base).await?
            }
        }
    };
    match outcome {
        Pushed::Done => {
            let progress = LandProgress {
                landed_sha: Some(sha.clone()),
                finished_at: Some(now()),
                ..entry.progress.clone()
            };
            if handle
                .store
                .land_transition(entry.id, LandState::Landing, LandState::Landed, progress)
                .await?
            {
                tracing::info!(id = entry.id, branch = %land.branch, sha = %sha, "landed");
                handle.events.publish(BuildEvent::Landed {
                    id: entry.id,
                    branch: entry.branch.clone(),
                    who: entry.who.clone(),
                    commits: entry.commits,
                    sha,
                });
            }
            Ok(Step::Moved)
        }
        Pushed::Moved if entry.ff_only => {
            let reason = format!(
                "{} moved during the test; --ff-only refuses to rebase",
                land.branch
            );
            reject(handle, &entry, LandState::Landing, &reason).await
        }
        Pushed::Moved if entry.progress.attempts > i64::from(land.retries) => {
            let reason = format!(
                "{} moved during each of {} tests; giving up",
                land.branch, entry.progress.attempts
            );
            reject(handle, &entry, LandState::Landing, &reason).await
        }
        Pushed::Moved => {
            tracing::info!(id = entry.id, branch = %land.branch, "land: the target moved during the test; rebasing and testing again");
            requeue(handle, &entry, LandState::Landing, 0).await
        }
    }
}

/// Back to queued (to be rebased and tested again); `attempts` adjusted by `delta`.
async fn requeue(
    handle: &LandHandle,
    entry: &LandEntry,
    from: LandState,
    delta: i64,
) -> anyhow::Result<Step> {
    let progress = LandProgress {
        attempts: (entry.progress.attempts + delta).max(0),
        ..LandProgress::default()
    };
    handle
        .store
        .land_transition(entry.id, from, LandState::Queued, progress)
        .await?;
    Ok(Step::Moved)
}

async fn reject(
    handle: &LandHandle,
    entry: &LandEntry,
    from: LandState,
    reason: &str,
) -> anyhow::Result<Step> {
    let reason = crate::untrusted::text::one_line(reason);
    let progress = LandProgress {
        reason: Some(reason.clone()),
        finished_at: Some(now()),
        ..entry.progress.clone()
    };
    if handle
        .store
        .land_transition(entry.id, from, LandState::Rejected, progress)
        .await?
    {
        tracing::info!(id = entry.id, branch = %entry.branch, %reason, "land rejected");
        handle.events.publish(BuildEvent::LandRejected {
            id: entry.id,
            branch: entry.branch.clone(),
            who: entry.who.clone(),
            reason,
        });
    }
    Ok(Step::Moved)
}
