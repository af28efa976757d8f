//! The merge queue in PostgreSQL (migration 15, the same table as SQLite's, `bundle` a BYTEA).
//! Replacing a user's queued entry takes an advisory lock on (branch, user), so two
//! submissions at once still leave one queued entry.

use tokio_postgres::Row;

use super::PgStore;
use super::verbs::lock;
use crate::master::store::StoreError;
use crate::master::store::model_land::{LandEntry, LandProgress, LandState, NewLand};

/// The second half of the advisory lock of a user's entries on a branch.
const LOCK_LAND: i32 = 0x6262_0024;

const COLUMNS: &str = "id, branch, who, builders, ff_only, head, base, commits, summary, \
     submitted_at, state, job_name, tested_base, tested_sha, landed_sha, reason, attempts, \
     finished_at";

fn entry_from_row(row: &Row) -> LandEntry {
    let builders: String = row.get(3);
    let state: String = row.get(10);
    LandEntry {
        id: row.get(0),
        branch: row.get(1),
        who: row.get(2),
        builders: serde_json::from_str(&builders).unwrap_or_default(),
        ff_only: row.get(4),
        head: row.get(5),
        base: row.get(6),
        commits: row.get(7),
        summary: row.get(8),
        submitted_at: row.get(9),
        // Only this module writes the column, with `as_str`.
        state: LandState::parse(&state).unwrap_or(LandState::Rejected),
        progress: LandProgress {
            job_name: row.get(11),
            tested_base: row.get(12),
            tested_sha: row.get(13),
            landed_sha: row.get(14),
            reason: row.get(15),
            attempts: row.get(16),
            finished_at: row.get(17),
        },
    }
}

impl PgStore {
    pub(super) async fn land_insert(
        &self,
        entry: NewLand,
    ) -> Result<(i64, Option<i64>), StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        lock(
            &transaction,
            LOCK_LAND,
            &format!("{}\n{}", entry.branch, entry.who),
        )
        .await?;
        let replaced: Option<i64> = transaction
            .query_opt(
                "SELECT id FROM land_entries WHERE branch = $1 AND who = $2 AND state = 'queued'
                 ORDER BY id LIMIT 1",
                &[&entry.branch, &entry.who],
            )
            .await?
            .map(|row| row.get(0));
        let builders = serde_json::to_string(&entry.builders).unwrap_or_else(|_| "[]".into());
        let row = transaction
            .query_one(
                "INSERT INTO land_entries (branch, who, builders, ff_only, bundle, head, base,
                     commits, summary, submitted_at, state, attempts)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'queued', 0) RETURNING id",
                &[
                    &entry.branch,
                    &entry.who,
                    &builders,
                    &entry.ff_only,
                    &entry.bundle,
                    &entry.head,
                    &entry.base,
                    &entry.commits,
                    &entry.summary,
                    &entry.submitted_at,
                ],
            )
            .await?;
        let id: i64 = row.get(0);
        if let Some(old) = replaced {
            transaction
                .execute(
                    "UPDATE land_entries SET state = 'cancelled', reason = $2, finished_at = $3
                     WHERE id = $1",
                    &[&old, &format!("replaced by #{id}"), &entry.submitted_at],
                )
                .await?;
        }
        transaction.commit().await?;
        Ok((id, replaced))
    }

    pub(super) async fn land_list(
        &self,
        branch: Option<String>,
        active: bool,
        limit: i64,
    ) -> Result<Vec<LandEntry>, StoreError> {
        let sql = if active {
            format!(
                "SELECT {COLUMNS} FROM land_entries
                 WHERE ($1::TEXT IS NULL OR branch = $1) AND state IN ('queued', 'testing', 'landing')
                 ORDER BY id LIMIT $2"
            )
        } else {
            format!(
                "SELECT {COLUMNS} FROM land_entries
                 WHERE ($1::TEXT IS NULL OR branch = $1) AND state IN ('landed', 'rejected', 'cancelled')
                 ORDER BY id DESC LIMIT $2"
            )
        };
        let rows = self.client().await?.query(&sql, &[&branch, &limit]).await?;
        Ok(rows.iter().map(entry_from_row).collect())
    }

    pub(super) async fn land_one(&self, id: i64) -> Result<Option<LandEntry>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                &format!("SELECT {COLUMNS} FROM land_entries WHERE id = $1"),
                &[&id],
            )
            .await?;
        Ok(row.as_ref().map(entry_from_row))
    }

    pub(super) async fn land_bundle_of(&self, id: i64) -> Result<Option<Vec<u8>>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT bundle FROM land_entries WHERE id = $1", &[&id])
            .await?;
        Ok(row.map(|row| row.get(0)))
    }

    pub(super) async fn land_move(
        &self,
        id: i64,
        from: LandState,
        to: LandState,
        progress: LandProgress,
    ) -> Result<bool, StoreError> {
        let changed = self
            .client()
            .await?
            .execute(
                "UPDATE land_entries SET state = $3, job_name = $4, tested_base = $5,
                     tested_sha = $6, landed_sha = $7, reason = $8, attempts = $9,
                     finished_at = $10
                 WHERE id = $1 AND state = $2",
                &[
                    &id,
                    &from.as_str(),
                    &to.as_str(),
                    &progress.job_name,
                    &progress.tested_base,
                    &progress.tested_sha,
                    &progress.landed_sha,
                    &progress.reason,
                    &progress.attempts,
                    &progress.finished_at,
                ],
            )
            .await?;
        Ok(changed == 1)
    }
}
