//! The embedded store: one SQLite file (`state.sqlite` in the master directory) for one
//! master, with versioned migrations from the first schema. Logs are files (written by
//! `master::build`, read through `master::logs`); this store answers the log-chunk verbs too
//! (the same schema as PostgreSQL's, where they hold every master's logs), but one master
//! never ships its logs into its own file.
//!
//! One connection behind a mutex; the [`Store`] verbs run on the blocking pool
//! ([`SqliteStore::run`]).

mod artifacts;
mod bisect;
pub mod changes;
pub mod land;
mod notify;
pub mod shell;
pub mod test_results;

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{Connection, OptionalExtension, params};

use crate::change::ChangeSpec;
use crate::master::results::CUT_SHORT;
use crate::master::store::model::{
    BuildDetail, BuildRef, BuildRow, LostMaster, MasterInfo, MasterLease, MasterLockUse, MasterRow,
    NewRequest, Recorded, StepRow, StoredChange, StoredRequest, StoredSession, now,
};
use crate::master::store::model_land::{LandEntry, LandProgress, LandState, NewLand};
use crate::master::store::{ArtifactRow, NewArtifact, PrunePart};
use crate::master::store::{
    FailureHistory, FlakyTest, Store, StoreError, TestCase, TestCounts, TestHistoryRow, TestOrder,
};
use crate::master::store::{NewNotification, Notification, OutboxState};
use crate::master::store::{ShellHold, ShellSession};
use crate::proto::StreamKind;
use crate::status::{BuildResult, JobRecord, LastBuild, RequestKind, RequestState};

/// Results, states and kinds are stored as their one spelling; anything else in the column is
/// an error, not a guess.
macro_rules! stored_by_name {
    ($($name:ty),*) => {$(
        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $name {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                value
                    .as_str()?
                    .parse()
                    .map_err(|err| FromSqlError::Other(Box::new(err)))
            }
        }
    )*};
}

stored_by_name!(BuildResult, RequestState, RequestKind);

/// Each entry upgrades the schema by one version; never edit one that has shipped. A new
/// migration is added here and to `store::postgres::MIGRATIONS` under the same number, both
/// making the same tables (tests/store_conformance.rs checks that each version makes the same
/// tables, columns and indexes in both).
pub const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE requests (
        id INTEGER PRIMARY KEY,
        job_name TEXT NOT NULL,
        jobid TEXT NOT NULL,
        builder TEXT NOT NULL,
        who TEXT,
        comment TEXT,
        properties TEXT NOT NULL,
        repository TEXT NOT NULL,
        branch TEXT,
        baserev TEXT,
        patch BLOB,
        patch_level INTEGER NOT NULL,
        submitted_at REAL NOT NULL,
        state TEXT NOT NULL
    );
    CREATE INDEX requests_job ON requests(job_name);
    CREATE INDEX requests_state ON requests(state);
    CREATE TABLE builds (
        id INTEGER PRIMARY KEY,
        builder TEXT NOT NULL,
        number INTEGER NOT NULL,
        request_id INTEGER NOT NULL REFERENCES requests(id),
        slave TEXT NOT NULL,
        started_at REAL NOT NULL,
        finished_at REAL,
        result TEXT,
        reason TEXT,
        UNIQUE (builder, number)
    );
    CREATE TABLE steps (
        id INTEGER PRIMARY KEY,
        build_id INTEGER NOT NULL REFERENCES builds(id),
        number INTEGER NOT NULL,
        name TEXT NOT NULL,
        started_at REAL NOT NULL,
        finished_at REAL,
        result TEXT,
        summary TEXT,
        UNIQUE (build_id, number)
    );",
    // 2: requests forced by hand besides try jobs.
    "ALTER TABLE requests ADD COLUMN kind TEXT NOT NULL DEFAULT 'try';",
    // 3: changes, which requests they went into, why each request exists, what pollers saw.
    "CREATE TABLE changes (
        id INTEGER PRIMARY KEY,
        repository TEXT NOT NULL,
        branch TEXT NOT NULL,
        revision TEXT NOT NULL,
        who TEXT,
        comments TEXT,
        files TEXT NOT NULL,
        properties TEXT NOT NULL,
        received_at REAL NOT NULL,
        sent_by TEXT NOT NULL
    );
    CREATE TABLE request_changes (
        request_id INTEGER NOT NULL REFERENCES requests(id),
        change_id INTEGER NOT NULL REFERENCES changes(id),
        PRIMARY KEY (request_id, change_id)
    );
    CREATE TABLE poll_heads (
        repository TEXT NOT NULL,
        branch TEXT NOT NULL,
        revision TEXT NOT NULL,
        PRIMARY KEY (repository, branch)
    );
    ALTER TABLE requests ADD COLUMN reason TEXT;",
    // 4: how often a request's slave was lost while building it, so a request that kills its
    // slave is not retried forever (kept across master restarts).
    "ALTER TABLE requests ADD COLUMN slave_losses INTEGER NOT NULL DEFAULT 0;",
    // 5: what a build checked out (the branch and the commit the slave reports), so a build
    // asked only for a branch's tip still says what it built.
    "ALTER TABLE builds ADD COLUMN branch TEXT;
    ALTER TABLE builds ADD COLUMN revision TEXT;",
    // 6: one revision is one change whichever way it came; the look-up before each insert.
    "CREATE INDEX changes_revision ON changes(repository, branch, revision);",
    // 7: web sessions, so a restart logs nobody out (`master::sessions`); the id only hashed.
    "CREATE TABLE web_sessions (
        token_hash TEXT PRIMARY KEY,
        user TEXT NOT NULL,
        uid INTEGER NOT NULL,
        csrf TEXT NOT NULL,
        expires_at REAL NOT NULL
    );",
    // 8: the masters of the cluster, each run with its epoch and lease (`/masters`).
    "CREATE TABLE masters (
        name TEXT PRIMARY KEY,
        epoch INTEGER NOT NULL,
        started_at REAL NOT NULL,
        renewed_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        state TEXT NOT NULL,
        info TEXT NOT NULL
    );",
    // 9: claims: which master's run owns a build (fencing) and who claimed a request.
    "ALTER TABLE requests ADD COLUMN claimed_by TEXT;
    ALTER TABLE builds ADD COLUMN master TEXT;
    ALTER TABLE builds ADD COLUMN master_epoch INTEGER;
    CREATE INDEX builds_running ON builds(master) WHERE finished_at IS NULL;",
    // 10: the cluster's event log (one sequence for every master) and the store's identity.
    "CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        master TEXT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE TABLE cluster (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    INSERT INTO cluster (key, value) VALUES ('id', lower(hex(randomblob(8))));",
    // 11: cluster-wide jobs (schedulers, pollers, the IRC bot) and the run that holds each.
    "CREATE TABLE singletons (
        job TEXT PRIMARY KEY,
        master TEXT NOT NULL,
        epoch INTEGER NOT NULL,
        expires_at REAL NOT NULL
    );",
    // 12: master locks held across the masters of a cluster.
    "CREATE TABLE master_locks (
        lock TEXT NOT NULL,
        holder TEXT NOT NULL,
        exclusive INTEGER NOT NULL,
        master TEXT NOT NULL,
        epoch INTEGER NOT NULL,
        since REAL NOT NULL,
        PRIMARY KEY (lock, holder)
    );",
    // 13 (PostgreSQL's migration 13 is the same table, `data` a BYTEA): step logs as chunks,
    // so any master of a cluster serves and follows any build's log (`master::logs`). The
    // length is a column of its own because SQL spells a blob's length differently per
    // database, and the key's order is the order a range is read in.
    "CREATE TABLE log_chunks (
        build_id INTEGER NOT NULL,
        step INTEGER NOT NULL,
        stream TEXT NOT NULL,
        byte_offset INTEGER NOT NULL,
        byte_count INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (build_id, step, stream, byte_offset)
    );",
    // 14: one-time IRC link codes, so the bot of the leading master redeems a code that
    // `ssh master irc-link` issued on any master (only the code's hash is kept).
    "CREATE TABLE irc_link_codes (
        code_hash TEXT PRIMARY KEY,
        account TEXT NOT NULL,
        uid INTEGER NOT NULL,
        expires_at REAL NOT NULL
    );",
    // 15 (issue 24): the merge queue of `buildbot land`, one row per submitted series with
    // the bundle it came in; the state machine of `master::land` (queued, testing, landing,
    // then landed, rejected or cancelled).
    "CREATE TABLE land_entries (
        id INTEGER PRIMARY KEY,
        branch TEXT NOT NULL,
        who TEXT NOT NULL,
        builders TEXT NOT NULL,
        ff_only INTEGER NOT NULL,
        bundle BLOB NOT NULL,
        head TEXT NOT NULL,
        base TEXT NOT NULL,
        commits INTEGER NOT NULL,
        summary TEXT NOT NULL,
        submitted_at REAL NOT NULL,
        state TEXT NOT NULL,
        job_name TEXT,
        tested_base TEXT,
        tested_sha TEXT,
        landed_sha TEXT,
        reason TEXT,
        attempts INTEGER NOT NULL,
        finished_at REAL
    );
    CREATE INDEX land_entries_state ON land_entries (branch, state, id);",
    // 16 (issue 26): test results: one row per test case of a build, in report order (`seq`);
    // looked up by build, and by test name for a test's history.
    "CREATE TABLE test_results (
        build_id INTEGER NOT NULL REFERENCES builds(id),
        seq INTEGER NOT NULL,
        suite TEXT NOT NULL,
        name TEXT NOT NULL,
        result TEXT NOT NULL,
        duration_ms INTEGER,
        message TEXT NOT NULL,
        step INTEGER NOT NULL,
        PRIMARY KEY (build_id, seq)
    );
    CREATE INDEX test_results_test ON test_results (name, suite, build_id);",
    // 17 (issue 28): the notification outbox, one row per (event, notifier, recipient), kept
    // until delivered or given up, so a restart delays a notification and never repeats it.
    "CREATE TABLE outbox_notifications (
        id INTEGER PRIMARY KEY,
        event_key TEXT NOT NULL,
        notifier TEXT NOT NULL,
        recipient TEXT NOT NULL,
        payload TEXT NOT NULL,
        give_up_at REAL NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        next_at REAL NOT NULL,
        created_at REAL NOT NULL,
        last_error TEXT,
        UNIQUE (event_key, notifier, recipient)
    );
    CREATE INDEX outbox_notifications_due ON outbox_notifications(state, next_at);",
    // 18 (issue 28): bisections, their search kept as JSON.
    "CREATE TABLE bisect_runs (
        id INTEGER PRIMARY KEY,
        builder TEXT NOT NULL,
        branch TEXT NOT NULL,
        good TEXT NOT NULL,
        bad TEXT NOT NULL,
        state TEXT NOT NULL,
        culprit TEXT,
        builds INTEGER NOT NULL,
        summary TEXT NOT NULL,
        plan TEXT NOT NULL,
        started_at REAL NOT NULL
    );",
    // 19 (issue 25): held builds (`shell`): where a finished build's directory is kept on its slave,
    // with the environment a shell there gets, until when; and who had a shell in it.
    "CREATE TABLE shell_holds (
        build_id INTEGER PRIMARY KEY,
        builder TEXT NOT NULL,
        number INTEGER NOT NULL,
        slave TEXT NOT NULL,
        dir TEXT NOT NULL,
        env TEXT NOT NULL,
        owner TEXT,
        held_until REAL NOT NULL
    );
    CREATE INDEX shell_holds_slave ON shell_holds (slave, builder, held_until);
    CREATE TABLE shell_sessions (
        id INTEGER PRIMARY KEY,
        build_id INTEGER NOT NULL,
        who TEXT NOT NULL,
        from_addr TEXT NOT NULL,
        master TEXT NOT NULL,
        started_at REAL NOT NULL,
        ended_at REAL
    );
    CREATE INDEX shell_sessions_build ON shell_sessions (build_id);",
    // 20 (issue 27): artifacts: each kept file's metadata, its bytes in 1 MiB chunks when the
    // store is shared (every master serves them), and which parts of which builds retention
    // pruned (`[retention]`).
    "CREATE TABLE artifact_files (
        build_id INTEGER NOT NULL,
        step INTEGER NOT NULL,
        path TEXT NOT NULL,
        size INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        created_at REAL NOT NULL,
        in_store INTEGER NOT NULL,
        PRIMARY KEY (build_id, path)
    );
    CREATE TABLE artifact_chunks (
        build_id INTEGER NOT NULL,
        path TEXT NOT NULL,
        seq INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (build_id, path, seq)
    );
    CREATE TABLE artifact_pruned (
        build_id INTEGER NOT NULL,
        part TEXT NOT NULL,
        pruned_at REAL NOT NULL,
        PRIMARY KEY (build_id, part)
    );",
];

