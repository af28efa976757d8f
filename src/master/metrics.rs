//! The master's Prometheus metrics: one registry, owned by the control layer, that the build
//! runner, the scheduler executor and sshd update and the web front end encodes at `/metrics`.
//! Front ends never import each other for it; they all reach it through `Control`.
//!
//! Labels are bounded: builder and lock names come from the config, results and auth-failure
//! reasons are closed enums; nothing is labelled per build, per user or per address. The text
//! format is `prometheus-client`'s (the maintained official crate), not hand-written.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::master::lock;
use crate::status::BuildResult;

/// Why a key was refused at login: a closed set, so the label stays bounded.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum AuthFailure {
    /// No unix account of that name.
    UnknownUser,
    /// The key is in no authorized_keys file for the login.
    KeyNotListed,
    /// A slave's key used for another login.
    SlaveKey,
    /// root without `allow_root`.
    Root,
    /// `from=` does not allow the client's address.
    FromMismatch,
    /// `expiry-time` has passed.
    Expired,
    /// A key file failed the StrictModes checks.
    UnsafeKeyFile,
    /// The account or key files could not be read (in time).
    LookupFailed,
    /// More keys offered than `max_auth_tries`.
    TooManyTries,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    builder: String,
    result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuilderLabels {
    builder: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: AuthFailure,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LockLabels {
    lock: String,
}

/// Build durations from 1 s to about 4.5 h, doubling.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 15))
}

/// The queue of one builder as the executor last published it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueGauge {
    pub length: usize,
    /// When the oldest waiting request was submitted (seconds since the unix epoch).
    pub oldest_submitted_at: f64,
}

