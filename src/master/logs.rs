//! Step logs, wherever they are: the one place that knows a log may be a file on this master
//! (`logs/BUILDER/NUMBER/STEP-NAME.STREAM`, written by `master::build`) or chunks in a store
//! shared with other masters. Readers (the web's log pages, raw ranges and live follow, the
//! tail `try --wait --tail` prints) ask a [`LogSource`] and never choose themselves.
//!
//! With a shared store a build's log is written to both: the file stays this master's cache
//! (its pages and followers read it as fast as before) and the source the store's copy is
//! shipped from ([`StoreShipper`]), and the store's copy is what every other master serves. A
//! log this master has as a file is read from the file; any other from the store. With the
//! embedded store (one master) logs are files only, exactly as before there were clusters.

use std::collections::HashSet;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::master::log_tail;
use crate::master::store::{MasterLease, SharedStore, StepRow, StoreError};
use crate::proto::StreamKind;

/// The most a store chunk holds, and what one read of a stored log asks for at most.
pub const LOG_CHUNK: usize = 64 * 1024;
/// How long new output may wait before it is shipped to the store. Output arrives in frames
/// as small as one line; an INSERT (a round trip to PostgreSQL, a fenced transaction) per line
/// would make a chatty build's log cost more than its build, and one row per line would make
/// the table huge. Gathering up to [`LOG_CHUNK`] or this long, whichever comes first, keeps a
/// followed log live enough (a follower elsewhere sees a line within about this plus its own
/// poll) at a few appends a second per busy stream.
pub const LOG_SHIP_DELAY: Duration = Duration::from_millis(50);
/// After the store refused or failed an append, how long before the next try (the file keeps
/// everything meanwhile, so nothing is lost by waiting).
const LOG_SHIP_RETRY: Duration = Duration::from_secs(1);
/// How often a follower of a log another master writes asks the store for more: with the
/// shipping delay, a line printed on another master's slave reaches its reader here within
/// about 100 ms (bench/results-issue-23.md), at one small query per poll while it is followed.
pub const STORE_FOLLOW_POLL: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("reading a step log: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One stream of one step of one build.
#[derive(Debug, Clone)]
pub struct StepLog {
    pub builder: String,
    pub number: i64,
    pub build_id: i64,
    pub step: i64,
    pub step_name: String,
    pub stream: StreamKind,
}

/// Whether more of step `step` of build `build_id` may come: the step runs, or has not started
/// yet while its build runs (a follower may arrive before the step does).
async fn still_to_come(store: &SharedStore, build_id: i64, step: i64) -> Result<bool, StoreError> {
    let steps = store.steps_of(build_id).await?;
    if let Some(row) = steps.iter().find(|row| row.number == step) {
        return Ok(row.finished_at.is_none());
    }
    Ok(store
        .build_detail(&crate::master::store::BuildRef::Id(build_id))
        .await?
        .is_some_and(|detail| detail.build.finished_at.is_none()))
}

/// Where a log is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Located {
    /// A file on this master (which may not exist yet: a step that has printed nothing).
    File(PathBuf),
    /// Chunks in the shared store.
    Store,
}

/// The step logs of the builds a page lists: which (step, stream) has output.
pub struct LogIndex {
    logs_dir: PathBuf,
    /// (build id, step, stream's file extension) with stored output.
    stored: HashSet<(i64, i64, &'static str)>,
}

impl LogIndex {
    /// Whether `stream` of `step` of build `build_id` (`builder` #`number`) has output.
    pub fn has(
        &self,
        builder: &str,
        number: i64,
        build_id: i64,
        step: &StepRow,
        stream: StreamKind,
    ) -> bool {
        self.stored
            .contains(&(build_id, step.number, stream.file_extension()))
            || file_path(
                &self.logs_dir,
                builder,
                number,
                step.number,
                &step.name,
                stream,
            )
            .exists()
    }
}

/// The file name of a step's log: `STEP-NAME.STREAM`, the name reduced to characters that are
/// safe in a path (every reader finds logs by this same function).
pub fn log_file_name(step: i64, name: &str, stream: StreamKind) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{step}-{safe}.{}", stream.file_extension())
}

fn file_path(
    logs_dir: &Path,
    builder: &str,
    number: i64,
    step: i64,
    step_name: &str,
    stream: StreamKind,
) -> PathBuf {
    logs_dir
        .join(builder)
        .join(number.to_string())
        .join(log_file_name(step, step_name, stream))
}

/// Reads step logs from this master's files or the shared store.
#[derive(Clone)]
pub struct LogSource {
    logs_dir: PathBuf,
    store: SharedStore,
}

impl LogSource {
    pub fn new(logs_dir: PathBuf, store: SharedStore) -> LogSource {
        LogSource { logs_dir, store }
    }

    /// Where `log` is read from: its file when this master has one, the store when it is
    /// shared, else the (missing) file.
    pub async fn locate(&self, log: &StepLog) -> Located {
        let path = file_path(
            &self.logs_dir,
            &log.builder,
            log.number,
            log.step,
            &log.step_name,
            log.stream,
        );
        if self.store.is_shared() && !tokio::fs::try_exists(&path).await.unwrap_or(false) {
            Located::Store
        } else {
            Located::File(path)
        }
    }

