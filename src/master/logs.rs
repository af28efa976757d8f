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
pub const LOG_SHIP_DELAY: Duration = Duration::from_millis(100);
/// After the store refused or failed an append, how long before the next try (the file keeps
/// everything meanwhile, so nothing is lost by waiting).
const LOG_SHIP_RETRY: Duration = Duration::from_secs(1);
/// How often a follower of a log another master writes asks the store for more.
pub const STORE_FOLLOW_POLL: Duration = Duration::from_millis(200);

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
                match follow.store.step_running(log.build_id, log.step).await {
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
            for build_id in ids {
                for (step, stream) in self.store.log_streams(build_id).await? {
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
    /// store has. Failures are logged, not returned: the file keeps the output and the next
    /// ship tries again; only a fenced run gives up.
    pub async fn ship(&mut self, written: &[(StreamKind, u64)]) {
        self.ship_at = None;
        if self.fenced {
            return;
        }
        for (stream, path, shipped) in &mut self.streams {
            let Some(&(_, size)) = written.iter().find(|(kind, _)| kind == stream) else {
                continue;
            };
            while *shipped < size {
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
