//! The retention task (`[retention]`): removes the logs and artifacts of old builds, and older
//! builds whole, on this master's disk and in the store, in small batches so builds never wait
//! on it; gives SQLite's freed pages back; and measures what the artifacts, logs and database
//! take (`/metrics`, `buildbot_storage_bytes`, the admin page `/masters`).
//!
//! In a cluster it runs only on the master that leads the cluster's jobs (`lease::while_leading`
//! in `daemon`): the store's part is pruned once. Files another master of the cluster keeps on
//! its own disk are its copies of what the store holds; they go when that master leads, or
//! with its directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::master::control::Control;
use crate::master::store::PrunePart;

/// How often the task looks for something to prune.
const ROUND: Duration = Duration::from_secs(10 * 60);
/// Builds handled per store question: small, so a round never holds the database long.
const BATCH: i64 = 20;
/// A pause between batches, so a first round over a big history does not compete with builds.
const BATCH_PAUSE: Duration = Duration::from_millis(50);

/// Runs until `token` is cancelled: a round at start, then one every [`ROUND`].
pub async fn run(control: Arc<Control>, token: CancellationToken) -> anyhow::Result<()> {
    loop {
        let pruned = prune_round(&control, &token).await;
        if pruned > 0 {
            tracing::info!("retention removed {pruned} old build parts");
            match control.store().reclaim_space().await {
                Ok(0) => {}
                Ok(pages) => tracing::info!("retention gave {pages} database pages back"),
                Err(err) => tracing::warn!("retention: cannot give database space back: {err}"),
            }
            // The admin page and /metrics show what the round gave back without waiting for
            // the next measurement.
            measure(&control).await;
        }
        tokio::select! {
            () = token.cancelled() => return Ok(()),
            () = tokio::time::sleep(ROUND) => {}
        }
    }
}

/// Measures this master's storage at start and every [`ROUND`] until `token` is cancelled.
/// Every master of a cluster runs it: each has its own disk, whichever one prunes.
pub async fn measure_every(control: Arc<Control>, token: CancellationToken) -> anyhow::Result<()> {
    loop {
        measure(&control).await;
        tokio::select! {
            () = token.cancelled() => return Ok(()),
            () = tokio::time::sleep(ROUND) => {}
        }
    }
}

/// One pass over every builder; returns how many build parts were removed.
pub async fn prune_round(control: &Control, token: &CancellationToken) -> u64 {
    let config = control.config();
    let Some(retention) = config.retention.clone() else {
        return 0;
    };
    let keep_last = i64::try_from(retention.keep_last).unwrap_or(i64::MAX);
    let now = crate::status::unix_now();
    let mut pruned = 0;
    for builder in &config.builders {
        if let Some(age) = retention.builds {
            let before = now - age.as_secs_f64();
            pruned += prune_builds(control, token, &builder.name, before, keep_last).await;
        }
        for (part, age) in [
            (PrunePart::Artifacts, retention.artifacts),
            (PrunePart::Logs, retention.logs),
        ] {
            let Some(age) = age else { continue };
            let before = now - age.as_secs_f64();
            loop {
                if token.is_cancelled() {
                    return pruned;
                }
                let candidates = match control
                    .store()
                    .prune_candidates(&builder.name, part, before, keep_last, BATCH)
                    .await
                {
                    Ok(candidates) => candidates,
                    Err(err) => {
                        tracing::warn!("retention: cannot list old builds: {err}");
                        return pruned;
                    }
                };
                let full = candidates.len() as i64 == BATCH;
                for (build_id, number) in candidates {
                    // This master's copy first: a build whose record says pruned never
                    // leaves files nobody would remove.
                    let dir = part_dir(&config.master_dir, control.logs_dir(), part)
                        .join(&builder.name)
                        .join(number.to_string());
                    if let Err(err) = remove_dir(dir.clone()).await {
                        tracing::warn!("retention: cannot remove {}: {err}", dir.display());
                        continue;
                    }
                    if let Err(err) = control.store().prune_build_part(build_id, part).await {
                        tracing::warn!("retention: cannot prune build {build_id}: {err}");
                        return pruned;
                    }
                    pruned += 1;
                }
                if !full {
                    break;
                }
                tokio::time::sleep(BATCH_PAUSE).await;
            }
        }
    }
    if let Some(age) = retention.builds {
        prune_cancelled_requests(control, token, now - age.as_secs_f64()).await;
    }
    pruned
}

