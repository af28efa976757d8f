//! `buildbot watch`: the master's `watch` over the user's own ssh, with the same connection
//! defaults as `try` (flags, then `.buildbot`).
//!
//! `watch` asks the master for its typed JSON stream and renders it (text, or JSON lines with
//! `--json`). When a connection that worked drops, it reconnects with backoff and resumes after
//! the last event it saw (`--since EPOCH:SEQ`), so no event is lost or shown twice; when the
//! master restarted in between, it says so, since the events of the gap are gone.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::time::Duration;

use crate::client::remote::{exit_code, resolve};
use crate::client::try_cmd::{TryArgs, TryError};
use crate::status::{StreamItem, text, unix_now};

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What `buildbot watch` was asked for.
#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    pub builders: Vec<String>,
    pub once: bool,
    pub json: bool,
}

/// Where the stream left off: the master run and the last event seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Position {
    epoch: Option<String>,
    seq: u64,
}

/// How one connection's stream ended.
enum StreamEnd {
    /// The user's side is gone (stdout closed): stop for good.
    OutputClosed,
    /// The stream ended; `received` says whether anything came at all.
    Ended { received: bool },
}

/// Runs `buildbot watch`; returns the exit code (0, or 2 for a usage/connection problem).
pub fn run(options: &WatchOptions, connection_args: &TryArgs, cwd: &Path) -> Result<u8, TryError> {
    let connection = resolve(connection_args, cwd)?;
    let mut position = Position::default();
    let mut backoff = FIRST_BACKOFF;
    let mut ever_received = false;
    let stdout = std::io::stdout();
    loop {
        let remote = remote_command(options, &position)?;
        let mut run = connection.spawn(&remote, std::process::Stdio::null(), true)?;
        let ended = match run.child.stdout.take() {
            Some(stream) => render(
                BufReader::new(stream),
                &mut stdout.lock(),
                options,
                &mut position,
            ),
            None => StreamEnd::Ended { received: false },
        };
        let status = run.wait()?;
        let received = match ended {
            StreamEnd::OutputClosed => return Ok(0),
            StreamEnd::Ended { received } => received,
        };
        if options.once {
            return exit_code(status, &connection);
        }
        ever_received |= received;
        // A watch that never got going (wrong key, unknown builder) reports why and ends; one
        // that worked and dropped comes back.
        if !ever_received || status.code == Some(2) {
            return exit_code(status, &connection);
        }
        if received {
            backoff = FIRST_BACKOFF;
        }
        eprintln!(
            "buildbot: the connection to the master ended; reconnecting in {}s",
            backoff.as_secs()
        );
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn remote_command(options: &WatchOptions, position: &Position) -> Result<String, TryError> {
    let mut words = vec!["watch".to_string(), "--json".to_string()];
    if !options.once {
        words.push("--follow".into());
    }
    if let Some(epoch) = &position.epoch {
        words.extend(["--since".to_string(), format!("{epoch}:{}", position.seq)]);
    }
    words.extend(options.builders.iter().cloned());
    shlex::try_join(words.iter().map(String::as_str))
        .map_err(|_| TryError("a builder name cannot be quoted for the remote command".into()))
}

/// Prints what one connection's stream says, remembering where it is.
fn render(
    input: impl BufRead,
    output: &mut impl Write,
    options: &WatchOptions,
    position: &mut Position,
) -> StreamEnd {
    let mut received = false;
    for line in input.lines().map_while(Result::ok) {
        let Ok(item) = serde_json::from_str::<StreamItem>(&line) else {
            eprintln!("buildbot: the master sent a line this client does not understand: {line}");
            continue;
        };
        received = true;
        let shown = match &item {
            StreamItem::Status { epoch, snapshot } => {
                let resumed = position.epoch.is_some();
                let restarted = position.epoch.as_ref().is_some_and(|seen| seen != epoch);
                if restarted {
                    eprintln!(
                        "buildbot: the master restarted; what happened while it was down is not shown"
                    );
                    position.seq = 0;
                }
                position.epoch = Some(epoch.clone());
                // After a reconnect the events say what changed; the status is not repeated.
                match (resumed, options.json) {
                    (true, _) => None,
                    (false, true) => Some(line.clone()),
                    (false, false) => Some(text::status_lines(snapshot, unix_now())),
                }
            }
            StreamItem::Event(sequenced) => {
                if sequenced.seq <= position.seq {
                    None
                } else {
                    position.seq = sequenced.seq;
                    Some(match options.json {
                        true => serde_json::to_string(sequenced).unwrap_or(line.clone()),
                        false => text::describe_event(&sequenced.event),
                    })
                }
            }
            StreamItem::Missed { count } => Some(match options.json {
                true => line.clone(),
                false => format!("({count} events skipped: this watcher fell behind)"),
            }),
            // Only the waiting commands (`try --wait`, `force --wait`) send these.
            StreamItem::Accepted { .. }
            | StreamItem::Answer { .. }
            | StreamItem::Queued { .. }
            | StreamItem::StepTail(_)
            | StreamItem::Resync { .. } => None,
        };
        if let Some(shown) = shown {
            let shown = shown.trim_end();
            if writeln!(output, "{shown}")
                .and_then(|()| output.flush())
                .is_err()
            {
                return StreamEnd::OutputClosed;
            }
        }
    }
    StreamEnd::Ended { received }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{BuildEvent, SequencedEvent, StatusSnapshot};

    fn status_line(epoch: &str) -> String {
        serde_json::to_string(&StreamItem::Status {
            epoch: epoch.into(),
            snapshot: StatusSnapshot {
                master: "m".into(),
                slaves_connected: 0,
                slaves_configured: 0,
                builders: vec![],
            },
        })
        .expect("serialises")
    }

    fn event_line(seq: u64) -> String {
        serde_json::to_string(&StreamItem::Event(SequencedEvent {
            seq,
            at: 0.0,
            event: BuildEvent::RequestsQueued {
                job_name: format!("job{seq}"),
                builders: vec!["linux".into()],
            },
        }))
        .expect("serialises")
    }

    fn rendered(lines: &[String], options: &WatchOptions, position: &mut Position) -> String {
        let mut out = Vec::new();
        render(
            std::io::Cursor::new(lines.join("\n")),
            &mut out,
            options,
            position,
        );
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn a_resumed_stream_shows_each_event_once_and_no_second_status() {
        let options = WatchOptions {
            json: true,
            ..WatchOptions::default()
        };
        let mut position = Position::default();
        let first = rendered(
            &[status_line("e1"), event_line(1), event_line(2)],
            &options,
            &mut position,
        );
        assert_eq!(first.lines().count(), 3, "{first}");
        assert_eq!(
            remote_command(&options, &position).expect("quoted"),
            "watch --json --follow --since e1:2"
        );
        // The master replays from 3, but a repeated 2 must not show twice.
        let second = rendered(
            &[status_line("e1"), event_line(2), event_line(3)],
            &options,
            &mut position,
        );
        let seqs: Vec<u64> = second
            .lines()
            .map(|line| {
                serde_json::from_str::<SequencedEvent>(line)
                    .expect("an event per line")
                    .seq
            })
            .collect();
        assert_eq!(seqs, vec![3]);
    }

    #[test]
    fn a_restarted_master_starts_the_count_again() {
        let options = WatchOptions::default();
        let mut position = Position {
            epoch: Some("old".into()),
            seq: 40,
        };
        let shown = rendered(
            &[status_line("new"), event_line(1)],
            &options,
            &mut position,
        );
        assert_eq!(shown, "queued for linux\n");
        assert_eq!(position.seq, 1);
    }
}
