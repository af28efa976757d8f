//! The [`Store`] verbs in PostgreSQL: the same statements as the SQLite backend where the two
//! dialects agree, with a transaction wherever SQLite has one and an advisory lock wherever a
//! decision reads before it writes.

use std::collections::BTreeMap;
use std::str::FromStr;

use tokio_postgres::types::ToSql;
use tokio_postgres::{IsolationLevel, Row};

use super::cluster::{end_builds_where, fence, fence_build, notify_requests};
use super::{LOCK_BUILDER, LOCK_JOB, LOCK_REVISION, PgStore};
use crate::change::ChangeSpec;
use crate::master::store::model::{
    BuildDetail, BuildRef, BuildRow, LostMaster, MasterInfo, MasterLease, MasterRow, NewRequest,
    Recorded, StepRow, StoredChange, StoredRequest, StoredSession, now,
};
use crate::master::store::model_land::{LandEntry, LandProgress, LandState, NewLand};
use crate::master::store::{NewNotification, Notification, OutboxState};
use crate::master::store::{Store, StoreError};
use crate::status::{BuildResult, JobRecord, LastBuild, RequestState};

const REQUEST_COLUMNS: &str = "r.id, r.job_name, r.jobid, r.builder, r.who, r.comment, r.repository, r.branch, r.baserev, r.patch, r.patch_level, r.submitted_at, r.properties, r.kind, r.reason";

const BUILD_COLUMNS: &str =
    "b.id, b.builder, b.number, b.slave, b.started_at, b.finished_at, b.result, b.reason";

const CHANGE_COLUMNS: &str = "c.id, c.repository, c.branch, c.revision, c.who, c.comments, c.files, c.properties, c.received_at, c.sent_by";

/// Waits (inside the caller's transaction, released at its end) until no other transaction
/// decides about the same `subject` under the same `purpose`. A hash collision only makes two
/// unrelated decisions take turns.
pub(super) async fn lock(
    transaction: &tokio_postgres::Transaction<'_>,
    purpose: i32,
    subject: &str,
) -> Result<(), StoreError> {
    transaction
        .execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&purpose, &text(subject)],
        )
        .await?;
    Ok(())
}

/// A progress mark on the way to a build's result (a step started or finished, what was
/// checked out): committed without waiting for the WAL flush, as SQLite's `synchronous=NORMAL`
/// marks are. A crash of the database server may lose the last of them, never a crash of a
/// master; the next durable commit (a request recorded, a build finished) flushes them too.
/// A flush per mark cost a trivial build most of its time (bench/results-issue-23.md).
pub(super) async fn relaxed(
    transaction: &tokio_postgres::Transaction<'_>,
) -> Result<(), StoreError> {
    transaction
        .batch_execute("SET LOCAL synchronous_commit = off")
        .await?;
    Ok(())
}

/// A result, state or kind stored by its one spelling.
fn named<T>(row: &Row, index: usize) -> Result<T, StoreError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    let text: &str = row.try_get(index)?;
    text.parse()
        .map_err(|err: T::Err| StoreError::BadValue(err.to_string()))
}

fn named_opt<T>(row: &Row, index: usize) -> Result<Option<T>, StoreError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    let text: Option<&str> = row.try_get(index)?;
    text.map(|text| {
        text.parse()
            .map_err(|err: T::Err| StoreError::BadValue(err.to_string()))
    })
    .transpose()
}

/// Text as PostgreSQL can keep it. It refuses NUL in text, which SQLite keeps and which can
/// arrive (a step's summary of binary output, a comment sent with a change): U+FFFD stands in
/// for it, written and looked up alike, rather than the whole verb failing.
pub(super) fn text(value: &str) -> String {
    value.replace('\0', "\u{fffd}")
}

fn opt_text(value: Option<&str>) -> Option<String> {
    value.map(text)
}

/// A `LIMIT` as SQLite reads it: a negative one is no limit (`LIMIT NULL` in PostgreSQL, which
/// would refuse a negative one).
pub(super) fn no_limit_if_negative(limit: i64) -> Option<i64> {
    (limit >= 0).then_some(limit)
}

fn properties_json(properties: &BTreeMap<String, String>) -> String {
    serde_json::to_string(properties).unwrap_or_else(|_| "{}".to_string())
}

/// Properties as stored; a value that is not a JSON object of strings reads as none (as in
/// SQLite).
fn properties_from_json(text: &str) -> BTreeMap<String, String> {
    serde_json::from_str(text).unwrap_or_default()
}

fn request_from_row(row: &Row) -> Result<StoredRequest, StoreError> {
    let patch_level: i64 = row.try_get(10)?;
    Ok(NewRequest {
        job_name: row.try_get(1)?,
        jobid: row.try_get(2)?,
        builder: row.try_get(3)?,
        who: row.try_get(4)?,
        comment: row.try_get(5)?,
        repository: row.try_get(6)?,
        branch: row.try_get(7)?,
        baserev: row.try_get(8)?,
        patch: row.try_get(9)?,
        patch_level: u32::try_from(patch_level)
            .map_err(|_| StoreError::BadValue(format!("patch level {patch_level}")))?,
        submitted_at: row.try_get(11)?,
        properties: properties_from_json(row.try_get(12)?),
        kind: named(row, 13)?,
        reason: row.try_get(14)?,
        change_ids: Vec::new(),
    }
    .stored(row.try_get(0)?))
}

