//! The words people read: one line per build event, the status lines, the `try --wait`
//! summary. Rendered here once, from typed values, for the master's text output over SSH and
//! for the clients that receive the JSON stream. Nothing parses these lines back.

use std::fmt::Write as _;

use crate::durations::format_eta;
use crate::status::{
    BuildEvent, BuilderActivity, BuilderStatus, JobProgress, RunningBuild, StatusSnapshot,
};

/// One line for a build event, as `try --wait` and `watch` print it.
/// `1 builder`, `2 builders`, `0 builders`: a count with its noun, singular for one.
pub fn count(number: usize, one: &str, many: &str) -> String {
    format!("{number} {}", if number == 1 { one } else { many })
}

/// A diffstat summary as git words it: `1 file changed, 1 insertion(+), 0 deletions(-)`.
pub fn diffstat_summary(files: usize, insertions: usize, deletions: usize) -> String {
    format!(
        "{} changed, {}(+), {}(-)",
        count(files, "file", "files"),
        count(insertions, "insertion", "insertions"),
        count(deletions, "deletion", "deletions")
    )
}

pub fn describe_event(event: &BuildEvent) -> String {
    match event {
        BuildEvent::RequestsQueued { builders, .. } => {
            format!("queued for {}", builders.join(", "))
        }
        BuildEvent::StopRequested {
            builder,
            number,
            by,
            reason,
        } => format!("{builder} #{number}: stop asked by {by}: {reason}"),
        BuildEvent::SlaveConnected { slave, master } => {
            format!("slave {slave} connected to master {master}")
        }
        BuildEvent::LandQueued {
            id,
            branch,
            who,
            commits,
            position,
        } => format!(
            "land #{id}: {} by {who} queued for {branch} (position {position})",
            count(usize::try_from(*commits).unwrap_or(0), "commit", "commits")
        ),
        BuildEvent::Landed {
            branch,
            who,
            commits,
            sha,
            ..
        } => format!(
            "landed {} by {who} on {branch}: {}",
            count(usize::try_from(*commits).unwrap_or(0), "commit", "commits"),
            sha.get(..7).unwrap_or(sha)
        ),
        BuildEvent::LandRejected {
            id,
            branch,
            who,
            reason,
        } => format!("land #{id} by {who} on {branch} rejected: {reason}"),
        BuildEvent::BisectStarted {
            builder,
            good,
            bad,
            commits,
            ..
        } => format!(
            "{builder}: bisecting {}..{}: {}",
            good.get(..7).unwrap_or(good),
            bad.get(..7).unwrap_or(bad),
            count(*commits, "commit", "commits")
        ),
        BuildEvent::CulpritFound {
            builder,
            culprit,
            author,
            title,
            builds,
            ..
        } => format!(
            "{builder}: first bad: {} by {} '{}' — {builds} builds",
            culprit.get(..7).unwrap_or(culprit),
            crate::untrusted::text::one_line(author),
            crate::untrusted::text::one_line(title)
        ),
        BuildEvent::BisectEnded {
            builder,
            state,
            reason,
            ..
        } => match state.as_str() {
            "stopped" => format!("{builder}: bisection stopped: {reason}"),
            _ => format!("{builder}: bisection found no culprit: {reason}"),
        },
        BuildEvent::ShellOpened {
            builder,
            number,
            who,
            from,
        } => format!("{builder} #{number}: {who} opened a shell (from {from})"),
        BuildEvent::ShellClosed {
            builder,
            number,
            who,
            reason,
        } => format!("{builder} #{number}: {who}'s shell ended: {reason}"),
        BuildEvent::HoldReleased {
            builder,
            number,
            who,
        } => format!("{builder} #{number}: {who} released the hold; its directory is free"),
        BuildEvent::ChangeAdded {
            change_id,
            branch,
            revision,
            who,
            ..
        } => {
            let short = revision.get(..12).unwrap_or(revision);
            match who {
                Some(who) => format!("change {change_id} on {branch}: {short} by {who}"),
                None => format!("change {change_id} on {branch}: {short}"),
            }
        }
        BuildEvent::WaitingForLock {
            builder,
            number,
            step,
            lock,
            ..
        } => match (number, step) {
            (Some(number), Some(step)) => {
                format!("{builder} #{number}: {step} waiting for lock {lock}")
            }
            _ => format!("{builder}: waiting for lock {lock}"),
        },
        BuildEvent::RequestCancelled {
            builder,
            request_id,
            by,
            ..
        } => format!("{builder}: request {request_id} cancelled by {by}"),
        BuildEvent::BuildStarted {
            builder,
            number,
            slave,
            expected_secs,
            ..
        } => match expected_secs {
            Some(expected) => format!(
                "{builder} #{number}: started on {slave} (ETA {})",
                format_eta(std::time::Duration::from_secs_f64(expected.max(0.0)))
            ),
            None => format!("{builder} #{number}: started on {slave}"),
        },
        BuildEvent::StepStarted {
            builder,
            number,
            name,
            ..
        } => format!("{builder} #{number}: {name} ..."),
        BuildEvent::StepFinished {
            builder,
            number,
            name,
            result,
            summary,
            ..
        } => format!("{builder} #{number}: {name} {result} ({summary})"),
        BuildEvent::BuildFinished {
            builder,
            number,
            result,
            reason,
            will_retry,
            ..
        } => {
            let retry = if *will_retry {
                " (will be retried)"
            } else {
                ""
            };
            match reason {
                Some(reason) => format!("{builder} #{number}: {result}: {reason}{retry}"),
                None => format!("{builder} #{number}: {result}{retry}"),
            }
        }
    }
}

