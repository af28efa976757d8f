//! The store: everything the master keeps beyond one process — requests and their patches,
//! builds, steps, changes, poll heads, web sessions — behind one interface of domain verbs
//! ([`Store`]), not SQL. Two backends answer it: [`sqlite`], the embedded default (one master,
//! the file `state.sqlite` in the master directory), and [`postgres`], one PostgreSQL database
//! shared by several masters.
//! The caller never knows which one answers; one conformance suite (tests/store_conformance.rs)
//! runs against both.
//!
//! Front ends (web, API, IRC) read through the composite questions at the end of the trait
//! ("the newest builds of these builders with their steps"), which every backend answers from
//! the same primitives.

pub mod model;
pub mod model_artifacts;
pub mod model_bisect;
pub mod model_land;
pub mod model_notify;
pub mod model_shell;
pub mod model_tests;
pub mod postgres;
pub mod sqlite;

use std::sync::Arc;

use crate::change::ChangeSpec;
use crate::proto::StreamKind;
use crate::status::{BuildResult, JobRecord, LastBuild};

pub use model::{
    BuildDetail, BuildRef, BuildRow, BuildWithSteps, LostMaster, MasterInfo, MasterLease,
    MasterLockUse, MasterRow, NewRequest, RecentBuilds, Recorded, StepRow, StoredChange,
    StoredRequest, StoredSession, WindowBuilds, now,
};
pub use model_artifacts::{ARTIFACT_CHUNK, ArtifactRow, NewArtifact, PrunePart};
pub use model_bisect::BisectRow;
pub use model_land::{LandEntry, LandProgress, LandState, NewLand};
pub use model_notify::{NewNotification, Notification, OutboxState};
pub use model_shell::{ShellHold, ShellSession};
pub use model_tests::{
    FailureHistory, FlakyTest, HistoryBuild, TestCase, TestCounts, TestHistoryRow, TestOrder,
    TestOutcome,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("history database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A newer buildbot migrated the database: this one would misread it.
    #[error("history database is newer (schema {found}) than this buildbot knows ({known})")]
    TooNew { found: i64, known: i64 },
    #[error("history task failed: {0}")]
    Task(String),
    /// The PostgreSQL server could not be reached or refused the login (wrong address, server
    /// down, wrong password). `target` names the server, database and user, never a password.
    #[error("cannot reach the database at {target}: {reason}")]
    Connect {
        target: String,
        reason: String,
        /// The server answered (and refused: a wrong password, no such database): waiting
        /// will not help. Otherwise it may be restarting.
        answered: bool,
    },
    /// A PostgreSQL statement failed (on one line, whatever the server said).
    #[error("history database: {}", postgres::one_line(.0))]
    Postgres(#[source] tokio_postgres::Error),
    /// No PostgreSQL connection could be had from the pool in time, or the pool is closed.
    #[error("history database connections: {0}")]
    Pool(String),
    /// `[database] url` is neither a `postgresql://` URL nor a `key=value` connection string.
    #[error("database url is not valid: {0}")]
    BadUrl(String),
    /// A column holds what no buildbot writes (a result, state or kind of no known name).
    #[error("history database holds {0}")]
    BadValue(String),
    /// Another master of this name holds a live lease: two masters would act as one.
    #[error(
        "another master named {name} is running on this database (its lease holds until {until}); give each master its own [master] name"
    )]
    NameTaken { name: String, until: String },
    /// This run of the master is no longer the one the cluster knows (its lease ran out and
    /// another master took its work over): what it still tries to write is refused.
    #[error(
        "master {name} (epoch {epoch}) was declared lost by the cluster; its writes are refused"
    )]
    Fenced { name: String, epoch: i64 },
    /// The request is no longer waiting: another master claimed it, or it was cancelled.
    #[error("request {request_id} is no longer waiting (claimed by another master or cancelled)")]
    AlreadyClaimed { request_id: i64 },
    /// A log chunk that would leave a gap in its stream or overlap what is there with other
    /// bytes: the writer lost track of what the store holds.
    #[error("log chunk at byte {offset} does not follow the stored log (it ends at byte {size})")]
    LogOffset { offset: u64, size: u64 },
}

