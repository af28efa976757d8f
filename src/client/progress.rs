//! What `buildbot try --wait` shows while builds run: the master's progress lines as they come
//! and, on a terminal, a live status line under them (each running build's step, how long it has
//! run, and the ETA), redrawn every second.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::master::config::parse_duration;
use crate::master::results::format_eta;

/// One running build, as the progress lines describe it.
#[derive(Debug, Clone)]
struct Running {
    step: String,
    started: Instant,
    eta: Option<Duration>,
}

/// The running builds, keyed by "BUILDER #N", updated from the master's lines.
#[derive(Debug, Default)]
pub struct Tracker {
    running: BTreeMap<String, Running>,
}

impl Tracker {
    /// Updates the state from one progress line (`linux #3: test ...`, `linux #3: success`).
    pub fn observe(&mut self, line: &str) {
        let Some((build, what)) = line.split_once(": ") else {
            return;
        };
        if !build.contains(" #") {
            return;
        }
        if let Some(rest) = what.strip_prefix("started on ") {
            let eta = rest
                .split_once("(ETA ")
                .and_then(|(_, eta)| parse_duration(eta.trim_end_matches(')')).ok());
            self.running.insert(
                build.to_string(),
                Running {
                    step: "starting".into(),
                    started: Instant::now(),
                    eta,
                },
            );
        } else if let Some(step) = what.strip_suffix(" ...") {
            if let Some(running) = self.running.get_mut(build) {
                running.step = step.to_string();
            }
        } else if ["success", "warnings", "failure", "exception", "interrupted"]
            .iter()
            .any(|result| what == *result || what.starts_with(&format!("{result}:")))
        {
            // "success", "interrupted: stopped by ...": the build is over (step results read
            // "STEP RESULT (...)").
            self.running.remove(build);
        }
    }

    /// `linux #3: test 0m12s, ETA 2m33s | mac #1: checkout 1s`, or nothing when idle.
    pub fn status_line(&self) -> String {
        self.running
            .iter()
            .map(|(build, running)| {
                let elapsed = running.started.elapsed();
                match running.eta {
                    Some(eta) => format!(
                        "{build}: {} {}, ETA {}",
                        running.step,
                        format_eta(elapsed),
                        format_eta(eta.saturating_sub(elapsed))
                    ),
                    None => format!("{build}: {} {}", running.step, format_eta(elapsed)),
                }
            })
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

/// Copies `input` to `output` line by line; on a terminal, keeps a status line at the bottom.
pub fn follow(input: impl BufRead + Send + 'static, output: &mut impl Write, terminal: bool) {
    if !terminal {
        for line in input.lines().map_while(Result::ok) {
            if writeln!(output, "{line}").is_err() {
                return;
            }
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
    let mut tracker = Tracker::default();
    loop {
        let line = match lines_rx.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => Some(line),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        // Clear the status line, print what came, draw the status line again.
        let _ = write!(output, "\r\x1b[K");
        if let Some(line) = line {
            tracker.observe(&line);
            let _ = writeln!(output, "{line}");
        }
        let status = tracker.status_line();
        if !status.is_empty() {
            let _ = write!(output, "{status}");
        }
        let _ = output.flush();
    }
    let _ = write!(output, "\r\x1b[K");
    let _ = output.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_follows_the_builds() {
        let mut tracker = Tracker::default();
        tracker.observe("queued for linux, mac");
        tracker.observe("linux #3: started on s1 (ETA 2m45s)");
        tracker.observe("mac #1: started on m1");
        tracker.observe("linux #3: test ...");
        let line = tracker.status_line();
        assert!(line.starts_with("linux #3: test 0s, ETA 2m4"), "{line}");
        assert!(line.contains(" | mac #1: starting 0s"), "{line}");
        tracker.observe("linux #3: test success (exit 0 (1.0s))");
        assert!(
            tracker.status_line().contains("linux #3"),
            "a step result is not the build's"
        );
        tracker.observe("linux #3: success");
        tracker.observe("mac #1: interrupted: stopped by alice: enough");
        assert_eq!(tracker.status_line(), "");
    }

    #[test]
    fn plain_lines_when_not_a_terminal() {
        let mut out = Vec::new();
        follow(
            std::io::Cursor::new(b"a\nlinux #1: started on s\n".to_vec()),
            &mut out,
            false,
        );
        assert_eq!(out, b"a\nlinux #1: started on s\n");
    }
}
