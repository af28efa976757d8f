//! The notification outbox as the store keeps it (issue 28): one row per (event, notifier,
//! recipient), written when the event happens and delivered later by the leading master, so a
//! restart or an unreachable server delays a notification, never loses or repeats it.

/// A notification to keep until it is delivered or given up.
#[derive(Debug, Clone, PartialEq)]
pub struct NewNotification {
    /// Names the event (`build:linux:12`, `culprit:3`): the same event is kept once per
    /// notifier and recipient, however many masters or restarts record it.
    pub event_key: String,
    /// The `[[notifier]]` it goes through (its `name`).
    pub notifier: String,
    /// A mail address, or the webhook's URL.
    pub recipient: String,
    /// What to send: for mail `{"subject", "body"}`, for a webhook the JSON body itself.
    pub payload: String,
    /// Unix time after which delivery is no longer tried.
    pub give_up_at: f64,
}

/// Where a kept notification stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxState {
    Pending,
    Delivered,
    GivenUp,
}

impl OutboxState {
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxState::Pending => "pending",
            OutboxState::Delivered => "delivered",
            OutboxState::GivenUp => "given_up",
        }
    }

    pub fn parse(word: &str) -> Option<OutboxState> {
        [
            OutboxState::Pending,
            OutboxState::Delivered,
            OutboxState::GivenUp,
        ]
        .into_iter()
        .find(|state| state.as_str() == word)
    }
}

/// A kept notification.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub id: i64,
    pub new: NewNotification,
    pub state: OutboxState,
    /// Delivery attempts so far.
    pub attempts: i64,
    /// Unix time of the next attempt (when pending).
    pub next_at: f64,
    pub created_at: f64,
    /// What the last failed attempt said.
    pub last_error: Option<String>,
}
