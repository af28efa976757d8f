//! The merge queue as the store keeps it (`buildbot land`, issue 24): one row per submitted
//! series, with the bundle it came in and where its test and landing stand. The state machine
//! lives in the store so a restarted master, or another master of a cluster, picks it up.

use serde::Serialize;

/// Where a queue entry stands. `Landing` is the moment between a passed test and a recorded
/// push: a master that dies then finds out from the remote whether its push went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LandState {
    Queued,
    Testing,
    Landing,
    Landed,
    Rejected,
    Cancelled,
}

impl LandState {
    pub fn as_str(self) -> &'static str {
        match self {
            LandState::Queued => "queued",
            LandState::Testing => "testing",
            LandState::Landing => "landing",
            LandState::Landed => "landed",
            LandState::Rejected => "rejected",
            LandState::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<LandState> {
        Some(match text {
            "queued" => LandState::Queued,
            "testing" => LandState::Testing,
            "landing" => LandState::Landing,
            "landed" => LandState::Landed,
            "rejected" => LandState::Rejected,
            "cancelled" => LandState::Cancelled,
            _ => return None,
        })
    }

    /// Still in the queue (not ended one way or another).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            LandState::Queued | LandState::Testing | LandState::Landing
        )
    }
}

/// A series as submitted, before the store gives it an id.
#[derive(Debug, Clone, PartialEq)]
pub struct NewLand {
    pub branch: String,
    pub who: String,
    pub builders: Vec<String>,
    pub ff_only: bool,
    /// The git bundle the series came in (the master's copy: any master can import it).
    pub bundle: Vec<u8>,
    /// The series' last commit, as the bundle names it.
    pub head: String,
    /// The commit the series sits on (the bundle's prerequisite).
    pub base: String,
    pub commits: i64,
    /// The first line of the series' last commit message, for pages.
    pub summary: String,
    pub submitted_at: f64,
}

/// A queue entry as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LandEntry {
    pub id: i64,
    pub branch: String,
    pub who: String,
    pub builders: Vec<String>,
    pub ff_only: bool,
    pub head: String,
    pub base: String,
    pub commits: i64,
    pub summary: String,
    pub submitted_at: f64,
    pub state: LandState,
    #[serde(flatten)]
    pub progress: LandProgress,
}

/// What moves as an entry goes through the queue; written whole by each transition.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LandProgress {
    /// The try job testing the rebased series now (`land-ID-ATTEMPT`).
    pub job_name: Option<String>,
    /// The target's tip the series was rebased onto for that test.
    pub tested_base: Option<String>,
    /// The rebased series' last commit: what lands if the test passes.
    pub tested_sha: Option<String>,
    /// What the target points at after the landing.
    pub landed_sha: Option<String>,
    /// Why it was rejected or cancelled.
    pub reason: Option<String>,
    /// Tests started so far (a re-test after the target moved is one more).
    pub attempts: i64,
    pub finished_at: Option<f64>,
}
