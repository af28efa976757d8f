//! `[[change_source]] kind = "git-poll"`: asks a repository the master cannot hook for its
//! branch heads every `interval` and records a change for each head that moved. The heads seen
//! are kept in the history, so a restarted master neither rebuilds old heads nor misses one
//! that moved while it was down. The first poll of a repository only records what is there.
//! An unreachable repository is logged and asked again next time; it never stops the master.
//!
//! A change lists what the moved head brought, as the post-receive hook does: the files that
//! differ from the old head (a new branch: its head commit's files), the authors of the new
//! commits and the head's message. To know them the poller fetches the moved branches into a
//! bare mirror under `DIR/gitpoll/` (`git_remote::Mirror`); when that fails, the change is
//! still recorded, without files (which every `files` filter lets through).

use std::collections::BTreeMap;

use tokio_util::sync::CancellationToken;

use crate::change::ChangeSpec;
use crate::master::config::ChangeSourceConfig;
use crate::master::control::PollerHandle;
use crate::master::git_remote;

/// Where the pollers' mirrors live, under the master directory.
const MIRRORS: &str = "gitpoll";

/// Polls one repository until `shutdown`.
pub async fn run(
    control: PollerHandle,
    source: ChangeSourceConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut ticks = tokio::time::interval(source.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = ticks.tick() => {}
        }
        if let Err(err) = poll_once(&control, &source).await {
            tracing::warn!(repo = %source.repo, "poll failed: {err:#}; trying again in {:?}", source.interval);
        }
    }
}

/// One poll: compares the remote heads with the ones seen last and records the moves.
pub async fn poll_once(
    control: &PollerHandle,
    source: &ChangeSourceConfig,
) -> anyhow::Result<usize> {
    let heads: Vec<(String, String)> = git_remote::heads(&source.repo)
        .await?
        .into_iter()
        .filter(|(branch, _)| source.branches.iter().any(|glob| glob.matches(branch)))
        .collect();
    let repo = source.repo.clone();
    let seen: BTreeMap<String, String> =
        control.store.poll_heads(&repo).await?.into_iter().collect();
    let first_poll = seen.is_empty();
    let moved: Vec<(String, String)> = heads
        .into_iter()
        .filter(|(branch, revision)| seen.get(branch) != Some(revision))
        .collect();
    let mirror = git_remote::Mirror::new(&control.master_dir().join(MIRRORS), &source.repo);
    let fetched = if first_poll {
        Ok(())
    } else {
        let branches: Vec<String> = moved.iter().map(|(branch, _)| branch.clone()).collect();
        mirror.fetch(&branches).await
    };
    if let Err(err) = &fetched {
        tracing::warn!(repo = %source.repo, "cannot fetch the moved branches: {err}; their changes list no files");
    }
    let mut recorded = 0;
    for (branch, revision) in moved {
        if !first_poll {
            let old = seen.get(&branch).map(String::as_str);
            let brought = match &fetched {
                Ok(()) => match mirror.brought(old, &revision).await {
                    Ok(brought) => Some(brought),
                    Err(err) => {
                        tracing::warn!(repo = %source.repo, %branch, "cannot list what {revision} brought: {err}");
                        None
                    }
                },
                Err(_) => None,
            };
            let fallback = match old {
                Some(old) => format!("{branch} moved from {old}"),
                None => format!("new branch {branch}"),
            };
            let change = ChangeSpec {
                repository: source.repo.clone(),
                branch: branch.clone(),
                revision: revision.clone(),
                who: brought.as_ref().and_then(git_remote::Brought::who),
                comments: Some(
                    brought
                        .as_ref()
                        .map(|brought| brought.message.clone())
                        .filter(|message| !message.is_empty())
                        .unwrap_or(fallback),
                ),
                files: brought.map(|brought| brought.files).unwrap_or_default(),
                properties: BTreeMap::new(),
            };
            control.polled_change(change).await?;
            recorded += 1;
        }
        // Remembered after the change is recorded: a crash in between polls it again.
        control
            .store
            .set_poll_head(&source.repo, &branch, &revision)
            .await?;
    }
    if first_poll {
        tracing::info!(repo = %source.repo, "first poll: the current heads are recorded, nothing is built");
    }
    Ok(recorded)
}
