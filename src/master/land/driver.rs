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

/// Moves `land`'s window (its first `window` entries) as far as it goes now. The head is
/// tested on the target's tip; each entry behind it on the rebased series of the one ahead
/// (Zuul's gate), so when the head lands the next one's test is already of what it lands as.
/// An entry whose test is no longer on the one ahead of it (that one failed, was cancelled
/// or tested again) is evicted: its builds stop and it is tested again.
async fn drive(handle: &LandHandle, config: &Config, land: &LandConfig) -> anyhow::Result<()> {
    let window = land.window.max(1);
    for _ in 0..(4 * window + 16) {
        let entries = handle
            .store
            .land_entries(Some(land.branch.clone()), true, window as i64)
            .await?;
        let mut moved = false;
        // What the entry ahead was rebased to; none for the head (it goes on the tip).
        let mut ahead: Option<String> = None;
        for (index, entry) in entries.into_iter().enumerate() {
            let head = index == 0;
            if head && window > 1 && entry.state == LandState::Testing {
                // Tested on a series ahead that then left the queue without landing (failed,
                // cancelled): that series is not under the target's tip.
                if let Some(base) = &entry.progress.tested_base
                    && !under_tip(config, land, base).await?
                {
                    evict(handle, &entry).await?;
                    moved = true;
                    break;
                }
            }
            if !head {
                let Some(parent) = ahead.clone() else {
                    break;
                };
                let stacked_on = entry.progress.tested_base.as_deref();
                if entry.state == LandState::Testing && stacked_on != Some(parent.as_str()) {
                    evict(handle, &entry).await?;
                    moved = true;
                    break;
                }
                if entry.state == LandState::Queued && entry.ff_only {
                    // A series that must not be rebased waits until it is the head.
                    break;
                }
            }
            tracing::debug!(id = entry.id, branch = %land.branch, state = entry.state.as_str(), index, "land: in the window");
            let tested = entry.progress.tested_sha.clone();
            let step = match entry.state {
                LandState::Queued => start_test(handle, config, land, entry, ahead.clone()).await?,
                LandState::Testing => judge(handle, entry, head).await?,
                LandState::Landing if head => push(handle, config, land, entry).await?,
                _ => Step::Waiting,
            };
            if let Step::Moved = step {
                moved = true;
                break;
            }
            ahead = tested;
        }
        if !moved {
            return Ok(());
        }
    }
    Ok(())
}

/// Whether `commit` is the target's tip as this master last saw it (fetched, or pushed by
/// itself), or under it.
async fn under_tip(config: &Config, land: &LandConfig, commit: &str) -> anyhow::Result<bool> {
    let work = work_repo(config, land).await?;
    let _turn = series::turn(&work.dir).await;
    let answer = work
        .git_status(
            &["merge-base", "--is-ancestor", commit, "refs/land/tip"],
            super::git::LOCAL_TIMEOUT,
        )
        .await?;
    Ok(answer.code == Some(0))
}

/// A speculative test whose base went away: its builds stop and it is tested again.
async fn evict(handle: &LandHandle, entry: &LandEntry) -> anyhow::Result<()> {
    if let Some(job) = &entry.progress.job_name {
        handle
            .cancel_job(job, "land", "the series ahead of it changed")
            .await;
    }
    tracing::info!(id = entry.id, branch = %entry.branch, "land: the series ahead changed; testing again");
    requeue(handle, entry, LandState::Testing, 0).await?;
    Ok(())
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
    onto: Option<String>,
) -> anyhow::Result<Step> {
    let work = work_repo(config, land).await?;
    let prepared = {
        let _turn = series::turn(&work.dir).await;
        prepare(handle, &work, land, &entry, onto.as_deref()).await
    };
    let (parent, build_base, rebased, patch) = match prepared {
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
        tested_base: Some(parent.clone()),
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
            baserev: Some(build_base.clone()),
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
    tracing::info!(id = entry.id, branch = %land.branch, %job_name, on = %series::short(&parent), sha = %series::short(&rebased), "land: testing");
    Ok(Step::Moved)
}

/// The commit the series goes on (the target's tip, or `onto`: the rebased series ahead of it
/// in the window), the commit of the builders' repository the builds check out (the tip the
/// stack sits on), the series rebased, and the diff from that checkout to it (none: empty).
async fn prepare(
    handle: &LandHandle,
    work: &Repo,
    land: &LandConfig,
    entry: &LandEntry,
    onto: Option<&str>,
) -> Result<(String, String, String, Option<Vec<u8>>), LandError> {
    let parent = match onto {
        Some(onto) => onto.to_string(),
        None => series::fetch_tip(work, &land.repo, &land.branch).await?,
    };
    let head = series_head(handle, work, entry).await?;
    let rebased = series::rebase(work, &head, &parent, entry.ff_only).await?;
    // The stack's commits exist only here: the builds check out the tip under them.
    let build_base = match onto {
        None => parent.clone(),
        Some(_) => work
            .git(
                &["merge-base", &rebased.sha, "refs/land/tip"],
                super::git::LOCAL_TIMEOUT,
            )
            .await
            .map_err(|err| LandError::Git(err.to_string()))?
            .text(),
    };
    let patch = series::diff(work, &build_base, &rebased.sha).await?;
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
    Ok((
        parent,
        build_base,
        rebased.sha,
        (!patch.is_empty()).then_some(patch),
    ))
}

/// Testing → landing once every builder passed (the head only: the others wait for their
/// turn with their results); rejected when one did not.
async fn judge(handle: &LandHandle, entry: LandEntry, head: bool) -> anyhow::Result<Step> {
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
    if waiting || !head {
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
            // The next series in the window was tested on this one: it is the tip now.
            let turn = series::turn(&work.dir).await;
            let _ = work
                .git(
                    &["update-ref", "refs/land/tip", &sha],
                    super::git::LOCAL_TIMEOUT,
                )
                .await;
            drop(turn);
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
                forget(handle, &entry).await;
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
        forget(handle, entry).await;
        handle.events.publish(BuildEvent::LandRejected {
            id: entry.id,
            branch: entry.branch.clone(),
            who: entry.who.clone(),
            reason,
        });
    }
    Ok(Step::Moved)
}

/// Drops an ended entry's private refs from the work repository (best effort), so its
/// objects can go at the next `git gc`; a landed series lives on in the target.
async fn forget(handle: &LandHandle, entry: &LandEntry) {
    let config = handle.config();
    let Some(land) = config.land(&entry.branch) else {
        return;
    };
    let Ok(work) = work_repo(&config, land).await else {
        return;
    };
    let _turn = series::turn(&work.dir).await;
    for name in [
        series::entry_ref(entry.id),
        format!("refs/land/tested/{}", entry.id),
    ] {
        let _ = work
            .git(&["update-ref", "-d", &name], super::git::LOCAL_TIMEOUT)
            .await;
    }
}