    /// At most `max` bytes of `log` from byte `offset`, and its size so far (nothing and 0
    /// for a log without output).
    pub async fn read(
        &self,
        log: &StepLog,
        offset: u64,
        max: usize,
    ) -> Result<(Vec<u8>, u64), LogError> {
        match self.locate(log).await {
            Located::Store => {
                let mut bytes = Vec::new();
                // The store answers at most a chunk's worth per call, so a big read is several
                // bounded ones.
                let mut size = self
                    .store
                    .log_size(log.build_id, log.step, log.stream)
                    .await?;
                while bytes.len() < max && offset + (bytes.len() as u64) < size {
                    let at = offset + bytes.len() as u64;
                    let want = (max - bytes.len()).min(LOG_CHUNK);
                    let (piece, now) = self
                        .store
                        .read_log(log.build_id, log.step, log.stream, at, want)
                        .await?;
                    size = now;
                    if piece.is_empty() {
                        break;
                    }
                    bytes.extend_from_slice(&piece);
                }
                Ok((bytes, size))
            }
            Located::File(path) => {
                let mut file = match tokio::fs::File::open(&path).await {
                    Ok(file) => file,
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                        return Ok((Vec::new(), 0));
                    }
                    Err(err) => return Err(err.into()),
                };
                let size = file.metadata().await?.len();
                let want = size.saturating_sub(offset).min(max as u64);
                let mut bytes = Vec::with_capacity(usize::try_from(want).unwrap_or(0));
                if want > 0 {
                    file.seek(SeekFrom::Start(offset)).await?;
                    (&mut file).take(want).read_to_end(&mut bytes).await?;
                }
                Ok((bytes, size))
            }
        }
    }

    /// The size of `log` so far (0 without output).
    pub async fn size(&self, log: &StepLog) -> Result<u64, LogError> {
        match self.locate(log).await {
            Located::Store => Ok(self
                .store
                .log_size(log.build_id, log.step, log.stream)
                .await?),
            Located::File(path) => match tokio::fs::metadata(&path).await {
                Ok(metadata) => Ok(metadata.len()),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(0),
                Err(err) => Err(err.into()),
            },
        }
    }

    /// The last `lines` lines of `log`, safe for a terminal, and whether it has more before
    /// them (see `master::log_tail`); none for a log without output.
    pub async fn tail(
        &self,
        log: &StepLog,
        lines: usize,
    ) -> Result<Option<(Vec<String>, bool)>, LogError> {
        match self.locate(log).await {
            Located::File(path) => {
                Ok(
                    tokio::task::spawn_blocking(move || log_tail::tail(&path, lines))
                        .await
                        .map_err(|err| StoreError::Task(err.to_string()))??,
                )
            }
            Located::Store => {
                let size = self.size(log).await?;
                let start = size.saturating_sub(log_tail::TAIL_BYTES);
                let (bytes, _) = self.read(log, start, log_tail::TAIL_BYTES as usize).await?;
                Ok(log_tail::tail_of(&bytes, start > 0, lines))
            }
        }
    }

    /// Whether a step may still add to its log, by the store: a step ends (also when its build
    /// is cut short) after its last output was stored.
    pub async fn step_running(&self, log: &StepLog) -> Result<bool, LogError> {
        Ok(self.store.step_running(log.build_id, log.step).await?)
    }

    /// Follows a log kept in the store (see [`LogSource::locate`]): its bytes from `offset`
    /// as they are stored, in pieces of at most [`LOG_CHUNK`], ending once the step has ended
    /// and everything stored was sent. Polls the store every [`STORE_FOLLOW_POLL`] while the
    /// step runs; dropping the stream (the follower left) ends it.
    pub fn follow_stored(
        &self,
        log: StepLog,
        offset: u64,
    ) -> impl futures_util::Stream<Item = Result<Vec<u8>, LogError>> + Send + 'static {
        struct Follow {
            store: SharedStore,
            log: StepLog,
            offset: u64,
            /// The step has ended: what is still unread is all there will be.
            draining: bool,
            done: bool,
        }
        let initial = Follow {
            store: std::sync::Arc::clone(&self.store),
            log,
            offset,
            draining: false,
            done: false,
        };
        futures_util::stream::unfold(initial, |mut follow| async move {
            if follow.done {
                return None;
            }
            loop {
                let log = &follow.log;
                let read = follow
                    .store
                    .read_log(log.build_id, log.step, log.stream, follow.offset, LOG_CHUNK)
                    .await;
                match read {
                    Ok((bytes, _)) if !bytes.is_empty() => {
                        follow.offset += bytes.len() as u64;
                        return Some((Ok(bytes), follow));
                    }
                    Ok(_) if follow.draining => return None,
                    Ok(_) => {}
                    Err(err) => {
                        follow.done = true;
                        return Some((Err(err.into()), follow));
                    }
                }
                // Nothing new: once the step has ended, one more read catches its tail (its
                // last chunk is stored before its end is).
                match still_to_come(&follow.store, log.build_id, log.step).await {
                    Ok(true) => tokio::time::sleep(STORE_FOLLOW_POLL).await,
                    Ok(false) => follow.draining = true,
                    Err(err) => {
                        follow.done = true;
                        return Some((Err(err.into()), follow));
                    }
                }
            }
        })
    }

    /// Which steps of these builds (each build's id and steps) have output in which streams.
    pub async fn index(&self, builds: Vec<(i64, &[StepRow])>) -> Result<LogIndex, LogError> {
        let mut stored = HashSet::new();
        if self.store.is_shared() {
            // A build without steps has no logs: no question to ask.
            let ids: Vec<i64> = builds
                .into_iter()
                .filter(|(_, steps)| !steps.is_empty())
                .map(|(id, _)| id)
                .collect();
            if !ids.is_empty() {
                for (build_id, step, stream) in self.store.log_streams(ids).await? {
                    stored.insert((build_id, step, stream.file_extension()));
                }
            }
        }
        Ok(LogIndex {
            logs_dir: self.logs_dir.clone(),
            stored,
        })
    }
}

