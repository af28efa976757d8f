//! What `buildbot try --wait` shows while builds run. The master streams typed items (one JSON
//! object per line); this renders them as lines and, on a terminal, keeps a live status line
//! under them (each running build's step, how long it has run, and the ETA), redrawn every
//! second. Nothing here parses human text.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::durations::format_eta;
use crate::status::{BuildEvent, JobProgress, StreamItem, text};

/// One running build, as the events describe it.
#[derive(Debug, Clone)]
struct Running {
    step: String,
    started: Instant,
    eta: Option<Duration>,
}

/// The running builds, keyed by "BUILDER #N", updated from the master's events.
#[derive(Debug, Default)]
pub struct Tracker {
    running: BTreeMap<String, Running>,
}

impl Tracker {
    pub fn observe(&mut self, event: &BuildEvent) {
        match event {
            BuildEvent::BuildStarted {
                builder,
                number,
                expected_secs,
                ..
            } => {
                self.running.insert(
                    format!("{builder} #{number}"),
                    Running {
                        step: "starting".into(),
                        started: Instant::now(),
                        eta: expected_secs.map(|secs| Duration::from_secs_f64(secs.max(0.0))),
                    },
                );
            }
            BuildEvent::StepStarted {
                builder,
                number,
                name,
                ..
            } => {
                if let Some(running) = self.running.get_mut(&format!("{builder} #{number}")) {
                    running.step = name.clone();
                }
            }
            BuildEvent::BuildFinished {
                builder, number, ..
            } => {
                self.running.remove(&format!("{builder} #{number}"));
            }
            BuildEvent::RequestsQueued { .. }
            | BuildEvent::ChangeAdded { .. }
            | BuildEvent::RequestCancelled { .. }
            | BuildEvent::WaitingForLock { .. }
            | BuildEvent::StepFinished { .. }
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
            | BuildEvent::HoldReleased { .. } => {}
        }
    }

