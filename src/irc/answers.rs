//! The answers to the commands that ask the control layer (status, last, queue, force, stop),
//! rendered as IRC lines. What each action means and who may do it is decided in
//! `master::control`; here the typed answers and refusals become words.

use std::time::Duration;

use crate::durations::format_eta;
use crate::master::control::{Control, ControlError, ForceRequest};
use crate::status::{text, unix_now};
use crate::unix::accounts::UnixAccount;

/// Lines to say, and where the rest is when they are too many.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub lines: Vec<String>,
    pub more_at: String,
}

impl Answer {
    pub fn line(line: String, more_at: &str) -> Answer {
        Answer {
            lines: vec![line],
            more_at: more_at.to_string(),
        }
    }

    /// At most `max_lines`: a longer answer keeps its first lines and ends with where the rest is.
    pub fn cut(mut self, max_lines: usize) -> Vec<String> {
        let max_lines = max_lines.max(1);
        if self.lines.len() <= max_lines {
            return self.lines;
        }
        let kept = max_lines - 1;
        let more = self.lines.len() - kept;
        self.lines.truncate(kept);
        self.lines
            .push(format!("... {more} more lines: {}", self.more_at));
        self.lines
    }
}

/// A refusal as one line: `ControlError`'s own, with the bot's syntax for naming a build.
pub fn refusal(err: &ControlError) -> String {
    let line = err.user_line();
    match err {
        ControlError::Ambiguous { builder, .. } => format!("{line}: stop build {builder} N REASON"),
        _ => line,
    }
}

pub async fn status(control: &Control, builder: Option<String>) -> Answer {
    let only: Vec<String> = builder.into_iter().collect();
    let url = format!("{}/", control.web_url());
    let snapshot = match control.status(&only) {
        Ok(snapshot) => snapshot,
        Err(err) => return Answer::line(refusal(&err), &url),
    };
    let now = unix_now();
    let lines = snapshot
        .builders
        .iter()
        .map(|builder| {
            format!(
                "{}: {}, {} queued",
                builder.name,
                text::describe_activity(builder, now),
                builder.queued
            )
        })
        .collect::<Vec<_>>();
    if lines.is_empty() {
        return Answer::line("no builders".to_string(), &url);
    }
    Answer {
        lines,
        more_at: url,
    }
}

pub async fn last(control: &Control, builder: &str) -> Answer {
    let url = control.builder_url(builder);
    match control.last_finished_build(builder).await {
        Ok(Some(build)) => {
            let finished = build.finished_at.unwrap_or(build.started_at);
            let ago = format_eta(Duration::from_secs_f64((unix_now() - finished).max(0.0)));
            let took = format_eta(Duration::from_secs_f64(
                (finished - build.started_at).max(0.0),
            ));
            let result = build
                .result
                .map_or("unknown".to_string(), |result| result.to_string());
            let reason = build
                .reason
                .map(|reason| format!(": {reason}"))
                .unwrap_or_default();
            Answer::line(
                format!(
                    "{builder} #{}: {result}{reason}, {ago} ago (took {took}) {}",
                    build.number,
                    control.build_url(builder, build.number)
                ),
                &url,
            )
        }
        Ok(None) => Answer::line(format!("{builder} has no finished builds yet"), &url),
        Err(err) => Answer::line(refusal(&err), &url),
    }
}

pub async fn queue(control: &Control, builder: &str) -> Answer {
    let url = control.builder_url(builder);
    match control.queue_estimates(builder).await {
        Ok(estimates) if estimates.is_empty() => {
            Answer::line(format!("{builder}: nothing queued"), &url)
        }
        Ok(estimates) => Answer {
            lines: estimates
                .iter()
                .map(|estimate| {
                    format!(
                        "request {}: {}",
                        estimate.request_id,
                        text::describe_queued(
                            builder,
                            estimate.position,
                            estimate.starts_in,
                            estimate.waiting_for_lock.as_deref(),
                        )
                    )
                })
                .collect(),
            more_at: url,
        },
        Err(err) => Answer::line(refusal(&err), &url),
    }
}

pub async fn force(
    control: &Control,
    account: &UnixAccount,
    builder: &str,
    force: ForceRequest,
) -> Answer {
    let url = control.builder_url(builder);
    match control.force(account, builder, force).await {
        Ok(queued) => Answer::line(
            format!(
                "{}: forced build queued as request {} (by {})",
                queued.builder, queued.request_id, account.name
            ),
            &url,
        ),
        Err(err) => Answer::line(refusal(&err), &url),
    }
}

pub async fn stop(
    control: &Control,
    account: &UnixAccount,
    builder: &str,
    number: Option<i64>,
    reason: &str,
) -> Answer {
    let url = control.builder_url(builder);
    match control.stop_build(account, builder, number, reason).await {
        Ok(stopped) => match stopped.result {
            Some(result) => Answer::line(
                format!(
                    "{builder} #{}: {result} (stopped by {}: {reason})",
                    stopped.number, account.name
                ),
                &url,
            ),
            None => Answer::line(
                format!(
                    "asked {builder} #{} to stop; it has not finished yet",
                    stopped.number
                ),
                &url,
            ),
        },
        Err(err) => Answer::line(refusal(&err), &url),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_answers_are_cut_with_a_pointer_to_the_rest() {
        let answer = Answer {
            lines: (1..=20).map(|n| format!("line {n}")).collect(),
            more_at: "http://m/".into(),
        };
        let cut = answer.clone().cut(5);
        assert_eq!(cut.len(), 5);
        assert_eq!(cut[3], "line 4");
        assert_eq!(cut[4], "... 16 more lines: http://m/");
        assert_eq!(answer.clone().cut(20).len(), 20);
        assert_eq!(answer.cut(0).len(), 1);
    }
}