/// Copies a step's log files into the shared store as they grow, in chunks of at most
/// [`LOG_CHUNK`] read back from the files. Shipping from the files rather than from a buffer
/// of its own keeps memory bounded whatever the store does: while the store is slow or
/// unreachable the output waits in the file (which has it anyway), and the copy catches up on
/// the next try from where the store's copy ends.
pub struct StoreShipper {
    store: SharedStore,
    owner: MasterLease,
    build_id: i64,
    step: i64,
    /// Per stream: its file and how much of it the store has.
    streams: Vec<(StreamKind, PathBuf, u64)>,
    /// When unshipped output is due in the store; none when everything is shipped.
    pub ship_at: Option<tokio::time::Instant>,
    /// The cluster declared this run lost: the store refuses its writes for good.
    fenced: bool,
}

impl StoreShipper {
    pub fn new(store: SharedStore, owner: MasterLease, build_id: i64, step: i64) -> StoreShipper {
        StoreShipper {
            store,
            owner,
            build_id,
            step,
            streams: Vec::new(),
            ship_at: None,
            fenced: false,
        }
    }

    /// Notes that `stream`'s file at `path` grew; its output is due in the store within
    /// [`LOG_SHIP_DELAY`].
    pub fn grew(&mut self, stream: StreamKind, path: &Path) {
        if !self.streams.iter().any(|(kind, _, _)| *kind == stream) {
            self.streams.push((stream, path.to_path_buf(), 0));
        }
        if self.ship_at.is_none() && !self.fenced {
            self.ship_at = Some(tokio::time::Instant::now() + LOG_SHIP_DELAY);
        }
    }

    /// Ships what the files (`written`: each stream's flushed size) have beyond what the
    /// store has; with `whole_chunks`, only full chunks (the rest waits for its timer, so a
    /// full buffer does not leave a sliver of a chunk behind). Failures are logged, not
    /// returned: the file keeps the output and the next ship tries again; only a fenced run
    /// gives up.
    pub async fn ship(&mut self, written: &[(StreamKind, u64)], whole_chunks: bool) {
        if !whole_chunks {
            self.ship_at = None;
        }
        if self.fenced {
            return;
        }
        for (stream, path, shipped) in &mut self.streams {
            let Some(&(_, size)) = written.iter().find(|(kind, _)| kind == stream) else {
                continue;
            };
            while *shipped < size && (!whole_chunks || size - *shipped >= LOG_CHUNK as u64) {
                let want = usize::try_from(size - *shipped)
                    .unwrap_or(LOG_CHUNK)
                    .min(LOG_CHUNK);
                let result = match read_piece(path, *shipped, want).await {
                    Ok(piece) if piece.is_empty() => break,
                    Ok(piece) => {
                        let count = piece.len() as u64;
                        self.store
                            .append_log(
                                &self.owner,
                                self.build_id,
                                self.step,
                                *stream,
                                *shipped,
                                piece,
                            )
                            .await
                            .map(|()| count)
                            .map_err(LogError::from)
                    }
                    Err(err) => Err(LogError::from(err)),
                };
                match result {
                    Ok(count) => *shipped += count,
                    Err(LogError::Store(StoreError::Fenced { .. })) => {
                        tracing::warn!(
                            build_id = self.build_id,
                            step = self.step,
                            "this master was declared lost; its log is no longer stored"
                        );
                        self.fenced = true;
                        return;
                    }
                    Err(err) => {
                        tracing::warn!(
                            build_id = self.build_id,
                            step = self.step,
                            stream = stream.file_extension(),
                            "cannot store a log chunk (retrying): {err}"
                        );
                        self.ship_at = Some(tokio::time::Instant::now() + LOG_SHIP_RETRY);
                        return;
                    }
                }
            }
        }
    }

    /// How much of `stream` waits to be shipped, given its flushed size.
    pub fn unshipped(&self, stream: StreamKind, size: u64) -> u64 {
        self.streams
            .iter()
            .find(|(kind, _, _)| *kind == stream)
            .map_or(size, |(_, _, shipped)| size.saturating_sub(*shipped))
    }
}