fn build_from_row(row: &Row) -> Result<BuildRow, StoreError> {
    Ok(BuildRow {
        id: row.try_get(0)?,
        builder: row.try_get(1)?,
        number: row.try_get(2)?,
        slave: row.try_get(3)?,
        started_at: row.try_get(4)?,
        finished_at: row.try_get(5)?,
        result: named_opt(row, 6)?,
        reason: row.try_get(7)?,
    })
}

fn step_from_row(row: &Row) -> Result<StepRow, StoreError> {
    Ok(StepRow {
        number: row.try_get(0)?,
        name: row.try_get(1)?,
        started_at: row.try_get(2)?,
        finished_at: row.try_get(3)?,
        result: named_opt(row, 4)?,
        summary: row.try_get(5)?,
    })
}

fn change_from_row(row: &Row) -> Result<StoredChange, StoreError> {
    let files: &str = row.try_get(6)?;
    Ok(StoredChange {
        id: row.try_get(0)?,
        repository: row.try_get(1)?,
        branch: row.try_get(2)?,
        revision: row.try_get(3)?,
        who: row.try_get(4)?,
        comments: row.try_get(5)?,
        files: serde_json::from_str(files).unwrap_or_default(),
        properties: properties_from_json(row.try_get(7)?),
        received_at: row.try_get(8)?,
        sent_by: row.try_get(9)?,
    })
}

fn session_from_row(row: &Row) -> Result<StoredSession, StoreError> {
    let uid: i64 = row.try_get(2)?;
    Ok(StoredSession {
        token_hash: row.try_get(0)?,
        user: row.try_get(1)?,
        uid: u32::try_from(uid).map_err(|_| StoreError::BadValue(format!("uid {uid}")))?,
        csrf: row.try_get(3)?,
        expires_at: row.try_get(4)?,
    })
}

fn all<T>(rows: &[Row], convert: fn(&Row) -> Result<T, StoreError>) -> Result<Vec<T>, StoreError> {
    rows.iter().map(convert).collect()
}

