//! The merge queue (`buildbot land`, docs/land.md): a series submitted over SSH waits in its
//! target branch's queue (in the store); the queue's driver rebases the head entry onto the
//! target's tip, has every required builder build exactly that tree through the try
//! machinery (base = the tip, patch = the series' diff, so slaves need nothing new), and
//! pushes it with a compare-and-swap. `series` does the git work in a work repository per
//! target, `git` runs the git CLI, `driver` is the state machine's one task per master (the
//! leading one with a shared store).

pub mod driver;
pub mod git;
pub mod series;

/// Why a series is refused or rejected: one line for the person who sent it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LandError {
    #[error("no [[land]] queue for branch '{branch}' (queues: {known})")]
    NoQueue { branch: String, known: String },
    #[error("branch '{branch}' does not exist in the builders' repository")]
    NoSuchBranch { branch: String },
    #[error(
        "the input is not a git bundle (buildbot land sends one: git bundle create - BASE..HEAD)"
    )]
    NotABundle,
    #[error("bad bundle: {0}")]
    BadBundle(String),
    #[error(
        "the series does not sit on the target branch: its base commit is not there (fetch, rebase, land again)"
    )]
    NotOnTarget,
    #[error("nothing to land: the series is on the target branch already")]
    NothingToLand,
    #[error("the series has {count} commits; at most {max} are taken")]
    TooManyCommits { count: usize, max: usize },
    #[error("the series has a merge commit ({commit}); land takes a linear series")]
    Merge { commit: String },
    #[error("the series touches '{path}': paths through a .git directory are refused")]
    GitPath { path: String },
    #[error("the series does not apply: commit {commit} conflicts in {}", files.join(", "))]
    Conflict { commit: String, files: Vec<String> },
    #[error("--ff-only: the series does not sit on the branch's tip {tip}")]
    NotFastForward { tip: String },
    #[error("the series is larger than {max} bytes")]
    TooLarge { max: u64 },
    #[error("the series did not arrive within {limit:?}")]
    UploadTimeout { limit: std::time::Duration },
    #[error("no queued land entry #{id} of yours on '{branch}'")]
    NotQueued { id: i64, branch: String },
    #[error("nothing of yours waits in the queue of '{branch}'")]
    NothingQueued { branch: String },
    /// The master's git failed (a remote unreachable, a disk full): logged, not shown.
    #[error("git: {0}")]
    Git(String),
}
