//! Changes in the history: each change sent or polled, which requests built it, and the heads a
//! poller last saw per branch (so a restarted master neither misses nor repeats a push).

use rusqlite::{Connection, OptionalExtension, params};

use super::{properties_from_json, properties_json};
use crate::change::ChangeSpec;
use crate::master::store::StoreError;
use crate::master::store::model::{Recorded, StoredChange, now};

const CHANGE_COLUMNS: &str =
    "id, repository, branch, revision, who, comments, files, properties, received_at, sent_by";

fn change_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredChange> {
    let files: String = row.get(6)?;
    Ok(StoredChange {
        id: row.get(0)?,
        repository: row.get(1)?,
        branch: row.get(2)?,
        revision: row.get(3)?,
        who: row.get(4)?,
        comments: row.get(5)?,
        files: serde_json::from_str(&files).unwrap_or_default(),
        properties: properties_from_json(&row.get::<_, String>(7)?),
        received_at: row.get(8)?,
        sent_by: row.get(9)?,
    })
}

/// Records a change unless its revision on its repository and branch is recorded already,
/// whichever way it came: one revision is one change. The look-up and the insert are one
/// transaction, so two arrivals at once still make one change.
pub(crate) fn record_change(
    connection: &mut Connection,
    change: &ChangeSpec,
    sent_by: &str,
) -> Result<Recorded, StoreError> {
    let transaction =
        connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let known = transaction
        .query_row(
            &format!(
                "SELECT {CHANGE_COLUMNS} FROM changes
                 WHERE repository = ?1 AND branch = ?2 AND revision = ?3 ORDER BY id LIMIT 1"
            ),
            params![change.repository, change.branch, change.revision],
            change_from_row,
        )
        .optional()?;
    if let Some(known) = known {
        return Ok(Recorded::Known(known));
    }
    let stored = insert_change(&transaction, change, sent_by)?;
    transaction.commit()?;
    Ok(Recorded::New(stored))
}

/// Records a change as it is; returns it with its id.
fn insert_change(
    connection: &Connection,
    change: &ChangeSpec,
    sent_by: &str,
) -> Result<StoredChange, StoreError> {
    let received_at = now();
    let files = serde_json::to_string(&change.files).unwrap_or_else(|_| "[]".into());
    connection.execute(
        "INSERT INTO changes (repository, branch, revision, who, comments, files, properties, received_at, sent_by)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            change.repository,
            change.branch,
            change.revision,
            change.who,
            change.comments,
            files,
            properties_json(&change.properties),
            received_at,
            sent_by
        ],
    )?;
    Ok(StoredChange {
        id: connection.last_insert_rowid(),
        repository: change.repository.clone(),
        branch: change.branch.clone(),
        revision: change.revision.clone(),
        who: change.who.clone(),
        comments: change.comments.clone(),
        files: change.files.clone(),
        properties: change.properties.clone(),
        received_at,
        sent_by: sent_by.to_string(),
    })
}