async fn read_piece(path: &Path, offset: u64, want: usize) -> std::io::Result<Vec<u8>> {
    let mut file = tokio::fs::File::open(path).await?;
    file.seek(SeekFrom::Start(offset)).await?;
    let mut piece = Vec::with_capacity(want);
    file.take(want as u64).read_to_end(&mut piece).await?;
    Ok(piece)
}

/// A SQLite store that says it is shared, so the shared-store paths (shipping, reading from
/// the store, following it) run in unit tests without PostgreSQL.
#[cfg(test)]
pub(crate) mod testing {
    use crate::change::ChangeSpec;
    use crate::master::store::sqlite::SqliteStore;
    use crate::master::store::*;
    use crate::proto::StreamKind;
    use crate::status::{BuildResult, JobRecord, LastBuild};

    pub(crate) struct Shared(pub SqliteStore);

    #[async_trait::async_trait]
    impl Store for Shared {
        fn is_shared(&self) -> bool {
            true
        }

        async fn change(&self, id: i64) -> Result<Option<StoredChange>, StoreError> {
            self.0.change(id).await
        }

        async fn hold_singleton(
            &self,
            job: &str,
            owner: &MasterLease,
            lease: std::time::Duration,
        ) -> Result<bool, StoreError> {
            self.0.hold_singleton(job, owner, lease).await
        }

        async fn save_link_code(
            &self,
            code_hash: &str,
            account: &str,
            uid: u32,
            expires_at: f64,
        ) -> Result<(), StoreError> {
            self.0
                .save_link_code(code_hash, account, uid, expires_at)
                .await
        }

        async fn take_link_code(
            &self,
            code_hash: &str,
            now: f64,
        ) -> Result<Option<(String, u32)>, StoreError> {
            self.0.take_link_code(code_hash, now).await
        }

        async fn take_master_locks(
            &self,
            owner: &MasterLease,
            holder: &str,
            uses: Vec<crate::master::store::MasterLockUse>,
        ) -> Result<bool, StoreError> {
            self.0.take_master_locks(owner, holder, uses).await
        }

        async fn release_master_locks(
            &self,
            owner: &MasterLease,
            holder: &str,
        ) -> Result<(), StoreError> {
            self.0.release_master_locks(owner, holder).await
        }

        async fn record_requests(&self, requests: Vec<NewRequest>) -> Result<Vec<i64>, StoreError> {
            self.0.record_requests(requests).await
        }

        async fn is_job_recorded(&self, job_name: &str) -> Result<bool, StoreError> {
            self.0.is_job_recorded(job_name).await
        }

        async fn pending_count(
            &self,
            builder: Option<&str>,
            who: Option<&str>,
        ) -> Result<usize, StoreError> {
            self.0.pending_count(builder, who).await
        }

        async fn pending_requests(&self) -> Result<Vec<StoredRequest>, StoreError> {
            self.0.pending_requests().await
        }

        async fn cancel_requests(
            &self,
            ids: Vec<i64>,
            collapsed_into: Option<(i64, Vec<i64>)>,
        ) -> Result<(), StoreError> {
            self.0.cancel_requests(ids, collapsed_into).await
        }

        async fn request(&self, id: i64) -> Result<Option<StoredRequest>, StoreError> {
            self.0.request(id).await
        }

        async fn request_patch(&self, id: i64) -> Result<Option<Vec<u8>>, StoreError> {
            self.0.request_patch(id).await
        }

        async fn request_ids_of_job(
            &self,
            job_name: &str,
            builder: &str,
        ) -> Result<Vec<i64>, StoreError> {
            self.0.request_ids_of_job(job_name, builder).await
        }

        async fn job_record(&self, job_name: &str) -> Result<JobRecord, StoreError> {
            self.0.job_record(job_name).await
        }

        async fn record_slave_loss(&self, request_id: i64) -> Result<i64, StoreError> {
            self.0.record_slave_loss(request_id).await
        }

        async fn start_build(
            &self,
            owner: &MasterLease,
            request_id: i64,
            builder: &str,
            slave: &str,
        ) -> Result<(i64, i64), StoreError> {
            self.0.start_build(owner, request_id, builder, slave).await
        }

        async fn record_build_source(
            &self,
            owner: &MasterLease,
            build_id: i64,
            branch: &str,
            revision: &str,
        ) -> Result<(), StoreError> {
            self.0
                .record_build_source(owner, build_id, branch, revision)
                .await
        }

        async fn start_step(
            &self,
            owner: &MasterLease,
            build_id: i64,
            number: i64,
            name: &str,
        ) -> Result<i64, StoreError> {
            self.0.start_step(owner, build_id, number, name).await
        }

        async fn finish_step(
            &self,
            owner: &MasterLease,
            step_id: i64,
            result: BuildResult,
            summary: &str,
        ) -> Result<(), StoreError> {
            self.0.finish_step(owner, step_id, result, summary).await
        }

        async fn finish_build(
            &self,
            owner: &MasterLease,
            build_id: i64,
            result: BuildResult,
            reason: Option<&str>,
            requeue: bool,
        ) -> Result<(), StoreError> {
            self.0
                .finish_build(owner, build_id, result, reason, requeue)
                .await
        }

