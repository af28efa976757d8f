//! Notifications by mail and webhook (issue 28), through a persistent outbox.
//!
//! Two tasks. [`record`] runs on every master: it follows the event log and, for each event a
//! `[[notifier]]` wants (a build failed, broke or was fixed; a culprit was named; a series
//! landed), keeps one outbox row per notifier and recipient in the store, keyed by the event
//! (`build:linux:12`), so the same event recorded by several masters, or again after a restart,
//! is kept once. [`deliver`] runs on the leading master only: it sends what is due, marks it
//! delivered, retries failures with backoff (1 s doubling to 5 min) and gives up, with a log
//! line, on a permanent refusal (an SMTP 5xx, an HTTP 4xx) or once the notifier's `give_up`
//! time has passed. A master killed between sending and marking sends that one again: at
//! least once, never lost.

mod mail;
mod render;
mod webhook;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::master::config::{NotifierConfig, NotifierEvent, NotifierKind};
use crate::master::control::Control;
use crate::master::events::Followed;
use crate::master::store::{NewNotification, Notification, OutboxState, now};
use crate::status::{BuildEvent, BuildResult, SequencedEvent};

pub use render::Rendered;

/// How an attempt went wrong.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Worth another attempt later (no answer, a timeout, a 5xx HTTP answer, an SMTP 4xx).
    #[error("{0}")]
    Transient(String),
    /// The server refused for good (an HTTP 4xx, an SMTP 5xx, an address it will not take).
    #[error("{0}")]
    Permanent(String),
}

/// The first retry waits this long, each next one twice as long, up to the notifier's
/// `retry_max`.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// A notification whose notifier is gone is looked at again this much later.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How often the outbox is looked at for what is due.
const POLL: Duration = Duration::from_secs(1);
/// At most this many notifications are taken per look.
const BATCH: i64 = 50;

fn backoff(attempts: i64, max: Duration) -> Duration {
    let doublings = u32::try_from(attempts.clamp(0, 20)).unwrap_or(20);
    FIRST_BACKOFF
        .saturating_mul(2u32.saturating_pow(doublings))
        .min(max)
}

/// The notifier words an event is, given (for a finished build) the result before it.
pub fn words_of(event: &BuildEvent, previous: Option<BuildResult>) -> Vec<NotifierEvent> {
    let good = |result: BuildResult| matches!(result, BuildResult::Success | BuildResult::Warnings);
    match event {
        BuildEvent::BuildFinished {
            result,
            will_retry: false,
            ..
        } => {
            let mut words = Vec::new();
            if *result == BuildResult::Failure {
                words.push(NotifierEvent::Failure);
                if previous.is_some_and(good) {
                    words.push(NotifierEvent::Broken);
                }
            }
            if good(*result) && previous == Some(BuildResult::Failure) {
                words.push(NotifierEvent::Fixed);
            }
            words
        }
        BuildEvent::Landed { .. } => vec![NotifierEvent::Landed],
        BuildEvent::CulpritFound { .. } => vec![NotifierEvent::Culprit],
        _ => Vec::new(),
    }
}

