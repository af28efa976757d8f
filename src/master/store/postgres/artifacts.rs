//! Artifacts in PostgreSQL (migration 20): metadata, and the bytes in 1 MiB chunks, so every
//! master of the cluster serves an artifact whichever master received it.

use super::PgStore;
use super::cluster::fence_build;
use crate::master::store::model::MasterLease;
use crate::master::store::{ArtifactRow, BUILD_CHILDREN, NewArtifact, PrunePart, StoreError};
use crate::status::RequestState;

fn number(value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Task(format!("artifact number {value} too large")))
}

impl PgStore {
    pub(super) async fn put_artifact_chunk_in(
        &self,
        owner: &MasterLease,
        build_id: i64,
        path: &str,
        seq: u64,
        data: Vec<u8>,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        fence_build(&transaction, owner, build_id).await?;
        transaction
            .execute(
                "INSERT INTO artifact_chunks (build_id, path, seq, data) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (build_id, path, seq) DO UPDATE SET data = excluded.data",
                &[&build_id, &path, &number(seq)?, &data],
            )
            .await?;
        transaction.commit().await?;
        Ok(())
    }

    pub(super) async fn record_artifact_in(
        &self,
        owner: &MasterLease,
        artifact: &NewArtifact,
        in_store: bool,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        fence_build(&transaction, owner, artifact.build_id).await?;
        transaction
            .execute(
                "INSERT INTO artifact_files (build_id, step, path, size, sha256, created_at, in_store)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (build_id, path) DO UPDATE SET step = excluded.step,
                   size = excluded.size, sha256 = excluded.sha256,
                   created_at = excluded.created_at, in_store = excluded.in_store",
                &[
                    &artifact.build_id,
                    &artifact.step,
                    &artifact.path,
                    &number(artifact.size)?,
                    &artifact.sha256,
                    &crate::master::store::now(),
                    &in_store,
                ],
            )
            .await?;
        transaction.commit().await?;
        Ok(())
    }