        async fn recover_interrupted_builds(
            &self,
            owner: &MasterLease,
        ) -> Result<usize, StoreError> {
            self.0.recover_interrupted_builds(owner).await
        }

        async fn last_finished_builds(&self) -> Result<Vec<(String, LastBuild)>, StoreError> {
            self.0.last_finished_builds().await
        }

        async fn newest_builds(
            &self,
            builder: &str,
            limit: i64,
        ) -> Result<Vec<BuildRow>, StoreError> {
            self.0.newest_builds(builder, limit).await
        }

        async fn builds_overlapping(
            &self,
            builder: &str,
            from: f64,
            to: f64,
            limit: i64,
        ) -> Result<Vec<BuildRow>, StoreError> {
            self.0.builds_overlapping(builder, from, to, limit).await
        }

        async fn steps_of(&self, build_id: i64) -> Result<Vec<StepRow>, StoreError> {
            self.0.steps_of(build_id).await
        }

        async fn build_detail(&self, key: &BuildRef) -> Result<Option<BuildDetail>, StoreError> {
            self.0.build_detail(key).await
        }

        async fn recent_success_durations(
            &self,
            builder: &str,
            limit: i64,
        ) -> Result<Vec<f64>, StoreError> {
            self.0.recent_success_durations(builder, limit).await
        }

        async fn record_change(
            &self,
            change: &ChangeSpec,
            sent_by: &str,
        ) -> Result<Recorded, StoreError> {
            self.0.record_change(change, sent_by).await
        }

        async fn newest_changes(&self, limit: i64) -> Result<Vec<StoredChange>, StoreError> {
            self.0.newest_changes(limit).await
        }

        async fn builds_of_change(&self, change_id: i64) -> Result<Vec<(String, i64)>, StoreError> {
            self.0.builds_of_change(change_id).await
        }

        async fn poll_heads(&self, repository: &str) -> Result<Vec<(String, String)>, StoreError> {
            self.0.poll_heads(repository).await
        }

        async fn set_poll_head(
            &self,
            repository: &str,
            branch: &str,
            revision: &str,
        ) -> Result<(), StoreError> {
            self.0.set_poll_head(repository, branch, revision).await
        }

        async fn live_sessions(&self, now: f64) -> Result<Vec<StoredSession>, StoreError> {
            self.0.live_sessions(now).await
        }

        async fn session(
            &self,
            token_hash: &str,
            now: f64,
        ) -> Result<Option<StoredSession>, StoreError> {
            self.0.session(token_hash, now).await
        }

        async fn save_session(&self, session: &StoredSession, now: f64) -> Result<(), StoreError> {
            self.0.save_session(session, now).await
        }

        async fn register_master(
            &self,
            name: &str,
            info: &MasterInfo,
            lease: std::time::Duration,
        ) -> Result<MasterLease, StoreError> {
            self.0.register_master(name, info, lease).await
        }

        async fn renew_lease(
            &self,
            master: &MasterLease,
            info: &MasterInfo,
            lease: std::time::Duration,
        ) -> Result<(), StoreError> {
            self.0.renew_lease(master, info, lease).await
        }

        async fn retire_master(&self, master: &MasterLease) -> Result<(), StoreError> {
            self.0.retire_master(master).await
        }

        async fn masters(&self) -> Result<Vec<MasterRow>, StoreError> {
            self.0.masters().await
        }

        async fn reap_lost_masters(&self, by: &MasterLease) -> Result<Vec<LostMaster>, StoreError> {
            self.0.reap_lost_masters(by).await
        }

        async fn cluster_id(&self) -> Result<String, StoreError> {
            self.0.cluster_id().await
        }

        async fn append_events(
            &self,
            master: &str,
            events: Vec<(f64, String)>,
        ) -> Result<Vec<i64>, StoreError> {
            self.0.append_events(master, events).await
        }

        async fn events_after(
            &self,
            seq: i64,
            limit: i64,
        ) -> Result<Vec<(i64, f64, String)>, StoreError> {
            self.0.events_after(seq, limit).await
        }

        async fn last_event_seq(&self) -> Result<i64, StoreError> {
            self.0.last_event_seq().await
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
            self.0
                .append_log(owner, build_id, step, stream, offset, data)
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
            self.0.read_log(build_id, step, stream, offset, max).await
        }

        async fn log_size(
            &self,
            build_id: i64,
            step: i64,
            stream: StreamKind,
        ) -> Result<u64, StoreError> {
            self.0.log_size(build_id, step, stream).await
        }

        async fn log_streams(
            &self,
            build_ids: Vec<i64>,
        ) -> Result<Vec<(i64, i64, StreamKind)>, StoreError> {
            self.0.log_streams(build_ids).await
        }

        async fn land_enqueue(&self, entry: NewLand) -> Result<(i64, Option<i64>), StoreError> {
            self.0.land_enqueue(entry).await
        }

        async fn land_entries(
            &self,
            branch: Option<String>,
            active: bool,
            limit: i64,
        ) -> Result<Vec<LandEntry>, StoreError> {
            self.0.land_entries(branch, active, limit).await
        }

