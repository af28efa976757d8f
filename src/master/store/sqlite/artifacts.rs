//! Artifacts in SQLite (migration 20): metadata, and chunks when asked to keep bytes (a single
//! master keeps them on its disk, so only the conformance suite stores chunks here).

use rusqlite::{Connection, OptionalExtension, params};

use super::fence_build;
use crate::master::store::model::MasterLease;
use crate::master::store::{ArtifactRow, BUILD_CHILDREN, NewArtifact, PrunePart, StoreError};
use crate::status::RequestState;

fn number(value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Task(format!("artifact number {value} too large")))
}

pub(super) fn put_chunk(
    connection: &mut Connection,
    owner: &MasterLease,
    build_id: i64,
    path: &str,
    seq: u64,
    data: &[u8],
) -> Result<(), StoreError> {
    let transaction = connection.transaction()?;
    fence_build(&transaction, owner, build_id)?;
    transaction.execute(
        "INSERT INTO artifact_chunks (build_id, path, seq, data) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (build_id, path, seq) DO UPDATE SET data = excluded.data",
        params![build_id, path, number(seq)?, data],
    )?;
    transaction.commit()?;
    Ok(())
}

pub(super) fn record(
    connection: &mut Connection,
    owner: &MasterLease,
    artifact: &NewArtifact,
    in_store: bool,
) -> Result<(), StoreError> {
    let transaction = connection.transaction()?;
    fence_build(&transaction, owner, artifact.build_id)?;
    transaction.execute(
        "INSERT INTO artifact_files (build_id, step, path, size, sha256, created_at, in_store)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (build_id, path) DO UPDATE SET step = excluded.step, size = excluded.size,
           sha256 = excluded.sha256, created_at = excluded.created_at,
           in_store = excluded.in_store",
        params![
            artifact.build_id,
            artifact.step,
            artifact.path,
            number(artifact.size)?,
            artifact.sha256,
            crate::master::store::now(),
            in_store
        ],
    )?;
    transaction.commit()?;
    Ok(())
}