/// `buildbot: job JOBID accepted as NAME for linux, mac`: what a submitter sees first.
pub fn describe_accepted(jobid: &str, job_name: &str, builders: &[String]) -> String {
    format!(
        "buildbot: job {jobid} accepted as {job_name} for {}",
        builders.join(", ")
    )
}

/// `queued: 3rd for linux, starts in ~4m10s`, or `queued: 1st for linux, waiting for lock db`.
pub fn describe_queued(
    builder: &str,
    position: usize,
    starts_in_secs: Option<f64>,
    waiting_for_lock: Option<&str>,
) -> String {
    let position = crate::status::ordinal(position);
    if let Some(lock) = waiting_for_lock {
        return format!("queued: {position} for {builder}, waiting for lock {lock}");
    }
    match starts_in_secs {
        Some(secs) if secs >= 1.0 => format!(
            "queued: {position} for {builder}, starts in ~{}",
            format_eta(std::time::Duration::from_secs_f64(secs))
        ),
        Some(_) => format!("queued: {position} for {builder}, starts now"),
        None => format!("queued: {position} for {builder}"),
    }
}

/// `1m05s`, or `unknown` when there is no estimate or the build has run past it (a stale
/// "0s" would promise an end that is not coming).
pub fn eta_text(remaining: Option<std::time::Duration>) -> String {
    match remaining {
        Some(left) if left.as_secs() >= 1 => format_eta(left),
        _ => "unknown".to_string(),
    }
}

/// `building #3 (test), ETA 1m05s` at `now` (seconds since the epoch).
pub fn describe_running(build: &RunningBuild, now: f64) -> String {
    let step = build.step.as_deref().unwrap_or("starting");
    format!(
        "building #{} ({step}), ETA {}",
        build.number,
        eta_text(build.eta_at(now))
    )
}

/// `idle`, `offline`, `waiting for lock db`, or the running builds joined by ", ".
pub fn describe_activity(builder: &BuilderStatus, now: f64) -> String {
    match builder.activity {
        BuilderActivity::WaitingForLock => match &builder.waiting_for_lock {
            Some(lock) => format!("waiting for lock {lock}"),
            None => BuilderActivity::WaitingForLock.as_str().to_string(),
        },
        BuilderActivity::Building => builder
            .running
            .iter()
            .map(|build| describe_running(build, now))
            .collect::<Vec<_>>()
            .join(", "),
        activity => activity.as_str().to_string(),
    }
}

/// A plain-text status: one line for the master, one per builder.
pub fn status_lines(snapshot: &StatusSnapshot, now: f64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "master {}: {}, {} of {} connected",
        snapshot.master,
        count(snapshot.builders.len(), "builder", "builders"),
        snapshot.slaves_connected,
        count(snapshot.slaves_configured, "slave", "slaves")
    );
    for builder in &snapshot.builders {
        let slaves: Vec<String> = builder
            .slaves
            .iter()
            .map(|slave| match slave.connected {
                true => format!("{} (connected)", slave.name),
                false => format!("{} (not connected)", slave.name),
            })
            .collect();
        let last = match builder.last {
            Some(last) => format!("; last #{} {}", last.number, last.result),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "{}: {}, {} queued{last}; slaves: {}",
            builder.name,
            describe_activity(builder, now),
            builder.queued,
            slaves.join(", ")
        );
    }
    out
}