        async fn land_entry(&self, id: i64) -> Result<Option<LandEntry>, StoreError> {
            self.0.land_entry(id).await
        }

        async fn land_bundle(&self, id: i64) -> Result<Option<Vec<u8>>, StoreError> {
            self.0.land_bundle(id).await
        }

        async fn land_transition(
            &self,
            id: i64,
            from: LandState,
            to: LandState,
            progress: LandProgress,
        ) -> Result<bool, StoreError> {
            self.0.land_transition(id, from, to, progress).await
        }

        async fn record_test_results(
            &self,
            owner: &MasterLease,
            build_id: i64,
            cases: Vec<crate::master::store::TestCase>,
        ) -> Result<(), StoreError> {
            self.0.record_test_results(owner, build_id, cases).await
        }

        async fn test_counts(
            &self,
            build_id: i64,
        ) -> Result<crate::master::store::TestCounts, StoreError> {
            self.0.test_counts(build_id).await
        }

        async fn build_tests(
            &self,
            build_id: i64,
            order: crate::master::store::TestOrder,
            failures_only: bool,
            offset: i64,
            limit: i64,
        ) -> Result<Vec<crate::master::store::TestCase>, StoreError> {
            self.0
                .build_tests(build_id, order, failures_only, offset, limit)
                .await
        }

        async fn test_history(
            &self,
            builder: &str,
            suite: Option<String>,
            name: &str,
            limit: i64,
        ) -> Result<Vec<crate::master::store::TestHistoryRow>, StoreError> {
            self.0.test_history(builder, suite, name, limit).await
        }

        async fn failure_history(
            &self,
            build_id: i64,
            window: i64,
            max_failures: i64,
        ) -> Result<crate::master::store::FailureHistory, StoreError> {
            self.0.failure_history(build_id, window, max_failures).await
        }

        async fn flaky_tests(
            &self,
            builder: &str,
            window: i64,
            limit: i64,
        ) -> Result<Vec<crate::master::store::FlakyTest>, StoreError> {
            self.0.flaky_tests(builder, window, limit).await
        }

        async fn enqueue_notifications(
            &self,
            notifications: Vec<crate::master::store::NewNotification>,
        ) -> Result<usize, StoreError> {
            self.0.enqueue_notifications(notifications).await
        }

        async fn due_notifications(
            &self,
            now: f64,
            limit: i64,
        ) -> Result<Vec<crate::master::store::Notification>, StoreError> {
            self.0.due_notifications(now, limit).await
        }

        async fn finish_notification(
            &self,
            id: i64,
            state: crate::master::store::OutboxState,
            error: Option<&str>,
        ) -> Result<(), StoreError> {
            self.0.finish_notification(id, state, error).await
        }

        async fn retry_notification(
            &self,
            id: i64,
            error: &str,
            next_at: f64,
        ) -> Result<(), StoreError> {
            self.0.retry_notification(id, error, next_at).await
        }

        async fn notifications(
            &self,
            limit: i64,
        ) -> Result<Vec<crate::master::store::Notification>, StoreError> {
            self.0.notifications(limit).await
        }

        async fn save_bisect(
            &self,
            row: crate::master::store::BisectRow,
        ) -> Result<i64, StoreError> {
            self.0.save_bisect(row).await
        }

        async fn bisects(
            &self,
            limit: i64,
        ) -> Result<Vec<crate::master::store::BisectRow>, StoreError> {
            self.0.bisects(limit).await
        }

        // ---- shell (issue 25) ----
        async fn hold_build(
            &self,
            owner: &MasterLease,
            hold: crate::master::store::ShellHold,
        ) -> Result<(), StoreError> {
            self.0.hold_build(owner, hold).await
        }

        async fn shell_hold(
            &self,
            builder: &str,
            number: i64,
        ) -> Result<Option<crate::master::store::ShellHold>, StoreError> {
            self.0.shell_hold(builder, number).await
        }

        async fn held_dirs(
            &self,
            slave: &str,
            builder: &str,
            after: f64,
        ) -> Result<Vec<String>, StoreError> {
            self.0.held_dirs(slave, builder, after).await
        }

        async fn set_held_until(&self, build_id: i64, until: f64) -> Result<(), StoreError> {
            self.0.set_held_until(build_id, until).await
        }

        async fn start_shell_session(
            &self,
            session: crate::master::store::ShellSession,
        ) -> Result<i64, StoreError> {
            self.0.start_shell_session(session).await
        }

        async fn end_shell_session(&self, id: i64, at: f64) -> Result<i64, StoreError> {
            self.0.end_shell_session(id, at).await
        }

        async fn shell_sessions(
            &self,
            build_id: i64,
        ) -> Result<Vec<crate::master::store::ShellSession>, StoreError> {
            self.0.shell_sessions(build_id).await
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
            self.0
                .put_artifact_chunk(owner, build_id, path, seq, data)
                .await
        }

        async fn record_artifact(
            &self,
            owner: &MasterLease,
            artifact: &crate::master::store::NewArtifact,
            in_store: bool,
        ) -> Result<(), StoreError> {
            self.0.record_artifact(owner, artifact, in_store).await
        }

