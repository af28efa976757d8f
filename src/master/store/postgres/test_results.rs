//! Test results in PostgreSQL (issue 26): the same `test_results` table as SQLite's. A
//! build's cases go in with one binary COPY inside the fenced transaction, so 100,000 rows
//! are one round trip of data rather than 100,000 statements.

use futures_util::pin_mut;
use tokio_postgres::Row;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

use super::PgStore;
use super::cluster::fence_build;
use crate::master::store::model_tests::{
    FailureHistory, FlakyTest, HistoryBuild, TestCase, TestCounts, TestHistoryRow, TestOrder,
    TestOutcome,
};
use crate::master::store::sqlite::test_results::order_by;
use crate::master::store::{MasterLease, StoreError};

fn outcome(text: &str) -> Result<TestOutcome, StoreError> {
    TestOutcome::parse(text).ok_or_else(|| StoreError::BadValue(format!("test result {text:?}")))
}

fn history_row(row: &Row) -> Result<TestHistoryRow, StoreError> {
    Ok(TestHistoryRow {
        suite: row.get(0),
        name: row.get(1),
        build_id: row.get(2),
        number: row.get(3),
        branch: row.get(4),
        revision: row.get(5),
        patched: row.get(6),
        result: outcome(row.get(7))?,
        duration_ms: row.get(8),
    })
}

const HISTORY_COLUMNS: &str =
    "t.suite, t.name, b.id, b.number, COALESCE(r.branch, b.branch), b.revision,
     r.patch IS NOT NULL, t.result, t.duration_ms";

impl PgStore {
    pub(super) async fn insert_test_results(
        &self,
        owner: &MasterLease,
        build_id: i64,
        cases: Vec<TestCase>,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        fence_build(&transaction, owner, build_id).await?;
        let first: i64 = transaction
            .query_one(
                "SELECT COALESCE(MAX(seq) + 1, 0) FROM test_results WHERE build_id = $1",
                &[&build_id],
            )
            .await?
            .get(0);
        let sink = transaction
            .copy_in(
                "COPY test_results (build_id, seq, suite, name, result, duration_ms, message, step)
                 FROM STDIN (FORMAT binary)",
            )
            .await?;
        let writer = BinaryCopyInWriter::new(
            sink,
            &[
                Type::INT8,
                Type::INT8,
                Type::TEXT,
                Type::TEXT,
                Type::TEXT,
                Type::INT8,
                Type::TEXT,
                Type::INT8,
            ],
        );
        pin_mut!(writer);
        for (seq, case) in (first..).zip(&cases) {
            writer
                .as_mut()
                .write(&[
                    &build_id,
                    &seq,
                    &case.suite,
                    &case.name,
                    &case.result.as_str(),
                    &case.duration_ms,
                    &case.message,
                    &case.step,
                ])
                .await?;
        }
        writer.finish().await?;
        transaction.commit().await?;
        Ok(())
    }