/// The SQLite store.
#[derive(Clone)]
pub struct SqliteStore {
    connection: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the database.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let mut connection = Connection::open(path)?;
        incremental_vacuum(&connection)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut connection)?;
        Ok(SqliteStore {
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    /// Runs `work` with the connection on the blocking pool.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let connection = Arc::clone(&self.connection);
        tokio::task::spawn_blocking(move || {
            let mut guard = connection
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&mut guard)
        })
        .await
        .map_err(|err| StoreError::Task(err.to_string()))?
    }

    /// Like [`SqliteStore::run`], for progress marks (a build or step started, a step finished)
    /// on the way to a build's result: committed without waiting for the disk
    /// (`synchronous=NORMAL`; WAL keeps them across a crash of the master, and the next
    /// durable commit, a request recorded or a build finished, makes them durable too). A
    /// power loss may roll back the last of them; the start-up recovery then treats the build
    /// as interrupted. An fsync per mark cost a trivial build most of its time.
    pub async fn run_relaxed<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.run(move |connection| {
            connection.pragma_update(None, "synchronous", "NORMAL")?;
            let result = work(connection);
            connection.pragma_update(None, "synchronous", "FULL")?;
            result
        })
        .await
    }

    /// The same, for callers that are already on a blocking thread (and tests).
    pub fn with<T>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut guard = self
            .connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        work(&mut guard)
    }
}

/// Lets retention give freed pages back (`auto_vacuum = INCREMENTAL`, see `reclaim_space`).
/// The mode takes effect only before the first table exists, or with a `VACUUM`: a database
/// made before it is rewritten once here, at open, before anything else uses it. `VACUUM` is a
/// transaction of its own: a crash in the middle leaves the database as it was.
fn incremental_vacuum(connection: &Connection) -> Result<(), StoreError> {
    const INCREMENTAL: i64 = 2;
    let mode: i64 = connection.pragma_query_value(None, "auto_vacuum", |row| row.get(0))?;
    if mode == INCREMENTAL {
        return Ok(());
    }
    connection.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    let tables: i64 =
        connection.query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get(0))?;
    if tables > 0 {
        tracing::info!("switching the history database to incremental vacuum (once)");
        connection.execute_batch("VACUUM")?;
    }
    Ok(())
}

fn migrate(connection: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::TooNew {
            found: version,
            known,
        });
    }
    for (index, migration) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(version).unwrap_or(0))
    {
        let transaction = connection.transaction()?;
        transaction.execute_batch(migration)?;
        transaction.pragma_update(None, "user_version", index as i64 + 1)?;
        transaction.commit()?;
    }
    Ok(())
}

/// Records the requests of one job (one per builder) in one transaction; returns their ids.
/// A job already recorded (the master restarted between recording it and moving on) is not
/// recorded twice.
pub(crate) fn insert_requests(
    connection: &mut Connection,
    requests: &[NewRequest],
) -> Result<Vec<i64>, StoreError> {
    let transaction = connection.transaction()?;
    let mut ids = Vec::new();
    for request in requests {
        let existing: Option<i64> = transaction
            .query_row(
                "SELECT id FROM requests WHERE job_name = ?1 AND builder = ?2",
                params![request.job_name, request.builder],
                |row| row.get(0),
            )
            .optional()?;
        if let Some(id) = existing {
            ids.push(id);
            continue;
        }
        transaction.execute(
            "INSERT INTO requests (job_name, jobid, builder, who, comment, properties, repository, branch, baserev, patch, patch_level, submitted_at, state, kind, reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?12, ?6, ?7, ?8, ?9, ?10, ?11, ?13, ?14, ?15)",
            params![
                request.job_name,
                request.jobid,
                request.builder,
                request.who,
                request.comment,
                request.repository,
                request.branch,
                request.baserev,
                request.patch,
                request.patch_level,
                request.submitted_at,
                properties_json(&request.properties),
                RequestState::Pending,
                request.kind,
                request.reason,
            ],
        )?;
        let id = transaction.last_insert_rowid();
        for change_id in &request.change_ids {
            transaction.execute(
                "INSERT INTO request_changes (request_id, change_id) VALUES (?1, ?2)",
                params![id, change_id],
            )?;
        }
        ids.push(id);
    }
    transaction.commit()?;
    Ok(ids)
}

pub(crate) fn is_job_recorded(connection: &Connection, job_name: &str) -> Result<bool, StoreError> {
    let count: i64 = connection.query_row(
        "SELECT COUNT(*) FROM requests WHERE job_name = ?1",
        params![job_name],
        |row| row.get(0),
    )?;
    Ok(count > 0)
}

pub(crate) fn properties_json(properties: &std::collections::BTreeMap<String, String>) -> String {
    serde_json::to_string(properties).unwrap_or_else(|_| "{}".to_string())
}

/// Properties as stored; a value that is not a JSON object of strings reads as none.
pub(crate) fn properties_from_json(text: &str) -> std::collections::BTreeMap<String, String> {
    serde_json::from_str(text).unwrap_or_default()
}

fn request_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRequest> {
    Ok(NewRequest {
        job_name: row.get(1)?,
        jobid: row.get(2)?,
        builder: row.get(3)?,
        who: row.get(4)?,
        comment: row.get(5)?,
        repository: row.get(6)?,
        branch: row.get(7)?,
        baserev: row.get(8)?,
        patch: row.get(9)?,
        patch_level: row.get(10)?,
        submitted_at: row.get(11)?,
        properties: properties_from_json(&row.get::<_, String>(12)?),
        kind: row.get(13)?,
        reason: row.get(14)?,
        // Filled in by the callers that need them (see `change_ids_of`).
        change_ids: Vec::new(),
    }
    .stored(row.get(0)?))
}

const REQUEST_COLUMNS: &str = "id, job_name, jobid, builder, who, comment, repository, branch, baserev, patch, patch_level, submitted_at, properties, kind, reason";

/// How many requests wait, of `builder` or all, of `who` or everyone.
pub(crate) fn pending_count(
    connection: &Connection,
    builder: Option<&str>,
    who: Option<&str>,
) -> Result<usize, StoreError> {
    let count: i64 = connection.query_row(
        "SELECT COUNT(*) FROM requests WHERE state = ?1 AND (?2 IS NULL OR builder = ?2)
         AND (?3 IS NULL OR who = ?3)",
        params![RequestState::Pending, builder, who],
        |row| row.get(0),
    )?;
    Ok(usize::try_from(count).unwrap_or(0))
}

/// Requests still waiting for a build, oldest first.
pub(crate) fn pending_requests(connection: &Connection) -> Result<Vec<StoredRequest>, StoreError> {
    let mut statement = connection.prepare(&format!(
        "SELECT {REQUEST_COLUMNS} FROM requests WHERE state = ?1 ORDER BY id"
    ))?;
    let rows = statement.query_map(params![RequestState::Pending], request_from_row)?;
    let mut requests: Vec<StoredRequest> = rows.collect::<Result<_, _>>()?;
    for request in &mut requests {
        request.change_ids = changes::change_ids_of(connection, request.id)?;
    }
    Ok(requests)
}

/// The run `owner` may still write: the cluster has not declared it lost.
fn fence(connection: &Connection, owner: &MasterLease) -> Result<(), StoreError> {
    let live: bool = connection.query_row(
        "SELECT EXISTS (SELECT 1 FROM masters WHERE name = ?1 AND epoch = ?2 AND state = 'up')",
        params![owner.name, owner.epoch],
        |row| row.get(0),
    )?;
    if live {
        Ok(())
    } else {
        Err(StoreError::Fenced {
            name: owner.name.clone(),
            epoch: owner.epoch,
        })
    }
}

/// `owner` may write about build `build_id`: it is that build's owner, still running, and
/// not declared lost.
fn fence_build(
    connection: &Connection,
    owner: &MasterLease,
    build_id: i64,
) -> Result<(), StoreError> {
    fence(connection, owner)?;
    let owned: bool = connection.query_row(
        "SELECT EXISTS (SELECT 1 FROM builds WHERE id = ?1 AND master = ?2 AND master_epoch = ?3
           AND finished_at IS NULL)",
        params![build_id, owner.name, owner.epoch],
        |row| row.get(0),
    )?;
    if owned {
        Ok(())
    } else {
        Err(StoreError::Fenced {
            name: owner.name.clone(),
            epoch: owner.epoch,
        })
    }
}