        async fn artifacts_of(
            &self,
            build_id: i64,
        ) -> Result<Vec<crate::master::store::ArtifactRow>, StoreError> {
            self.0.artifacts_of(build_id).await
        }

        async fn artifact_chunk(
            &self,
            build_id: i64,
            path: &str,
            seq: u64,
        ) -> Result<Option<Vec<u8>>, StoreError> {
            self.0.artifact_chunk(build_id, path, seq).await
        }

        async fn prune_candidates(
            &self,
            builder: &str,
            part: crate::master::store::PrunePart,
            finished_before: f64,
            keep_last: i64,
            limit: i64,
        ) -> Result<Vec<(i64, i64)>, StoreError> {
            self.0
                .prune_candidates(builder, part, finished_before, keep_last, limit)
                .await
        }

        async fn prune_build_part(
            &self,
            build_id: i64,
            part: crate::master::store::PrunePart,
        ) -> Result<(), StoreError> {
            self.0.prune_build_part(build_id, part).await
        }

        async fn old_builds(
            &self,
            builder: &str,
            finished_before: f64,
            keep_last: i64,
            now: f64,
            limit: i64,
        ) -> Result<Vec<(i64, i64)>, StoreError> {
            self.0
                .old_builds(builder, finished_before, keep_last, now, limit)
                .await
        }

        async fn delete_build(&self, build_id: i64) -> Result<(), StoreError> {
            self.0.delete_build(build_id).await
        }

        async fn delete_cancelled_requests(
            &self,
            submitted_before: f64,
            limit: i64,
        ) -> Result<u64, StoreError> {
            self.0
                .delete_cancelled_requests(submitted_before, limit)
                .await
        }

        async fn reclaim_space(&self) -> Result<u64, StoreError> {
            self.0.reclaim_space().await
        }
    }

    /// A shared test store in `dir` with one registered master and one running build with
    /// one step: (store, its SQLite inside, owner, build id, step id).
    pub(crate) async fn running_build(
        dir: &std::path::Path,
    ) -> (SharedStore, SqliteStore, MasterLease, i64, i64) {
        let sqlite = SqliteStore::open(&dir.join("state.sqlite")).expect("open");
        let store: SharedStore = std::sync::Arc::new(Shared(sqlite.clone()));
        let owner = store
            .register_master(
                "a",
                &MasterInfo::default(),
                std::time::Duration::from_secs(60),
            )
            .await
            .expect("registered");
        let ids = store
            .record_requests(vec![NewRequest {
                job_name: "j1".into(),
                jobid: "1".into(),
                builder: "linux".into(),
                who: Some("alice".into()),
                comment: None,
                repository: String::new(),
                branch: None,
                baserev: None,
                patch: None,
                patch_level: 1,
                submitted_at: 1.0,
                properties: Default::default(),
                kind: crate::status::RequestKind::Try,
                reason: None,
                change_ids: Vec::new(),
            }])
            .await
            .expect("recorded");
        let (build_id, _) = store
            .start_build(&owner, ids[0], "linux", "s1")
            .await
            .expect("started");
        let step_id = store
            .start_step(&owner, build_id, 1, "make test")
            .await
            .expect("step");
        (store, sqlite, owner, build_id, step_id)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures_util::StreamExt;

    use super::testing::running_build;
    use super::*;
    use crate::master::store::sqlite::SqliteStore;
    use crate::status::BuildResult;

    fn stdout_log(build_id: i64) -> StepLog {
        StepLog {
            builder: "linux".into(),
            number: 1,
            build_id,
            step: 1,
            step_name: "make test".into(),
            stream: StreamKind::Stdout,
        }
    }

    #[tokio::test]
    async fn a_log_written_on_one_master_is_served_by_another_from_the_store_alone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, _, owner, build_id, step_id) = running_build(dir.path()).await;
        let log = stdout_log(build_id);
        // The writing master's file, shipped in chunks (150 KiB: three chunks, two borders).
        let writer_logs = dir.path().join("a-logs");
        let path = file_path(&writer_logs, "linux", 1, 1, "make test", StreamKind::Stdout);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
        let text: Vec<u8> = (0..150 * 1024).map(|n| b"abcdefghij\n"[n % 11]).collect();
        std::fs::write(&path, &text).expect("write");
        let mut shipper = StoreShipper::new(Arc::clone(&store), owner.clone(), build_id, 1);
        shipper.grew(StreamKind::Stdout, &path);
        shipper
            .ship(&[(StreamKind::Stdout, text.len() as u64)], false)
            .await;
        assert_eq!(shipper.unshipped(StreamKind::Stdout, text.len() as u64), 0);

