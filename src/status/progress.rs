//! Following one try job to its end from its events: which builders it waits for and each
//! one's final build. The master decides `try --wait`'s exit status with it; the client writes
//! its summary with it.

use serde::{Deserialize, Serialize};

use crate::status::{BuildEvent, BuildResult};

/// How many lines of a failed step's log `try --wait` shows by default (`--tail N`).
pub const DEFAULT_TAIL_LINES: usize = 20;

/// A try job as the history records it: its builders, each one's final build, and which of
/// its requests were cancelled. What `try --wait` resumes from after missing events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub builders: Vec<String>,
    /// (builder, number, result) of each request that is done.
    pub finished: Vec<(String, i64, BuildResult)>,
    /// The builders whose request was cancelled before it was built.
    pub cancelled: Vec<String>,
}

/// Follows a try job's builds to their end: which builders it waits for, and each one's last
/// result (a build retried after a lost slave finishes twice; the last one counts).
#[derive(Debug, Default)]
pub struct JobProgress {
    builders: Option<Vec<String>>,
    finished: Vec<(String, i64, BuildResult, bool)>,
    /// (builder, who) of requests dropped before they were built.
    cancelled: Vec<(String, String)>,
}

impl JobProgress {
    /// Takes one event of the job; returns whether every build of it has ended for good.
    pub fn observe(&mut self, event: &BuildEvent) -> bool {
        match event {
            BuildEvent::RequestsQueued { builders, .. } => self.builders = Some(builders.clone()),
            BuildEvent::RequestCancelled { builder, by, .. } => {
                self.cancelled.push((builder.clone(), by.clone()))
            }
            BuildEvent::BuildFinished {
                builder,
                number,
                result,
                will_retry,
                ..
            } => self
                .finished
                .push((builder.clone(), *number, *result, *will_retry)),
            _ => {}
        }
        self.is_done()
    }

    /// Takes the job as the history records it, in place of what the events said (some were
    /// missed); returns whether every build of it has ended for good. A record without
    /// builders (the job's requests are not recorded yet) changes nothing.
    pub fn resync(&mut self, record: &JobRecord) -> bool {
        if record.builders.is_empty() {
            return self.is_done();
        }
        self.builders = Some(record.builders.clone());
        self.finished = record
            .finished
            .iter()
            .map(|(builder, number, result)| (builder.clone(), *number, *result, false))
            .collect();
        for builder in &record.cancelled {
            if !self.cancelled.iter().any(|(name, _)| name == builder) {
                self.cancelled
                    .push((builder.clone(), "someone (while events were missed)".into()));
            }
        }
        self.is_done()
    }

    fn last_of(&self, builder: &str) -> Option<&(String, i64, BuildResult, bool)> {
        self.finished
            .iter()
            .rev()
            .find(|(name, ..)| name == builder)
    }

    pub fn is_done(&self) -> bool {
        self.builders.as_ref().is_some_and(|builders| {
            builders.iter().all(|builder| {
                self.last_of(builder).is_some_and(|(.., retry)| !retry)
                    || self.cancelled.iter().any(|(name, _)| name == builder)
            })
        })
    }

    /// (builder, number, result) of each builder's last build, in the job's builder order.
    pub fn results(&self) -> Vec<(String, i64, BuildResult)> {
        self.builders
            .iter()
            .flatten()
            .filter_map(|builder| self.last_of(builder))
            .map(|(builder, number, result, _)| (builder.clone(), *number, *result))
            .collect()
    }

    /// (builder, who) of the job's requests cancelled before they were built.
    pub fn cancelled(&self) -> &[(String, String)] {
        &self.cancelled
    }

    /// Every build succeeded (or had warnings) and none was cancelled.
    pub fn all_good(&self) -> bool {
        self.cancelled.is_empty() && self.results().iter().all(|(_, _, result)| result.is_good())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(builder: &str, number: i64, result: BuildResult, will_retry: bool) -> BuildEvent {
        BuildEvent::BuildFinished {
            job_name: "j".into(),
            builder: builder.into(),
            number,
            result,
            reason: None,
            will_retry,
        }
    }

    #[test]
    fn a_cancelled_request_ends_its_part_of_the_job_as_not_good() {
        let mut progress = JobProgress::default();
        progress.observe(&BuildEvent::RequestsQueued {
            job_name: "j".into(),
            builders: vec!["linux".into(), "mac".into()],
        });
        assert!(!progress.observe(&finished("linux", 1, BuildResult::Success, false)));
        assert!(progress.observe(&BuildEvent::RequestCancelled {
            job_name: "j".into(),
            builder: "mac".into(),
            request_id: 7,
            by: "alice".into(),
        }));
        assert!(!progress.all_good());
        assert_eq!(
            progress.cancelled(),
            [("mac".to_string(), "alice".to_string())]
        );
    }

    #[test]
    fn after_missed_events_the_record_decides() {
        let mut progress = JobProgress::default();
        // Nothing recorded yet: still waiting.
        assert!(!progress.resync(&JobRecord::default()));
        assert!(!progress.is_done());
        // The queued and finished events were missed; the history has the final builds.
        let record = JobRecord {
            builders: vec!["linux".into(), "mac".into()],
            finished: vec![("linux".into(), 4, BuildResult::Failure)],
            cancelled: Vec::new(),
        };
        assert!(!progress.resync(&record));
        let record = JobRecord {
            finished: vec![
                ("linux".into(), 4, BuildResult::Failure),
                ("mac".into(), 2, BuildResult::Success),
            ],
            ..record
        };
        assert!(progress.resync(&record));
        assert!(!progress.all_good());
        assert_eq!(
            progress.results(),
            vec![
                ("linux".into(), 4, BuildResult::Failure),
                ("mac".into(), 2, BuildResult::Success)
            ]
        );
    }

    #[test]
    fn a_job_is_done_when_each_builder_has_a_final_build() {
        let mut progress = JobProgress::default();
        assert!(!progress.observe(&BuildEvent::RequestsQueued {
            job_name: "j".into(),
            builders: vec!["linux".into(), "mac".into()],
        }));
        assert!(!progress.observe(&finished("linux", 1, BuildResult::Exception, true)));
        assert!(!progress.observe(&finished("mac", 1, BuildResult::Success, false)));
        assert!(progress.observe(&finished("linux", 2, BuildResult::Warnings, false)));
        assert_eq!(
            progress.results(),
            vec![
                ("linux".into(), 2, BuildResult::Warnings),
                ("mac".into(), 1, BuildResult::Success)
            ]
        );
        assert!(progress.all_good());
    }
}
