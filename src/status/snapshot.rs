//! What each builder is doing now, as one typed snapshot: the answer to `status` in every front
//! end (SSH text, web pages, JSON API, `watch`, and later IRC).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::status::BuildResult;

/// The master and its builders at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusSnapshot {
    pub master: String,
    pub slaves_connected: usize,
    pub slaves_configured: usize,
    pub builders: Vec<BuilderStatus>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuilderActivity {
    Building,
    Idle,
    /// Nothing running, and the next request waits for a build-level lock
    /// ([`BuilderStatus::waiting_for_lock`]).
    WaitingForLock,
    /// No slave of its pool is connected.
    Offline,
}

impl BuilderActivity {
    pub fn as_str(self) -> &'static str {
        match self {
            BuilderActivity::Building => "building",
            BuilderActivity::Idle => "idle",
            BuilderActivity::WaitingForLock => "waiting for lock",
            BuilderActivity::Offline => "offline",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuilderStatus {
    pub name: String,
    pub activity: BuilderActivity,
    pub running: Vec<RunningBuild>,
    pub queued: usize,
    /// The lock that keeps the builder's next queued request from starting, if one does.
    /// Defaulted so a peer that predates it still decodes.
    #[serde(default)]
    pub waiting_for_lock: Option<String>,
    /// The last build that finished since the master started.
    pub last: Option<LastBuild>,
    pub slaves: Vec<PoolSlave>,
}

/// A build in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunningBuild {
    pub builder: String,
    pub number: i64,
    pub slave: String,
    /// The step running now (none between the start and the first step).
    pub step: Option<String>,
    /// The running step's number, counting the checkout as 1 (none before the first step).
    /// Defaulted so a peer that predates it still decodes.
    #[serde(default)]
    pub step_number: Option<i64>,
    /// Seconds since the unix epoch.
    pub started_at: f64,
    /// Expected duration in seconds, from recent successful builds.
    pub expected_secs: Option<f64>,
}

impl RunningBuild {
    /// How long is left by the estimate at `now` (zero when overdue); none without an estimate.
    pub fn eta_at(&self, now: f64) -> Option<Duration> {
        let expected = self.expected_secs?;
        let left = expected - (now - self.started_at).max(0.0);
        Some(Duration::from_secs_f64(left.max(0.0)))
    }

    pub fn elapsed_at(&self, now: f64) -> Duration {
        Duration::from_secs_f64((now - self.started_at).max(0.0))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastBuild {
    pub number: i64,
    pub result: BuildResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSlave {
    pub name: String,
    pub connected: bool,
}