/// The most recent changes, newest first.
pub(crate) fn recent_changes(
    connection: &Connection,
    limit: i64,
) -> Result<Vec<StoredChange>, StoreError> {
    let mut statement = connection.prepare(&format!(
        "SELECT {CHANGE_COLUMNS} FROM changes ORDER BY id DESC LIMIT ?1"
    ))?;
    let rows = statement.query_map(params![limit], change_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// One change by id.
pub(crate) fn change_by_id(
    connection: &Connection,
    id: i64,
) -> Result<Option<StoredChange>, StoreError> {
    Ok(connection
        .query_row(
            &format!("SELECT {CHANGE_COLUMNS} FROM changes WHERE id = ?1"),
            params![id],
            change_from_row,
        )
        .optional()?)
}

/// The changes a request builds, oldest first.
pub(crate) fn changes_of_request(
    connection: &Connection,
    request_id: i64,
) -> Result<Vec<StoredChange>, StoreError> {
    let mut statement = connection.prepare(&format!(
        "SELECT {CHANGE_COLUMNS} FROM changes WHERE id IN
           (SELECT change_id FROM request_changes WHERE request_id = ?1) ORDER BY id"
    ))?;
    let rows = statement.query_map(params![request_id], change_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Links more changes to a request (a collapsed request takes over the merged ones' changes).
pub(crate) fn link_changes(
    connection: &Connection,
    request_id: i64,
    change_ids: &[i64],
) -> Result<(), StoreError> {
    for change_id in change_ids {
        connection.execute(
            "INSERT OR IGNORE INTO request_changes (request_id, change_id) VALUES (?1, ?2)",
            params![request_id, change_id],
        )?;
    }
    Ok(())
}

pub(crate) fn change_ids_of(
    connection: &Connection,
    request_id: i64,
) -> Result<Vec<i64>, StoreError> {
    let mut statement = connection.prepare(
        "SELECT change_id FROM request_changes WHERE request_id = ?1 ORDER BY change_id",
    )?;
    let rows = statement.query_map(params![request_id], |row| row.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// (builder, number) of the builds of requests that built `change_id`.
pub(crate) fn builds_of_change(
    connection: &Connection,
    change_id: i64,
) -> Result<Vec<(String, i64)>, StoreError> {
    let mut statement = connection.prepare(
        "SELECT b.builder, b.number FROM builds b JOIN request_changes rc ON rc.request_id = b.request_id
         WHERE rc.change_id = ?1 ORDER BY b.id",
    )?;
    let rows = statement.query_map(params![change_id], |row| Ok((row.get(0)?, row.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Every head a poller saw in `repository`.
pub(crate) fn poll_heads(
    connection: &Connection,
    repository: &str,
) -> Result<Vec<(String, String)>, StoreError> {
    let mut statement =
        connection.prepare("SELECT branch, revision FROM poll_heads WHERE repository = ?1")?;
    let rows = statement.query_map(params![repository], |row| Ok((row.get(0)?, row.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(crate) fn set_poll_head(
    connection: &Connection,
    repository: &str,
    branch: &str,
    revision: &str,
) -> Result<(), StoreError> {
    connection.execute(
        "INSERT INTO poll_heads (repository, branch, revision) VALUES (?1, ?2, ?3)
         ON CONFLICT (repository, branch) DO UPDATE SET revision = excluded.revision",
        params![repository, branch, revision],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::store::sqlite::SqliteStore;

    #[test]
    fn changes_and_poll_heads_are_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let history = SqliteStore::open(&dir.path().join("state.sqlite")).expect("open");
        history
            .with(|connection| {
                let spec = ChangeSpec {
                    repository: "/r.git".into(),
                    branch: "main".into(),
                    revision: "0123456789abcdef0123456789abcdef01234567".into(),
                    who: Some("alice".into()),
                    comments: None,
                    files: vec!["src/a.rs".into()],
                    properties: Default::default(),
                };
                let Recorded::New(stored) = record_change(connection, &spec, "alice")? else {
                    panic!("the first arrival is new");
                };
                assert_eq!(recent_changes(connection, 10)?, vec![stored.clone()]);
                // The same revision from a poller is the same change; another branch is not.
                let polled = ChangeSpec {
                    who: None,
                    files: Vec::new(),
                    ..spec.clone()
                };
                assert_eq!(
                    record_change(connection, &polled, "poller /r.git")?,
                    Recorded::Known(stored.clone())
                );
                let elsewhere = ChangeSpec {
                    branch: "release".into(),
                    ..spec.clone()
                };
                assert!(matches!(
                    record_change(connection, &elsewhere, "alice")?,
                    Recorded::New(_)
                ));
                assert_eq!(recent_changes(connection, 10)?.len(), 2);
                assert!(poll_heads(connection, "/r.git")?.is_empty());
                set_poll_head(connection, "/r.git", "main", "abc")?;
                set_poll_head(connection, "/r.git", "main", "def")?;
                assert_eq!(
                    poll_heads(connection, "/r.git")?,
                    vec![("main".to_string(), "def".to_string())]
                );
                Ok(())
            })
            .expect("works");
    }
}
