//! The slave daemon: dials a master over SSH (russh client, pinned host key, its own key),
//! opens the `slave` RPC channel, runs the checkouts and commands the master sends, streams
//! their output back, and when the connection drops dials the next of its masters (`master`
//! may list several of one cluster, which share one host key), with capped exponential
//! backoff between full rounds (`Dialer`).
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
mod fetch;
mod outgoing;
pub mod reports;
pub mod runner;
pub mod sender;
mod shell;
pub mod swarm;
mod work;
pub mod workfiles;

use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

pub use config::{SlaveConfig, create_slave};

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A connection that lasted this long resets the backoff.
const STABLE_CONNECTION: Duration = Duration::from_secs(60);
/// A connection that lasted this long was a real one: losing it starts a new round of dials.
const SERVED: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
const CONNECT_TIMEOUT_WITH_OTHERS: Duration = Duration::from_secs(5);

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
    let mut dialer = Dialer::new(config.masters.len());
    loop {
        let address = &config.masters[dialer.next_index()];
        tracing::info!(master = %address, "connecting to the master at {address}");
        let started = Instant::now();
        let served = match connection::serve(
            &config,
            address,
            dialer.connect_timeout(),
            &key,
            &containment,
            &shutdown,
        )
        .await
        {
            Ok(connection::Ended::Shutdown) => return Ok(()),
            Ok(connection::Ended::Lost(reason)) => {
                tracing::warn!(master = %address, "connection to the master lost ({address}): {reason}");
                Some(started.elapsed())
            }
            Err(err) => {
                tracing::error!(master = %address, "{err:#}");
                None
            }
        };
        if let Some(pause) = dialer.after_dial(served) {
            tracing::info!(
                "reconnecting in {pause:?} (every master tried once since the last that kept this slave: {})",
                config.masters.join(", ")
            );
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
}

/// Which master to dial next, and when: the masters in turn, with the backoff between full
/// rounds.
///
/// The backoff is there to spare the masters (and the logs) a slave that cannot get in
/// anywhere, which is only known once every master was tried; waiting between two addresses
/// would only keep a slave whose master died from the live ones. So a dial that fails, or a
/// connection that ends, is followed at once by a dial of the next master, until each was
/// tried once; then the slave waits `backoff` (doubling, up to a minute) and starts a round
/// again. A connection the master kept for `SERVED` starts a new round (the other masters are
/// dialed at once when it ends); a shorter one counts as a failed dial, so that masters that
/// welcome the slave and drop it at once cannot make it redial in a tight loop.
struct Dialer {
    count: usize,
    next: usize,
    /// Dials in this round so far.
    dialed: usize,
    backoff: Duration,
}

impl Dialer {
    fn new(count: usize) -> Dialer {
        Dialer {
            count: count.max(1),
            next: 0,
            dialed: 0,
            backoff: FIRST_BACKOFF,
        }
    }

    /// The index of the master to dial now.
    fn next_index(&mut self) -> usize {
        let index = self.next;
        self.next = (self.next + 1) % self.count;
        self.dialed += 1;
        index
    }

    /// A dead host answers a TCP connect with nothing at all; with other masters to try, the
    /// slave gives up on it sooner.
    fn connect_timeout(&self) -> Duration {
        if self.count > 1 {
            CONNECT_TIMEOUT_WITH_OTHERS
        } else {
            CONNECT_TIMEOUT
        }
    }

    /// After a dial: `served` is how long the master kept the slave (`None`: it never
    /// welcomed it). Returns how long to wait before the next dial, if at all.
    fn after_dial(&mut self, served: Option<Duration>) -> Option<Duration> {
        if let Some(served) = served {
            if served >= STABLE_CONNECTION {
                self.backoff = FIRST_BACKOFF;
            }
            if served >= SERVED {
                // That dial opens the round the next ones complete.
                self.dialed = 1;
            }
        }
        if self.dialed < self.count {
            return None;
        }
        self.dialed = 0;
        let pause = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        Some(pause)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Dials until the dialer asks for a pause; returns the indexes dialed and the pause.
    fn round(dialer: &mut Dialer, served: &[Option<Duration>]) -> (Vec<usize>, Option<Duration>) {
        let mut dialed = Vec::new();
        for served in served {
            dialed.push(dialer.next_index());
            if let Some(pause) = dialer.after_dial(*served) {
                return (dialed, Some(pause));
            }
        }
        (dialed, None)
    }

    #[test]
    fn one_master_waits_after_every_dial_with_a_growing_backoff() {
        let mut dialer = Dialer::new(1);
        assert_eq!(round(&mut dialer, &[None]), (vec![0], Some(FIRST_BACKOFF)));
        assert_eq!(
            round(&mut dialer, &[None]),
            (vec![0], Some(FIRST_BACKOFF * 2))
        );
        // A stable connection resets the backoff, and still waits before redialing.
        let stable = Some(STABLE_CONNECTION);
        assert_eq!(
            round(&mut dialer, &[stable]),
            (vec![0], Some(FIRST_BACKOFF))
        );
    }

    #[test]
    fn failed_dials_go_round_the_list_before_a_pause() {
        let mut dialer = Dialer::new(3);
        assert_eq!(
            round(&mut dialer, &[None, None, None]),
            (vec![0, 1, 2], Some(FIRST_BACKOFF))
        );
        assert_eq!(
            round(&mut dialer, &[None, None, None]),
            (vec![0, 1, 2], Some(FIRST_BACKOFF * 2))
        );
    }

    #[test]
    fn a_lost_master_is_followed_at_once_by_the_others() {
        let mut dialer = Dialer::new(3);
        // 0 and 1 fail, 2 takes the slave...
        assert_eq!(round(&mut dialer, &[None, None]), (vec![0, 1], None));
        assert_eq!(dialer.next_index(), 2);
        // ...which lasted a while and was lost: 0 and 1 are dialed without waiting.
        assert_eq!(dialer.after_dial(Some(SERVED)), None);
        assert_eq!(
            round(&mut dialer, &[None, None]),
            (vec![0, 1], Some(FIRST_BACKOFF))
        );
    }

    #[test]
    fn masters_that_drop_the_slave_at_once_do_not_make_a_tight_loop() {
        let mut dialer = Dialer::new(2);
        let brief = Some(Duration::from_millis(50));
        assert_eq!(
            round(&mut dialer, &[brief, brief]),
            (vec![0, 1], Some(FIRST_BACKOFF))
        );
        assert_eq!(
            round(&mut dialer, &[brief, brief]),
            (vec![0, 1], Some(FIRST_BACKOFF * 2))
        );
    }
}
