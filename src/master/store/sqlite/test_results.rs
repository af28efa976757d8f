//! Test results in SQLite (issue 26): the `test_results` table, one row per test case.
//! A build's cases go in with one prepared statement in one transaction (100,000 in well
//! under a second); a test's history is read through the (name, suite, build) index.

use rusqlite::{Connection, params};

use super::fence_build;
use crate::master::store::model_tests::{
    FailureHistory, FlakyTest, HistoryBuild, TestCase, TestCounts, TestHistoryRow, TestOrder,
    TestOutcome,
};
use crate::master::store::{MasterLease, StoreError};

fn outcome(text: &str) -> Result<TestOutcome, StoreError> {
    TestOutcome::parse(text).ok_or_else(|| StoreError::BadValue(format!("test result {text:?}")))
}

pub(crate) fn record_test_results(
    connection: &mut Connection,
    owner: &MasterLease,
    build_id: i64,
    cases: &[TestCase],
) -> Result<(), StoreError> {
    let transaction = connection.transaction()?;
    fence_build(&transaction, owner, build_id)?;
    let first: i64 = transaction.query_row(
        "SELECT COALESCE(MAX(seq) + 1, 0) FROM test_results WHERE build_id = ?1",
        params![build_id],
        |row| row.get(0),
    )?;
    {
        let mut insert = transaction.prepare(
            "INSERT INTO test_results (build_id, seq, suite, name, result, duration_ms, message, step)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        for (seq, case) in (first..).zip(cases) {
            insert.execute(params![
                build_id,
                seq,
                case.suite,
                case.name,
                case.result.as_str(),
                case.duration_ms,
                case.message,
                case.step
            ])?;
        }
    }
    transaction.commit()?;
    Ok(())
}

pub(crate) fn test_counts(
    connection: &Connection,
    build_id: i64,
) -> Result<TestCounts, StoreError> {
    let mut statement = connection
        .prepare("SELECT result, COUNT(*) FROM test_results WHERE build_id = ?1 GROUP BY result")?;
    let mut counts = TestCounts::default();
    let mut rows = statement.query(params![build_id])?;
    while let Some(row) = rows.next()? {
        let result: String = row.get(0)?;
        counts.add(outcome(&result)?, row.get(1)?);
    }
    Ok(counts)
}

/// The ORDER BY of a page (shared with PostgreSQL's, which spells the same SQL).
pub(crate) fn order_by(order: TestOrder) -> &'static str {
    match order {
        TestOrder::WorstFirst => {
            "CASE result WHEN 'error' THEN 0 WHEN 'failed' THEN 1 WHEN 'skipped' THEN 2 ELSE 3 END, seq"
        }
        TestOrder::Slowest => "duration_ms DESC NULLS LAST, seq",
    }
}

pub(crate) fn build_tests(
    connection: &Connection,
    build_id: i64,
    order: TestOrder,
    failures_only: bool,
    offset: i64,
    limit: i64,
) -> Result<Vec<TestCase>, StoreError> {
    let filter = if failures_only {
        "AND result IN ('failed', 'error')"
    } else {
        ""
    };
    let mut statement = connection.prepare(&format!(
        "SELECT suite, name, result, duration_ms, message, step FROM test_results
         WHERE build_id = ?1 {filter} ORDER BY {} LIMIT ?2 OFFSET ?3",
        order_by(order)
    ))?;
    let mut rows = statement.query(params![build_id, limit, offset])?;
    let mut cases = Vec::new();
    while let Some(row) = rows.next()? {
        let result: String = row.get(2)?;
        cases.push(TestCase {
            suite: row.get(0)?,
            name: row.get(1)?,
            result: outcome(&result)?,
            duration_ms: row.get(3)?,
            message: row.get(4)?,
            step: row.get(5)?,
        });
    }
    Ok(cases)
}

fn history_row(row: &rusqlite::Row<'_>) -> Result<TestHistoryRow, StoreError> {
    let result: String = row.get(7)?;
    Ok(TestHistoryRow {
        suite: row.get(0)?,
        name: row.get(1)?,
        build_id: row.get(2)?,
        number: row.get(3)?,
        branch: row.get(4)?,
        revision: row.get(5)?,
        patched: row.get(6)?,
        result: outcome(&result)?,
        duration_ms: row.get(8)?,
    })
}