/// The event's type as `/api/events` names it.
pub fn event_type(event: &BuildEvent) -> String {
    serde_json::to_value(event)
        .ok()
        .and_then(|value| value.get("type")?.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The builder an event is about, if any.
fn builder_of(event: &BuildEvent) -> Option<String> {
    serde_json::to_value(event)
        .ok()
        .and_then(|value| value.get("builder")?.as_str().map(str::to_string))
}

/// Follows the event log and keeps, in the outbox, what each notifier wants of it.
pub async fn record(control: Arc<Control>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut follower = control.follow();
    loop {
        let followed = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            followed = follower.next() => followed,
        };
        match followed {
            Followed::Event(event) => {
                if control.config().notifiers.is_empty() {
                    continue;
                }
                if let Err(err) = record_event(&control, &event).await {
                    tracing::warn!("notification of event {} not recorded: {err:#}", event.seq);
                }
            }
            Followed::Missed(count) => {
                tracing::warn!("the notifier fell {count} events behind; those are not notified");
            }
            Followed::Closed => return Ok(()),
        }
    }
}

async fn record_event(control: &Control, sequenced: &SequencedEvent) -> anyhow::Result<()> {
    let event = &sequenced.event;
    let previous = match event {
        BuildEvent::BuildFinished {
            builder,
            number,
            will_retry: false,
            ..
        } => control.result_before(builder, *number).await?,
        BuildEvent::BuildFinished { .. } => return Ok(()),
        _ => None,
    };
    let mut words = words_of(event, previous);
    let builder = builder_of(event);
    let config = control.config();
    let concerned = |notifier: &&NotifierConfig| match &builder {
        Some(builder) => notifier.builders.is_empty() || notifier.builders.contains(builder),
        None => true,
    };
    if !config
        .notifiers
        .iter()
        .filter(concerned)
        .any(|notifier| words.iter().any(|word| notifier.events.contains(word)))
    {
        return Ok(());
    }
    let rendered = render::render(control, sequenced, previous).await?;
    if rendered.patch_build {
        // A try build's patch is not on the branch: it neither breaks nor fixes it.
        words.retain(|word| *word == NotifierEvent::Failure);
    }
    let wanted: Vec<(&NotifierConfig, NotifierEvent)> = config
        .notifiers
        .iter()
        .filter(concerned)
        // The most telling word the notifier wants: "broken" says more than "failure".
        .filter_map(|notifier| {
            words
                .iter()
                .rev()
                .find(|word| notifier.events.contains(word))
                .map(|word| (notifier, *word))
        })
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let mut notes = Vec::new();
    for (notifier, word) in wanted {
        let give_up_at = now() + notifier.give_up.as_secs_f64();
        match &notifier.kind {
            NotifierKind::Mail(mail) => {
                let payload = serde_json::json!({
                    "subject": rendered.subject(word),
                    "body": rendered.body(word),
                })
                .to_string();
                for recipient in rendered.recipients(&notifier.to, mail.user_domain.as_deref()) {
                    notes.push(NewNotification {
                        event_key: rendered.key.clone(),
                        notifier: notifier.name.clone(),
                        recipient,
                        payload: payload.clone(),
                        give_up_at,
                    });
                }
            }
            NotifierKind::Webhook(webhook) => notes.push(NewNotification {
                event_key: rendered.key.clone(),
                notifier: notifier.name.clone(),
                recipient: webhook.url.clone(),
                payload: rendered.webhook_body(word),
                give_up_at,
            }),
        }
    }
    let new = control.store().enqueue_notifications(notes).await?;
    if new > 0 {
        tracing::info!("{new} notification(s) of {} kept to send", rendered.key);
    }
    Ok(())
}

/// Sends what the outbox holds, as it falls due, until `shutdown` (run while leading).
pub async fn deliver(control: Arc<Control>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let http = webhook::client()?;
    loop {
        if control.config().notifiers.is_empty() {
            // Nothing can be sent; what is kept waits for a config that names its notifier.
        } else {
            match control.store().due_notifications(now(), BATCH).await {
                Ok(due) => {
                    for notification in due {
                        if shutdown.is_cancelled() {
                            return Ok(());
                        }
                        if let Err(err) = attempt(&control, &http, &notification, &shutdown).await {
                            tracing::warn!(
                                "notification {} not updated in the store: {err}",
                                notification.id
                            );
                        }
                    }
                }
                Err(err) => tracing::warn!("cannot read the notification outbox: {err}"),
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

async fn attempt(
    control: &Control,
    http: &reqwest::Client,
    notification: &Notification,
    shutdown: &CancellationToken,
) -> Result<(), crate::master::store::StoreError> {
    let store = control.store();
    let what = format!(
        "{} to {} ({})",
        notification.new.event_key, notification.new.recipient, notification.new.notifier
    );
    let config = control.config();
    let Some(notifier) = config
        .notifiers
        .iter()
        .find(|notifier| notifier.name == notification.new.notifier)
    else {
        if now() >= notification.new.give_up_at {
            tracing::warn!("gave up notification {what}: no [[notifier]] of that name any more");
            return store
                .finish_notification(
                    notification.id,
                    OutboxState::GivenUp,
                    Some("no notifier of that name"),
                )
                .await;
        }
        // A reconfig may bring it back; look again later.
        return store
            .retry_notification(
                notification.id,
                "no notifier of that name",
                now() + MAX_BACKOFF.as_secs_f64(),
            )
            .await;
    };
    let sent = tokio::select! {
        // Stopping mid-send: not marked, so the next leader sends it (at least once).
        () = shutdown.cancelled() => return Ok(()),
        sent = tokio::time::timeout(notifier.timeout, send(notifier, http, notification)) => sent,
    };
    let sent = sent.unwrap_or_else(|_| {
        Err(SendError::Transient(format!(
            "no answer within {}",
            humantime::format_duration(notifier.timeout)
        )))
    });
    match sent {
        Ok(()) => {
            tracing::info!("sent notification {what}");
            store
                .finish_notification(notification.id, OutboxState::Delivered, None)
                .await
        }
        Err(SendError::Permanent(reason)) => {
            tracing::warn!("gave up notification {what}: {reason}");
            store
                .finish_notification(notification.id, OutboxState::GivenUp, Some(&reason))
                .await
        }
        Err(SendError::Transient(reason)) => {
            let next_at = now() + backoff(notification.attempts, notifier.retry_max).as_secs_f64();
            if next_at > notification.new.give_up_at {
                tracing::warn!(
                    "gave up notification {what} after {} attempts: {reason}",
                    notification.attempts + 1
                );
                store
                    .finish_notification(notification.id, OutboxState::GivenUp, Some(&reason))
                    .await
            } else {
                tracing::info!("notification {what} not sent yet ({reason}); trying again later");
                store
                    .retry_notification(notification.id, &reason, next_at)
                    .await
            }
        }
    }
}

async fn send(
    notifier: &NotifierConfig,
    http: &reqwest::Client,
    notification: &Notification,
) -> Result<(), SendError> {
    match &notifier.kind {
        NotifierKind::Mail(mail) => mail::send(mail, notifier.timeout, notification).await,
        NotifierKind::Webhook(hook) => {
            webhook::send(http, hook, notifier.timeout, notification).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(result: BuildResult) -> BuildEvent {
        BuildEvent::BuildFinished {
            job_name: "j".into(),
            builder: "linux".into(),
            number: 2,
            result,
            reason: None,
            will_retry: false,
        }
    }

    #[test]
    fn a_finished_build_is_failure_broken_or_fixed_by_what_came_before() {
        use BuildResult::*;
        use NotifierEvent as N;
        assert_eq!(
            words_of(&finished(Failure), Some(Success)),
            [N::Failure, N::Broken]
        );
        assert_eq!(words_of(&finished(Failure), Some(Failure)), [N::Failure]);
        assert_eq!(words_of(&finished(Failure), None), [N::Failure]);
        assert_eq!(words_of(&finished(Success), Some(Failure)), [N::Fixed]);
        assert!(words_of(&finished(Success), Some(Success)).is_empty());
        assert!(words_of(&finished(Exception), Some(Success)).is_empty());
        let retried = BuildEvent::BuildFinished {
            job_name: "j".into(),
            builder: "linux".into(),
            number: 2,
            result: Failure,
            reason: None,
            will_retry: true,
        };
        assert!(words_of(&retried, Some(Success)).is_empty());
    }

    #[test]
    fn retries_back_off_doubling_to_a_cap() {
        assert_eq!(backoff(0, MAX_BACKOFF), Duration::from_secs(1));
        assert_eq!(backoff(3, MAX_BACKOFF), Duration::from_secs(8));
        assert_eq!(backoff(40, MAX_BACKOFF), MAX_BACKOFF);
        assert_eq!(backoff(40, Duration::from_secs(2)), Duration::from_secs(2));
    }
}
