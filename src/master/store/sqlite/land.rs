//! The merge queue in SQLite (migration 15): `land_entries`, one row per submitted series.

use rusqlite::{Connection, OptionalExtension, params};

use crate::master::store::StoreError;
use crate::master::store::model_land::{LandEntry, LandProgress, LandState, NewLand};

const COLUMNS: &str = "id, branch, who, builders, ff_only, head, base, commits, summary, \
     submitted_at, state, job_name, tested_base, tested_sha, landed_sha, reason, attempts, \
     finished_at";

fn entry_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<LandEntry> {
    let builders: String = row.get(3)?;
    let state: String = row.get(10)?;
    Ok(LandEntry {
        id: row.get(0)?,
        branch: row.get(1)?,
        who: row.get(2)?,
        builders: serde_json::from_str(&builders).unwrap_or_default(),
        ff_only: row.get::<_, i64>(4)? != 0,
        head: row.get(5)?,
        base: row.get(6)?,
        commits: row.get(7)?,
        summary: row.get(8)?,
        submitted_at: row.get(9)?,
        // Only this module writes the column, with `as_str`.
        state: LandState::parse(&state).unwrap_or(LandState::Rejected),
        progress: LandProgress {
            job_name: row.get(11)?,
            tested_base: row.get(12)?,
            tested_sha: row.get(13)?,
            landed_sha: row.get(14)?,
            reason: row.get(15)?,
            attempts: row.get(16)?,
            finished_at: row.get(17)?,
        },
    })
}

pub(crate) fn enqueue(
    connection: &mut Connection,
    entry: &NewLand,
) -> Result<(i64, Option<i64>), StoreError> {
    let transaction =
        connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let replaced: Option<i64> = transaction
        .query_row(
            "SELECT id FROM land_entries WHERE branch = ?1 AND who = ?2 AND state = 'queued'
             ORDER BY id LIMIT 1",
            params![entry.branch, entry.who],
            |row| row.get(0),
        )
        .optional()?;
    transaction.execute(
        "INSERT INTO land_entries (branch, who, builders, ff_only, bundle, head, base, commits,
             summary, submitted_at, state, attempts)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'queued', 0)",
        params![
            entry.branch,
            entry.who,
            serde_json::to_string(&entry.builders).unwrap_or_else(|_| "[]".into()),
            i64::from(entry.ff_only),
            entry.bundle,
            entry.head,
            entry.base,
            entry.commits,
            entry.summary,
            entry.submitted_at,
        ],
    )?;
    let id = transaction.last_insert_rowid();
    if let Some(old) = replaced {
        transaction.execute(
            "UPDATE land_entries SET state = 'cancelled', reason = ?2, finished_at = ?3
             WHERE id = ?1",
            params![old, format!("replaced by #{id}"), entry.submitted_at],
        )?;
    }
    transaction.commit()?;
    Ok((id, replaced))
}

pub(crate) fn entries(
    connection: &Connection,
    branch: Option<&str>,
    active: bool,
    limit: i64,
) -> Result<Vec<LandEntry>, StoreError> {
    let sql = if active {
        format!(
            "SELECT {COLUMNS} FROM land_entries
             WHERE (?1 IS NULL OR branch = ?1) AND state IN ('queued', 'testing', 'landing')
             ORDER BY id LIMIT ?2"
        )
    } else {
        format!(
            "SELECT {COLUMNS} FROM land_entries
             WHERE (?1 IS NULL OR branch = ?1) AND state IN ('landed', 'rejected', 'cancelled')
             ORDER BY id DESC LIMIT ?2"
        )
    };
    let mut statement = connection.prepare(&sql)?;
    let rows = statement.query_map(params![branch, limit], entry_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(crate) fn entry(connection: &Connection, id: i64) -> Result<Option<LandEntry>, StoreError> {
    Ok(connection
        .query_row(
            &format!("SELECT {COLUMNS} FROM land_entries WHERE id = ?1"),
            params![id],
            entry_from_row,
        )
        .optional()?)
}

pub(crate) fn bundle(connection: &Connection, id: i64) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(connection
        .query_row(
            "SELECT bundle FROM land_entries WHERE id = ?1",
            params![id],
            |row| row.get(0),
        )
        .optional()?)
}

pub(crate) fn transition(
    connection: &Connection,
    id: i64,
    from: LandState,
    to: LandState,
    progress: &LandProgress,
) -> Result<bool, StoreError> {
    let changed = connection.execute(
        "UPDATE land_entries SET state = ?3, job_name = ?4, tested_base = ?5, tested_sha = ?6,
             landed_sha = ?7, reason = ?8, attempts = ?9, finished_at = ?10
         WHERE id = ?1 AND state = ?2",
        params![
            id,
            from.as_str(),
            to.as_str(),
            progress.job_name,
            progress.tested_base,
            progress.tested_sha,
            progress.landed_sha,
            progress.reason,
            progress.attempts,
            progress.finished_at,
        ],
    )?;
    Ok(changed == 1)
}
