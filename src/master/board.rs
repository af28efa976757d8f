//! The board of running builds: one entry per build in progress (which slave, which step, when
//! it started, what to expect, and the handle that stops it), plus each builder's last result.
//! The build task that owns a build writes its entry; everyone else reads typed snapshots.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::master::lock;
use crate::status::{BuildResult, LastBuild, RunningBuild};

/// Who stopped a build and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopRequest {
    pub by: String,
    pub reason: String,
}

/// The handle to stop one running build.
pub struct StopHandle {
    /// Cancelled by a stop; the build interrupts its step and skips the rest.
    pub token: CancellationToken,
    requested: Mutex<Option<StopRequest>>,
}

impl StopHandle {
    fn new() -> StopHandle {
        StopHandle {
            token: CancellationToken::new(),
            requested: Mutex::new(None),
        }
    }

    /// Stops the build, recording who and why (the first stop wins).
    pub fn request(&self, by: &str, reason: &str) {
        lock(&self.requested).get_or_insert_with(|| StopRequest {
            by: by.to_string(),
            reason: reason.to_string(),
        });
        self.token.cancel();
    }

    /// Who stopped it (set once the token is cancelled).
    pub fn requested(&self) -> StopRequest {
        lock(&self.requested)
            .clone()
            .unwrap_or_else(|| StopRequest {
                by: "someone".into(),
                reason: "no reason given".into(),
            })
    }
}

struct Entry {
    job_name: String,
    request_id: i64,
    view: RunningBuild,
    stop: Arc<StopHandle>,
}

#[derive(Default)]
pub struct Board {
    running: Mutex<BTreeMap<(String, i64), Entry>>,
    last: Mutex<BTreeMap<String, LastBuild>>,
}

/// A running build, as a stop action finds it.
pub struct Found {
    pub number: i64,
    /// Whose request it builds: the history knows.
    pub request_id: i64,
    pub stop: Arc<StopHandle>,
}

impl Board {
    /// Puts a build on the board; its owner calls [`Board::finish`] when it ends.
    pub fn start(&self, job_name: &str, request_id: i64, view: RunningBuild) -> Arc<StopHandle> {
        let stop = Arc::new(StopHandle::new());
        lock(&self.running).insert(
            (view.builder.clone(), view.number),
            Entry {
                job_name: job_name.to_string(),
                request_id,
                view,
                stop: Arc::clone(&stop),
            },
        );
        stop
    }

    /// How many builds run on `slave` now, of any builder.
    pub fn running_on_slave(&self, slave: &str) -> usize {
        lock(&self.running)
            .values()
            .filter(|entry| entry.view.slave == slave)
            .count()
    }

    /// The number of the running build of a request, if it has started.
    pub fn number_of_request(&self, request_id: i64) -> Option<i64> {
        lock(&self.running)
            .values()
            .find(|entry| entry.request_id == request_id)
            .map(|entry| entry.view.number)
    }

    /// Records the step a build is in now: its number (the checkout is 1) and name.
    pub fn set_step(&self, builder: &str, number: i64, step_number: i64, step: &str) {
        if let Some(entry) = lock(&self.running).get_mut(&(builder.to_string(), number)) {
            entry.view.step = Some(step.to_string());
            entry.view.step_number = Some(step_number);
        }
    }

    /// Takes the build off the board and records its result as the builder's last.
    pub fn finish(&self, builder: &str, number: i64, result: BuildResult) {
        lock(&self.running).remove(&(builder.to_string(), number));
        lock(&self.last).insert(builder.to_string(), LastBuild { number, result });
    }

    /// The running builds of a builder, oldest first.
    pub fn running(&self, builder: &str) -> Vec<RunningBuild> {
        lock(&self.running)
            .values()
            .filter(|entry| entry.view.builder == builder)
            .map(|entry| entry.view.clone())
            .collect()
    }

    /// Every running build, by builder and number.
    pub fn all_running(&self) -> Vec<RunningBuild> {
        lock(&self.running)
            .values()
            .map(|entry| entry.view.clone())
            .collect()
    }

    pub fn running_build(&self, builder: &str, number: i64) -> Option<RunningBuild> {
        lock(&self.running)
            .get(&(builder.to_string(), number))
            .map(|entry| entry.view.clone())
    }

    /// Sets a builder's last build from the history at start; a build that finished since
    /// (already on the board) wins.
    pub fn restore_last(&self, builder: &str, last: LastBuild) {
        lock(&self.last).entry(builder.to_string()).or_insert(last);
    }

    pub fn last(&self, builder: &str) -> Option<LastBuild> {
        lock(&self.last).get(builder).copied()
    }

    /// The stop handles of a builder's running builds, by number.
    pub fn stoppable(&self, builder: &str) -> Vec<Found> {
        lock(&self.running)
            .values()
            .filter(|entry| entry.view.builder == builder)
            .map(|entry| Found {
                number: entry.view.number,
                request_id: entry.request_id,
                stop: Arc::clone(&entry.stop),
            })
            .collect()
    }

    /// Stops the running build of a request, if it runs; whether it did.
    pub fn stop_request(&self, request_id: i64, by: &str, reason: &str) -> bool {
        let running = lock(&self.running);
        let found = running
            .values()
            .find(|entry| entry.request_id == request_id);
        if let Some(entry) = found {
            entry.stop.request(by, reason);
        }
        found.is_some()
    }

    /// Stops every running build of a try job; returns how many.
    pub fn stop_job(&self, job_name: &str, by: &str, reason: &str) -> usize {
        let running = lock(&self.running);
        let mut stopped = 0;
        for entry in running.values().filter(|entry| entry.job_name == job_name) {
            entry.stop.request(by, reason);
            stopped += 1;
        }
        stopped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(builder: &str, number: i64) -> RunningBuild {
        RunningBuild {
            builder: builder.into(),
            number,
            slave: "s1".into(),
            step: None,
            step_number: None,
            started_at: 0.0,
            expected_secs: None,
        }
    }

    #[test]
    fn a_build_is_on_the_board_from_start_to_finish() {
        let board = Board::default();
        let stop = board.start("job-1", 7, view("linux", 3));
        assert_eq!(board.number_of_request(7), Some(3));
        board.set_step("linux", 3, 2, "test");
        assert_eq!(board.running("linux")[0].step.as_deref(), Some("test"));
        assert_eq!(board.running("linux")[0].step_number, Some(2));
        assert_eq!(board.stop_job("job-1", "alice", "enough"), 1);
        assert!(stop.token.is_cancelled());
        stop.request("bob", "later stops do not overwrite");
        assert_eq!(stop.requested().by, "alice");
        board.finish("linux", 3, BuildResult::Interrupted);
        assert!(board.running("linux").is_empty());
        assert_eq!(
            board.last("linux"),
            Some(LastBuild {
                number: 3,
                result: BuildResult::Interrupted
            })
        );
    }
}
