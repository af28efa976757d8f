//! The notification outbox in PostgreSQL (issue 28): the same table as SQLite's.

use tokio_postgres::Row;

use super::PgStore;
use super::verbs::text;
use crate::master::store::StoreError;
use crate::master::store::model::now;
use crate::master::store::model_notify::{NewNotification, Notification, OutboxState};

const COLUMNS: &str = "id, event_key, notifier, recipient, payload, give_up_at, state, attempts, next_at, created_at, last_error";

fn from_row(row: &Row) -> Result<Notification, StoreError> {
    let state: String = row.try_get(6)?;
    Ok(Notification {
        id: row.try_get(0)?,
        new: NewNotification {
            event_key: row.try_get(1)?,
            notifier: row.try_get(2)?,
            recipient: row.try_get(3)?,
            payload: row.try_get(4)?,
            give_up_at: row.try_get(5)?,
        },
        state: OutboxState::parse(&state)
            .ok_or_else(|| StoreError::BadValue(format!("notification state {state:?}")))?,
        attempts: row.try_get(7)?,
        next_at: row.try_get(8)?,
        created_at: row.try_get(9)?,
        last_error: row.try_get(10)?,
    })
}

impl PgStore {
    pub(super) async fn outbox_enqueue(
        &self,
        notifications: Vec<NewNotification>,
    ) -> Result<usize, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        let at = now();
        let mut new = 0;
        for n in &notifications {
            new += transaction
                .execute(
                    "INSERT INTO outbox_notifications
                       (event_key, notifier, recipient, payload, give_up_at, state, attempts,
                        next_at, created_at)
                     VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $6)
                     ON CONFLICT (event_key, notifier, recipient) DO NOTHING",
                    &[
                        &text(&n.event_key),
                        &text(&n.notifier),
                        &text(&n.recipient),
                        &text(&n.payload),
                        &n.give_up_at,
                        &at,
                    ],
                )
                .await?;
        }
        transaction.commit().await?;
        Ok(usize::try_from(new).unwrap_or(usize::MAX))
    }

    pub(super) async fn outbox_due(
        &self,
        at: f64,
        limit: i64,
    ) -> Result<Vec<Notification>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM outbox_notifications
                     WHERE state = 'pending' AND next_at <= $1 ORDER BY next_at, id LIMIT $2"
                ),
                &[&at, &limit],
            )
            .await?;
        rows.iter().map(from_row).collect()
    }

    pub(super) async fn outbox_finish(
        &self,
        id: i64,
        state: OutboxState,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "UPDATE outbox_notifications SET state = $2, attempts = attempts + 1,
                   last_error = COALESCE($3, last_error)
                 WHERE id = $1 AND state = 'pending'",
                &[&id, &state.as_str(), &error.map(text)],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn outbox_retry(
        &self,
        id: i64,
        error: &str,
        next_at: f64,
    ) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "UPDATE outbox_notifications SET attempts = attempts + 1, last_error = $2,
                   next_at = $3
                 WHERE id = $1 AND state = 'pending'",
                &[&id, &text(error), &next_at],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn outbox_newest(&self, limit: i64) -> Result<Vec<Notification>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                &format!("SELECT {COLUMNS} FROM outbox_notifications ORDER BY id DESC LIMIT $1"),
                &[&limit],
            )
            .await?;
        rows.iter().map(from_row).collect()
    }
}
