//! Bisections in SQLite (issue 28): `bisect_runs`.

use rusqlite::{Connection, params};

use crate::master::store::StoreError;
use crate::master::store::model_bisect::BisectRow;

pub(crate) fn save(connection: &Connection, row: &BisectRow) -> Result<i64, StoreError> {
    if row.id == 0 {
        connection.execute(
            "INSERT INTO bisect_runs (builder, branch, good, bad, state, culprit, builds, summary,
               plan, started_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                row.builder,
                row.branch,
                row.good,
                row.bad,
                row.state,
                row.culprit,
                row.builds,
                row.summary,
                row.plan,
                row.started_at
            ],
        )?;
        return Ok(connection.last_insert_rowid());
    }
    connection.execute(
        "UPDATE bisect_runs SET state = ?2, culprit = ?3, builds = ?4, summary = ?5, plan = ?6
         WHERE id = ?1",
        params![
            row.id,
            row.state,
            row.culprit,
            row.builds,
            row.summary,
            row.plan
        ],
    )?;
    Ok(row.id)
}

pub(crate) fn newest(connection: &Connection, limit: i64) -> Result<Vec<BisectRow>, StoreError> {
    let mut statement = connection.prepare(
        "SELECT id, builder, branch, good, bad, state, culprit, builds, summary, plan, started_at
         FROM bisect_runs ORDER BY id DESC LIMIT ?1",
    )?;
    let rows = statement.query_map(params![limit], |row| {
        Ok(BisectRow {
            id: row.get(0)?,
            builder: row.get(1)?,
            branch: row.get(2)?,
            good: row.get(3)?,
            bad: row.get(4)?,
            state: row.get(5)?,
            culprit: row.get(6)?,
            builds: row.get(7)?,
            summary: row.get(8)?,
            plan: row.get(9)?,
            started_at: row.get(10)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