/// Removes requests cancelled before they were built and submitted before `before` (with
/// their patches): nothing else would, as they have no build to go with.
async fn prune_cancelled_requests(control: &Control, token: &CancellationToken, before: f64) {
    loop {
        if token.is_cancelled() {
            return;
        }
        match control
            .store()
            .delete_cancelled_requests(before, BATCH)
            .await
        {
            Ok(deleted) if deleted == BATCH.unsigned_abs() => {
                tokio::time::sleep(BATCH_PAUSE).await;
            }
            Ok(_) => return,
            Err(err) => {
                tracing::warn!("retention: cannot remove cancelled requests: {err}");
                return;
            }
        }
    }
}

/// Removes the builds of `builder` that finished before `before` (beyond `keep_last`), whole:
/// this master's files first, then the store's rows, one build per transaction. Returns how
/// many went.
async fn prune_builds(
    control: &Control,
    token: &CancellationToken,
    builder: &str,
    before: f64,
    keep_last: i64,
) -> u64 {
    let config = control.config();
    let mut pruned = 0;
    loop {
        if token.is_cancelled() {
            return pruned;
        }
        let now = crate::status::unix_now();
        let candidates = match control
            .store()
            .old_builds(builder, before, keep_last, now, BATCH)
            .await
        {
            Ok(candidates) => candidates,
            Err(err) => {
                tracing::warn!("retention: cannot list old builds: {err}");
                return pruned;
            }
        };
        let full = candidates.len() as i64 == BATCH;
        for (build_id, number) in candidates {
            let mut removed = true;
            for part in [PrunePart::Artifacts, PrunePart::Logs] {
                let dir = part_dir(&config.master_dir, control.logs_dir(), part)
                    .join(builder)
                    .join(number.to_string());
                if let Err(err) = remove_dir(dir.clone()).await {
                    tracing::warn!("retention: cannot remove {}: {err}", dir.display());
                    removed = false;
                }
            }
            // A record kept while its files could not go: the next round tries again.
            if !removed {
                continue;
            }
            if let Err(err) = control.store().delete_build(build_id).await {
                tracing::warn!("retention: cannot remove build {builder} #{number}: {err}");
                return pruned;
            }
            pruned += 1;
        }
        if !full {
            return pruned;
        }
        tokio::time::sleep(BATCH_PAUSE).await;
    }
}

fn part_dir(master_dir: &Path, logs_dir: &Path, part: PrunePart) -> PathBuf {
    match part {
        PrunePart::Artifacts => master_dir.join("artifacts"),
        PrunePart::Logs => logs_dir.to_path_buf(),
    }
}

async fn remove_dir(dir: PathBuf) -> std::io::Result<()> {
    match tokio::fs::remove_dir_all(&dir).await {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

/// Sets the storage gauges: bytes under `artifacts/` and `logs/`, and the SQLite file (with its
/// WAL) when the store is the embedded one.
async fn measure(control: &Control) {
    let config = control.config();
    let dirs = [
        ("artifacts", config.master_dir.join("artifacts")),
        ("logs", control.logs_dir().to_path_buf()),
    ];
    let database = (!control.store().is_shared()).then(|| config.master_dir.clone());
    let sizes = tokio::task::spawn_blocking(move || {
        let mut sizes: Vec<(&'static str, u64)> = dirs
            .iter()
            .map(|(kind, dir)| (*kind, tree_size(dir)))
            .collect();
        if let Some(dir) = database {
            let bytes = ["state.sqlite", "state.sqlite-wal"]
                .iter()
                .filter_map(|name| std::fs::symlink_metadata(dir.join(name)).ok())
                .map(|metadata| metadata.len())
                .sum();
            sizes.push(("database", bytes));
        }
        sizes
    })
    .await
    .unwrap_or_default();
    for (kind, bytes) in sizes {
        control.metrics().storage_bytes(kind, bytes);
    }
}

/// Bytes of the regular files below `dir` (symlinks not followed).
fn tree_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => tree_size(&entry.path()),
            Ok(kind) if kind.is_file() => entry.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}
