//! Held builds and their shell sessions in SQLite (migration 19).

use rusqlite::{Connection, OptionalExtension, params};

use super::fence_build;
use crate::master::store::{MasterLease, ShellHold, ShellSession, StoreError};

fn env_json(env: &[(String, String)]) -> String {
    serde_json::to_string(env).unwrap_or_else(|_| "[]".into())
}

fn env_from_json(text: &str) -> Vec<(String, String)> {
    serde_json::from_str(text).unwrap_or_default()
}

pub(crate) fn hold_build(
    connection: &mut Connection,
    owner: &MasterLease,
    hold: &ShellHold,
) -> Result<(), StoreError> {
    let transaction = connection.transaction()?;
    fence_build(&transaction, owner, hold.build_id)?;
    transaction.execute(
        "INSERT INTO shell_holds (build_id, builder, number, slave, dir, env, owner, held_until)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (build_id) DO UPDATE SET held_until = excluded.held_until",
        params![
            hold.build_id,
            hold.builder,
            hold.number,
            hold.slave,
            hold.dir,
            env_json(&hold.env),
            hold.owner,
            hold.held_until
        ],
    )?;
    transaction.commit()?;
    Ok(())
}

pub(crate) fn shell_hold(
    connection: &Connection,
    builder: &str,
    number: i64,
) -> Result<Option<ShellHold>, StoreError> {
    Ok(connection
        .query_row(
            "SELECT build_id, builder, number, slave, dir, env, owner, held_until
             FROM shell_holds WHERE builder = ?1 AND number = ?2",
            params![builder, number],
            |row| {
                Ok(ShellHold {
                    build_id: row.get(0)?,
                    builder: row.get(1)?,
                    number: row.get(2)?,
                    slave: row.get(3)?,
                    dir: row.get(4)?,
                    env: env_from_json(&row.get::<_, String>(5)?),
                    owner: row.get(6)?,
                    held_until: row.get(7)?,
                })
            },
        )
        .optional()?)
}

pub(crate) fn held_dirs(
    connection: &Connection,
    slave: &str,
    builder: &str,
    after: f64,
) -> Result<Vec<String>, StoreError> {
    let mut statement = connection.prepare(
        "SELECT DISTINCT dir FROM shell_holds
         WHERE slave = ?1 AND builder = ?2 AND held_until > ?3 ORDER BY dir",
    )?;
    let dirs = statement
        .query_map(params![slave, builder, after], |row| row.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    Ok(dirs)
}

pub(crate) fn set_held_until(
    connection: &Connection,
    build_id: i64,
    until: f64,
) -> Result<(), StoreError> {
    connection.execute(
        "UPDATE shell_holds SET held_until = ?2 WHERE build_id = ?1",
        params![build_id, until],
    )?;
    Ok(())
}

pub(crate) fn start_shell_session(
    connection: &Connection,
    session: &ShellSession,
) -> Result<i64, StoreError> {
    connection.execute(
        "INSERT INTO shell_sessions (build_id, who, from_addr, master, started_at, ended_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            session.build_id,
            session.who,
            session.from_addr,
            session.master,
            session.started_at,
            session.ended_at
        ],
    )?;
    Ok(connection.last_insert_rowid())
}

pub(crate) fn end_shell_session(
    connection: &mut Connection,
    id: i64,
    at: f64,
) -> Result<i64, StoreError> {
    let transaction = connection.transaction()?;
    transaction.execute(
        "UPDATE shell_sessions SET ended_at = ?2 WHERE id = ?1 AND ended_at IS NULL",
        params![id, at],
    )?;
    let open: i64 = transaction.query_row(
        "SELECT COUNT(*) FROM shell_sessions WHERE ended_at IS NULL
           AND build_id = (SELECT build_id FROM shell_sessions WHERE id = ?1)",
        params![id],
        |row| row.get(0),
    )?;
    transaction.commit()?;
    Ok(open)
}

pub(crate) fn shell_sessions(
    connection: &Connection,
    build_id: i64,
) -> Result<Vec<ShellSession>, StoreError> {
    let mut statement = connection.prepare(
        "SELECT id, build_id, who, from_addr, master, started_at, ended_at
         FROM shell_sessions WHERE build_id = ?1 ORDER BY id",
    )?;
    let sessions = statement
        .query_map(params![build_id], |row| {
            Ok(ShellSession {
                id: row.get(0)?,
                build_id: row.get(1)?,
                who: row.get(2)?,
                from_addr: row.get(3)?,
                master: row.get(4)?,
                started_at: row.get(5)?,
                ended_at: row.get(6)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(sessions)
}