pub struct Metrics {
    registry: Registry,
    builds: Family<BuildLabels, Counter>,
    build_duration: Family<BuilderLabels, Histogram, fn() -> Histogram>,
    queue_length: Family<BuilderLabels, Gauge>,
    queue_oldest_age: Family<BuilderLabels, Gauge<f64, AtomicU64>>,
    slaves_connected: Gauge,
    ssh_connections: Counter,
    ssh_auth_failures: Family<ReasonLabels, Counter>,
    log_bytes: Counter,
    lock_waits: Family<LockLabels, Counter>,
    /// This master in its cluster: its run's epoch, whether it leads the cluster's jobs, how
    /// many masters' leases hold (set by the lease task).
    master_epoch: Gauge,
    master_leads: Gauge,
    masters_alive: Gauge,
    /// Published by the executor; turned into the queue gauges at each scrape.
    queues: Mutex<BTreeMap<String, QueueGauge>>,
    /// Test cases stored from builds' reports, by result (issue 26).
    test_cases: Family<TestResultLabels, Counter>,
    /// Bytes kept, by kind (artifacts, logs, database), measured by the retention task.
    storage: Family<StorageLabels, Gauge>,
    /// The same figures for the admin page (`/masters`): a gauge family cannot be listed.
    storage_measured: Mutex<BTreeMap<String, u64>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StorageLabels {
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TestResultLabels {
    result: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let builds = Family::<BuildLabels, Counter>::default();
        registry.register(
            "buildbot_builds",
            "Builds finished, by builder and result",
            builds.clone(),
        );
        let build_duration =
            Family::<BuilderLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                duration_histogram,
            );
        registry.register(
            "buildbot_build_duration_seconds",
            "How long finished builds took, by builder",
            build_duration.clone(),
        );
        let queue_length = Family::<BuilderLabels, Gauge>::default();
        registry.register(
            "buildbot_queue_length",
            "Build requests waiting, by builder",
            queue_length.clone(),
        );
        let queue_oldest_age = Family::<BuilderLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "buildbot_queue_oldest_age_seconds",
            "Age of the oldest waiting request, by builder",
            queue_oldest_age.clone(),
        );
        let slaves_connected = Gauge::default();
        registry.register(
            "buildbot_slaves_connected",
            "Slaves connected now",
            slaves_connected.clone(),
        );
        let ssh_connections = Counter::default();
        registry.register(
            "buildbot_ssh_connections",
            "SSH connections accepted",
            ssh_connections.clone(),
        );
        let ssh_auth_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "buildbot_ssh_auth_failures",
            "Keys refused at SSH login, by reason",
            ssh_auth_failures.clone(),
        );
        let log_bytes = Counter::default();
        registry.register(
            "buildbot_log_bytes_received",
            "Bytes of step output received from slaves",
            log_bytes.clone(),
        );
        let lock_waits = Family::<LockLabels, Counter>::default();
        registry.register(
            "buildbot_lock_waits",
            "Times a build or step had to wait for a lock, by lock",
            lock_waits.clone(),
        );
        let master_epoch = Gauge::default();
        registry.register(
            "buildbot_master_epoch",
            "The run of this master (each start takes the next)",
            master_epoch.clone(),
        );
        let master_leads = Gauge::default();
        registry.register(
            "buildbot_master_leads",
            "1 while this master leads the cluster's jobs (schedulers, pollers, the IRC bot)",
            master_leads.clone(),
        );
        let masters_alive = Gauge::default();
        registry.register(
            "buildbot_masters_alive",
            "Masters of the cluster whose lease holds, this one included",
            masters_alive.clone(),
        );
        let test_cases = Family::<TestResultLabels, Counter>::default();
        registry.register(
            "buildbot_test_cases",
            "Test cases stored from builds' test reports, by result",
            test_cases.clone(),
        );
        let storage = Family::<StorageLabels, Gauge>::default();
        registry.register(
            "buildbot_storage_bytes",
            "Bytes kept on this master, by kind: artifacts, logs, database (SQLite only)",
            storage.clone(),
        );
        Metrics {
            test_cases,
            registry,
            storage,
            storage_measured: Mutex::default(),
            master_epoch,
            master_leads,
            masters_alive,
            builds,
            build_duration,
            queue_length,
            queue_oldest_age,
            slaves_connected,
            ssh_connections,
            ssh_auth_failures,
            log_bytes,
            lock_waits,
            queues: Mutex::new(BTreeMap::new()),
        }
    }

    /// What the artifacts, logs or database take now (set by `master::retention`).
    pub fn storage_bytes(&self, kind: &str, bytes: u64) {
        self.storage
            .get_or_create(&StorageLabels {
                kind: kind.to_string(),
            })
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        if let Ok(mut measured) = self.storage_measured.lock() {
            measured.insert(kind.to_string(), bytes);
        }
    }

    /// The last `storage_bytes` of each kind; empty before the first measurement.
    pub fn storage(&self) -> BTreeMap<String, u64> {
        self.storage_measured
            .lock()
            .map(|measured| measured.clone())
            .unwrap_or_default()
    }

    pub fn build_finished(&self, builder: &str, result: BuildResult, seconds: f64) {
        self.builds
            .get_or_create(&BuildLabels {
                builder: builder.to_string(),
                result: result.to_string(),
            })
            .inc();
        self.build_duration
            .get_or_create(&BuilderLabels {
                builder: builder.to_string(),
            })
            .observe(seconds);
    }

    pub fn ssh_connection(&self) {
        self.ssh_connections.inc();
    }

    pub fn auth_failure(&self, reason: AuthFailure) {
        self.ssh_auth_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts the test cases of reports just stored.
    pub fn test_cases(&self, counts: &crate::master::store::TestCounts) {
        for (result, count) in [
            ("passed", counts.passed),
            ("failed", counts.failed),
            ("error", counts.error),
            ("skipped", counts.skipped),
        ] {
            self.test_cases
                .get_or_create(&TestResultLabels {
                    result: result.to_string(),
                })
                .inc_by(u64::try_from(count).unwrap_or(0));
        }
    }

    pub fn log_bytes(&self, count: usize) {
        self.log_bytes.inc_by(count as u64);
    }

    /// This master's place in its cluster, as the lease task last saw it.
    pub fn set_cluster(&self, epoch: i64, leads: bool, masters_alive: usize) {
        self.master_epoch.set(epoch);
        self.master_leads.set(i64::from(leads));
        self.masters_alive
            .set(i64::try_from(masters_alive).unwrap_or(i64::MAX));
    }

    pub fn lock_wait(&self, lock: &str) {
        self.lock_waits
            .get_or_create(&LockLabels {
                lock: lock.to_string(),
            })
            .inc();
    }

    /// The queues as the executor sees them now (builders with nothing waiting left out).
    pub fn set_queues(&self, queues: BTreeMap<String, QueueGauge>) {
        *lock(&self.queues) = queues;
    }

    /// The registry in Prometheus text format, with the gauges read now: `builders` (the
    /// configured ones, each with a queue series even when empty), the slaves connected, and
    /// `now` for ages.
    pub fn encode(&self, builders: &[String], slaves_connected: usize, now: f64) -> String {
        let queues = lock(&self.queues).clone();
        // Removed builders' series go with them.
        self.queue_length.clear();
        self.queue_oldest_age.clear();
        for builder in builders {
            let labels = BuilderLabels {
                builder: builder.clone(),
            };
            let queue = queues.get(builder);
            self.queue_length
                .get_or_create(&labels)
                .set(queue.map_or(0, |queue| queue.length) as i64);
            self.queue_oldest_age
                .get_or_create(&labels)
                .set(queue.map_or(0.0, |queue| (now - queue.oldest_submitted_at).max(0.0)));
        }
        self.slaves_connected.set(slaves_connected as i64);
        let mut text = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!("cannot encode the metrics: {err}");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_has_every_family_with_bounded_labels() {
        let metrics = Metrics::new();
        metrics.build_finished("linux", BuildResult::Success, 12.0);
        metrics.auth_failure(AuthFailure::KeyNotListed);
        metrics.lock_wait("db");
        metrics.log_bytes(10);
        metrics.set_queues(BTreeMap::from([(
            "linux".to_string(),
            QueueGauge {
                length: 2,
                oldest_submitted_at: 100.0,
            },
        )]));
        let text = metrics.encode(&["linux".to_string(), "mac".to_string()], 3, 130.0);
        for line in [
            "buildbot_builds_total{builder=\"linux\",result=\"success\"} 1",
            "buildbot_build_duration_seconds_count{builder=\"linux\"} 1",
            "buildbot_queue_length{builder=\"linux\"} 2",
            "buildbot_queue_length{builder=\"mac\"} 0",
            "buildbot_queue_oldest_age_seconds{builder=\"linux\"} 30.0",
            "buildbot_slaves_connected 3",
            "buildbot_ssh_auth_failures_total{reason=\"KeyNotListed\"} 1",
            "buildbot_log_bytes_received_total 10",
            "buildbot_lock_waits_total{lock=\"db\"} 1",
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
    }
}