    /// `linux #3: test 0m12s, ETA 2m33s | mac #1: checkout 1s, ETA unknown`, or nothing when idle.
    pub fn status_line(&self) -> String {
        self.running
            .iter()
            .map(|(build, running)| {
                let elapsed = running.started.elapsed();
                format!(
                    "{build}: {} {}, ETA {}",
                    running.step,
                    format_eta(elapsed),
                    text::eta_text(running.eta.map(|eta| eta.saturating_sub(elapsed)))
                )
            })
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

/// What a stream line means for the person watching.
#[derive(Debug, Default)]
struct Renderer {
    tracker: Tracker,
    progress: JobProgress,
    web_url: String,
}

impl Renderer {
    /// The closing summary, once the job is done: printed when the stream ends, after the
    /// tails of failed steps that follow the last build's end.
    fn summary(&self) -> Option<String> {
        self.progress.is_done().then(|| {
            text::try_summary(&self.web_url, &self.progress)
                .trim_end()
                .to_string()
        })
    }
}

impl Renderer {
    /// The lines to print for one line of the master's stream.
    fn lines_for(&mut self, line: &str) -> Vec<String> {
        let item = match serde_json::from_str::<StreamItem>(line) {
            Ok(item) => item,
            // Not ours to understand (an older master?): show it as it came.
            Err(_) => return vec![line.to_string()],
        };
        match item {
            StreamItem::Accepted {
                job_name,
                jobid,
                builders,
                web_url,
            } => {
                self.web_url = web_url;
                vec![text::describe_accepted(&jobid, &job_name, &builders)]
            }
            StreamItem::Answer { answer, web_url } => {
                self.web_url = web_url;
                vec![answer.to_string()]
            }
            StreamItem::Event(sequenced) => {
                self.tracker.observe(&sequenced.event);
                self.progress.observe(&sequenced.event);
                vec![text::describe_event(&sequenced.event)]
            }
            StreamItem::Missed { count } => {
                vec![format!("({count} events skipped: fell behind the master)")]
            }
            StreamItem::Resync { record } => {
                self.progress.resync(&record);
                Vec::new()
            }
            StreamItem::StepTail(tail) => vec![text::describe_tail(&tail)],
            StreamItem::Queued {
                builder,
                position,
                starts_in_secs,
                waiting_for_lock,
            } => vec![text::describe_queued(
                &builder,
                position,
                starts_in_secs,
                waiting_for_lock.as_deref(),
            )],
            StreamItem::Status { snapshot, .. } => {
                vec![
                    text::status_lines(&snapshot, crate::status::unix_now())
                        .trim_end()
                        .to_string(),
                ]
            }
        }
    }
}

/// Renders the master's stream from `input` to `output`; on a terminal, keeps a status line at
/// the bottom.
pub fn follow(input: impl BufRead + Send + 'static, output: &mut impl Write, terminal: bool) {
    let mut renderer = Renderer::default();
    if !terminal {
        for line in input.lines().map_while(Result::ok) {
            for shown in renderer.lines_for(&line) {
                if writeln!(output, "{shown}").is_err() {
                    return;
                }
            }
        }
        if let Some(summary) = renderer.summary() {
            let _ = writeln!(output, "{summary}");
        }
        return;
    }
    let (lines_tx, lines_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in input.lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    loop {
        let line = match lines_rx.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => Some(line),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        // Clear the status line, print what came, draw the status line again.
        let _ = write!(output, "\r\x1b[K");
        if let Some(line) = line {
            for shown in renderer.lines_for(&line) {
                let _ = writeln!(output, "{shown}");
            }
        }
        let status = renderer.tracker.status_line();
        if !status.is_empty() {
            let _ = write!(output, "{status}");
        }
        let _ = output.flush();
    }
    let _ = write!(output, "\r\x1b[K");
    if let Some(summary) = renderer.summary() {
        let _ = writeln!(output, "{summary}");
    }
    let _ = output.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{BuildResult, SequencedEvent};

    fn event_line(seq: u64, event: BuildEvent) -> String {
        serde_json::to_string(&StreamItem::Event(SequencedEvent {
            seq,
            at: 0.0,
            event,
        }))
        .expect("serialises")
    }

    fn started(builder: &str, number: i64, expected_secs: Option<f64>) -> BuildEvent {
        BuildEvent::BuildStarted {
            job_name: "j".into(),
            builder: builder.into(),
            number,
            slave: "s1".into(),
            expected_secs,
        }
    }

    #[test]
    fn the_status_line_follows_the_builds() {
        let mut tracker = Tracker::default();
        tracker.observe(&started("linux", 3, Some(165.0)));
        tracker.observe(&started("mac", 1, None));
        tracker.observe(&BuildEvent::StepStarted {
            job_name: "j".into(),
            builder: "linux".into(),
            number: 3,
            step: 2,
            name: "test".into(),
        });
        let line = tracker.status_line();
        assert!(line.starts_with("linux #3: test 0s, ETA 2m4"), "{line}");
        assert!(
            line.ends_with(" | mac #1: starting 0s, ETA unknown"),
            "{line}"
        );
        for (builder, number) in [("linux", 3), ("mac", 1)] {
            tracker.observe(&BuildEvent::BuildFinished {
                job_name: "j".into(),
                builder: builder.into(),
                number,
                result: BuildResult::Success,
                reason: None,
                will_retry: false,
            });
        }
        assert_eq!(tracker.status_line(), "");
    }

    /// Regression (issue 15): a build past its expected duration showed a stale "ETA 0s".
    #[test]
    fn an_overdue_build_has_an_unknown_eta() {
        let mut tracker = Tracker::default();
        tracker.observe(&started("linux", 3, Some(0.0)));
        let line = tracker.status_line();
        assert_eq!(line, "linux #3: starting 0s, ETA unknown");
    }

    #[test]
    fn the_stream_renders_as_lines_with_a_summary_at_the_end() {
        let accepted = serde_json::to_string(&StreamItem::Accepted {
            job_name: "123.job".into(),
            jobid: "abc".into(),
            builders: vec!["linux".into()],
            web_url: "http://m".into(),
        })
        .expect("serialises");
        let stream = [
            accepted,
            event_line(
                1,
                BuildEvent::RequestsQueued {
                    job_name: "123.job".into(),
                    builders: vec!["linux".into()],
                },
            ),
            event_line(2, started("linux", 1, None)),
            event_line(
                3,
                BuildEvent::BuildFinished {
                    job_name: "123.job".into(),
                    builder: "linux".into(),
                    number: 1,
                    result: BuildResult::Failure,
                    reason: None,
                    will_retry: false,
                },
            ),
        ]
        .join("\n");
        let mut out = Vec::new();
        follow(std::io::Cursor::new(stream.into_bytes()), &mut out, false);
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "buildbot: job abc accepted as 123.job for linux\n\
             queued for linux\n\
             linux #1: started on s1\n\
             linux #1: failure\n\
             summary:\n  linux #1: failure  http://m/builders/linux/builds/1\n"
        );
    }
}
