//! Build results and request states: closed enums with one spelling each, used in SQL, JSON,
//! templates and text alike.

use std::fmt;
use std::str::FromStr;

/// A stored or received name that is not one of the enum's spellings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} '{name}'")]
pub struct UnknownName {
    pub what: &'static str,
    pub name: String,
}

/// The outcome of a step or a build, in increasing order of badness (a build's result is the
/// worst of its steps' contributions).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum BuildResult {
    Success,
    Warnings,
    Failure,
    /// Something other than the build's own commands went wrong (slave lost, checkout error).
    Exception,
    /// Stopped by a person; distinct from failure.
    Interrupted,
}

impl BuildResult {
    pub const ALL: [BuildResult; 5] = [
        BuildResult::Success,
        BuildResult::Warnings,
        BuildResult::Failure,
        BuildResult::Exception,
        BuildResult::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BuildResult::Success => "success",
            BuildResult::Warnings => "warnings",
            BuildResult::Failure => "failure",
            BuildResult::Exception => "exception",
            BuildResult::Interrupted => "interrupted",
        }
    }

    /// Success and warnings count as good (`try --wait` exits 0).
    pub fn is_good(self) -> bool {
        matches!(self, BuildResult::Success | BuildResult::Warnings)
    }
}

impl fmt::Display for BuildResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BuildResult {
    type Err = UnknownName;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        BuildResult::ALL
            .into_iter()
            .find(|result| result.as_str() == name)
            .ok_or_else(|| UnknownName {
                what: "build result",
                name: name.to_string(),
            })
    }
}

/// Where a build request is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    /// Waiting in the queue (also after a retry or a master restart).
    Pending,
    /// A build of it is running.
    Building,
    /// Its build finished (whatever the result).
    Done,
    /// Dropped from the queue before it was built.
    Cancelled,
}

impl RequestState {
    pub const ALL: [RequestState; 4] = [
        RequestState::Pending,
        RequestState::Building,
        RequestState::Done,
        RequestState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Building => "building",
            RequestState::Done => "done",
            RequestState::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for RequestState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RequestState {
    type Err = UnknownName;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        RequestState::ALL
            .into_iter()
            .find(|state| state.as_str() == name)
            .ok_or_else(|| UnknownName {
                what: "request state",
                name: name.to_string(),
            })
    }
}

/// Where a build request came from; it decides how its branch is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// A try job: its branch names the developer's branch, the base revision is what counts.
    Try,
    /// Forced by hand: the branch (default: the builder's) and revision (default: its head).
    Force,
    /// Started by a scheduler (branch, periodic, nightly, dependent): a branch and revision of
    /// the builder's repository, as for a forced build.
    Scheduled,
}

impl RequestKind {
    pub const ALL: [RequestKind; 3] =
        [RequestKind::Try, RequestKind::Force, RequestKind::Scheduled];

    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Try => "try",
            RequestKind::Force => "force",
            RequestKind::Scheduled => "scheduled",
        }
    }
}

impl fmt::Display for RequestKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RequestKind {
    type Err = UnknownName;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        RequestKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
            .ok_or_else(|| UnknownName {
                what: "request kind",
                name: name.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worse_results_sort_later() {
        assert!(BuildResult::Success < BuildResult::Warnings);
        assert!(BuildResult::Failure < BuildResult::Exception);
        assert_eq!(
            [
                BuildResult::Warnings,
                BuildResult::Failure,
                BuildResult::Success
            ]
            .into_iter()
            .max(),
            Some(BuildResult::Failure)
        );
    }

    #[test]
    fn every_spelling_reads_back() {
        for result in BuildResult::ALL {
            assert_eq!(result.as_str().parse::<BuildResult>(), Ok(result));
            let json = serde_json::to_string(&result).expect("serialises");
            assert_eq!(json, format!("\"{result}\""));
        }
        for state in RequestState::ALL {
            assert_eq!(state.as_str().parse::<RequestState>(), Ok(state));
        }
        for kind in RequestKind::ALL {
            assert_eq!(kind.as_str().parse::<RequestKind>(), Ok(kind));
        }
        assert!("broken".parse::<BuildResult>().is_err());
        assert!("finished".parse::<RequestState>().is_err());
    }
}