impl PgStore {
    async fn steps(
        client: &(impl tokio_postgres::GenericClient + Sync),
        build_id: i64,
    ) -> Result<Vec<StepRow>, StoreError> {
        let rows = client
            .query(
                "SELECT number, name, started_at, finished_at, result, summary FROM steps
                 WHERE build_id = $1 ORDER BY number",
                &[&build_id],
            )
            .await?;
        all(&rows, step_from_row)
    }
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn record_requests(&self, requests: Vec<NewRequest>) -> Result<Vec<i64>, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        // One lock per job (in one order, so two masters recording overlapping jobs cannot
        // wait on each other): the look-up below then sees whatever the other one recorded.
        let mut jobs: Vec<&str> = requests.iter().map(|r| r.job_name.as_str()).collect();
        jobs.sort_unstable();
        jobs.dedup();
        for job in jobs {
            lock(&transaction, LOCK_JOB, job).await?;
        }
        let mut ids = Vec::new();
        for request in &requests {
            let existing = transaction
                .query_opt(
                    "SELECT id FROM requests WHERE job_name = $1 AND builder = $2
                     ORDER BY id LIMIT 1",
                    &[&text(&request.job_name), &text(&request.builder)],
                )
                .await?;
            if let Some(row) = existing {
                ids.push(row.try_get(0)?);
                continue;
            }
            let row = transaction
                .query_one(
                    "INSERT INTO requests (job_name, jobid, builder, who, comment, properties,
                       repository, branch, baserev, patch, patch_level, submitted_at, state,
                       kind, reason)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
                     RETURNING id",
                    &[
                        &text(&request.job_name),
                        &text(&request.jobid),
                        &text(&request.builder),
                        &opt_text(request.who.as_deref()),
                        &opt_text(request.comment.as_deref()),
                        &properties_json(&request.properties),
                        &text(&request.repository),
                        &opt_text(request.branch.as_deref()),
                        &opt_text(request.baserev.as_deref()),
                        &request.patch,
                        &i64::from(request.patch_level),
                        &request.submitted_at,
                        &RequestState::Pending.as_str(),
                        &request.kind.as_str(),
                        &opt_text(request.reason.as_deref()),
                    ],
                )
                .await?;
            let id: i64 = row.try_get(0)?;
            for change_id in &request.change_ids {
                transaction
                    .execute(
                        "INSERT INTO request_changes (request_id, change_id) VALUES ($1, $2)",
                        &[&id, change_id],
                    )
                    .await?;
            }
            ids.push(id);
        }
        notify_requests(&transaction).await?;
        transaction.commit().await?;
        Ok(ids)
    }

    async fn is_job_recorded(&self, job_name: &str) -> Result<bool, StoreError> {
        let row = self
            .client()
            .await?
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM requests WHERE job_name = $1)",
                &[&text(job_name)],
            )
            .await?;
        Ok(row.try_get(0)?)
    }

    async fn pending_count(
        &self,
        builder: Option<&str>,
        who: Option<&str>,
    ) -> Result<usize, StoreError> {
        let row = self
            .client()
            .await?
            .query_one(
                "SELECT COUNT(*) FROM requests WHERE state = $1
                 AND ($2::TEXT IS NULL OR builder = $2) AND ($3::TEXT IS NULL OR who = $3)",
                &[
                    &RequestState::Pending.as_str(),
                    &builder.map(text),
                    &who.map(text),
                ],
            )
            .await?;
        let count: i64 = row.try_get(0)?;
        Ok(usize::try_from(count).unwrap_or(0))
    }

    async fn pending_requests(&self) -> Result<Vec<StoredRequest>, StoreError> {
        // The changes in the same statement: one snapshot, whatever other masters do meanwhile.
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT {REQUEST_COLUMNS}, ARRAY(SELECT rc.change_id FROM request_changes rc
                       WHERE rc.request_id = r.id ORDER BY rc.change_id)
                     FROM requests r WHERE r.state = $1 ORDER BY r.id"
                ),
                &[&RequestState::Pending.as_str()],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let mut request = request_from_row(row)?;
                request.change_ids = row.try_get(15)?;
                Ok(request)
            })
            .collect()
    }

    async fn cancel_requests(
        &self,
        ids: Vec<i64>,
        collapsed_into: Option<(i64, Vec<i64>)>,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        transaction
            .execute(
                "UPDATE requests SET state = $2 WHERE id = ANY($1) AND state = $3",
                &[
                    &ids,
                    &RequestState::Cancelled.as_str(),
                    &RequestState::Pending.as_str(),
                ],
            )
            .await?;
        notify_requests(&transaction).await?;
        if let Some((into, change_ids)) = collapsed_into {
            for change_id in change_ids {
                transaction
                    .execute(
                        "INSERT INTO request_changes (request_id, change_id) VALUES ($1, $2)
                         ON CONFLICT DO NOTHING",
                        &[&into, &change_id],
                    )
                    .await?;
            }
        }
        transaction.commit().await?;
        Ok(())
    }

    async fn request(&self, id: i64) -> Result<Option<StoredRequest>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                &format!("SELECT {REQUEST_COLUMNS} FROM requests r WHERE r.id = $1"),
                &[&id],
            )
            .await?;
        row.as_ref().map(request_from_row).transpose()
    }

    async fn request_patch(&self, id: i64) -> Result<Option<Vec<u8>>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT patch FROM requests WHERE id = $1", &[&id])
            .await?;
        Ok(row
            .map(|row| row.try_get::<_, Option<Vec<u8>>>(0))
            .transpose()?
            .flatten())
    }

    async fn request_ids_of_job(
        &self,
        job_name: &str,
        builder: &str,
    ) -> Result<Vec<i64>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id FROM requests WHERE job_name = $1 AND builder = $2 ORDER BY id",
                &[&text(job_name), &text(builder)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?)
    }

    async fn job_record(&self, job_name: &str) -> Result<JobRecord, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT r.builder, r.state, last.number, last.result FROM requests r
                 LEFT JOIN LATERAL (SELECT b.number, b.result FROM builds b
                   WHERE b.request_id = r.id AND b.result IS NOT NULL
                   ORDER BY b.number DESC LIMIT 1) last ON TRUE
                 WHERE r.job_name = $1 ORDER BY r.id",
                &[&text(job_name)],
            )
            .await?;
        let mut record = JobRecord::default();
        for row in &rows {
            let builder: String = row.try_get(0)?;
            if !record.builders.contains(&builder) {
                record.builders.push(builder.clone());
            }
            match named::<RequestState>(row, 1)? {
                RequestState::Done => {
                    let number: Option<i64> = row.try_get(2)?;
                    let result: Option<BuildResult> = named_opt(row, 3)?;
                    if let (Some(number), Some(result)) = (number, result) {
                        record.finished.push((builder, number, result));
                    }
                }
                RequestState::Cancelled => record.cancelled.push(builder),
                RequestState::Pending | RequestState::Building => {}
            }
        }
        Ok(record)
    }

    async fn record_slave_loss(&self, request_id: i64) -> Result<i64, StoreError> {
        let row = self
            .client()
            .await?
            .query_one(
                "UPDATE requests SET slave_losses = slave_losses + 1 WHERE id = $1
                 RETURNING slave_losses",
                &[&request_id],
            )
            .await?;
        Ok(row.try_get(0)?)
    }

    async fn start_build(
        &self,
        owner: &MasterLease,
        request_id: i64,
        builder: &str,
        slave: &str,
    ) -> Result<(i64, i64), StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        fence(&transaction, owner).await?;
        // The claim: of masters claiming one request at once, the row lock lets one through;
        // the others find it no longer waiting.
        let claimed = transaction
            .execute(
                "UPDATE requests SET state = $2, claimed_by = $3 WHERE id = $1 AND state = $4",
                &[
                    &request_id,
                    &RequestState::Building.as_str(),
                    &text(&owner.name),
                    &RequestState::Pending.as_str(),
                ],
            )
            .await?;
        if claimed == 0 {
            return Err(StoreError::AlreadyClaimed { request_id });
        }
        // Two masters starting builds of one builder take turns for the next number.
        lock(&transaction, LOCK_BUILDER, builder).await?;
        let row = transaction
            .query_one(
                "SELECT COALESCE(MAX(number), 0) + 1 FROM builds WHERE builder = $1",
                &[&text(builder)],
            )
            .await?;
        let number: i64 = row.try_get(0)?;
        let row = transaction
            .query_one(
                "INSERT INTO builds (builder, number, request_id, slave, started_at, master,
                   master_epoch)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                &[
                    &text(builder),
                    &number,
                    &request_id,
                    &text(slave),
                    &now(),
                    &text(&owner.name),
                    &owner.epoch,
                ],
            )
            .await?;
        let id: i64 = row.try_get(0)?;
        notify_requests(&transaction).await?;
        transaction.commit().await?;
        Ok((id, number))
    }

    async fn record_build_source(
        &self,
        owner: &MasterLease,
        build_id: i64,
        branch: &str,
        revision: &str,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        fence_build(&transaction, owner, build_id).await?;
        relaxed(&transaction).await?;
        transaction
            .execute(
                "UPDATE builds SET branch = $2, revision = $3 WHERE id = $1",
                &[&build_id, &text(branch), &text(revision)],
            )
            .await?;
        transaction.commit().await?;
        Ok(())
    }

    async fn start_step(
        &self,
        owner: &MasterLease,
        build_id: i64,
        number: i64,
        name: &str,
    ) -> Result<i64, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        fence_build(&transaction, owner, build_id).await?;
        relaxed(&transaction).await?;
        let row = transaction
            .query_one(
                "INSERT INTO steps (build_id, number, name, started_at) VALUES ($1, $2, $3, $4)
                 RETURNING id",
                &[&build_id, &number, &text(name), &now()],
            )
            .await?;
        transaction.commit().await?;
        Ok(row.try_get(0)?)
    }

    async fn finish_step(
        &self,
        owner: &MasterLease,
        step_id: i64,
        result: BuildResult,
        summary: &str,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        relaxed(&transaction).await?;
        let build_id: i64 = transaction
            .query_opt("SELECT build_id FROM steps WHERE id = $1", &[&step_id])
            .await?
            .map(|row| row.try_get(0))
            .transpose()?
            .unwrap_or(-1);
        fence_build(&transaction, owner, build_id).await?;
        transaction
            .execute(
                "UPDATE steps SET finished_at = $2, result = $3, summary = $4 WHERE id = $1",
                &[&step_id, &now(), &result.as_str(), &text(summary)],
            )
            .await?;
        transaction.commit().await?;
        Ok(())
    }

    async fn finish_build(
        &self,
        owner: &MasterLease,
        build_id: i64,
        result: BuildResult,
        reason: Option<&str>,
        requeue: bool,
    ) -> Result<(), StoreError> {
        let state = if requeue {
            RequestState::Pending
        } else {
            RequestState::Done
        };
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        fence_build(&transaction, owner, build_id).await?;
        transaction
            .execute(
                "UPDATE builds SET finished_at = $2, result = $3, reason = $4 WHERE id = $1",
                &[&build_id, &now(), &result.as_str(), &reason.map(text)],
            )
            .await?;
        transaction
            .execute(
                "UPDATE requests SET state = $2, claimed_by = NULL
                 WHERE id = (SELECT request_id FROM builds WHERE id = $1)",
                &[&build_id, &state.as_str()],
            )
            .await?;
        if requeue {
            notify_requests(&transaction).await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    async fn recover_interrupted_builds(&self, owner: &MasterLease) -> Result<usize, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        let ended = end_builds_where(
            &transaction,
            "(master IS NULL OR (master = $1 AND master_epoch < $2))",
            &[&text(&owner.name), &owner.epoch],
            "master restarted",
        )
        .await?;
        transaction
            .execute(
                "DELETE FROM master_locks WHERE master = $1 AND epoch < $2",
                &[&text(&owner.name), &owner.epoch],
            )
            .await?;
        transaction.commit().await?;
        Ok(ended.len())
    }

    async fn last_finished_builds(&self) -> Result<Vec<(String, LastBuild)>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT DISTINCT ON (builder) builder, number, result FROM builds
                 WHERE result IS NOT NULL ORDER BY builder, number DESC",
                &[],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get(0)?,
                    LastBuild {
                        number: row.try_get(1)?,
                        result: named(row, 2)?,
                    },
                ))
            })
            .collect()
    }

    async fn newest_builds(&self, builder: &str, limit: i64) -> Result<Vec<BuildRow>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT {BUILD_COLUMNS} FROM builds b WHERE b.builder = $1
                     ORDER BY b.number DESC LIMIT $2"
                ),
                &[&text(builder), &no_limit_if_negative(limit)],
            )
            .await?;
        all(&rows, build_from_row)
    }

    async fn builds_overlapping(
        &self,
        builder: &str,
        from: f64,
        to: f64,
        limit: i64,
    ) -> Result<Vec<BuildRow>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT {BUILD_COLUMNS} FROM builds b WHERE b.builder = $1
                     AND b.started_at < $3 AND (b.finished_at IS NULL OR b.finished_at >= $2)
                     ORDER BY b.number DESC LIMIT $4"
                ),
                &[&text(builder), &from, &to, &no_limit_if_negative(limit)],
            )
            .await?;
        all(&rows, build_from_row)
    }

    async fn steps_of(&self, build_id: i64) -> Result<Vec<StepRow>, StoreError> {
        PgStore::steps(&**self.client().await?, build_id).await
    }

    async fn build_detail(&self, key: &BuildRef) -> Result<Option<BuildDetail>, StoreError> {
        let mut client = self.client().await?;
        // Three reads, one snapshot: the steps and changes of the build as it was read.
        let client = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let select = format!(
            "SELECT {BUILD_COLUMNS}, r.id, r.job_name, r.jobid, r.who, r.comment, r.repository,
               COALESCE(r.branch, b.branch), COALESCE(r.baserev, b.revision),
               r.patch IS NOT NULL, r.properties, r.reason, b.revision
             FROM builds b JOIN requests r ON r.id = b.request_id"
        );
        let row = match key {
            BuildRef::Number { builder, number } => {
                client
                    .query_opt(
                        &format!("{select} WHERE b.builder = $1 AND b.number = $2"),
                        &[&text(builder), number],
                    )
                    .await?
            }
            BuildRef::Id(id) => {
                client
                    .query_opt(&format!("{select} WHERE b.id = $1"), &[id])
                    .await?
            }
        };
        let Some(row) = row else {
            return Ok(None);
        };
        let build = build_from_row(&row)?;
        let request_id: i64 = row.try_get(8)?;
        let steps = PgStore::steps(&*client, build.id).await?;
        let changes = client
            .query(
                &format!(
                    "SELECT {CHANGE_COLUMNS} FROM changes c WHERE c.id IN
                       (SELECT change_id FROM request_changes WHERE request_id = $1)
                     ORDER BY c.id"
                ),
                &[&request_id],
            )
            .await?;
        client.commit().await?;
        Ok(Some(BuildDetail {
            build,
            request_id,
            job_name: row.try_get(9)?,
            jobid: row.try_get(10)?,
            who: row.try_get(11)?,
            comment: row.try_get(12)?,
            repository: row.try_get(13)?,
            branch: row.try_get(14)?,
            baserev: row.try_get(15)?,
            has_patch: row.try_get(16)?,
            properties: properties_from_json(row.try_get(17)?),
            why: row.try_get(18)?,
            revision: row.try_get(19)?,
            changes: all(&changes, change_from_row)?,
            steps,
        }))
    }

    async fn recent_success_durations(
        &self,
        builder: &str,
        limit: i64,
    ) -> Result<Vec<f64>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT finished_at - started_at FROM builds WHERE builder = $1 AND result = $3
                 ORDER BY number DESC LIMIT $2",
                &[
                    &text(builder),
                    &no_limit_if_negative(limit),
                    &BuildResult::Success.as_str(),
                ],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?)
    }

    async fn record_change(
        &self,
        change: &ChangeSpec,
        sent_by: &str,
    ) -> Result<Recorded, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        // Two arrivals of one revision at once (the hook here, a poller on another master)
        // take turns: the second finds the first's change.
        let subject = format!(
            "{}\u{1f}{}\u{1f}{}",
            change.repository, change.branch, change.revision
        );
        lock(&transaction, LOCK_REVISION, &subject).await?;
        let known = transaction
            .query_opt(
                &format!(
                    "SELECT {CHANGE_COLUMNS} FROM changes c
                     WHERE c.repository = $1 AND c.branch = $2 AND c.revision = $3
                     ORDER BY c.id LIMIT 1"
                ),
                &[
                    &text(&change.repository),
                    &text(&change.branch),
                    &text(&change.revision),
                ],
            )
            .await?;
        if let Some(row) = known {
            return Ok(Recorded::Known(change_from_row(&row)?));
        }
        let received_at = now();
        let files = serde_json::to_string(&change.files).unwrap_or_else(|_| "[]".into());
        let params: [&(dyn ToSql + Sync); 9] = [
            &text(&change.repository),
            &text(&change.branch),
            &text(&change.revision),
            &opt_text(change.who.as_deref()),
            &opt_text(change.comments.as_deref()),
            &files,
            &properties_json(&change.properties),
            &received_at,
            &text(sent_by),
        ];
        let row = transaction
            .query_one(
                "INSERT INTO changes (repository, branch, revision, who, comments, files,
                   properties, received_at, sent_by)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
                &params,
            )
            .await?;
        let id: i64 = row.try_get(0)?;
        transaction.commit().await?;
        // As a later look-up will read it.
        Ok(Recorded::New(StoredChange {
            id,
            repository: text(&change.repository),
            branch: text(&change.branch),
            revision: text(&change.revision),
            who: opt_text(change.who.as_deref()),
            comments: opt_text(change.comments.as_deref()),
            files: change.files.clone(),
            properties: change.properties.clone(),
            received_at,
            sent_by: text(sent_by),
        }))
    }

    async fn change(&self, id: i64) -> Result<Option<StoredChange>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                &format!("SELECT {CHANGE_COLUMNS} FROM changes c WHERE c.id = $1"),
                &[&id],
            )
            .await?;
        row.as_ref().map(change_from_row).transpose()
    }

    async fn newest_changes(&self, limit: i64) -> Result<Vec<StoredChange>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                &format!("SELECT {CHANGE_COLUMNS} FROM changes c ORDER BY c.id DESC LIMIT $1"),
                &[&no_limit_if_negative(limit)],
            )
            .await?;
        all(&rows, change_from_row)
    }

    async fn builds_of_change(&self, change_id: i64) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT b.builder, b.number FROM builds b
                 JOIN request_changes rc ON rc.request_id = b.request_id
                 WHERE rc.change_id = $1 ORDER BY b.id",
                &[&change_id],
            )
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }

    async fn poll_heads(&self, repository: &str) -> Result<Vec<(String, String)>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT branch, revision FROM poll_heads WHERE repository = $1 ORDER BY branch",
                &[&text(repository)],
            )
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }

    async fn set_poll_head(
        &self,
        repository: &str,
        branch: &str,
        revision: &str,
    ) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO poll_heads (repository, branch, revision) VALUES ($1, $2, $3)
                 ON CONFLICT (repository, branch) DO UPDATE SET revision = EXCLUDED.revision",
                &[&text(repository), &text(branch), &text(revision)],
            )
            .await?;
        Ok(())
    }

    async fn live_sessions(&self, now: f64) -> Result<Vec<StoredSession>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT token_hash, \"user\", uid, csrf, expires_at FROM web_sessions
                 WHERE expires_at > $1",
                &[&now],
            )
            .await?;
        all(&rows, session_from_row)
    }

    async fn session(
        &self,
        token_hash: &str,
        now: f64,
    ) -> Result<Option<StoredSession>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT token_hash, \"user\", uid, csrf, expires_at FROM web_sessions
                 WHERE expires_at > $1 AND token_hash = $2",
                &[&now, &text(token_hash)],
            )
            .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    async fn save_session(&self, session: &StoredSession, now: f64) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        transaction
            .execute("DELETE FROM web_sessions WHERE expires_at <= $1", &[&now])
            .await?;
        transaction
            .execute(
                "INSERT INTO web_sessions (token_hash, \"user\", uid, csrf, expires_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (token_hash) DO UPDATE SET \"user\" = EXCLUDED.\"user\",
                   uid = EXCLUDED.uid, csrf = EXCLUDED.csrf, expires_at = EXCLUDED.expires_at",
                &[
                    &text(&session.token_hash),
                    &text(&session.user),
                    &i64::from(session.uid),
                    &text(&session.csrf),
                    &session.expires_at,
                ],
            )
            .await?;
        transaction.commit().await?;
        Ok(())
    }

    async fn register_master(
        &self,
        name: &str,
        info: &MasterInfo,
        lease: std::time::Duration,
    ) -> Result<MasterLease, StoreError> {
        self.register(name, info, lease).await
    }

    async fn renew_lease(
        &self,
        master: &MasterLease,
        info: &MasterInfo,
        lease: std::time::Duration,
    ) -> Result<(), StoreError> {
        self.renew(master, info, lease).await
    }

    async fn retire_master(&self, master: &MasterLease) -> Result<(), StoreError> {
        self.retire(master).await
    }

    async fn hold_singleton(
        &self,
        job: &str,
        owner: &MasterLease,
        lease: std::time::Duration,
    ) -> Result<bool, StoreError> {
        self.hold(job, owner, lease).await
    }

    async fn save_link_code(
        &self,
        code_hash: &str,
        account: &str,
        uid: u32,
        expires_at: f64,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        transaction
            .execute(
                "DELETE FROM irc_link_codes WHERE expires_at <= $1",
                &[&now()],
            )
            .await?;
        transaction
            .execute(
                "INSERT INTO irc_link_codes (code_hash, account, uid, expires_at)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (code_hash) DO UPDATE SET account = EXCLUDED.account,
                   uid = EXCLUDED.uid, expires_at = EXCLUDED.expires_at",
                &[&code_hash, &text(account), &i64::from(uid), &expires_at],
            )
            .await?;
        transaction.commit().await?;
        Ok(())
    }

    async fn take_link_code(
        &self,
        code_hash: &str,
        now: f64,
    ) -> Result<Option<(String, u32)>, StoreError> {
        // DELETE ... RETURNING: two bots taking one code at once, one of them gets it.
        let row = self
            .client()
            .await?
            .query_opt(
                "DELETE FROM irc_link_codes WHERE code_hash = $1
                 RETURNING account, uid, expires_at",
                &[&code_hash],
            )
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let (account, uid, expires_at): (String, i64, f64) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        let uid = u32::try_from(uid).map_err(|_| StoreError::BadValue(format!("uid {uid}")))?;
        Ok((expires_at > now).then_some((account, uid)))
    }

    async fn take_master_locks(
        &self,
        owner: &MasterLease,
        holder: &str,
        uses: Vec<crate::master::store::MasterLockUse>,
    ) -> Result<bool, StoreError> {
        self.take_locks(owner, holder, &uses).await
    }

    async fn release_master_locks(
        &self,
        owner: &MasterLease,
        holder: &str,
    ) -> Result<(), StoreError> {
        self.release_locks(owner, holder).await
    }

    async fn masters(&self) -> Result<Vec<MasterRow>, StoreError> {
        self.all_masters().await
    }

    async fn reap_lost_masters(&self, by: &MasterLease) -> Result<Vec<LostMaster>, StoreError> {
        self.reap(by).await
    }

    fn is_shared(&self) -> bool {
        true
    }

    async fn cluster_id(&self) -> Result<String, StoreError> {
        self.cluster_identity().await
    }

    async fn append_events(
        &self,
        master: &str,
        events: Vec<(f64, String)>,
    ) -> Result<Vec<i64>, StoreError> {
        self.append(master, events).await
    }

    async fn events_after(
        &self,
        seq: i64,
        limit: i64,
    ) -> Result<Vec<(i64, f64, String)>, StoreError> {
        self.read_events(seq, limit).await
    }

    async fn last_event_seq(&self) -> Result<i64, StoreError> {
        self.newest_event().await
    }

    fn event_notices(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.notices.channels.events.subscribe())
    }

    fn request_notices(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.notices.channels.requests.subscribe())
    }

    async fn append_log(
        &self,
        owner: &MasterLease,
        build_id: i64,
        step: i64,
        stream: crate::proto::StreamKind,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<(), StoreError> {
        self.append_chunk(owner, build_id, step, stream, offset, data)
            .await
    }

    async fn read_log(
        &self,
        build_id: i64,
        step: i64,
        stream: crate::proto::StreamKind,
        offset: u64,
        max: usize,
    ) -> Result<(Vec<u8>, u64), StoreError> {
        self.read_chunks(build_id, step, stream, offset, max).await
    }

    async fn log_size(
        &self,
        build_id: i64,
        step: i64,
        stream: crate::proto::StreamKind,
    ) -> Result<u64, StoreError> {
        self.chunked_size(build_id, step, stream).await
    }

    async fn log_streams(
        &self,
        build_ids: Vec<i64>,
    ) -> Result<Vec<(i64, i64, crate::proto::StreamKind)>, StoreError> {
        self.chunked_streams(build_ids).await
    }

    // ---- land: the merge queue (issue 24) ----

    async fn land_enqueue(&self, entry: NewLand) -> Result<(i64, Option<i64>), StoreError> {
        self.land_insert(entry).await
    }

    async fn land_entries(
        &self,
        branch: Option<String>,
        active: bool,
        limit: i64,
    ) -> Result<Vec<LandEntry>, StoreError> {
        self.land_list(branch, active, limit).await
    }

    async fn land_entry(&self, id: i64) -> Result<Option<LandEntry>, StoreError> {
        self.land_one(id).await
    }

    async fn land_bundle(&self, id: i64) -> Result<Option<Vec<u8>>, StoreError> {
        self.land_bundle_of(id).await
    }

    async fn land_transition(
        &self,
        id: i64,
        from: LandState,
        to: LandState,
        progress: LandProgress,
    ) -> Result<bool, StoreError> {
        self.land_move(id, from, to, progress).await
    }

    // ---- test results (issue 26) ----

    async fn record_test_results(
        &self,
        owner: &MasterLease,
        build_id: i64,
        cases: Vec<crate::master::store::TestCase>,
    ) -> Result<(), StoreError> {
        self.insert_test_results(owner, build_id, cases).await
    }

    async fn test_counts(
        &self,
        build_id: i64,
    ) -> Result<crate::master::store::TestCounts, StoreError> {
        self.count_tests(build_id).await
    }

    async fn build_tests(
        &self,
        build_id: i64,
        order: crate::master::store::TestOrder,
        failures_only: bool,
        offset: i64,
        limit: i64,
    ) -> Result<Vec<crate::master::store::TestCase>, StoreError> {
        self.page_tests(build_id, order, failures_only, offset, limit)
            .await
    }

    async fn test_history(
        &self,
        builder: &str,
        suite: Option<String>,
        name: &str,
        limit: i64,
    ) -> Result<Vec<crate::master::store::TestHistoryRow>, StoreError> {
        self.history_of_test(builder, suite, name, limit).await
    }

    async fn failure_history(
        &self,
        build_id: i64,
        window: i64,
        max_failures: i64,
    ) -> Result<crate::master::store::FailureHistory, StoreError> {
        self.history_of_failures(build_id, window, max_failures)
            .await
    }

    async fn flaky_tests(
        &self,
        builder: &str,
        window: i64,
        limit: i64,
    ) -> Result<Vec<crate::master::store::FlakyTest>, StoreError> {
        self.mixed_tests(builder, window, limit).await
    }

    // ---- notifications (issue 28) ----

    async fn enqueue_notifications(
        &self,
        notifications: Vec<NewNotification>,
    ) -> Result<usize, StoreError> {
        self.outbox_enqueue(notifications).await
    }

    async fn due_notifications(
        &self,
        now: f64,
        limit: i64,
    ) -> Result<Vec<Notification>, StoreError> {
        self.outbox_due(now, limit).await
    }

    async fn finish_notification(
        &self,
        id: i64,
        state: OutboxState,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        self.outbox_finish(id, state, error).await
    }

    async fn retry_notification(
        &self,
        id: i64,
        error: &str,
        next_at: f64,
    ) -> Result<(), StoreError> {
        self.outbox_retry(id, error, next_at).await
    }

    async fn notifications(&self, limit: i64) -> Result<Vec<Notification>, StoreError> {
        self.outbox_newest(limit).await
    }

    async fn save_bisect(&self, row: crate::master::store::BisectRow) -> Result<i64, StoreError> {
        self.bisect_save(row).await
    }

    async fn bisects(
        &self,
        limit: i64,
    ) -> Result<Vec<crate::master::store::BisectRow>, StoreError> {
        self.bisect_newest(limit).await
    }

    // ---- shell (issue 25) ----
    async fn hold_build(
        &self,
        owner: &MasterLease,
        hold: crate::master::store::ShellHold,
    ) -> Result<(), StoreError> {
        self.pg_hold_build(owner, hold).await
    }

    async fn shell_hold(
        &self,
        builder: &str,
        number: i64,
    ) -> Result<Option<crate::master::store::ShellHold>, StoreError> {
        self.pg_shell_hold(builder, number).await
    }

    async fn held_dirs(
        &self,
        slave: &str,
        builder: &str,
        after: f64,
    ) -> Result<Vec<String>, StoreError> {
        self.pg_held_dirs(slave, builder, after).await
    }

    async fn set_held_until(&self, build_id: i64, until: f64) -> Result<(), StoreError> {
        self.pg_set_held_until(build_id, until).await
    }

    async fn start_shell_session(
        &self,
        session: crate::master::store::ShellSession,
    ) -> Result<i64, StoreError> {
        self.pg_start_shell_session(session).await
    }

    async fn end_shell_session(&self, id: i64, at: f64) -> Result<i64, StoreError> {
        self.pg_end_shell_session(id, at).await
    }

    async fn shell_sessions(
        &self,
        build_id: i64,
    ) -> Result<Vec<crate::master::store::ShellSession>, StoreError> {
        self.pg_shell_sessions(build_id).await
    }

    // ---- artifacts (issue 27) ----

    async fn put_artifact_chunk(
        &self,
        owner: &MasterLease,
        build_id: i64,
        path: &str,
        seq: u64,
        data: Vec<u8>,
    ) -> Result<(), StoreError> {
        self.put_artifact_chunk_in(owner, build_id, path, seq, data)
            .await
    }

    async fn record_artifact(
        &self,
        owner: &MasterLease,
        artifact: &crate::master::store::NewArtifact,
        in_store: bool,
    ) -> Result<(), StoreError> {
        self.record_artifact_in(owner, artifact, in_store).await
    }

    async fn artifacts_of(
        &self,
        build_id: i64,
    ) -> Result<Vec<crate::master::store::ArtifactRow>, StoreError> {
        self.artifacts_of_in(build_id).await
    }

    async fn artifact_chunk(
        &self,
        build_id: i64,
        path: &str,
        seq: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.artifact_chunk_in(build_id, path, seq).await
    }

    async fn prune_candidates(
        &self,
        builder: &str,
        part: crate::master::store::PrunePart,
        finished_before: f64,
        keep_last: i64,
        limit: i64,
    ) -> Result<Vec<(i64, i64)>, StoreError> {
        self.prune_candidates_in(builder, part, finished_before, keep_last, limit)
            .await
    }

    async fn prune_build_part(
        &self,
        build_id: i64,
        part: crate::master::store::PrunePart,
    ) -> Result<(), StoreError> {
        self.prune_build_part_in(build_id, part).await
    }

    async fn old_builds(
        &self,
        builder: &str,
        finished_before: f64,
        keep_last: i64,
        now: f64,
        limit: i64,
    ) -> Result<Vec<(i64, i64)>, StoreError> {
        self.old_builds_in(builder, finished_before, keep_last, now, limit)
            .await
    }

    async fn delete_build(&self, build_id: i64) -> Result<(), StoreError> {
        self.delete_build_in(build_id).await
    }

    async fn delete_cancelled_requests(
        &self,
        submitted_before: f64,
        limit: i64,
    ) -> Result<u64, StoreError> {
        self.delete_cancelled_requests_in(submitted_before, limit)
            .await
    }

    async fn reclaim_space(&self) -> Result<u64, StoreError> {
        // The server's autovacuum reuses and returns dead rows' space; a manual VACUUM would
        // only compete with builds for I/O.
        Ok(0)
    }
}
