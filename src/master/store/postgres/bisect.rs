//! Bisections in PostgreSQL (issue 28): the same table as SQLite's.

use super::PgStore;
use super::verbs::text;
use crate::master::store::StoreError;
use crate::master::store::model_bisect::BisectRow;

impl PgStore {
    pub(super) async fn bisect_save(&self, row: BisectRow) -> Result<i64, StoreError> {
        let client = self.client().await?;
        if row.id == 0 {
            let inserted = client
                .query_one(
                    "INSERT INTO bisect_runs (builder, branch, good, bad, state, culprit, builds,
                       summary, plan, started_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
                    &[
                        &text(&row.builder),
                        &text(&row.branch),
                        &text(&row.good),
                        &text(&row.bad),
                        &text(&row.state),
                        &row.culprit.as_deref().map(text),
                        &row.builds,
                        &text(&row.summary),
                        &text(&row.plan),
                        &row.started_at,
                    ],
                )
                .await?;
            return Ok(inserted.try_get(0)?);
        }
        client
            .execute(
                "UPDATE bisect_runs SET state = $2, culprit = $3, builds = $4, summary = $5,
                   plan = $6
                 WHERE id = $1",
                &[
                    &row.id,
                    &text(&row.state),
                    &row.culprit.as_deref().map(text),
                    &row.builds,
                    &text(&row.summary),
                    &text(&row.plan),
                ],
            )
            .await?;
        Ok(row.id)
    }

    pub(super) async fn bisect_newest(&self, limit: i64) -> Result<Vec<BisectRow>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, builder, branch, good, bad, state, culprit, builds, summary, plan,
                   started_at
                 FROM bisect_runs ORDER BY id DESC LIMIT $1",
                &[&limit],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(BisectRow {
                    id: row.try_get(0)?,
                    builder: row.try_get(1)?,
                    branch: row.try_get(2)?,
                    good: row.try_get(3)?,
                    bad: row.try_get(4)?,
                    state: row.try_get(5)?,
                    culprit: row.try_get(6)?,
                    builds: row.try_get(7)?,
                    summary: row.try_get(8)?,
                    plan: row.try_get(9)?,
                    started_at: row.try_get(10)?,
                })
            })
            .collect()
    }
}