/// The store, shared by every part of the master that keeps or reads what outlives a build.
pub type SharedStore = Arc<dyn Store>;

/// Opens the store `[database]` names: the SQLite file `state.sqlite` in `master_dir`, or the
/// PostgreSQL database (migrated on the way). A PostgreSQL server that does not answer (down,
/// restarting) is waited for, with a log line every few seconds, until `shutdown`; one that
/// refuses (a wrong password, no such database) or a bad URL is an error at once.
pub async fn open(
    database: &crate::master::config::DatabaseConfig,
    master_dir: &std::path::Path,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<SharedStore, StoreError> {
    use crate::master::config::Backend;
    match &database.backend {
        Backend::Sqlite => Ok(Arc::new(sqlite::SqliteStore::open(
            &master_dir.join("state.sqlite"),
        )?)),
        Backend::Postgres { url } => {
            let mut waited = false;
            loop {
                match postgres::PgStore::connect(url).await {
                    Ok(store) => {
                        if waited {
                            tracing::info!("the database answers now");
                        }
                        return Ok(Arc::new(store));
                    }
                    Err(
                        err @ StoreError::Connect {
                            answered: false, ..
                        },
                    ) if !shutdown.is_cancelled() => {
                        tracing::warn!("{err}; waiting for it (retrying every 5s)");
                        waited = true;
                        tokio::select! {
                            () = shutdown.cancelled() => return Err(err),
                            () = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                        }
                    }
                    Err(err) => return Err(err),
                }
            }
        }
    }
}

/// The tables whose rows belong to one build (column `build_id`): what [`Store::delete_build`]
/// removes with it, in this order (children before `builds`, whose id some reference). A
/// migration adding such a table adds it here, so both backends forget it alike.
pub const BUILD_CHILDREN: &[&str] = &[
    "steps",
    "log_chunks",
    "test_results",
    "shell_holds",
    "shell_sessions",
    "artifact_chunks",
    "artifact_files",
    "artifact_pruned",
];

/// The outbox's key of the notifications about one build (`master::notify` makes it).
pub fn build_event_key(builder: &str, number: i64) -> String {
    format!("build:{builder}:{number}")
}

/// Everything the master keeps, as domain verbs. Every method is one transaction: what it
/// writes is there whole or not at all.
#[async_trait::async_trait]
pub trait Store: Send + Sync {
    // --- requests ---------------------------------------------------------------------------

    /// Records the requests of one job (one per builder) in one transaction; returns their ids
    /// in order. A request already recorded (same job name and builder: the master restarted
    /// between recording a job and moving on) is not recorded twice; its id is returned.
    async fn record_requests(&self, requests: Vec<NewRequest>) -> Result<Vec<i64>, StoreError>;

    /// Whether any request of the job `job_name` is recorded.
    async fn is_job_recorded(&self, job_name: &str) -> Result<bool, StoreError>;

    /// How many requests wait (not yet building), of `builder` or of all, of `who` or of all.
    async fn pending_count(
        &self,
        builder: Option<&str>,
        who: Option<&str>,
    ) -> Result<usize, StoreError>;

    /// Requests still waiting for a build, oldest first, with their changes.
    async fn pending_requests(&self) -> Result<Vec<StoredRequest>, StoreError>;

    /// Records queued requests as cancelled (those still waiting: one another master claimed
    /// meanwhile builds); with `collapsed_into`, the request they were merged into takes over
    /// their changes.
    async fn cancel_requests(
        &self,
        ids: Vec<i64>,
        collapsed_into: Option<(i64, Vec<i64>)>,
    ) -> Result<(), StoreError>;

    /// One request by id, whatever its state (without its changes).
    async fn request(&self, id: i64) -> Result<Option<StoredRequest>, StoreError>;

    /// The patch of a request, if it had one.
    async fn request_patch(&self, id: i64) -> Result<Option<Vec<u8>>, StoreError>;

    /// The ids of a job's requests for one builder.
    async fn request_ids_of_job(
        &self,
        job_name: &str,
        builder: &str,
    ) -> Result<Vec<i64>, StoreError>;

    /// A try job as recorded: its builders, each done request's final build and result, and
    /// the builders whose request was cancelled.
    async fn job_record(&self, job_name: &str) -> Result<JobRecord, StoreError>;

    /// Counts one more loss of the slave while building request `request_id` (kept across
    /// restarts, so a request that kills its slave is not retried forever); returns the count.
    async fn record_slave_loss(&self, request_id: i64) -> Result<i64, StoreError>;

    // --- builds and steps -------------------------------------------------------------------

    /// Claims a waiting request for `owner` and starts its build on `slave`: the next number
    /// of `builder`, the request building, the build owned by this run of the master. Exactly
    /// one claim of a request succeeds, whichever masters try at once; the others get
    /// [`StoreError::AlreadyClaimed`]. A run the cluster declared lost gets
    /// [`StoreError::Fenced`]. Returns (build id, number).
    async fn start_build(
        &self,
        owner: &MasterLease,
        request_id: i64,
        builder: &str,
        slave: &str,
    ) -> Result<(i64, i64), StoreError>;

    // Every write about a running build names its owner (the run that claimed it): once the
    // cluster declared that run lost and retried the build elsewhere, the write is refused with
    // `StoreError::Fenced` and changes nothing.

    /// Records what a build checked out: the branch and the commit its slave reported.
    async fn record_build_source(
        &self,
        owner: &MasterLease,
        build_id: i64,
        branch: &str,
        revision: &str,
    ) -> Result<(), StoreError>;

    /// Starts step `number` of a build; returns the step's id.
    async fn start_step(
        &self,
        owner: &MasterLease,
        build_id: i64,
        number: i64,
        name: &str,
    ) -> Result<i64, StoreError>;

    async fn finish_step(
        &self,
        owner: &MasterLease,
        step_id: i64,
        result: BuildResult,
        summary: &str,
    ) -> Result<(), StoreError>;

    /// Ends a build with its result; its request is done, or pending again when `requeue`
    /// (the build is retried), in the same transaction.
    async fn finish_build(
        &self,
        owner: &MasterLease,
        build_id: i64,
        result: BuildResult,
        reason: Option<&str>,
        requeue: bool,
    ) -> Result<(), StoreError>;

    /// Builds left running by an earlier run of `owner`'s master (it stopped or crashed), and
    /// builds recorded before masters had names: their unfinished steps and the builds are
    /// cut short ("master restarted"), their requests pending again. Returns how many builds.
    async fn recover_interrupted_builds(&self, owner: &MasterLease) -> Result<usize, StoreError>;

    /// Each builder's finished build with the highest number, with its result.
    async fn last_finished_builds(&self) -> Result<Vec<(String, LastBuild)>, StoreError>;

    /// The newest builds of a builder, newest first.
    async fn newest_builds(&self, builder: &str, limit: i64) -> Result<Vec<BuildRow>, StoreError>;

    /// A builder's builds that overlap `[from, to)` (unix seconds), newest first, at most
    /// `limit`.
    async fn builds_overlapping(
        &self,
        builder: &str,
        from: f64,
        to: f64,
        limit: i64,
    ) -> Result<Vec<BuildRow>, StoreError>;

    /// A build's steps in order.
    async fn steps_of(&self, build_id: i64) -> Result<Vec<StepRow>, StoreError>;

    /// One build with its steps, request and changes.
    async fn build_detail(&self, key: &BuildRef) -> Result<Option<BuildDetail>, StoreError>;

    /// Durations (seconds) of the last successful builds of a builder, newest first.
    async fn recent_success_durations(
        &self,
        builder: &str,
        limit: i64,
    ) -> Result<Vec<f64>, StoreError>;

    // --- changes and pollers ----------------------------------------------------------------

    /// Records a change unless its revision on its repository and branch is recorded already
    /// (one revision is one change, however often it arrives, also when two arrive at once).
    async fn record_change(
        &self,
        change: &ChangeSpec,
        sent_by: &str,
    ) -> Result<Recorded, StoreError>;

    /// One change by id.
    async fn change(&self, id: i64) -> Result<Option<StoredChange>, StoreError>;

    /// The newest changes, newest first.
    async fn newest_changes(&self, limit: i64) -> Result<Vec<StoredChange>, StoreError>;

    /// (builder, number) of the builds of requests that built `change_id`.
    async fn builds_of_change(&self, change_id: i64) -> Result<Vec<(String, i64)>, StoreError>;

    /// Every head a poller saw in `repository`: (branch, revision).
    async fn poll_heads(&self, repository: &str) -> Result<Vec<(String, String)>, StoreError>;

    async fn set_poll_head(
        &self,
        repository: &str,
        branch: &str,
        revision: &str,
    ) -> Result<(), StoreError>;

    // --- web sessions -----------------------------------------------------------------------

    /// Every session not expired at `now` (unix seconds).
    async fn live_sessions(&self, now: f64) -> Result<Vec<StoredSession>, StoreError>;

    /// The live session stored under `token_hash`, if any.
    async fn session(
        &self,
        token_hash: &str,
        now: f64,
    ) -> Result<Option<StoredSession>, StoreError>;

    /// Keeps `session` (replacing one of the same hash); forgets those expired at `now`.
    async fn save_session(&self, session: &StoredSession, now: f64) -> Result<(), StoreError>;

    // --- masters of the cluster ------------------------------------------------------------

    /// Registers this master for a new run: a new epoch and a lease of `lease` from now, by
    /// the database's clock. Refused with [`StoreError::NameTaken`] while another run of the
    /// same name holds a live lease.
    async fn register_master(
        &self,
        name: &str,
        info: &MasterInfo,
        lease: std::time::Duration,
    ) -> Result<MasterLease, StoreError>;

    /// Renews this run's lease for `lease` from now, with what it tells the others. Refused
    /// with [`StoreError::Fenced`] once the cluster declared this run lost.
    async fn renew_lease(
        &self,
        master: &MasterLease,
        info: &MasterInfo,
        lease: std::time::Duration,
    ) -> Result<(), StoreError>;

    /// Ends this run's lease now (a clean shutdown): nobody waits for it to run out.
    async fn retire_master(&self, master: &MasterLease) -> Result<(), StoreError>;

    /// Holds (takes, or renews) the cluster-wide job `job` for `owner` until `lease` from
    /// now, by the database's clock: true while `owner` holds it. A job is held by one run at a
    /// time; another may take it once the holder's lease ran out, or at once after the holder
    /// retired, or a later run of the same master at once (a name has a new run only once the
    /// earlier one is gone). A run declared lost holds nothing.
    async fn hold_singleton(
        &self,
        job: &str,
        owner: &MasterLease,
        lease: std::time::Duration,
    ) -> Result<bool, StoreError>;

    /// Takes master locks for `holder` (a build, or one of its steps) of `owner`'s run, all or
    /// none, whichever masters take locks at once: true when taken. A lock is free for an
    /// exclusive taker while nobody holds it, for a counting one while nobody holds it
    /// exclusively and fewer than its `max_count` hold it. A lost run's locks are freed when
    /// it is reaped, an earlier run's when its master starts again.
    async fn take_master_locks(
        &self,
        owner: &MasterLease,
        holder: &str,
        uses: Vec<MasterLockUse>,
    ) -> Result<bool, StoreError>;

    /// Frees what `holder` of `owner`'s run holds.
    async fn release_master_locks(
        &self,
        owner: &MasterLease,
        holder: &str,
    ) -> Result<(), StoreError>;

    /// Keeps a one-time IRC link code (by its hash) issued to `account` (name and uid) until
    /// `expires_at`, so the bot of whichever master leads can redeem it.
    async fn save_link_code(
        &self,
        code_hash: &str,
        account: &str,
        uid: u32,
        expires_at: f64,
    ) -> Result<(), StoreError>;

    /// Uses a stored link code up: the account it was issued to, if it is known and not
    /// expired at `now`. It is gone afterwards either way, on every master.
    async fn take_link_code(
        &self,
        code_hash: &str,
        now: f64,
    ) -> Result<Option<(String, u32)>, StoreError>;

    /// Every master the store has seen, by name.
    async fn masters(&self) -> Result<Vec<MasterRow>, StoreError>;

    /// Declares lost every other master whose lease ran out (by the database's clock), in one
    /// transaction per master: its run is fenced, its running builds end as exceptions ("master
    /// NAME lost") and their requests wait again, to be claimed by a live master. Returns what
    /// was taken over.
    async fn reap_lost_masters(&self, by: &MasterLease) -> Result<Vec<LostMaster>, StoreError>;

    // --- the cluster's shared event log ------------------------------------------------------

    /// Whether other masters share this store (PostgreSQL): events and the queue then go
    /// through it. The embedded SQLite file has one master.
    fn is_shared(&self) -> bool {
        false
    }

    /// Names the store's event numbering; the same for every master and across restarts.
    async fn cluster_id(&self) -> Result<String, StoreError>;

    /// Appends events (unix time, the event as JSON) published by `master`, numbered next in
    /// the store's one sequence, in order and without gaps; returns their numbers.
    async fn append_events(
        &self,
        master: &str,
        events: Vec<(f64, String)>,
    ) -> Result<Vec<i64>, StoreError>;

    /// At most `limit` events after number `seq`, oldest first: (seq, unix time, JSON).
    async fn events_after(
        &self,
        seq: i64,
        limit: i64,
    ) -> Result<Vec<(i64, f64, String)>, StoreError>;

    /// The newest event's number (0 before the first).
    async fn last_event_seq(&self) -> Result<i64, StoreError>;

    /// Changes whenever events were appended (by any master); `None` for a store only this
    /// master writes.
    fn event_notices(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// Changes whenever another master may have changed what waits (a request recorded,
    /// claimed, cancelled or re-queued elsewhere), so this master's queue learns of it; `None`
    /// for a store that only this master writes (the embedded SQLite file).
    fn request_notices(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    // --- composite reads for pages, the API and the bot -------------------------------------

    /// For each of `builders`: its newest `rows` builds, the first `with_steps` with steps.
    async fn recent_builds(
        &self,
        builders: Vec<String>,
        rows: i64,
        with_steps: usize,
    ) -> Result<Vec<RecentBuilds>, StoreError> {
        let mut all = Vec::new();
        for name in builders {
            let rows = self.newest_builds(&name, rows).await?;
            let mut steps = Vec::new();
            for build in rows.iter().take(with_steps) {
                steps.push(self.steps_of(build.id).await?);
            }
            all.push(RecentBuilds { rows, steps });
        }
        Ok(all)
    }

    /// For each of `builders`: its builds in `[from, to)` (at most `max`) with steps, and its
    /// last result whatever the window.
    async fn builds_in_window(
        &self,
        builders: Vec<String>,
        from: f64,
        to: f64,
        max: i64,
    ) -> Result<Vec<WindowBuilds>, StoreError> {
        let mut all = Vec::new();
        for name in builders {
            let mut builds = Vec::new();
            for build in self.builds_overlapping(&name, from, to, max).await? {
                let steps = self.steps_of(build.id).await?;
                builds.push(BuildWithSteps { build, steps });
            }
            let last_result = self
                .newest_builds(&name, 5)
                .await?
                .into_iter()
                .find(|row| row.finished_at.is_some())
                .and_then(|row| row.result);
            all.push(WindowBuilds {
                builds,
                last_result,
            });
        }
        Ok(all)
    }

    /// One build with its steps, request and changes.
    async fn build(&self, key: BuildRef) -> Result<Option<BuildDetail>, StoreError> {
        self.build_detail(&key).await
    }

    /// Whether step `step` of build `build_id` is still running.
    async fn step_running(&self, build_id: i64, step: i64) -> Result<bool, StoreError> {
        Ok(self
            .steps_of(build_id)
            .await?
            .iter()
            .any(|row| row.number == step && row.finished_at.is_none()))
    }

    /// The requests of these ids that exist, in the order given.
    async fn requests(&self, ids: Vec<i64>) -> Result<Vec<StoredRequest>, StoreError> {
        let mut found = Vec::new();
        for id in ids {
            found.extend(self.request(id).await?);
        }
        Ok(found)
    }

    /// The patch a request built, if it had one.
    async fn patch(&self, request_id: i64) -> Result<Option<Vec<u8>>, StoreError> {
        self.request_patch(request_id).await
    }

    /// The newest `limit` changes, each with the builds (builder, number) that built it.
    async fn recent_changes(
        &self,
        limit: i64,
    ) -> Result<Vec<(StoredChange, Vec<(String, i64)>)>, StoreError> {
        let mut all = Vec::new();
        for change in self.newest_changes(limit).await? {
            let builds = self.builds_of_change(change.id).await?;
            all.push((change, builds));
        }
        Ok(all)
    }

    // --- step logs ---------------------------------------------------------------------------
    // A step's output is kept per stream as chunks keyed by (build, step, stream, byte offset),
    // so any master can serve and follow a log another master is writing (`master::logs`).

    /// Appends `data` to stream `stream` of step `step` of build `build_id`, starting at byte
    /// `offset`: where the stored stream ends now. A chunk the store holds already (a retried
    /// append whose first answer was lost) is accepted again and changes nothing; one that
    /// leaves a gap or overlaps with other bytes is refused with [`StoreError::LogOffset`].
    /// Fenced by `owner` like every write about a running build.
    async fn append_log(
        &self,
        owner: &MasterLease,
        build_id: i64,
        step: i64,
        stream: StreamKind,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<(), StoreError>;

    /// At most `max` bytes of a stored stream from byte `offset`, and the stream's size so far
    /// (0 and nothing for a stream with no output).
    async fn read_log(
        &self,
        build_id: i64,
        step: i64,
        stream: StreamKind,
        offset: u64,
        max: usize,
    ) -> Result<(Vec<u8>, u64), StoreError>;

    /// The size so far of a stored stream (0 when it has no output).
    async fn log_size(
        &self,
        build_id: i64,
        step: i64,
        stream: StreamKind,
    ) -> Result<u64, StoreError>;

    /// The (build id, step, stream) of these builds' streams that have stored output: one
    /// question for a page's builds, not one per build.
    async fn log_streams(
        &self,
        build_ids: Vec<i64>,
    ) -> Result<Vec<(i64, i64, StreamKind)>, StoreError>;

    // ---- land: the merge queue (issue 24) ----
    // One serial queue per target branch; the entry's state machine is here so any master
    // resumes it (`master::land`).

    /// Queues a series; a queued (not yet tested) entry of the same user for the same branch
    /// is cancelled in the same transaction. Returns the new id and the replaced entry's.
    async fn land_enqueue(&self, entry: NewLand) -> Result<(i64, Option<i64>), StoreError>;

    /// The entries still in the queue (`active`), oldest first, or the last `limit` ended
    /// ones, newest first; of one branch or all.
    async fn land_entries(
        &self,
        branch: Option<String>,
        active: bool,
        limit: i64,
    ) -> Result<Vec<LandEntry>, StoreError>;

    /// One entry.
    async fn land_entry(&self, id: i64) -> Result<Option<LandEntry>, StoreError>;

    /// The bundle an entry was submitted in.
    async fn land_bundle(&self, id: i64) -> Result<Option<Vec<u8>>, StoreError>;

    /// Moves entry `id` from state `from` to `to` with `progress`, only if it is still in
    /// `from` (compare-and-set); returns whether it moved.
    async fn land_transition(
        &self,
        id: i64,
        from: LandState,
        to: LandState,
        progress: LandProgress,
    ) -> Result<bool, StoreError>;

    // ---- test results (issue 26) ----
    // One row per test case of a build, parsed from its steps' reports (`master::test_results`).

    /// Adds test cases to a build (after any it has: one call per step's reports), in one
    /// transaction. Fenced by `owner` like every write about a running build.
    async fn record_test_results(
        &self,
        owner: &MasterLease,
        build_id: i64,
        cases: Vec<TestCase>,
    ) -> Result<(), StoreError>;

    /// How many test cases of a build ended each way.
    async fn test_counts(&self, build_id: i64) -> Result<TestCounts, StoreError>;

    /// A page of a build's test cases: all of them or only the failures (failed and error),
    /// in `order`.
    async fn build_tests(
        &self,
        build_id: i64,
        order: TestOrder,
        failures_only: bool,
        offset: i64,
        limit: i64,
    ) -> Result<Vec<TestCase>, StoreError>;

    /// The newest `limit` results of the test `name` (of `suite`, or of any suite) in the
    /// builds of `builder`, newest first.
    async fn test_history(
        &self,
        builder: &str,
        suite: Option<String>,
        name: &str,
        limit: i64,
    ) -> Result<Vec<TestHistoryRow>, StoreError>;

    /// What classifying the failures of build `build_id` looks back at: the newest `window`
    /// finished builds with test results of its builder numbered before it, and the results
    /// there of the first `max_failures` tests it failed.
    async fn failure_history(
        &self,
        build_id: i64,
        window: i64,
        max_failures: i64,
    ) -> Result<FailureHistory, StoreError>;

    /// The tests that both failed and passed in the newest `window` builds with test results of
    /// `builder`, the most mixed first.
    async fn flaky_tests(
        &self,
        builder: &str,
        window: i64,
        limit: i64,
    ) -> Result<Vec<FlakyTest>, StoreError>;
    // ---- notifications (issue 28) ----

    /// Keeps notifications to deliver, in one transaction; one whose (event key, notifier,
    /// recipient) is kept already is left as it is (a restart, or another master, recorded the
    /// same event). Returns how many were new.
    async fn enqueue_notifications(
        &self,
        notifications: Vec<NewNotification>,
    ) -> Result<usize, StoreError>;

    /// Pending notifications due at `now` (next attempt not later), oldest first, at most
    /// `limit`.
    async fn due_notifications(
        &self,
        now: f64,
        limit: i64,
    ) -> Result<Vec<Notification>, StoreError>;

    /// Ends a pending notification: delivered, or given up with `error`.
    async fn finish_notification(
        &self,
        id: i64,
        state: OutboxState,
        error: Option<&str>,
    ) -> Result<(), StoreError>;

    /// Records a failed attempt of a pending notification: the next one at `next_at`.
    async fn retry_notification(
        &self,
        id: i64,
        error: &str,
        next_at: f64,
    ) -> Result<(), StoreError>;

    /// The newest kept notifications, newest first, at most `limit` (for the operator and the
    /// tests).
    async fn notifications(&self, limit: i64) -> Result<Vec<Notification>, StoreError>;

    // ---- bisections (issue 28) ----

    /// Keeps a bisection: a new one (id 0) gets its id; a kept one its new state.
    async fn save_bisect(&self, row: BisectRow) -> Result<i64, StoreError>;

    /// The newest bisections, newest first, at most `limit`.
    async fn bisects(&self, limit: i64) -> Result<Vec<BisectRow>, StoreError>;
    // ---- shell (issue 25) ----
    // A held build's directory stays on its slave until `held_until`; a later build of the
    // builder on that slave uses another directory meanwhile (`master::shell`).

    /// Records that build `hold.build_id`, about to finish, is held. Fenced by `owner` like
    /// every write about a running build.
    async fn hold_build(&self, owner: &MasterLease, hold: ShellHold) -> Result<(), StoreError>;

    /// The hold of build `number` of `builder`, whether or not it is still in force.
    async fn shell_hold(&self, builder: &str, number: i64)
    -> Result<Option<ShellHold>, StoreError>;

    /// The directories of `builder` on `slave` that holds keep after `after` (unix seconds).
    async fn held_dirs(
        &self,
        slave: &str,
        builder: &str,
        after: f64,
    ) -> Result<Vec<String>, StoreError>;

    /// Sets until when build `build_id` is held (longer when a shell connects, shorter on a
    /// release or the last logout).
    async fn set_held_until(&self, build_id: i64, until: f64) -> Result<(), StoreError>;

    /// Records a shell opened into build `build_id`; returns its id.
    async fn start_shell_session(&self, session: ShellSession) -> Result<i64, StoreError>;

    /// Records the end of shell `id`; returns how many shells of its build are still open.
    async fn end_shell_session(&self, id: i64, at: f64) -> Result<i64, StoreError>;

    /// The shells opened into build `build_id`, oldest first.
    async fn shell_sessions(&self, build_id: i64) -> Result<Vec<ShellSession>, StoreError>;
    // ---- artifacts (issue 27) ----
    // Metadata of each kept file; with a shared store also its bytes in chunks of
    // `ARTIFACT_CHUNK` keyed by (build, path, seq), stored before the metadata, so a recorded
    // artifact is always whole wherever it is read.

    /// Stores chunk `seq` of an artifact of a running build (fenced by `owner`). Storing the
    /// same chunk again replaces it (a retried write).
    async fn put_artifact_chunk(
        &self,
        owner: &MasterLease,
        build_id: i64,
        path: &str,
        seq: u64,
        data: Vec<u8>,
    ) -> Result<(), StoreError>;

    /// Records an artifact of a running build (fenced by `owner`); `in_store` says its chunks
    /// were stored. Recording a path again replaces the record.
    async fn record_artifact(
        &self,
        owner: &MasterLease,
        artifact: &NewArtifact,
        in_store: bool,
    ) -> Result<(), StoreError>;

    /// A build's artifacts, by path.
    async fn artifacts_of(&self, build_id: i64) -> Result<Vec<ArtifactRow>, StoreError>;

    /// Chunk `seq` of a stored artifact (none when the store does not hold it).
    async fn artifact_chunk(
        &self,
        build_id: i64,
        path: &str,
        seq: u64,
    ) -> Result<Option<Vec<u8>>, StoreError>;

    /// Finished builds of `builder` whose `part` retention may remove: finished before
    /// `finished_before`, not among the builder's newest `keep_last` (by number), not pruned
    /// of it yet; oldest first, at most `limit`, as (build id, number).
    async fn prune_candidates(
        &self,
        builder: &str,
        part: PrunePart,
        finished_before: f64,
        keep_last: i64,
        limit: i64,
    ) -> Result<Vec<(i64, i64)>, StoreError>;

    /// Removes `part` of a build from the store and remembers that it is gone.
    async fn prune_build_part(&self, build_id: i64, part: PrunePart) -> Result<(), StoreError>;

    /// Finished builds of `builder` whose records `[retention] builds` removes: finished
    /// before `finished_before`, not among the builder's newest `keep_last` by number (never
    /// the newest: the next number follows it), not held for a shell at `now`; oldest first,
    /// at most `limit`, as (build id, number).
    async fn old_builds(
        &self,
        builder: &str,
        finished_before: f64,
        keep_last: i64,
        now: f64,
        limit: i64,
    ) -> Result<Vec<(i64, i64)>, StoreError>;

    /// Deletes a finished build and every row hanging off it ([`BUILD_CHILDREN`], and the
    /// notifications about it that were sent or given up), in one short transaction. A build
    /// gone already, or not finished, is left alone without error.
    async fn delete_build(&self, build_id: i64) -> Result<(), StoreError>;

    /// Deletes up to `limit` requests that were cancelled before any build of them started and
    /// were submitted before `submitted_before`, with their patches and change links; returns
    /// how many went. (A request with builds goes with its last one, [`Store::delete_build`].)
    async fn delete_cancelled_requests(
        &self,
        submitted_before: f64,
        limit: i64,
    ) -> Result<u64, StoreError>;

    /// Gives the pages that pruning freed back to the file system, after a retention round;
    /// returns the pages freed (SQLite's `incremental_vacuum`; PostgreSQL's autovacuum does
    /// this on its own, so there it does nothing and returns 0).
    async fn reclaim_space(&self) -> Result<u64, StoreError>;
}
