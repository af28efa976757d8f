//! The notification outbox in SQLite (issue 28): `outbox_notifications`, one row per (event,
//! notifier, recipient).

use rusqlite::{Connection, params};

use crate::master::store::StoreError;
use crate::master::store::model::now;
use crate::master::store::model_notify::{NewNotification, Notification, OutboxState};

const COLUMNS: &str = "id, event_key, notifier, recipient, payload, give_up_at, state, attempts, next_at, created_at, last_error";

fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(Notification, String)> {
    let state: String = row.get(6)?;
    Ok((
        Notification {
            id: row.get(0)?,
            new: NewNotification {
                event_key: row.get(1)?,
                notifier: row.get(2)?,
                recipient: row.get(3)?,
                payload: row.get(4)?,
                give_up_at: row.get(5)?,
            },
            state: OutboxState::Pending,
            attempts: row.get(7)?,
            next_at: row.get(8)?,
            created_at: row.get(9)?,
            last_error: row.get(10)?,
        },
        state,
    ))
}

fn with_state(
    (mut notification, state): (Notification, String),
) -> Result<Notification, StoreError> {
    notification.state = OutboxState::parse(&state)
        .ok_or_else(|| StoreError::BadValue(format!("notification state {state:?}")))?;
    Ok(notification)
}

pub(crate) fn enqueue(
    connection: &mut Connection,
    notifications: &[NewNotification],
) -> Result<usize, StoreError> {
    let transaction =
        connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let at = now();
    let mut new = 0;
    for n in notifications {
        new += transaction.execute(
            "INSERT INTO outbox_notifications
               (event_key, notifier, recipient, payload, give_up_at, state, attempts, next_at, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 'pending', 0, ?6, ?6)
             ON CONFLICT (event_key, notifier, recipient) DO NOTHING",
            params![n.event_key, n.notifier, n.recipient, n.payload, n.give_up_at, at],
        )?;
    }
    transaction.commit()?;
    Ok(new)
}

pub(crate) fn due(
    connection: &Connection,
    at: f64,
    limit: i64,
) -> Result<Vec<Notification>, StoreError> {
    let mut statement = connection.prepare(&format!(
        "SELECT {COLUMNS} FROM outbox_notifications
         WHERE state = 'pending' AND next_at <= ?1 ORDER BY next_at, id LIMIT ?2"
    ))?;
    let rows = statement.query_map(params![at, limit], from_row)?;
    rows.map(|row| with_state(row?)).collect()
}

pub(crate) fn finish(
    connection: &Connection,
    id: i64,
    state: OutboxState,
    error: Option<&str>,
) -> Result<(), StoreError> {
    connection.execute(
        "UPDATE outbox_notifications SET state = ?2, attempts = attempts + 1,
           last_error = COALESCE(?3, last_error)
         WHERE id = ?1 AND state = 'pending'",
        params![id, state.as_str(), error],
    )?;
    Ok(())
}

pub(crate) fn retry(
    connection: &Connection,
    id: i64,
    error: &str,
    next_at: f64,
) -> Result<(), StoreError> {
    connection.execute(
        "UPDATE outbox_notifications SET attempts = attempts + 1, last_error = ?2, next_at = ?3
         WHERE id = ?1 AND state = 'pending'",
        params![id, error, next_at],
    )?;
    Ok(())
}

pub(crate) fn newest(connection: &Connection, limit: i64) -> Result<Vec<Notification>, StoreError> {
    let mut statement = connection.prepare(&format!(
        "SELECT {COLUMNS} FROM outbox_notifications ORDER BY id DESC LIMIT ?1"
    ))?;
    let rows = statement.query_map(params![limit], from_row)?;
    rows.map(|row| with_state(row?)).collect()
}
