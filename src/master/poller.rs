//! `[[change_source]] kind = "git-poll"`: asks a repository the master cannot hook for its
//! branch heads every `interval` and records a change for each head that moved. The heads seen
//! are kept in the history, so a restarted master neither rebuilds old heads nor misses one
//! that moved while it was down. The first poll of a repository only records what is there.
//! An unreachable repository is logged and asked again next time; it never stops the master.

use std::collections::BTreeMap;

use tokio_util::sync::CancellationToken;

use crate::change::ChangeSpec;
use crate::master::config::ChangeSourceConfig;
use crate::master::control::PollerHandle;
use crate::master::git_remote;
use crate::master::history::changes;

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
    let seen: BTreeMap<String, String> = control
        .history
        .run(move |connection| {
            Ok(changes::poll_heads(connection, &repo)?
                .into_iter()
                .collect())
        })
        .await?;
    let first_poll = seen.is_empty();
    let mut recorded = 0;
    for (branch, revision) in heads {
        if seen.get(&branch) == Some(&revision) {
            continue;
        }
        if !first_poll {
            let change = ChangeSpec {
                repository: source.repo.clone(),
                branch: branch.clone(),
                revision: revision.clone(),
                who: None,
                comments: Some(match seen.get(&branch) {
                    Some(old) => format!("{branch} moved from {old}"),
                    None => format!("new branch {branch}"),
                }),
                files: Vec::new(),
                properties: BTreeMap::new(),
            };
            control.polled_change(change).await?;
            recorded += 1;
        }
        // Remembered after the change is recorded: a crash in between polls it again.
        let (repo, branch, revision) = (source.repo.clone(), branch.clone(), revision.clone());
        control
            .history
            .run(move |connection| changes::set_poll_head(connection, &repo, &branch, &revision))
            .await?;
    }
    if first_poll {
        tracing::info!(repo = %source.repo, "first poll: the current heads are recorded, nothing is built");
    }
    Ok(recorded)
}
