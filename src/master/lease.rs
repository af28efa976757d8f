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
    pub metrics: Arc<crate::master::metrics::Metrics>,
    pub reach: Reach,
}

/// Where this master is, as it tells the others.
#[derive(Debug, Clone, Default)]
pub struct Reach {
    /// The listeners' addresses, as bound.
    pub ssh: String,
    pub http: String,
    /// Where users reach the SSH listener (a name when it listens on every address).
    pub ssh_host: String,
    pub ssh_port: u16,
    /// The host key's public line.
    pub host_key: String,
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
            ..starting_info(config, &self.reach)
        }
    }
}

/// What a master tells the others as it starts, before it has slaves or builds.
pub fn starting_info(config: &Config, reach: &Reach) -> MasterInfo {
    MasterInfo {
        config_digest: config_digest(config),
        ssh: reach.ssh.clone(),
        http: reach.http.clone(),
        ssh_host: reach.ssh_host.clone(),
        ssh_port: reach.ssh_port,
        host_key: reach.host_key.clone(),
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
    hex::encode(&sha2::Sha256::digest(shared.as_bytes())[..8])
}

/// How long a lease is registered and held for: `[database] lease` with a shared store; with
/// the embedded one (one master, no renewals) long enough never to run out.
pub fn held_for(store: &dyn Store, config: &Config) -> Duration {
    if store.is_shared() {
        config.database.lease
    } else {
        Duration::from_secs(100 * 365 * 24 * 3600)
    }
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
    let lease = held_for(store, config);
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
/// elsewhere and starting it again when it comes back; ends at `shutdown`, and when the lease
/// that tells who leads is gone (a master declared lost stops).
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
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let token = shutdown.child_token();
        let job = start(token.clone());
        tokio::pin!(job);
        loop {
            tokio::select! {
                ended = &mut job => return ended,
                changed = leading.changed() => {
                    // A closed channel stays "changed" forever, and its last value may still
                    // say "leading": starting the job again would spin. Nobody leads here now.
                    let lease_gone = changed.is_err();
                    if lease_gone || !*leading.borrow_and_update() {
                        tracing::info!("{what} stops here: another master leads the cluster's jobs now");
                        token.cancel();
                        let _ = (&mut job).await;
                        if lease_gone {
                            return Ok(());
                        }
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
    if !parts.store.is_shared() {
        // One master on its own file: nobody else could take over, so nothing is renewed and
        // an idle master stays idle; its lease is registered to last (`held_for`).
        parts.metrics.set_cluster(lease.epoch, true, 1);
        shutdown.cancelled().await;
        if let Err(err) = parts.store.retire_master(&lease).await {
            tracing::warn!("cannot end this master's lease: {err}");
        }
        return Ok(());
    }
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
                let alive = match parts.store.masters().await {
                    Ok(masters) => masters.iter().filter(|master| master.alive).count(),
                    Err(_) => 0,
                };
                parts.metrics.set_cluster(lease.epoch, leads, alive);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The lease task ends (its master was declared lost) while this master leads: the job is
    /// stopped once and not started again, and `while_leading` ends without a shutdown.
    #[tokio::test]
    async fn a_lease_that_ends_while_leading_stops_the_job_for_good() {
        let (tell, leading) = watch::channel(true);
        let starts = Arc::new(AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let counted = Arc::clone(&starts);
        let runner = tokio::spawn(while_leading(
            leading,
            "test job",
            shutdown.clone(),
            move |token| {
                counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    token.cancelled().await;
                    Ok(())
                }
            },
        ));
        tokio::task::yield_now().await;
        drop(tell);
        let ended = tokio::time::timeout(Duration::from_secs(10), runner).await;
        assert!(
            matches!(ended, Ok(Ok(Ok(())))),
            "while_leading did not end: {ended:?}"
        );
        assert_eq!(starts.load(Ordering::SeqCst), 1);
        assert!(!shutdown.is_cancelled());
    }
}