    pub(super) async fn artifacts_of_in(
        &self,
        build_id: i64,
    ) -> Result<Vec<ArtifactRow>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT build_id, step, path, size, sha256, created_at, in_store
                 FROM artifact_files WHERE build_id = $1 ORDER BY path",
                &[&build_id],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| ArtifactRow {
                build_id: row.get(0),
                step: row.get(1),
                path: row.get(2),
                size: u64::try_from(row.get::<_, i64>(3)).unwrap_or(0),
                sha256: row.get(4),
                created_at: row.get(5),
                in_store: row.get(6),
            })
            .collect())
    }

    pub(super) async fn artifact_chunk_in(
        &self,
        build_id: i64,
        path: &str,
        seq: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT data FROM artifact_chunks WHERE build_id = $1 AND path = $2 AND seq = $3",
                &[&build_id, &path, &number(seq)?],
            )
            .await?;
        Ok(row.map(|row| row.get(0)))
    }

    pub(super) async fn prune_candidates_in(
        &self,
        builder: &str,
        part: PrunePart,
        finished_before: f64,
        keep_last: i64,
        limit: i64,
    ) -> Result<Vec<(i64, i64)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT b.id, b.number FROM builds b
                 WHERE b.builder = $1 AND b.finished_at IS NOT NULL AND b.finished_at < $2
                   AND b.number <= (SELECT MAX(number) FROM builds WHERE builder = $1) - $3
                   AND NOT EXISTS (SELECT 1 FROM artifact_pruned p
                                   WHERE p.build_id = b.id AND p.part = $4)
                 ORDER BY b.number LIMIT $5",
                &[
                    &builder,
                    &finished_before,
                    &keep_last,
                    &part.as_str(),
                    &limit,
                ],
            )
            .await?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    pub(super) async fn prune_build_part_in(
        &self,
        build_id: i64,
        part: PrunePart,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        match part {
            PrunePart::Artifacts => {
                transaction
                    .execute(
                        "DELETE FROM artifact_chunks WHERE build_id = $1",
                        &[&build_id],
                    )
                    .await?;
                transaction
                    .execute(
                        "DELETE FROM artifact_files WHERE build_id = $1",
                        &[&build_id],
                    )
                    .await?;
            }
            PrunePart::Logs => {
                transaction
                    .execute("DELETE FROM log_chunks WHERE build_id = $1", &[&build_id])
                    .await?;
            }
        }
        transaction
            .execute(
                "INSERT INTO artifact_pruned (build_id, part, pruned_at) VALUES ($1, $2, $3)
                 ON CONFLICT (build_id, part) DO NOTHING",
                &[&build_id, &part.as_str(), &crate::master::store::now()],
            )
            .await?;
        transaction.commit().await?;
        Ok(())
    }

    pub(super) async fn old_builds_in(
        &self,
        builder: &str,
        finished_before: f64,
        keep_last: i64,
        now: f64,
        limit: i64,
    ) -> Result<Vec<(i64, i64)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT b.id, b.number FROM builds b
                 WHERE b.builder = $1 AND b.finished_at IS NOT NULL AND b.finished_at < $2
                   AND b.number <= (SELECT MAX(number) FROM builds WHERE builder = $1)
                                   - GREATEST($3::BIGINT, 1)
                   AND NOT EXISTS (SELECT 1 FROM shell_holds h
                                   WHERE h.build_id = b.id AND h.held_until > $4)
                 ORDER BY b.number LIMIT $5",
                &[&builder, &finished_before, &keep_last, &now, &limit],
            )
            .await?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    pub(super) async fn delete_build_in(&self, build_id: i64) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        // Locked: a build being deleted is not read half-gone by another master's writer.
        let Some(build) = transaction
            .query_opt(
                "SELECT builder, number, request_id FROM builds
                 WHERE id = $1 AND finished_at IS NOT NULL
                 FOR UPDATE",
                &[&build_id],
            )
            .await?
        else {
            return Ok(());
        };
        let (builder, number, request_id): (String, i64, i64) =
            (build.get(0), build.get(1), build.get(2));
        for table in BUILD_CHILDREN {
            transaction
                .execute(
                    &format!("DELETE FROM {table} WHERE build_id = $1"),
                    &[&build_id],
                )
                .await?;
        }
        // Pending ones stay: they still go out, and carry what they say in their payload.
        transaction
            .execute(
                "DELETE FROM outbox_notifications
                 WHERE event_key = $1 AND state IN ('delivered', 'given_up')",
                &[&crate::master::store::build_event_key(&builder, number)],
            )
            .await?;
        transaction
            .execute("DELETE FROM builds WHERE id = $1", &[&build_id])
            .await?;
        // The request (and its patch) goes with its last build, once it is done or cancelled:
        // a request retried after a lost slave, or queued again, still has a build to come.
        let request_gone = "NOT EXISTS (SELECT 1 FROM builds WHERE request_id = $1)
             AND EXISTS (SELECT 1 FROM requests WHERE id = $1 AND state IN ($2, $3))";
        let (done, cancelled) = (
            RequestState::Done.as_str(),
            RequestState::Cancelled.as_str(),
        );
        transaction
            .execute(
                &format!("DELETE FROM request_changes WHERE request_id = $1 AND {request_gone}"),
                &[&request_id, &done, &cancelled],
            )
            .await?;
        transaction
            .execute(
                &format!("DELETE FROM requests WHERE id = $1 AND {request_gone}"),
                &[&request_id, &done, &cancelled],
            )
            .await?;
        transaction.commit().await?;
        Ok(())
    }

    /// See `Store::delete_cancelled_requests`.
    pub(super) async fn delete_cancelled_requests_in(
        &self,
        submitted_before: f64,
        limit: i64,
    ) -> Result<u64, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        // Locked and skipped when busy: a request being looked at elsewhere waits for the
        // next round.
        let doomed: Vec<i64> = transaction
            .query(
                "SELECT r.id FROM requests r
                 WHERE r.state = $1 AND r.submitted_at < $2
                   AND NOT EXISTS (SELECT 1 FROM builds b WHERE b.request_id = r.id)
                 ORDER BY r.id LIMIT $3
                 FOR UPDATE SKIP LOCKED",
                &[&RequestState::Cancelled.as_str(), &submitted_before, &limit],
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        transaction
            .execute(
                "DELETE FROM request_changes WHERE request_id = ANY($1)",
                &[&doomed],
            )
            .await?;
        let deleted = transaction
            .execute("DELETE FROM requests WHERE id = ANY($1)", &[&doomed])
            .await?;
        transaction.commit().await?;
        Ok(deleted)
    }
}