pub(crate) fn test_history(
    connection: &Connection,
    builder: &str,
    suite: Option<&str>,
    name: &str,
    limit: i64,
) -> Result<Vec<TestHistoryRow>, StoreError> {
    let mut statement = connection.prepare(
        "SELECT t.suite, t.name, b.id, b.number, COALESCE(r.branch, b.branch), b.revision,
                r.patch IS NOT NULL, t.result, t.duration_ms
         FROM test_results t JOIN builds b ON b.id = t.build_id JOIN requests r ON r.id = b.request_id
         WHERE t.name = ?1 AND (?2 IS NULL OR t.suite = ?2) AND b.builder = ?3
         ORDER BY b.number DESC, t.seq LIMIT ?4",
    )?;
    let mut rows = statement.query(params![name, suite, builder, limit])?;
    let mut history = Vec::new();
    while let Some(row) = rows.next()? {
        history.push(history_row(row)?);
    }
    Ok(history)
}

/// The finished builds with test results of a builder before build `build_id`, newest first.
const WINDOW_BUILDS: &str =
    "SELECT b.id, b.number, COALESCE(r.branch, b.branch), b.revision, r.patch IS NOT NULL
     FROM builds b JOIN requests r ON r.id = b.request_id, builds this
     WHERE this.id = ?1 AND b.builder = this.builder AND b.number < this.number
       AND b.finished_at IS NOT NULL
       AND EXISTS (SELECT 1 FROM test_results t WHERE t.build_id = b.id)
     ORDER BY b.number DESC LIMIT ?2";

pub(crate) fn failure_history(
    connection: &Connection,
    build_id: i64,
    window: i64,
    max_failures: i64,
) -> Result<FailureHistory, StoreError> {
    let mut history = FailureHistory::default();
    let mut statement = connection.prepare(WINDOW_BUILDS)?;
    let mut rows = statement.query(params![build_id, window])?;
    while let Some(row) = rows.next()? {
        history.builds.push(HistoryBuild {
            build_id: row.get(0)?,
            number: row.get(1)?,
            branch: row.get(2)?,
            revision: row.get(3)?,
            patched: row.get(4)?,
        });
    }
    if history.builds.is_empty() {
        return Ok(history);
    }
    // Ids from the database, not from the user: safe to spell into the statement.
    let ids: Vec<String> = history
        .builds
        .iter()
        .map(|b| b.build_id.to_string())
        .collect();
    let mut statement = connection.prepare(&format!(
        "SELECT t.suite, t.name, b.id, b.number, COALESCE(r.branch, b.branch), b.revision,
                r.patch IS NOT NULL, t.result, t.duration_ms
         FROM (SELECT suite, name FROM test_results WHERE build_id = ?1
                 AND result IN ('failed', 'error') ORDER BY seq LIMIT ?2) cur
         JOIN test_results t ON t.name = cur.name AND t.suite = cur.suite
         JOIN builds b ON b.id = t.build_id JOIN requests r ON r.id = b.request_id
         WHERE t.build_id IN ({})",
        ids.join(", ")
    ))?;
    let mut rows = statement.query(params![build_id, max_failures])?;
    while let Some(row) = rows.next()? {
        history.results.push(history_row(row)?);
    }
    Ok(history)
}

pub(crate) fn flaky_tests(
    connection: &Connection,
    builder: &str,
    window: i64,
    limit: i64,
) -> Result<Vec<FlakyTest>, StoreError> {
    let mut statement = connection.prepare(
        "WITH recent AS (
             SELECT b.id FROM builds b WHERE b.builder = ?1 AND b.finished_at IS NOT NULL
               AND EXISTS (SELECT 1 FROM test_results t WHERE t.build_id = b.id)
             ORDER BY b.number DESC LIMIT ?2),
         failing AS (
             SELECT DISTINCT suite, name FROM test_results
             WHERE build_id IN (SELECT id FROM recent) AND result IN ('failed', 'error'))
         SELECT t.suite, t.name,
                SUM(CASE WHEN t.result IN ('failed', 'error') THEN 1 ELSE 0 END) AS failed,
                SUM(CASE WHEN t.result = 'passed' THEN 1 ELSE 0 END) AS passed
         FROM failing f JOIN test_results t ON t.name = f.name AND t.suite = f.suite
         WHERE t.build_id IN (SELECT id FROM recent)
         GROUP BY t.suite, t.name
         HAVING failed > 0 AND passed > 0
         ORDER BY MIN(failed, passed) DESC, failed DESC, t.suite, t.name LIMIT ?3",
    )?;
    let mut rows = statement.query(params![builder, window, limit])?;
    let mut flaky = Vec::new();
    while let Some(row) = rows.next()? {
        flaky.push(FlakyTest {
            suite: row.get(0)?,
            name: row.get(1)?,
            failed: row.get(2)?,
            passed: row.get(3)?,
        });
    }
    Ok(flaky)
}