/// Claims a waiting request for `owner` and starts its build: the next number of its
/// builder. Returns (build id, number).
pub(crate) fn start_build(
    connection: &mut Connection,
    owner: &MasterLease,
    request_id: i64,
    builder: &str,
    slave: &str,
) -> Result<(i64, i64), StoreError> {
    let transaction =
        connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    fence(&transaction, owner)?;
    let claimed = transaction.execute(
        "UPDATE requests SET state = ?2, claimed_by = ?3 WHERE id = ?1 AND state = ?4",
        params![
            request_id,
            RequestState::Building,
            owner.name,
            RequestState::Pending
        ],
    )?;
    if claimed == 0 {
        return Err(StoreError::AlreadyClaimed { request_id });
    }
    let number: i64 = transaction.query_row(
        "SELECT COALESCE(MAX(number), 0) + 1 FROM builds WHERE builder = ?1",
        params![builder],
        |row| row.get(0),
    )?;
    transaction.execute(
        "INSERT INTO builds (builder, number, request_id, slave, started_at, master, master_epoch)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            builder,
            number,
            request_id,
            slave,
            now(),
            owner.name,
            owner.epoch
        ],
    )?;
    let id = transaction.last_insert_rowid();
    transaction.commit()?;
    Ok((id, number))
}

pub(crate) fn finish_build(
    connection: &mut Connection,
    owner: &MasterLease,
    build_id: i64,
    result: BuildResult,
    reason: Option<&str>,
    requeue: bool,
) -> Result<(), StoreError> {
    let transaction = connection.transaction()?;
    fence_build(&transaction, owner, build_id)?;
    transaction.execute(
        "UPDATE builds SET finished_at = ?2, result = ?3, reason = ?4 WHERE id = ?1",
        params![build_id, now(), result, reason],
    )?;
    let state = if requeue {
        RequestState::Pending
    } else {
        RequestState::Done
    };
    transaction.execute(
        "UPDATE requests SET state = ?2, claimed_by = NULL
         WHERE id = (SELECT request_id FROM builds WHERE id = ?1)",
        params![build_id, state],
    )?;
    transaction.commit()?;
    Ok(())
}

/// Records what build `build_id` checked out: the branch and the commit the slave reported.
pub(crate) fn record_build_source(
    connection: &mut Connection,
    owner: &MasterLease,
    build_id: i64,
    branch: &str,
    revision: &str,
) -> Result<(), StoreError> {
    let transaction = connection.transaction()?;
    fence_build(&transaction, owner, build_id)?;
    transaction.execute(
        "UPDATE builds SET branch = ?2, revision = ?3 WHERE id = ?1",
        params![build_id, branch, revision],
    )?;
    transaction.commit()?;
    Ok(())
}

/// Counts one more loss of the slave while building request `request_id`; returns the count.
pub(crate) fn record_slave_loss(
    connection: &mut Connection,
    request_id: i64,
) -> Result<i64, StoreError> {
    let transaction = connection.transaction()?;
    transaction.execute(
        "UPDATE requests SET slave_losses = slave_losses + 1 WHERE id = ?1",
        params![request_id],
    )?;
    let losses = transaction.query_row(
        "SELECT slave_losses FROM requests WHERE id = ?1",
        params![request_id],
        |row| row.get(0),
    )?;
    transaction.commit()?;
    Ok(losses)
}

pub(crate) fn start_step(
    connection: &mut Connection,
    owner: &MasterLease,
    build_id: i64,
    number: i64,
    name: &str,
) -> Result<i64, StoreError> {
    let transaction = connection.transaction()?;
    fence_build(&transaction, owner, build_id)?;
    transaction.execute(
        "INSERT INTO steps (build_id, number, name, started_at) VALUES (?1, ?2, ?3, ?4)",
        params![build_id, number, name, now()],
    )?;
    let id = transaction.last_insert_rowid();
    transaction.commit()?;
    Ok(id)
}

pub(crate) fn finish_step(
    connection: &mut Connection,
    owner: &MasterLease,
    step_id: i64,
    result: BuildResult,
    summary: &str,
) -> Result<(), StoreError> {
    let transaction = connection.transaction()?;
    let build_id: Option<i64> = transaction
        .query_row(
            "SELECT build_id FROM steps WHERE id = ?1",
            params![step_id],
            |row| row.get(0),
        )
        .optional()?;
    fence_build(&transaction, owner, build_id.unwrap_or(-1))?;
    transaction.execute(
        "UPDATE steps SET finished_at = ?2, result = ?3, summary = ?4 WHERE id = ?1",
        params![step_id, now(), result, summary],
    )?;
    transaction.commit()?;
    Ok(())
}

/// Builds left running by an earlier run of `owner`'s master (or recorded before masters had
/// names): marked exception, and their requests made pending again so they run anew.
/// Returns how many.
pub(crate) fn recover_interrupted_builds(
    connection: &mut Connection,
    owner: &MasterLease,
) -> Result<usize, StoreError> {
    let transaction = connection.transaction()?;
    let count = end_builds_where(
        &transaction,
        "(master IS NULL OR (master = ?1 AND master_epoch < ?2))",
        params![owner.name, owner.epoch],
        "master restarted",
    )?
    .len();
    transaction.execute(
        "DELETE FROM master_locks WHERE master = ?1 AND epoch < ?2",
        params![owner.name, owner.epoch],
    )?;
    transaction.commit()?;
    Ok(count)
}

/// Ends the unfinished builds that `condition` selects (over `builds`), with their unfinished
/// steps, as cut short for `why`; their requests wait again. Returns (builder, number,
/// request id) of each.
fn end_builds_where(
    transaction: &rusqlite::Transaction<'_>,
    condition: &str,
    values: &[&dyn ToSql],
    why: &str,
) -> Result<Vec<(String, i64, i64)>, StoreError> {
    let mut statement = transaction.prepare(&format!(
        "SELECT id, builder, number, request_id FROM builds WHERE finished_at IS NULL AND {condition}"
    ))?;
    let ended: Vec<(i64, String, i64, i64)> = statement
        .query_map(values, |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })?
        .collect::<Result<_, _>>()?;
    let now = now();
    for (id, _, _, request_id) in &ended {
        transaction.execute(
            "UPDATE steps SET finished_at = ?2, result = ?3, summary = ?4
             WHERE build_id = ?1 AND finished_at IS NULL",
            params![id, now, CUT_SHORT, why],
        )?;
        transaction.execute(
            "UPDATE builds SET finished_at = ?2, result = ?3, reason = ?4 WHERE id = ?1",
            params![id, now, CUT_SHORT, why],
        )?;
        transaction.execute(
            "UPDATE requests SET state = ?2, claimed_by = NULL WHERE id = ?1 AND state = ?3",
            params![request_id, RequestState::Pending, RequestState::Building],
        )?;
    }
    Ok(ended
        .into_iter()
        .map(|(_, builder, number, request_id)| (builder, number, request_id))
        .collect())
}