pub(super) fn of_build(
    connection: &Connection,
    build_id: i64,
) -> Result<Vec<ArtifactRow>, StoreError> {
    let mut statement = connection.prepare(
        "SELECT build_id, step, path, size, sha256, created_at, in_store FROM artifact_files
         WHERE build_id = ?1 ORDER BY path",
    )?;
    let rows = statement.query_map(params![build_id], |row| {
        Ok(ArtifactRow {
            build_id: row.get(0)?,
            step: row.get(1)?,
            path: row.get(2)?,
            size: u64::try_from(row.get::<_, i64>(3)?).unwrap_or(0),
            sha256: row.get(4)?,
            created_at: row.get(5)?,
            in_store: row.get(6)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(super) fn chunk(
    connection: &Connection,
    build_id: i64,
    path: &str,
    seq: u64,
) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(connection
        .query_row(
            "SELECT data FROM artifact_chunks WHERE build_id = ?1 AND path = ?2 AND seq = ?3",
            params![build_id, path, number(seq)?],
            |row| row.get(0),
        )
        .optional()?)
}

pub(super) fn prune_candidates(
    connection: &Connection,
    builder: &str,
    part: PrunePart,
    finished_before: f64,
    keep_last: i64,
    limit: i64,
) -> Result<Vec<(i64, i64)>, StoreError> {
    let mut statement = connection.prepare(
        "SELECT b.id, b.number FROM builds b
         WHERE b.builder = ?1 AND b.finished_at IS NOT NULL AND b.finished_at < ?2
           AND b.number <= (SELECT MAX(number) FROM builds WHERE builder = ?1) - ?3
           AND NOT EXISTS (SELECT 1 FROM artifact_pruned p WHERE p.build_id = b.id AND p.part = ?4)
         ORDER BY b.number LIMIT ?5",
    )?;
    let rows = statement.query_map(
        params![builder, finished_before, keep_last, part.as_str(), limit],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(super) fn prune_build_part(
    connection: &mut Connection,
    build_id: i64,
    part: PrunePart,
) -> Result<(), StoreError> {
    let transaction = connection.transaction()?;
    match part {
        PrunePart::Artifacts => {
            transaction.execute(
                "DELETE FROM artifact_chunks WHERE build_id = ?1",
                params![build_id],
            )?;
            transaction.execute(
                "DELETE FROM artifact_files WHERE build_id = ?1",
                params![build_id],
            )?;
        }
        PrunePart::Logs => {
            transaction.execute(
                "DELETE FROM log_chunks WHERE build_id = ?1",
                params![build_id],
            )?;
        }
    }
    transaction.execute(
        "INSERT INTO artifact_pruned (build_id, part, pruned_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (build_id, part) DO NOTHING",
        params![build_id, part.as_str(), crate::master::store::now()],
    )?;
    transaction.commit()?;
    Ok(())
}

pub(super) fn old_builds(
    connection: &Connection,
    builder: &str,
    finished_before: f64,
    keep_last: i64,
    now: f64,
    limit: i64,
) -> Result<Vec<(i64, i64)>, StoreError> {
    let mut statement = connection.prepare(
        "SELECT b.id, b.number FROM builds b
         WHERE b.builder = ?1 AND b.finished_at IS NOT NULL AND b.finished_at < ?2
           AND b.number <= (SELECT MAX(number) FROM builds WHERE builder = ?1) - MAX(?3, 1)
           AND NOT EXISTS (SELECT 1 FROM shell_holds h
                           WHERE h.build_id = b.id AND h.held_until > ?4)
         ORDER BY b.number LIMIT ?5",
    )?;
    let rows = statement.query_map(
        params![builder, finished_before, keep_last, now, limit],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(super) fn delete_build(connection: &mut Connection, build_id: i64) -> Result<(), StoreError> {
    let transaction = connection.transaction()?;
    let build: Option<(String, i64, i64)> = transaction
        .query_row(
            "SELECT builder, number, request_id FROM builds
             WHERE id = ?1 AND finished_at IS NOT NULL",
            params![build_id],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .optional()?;
    let Some((builder, number, request_id)) = build else {
        return Ok(());
    };
    for table in BUILD_CHILDREN {
        transaction.execute(
            &format!("DELETE FROM {table} WHERE build_id = ?1"),
            params![build_id],
        )?;
    }
    // Pending ones stay: they still go out, and carry what they say in their payload.
    transaction.execute(
        "DELETE FROM outbox_notifications
         WHERE event_key = ?1 AND state IN ('delivered', 'given_up')",
        params![crate::master::store::build_event_key(&builder, number)],
    )?;
    transaction.execute("DELETE FROM builds WHERE id = ?1", params![build_id])?;
    // The request (and its patch) goes with its last build, once it is done or cancelled: a
    // request retried after a lost slave, or queued again, still has a build to come.
    let request_gone = "NOT EXISTS (SELECT 1 FROM builds WHERE request_id = ?1)
         AND EXISTS (SELECT 1 FROM requests WHERE id = ?1 AND state IN (?2, ?3))";
    let ended = params![request_id, RequestState::Done, RequestState::Cancelled];
    transaction.execute(
        &format!("DELETE FROM request_changes WHERE request_id = ?1 AND {request_gone}"),
        ended,
    )?;
    transaction.execute(
        &format!("DELETE FROM requests WHERE id = ?1 AND {request_gone}"),
        ended,
    )?;
    transaction.commit()?;
    Ok(())
}

/// See `Store::delete_cancelled_requests`.
pub(super) fn delete_cancelled_requests(
    connection: &mut Connection,
    submitted_before: f64,
    limit: i64,
) -> Result<u64, StoreError> {
    let transaction = connection.transaction()?;
    let doomed: Vec<i64> = transaction
        .prepare(
            "SELECT r.id FROM requests r
             WHERE r.state = ?1 AND r.submitted_at < ?2
               AND NOT EXISTS (SELECT 1 FROM builds b WHERE b.request_id = r.id)
             ORDER BY r.id LIMIT ?3",
        )?
        .query_map(
            params![RequestState::Cancelled, submitted_before, limit],
            |row| row.get(0),
        )?
        .collect::<Result<_, _>>()?;
    for id in &doomed {
        transaction.execute(
            "DELETE FROM request_changes WHERE request_id = ?1",
            params![id],
        )?;
        transaction.execute("DELETE FROM requests WHERE id = ?1", params![id])?;
    }
    transaction.commit()?;
    Ok(doomed.len() as u64)
}
