//! What happens to builds, as typed events with their place in the master's sequence, and the
//! items of the JSON-lines stream that `try --wait --json` and `watch --json` carry.

use serde::{Deserialize, Serialize};

use crate::status::{BuildResult, JobRecord, StatusSnapshot};

/// Something that happened to a build, for everyone following along.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BuildEvent {
    RequestsQueued {
        job_name: String,
        builders: Vec<String>,
    },
    /// A change was recorded (sent or polled); schedulers may build it.
    ChangeAdded {
        change_id: i64,
        repository: String,
        branch: String,
        revision: String,
        who: Option<String>,
    },
    /// A queued request (number none) or a running build's step waits for a lock.
    WaitingForLock {
        job_name: String,
        builder: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        number: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<String>,
        lock: String,
    },
    /// A queued request was dropped before it was built.
    RequestCancelled {
        job_name: String,
        builder: String,
        request_id: i64,
        by: String,
    },
    BuildStarted {
        job_name: String,
        builder: String,
        number: i64,
        slave: String,
        /// How long the build should take, in seconds, from recent successful builds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expected_secs: Option<f64>,
    },
    StepStarted {
        job_name: String,
        builder: String,
        number: i64,
        step: i64,
        name: String,
    },
    StepFinished {
        job_name: String,
        builder: String,
        number: i64,
        step: i64,
        name: String,
        result: BuildResult,
        summary: String,
    },
    BuildFinished {
        job_name: String,
        builder: String,
        number: i64,
        result: BuildResult,
        reason: Option<String>,
        /// The request is queued again (its slave was lost): another build will follow.
        will_retry: bool,
    },
    /// Someone asked to stop a build running on another master of the cluster: the master
    /// running it stops it (the asker's right was checked where they asked).
    StopRequested {
        builder: String,
        number: i64,
        by: String,
        reason: String,
    },
    /// A slave connected to a master of the cluster: a connection of the same slave to
    /// another master, older than this one, is closed (the newest connection wins, as on one
    /// master).
    SlaveConnected { slave: String, master: String },
    /// A series entered the merge queue of `branch` (`buildbot land`); `position` 1 is the
    /// queue's head.
    LandQueued {
        id: i64,
        branch: String,
        who: String,
        commits: i64,
        position: usize,
    },
    /// A series was tested and pushed: `branch` now points at `sha`.
    Landed {
        id: i64,
        branch: String,
        who: String,
        commits: i64,
        sha: String,
    },
    /// A series left the queue without landing (a failed build, a conflict, cancelled).
    LandRejected {
        id: i64,
        branch: String,
        who: String,
        reason: String,
    },
    /// A builder went from good to bad over several commits: a bisection looks for the first
    /// bad one (issue 28).
    BisectStarted {
        bisect: i64,
        builder: String,
        good: String,
        bad: String,
        /// Commits after `good` up to `bad`.
        commits: usize,
    },
    /// A bisection named the first bad commit.
    CulpritFound {
        bisect: i64,
        builder: String,
        culprit: String,
        /// The commit's author, as git has it (`Name <address>`).
        author: String,
        title: String,
        builds: u32,
    },
    /// A bisection ended without naming a culprit: `state` is `inconclusive` (its builds could
    /// not tell) or `stopped` (the branch was fixed meanwhile); `reason` says which way.
    BisectEnded {
        bisect: i64,
        builder: String,
        state: String,
        reason: String,
    },
    // ---- shell (issue 25) ----
    /// `who` opened a shell (from `from`) into held build `number` of `builder`.
    ShellOpened {
        builder: String,
        number: i64,
        who: String,
        from: String,
    },
    /// That shell ended.
    ShellClosed {
        builder: String,
        number: i64,
        who: String,
        reason: String,
    },
    /// `who` ended the hold of build `number` of `builder` (`shell --release`): its directory
    /// is free and its open shells end, on whichever master relays them.
    HoldReleased {
        builder: String,
        number: i64,
        who: String,
    },
}

impl BuildEvent {
    /// The job (try job, forced build, scheduler firing) the event belongs to; changes belong
    /// to none.
    pub fn job_name(&self) -> &str {
        match self {
            BuildEvent::ChangeAdded { .. }
            | BuildEvent::StopRequested { .. }
            | BuildEvent::SlaveConnected { .. }
            | BuildEvent::LandQueued { .. }
            | BuildEvent::Landed { .. }
            | BuildEvent::LandRejected { .. }
            | BuildEvent::BisectStarted { .. }
            | BuildEvent::CulpritFound { .. }
            | BuildEvent::BisectEnded { .. }
            | BuildEvent::ShellOpened { .. }
            | BuildEvent::ShellClosed { .. }
            | BuildEvent::HoldReleased { .. } => "",
            BuildEvent::RequestsQueued { job_name, .. }
            | BuildEvent::RequestCancelled { job_name, .. }
            | BuildEvent::WaitingForLock { job_name, .. }
            | BuildEvent::BuildStarted { job_name, .. }
            | BuildEvent::StepStarted { job_name, .. }
            | BuildEvent::StepFinished { job_name, .. }
            | BuildEvent::BuildFinished { job_name, .. } => job_name,
        }
    }