/// Each builder's finished build with the highest number, with its result.
pub(crate) fn last_finished_builds(
    connection: &mut Connection,
) -> Result<Vec<(String, LastBuild)>, StoreError> {
    let mut statement = connection.prepare(
        "SELECT b.builder, b.number, b.result FROM builds b
         WHERE b.result IS NOT NULL AND b.number = (
             SELECT MAX(n.number) FROM builds n WHERE n.builder = b.builder AND n.result IS NOT NULL)",
    )?;
    let rows = statement.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            LastBuild {
                number: row.get(1)?,
                result: row.get(2)?,
            },
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The most recent builds of a builder, newest first.
pub(crate) fn recent_builds(
    connection: &Connection,
    builder: &str,
    limit: i64,
) -> Result<Vec<BuildRow>, StoreError> {
    let mut statement = connection.prepare(&format!(
        "SELECT {BUILD_COLUMNS} FROM builds b WHERE b.builder = ?1 ORDER BY b.number DESC LIMIT ?2"
    ))?;
    let rows = statement.query_map(params![builder, limit], build_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A builder's builds that overlap the time window `[from, to)` (seconds since the epoch),
/// newest first, at most `limit`: what one page of the waterfall shows.
pub(crate) fn builds_in_window(
    connection: &Connection,
    builder: &str,
    from: f64,
    to: f64,
    limit: i64,
) -> Result<Vec<BuildRow>, StoreError> {
    let mut statement = connection.prepare(&format!(
        "SELECT {BUILD_COLUMNS} FROM builds b WHERE b.builder = ?1 AND b.started_at < ?3
         AND (b.finished_at IS NULL OR b.finished_at >= ?2) ORDER BY b.number DESC LIMIT ?4"
    ))?;
    let rows = statement.query_map(params![builder, from, to, limit], build_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(crate) fn steps_of(connection: &Connection, build_id: i64) -> Result<Vec<StepRow>, StoreError> {
    let mut statement = connection.prepare(
        "SELECT number, name, started_at, finished_at, result, summary FROM steps WHERE build_id = ?1 ORDER BY number",
    )?;
    let rows = statement.query_map(params![build_id], |row| {
        Ok(StepRow {
            number: row.get(0)?,
            name: row.get(1)?,
            started_at: row.get(2)?,
            finished_at: row.get(3)?,
            result: row.get(4)?,
            summary: row.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Durations (seconds) of the last successful builds of a builder, newest first, for the ETA.
pub(crate) fn recent_success_durations(
    connection: &Connection,
    builder: &str,
    limit: i64,
) -> Result<Vec<f64>, StoreError> {
    let mut statement = connection.prepare(
        "SELECT finished_at - started_at FROM builds WHERE builder = ?1 AND result = ?3
         ORDER BY number DESC LIMIT ?2",
    )?;
    let rows = statement.query_map(params![builder, limit, BuildResult::Success], |row| {
        row.get(0)
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn build_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<BuildRow> {
    Ok(BuildRow {
        id: row.get(0)?,
        builder: row.get(1)?,
        number: row.get(2)?,
        slave: row.get(3)?,
        started_at: row.get(4)?,
        finished_at: row.get(5)?,
        result: row.get(6)?,
        reason: row.get(7)?,
    })
}

const BUILD_COLUMNS: &str =
    "b.id, b.builder, b.number, b.slave, b.started_at, b.finished_at, b.result, b.reason";

/// One build by builder and number, or by id.
pub(crate) fn build_detail(
    connection: &Connection,
    key: &BuildRef,
) -> Result<Option<BuildDetail>, StoreError> {
    let (condition, first, second): (&str, rusqlite::types::Value, rusqlite::types::Value) =
        match key {
            BuildRef::Number { builder, number } => (
                "b.builder = ?1 AND b.number = ?2",
                builder.clone().into(),
                (*number).into(),
            ),
            BuildRef::Id(id) => ("b.id = ?1 AND ?2 = ?2", (*id).into(), 0i64.into()),
        };
    let found = connection
        .query_row(
            &format!(
                "SELECT {BUILD_COLUMNS}, r.id, r.job_name, r.jobid, r.who, r.comment, r.repository, COALESCE(r.branch, b.branch), COALESCE(r.baserev, b.revision), r.patch IS NOT NULL, r.properties, r.reason, b.revision
                 FROM builds b JOIN requests r ON r.id = b.request_id WHERE {condition}"
            ),
            params![first, second],
            |row| {
                Ok(BuildDetail {
                    build: build_from_row(row)?,
                    request_id: row.get(8)?,
                    job_name: row.get(9)?,
                    jobid: row.get(10)?,
                    who: row.get(11)?,
                    comment: row.get(12)?,
                    repository: row.get(13)?,
                    branch: row.get(14)?,
                    baserev: row.get(15)?,
                    has_patch: row.get(16)?,
                    properties: properties_from_json(&row.get::<_, String>(17)?),
                    why: row.get(18)?,
                    revision: row.get(19)?,
                    changes: Vec::new(),
                    steps: Vec::new(),
                })
            },
        )
        .optional()?;
    let Some(mut detail) = found else {
        return Ok(None);
    };
    detail.steps = steps_of(connection, detail.build.id)?;
    detail.changes = changes::changes_of_request(connection, detail.request_id)?;
    Ok(Some(detail))
}

/// A try job as recorded: its builders, each done request's final build and result, and the
/// builders whose request was cancelled (what `try --wait` resumes from after missed events).
pub(crate) fn job_record(connection: &Connection, job_name: &str) -> Result<JobRecord, StoreError> {
    let mut statement = connection
        .prepare("SELECT id, builder, state FROM requests WHERE job_name = ?1 ORDER BY id")?;
    let requests: Vec<(i64, String, RequestState)> = statement
        .query_map(params![job_name], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut record = JobRecord::default();
    for (id, builder, state) in requests {
        if !record.builders.contains(&builder) {
            record.builders.push(builder.clone());
        }
        match state {
            RequestState::Done => {
                let last: Option<(i64, BuildResult)> = connection
                    .query_row(
                        "SELECT number, result FROM builds WHERE request_id = ?1 AND result IS NOT NULL
                         ORDER BY number DESC LIMIT 1",
                        params![id],
                        |row| Ok((row.get(0)?, row.get(1)?)),
                    )
                    .optional()?;
                if let Some((number, result)) = last {
                    record.finished.push((builder, number, result));
                }
            }
            RequestState::Cancelled => record.cancelled.push(builder),
            RequestState::Pending | RequestState::Building => {}
        }
    }
    Ok(record)
}

/// The ids of a job's requests for one builder.
pub(crate) fn request_ids_of_job(
    connection: &Connection,
    job_name: &str,
    builder: &str,
) -> Result<Vec<i64>, StoreError> {
    let mut statement =
        connection.prepare("SELECT id FROM requests WHERE job_name = ?1 AND builder = ?2")?;
    let rows = statement.query_map(params![job_name, builder], |row| row.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// One request by id, whatever its state.
pub(crate) fn request_by_id(
    connection: &Connection,
    id: i64,
) -> Result<Option<StoredRequest>, StoreError> {
    Ok(connection
        .query_row(
            &format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE id = ?1"),
            params![id],
            request_from_row,
        )
        .optional()?)
}

/// The patch of a request.
pub(crate) fn request_patch(
    connection: &Connection,
    request_id: i64,
) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(connection
        .query_row(
            "SELECT patch FROM requests WHERE id = ?1",
            params![request_id],
            |row| row.get(0),
        )
        .optional()?
        .flatten())
}

pub(crate) fn live_sessions(
    connection: &Connection,
    now: f64,
) -> Result<Vec<StoredSession>, StoreError> {
    live_sessions_where(connection, "?2 = ?2", "", now)
}

fn live_sessions_where(
    connection: &Connection,
    condition: &str,
    value: &str,
    now: f64,
) -> Result<Vec<StoredSession>, StoreError> {
    let mut statement = connection.prepare(&format!(
        "SELECT token_hash, user, uid, csrf, expires_at FROM web_sessions
         WHERE expires_at > ?1 AND {condition}"
    ))?;
    let rows = statement.query_map(params![now, value], |row| {
        Ok(StoredSession {
            token_hash: row.get(0)?,
            user: row.get(1)?,
            uid: row.get(2)?,
            csrf: row.get(3)?,
            expires_at: row.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(crate) fn session(
    connection: &Connection,
    token_hash: &str,
    now: f64,
) -> Result<Option<StoredSession>, StoreError> {
    Ok(live_sessions_where(connection, "token_hash = ?2", token_hash, now)?.pop())
}

pub(crate) fn save_session(
    connection: &mut Connection,
    session: &StoredSession,
    now: f64,
) -> Result<(), StoreError> {
    let transaction = connection.transaction()?;
    transaction.execute("DELETE FROM web_sessions WHERE expires_at <= ?1", [now])?;
    transaction.execute(
        "INSERT OR REPLACE INTO web_sessions (token_hash, user, uid, csrf, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            session.token_hash,
            session.user,
            session.uid,
            session.csrf,
            session.expires_at
        ],
    )?;
    transaction.commit()?;
    Ok(())
}

/// A new run of `name`. One SQLite file has one master (the pid file in its directory sees to
/// that), so a row left "up" is a run that crashed: it is taken over at once.
pub(crate) fn register_master(
    connection: &mut Connection,
    name: &str,
    info: &MasterInfo,
    lease: std::time::Duration,
) -> Result<MasterLease, StoreError> {
    let transaction = connection.transaction()?;
    let now = now();
    let epoch: i64 = transaction
        .query_row(
            "SELECT epoch FROM masters WHERE name = ?1",
            params![name],
            |row| row.get(0),
        )
        .optional()?
        .unwrap_or(0)
        + 1;
    transaction.execute(
        "INSERT INTO masters (name, epoch, started_at, renewed_at, expires_at, state, info)
         VALUES (?1, ?2, ?3, ?3, ?4, 'up', ?5)
         ON CONFLICT (name) DO UPDATE SET epoch = excluded.epoch, started_at = excluded.started_at,
           renewed_at = excluded.renewed_at, expires_at = excluded.expires_at, state = 'up',
           info = excluded.info",
        params![name, epoch, now, now + lease.as_secs_f64(), info_json(info)],
    )?;
    transaction.commit()?;
    Ok(MasterLease {
        name: name.to_string(),
        epoch,
    })
}

fn info_json(info: &MasterInfo) -> String {
    serde_json::to_string(info).unwrap_or_else(|_| "{}".into())
}

pub(crate) fn renew_lease(
    connection: &Connection,
    master: &MasterLease,
    info: &MasterInfo,
    lease: std::time::Duration,
) -> Result<(), StoreError> {
    let now = now();
    let renewed = connection.execute(
        "UPDATE masters SET renewed_at = ?3, expires_at = ?4, info = ?5
         WHERE name = ?1 AND epoch = ?2 AND state = 'up'",
        params![
            master.name,
            master.epoch,
            now,
            now + lease.as_secs_f64(),
            info_json(info)
        ],
    )?;
    if renewed == 0 {
        return Err(StoreError::Fenced {
            name: master.name.clone(),
            epoch: master.epoch,
        });
    }
    Ok(())
}

pub(crate) fn retire_master(
    connection: &mut Connection,
    master: &MasterLease,
) -> Result<(), StoreError> {
    let transaction = connection.transaction()?;
    transaction.execute(
        "UPDATE masters SET expires_at = ?3, state = 'stopped' WHERE name = ?1 AND epoch = ?2",
        params![master.name, master.epoch, now()],
    )?;
    transaction.execute(
        "DELETE FROM singletons WHERE master = ?1 AND epoch = ?2",
        params![master.name, master.epoch],
    )?;
    transaction.execute(
        "DELETE FROM master_locks WHERE master = ?1 AND epoch = ?2",
        params![master.name, master.epoch],
    )?;
    transaction.commit()?;
    Ok(())
}

pub(crate) fn take_master_locks(
    connection: &mut Connection,
    owner: &MasterLease,
    holder: &str,
    uses: &[MasterLockUse],
) -> Result<bool, StoreError> {
    let transaction =
        connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    fence(&transaction, owner)?;
    for wanted in uses {
        let (held, exclusive): (i64, i64) = transaction.query_row(
            "SELECT COUNT(*), COALESCE(MAX(exclusive), 0) FROM master_locks
             WHERE lock = ?1 AND holder <> ?2",
            params![wanted.lock, holder],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        let free = if wanted.exclusive {
            held == 0
        } else {
            exclusive == 0 && held < wanted.max_count
        };
        if !free {
            return Ok(false);
        }
    }
    for wanted in uses {
        transaction.execute(
            "INSERT OR REPLACE INTO master_locks (lock, holder, exclusive, master, epoch, since)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                wanted.lock,
                holder,
                i64::from(wanted.exclusive),
                owner.name,
                owner.epoch,
                now()
            ],
        )?;
    }
    transaction.commit()?;
    Ok(true)
}

/// A newer run of the same master takes over what an older run held: on the embedded store a
/// run holds for good (`lease::held_for`), so a master killed with SIGKILL would otherwise
/// never lead again after its restart (`register` waited out the old run already).
/// A job held by an earlier run of the same master is free for its new run: a name gets a new
/// run only once the earlier one is gone (here, the one master of the file, killed and
/// started again: its hold would otherwise last the embedded store's century-long lease).
pub(crate) fn hold_singleton(
    connection: &mut Connection,
    job: &str,
    owner: &MasterLease,
    lease: std::time::Duration,
) -> Result<bool, StoreError> {
    let transaction =
        connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    if fence(&transaction, owner).is_err() {
        return Ok(false);
    }
    let now = now();
    transaction.execute(
        "INSERT INTO singletons (job, master, epoch, expires_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (job) DO UPDATE SET master = excluded.master, epoch = excluded.epoch,
           expires_at = excluded.expires_at
         WHERE singletons.expires_at < ?5
            OR (singletons.master = excluded.master AND singletons.epoch <= excluded.epoch)",
        params![job, owner.name, owner.epoch, now + lease.as_secs_f64(), now],
    )?;
    let held: bool = transaction.query_row(
        "SELECT EXISTS (SELECT 1 FROM singletons WHERE job = ?1 AND master = ?2 AND epoch = ?3)",
        params![job, owner.name, owner.epoch],
        |row| row.get(0),
    )?;
    transaction.commit()?;
    Ok(held)
}

pub(crate) fn reap_lost_masters(
    connection: &mut Connection,
    by: &MasterLease,
) -> Result<Vec<LostMaster>, StoreError> {
    let transaction =
        connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let lost: Vec<(String, i64)> = {
        let mut statement = transaction.prepare(
            "SELECT name, epoch FROM masters WHERE state = 'up' AND expires_at < ?1 AND name <> ?2",
        )?;
        statement
            .query_map(params![now(), by.name], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })?
            .collect::<Result<_, _>>()?
    };
    let mut reaped = Vec::new();
    for (name, epoch) in lost {
        transaction.execute(
            "UPDATE masters SET state = 'lost' WHERE name = ?1 AND epoch = ?2",
            params![name, epoch],
        )?;
        transaction.execute("DELETE FROM master_locks WHERE master = ?1", params![name])?;
        let retried = end_builds_where(
            &transaction,
            "master = ?1",
            params![name],
            &format!("master {name} lost (its lease ran out); retried"),
        )?;
        reaped.push(LostMaster {
            name,
            epoch,
            retried,
        });
    }
    transaction.commit()?;
    Ok(reaped)
}

pub(crate) fn masters(connection: &Connection) -> Result<Vec<MasterRow>, StoreError> {
    let now = now();
    let mut statement = connection.prepare(
        "SELECT name, epoch, started_at, renewed_at, expires_at, state, info FROM masters
         ORDER BY name",
    )?;
    let rows = statement.query_map([], |row| {
        let expires_at: f64 = row.get(4)?;
        let state: String = row.get(5)?;
        Ok(MasterRow {
            name: row.get(0)?,
            epoch: row.get(1)?,
            started_at: row.get(2)?,
            renewed_at: row.get(3)?,
            expires_at,
            alive: state == "up" && expires_at > now,
            state,
            info: serde_json::from_str(&row.get::<_, String>(6)?).unwrap_or_default(),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(crate) fn append_events(
    connection: &mut Connection,
    master: &str,
    events: &[(f64, String)],
) -> Result<Vec<i64>, StoreError> {
    let transaction =
        connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let first: i64 =
        transaction.query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM events", [], |row| {
            row.get(0)
        })?;
    let mut numbers = Vec::new();
    for (seq, (at, body)) in (first..).zip(events) {
        transaction.execute(
            "INSERT INTO events (seq, at, master, body) VALUES (?1, ?2, ?3, ?4)",
            params![seq, at, master, body],
        )?;
        numbers.push(seq);
    }
    transaction.commit()?;
    Ok(numbers)
}

pub(crate) fn events_after(
    connection: &Connection,
    seq: i64,
    limit: i64,
) -> Result<Vec<(i64, f64, String)>, StoreError> {
    let mut statement = connection
        .prepare("SELECT seq, at, body FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
    let rows = statement.query_map(params![seq, limit], |row| {
        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A byte position as the database keeps it.
fn position(bytes: u64) -> Result<i64, StoreError> {
    i64::try_from(bytes).map_err(|_| StoreError::Task(format!("log position {bytes} too large")))
}

/// Where a stored stream ends now.
pub(crate) fn log_size(
    connection: &Connection,
    build_id: i64,
    step: i64,
    stream: StreamKind,
) -> Result<u64, StoreError> {
    // The last chunk by key, not MAX(offset + count): one index probe, not a scan of the log.
    let end: Option<i64> = connection
        .query_row(
            "SELECT byte_offset + byte_count FROM log_chunks
             WHERE build_id = ?1 AND step = ?2 AND stream = ?3
             ORDER BY byte_offset DESC LIMIT 1",
            params![build_id, step, stream.file_extension()],
            |row| row.get(0),
        )
        .optional()?;
    Ok(end.map_or(0, |end| u64::try_from(end).unwrap_or(0)))
}

pub(crate) fn append_log(
    connection: &mut Connection,
    owner: &MasterLease,
    build_id: i64,
    step: i64,
    stream: StreamKind,
    offset: u64,
    data: &[u8],
) -> Result<(), StoreError> {
    let transaction = connection.transaction()?;
    fence_build(&transaction, owner, build_id)?;
    let size = log_size(&transaction, build_id, step, stream)?;
    let end = offset.saturating_add(data.len() as u64);
    if offset < size && end <= size {
        // A retry of an append that was stored: the same bytes, or the writer is confused.
        let (stored, _) = read_log(&transaction, build_id, step, stream, offset, data.len())?;
        return if stored == data {
            Ok(())
        } else {
            Err(StoreError::LogOffset { offset, size })
        };
    }
    if offset != size {
        return Err(StoreError::LogOffset { offset, size });
    }
    if !data.is_empty() {
        transaction.execute(
            "INSERT INTO log_chunks (build_id, step, stream, byte_offset, byte_count, data)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                build_id,
                step,
                stream.file_extension(),
                position(offset)?,
                position(data.len() as u64)?,
                data
            ],
        )?;
    }
    transaction.commit()?;
    Ok(())
}

pub(crate) fn read_log(
    connection: &Connection,
    build_id: i64,
    step: i64,
    stream: StreamKind,
    offset: u64,
    max: usize,
) -> Result<(Vec<u8>, u64), StoreError> {
    let size = log_size(connection, build_id, step, stream)?;
    let end = offset.saturating_add(max as u64).min(size);
    let mut bytes = Vec::new();
    if offset >= end {
        return Ok((bytes, size));
    }
    // From the chunk holding `offset` (the last one starting at or before it) up to `end`.
    let mut statement = connection.prepare(
        "SELECT byte_offset, data FROM log_chunks
         WHERE build_id = ?1 AND step = ?2 AND stream = ?3 AND byte_offset < ?5
           AND byte_offset >= COALESCE((SELECT MAX(byte_offset) FROM log_chunks
               WHERE build_id = ?1 AND step = ?2 AND stream = ?3 AND byte_offset <= ?4), 0)
         ORDER BY byte_offset",
    )?;
    let rows = statement.query_map(
        params![
            build_id,
            step,
            stream.file_extension(),
            position(offset)?,
            position(end)?
        ],
        |row| Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?)),
    )?;
    for row in rows {
        let (start, data) = row?;
        let start = u64::try_from(start).unwrap_or(0);
        let from = offset.saturating_sub(start).min(data.len() as u64) as usize;
        let to = (end.saturating_sub(start)).min(data.len() as u64) as usize;
        if from < to {
            bytes.extend_from_slice(&data[from..to]);
        }
    }
    Ok((bytes, size))
}

pub(crate) fn log_streams(
    connection: &Connection,
    build_ids: &[i64],
) -> Result<Vec<(i64, i64, StreamKind)>, StoreError> {
    let mut streams = Vec::new();
    // In slices, under SQLite's limit on parameters per statement.
    for ids in build_ids.chunks(500) {
        let marks = vec!["?"; ids.len()].join(", ");
        let mut statement = connection.prepare(&format!(
            "SELECT DISTINCT build_id, step, stream FROM log_chunks WHERE build_id IN ({marks})
             ORDER BY build_id, step, stream"
        ))?;
        let rows = statement.query_map(rusqlite::params_from_iter(ids), |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, String>(2)?,
            ))
        })?;
        for row in rows {
            let (build_id, step, stream) = row?;
            if let Some(stream) = StreamKind::from_file_extension(&stream) {
                streams.push((build_id, step, stream));
            }
        }
    }
    Ok(streams)
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn cluster_id(&self) -> Result<String, StoreError> {
        self.run(|c| {
            Ok(
                c.query_row("SELECT value FROM cluster WHERE key = 'id'", [], |row| {
                    row.get(0)
                })?,
            )
        })
        .await
    }

    async fn append_events(
        &self,
        master: &str,
        events: Vec<(f64, String)>,
    ) -> Result<Vec<i64>, StoreError> {
        let master = master.to_string();
        self.run_relaxed(move |c| append_events(c, &master, &events))
            .await
    }

    async fn events_after(
        &self,
        seq: i64,
        limit: i64,
    ) -> Result<Vec<(i64, f64, String)>, StoreError> {
        self.run(move |c| events_after(c, seq, limit)).await
    }

    async fn last_event_seq(&self) -> Result<i64, StoreError> {
        self.run(|c| {
            Ok(
                c.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |row| {
                    row.get(0)
                })?,
            )
        })
        .await
    }

    async fn register_master(
        &self,
        name: &str,
        info: &MasterInfo,
        lease: std::time::Duration,
    ) -> Result<MasterLease, StoreError> {
        let (name, info) = (name.to_string(), info.clone());
        self.run(move |c| register_master(c, &name, &info, lease))
            .await
    }

    async fn renew_lease(
        &self,
        master: &MasterLease,
        info: &MasterInfo,
        lease: std::time::Duration,
    ) -> Result<(), StoreError> {
        let (master, info) = (master.clone(), info.clone());
        self.run_relaxed(move |c| renew_lease(c, &master, &info, lease))
            .await
    }

    async fn retire_master(&self, master: &MasterLease) -> Result<(), StoreError> {
        let master = master.clone();
        self.run(move |c| retire_master(c, &master)).await
    }

    async fn masters(&self) -> Result<Vec<MasterRow>, StoreError> {
        self.run(|c| masters(c)).await
    }

    async fn save_link_code(
        &self,
        code_hash: &str,
        account: &str,
        uid: u32,
        expires_at: f64,
    ) -> Result<(), StoreError> {
        let (code_hash, account) = (code_hash.to_string(), account.to_string());
        self.run(move |c| {
            let transaction = c.transaction()?;
            transaction.execute(
                "DELETE FROM irc_link_codes WHERE expires_at <= ?1",
                params![now()],
            )?;
            transaction.execute(
                "INSERT OR REPLACE INTO irc_link_codes (code_hash, account, uid, expires_at)
                 VALUES (?1, ?2, ?3, ?4)",
                params![code_hash, account, uid, expires_at],
            )?;
            transaction.commit()?;
            Ok(())
        })
        .await
    }

    async fn take_link_code(
        &self,
        code_hash: &str,
        now: f64,
    ) -> Result<Option<(String, u32)>, StoreError> {
        let code_hash = code_hash.to_string();
        self.run(move |c| {
            let transaction = c.transaction()?;
            let found: Option<(String, u32, f64)> = transaction
                .query_row(
                    "SELECT account, uid, expires_at FROM irc_link_codes WHERE code_hash = ?1",
                    params![code_hash],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )
                .optional()?;
            transaction.execute(
                "DELETE FROM irc_link_codes WHERE code_hash = ?1",
                params![code_hash],
            )?;
            transaction.commit()?;
            Ok(found
                .filter(|(_, _, expires_at)| *expires_at > now)
                .map(|(account, uid, _)| (account, uid)))
        })
        .await
    }

    async fn take_master_locks(
        &self,
        owner: &MasterLease,
        holder: &str,
        uses: Vec<MasterLockUse>,
    ) -> Result<bool, StoreError> {
        let (owner, holder) = (owner.clone(), holder.to_string());
        self.run_relaxed(move |c| take_master_locks(c, &owner, &holder, &uses))
            .await
    }

    async fn release_master_locks(
        &self,
        owner: &MasterLease,
        holder: &str,
    ) -> Result<(), StoreError> {
        let (owner, holder) = (owner.clone(), holder.to_string());
        self.run_relaxed(move |c| {
            c.execute(
                "DELETE FROM master_locks WHERE holder = ?1 AND master = ?2 AND epoch = ?3",
                params![holder, owner.name, owner.epoch],
            )?;
            Ok(())
        })
        .await
    }

    async fn hold_singleton(
        &self,
        job: &str,
        owner: &MasterLease,
        lease: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let (job, owner) = (job.to_string(), owner.clone());
        self.run_relaxed(move |c| hold_singleton(c, &job, &owner, lease))
            .await
    }

    async fn change(&self, id: i64) -> Result<Option<StoredChange>, StoreError> {
        self.run(move |c| changes::change_by_id(c, id)).await
    }

    async fn reap_lost_masters(&self, by: &MasterLease) -> Result<Vec<LostMaster>, StoreError> {
        let by = by.clone();
        self.run(move |c| reap_lost_masters(c, &by)).await
    }

    async fn record_requests(&self, requests: Vec<NewRequest>) -> Result<Vec<i64>, StoreError> {
        self.run(move |c| insert_requests(c, &requests)).await
    }

    async fn is_job_recorded(&self, job_name: &str) -> Result<bool, StoreError> {
        let job_name = job_name.to_string();
        self.run(move |c| is_job_recorded(c, &job_name)).await
    }

    async fn pending_count(
        &self,
        builder: Option<&str>,
        who: Option<&str>,
    ) -> Result<usize, StoreError> {
        let (builder, who) = (builder.map(str::to_string), who.map(str::to_string));
        self.run(move |c| pending_count(c, builder.as_deref(), who.as_deref()))
            .await
    }

    async fn pending_requests(&self) -> Result<Vec<StoredRequest>, StoreError> {
        self.run(|c| pending_requests(c)).await
    }

    async fn cancel_requests(
        &self,
        ids: Vec<i64>,
        collapsed_into: Option<(i64, Vec<i64>)>,
    ) -> Result<(), StoreError> {
        self.run(move |c| {
            let transaction = c.transaction()?;
            for id in ids {
                transaction.execute(
                    "UPDATE requests SET state = ?2 WHERE id = ?1 AND state = ?3",
                    params![id, RequestState::Cancelled, RequestState::Pending],
                )?;
            }
            if let Some((into, change_ids)) = collapsed_into {
                changes::link_changes(&transaction, into, &change_ids)?;
            }
            transaction.commit()?;
            Ok(())
        })
        .await
    }

    async fn request(&self, id: i64) -> Result<Option<StoredRequest>, StoreError> {
        self.run(move |c| request_by_id(c, id)).await
    }

    async fn request_patch(&self, id: i64) -> Result<Option<Vec<u8>>, StoreError> {
        self.run(move |c| request_patch(c, id)).await
    }

    async fn request_ids_of_job(
        &self,
        job_name: &str,
        builder: &str,
    ) -> Result<Vec<i64>, StoreError> {
        let (job_name, builder) = (job_name.to_string(), builder.to_string());
        self.run(move |c| request_ids_of_job(c, &job_name, &builder))
            .await
    }

    async fn job_record(&self, job_name: &str) -> Result<JobRecord, StoreError> {
        let job_name = job_name.to_string();
        self.run(move |c| job_record(c, &job_name)).await
    }

    async fn record_slave_loss(&self, request_id: i64) -> Result<i64, StoreError> {
        self.run(move |c| record_slave_loss(c, request_id)).await
    }

    async fn start_build(
        &self,
        owner: &MasterLease,
        request_id: i64,
        builder: &str,
        slave: &str,
    ) -> Result<(i64, i64), StoreError> {
        let (owner, builder, slave) = (owner.clone(), builder.to_string(), slave.to_string());
        self.run_relaxed(move |c| start_build(c, &owner, request_id, &builder, &slave))
            .await
    }

    async fn record_build_source(
        &self,
        owner: &MasterLease,
        build_id: i64,
        branch: &str,
        revision: &str,
    ) -> Result<(), StoreError> {
        let (owner, branch, revision) = (owner.clone(), branch.to_string(), revision.to_string());
        self.run_relaxed(move |c| record_build_source(c, &owner, build_id, &branch, &revision))
            .await
    }

    async fn start_step(
        &self,
        owner: &MasterLease,
        build_id: i64,
        number: i64,
        name: &str,
    ) -> Result<i64, StoreError> {
        let (owner, name) = (owner.clone(), name.to_string());
        self.run_relaxed(move |c| start_step(c, &owner, build_id, number, &name))
            .await
    }

    async fn finish_step(
        &self,
        owner: &MasterLease,
        step_id: i64,
        result: BuildResult,
        summary: &str,
    ) -> Result<(), StoreError> {
        let (owner, summary) = (owner.clone(), summary.to_string());
        self.run_relaxed(move |c| finish_step(c, &owner, step_id, result, &summary))
            .await
    }

    async fn finish_build(
        &self,
        owner: &MasterLease,
        build_id: i64,
        result: BuildResult,
        reason: Option<&str>,
        requeue: bool,
    ) -> Result<(), StoreError> {
        let (owner, reason) = (owner.clone(), reason.map(str::to_string));
        self.run(move |c| finish_build(c, &owner, build_id, result, reason.as_deref(), requeue))
            .await
    }

    async fn recover_interrupted_builds(&self, owner: &MasterLease) -> Result<usize, StoreError> {
        let owner = owner.clone();
        self.run(move |c| recover_interrupted_builds(c, &owner))
            .await
    }

    async fn last_finished_builds(&self) -> Result<Vec<(String, LastBuild)>, StoreError> {
        self.run(last_finished_builds).await
    }

    async fn newest_builds(&self, builder: &str, limit: i64) -> Result<Vec<BuildRow>, StoreError> {
        let builder = builder.to_string();
        self.run(move |c| recent_builds(c, &builder, limit)).await
    }

    async fn builds_overlapping(
        &self,
        builder: &str,
        from: f64,
        to: f64,
        limit: i64,
    ) -> Result<Vec<BuildRow>, StoreError> {
        let builder = builder.to_string();
        self.run(move |c| builds_in_window(c, &builder, from, to, limit))
            .await
    }

    async fn steps_of(&self, build_id: i64) -> Result<Vec<StepRow>, StoreError> {
        self.run(move |c| steps_of(c, build_id)).await
    }

    async fn build_detail(&self, key: &BuildRef) -> Result<Option<BuildDetail>, StoreError> {
        let key = key.clone();
        self.run(move |c| build_detail(c, &key)).await
    }

    async fn recent_success_durations(
        &self,
        builder: &str,
        limit: i64,
    ) -> Result<Vec<f64>, StoreError> {
        let builder = builder.to_string();
        self.run(move |c| recent_success_durations(c, &builder, limit))
            .await
    }

    async fn record_change(
        &self,
        change: &ChangeSpec,
        sent_by: &str,
    ) -> Result<Recorded, StoreError> {
        let (change, sent_by) = (change.clone(), sent_by.to_string());
        self.run(move |c| changes::record_change(c, &change, &sent_by))
            .await
    }

    async fn newest_changes(&self, limit: i64) -> Result<Vec<StoredChange>, StoreError> {
        self.run(move |c| changes::recent_changes(c, limit)).await
    }

    async fn builds_of_change(&self, change_id: i64) -> Result<Vec<(String, i64)>, StoreError> {
        self.run(move |c| changes::builds_of_change(c, change_id))
            .await
    }

    async fn poll_heads(&self, repository: &str) -> Result<Vec<(String, String)>, StoreError> {
        let repository = repository.to_string();
        self.run(move |c| changes::poll_heads(c, &repository)).await
    }

    async fn set_poll_head(
        &self,
        repository: &str,
        branch: &str,
        revision: &str,
    ) -> Result<(), StoreError> {
        let (repository, branch, revision) = (
            repository.to_string(),
            branch.to_string(),
            revision.to_string(),
        );
        self.run(move |c| changes::set_poll_head(c, &repository, &branch, &revision))
            .await
    }

    async fn live_sessions(&self, now: f64) -> Result<Vec<StoredSession>, StoreError> {
        self.run(move |c| live_sessions(c, now)).await
    }

    async fn session(
        &self,
        token_hash: &str,
        now: f64,
    ) -> Result<Option<StoredSession>, StoreError> {
        let token_hash = token_hash.to_string();
        self.run(move |c| session(c, &token_hash, now)).await
    }

    async fn save_session(&self, session: &StoredSession, now: f64) -> Result<(), StoreError> {
        let session = session.clone();
        self.run(move |c| save_session(c, &session, now)).await
    }
    async fn append_log(
        &self,
        owner: &MasterLease,
        build_id: i64,
        step: i64,
        stream: StreamKind,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<(), StoreError> {
        let owner = owner.clone();
        // Relaxed like the other progress marks: a crash of the master keeps the chunk (WAL),
        // and the log file on this machine has it whatever a power loss rolls back.
        self.run_relaxed(move |c| append_log(c, &owner, build_id, step, stream, offset, &data))
            .await
    }

    async fn read_log(
        &self,
        build_id: i64,
        step: i64,
        stream: StreamKind,
        offset: u64,
        max: usize,
    ) -> Result<(Vec<u8>, u64), StoreError> {
        self.run(move |c| read_log(c, build_id, step, stream, offset, max))
            .await
    }

    async fn log_size(
        &self,
        build_id: i64,
        step: i64,
        stream: StreamKind,
    ) -> Result<u64, StoreError> {
        self.run(move |c| log_size(c, build_id, step, stream)).await
    }

    async fn log_streams(
        &self,
        build_ids: Vec<i64>,
    ) -> Result<Vec<(i64, i64, StreamKind)>, StoreError> {
        self.run(move |c| log_streams(c, &build_ids)).await
    }

    // ---- land: the merge queue (issue 24) ----

    async fn land_enqueue(&self, entry: NewLand) -> Result<(i64, Option<i64>), StoreError> {
        self.run(move |c| land::enqueue(c, &entry)).await
    }

    async fn land_entries(
        &self,
        branch: Option<String>,
        active: bool,
        limit: i64,
    ) -> Result<Vec<LandEntry>, StoreError> {
        self.run(move |c| land::entries(c, branch.as_deref(), active, limit))
            .await
    }

    async fn land_entry(&self, id: i64) -> Result<Option<LandEntry>, StoreError> {
        self.run(move |c| land::entry(c, id)).await
    }

    async fn land_bundle(&self, id: i64) -> Result<Option<Vec<u8>>, StoreError> {
        self.run(move |c| land::bundle(c, id)).await
    }

    async fn land_transition(
        &self,
        id: i64,
        from: LandState,
        to: LandState,
        progress: LandProgress,
    ) -> Result<bool, StoreError> {
        self.run(move |c| land::transition(c, id, from, to, &progress))
            .await
    }

    // ---- test results (issue 26) ----

    async fn record_test_results(
        &self,
        owner: &MasterLease,
        build_id: i64,
        cases: Vec<TestCase>,
    ) -> Result<(), StoreError> {
        let owner = owner.clone();
        self.run(move |c| test_results::record_test_results(c, &owner, build_id, &cases))
            .await
    }

    async fn test_counts(&self, build_id: i64) -> Result<TestCounts, StoreError> {
        self.run(move |c| test_results::test_counts(c, build_id))
            .await
    }

    async fn build_tests(
        &self,
        build_id: i64,
        order: TestOrder,
        failures_only: bool,
        offset: i64,
        limit: i64,
    ) -> Result<Vec<TestCase>, StoreError> {
        self.run(move |c| {
            test_results::build_tests(c, build_id, order, failures_only, offset, limit)
        })
        .await
    }

    async fn test_history(
        &self,
        builder: &str,
        suite: Option<String>,
        name: &str,
        limit: i64,
    ) -> Result<Vec<TestHistoryRow>, StoreError> {
        let (builder, name) = (builder.to_string(), name.to_string());
        self.run(move |c| test_results::test_history(c, &builder, suite.as_deref(), &name, limit))
            .await
    }

    async fn failure_history(
        &self,
        build_id: i64,
        window: i64,
        max_failures: i64,
    ) -> Result<FailureHistory, StoreError> {
        self.run(move |c| test_results::failure_history(c, build_id, window, max_failures))
            .await
    }

    async fn flaky_tests(
        &self,
        builder: &str,
        window: i64,
        limit: i64,
    ) -> Result<Vec<FlakyTest>, StoreError> {
        let builder = builder.to_string();
        self.run(move |c| test_results::flaky_tests(c, &builder, window, limit))
            .await
    }

    // ---- notifications (issue 28) ----

    async fn enqueue_notifications(
        &self,
        notifications: Vec<NewNotification>,
    ) -> Result<usize, StoreError> {
        self.run(move |c| notify::enqueue(c, &notifications)).await
    }

    async fn due_notifications(
        &self,
        now: f64,
        limit: i64,
    ) -> Result<Vec<Notification>, StoreError> {
        self.run(move |c| notify::due(c, now, limit)).await
    }

    async fn finish_notification(
        &self,
        id: i64,
        state: OutboxState,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let error = error.map(str::to_string);
        self.run(move |c| notify::finish(c, id, state, error.as_deref()))
            .await
    }

    async fn retry_notification(
        &self,
        id: i64,
        error: &str,
        next_at: f64,
    ) -> Result<(), StoreError> {
        let error = error.to_string();
        self.run(move |c| notify::retry(c, id, &error, next_at))
            .await
    }

    async fn notifications(&self, limit: i64) -> Result<Vec<Notification>, StoreError> {
        self.run(move |c| notify::newest(c, limit)).await
    }

    async fn save_bisect(&self, row: crate::master::store::BisectRow) -> Result<i64, StoreError> {
        self.run(move |c| bisect::save(c, &row)).await
    }

    async fn bisects(
        &self,
        limit: i64,
    ) -> Result<Vec<crate::master::store::BisectRow>, StoreError> {
        self.run(move |c| bisect::newest(c, limit)).await
    }

    // ---- shell (issue 25) ----
    async fn hold_build(&self, owner: &MasterLease, hold: ShellHold) -> Result<(), StoreError> {
        let owner = owner.clone();
        self.run(move |c| shell::hold_build(c, &owner, &hold)).await
    }

    async fn shell_hold(
        &self,
        builder: &str,
        number: i64,
    ) -> Result<Option<ShellHold>, StoreError> {
        let builder = builder.to_string();
        self.run(move |c| shell::shell_hold(c, &builder, number))
            .await
    }

    async fn held_dirs(
        &self,
        slave: &str,
        builder: &str,
        after: f64,
    ) -> Result<Vec<String>, StoreError> {
        let (slave, builder) = (slave.to_string(), builder.to_string());
        self.run(move |c| shell::held_dirs(c, &slave, &builder, after))
            .await
    }

    async fn set_held_until(&self, build_id: i64, until: f64) -> Result<(), StoreError> {
        self.run(move |c| shell::set_held_until(c, build_id, until))
            .await
    }

    async fn start_shell_session(&self, session: ShellSession) -> Result<i64, StoreError> {
        self.run(move |c| shell::start_shell_session(c, &session))
            .await
    }

    async fn end_shell_session(&self, id: i64, at: f64) -> Result<i64, StoreError> {
        self.run(move |c| shell::end_shell_session(c, id, at)).await
    }

    async fn shell_sessions(&self, build_id: i64) -> Result<Vec<ShellSession>, StoreError> {
        self.run(move |c| shell::shell_sessions(c, build_id)).await
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
        let (owner, path) = (owner.clone(), path.to_string());
        self.run(move |c| artifacts::put_chunk(c, &owner, build_id, &path, seq, &data))
            .await
    }

    async fn record_artifact(
        &self,
        owner: &MasterLease,
        artifact: &NewArtifact,
        in_store: bool,
    ) -> Result<(), StoreError> {
        let (owner, artifact) = (owner.clone(), artifact.clone());
        self.run(move |c| artifacts::record(c, &owner, &artifact, in_store))
            .await
    }

    async fn artifacts_of(&self, build_id: i64) -> Result<Vec<ArtifactRow>, StoreError> {
        self.run(move |c| artifacts::of_build(c, build_id)).await
    }

    async fn artifact_chunk(
        &self,
        build_id: i64,
        path: &str,
        seq: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let path = path.to_string();
        self.run(move |c| artifacts::chunk(c, build_id, &path, seq))
            .await
    }

    async fn prune_candidates(
        &self,
        builder: &str,
        part: PrunePart,
        finished_before: f64,
        keep_last: i64,
        limit: i64,
    ) -> Result<Vec<(i64, i64)>, StoreError> {
        let builder = builder.to_string();
        self.run(move |c| {
            artifacts::prune_candidates(c, &builder, part, finished_before, keep_last, limit)
        })
        .await
    }

    async fn prune_build_part(&self, build_id: i64, part: PrunePart) -> Result<(), StoreError> {
        self.run(move |c| artifacts::prune_build_part(c, build_id, part))
            .await
    }

    async fn old_builds(
        &self,
        builder: &str,
        finished_before: f64,
        keep_last: i64,
        now: f64,
        limit: i64,
    ) -> Result<Vec<(i64, i64)>, StoreError> {
        let builder = builder.to_string();
        self.run(move |c| {
            artifacts::old_builds(c, &builder, finished_before, keep_last, now, limit)
        })
        .await
    }

    async fn delete_build(&self, build_id: i64) -> Result<(), StoreError> {
        self.run(move |c| artifacts::delete_build(c, build_id))
            .await
    }

    async fn delete_cancelled_requests(
        &self,
        submitted_before: f64,
        limit: i64,
    ) -> Result<u64, StoreError> {
        self.run(move |c| artifacts::delete_cancelled_requests(c, submitted_before, limit))
            .await
    }

    async fn reclaim_space(&self) -> Result<u64, StoreError> {
        self.run(|c| {
            let free: i64 = c.pragma_query_value(None, "freelist_count", |row| row.get(0))?;
            // The statement frees a page per step: it must be stepped to the end (a single
            // `execute` would free one page).
            let mut statement = c.prepare("PRAGMA incremental_vacuum")?;
            let mut rows = statement.query([])?;
            while rows.next()?.is_some() {}
            drop(rows);
            drop(statement);
            let left: i64 = c.pragma_query_value(None, "freelist_count", |row| row.get(0))?;
            Ok(u64::try_from(free - left).unwrap_or(0))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_old_database_switches_to_incremental_vacuum_and_gives_pages_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.sqlite");
        {
            // As a master before this change made it: tables first, no auto_vacuum.
            let old = Connection::open(&path).expect("open");
            old.execute_batch(
                "CREATE TABLE filler (data BLOB);
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200)
                 INSERT INTO filler SELECT zeroblob(4096) FROM n;",
            )
            .expect("filler");
        }
        let store = SqliteStore::open(&path).expect("reopen");
        let mode: i64 = store
            .with(|c| Ok(c.pragma_query_value(None, "auto_vacuum", |row| row.get(0))?))
            .expect("mode");
        assert_eq!(mode, 2, "INCREMENTAL");
        let filler: i64 = store
            .with(|c| Ok(c.query_row("SELECT count(*) FROM filler", [], |row| row.get(0))?))
            .expect("rows kept by the VACUUM");
        assert_eq!(filler, 200);
        let size = || std::fs::metadata(&path).expect("size").len();
        store
            .with(|c| Ok(c.execute_batch("DELETE FROM filler; PRAGMA wal_checkpoint(TRUNCATE);")?))
            .expect("delete");
        let before = size();
        assert!(store.reclaim_space().await.expect("reclaim") >= 190);
        store
            .with(|c| Ok(c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?))
            .expect("checkpoint");
        assert!(
            size() + 190 * 4096 <= before,
            "the file shrank: {before} -> {}",
            size()
        );
        assert_eq!(store.reclaim_space().await.expect("reclaim"), 0);
    }

    fn request(job: &str, builder: &str) -> NewRequest {
        NewRequest {
            job_name: job.into(),
            jobid: "1".into(),
            builder: builder.into(),
            who: Some("alice".into()),
            comment: None,
            repository: String::new(),
            branch: None,
            baserev: Some("abc".into()),
            patch: Some(vec![0, 1, 255]),
            patch_level: 1,
            submitted_at: 1.0,
            properties: [("foo".to_string(), "bar".to_string())].into(),
            kind: RequestKind::Try,
            reason: None,
            change_ids: Vec::new(),
        }
    }

    #[test]
    fn requests_builds_and_restart_recovery() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.sqlite");
        let history = SqliteStore::open(&path).expect("open");
        let lease = std::time::Duration::from_secs(10);
        let first_run = history
            .with(|c| register_master(c, "m", &MasterInfo::default(), lease))
            .expect("registered");
        history
            .with(|c| {
                let ids = insert_requests(c, &[request("j1", "linux"), request("j1", "mac")])?;
                assert_eq!(ids.len(), 2);
                // The same job again (replayed after a crash) is not recorded twice.
                assert_eq!(insert_requests(c, &[request("j1", "linux")])?, vec![ids[0]]);
                assert!(is_job_recorded(c, "j1")?);
                let (build, number) = start_build(c, &first_run, ids[0], "linux", "s1")?;
                // A request is claimed once.
                assert!(matches!(
                    start_build(c, &first_run, ids[0], "linux", "s2"),
                    Err(StoreError::AlreadyClaimed { .. })
                ));
                assert_eq!(number, 1);
                let step = start_step(c, &first_run, build, 1, "checkout")?;
                finish_step(c, &first_run, step, BuildResult::Success, "ok")?;
                assert_eq!(pending_requests(c)?.len(), 1);
                Ok(())
            })
            .expect("works");
        drop(history);
        // Reopening migrates nothing and finds the build that was running.
        let history = SqliteStore::open(&path).expect("reopen");
        let second_run = history
            .with(|c| register_master(c, "m", &MasterInfo::default(), lease))
            .expect("registered again");
        assert_eq!(second_run.epoch, first_run.epoch + 1);
        history
            .with(|c| {
                // The first run's writes are refused now: it is not the master any more.
                assert!(matches!(
                    finish_build(c, &first_run, 1, BuildResult::Success, None, false),
                    Err(StoreError::Fenced { .. })
                ));
                assert_eq!(recover_interrupted_builds(c, &second_run)?, 1);
                let pending = pending_requests(c)?;
                assert_eq!(pending.len(), 2);
                assert_eq!(pending[0].patch.as_deref(), Some(&[0u8, 1, 255][..]));
                assert_eq!(
                    pending[0].properties.get("foo").map(String::as_str),
                    Some("bar")
                );
                let builds = recent_builds(c, "linux", 10)?;
                assert_eq!(builds[0].result, Some(BuildResult::Exception));
                assert_eq!(builds[0].reason.as_deref(), Some("master restarted"));
                let (_, number) = start_build(c, &second_run, pending[0].id, "linux", "s1")?;
                assert_eq!(number, 2);
                Ok(())
            })
            .expect("works");
    }

    #[test]
    fn a_lost_masters_builds_are_retried_and_its_late_writes_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let history = SqliteStore::open(&dir.path().join("state.sqlite")).expect("open");
        let short = std::time::Duration::from_millis(1);
        let long = std::time::Duration::from_secs(60);
        history
            .with(|c| {
                let stalled = register_master(c, "a", &MasterInfo::default(), short)?;
                let alive = register_master(c, "b", &MasterInfo::default(), long)?;
                let ids = insert_requests(c, &[request("j1", "linux")])?;
                let (build, _) = start_build(c, &stalled, ids[0], "linux", "s1")?;
                let step = start_step(c, &stalled, build, 1, "test")?;
                assert!(hold_singleton(c, "jobs", &stalled, short)?);
                std::thread::sleep(std::time::Duration::from_millis(5));
                // Its hold ran out with its lease: the live master takes the job over, and
                // holds it against the stalled one.
                assert!(hold_singleton(c, "jobs", &alive, long)?);
                assert!(!hold_singleton(c, "jobs", &stalled, long)?);
                let lost = reap_lost_masters(c, &alive)?;
                assert_eq!(lost.len(), 1);
                assert_eq!(lost[0].retried, vec![("linux".to_string(), 1, ids[0])]);
                // Reaped once only.
                assert!(reap_lost_masters(c, &alive)?.is_empty());
                // The stalled run comes back: every write it tries is refused.
                assert!(matches!(
                    finish_step(c, &stalled, step, BuildResult::Success, "ok"),
                    Err(StoreError::Fenced { .. })
                ));
                assert!(matches!(
                    finish_build(c, &stalled, build, BuildResult::Success, None, false),
                    Err(StoreError::Fenced { .. })
                ));
                assert!(matches!(
                    renew_lease(c, &stalled, &MasterInfo::default(), long),
                    Err(StoreError::Fenced { .. })
                ));
                // The request waits again and the live master builds it.
                let pending = pending_requests(c)?;
                assert_eq!(pending.len(), 1);
                let (_, number) = start_build(c, &alive, pending[0].id, "linux", "s2")?;
                assert_eq!(number, 2);
                let builds = recent_builds(c, "linux", 10)?;
                assert_eq!(builds[1].result, Some(BuildResult::Exception));
                assert!(
                    builds[1]
                        .reason
                        .as_deref()
                        .is_some_and(|r| r.contains("master a lost"))
                );
                // A clean stop gives the job up at once.
                let third = register_master(c, "c", &MasterInfo::default(), long)?;
                assert!(!hold_singleton(c, "jobs", &third, long)?);
                retire_master(c, &alive)?;
                assert!(hold_singleton(c, "jobs", &third, long)?);
                Ok(())
            })
            .expect("works");
    }

    #[test]
    fn slave_losses_are_counted_per_request_across_restarts() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.sqlite");
        let history = SqliteStore::open(&path).expect("open");
        let ids = history
            .with(|c| {
                let ids = insert_requests(c, &[request("j1", "linux"), request("j1", "mac")])?;
                assert_eq!(record_slave_loss(c, ids[0])?, 1);
                Ok(ids)
            })
            .expect("works");
        drop(history);
        let history = SqliteStore::open(&path).expect("reopen");
        history
            .with(|c| {
                assert_eq!(record_slave_loss(c, ids[0])?, 2);
                assert_eq!(record_slave_loss(c, ids[1])?, 1);
                Ok(())
            })
            .expect("works");
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.sqlite");
        let connection = Connection::open(&path).expect("open");
        connection
            .pragma_update(None, "user_version", 99)
            .expect("set");
        drop(connection);
        assert!(matches!(
            SqliteStore::open(&path),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }

    #[test]
    fn step_logs_are_appended_in_chunks_and_read_in_any_range() {
        let dir = tempfile::tempdir().expect("temp dir");
        let history = SqliteStore::open(&dir.path().join("state.sqlite")).expect("open");
        let long = std::time::Duration::from_secs(60);
        history
            .with(|c| {
                let run = register_master(c, "m", &MasterInfo::default(), long)?;
                let ids = insert_requests(c, &[request("j1", "linux")])?;
                let (build, _) = start_build(c, &run, ids[0], "linux", "s1")?;
                start_step(c, &run, build, 1, "test")?;
                assert_eq!(log_size(c, build, 1, StreamKind::Stdout)?, 0);
                assert_eq!(
                    read_log(c, build, 1, StreamKind::Stdout, 0, 100)?,
                    (Vec::new(), 0)
                );
                let text: Vec<u8> = (0..100u8).collect();
                // Chunks of 7, 30 and the rest, one stream interleaved with another.
                let mut offset = 0;
                for (errors, piece) in [&text[..7], &text[7..37], &text[37..]].iter().enumerate() {
                    append_log(c, &run, build, 1, StreamKind::Stdout, offset, piece)?;
                    append_log(c, &run, build, 1, StreamKind::Stderr, errors as u64, b"x")?;
                    offset += piece.len() as u64;
                }
                append_log(c, &run, build, 2, StreamKind::Info, 0, b"later")?;
                assert_eq!(log_size(c, build, 1, StreamKind::Stdout)?, 100);
                assert_eq!(log_size(c, build, 1, StreamKind::Stderr)?, 3);
                // Whole, inside one chunk, across both chunk borders, past the end.
                assert_eq!(
                    read_log(c, build, 1, StreamKind::Stdout, 0, 1000)?,
                    (text.clone(), 100)
                );
                assert_eq!(
                    read_log(c, build, 1, StreamKind::Stdout, 2, 3)?.0,
                    text[2..5]
                );
                assert_eq!(
                    read_log(c, build, 1, StreamKind::Stdout, 5, 40)?.0,
                    text[5..45]
                );
                assert_eq!(
                    read_log(c, build, 1, StreamKind::Stdout, 37, 1)?.0,
                    text[37..38]
                );
                assert_eq!(
                    read_log(c, build, 1, StreamKind::Stdout, 90, 50)?,
                    (text[90..].to_vec(), 100)
                );
                assert!(
                    read_log(c, build, 1, StreamKind::Stdout, 100, 50)?
                        .0
                        .is_empty()
                );
                assert!(
                    read_log(c, build, 1, StreamKind::Stdout, 500, 50)?
                        .0
                        .is_empty()
                );
                // A retried append of stored bytes changes nothing; a gap or other bytes are
                // refused.
                append_log(c, &run, build, 1, StreamKind::Stdout, 7, &text[7..37])?;
                assert!(matches!(
                    append_log(c, &run, build, 1, StreamKind::Stdout, 7, b"other"),
                    Err(StoreError::LogOffset {
                        offset: 7,
                        size: 100
                    })
                ));
                assert!(matches!(
                    append_log(c, &run, build, 1, StreamKind::Stdout, 101, b"gap"),
                    Err(StoreError::LogOffset { .. })
                ));
                assert_eq!(log_size(c, build, 1, StreamKind::Stdout)?, 100);
                assert_eq!(
                    log_streams(c, &[build, build + 1])?,
                    vec![
                        (build, 1, StreamKind::Stderr),
                        (build, 1, StreamKind::Stdout),
                        (build, 2, StreamKind::Info)
                    ]
                );
                Ok(())
            })
            .expect("works");
    }

    #[test]
    fn a_lost_masters_late_log_chunks_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let history = SqliteStore::open(&dir.path().join("state.sqlite")).expect("open");
        let short = std::time::Duration::from_millis(1);
        let long = std::time::Duration::from_secs(60);
        history
            .with(|c| {
                let stalled = register_master(c, "a", &MasterInfo::default(), short)?;
                let alive = register_master(c, "b", &MasterInfo::default(), long)?;
                let ids = insert_requests(c, &[request("j1", "linux")])?;
                let (build, _) = start_build(c, &stalled, ids[0], "linux", "s1")?;
                start_step(c, &stalled, build, 1, "test")?;
                append_log(c, &stalled, build, 1, StreamKind::Stdout, 0, b"before\n")?;
                // Only the build's owner writes its log.
                assert!(matches!(
                    append_log(c, &alive, build, 1, StreamKind::Stdout, 7, b"not mine\n"),
                    Err(StoreError::Fenced { .. })
                ));
                std::thread::sleep(std::time::Duration::from_millis(5));
                assert_eq!(reap_lost_masters(c, &alive)?.len(), 1);
                assert!(matches!(
                    append_log(c, &stalled, build, 1, StreamKind::Stdout, 7, b"after\n"),
                    Err(StoreError::Fenced { .. })
                ));
                // What it wrote before stays readable.
                assert_eq!(
                    read_log(c, build, 1, StreamKind::Stdout, 0, 100)?,
                    (b"before\n".to_vec(), 7)
                );
                Ok(())
            })
            .expect("works");
    }
}
