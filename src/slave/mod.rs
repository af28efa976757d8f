//! The slave daemon: dials the master over SSH (russh client, pinned host key, its own key),
//! opens the `slave` RPC channel, runs the checkouts and commands the master sends, streams
//! their output back, and reconnects with capped exponential backoff when the connection drops.
//!
//! A slave never runs a command for a master it is no longer connected to: when the connection
//! ends, every running command's process group is terminated (then killed) before reconnecting.
//! Nothing a step started outlives the step (`containment`: a cgroup per step, or an
//! environment tag with the slave as subreaper), and a restarted slave kills what its previous
//! run left. One slave per directory (`dirlock`).

pub mod checkout;
mod coalesce;
pub mod config;
mod connection;
pub mod containment;
pub mod dirlock;
pub mod runner;
pub mod swarm;
mod work;

use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

pub use config::{SlaveConfig, create_slave};

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A connection that lasted this long resets the backoff.
const STABLE_CONNECTION: Duration = Duration::from_secs(60);

/// Runs the slave until `shutdown` is cancelled.
pub async fn run(config: SlaveConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    // Before anything else: a second slave on this directory must not touch its work.
    let _dir_lock = dirlock::DirLock::acquire(&config.dir)?;
    let key = load_key(&config.key)?;
    // Also kills what a previous run of this slave left running (it may have been SIGKILLed).
    let containment = std::sync::Arc::new(containment::Containment::start(
        &config.dir,
        config.step_cgroups,
    ));
    tracing::info!(slave = %config.name, "{}", containment.describe());
    std::fs::create_dir_all(&config.workdir).with_context(|| {
        format!(
            "cannot create the work directory {}",
            config.workdir.display()
        )
    })?;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = Instant::now();
        match connection::serve(&config, &key, &containment, &shutdown).await {
            Ok(connection::Ended::Shutdown) => return Ok(()),
            Ok(connection::Ended::Lost(reason)) => {
                tracing::warn!(master = %config.master, "connection to the master lost: {reason}")
            }
            Err(err) => tracing::error!(master = %config.master, "{err:#}"),
        }
        if started.elapsed() >= STABLE_CONNECTION {
            backoff = FIRST_BACKOFF;
        }
        tracing::info!("reconnecting in {backoff:?}");
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn load_key(path: &std::path::Path) -> anyhow::Result<russh::keys::PrivateKey> {
    use std::os::unix::fs::PermissionsExt;
    let metadata = std::fs::metadata(path)
        .with_context(|| format!("cannot read the slave key {}", path.display()))?;
    if metadata.permissions().mode() & 0o077 != 0 {
        anyhow::bail!(
            "slave key {} is readable by others; run chmod 600 on it",
            path.display()
        );
    }
    russh::keys::PrivateKey::read_openssh_file(path)
        .with_context(|| format!("cannot load the slave key {}", path.display()))
}
