//! What the store keeps, as the rest of the master sees it: requests, builds, steps, changes and
//! web sessions as plain values, the same whichever backend answers.

use crate::status::{BuildResult, RequestKind};

/// Seconds since the unix epoch, as stored.
pub fn now() -> f64 {
    crate::status::unix_now()
}

/// A request before the store has recorded it (and so before it has an id): what try jobs,
/// forced builds, rebuilds and the schedulers hand to the queue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRequest {
    pub job_name: String,
    pub jobid: String,
    pub builder: String,
    pub who: Option<String>,
    pub comment: Option<String>,
    pub repository: String,
    pub branch: Option<String>,
    pub baserev: Option<String>,
    pub patch: Option<Vec<u8>>,
    pub patch_level: u32,
    pub submitted_at: f64,
    /// The job's build properties (stored as a JSON object).
    pub properties: std::collections::BTreeMap<String, String>,
    pub kind: RequestKind,
    /// Why the request exists, for people ("try by alice", "changes 3, 4 on main").
    pub reason: Option<String>,
    /// The changes it builds (none for try jobs and forced builds).
    pub change_ids: Vec<i64>,
}

impl NewRequest {
    /// The request as recorded under `id`.
    pub fn stored(self, id: i64) -> StoredRequest {
        StoredRequest { id, request: self }
    }
}

impl StoredRequest {
    /// The same request, to be recorded again (a rebuild).
    pub fn renew(self) -> NewRequest {
        self.request
    }
}

/// A request as stored: everything needed to run its build after a restart. It reads as the
/// [`NewRequest`] it was recorded from, plus its id.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRequest {
    pub id: i64,
    pub request: NewRequest,
}

impl std::ops::Deref for StoredRequest {
    type Target = NewRequest;

    fn deref(&self) -> &NewRequest {
        &self.request
    }
}

impl std::ops::DerefMut for StoredRequest {
    fn deref_mut(&mut self) -> &mut NewRequest {
        &mut self.request
    }
}

/// A finished or running build, for status output.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildRow {
    pub id: i64,
    pub builder: String,
    pub number: i64,
    pub slave: String,
    pub started_at: f64,
    pub finished_at: Option<f64>,
    pub result: Option<BuildResult>,
    pub reason: Option<String>,
}

/// A step of a build, for status output.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRow {
    pub number: i64,
    pub name: String,
    pub started_at: f64,
    pub finished_at: Option<f64>,
    pub result: Option<BuildResult>,
    pub summary: Option<String>,
}

/// A build with what it was asked to build, for the build page.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildDetail {
    pub build: BuildRow,
    pub request_id: i64,
    pub job_name: String,
    pub jobid: String,
    pub who: Option<String>,
    pub comment: Option<String>,
    pub repository: String,
    /// The request's branch, else the branch the build checked out.
    pub branch: Option<String>,
    /// The request's base revision, else the commit the build checked out.
    pub baserev: Option<String>,
    /// The commit the build checked out, as its slave reported it (before any patch); none
    /// until the checkout step has succeeded.
    pub revision: Option<String>,
    pub has_patch: bool,
    pub properties: std::collections::BTreeMap<String, String>,
    /// Why the request exists.
    pub why: Option<String>,
    /// The changes it built.
    pub changes: Vec<StoredChange>,
    pub steps: Vec<StepRow>,
}

/// A change as stored, with its id.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StoredChange {
    pub id: i64,
    pub repository: String,
    pub branch: String,
    pub revision: String,
    pub who: Option<String>,
    pub comments: Option<String>,
    pub files: Vec<String>,
    pub properties: std::collections::BTreeMap<String, String>,
    /// Seconds since the unix epoch.
    pub received_at: f64,
    /// The unix user (or poller) it came from.
    pub sent_by: String,
}

/// A change as [`record_change`] found it: new, or already recorded.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    /// Recorded now.
    New(StoredChange),
    /// The same revision on the same repository and branch was recorded before (the hook and
    /// a poller on one repository both saw it): that change, unchanged.
    Known(StoredChange),
}

impl Recorded {
    pub fn change(&self) -> &StoredChange {
        match self {
            Recorded::New(change) | Recorded::Known(change) => change,
        }
    }
}

/// A build with its steps.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildWithSteps {
    pub build: BuildRow,
    pub steps: Vec<StepRow>,
}

/// One builder's recent history: its newest builds, the first of them with their steps.
#[derive(Debug, Clone, PartialEq)]
pub struct RecentBuilds {
    /// Newest first.
    pub rows: Vec<BuildRow>,
    /// The steps of the first `with_steps` rows, in the same order.
    pub steps: Vec<Vec<StepRow>>,
}

/// One builder's builds in a time window, and its last result whatever the window.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowBuilds {
    pub builds: Vec<BuildWithSteps>,
    pub last_result: Option<BuildResult>,
}

/// A build named the way a front end names it.
#[derive(Debug, Clone, PartialEq)]
pub enum BuildRef {
    Number { builder: String, number: i64 },
    Id(i64),
}

/// A web session as a store keeps it: the id only as its hash, the user by name and uid (the
/// account is looked up again when loaded), the expiry as unix time.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSession {
    pub token_hash: String,
    pub user: String,
    pub uid: u32,
    pub csrf: String,
    pub expires_at: f64,
}

/// One run of one master in the cluster: its name and the epoch of this run. Every start
/// takes a new epoch, so what a previous run (or a stalled one declared dead) still tries to
/// write is told apart and refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterLease {
    pub name: String,
    pub epoch: i64,
}

/// What a master tells the others about itself when it renews its lease.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MasterInfo {
    /// SHA-256 of its master.toml, so masters whose configs differ are shown as such.
    pub config_digest: String,
    pub ssh: String,
    pub http: String,
    pub version: String,
    /// The slaves connected to it.
    pub slaves: Vec<String>,
    /// Its running builds, as "builder #number".
    pub builds: Vec<String>,
    /// Whether it leads the cluster's jobs (schedulers, pollers, the IRC bot).
    #[serde(default)]
    pub leads: bool,
    /// The host and port users reach its SSH listener at (`ssh` is the address it bound),
    /// to send them there for a shell into a build whose slave it holds.
    #[serde(default)]
    pub ssh_host: String,
    #[serde(default)]
    pub ssh_port: u16,
    /// Its host key's public line, which the client pins when sent there.
    #[serde(default)]
    pub host_key: String,
}

/// A master as the store knows it, for `/masters`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MasterRow {
    pub name: String,
    pub epoch: i64,
    pub started_at: f64,
    pub renewed_at: f64,
    pub expires_at: f64,
    /// "up", "stopped" (shut down cleanly) or "lost" (its lease ran out).
    pub state: String,
    /// Whether its lease holds now, by the database's clock.
    pub alive: bool,
    pub info: MasterInfo,
}

/// A master lock a build or step takes in a cluster's store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterLockUse {
    pub lock: String,
    /// Exclusive, or counting.
    pub exclusive: bool,
    /// How many may hold it at once counting.
    pub max_count: i64,
}

/// A master whose lease ran out, as another master took its work over.
#[derive(Debug, Clone, PartialEq)]
pub struct LostMaster {
    pub name: String,
    pub epoch: i64,
    /// Its builds that were running, now ended and their requests waiting again:
    /// (builder, number, request id).
    pub retried: Vec<(String, i64, i64)>,
}
