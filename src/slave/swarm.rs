//! `buildbot bench-swarm` (hidden; used by `bench/run.sh`): many slaves in one process, so the
//! master's memory with a thousand connected slaves can be measured without a thousand slave
//! processes. Each one is the real slave ([`crate::slave::run`]: its own key, the pinned host
//! key, the RPC handshake, keepalives, reconnects), only sharing a process and a runtime.
//!
//! It owns nothing else: the slave directories are made with [`create_slave`], one per slave,
//! under one parent directory.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::slave::{SlaveConfig, create_slave};

/// Pause between two connections, so the master's `max_startups` sees a trickle.
const CONNECT_SPACING: Duration = Duration::from_millis(3);

fn slave_name(index: usize) -> String {
    format!("swarm-{index}")
}

/// Creates `count` slave directories `DIR/swarm-N`; returns their `[[slave]]` blocks.
pub fn create(dir: &Path, count: usize, master: &str, host_key: &str) -> anyhow::Result<String> {
    let mut blocks = String::new();
    for index in 0..count {
        let name = slave_name(index);
        blocks.push_str(&create_slave(
            &dir.join(&name),
            &[master.to_string()],
            &name,
            Some(host_key),
            true,
        )?);
    }
    Ok(blocks)
}

/// Runs the `count` slaves of `DIR` until `shutdown` is cancelled.
pub async fn run(dir: &Path, count: usize, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..count {
        let config = SlaveConfig::load(&dir.join(slave_name(index)))
            .with_context(|| format!("slave {index} of the swarm"))?;
        let token = shutdown.clone();
        tasks.spawn(async move {
            if let Err(err) = crate::slave::run(config, token).await {
                tracing::error!("a swarm slave ended: {err:#}");
            }
        });
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(CONNECT_SPACING) => {}
        }
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}