    pub(super) async fn count_tests(&self, build_id: i64) -> Result<TestCounts, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT result, COUNT(*) FROM test_results WHERE build_id = $1 GROUP BY result",
                &[&build_id],
            )
            .await?;
        let mut counts = TestCounts::default();
        for row in rows {
            counts.add(outcome(row.get(0))?, row.get(1));
        }
        Ok(counts)
    }

    pub(super) async fn page_tests(
        &self,
        build_id: i64,
        order: TestOrder,
        failures_only: bool,
        offset: i64,
        limit: i64,
    ) -> Result<Vec<TestCase>, StoreError> {
        let client = self.client().await?;
        let filter = if failures_only {
            "AND result IN ('failed', 'error')"
        } else {
            ""
        };
        let rows = client
            .query(
                &format!(
                    "SELECT suite, name, result, duration_ms, message, step FROM test_results
                     WHERE build_id = $1 {filter} ORDER BY {} LIMIT $2 OFFSET $3",
                    order_by(order)
                ),
                &[&build_id, &limit, &offset],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(TestCase {
                    suite: row.get(0),
                    name: row.get(1),
                    result: outcome(row.get(2))?,
                    duration_ms: row.get(3),
                    message: row.get(4),
                    step: row.get(5),
                })
            })
            .collect()
    }

    pub(super) async fn history_of_test(
        &self,
        builder: &str,
        suite: Option<String>,
        name: &str,
        limit: i64,
    ) -> Result<Vec<TestHistoryRow>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {HISTORY_COLUMNS}
                     FROM test_results t JOIN builds b ON b.id = t.build_id
                     JOIN requests r ON r.id = b.request_id
                     WHERE t.name = $1 AND ($2::TEXT IS NULL OR t.suite = $2) AND b.builder = $3
                     ORDER BY b.number DESC, t.seq LIMIT $4"
                ),
                &[&name, &suite, &builder, &limit],
            )
            .await?;
        rows.iter().map(history_row).collect()
    }

    pub(super) async fn history_of_failures(
        &self,
        build_id: i64,
        window: i64,
        max_failures: i64,
    ) -> Result<FailureHistory, StoreError> {
        let client = self.client().await?;
        let mut history = FailureHistory::default();
        let rows = client
            .query(
                "SELECT b.id, b.number, COALESCE(r.branch, b.branch), b.revision, r.patch IS NOT NULL
                 FROM builds b JOIN requests r ON r.id = b.request_id, builds this
                 WHERE this.id = $1 AND b.builder = this.builder AND b.number < this.number
                   AND b.finished_at IS NOT NULL
                   AND EXISTS (SELECT 1 FROM test_results t WHERE t.build_id = b.id)
                 ORDER BY b.number DESC LIMIT $2",
                &[&build_id, &window],
            )
            .await?;
        for row in rows {
            history.builds.push(HistoryBuild {
                build_id: row.get(0),
                number: row.get(1),
                branch: row.get(2),
                revision: row.get(3),
                patched: row.get(4),
            });
        }
        if history.builds.is_empty() {
            return Ok(history);
        }
        let ids: Vec<i64> = history.builds.iter().map(|b| b.build_id).collect();
        let rows = client
            .query(
                &format!(
                    "SELECT {HISTORY_COLUMNS}
                     FROM (SELECT suite, name FROM test_results WHERE build_id = $1
                             AND result IN ('failed', 'error') ORDER BY seq LIMIT $2) cur
                     JOIN test_results t ON t.name = cur.name AND t.suite = cur.suite
                     JOIN builds b ON b.id = t.build_id JOIN requests r ON r.id = b.request_id
                     WHERE t.build_id = ANY($3)"
                ),
                &[&build_id, &max_failures, &ids],
            )
            .await?;
        for row in &rows {
            history.results.push(history_row(row)?);
        }
        Ok(history)
    }

    pub(super) async fn mixed_tests(
        &self,
        builder: &str,
        window: i64,
        limit: i64,
    ) -> Result<Vec<FlakyTest>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "WITH recent AS (
                     SELECT b.id FROM builds b WHERE b.builder = $1 AND b.finished_at IS NOT NULL
                       AND EXISTS (SELECT 1 FROM test_results t WHERE t.build_id = b.id)
                     ORDER BY b.number DESC LIMIT $2),
                 failing AS (
                     SELECT DISTINCT suite, name FROM test_results
                     WHERE build_id IN (SELECT id FROM recent) AND result IN ('failed', 'error'))
                 SELECT t.suite, t.name,
                        COUNT(*) FILTER (WHERE t.result IN ('failed', 'error')) AS failed,
                        COUNT(*) FILTER (WHERE t.result = 'passed') AS passed
                 FROM failing f JOIN test_results t ON t.name = f.name AND t.suite = f.suite
                 WHERE t.build_id IN (SELECT id FROM recent)
                 GROUP BY t.suite, t.name
                 HAVING COUNT(*) FILTER (WHERE t.result IN ('failed', 'error')) > 0
                    AND COUNT(*) FILTER (WHERE t.result = 'passed') > 0
                 ORDER BY LEAST(COUNT(*) FILTER (WHERE t.result IN ('failed', 'error')),
                                COUNT(*) FILTER (WHERE t.result = 'passed')) DESC,
                          failed DESC, t.suite, t.name
                 LIMIT $3",
                &[&builder, &window, &limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| FlakyTest {
                suite: row.get(0),
                name: row.get(1),
                failed: row.get(2),
                passed: row.get(3),
            })
            .collect())
    }
}