    /// Whether the event concerns one of `builders` (every event does when the list is empty).
    pub fn concerns_any(&self, builders: &[String]) -> bool {
        if builders.is_empty() {
            return true;
        }
        match self {
            BuildEvent::ChangeAdded { .. }
            | BuildEvent::SlaveConnected { .. }
            | BuildEvent::LandQueued { .. }
            | BuildEvent::Landed { .. }
            | BuildEvent::LandRejected { .. } => true,
            BuildEvent::RequestsQueued {
                builders: queued, ..
            } => queued.iter().any(|builder| builders.contains(builder)),
            BuildEvent::RequestCancelled { builder, .. }
            | BuildEvent::WaitingForLock { builder, .. }
            | BuildEvent::BuildStarted { builder, .. }
            | BuildEvent::StepStarted { builder, .. }
            | BuildEvent::StepFinished { builder, .. }
            | BuildEvent::BuildFinished { builder, .. }
            | BuildEvent::StopRequested { builder, .. }
            | BuildEvent::BisectStarted { builder, .. }
            | BuildEvent::CulpritFound { builder, .. }
            | BuildEvent::BisectEnded { builder, .. } => builders.contains(builder),
            BuildEvent::ShellOpened { builder, .. }
            | BuildEvent::ShellClosed { builder, .. }
            | BuildEvent::HoldReleased { builder, .. } => builders.contains(builder),
        }
    }
}

/// An event with its place in the master's event sequence (per master run, from 1), so a
/// follower that reconnects can resume after the last one it saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SequencedEvent {
    pub seq: u64,
    /// When the master published it, seconds since the unix epoch.
    #[serde(default)]
    pub at: f64,
    #[serde(flatten)]
    pub event: BuildEvent,
}

/// One line of the JSON stream the master writes for `try --wait --json` and
/// `watch --follow --json`. Clients render these; the exit status still says how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "item", rename_all = "snake_case")]
pub enum StreamItem {
    /// The try job was spooled (first item of `try --wait`).
    Accepted {
        job_name: String,
        jobid: String,
        builders: Vec<String>,
        /// The master's web address, for links to the builds.
        web_url: String,
    },
    /// The builders' state now (first item of `watch`). `epoch` names this run of the master:
    /// sequence numbers only compare within one epoch.
    Status {
        epoch: String,
        snapshot: StatusSnapshot,
    },
    Event(SequencedEvent),
    /// The typed answer of the action whose builds follow (first item of `force --wait` and
    /// `rebuild --wait`).
    Answer {
        answer: crate::commands::Answer,
        /// The master's web address, for links to the builds.
        web_url: String,
    },
    /// Where the job's request stands in a builder's queue (after it was queued).
    Queued {
        builder: String,
        position: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        starts_in_secs: Option<f64>,
        /// The build-level lock that keeps it from starting, if one does.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        waiting_for_lock: Option<String>,
    },
    /// Events the follower can no longer get: it fell behind, or asked to resume from further
    /// back than the master keeps.
    Missed {
        count: u64,
    },
    /// The last lines of the log of the step that failed a build (`try --wait --tail N`),
    /// right after the build's final `build_finished`.
    StepTail(StepTail),
    /// After missed events, where the try job stands as the history records it (`try --wait`
    /// follows on from it instead of waiting for events that will not come).
    Resync {
        record: JobRecord,
    },
}

/// The end of a failed step's log, as `try --wait` shows it in the terminal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepTail {
    pub builder: String,
    pub number: i64,
    /// The step's number (1 = the checkout) and name.
    pub step: i64,
    pub name: String,
    pub result: BuildResult,
    pub summary: Option<String>,
    /// Each log stream that has output (`stdout`, `stderr`, `info`), in that order.
    pub streams: Vec<TailStream>,
    /// The step's log page.
    pub url: String,
}

/// The last lines of one stream of a step's log, made safe for a terminal (no control
/// characters).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TailStream {
    pub stream: String,
    pub lines: Vec<String>,
    /// Whether the log has more lines before these.
    pub cut: bool,
}