        // Another master: no file of this log on its disk.
        let reader = LogSource::new(dir.path().join("b-logs"), Arc::clone(&store));
        assert_eq!(reader.locate(&log).await, Located::Store);
        assert_eq!(reader.size(&log).await.expect("size"), text.len() as u64);
        let (whole, size) = reader.read(&log, 0, usize::MAX).await.expect("read");
        assert_eq!((whole.len(), size), (text.len(), text.len() as u64));
        assert!(whole == text);
        // A range across the first chunk border, and one across the second to the end.
        let border = LOG_CHUNK as u64;
        let (piece, _) = reader.read(&log, border - 5, 10).await.expect("read");
        assert_eq!(piece, text[LOG_CHUNK - 5..LOG_CHUNK + 5]);
        let (piece, _) = reader
            .read(&log, 2 * border - 3, 1 << 20)
            .await
            .expect("read");
        assert!(piece == text[2 * LOG_CHUNK - 3..], "{} bytes", piece.len());
        assert_eq!(
            reader.tail(&log, 2).await.expect("tail"),
            Some((vec!["abcdefghij".to_string(), "abcdefg".to_string()], true))
        );
        // The build's page links the stream it has, and only that one.
        let steps = store.steps_of(build_id).await.expect("steps");
        let index = reader
            .index(vec![(build_id, steps.as_slice())])
            .await
            .expect("index");
        assert!(index.has("linux", 1, build_id, &steps[0], StreamKind::Stdout));
        assert!(!index.has("linux", 1, build_id, &steps[0], StreamKind::Stderr));

        // Followed from the middle while the step runs: more output arrives, the step ends,
        // the follow ends with everything.
        let mut follow = Box::pin(reader.follow_stored(log.clone(), 100 * 1024));
        let first = follow.next().await.expect("a piece").expect("read");
        // What is stored from there (less than a chunk: up to the end so far).
        assert!(first == text[100 * 1024..], "{} bytes", first.len());
        let mut more = text.clone();
        more.extend_from_slice(b"the end\n");
        std::fs::write(&path, &more).expect("write");
        shipper.grew(StreamKind::Stdout, &path);
        shipper
            .ship(&[(StreamKind::Stdout, more.len() as u64)], false)
            .await;
        let finisher = {
            let store = Arc::clone(&store);
            let owner = owner.clone();
            tokio::spawn(async move {
                tokio::time::sleep(STORE_FOLLOW_POLL).await;
                store
                    .finish_step(&owner, step_id, BuildResult::Success, "ok")
                    .await
            })
        };
        let mut rest = Vec::new();
        let collected = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(piece) = follow.next().await {
                rest.extend_from_slice(&piece.expect("read"));
            }
        })
        .await;
        assert!(collected.is_ok(), "the follow ends when the step ends");
        finisher.await.expect("task").expect("finished");
        assert_eq!(rest, b"the end\n");
    }

    #[tokio::test]
    async fn a_follower_that_comes_before_the_step_waits_for_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, _, owner, build_id, first_step) = running_build(dir.path()).await;
        // Step 2 has not started yet; its follower on another master must not end at once.
        let log = StepLog {
            step: 2,
            step_name: "later".into(),
            ..stdout_log(build_id)
        };
        let reader = LogSource::new(dir.path().join("b-logs"), Arc::clone(&store));
        let mut follow = Box::pin(reader.follow_stored(log, 0));
        let writer = {
            let (store, owner) = (Arc::clone(&store), owner.clone());
            tokio::spawn(async move {
                tokio::time::sleep(3 * STORE_FOLLOW_POLL).await;
                store
                    .finish_step(&owner, first_step, BuildResult::Success, "ok")
                    .await?;
                let step = store.start_step(&owner, build_id, 2, "later").await?;
                store
                    .append_log(
                        &owner,
                        build_id,
                        2,
                        StreamKind::Stdout,
                        0,
                        b"late\n".to_vec(),
                    )
                    .await?;
                store
                    .finish_step(&owner, step, BuildResult::Success, "ok")
                    .await
            })
        };
        let mut got = Vec::new();
        let collected = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(piece) = follow.next().await {
                got.extend_from_slice(&piece.expect("read"));
            }
        })
        .await;
        assert!(collected.is_ok(), "the follow ends when the step ends");
        writer.await.expect("task").expect("written");
        assert_eq!(got, b"late\n");
    }

    #[tokio::test]
    async fn with_the_embedded_store_logs_are_files_only() {
        let dir = tempfile::tempdir().expect("temp dir");
        let sqlite = SqliteStore::open(&dir.path().join("state.sqlite")).expect("open");
        let store: SharedStore = Arc::new(sqlite);
        let source = LogSource::new(dir.path().join("logs"), store);
        let log = stdout_log(1);
        let path = file_path(
            &dir.path().join("logs"),
            "linux",
            1,
            1,
            "make test",
            log.stream,
        );
        assert_eq!(source.locate(&log).await, Located::File(path.clone()));
        assert_eq!(
            source.read(&log, 0, 10).await.expect("read"),
            (Vec::new(), 0)
        );
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
        std::fs::write(&path, b"hello\nworld\n").expect("write");
        assert_eq!(source.size(&log).await.expect("size"), 12);
        assert_eq!(
            source.read(&log, 3, 5).await.expect("read"),
            (b"lo\nwo".to_vec(), 12)
        );
        assert_eq!(
            source.tail(&log, 1).await.expect("tail"),
            Some((vec!["world".to_string()], true))
        );
    }
}