/// The end of a failed step's log, for the terminal:
///
/// ```text
/// linux #3, step 2 (test): failure: exit 1 (0.4s)
///   stdout (last 2 lines):
///     FAIL tests::parse
///     error: 1 test failed
///   log: http://ci/builders/linux/builds/3
/// ```
pub fn describe_tail(tail: &crate::status::StepTail) -> String {
    let mut out = format!(
        "{} #{}, step {} ({}): {}",
        tail.builder, tail.number, tail.step, tail.name, tail.result
    );
    if let Some(summary) = &tail.summary {
        let _ = write!(out, ": {summary}");
    }
    for stream in &tail.streams {
        let count = stream.lines.len();
        let lines = if count == 1 { "line" } else { "lines" };
        if stream.cut {
            let _ = write!(out, "\n  {} (last {count} {lines}):", stream.stream);
        } else {
            let _ = write!(out, "\n  {}:", stream.stream);
        }
        for line in &stream.lines {
            let _ = write!(out, "\n    {line}");
        }
    }
    let _ = write!(out, "\n  log: {}", tail.url);
    out
}

/// The closing lines of `try --wait`: each builder's last build, its result and its page, and
/// the requests cancelled before they were built.
pub fn try_summary(web_url: &str, progress: &JobProgress) -> String {
    let mut summary = String::from("summary:\n");
    for (builder, number, result) in progress.results() {
        let _ = writeln!(
            summary,
            "  {builder} #{number}: {result}  {web_url}/builders/{builder}/builds/{number}"
        );
    }
    for (builder, by) in progress.cancelled() {
        let _ = writeln!(summary, "  {builder}: cancelled by {by}");
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{BuildResult, LastBuild, PoolSlave};

    #[test]
    fn a_bisection_is_told_by_its_range_and_its_culprit() {
        let started = BuildEvent::BisectStarted {
            bisect: 3,
            builder: "linux".into(),
            good: "abc1234ffff".into(),
            bad: "def5678eeee".into(),
            commits: 16,
        };
        assert_eq!(
            describe_event(&started),
            "linux: bisecting abc1234..def5678: 16 commits"
        );
        let found = BuildEvent::CulpritFound {
            bisect: 3,
            builder: "linux".into(),
            culprit: "0123456789abcdef".into(),
            author: "alice <alice@example.org>\nBcc: x".into(),
            title: "Refactor parser".into(),
            builds: 4,
        };
        assert_eq!(
            describe_event(&found),
            "linux: first bad: 0123456 by alice <alice@example.org> Bcc: x 'Refactor parser' — 4 builds"
        );
        let ended = |state: &str, reason: &str| BuildEvent::BisectEnded {
            bisect: 3,
            builder: "linux".into(),
            state: state.into(),
            reason: reason.into(),
        };
        assert_eq!(
            describe_event(&ended("stopped", "build 9 of main succeeded")),
            "linux: bisection stopped: build 9 of main succeeded"
        );
        assert_eq!(
            describe_event(&ended("inconclusive", "the failure did not come back")),
            "linux: bisection found no culprit: the failure did not come back"
        );
    }

    fn running(number: i64, step: Option<&str>, expected: Option<f64>) -> RunningBuild {
        RunningBuild {
            builder: "linux".into(),
            number,
            slave: "s1".into(),
            step: step.map(str::to_string),
            step_number: None,
            started_at: 1000.0,
            expected_secs: expected,
        }
    }

    #[test]
    fn status_lines_say_what_each_builder_does() {
        let snapshot = StatusSnapshot {
            master: "example".into(),
            slaves_connected: 1,
            slaves_configured: 2,
            builders: vec![
                BuilderStatus {
                    name: "linux".into(),
                    activity: BuilderActivity::Building,
                    running: vec![
                        running(3, Some("test"), Some(100.0)),
                        running(4, None, None),
                    ],
                    queued: 2,
                    waiting_for_lock: None,
                    last: Some(LastBuild {
                        number: 2,
                        result: BuildResult::Failure,
                    }),
                    slaves: vec![PoolSlave {
                        name: "s1".into(),
                        connected: true,
                    }],
                },
                BuilderStatus {
                    name: "mac".into(),
                    activity: BuilderActivity::Offline,
                    running: vec![],
                    queued: 0,
                    waiting_for_lock: None,
                    last: None,
                    slaves: vec![PoolSlave {
                        name: "m1".into(),
                        connected: false,
                    }],
                },
                BuilderStatus {
                    name: "db".into(),
                    activity: BuilderActivity::WaitingForLock,
                    running: vec![],
                    queued: 1,
                    waiting_for_lock: Some("db".into()),
                    last: None,
                    slaves: vec![PoolSlave {
                        name: "s1".into(),
                        connected: true,
                    }],
                },
            ],
        };
        assert_eq!(
            status_lines(&snapshot, 1035.0),
            "master example: 3 builders, 1 of 2 slaves connected\n\
             linux: building #3 (test), ETA 1m05s, building #4 (starting), ETA unknown, 2 queued; last #2 failure; slaves: s1 (connected)\n\
             mac: offline, 0 queued; slaves: m1 (not connected)\n\
             db: waiting for lock db, 1 queued; slaves: s1 (connected)\n"
        );
    }

    #[test]
    fn a_queued_request_says_when_it_starts_or_which_lock_it_waits_for() {
        assert_eq!(
            describe_queued("linux", 3, Some(250.0), None),
            "queued: 3rd for linux, starts in ~4m10s"
        );
        assert_eq!(
            describe_queued("linux", 1, Some(0.0), Some("db")),
            "queued: 1st for linux, waiting for lock db"
        );
    }

    #[test]
    fn a_tail_shows_each_stream_under_its_step() {
        let tail = crate::status::StepTail {
            builder: "linux".into(),
            number: 3,
            step: 2,
            name: "test".into(),
            result: BuildResult::Failure,
            summary: Some("exit 1 (0.4s)".into()),
            streams: vec![
                crate::status::TailStream {
                    stream: "stdout".into(),
                    lines: vec!["FAIL tests::parse".into(), "error: 1 test failed".into()],
                    cut: true,
                },
                crate::status::TailStream {
                    stream: "stderr".into(),
                    lines: vec!["make: *** [test] Error 1".into()],
                    cut: false,
                },
            ],
            url: "http://ci/builders/linux/builds/3".into(),
        };
        assert_eq!(
            describe_tail(&tail),
            "linux #3, step 2 (test): failure: exit 1 (0.4s)\n  stdout (last 2 lines):\n    FAIL tests::parse\n    error: 1 test failed\n  stderr:\n    make: *** [test] Error 1\n  log: http://ci/builders/linux/builds/3"
        );
    }

    #[test]
    fn an_overdue_build_shows_an_unknown_eta_not_zero() {
        assert_eq!(
            describe_running(&running(1, Some("test"), Some(10.0)), 1100.0),
            "building #1 (test), ETA unknown"
        );
    }

    #[test]
    fn event_lines() {
        let started = BuildEvent::BuildStarted {
            job_name: "j".into(),
            builder: "linux".into(),
            number: 3,
            slave: "s1".into(),
            expected_secs: Some(165.0),
        };
        assert_eq!(
            describe_event(&started),
            "linux #3: started on s1 (ETA 2m45s)"
        );
        let finished = BuildEvent::BuildFinished {
            job_name: "j".into(),
            builder: "linux".into(),
            number: 3,
            result: BuildResult::Exception,
            reason: Some("slave lost".into()),
            will_retry: true,
        };
        assert_eq!(
            describe_event(&finished),
            "linux #3: exception: slave lost (will be retried)"
        );
        let mut progress = JobProgress::default();
        progress.observe(&BuildEvent::RequestsQueued {
            job_name: "j".into(),
            builders: vec!["linux".into()],
        });
        progress.observe(&BuildEvent::BuildFinished {
            job_name: "j".into(),
            builder: "linux".into(),
            number: 3,
            result: BuildResult::Success,
            reason: None,
            will_retry: false,
        });
        assert_eq!(
            try_summary("http://m", &progress),
            "summary:\n  linux #3: success  http://m/builders/linux/builds/3\n"
        );
    }

    #[test]
    fn counts_are_singular_for_one() {
        assert_eq!(count(1, "builder", "builders"), "1 builder");
        assert_eq!(count(0, "builder", "builders"), "0 builders");
        assert_eq!(count(2, "slave", "slaves"), "2 slaves");
        assert_eq!(
            diffstat_summary(1, 1, 0),
            "1 file changed, 1 insertion(+), 0 deletions(-)"
        );
        assert_eq!(
            diffstat_summary(3, 0, 1),
            "3 files changed, 0 insertions(+), 1 deletion(-)"
        );
    }
}
