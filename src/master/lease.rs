//! This master's lease in the cluster. At start the master registers a new run (a new epoch)
//! in the store; this task renews the lease three times per lease, each time telling the
//! others what it holds (slaves, builds, the digest of its config), and ends it at a clean
//! shutdown so nobody waits for it to run out. When the store refuses a renewal because the
//! cluster declared this run lost (it stalled past its lease and another master took its work
//! over), the task fails, which stops the master: a run the cluster gave up on must not act.
//! A store that cannot be reached is retried each period with a warning; the lease runs out
//! on its own if that lasts.
//!
//! The same task holds the cluster-wide jobs ([`CLUSTER_JOBS`]: the schedulers' firing, the
//! change pollers, the IRC bot) for this master while it can: one master of the cluster leads
//! them at a time, another takes over when the leader's hold runs out, at once when it shuts
//! down cleanly. [`while_leading`] runs such a job only while this master leads.

use std::sync::Arc;
use std::time::Duration;

use sha2::Digest;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::master::board::Board;
use crate::master::config::Config;
use crate::master::roster::Roster;
use crate::master::store::{MasterInfo, MasterLease, SharedStore, Store, StoreError};

/// What the lease task touches: the store and what the master tells the others.
pub struct LeaseParts {
    pub config: crate::master::reconfig::ConfigView,
    /// Whether this master leads the cluster-wide jobs now.
    pub leading: watch::Sender<bool>,
    pub store: SharedStore,
    pub roster: Arc<Roster>,
    pub board: Arc<Board>,
    /// The listeners' addresses, as bound.
    pub ssh: String,
    pub http: String,
}

impl LeaseParts {
    /// What this master tells the others now.
    pub fn info(&self, config: &Config) -> MasterInfo {
        MasterInfo {
            slaves: self.roster.snapshot().into_keys().collect(),
            builds: self
                .board
                .all_running()
                .into_iter()
                .map(|build| format!("{} #{}", build.builder, build.number))
                .collect(),
            leads: *self.leading.borrow(),
            ..starting_info(config, &self.ssh, &self.http)
        }
    }
}

/// What a master tells the others as it starts, before it has slaves or builds.
pub fn starting_info(config: &Config, ssh: &str, http: &str) -> MasterInfo {
    MasterInfo {
        config_digest: config_digest(config),
        ssh: ssh.to_string(),
        http: http.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        slaves: Vec::new(),
        builds: Vec::new(),
        leads: false,
    }
}

/// A digest of what masters of one cluster must agree on: builders, slaves, schedulers,
/// locks, change sources, access and the database. What differs per master by design (its
/// name, directory and listeners) is left out, so two masters with one config agree.
pub fn config_digest(config: &Config) -> String {
    let shared = format!(
        "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
        config.builders,
        config.slaves,
        config.schedulers,
        config.locks,
        config.change_sources,
        config.changes,
        config.operators,
        config.quotas,
        config.irc,
        config.database,
        config.http.public,
    );
    sha2::Sha256::digest(shared.as_bytes())
        .iter()
        .take(8)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Registers a new run of this master, waiting (at most one lease and a bit) for the lease of
/// a previous run of the same name to run out: a master killed and restarted at once finds
/// its old run still holding.
pub async fn register(
    store: &dyn Store,
    config: &Config,
    info: &MasterInfo,
    shutdown: &CancellationToken,
) -> Result<MasterLease, StoreError> {
    let lease = config.database.lease;
    let deadline = tokio::time::Instant::now() + lease + Duration::from_secs(2);
    let mut told = false;
    loop {
        match store.register_master(&config.name, info, lease).await {
            Err(StoreError::NameTaken { name, until })
                if tokio::time::Instant::now() < deadline && !shutdown.is_cancelled() =>
            {
                if !told {
                    tracing::warn!(master = %name, %until, "a run of this master still holds its lease; waiting for it to run out");
                    told = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => return other,
        }
    }
}

/// The one singleton the masters elect a holder for: everything that must run once per
/// cluster (the schedulers' firing, the change pollers, the IRC bot).
pub const CLUSTER_JOBS: &str = "cluster jobs";

/// Whether `owner` leads the cluster-wide jobs now (taking them if they are free).
pub async fn lead(store: &dyn Store, owner: &MasterLease, lease: Duration) -> bool {
    match store.hold_singleton(CLUSTER_JOBS, owner, lease).await {
        Ok(held) => held,
        Err(err) => {
            // Better nobody for a moment than two: the hold is retried at the next renewal.
            tracing::warn!("cannot hold the cluster's jobs: {err}");
            false
        }
    }
}

/// Runs `start`'s job while this master leads, stopping it (by its token) when the lead goes
/// elsewhere and starting it again when it comes back; ends at `shutdown`.
pub async fn while_leading<F, Fut>(
    mut leading: watch::Receiver<bool>,
    what: &'static str,
    shutdown: CancellationToken,
    mut start: F,
) -> anyhow::Result<()>
where
    F: FnMut(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    loop {
        while !*leading.borrow_and_update() {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                changed = leading.changed() => if changed.is_err() { return Ok(()) },
            }
        }
        let token = shutdown.child_token();
        let job = start(token.clone());
        tokio::pin!(job);
        loop {
            tokio::select! {
                ended = &mut job => return ended,
                changed = leading.changed() => {
                    if changed.is_err() || !*leading.borrow_and_update() {
                        tracing::info!("{what} stops here: another master leads the cluster's jobs now");
                        token.cancel();
                        let _ = (&mut job).await;
                        break;
                    }
                }
            }
        }
    }
}

/// Takes over the work of masters whose lease ran out: their builds end and their requests
/// wait again, for whichever live master has a free slave.
async fn reap(parts: &LeaseParts, lease: &MasterLease) {
    match parts.store.reap_lost_masters(lease).await {
        Ok(lost) => {
            for master in lost {
                tracing::warn!(
                    lost = %master.name,
                    epoch = master.epoch,
                    retried = ?master.retried,
                    "a master's lease ran out: its builds are retried"
                );
            }
        }
        Err(err) => tracing::warn!("cannot check the other masters' leases: {err}"),
    }
}

/// Renews `lease` until `shutdown`, then ends it; after each renewal, takes over the work of
/// masters whose lease ran out.
pub async fn run(
    parts: LeaseParts,
    lease: MasterLease,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let lasts = parts.config.current().database.lease;
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(lasts / 3) => {}
        }
        let info = parts.info(&parts.config.current());
        match parts.store.renew_lease(&lease, &info, lasts).await {
            Ok(()) => {
                reap(&parts, &lease).await;
                let leads = lead(parts.store.as_ref(), &lease, lasts).await;
                parts.leading.send_if_modified(|leading| {
                    if *leading != leads {
                        tracing::info!(leads, "this master's lead of the cluster's jobs changed");
                    }
                    std::mem::replace(leading, leads) != leads
                });
            }
            Err(fenced @ StoreError::Fenced { .. }) => {
                return Err(anyhow::anyhow!(
                    "{fenced}; stopping so that it does no harm"
                ));
            }
            Err(err) => tracing::warn!("cannot renew this master's lease: {err}"),
        }
    }
    if let Err(err) = parts.store.retire_master(&lease).await {
        tracing::warn!("cannot end this master's lease: {err}");
    }
    Ok(())
}
