//! Artifacts: the files a step keeps (`artifacts = ["dist/*.tar.gz"]`), received from the slave
//! as it streams them, checked (size, limits, SHA-256, a path that stays inside), written under
//! `MASTER/artifacts/BUILDER/NUMBER/PATH` and recorded through the store; with a shared store
//! also copied into it in chunks, so every master serves them. And the reading side every front
//! end uses: where an artifact's bytes are and a byte range of them as a stream.
//!
//! Not here: finding the files on the slave (`slave::workfiles`), the RPC (`proto`), HTTP
//! ranges and SSH output (`web`, `sshd`).

use std::path::{Component, Path, PathBuf};

use sha2::Digest as _;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::master::store::{
    ARTIFACT_CHUNK, ArtifactRow, MasterLease, NewArtifact, SharedStore, StoreError,
};

/// What one step may keep: a build is not a file server, and the master's disk is shared.
pub const MAX_FILES: u64 = 1000;
pub const MAX_FILE_BYTES: u64 = 4 << 30;
pub const MAX_TOTAL_BYTES: u64 = 8 << 30;

/// Where this master keeps a build's artifacts.
pub fn build_dir(master_dir: &Path, builder: &str, number: i64) -> PathBuf {
    master_dir
        .join("artifacts")
        .join(builder)
        .join(number.to_string())
}

/// Removes the half-written uploads (`artifacts/BUILDER/.incoming-*`) a crash of this master
/// left behind; returns how many. Run at start, before the SSH listener serves anyone, so no
/// upload of this run can be in flight. Each master has its own directory (a shared store keeps
/// its own copy of the bytes), so what is here is this master's alone.
pub async fn remove_crash_leftovers(master_dir: &Path) -> std::io::Result<u64> {
    let mut removed = 0;
    let mut builders = match tokio::fs::read_dir(master_dir.join("artifacts")).await {
        Ok(builders) => builders,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(err) => return Err(err),
    };
    while let Some(builder) = builders.next_entry().await? {
        if !builder.file_type().await?.is_dir() {
            continue;
        }
        let mut entries = tokio::fs::read_dir(builder.path()).await?;
        while let Some(entry) = entries.next_entry().await? {
            let leftover = entry
                .file_name()
                .to_string_lossy()
                .starts_with(".incoming-");
            if leftover && entry.file_type().await?.is_file() {
                tokio::fs::remove_file(entry.path()).await?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// `path` as a relative path that stays inside: only plain components (no `..`, `.`, root or
/// empty part), no NUL. A peer's path is never joined otherwise.
pub fn safe_relative(path: &str) -> Option<PathBuf> {
    if path.is_empty() || path.contains('\0') || path.starts_with('/') || path.contains("//") {
        return None;
    }
    // By the text, not `Path::components`, which drops a `.` in the middle unseen.
    let plain = path.split('/').all(|part| !matches!(part, "" | "." | ".."));
    let relative = Path::new(path);
    (plain
        && relative
            .components()
            .all(|component| matches!(component, Component::Normal(_))))
    .then(|| relative.to_path_buf())
}

/// Why a file the slave sent was not kept; the line goes into the step's log.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("refused {path:?}: not a relative path inside the work tree")]
    BadPath { path: String },
    #[error("refused {path}: {size} bytes is over the limit of {limit} per file")]
    TooLarge { path: String, size: u64, limit: u64 },
    #[error("refused {path}: over the limit of {limit} files or {bytes} bytes per step")]
    OverLimits {
        path: String,
        limit: u64,
        bytes: u64,
    },
    #[error("{path}: {received} bytes arrived of the {size} announced")]
    WrongSize {
        path: String,
        received: u64,
        size: u64,
    },
    #[error("{path}: the checksum does not match (sent {sent}, received {received})")]
    Checksum {
        path: String,
        sent: String,
        received: String,
    },
    #[error("the slave sent file data out of order")]
    OutOfOrder,
    #[error("cannot store {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot record {path}: {source}")]
    Store { path: String, source: StoreError },
}

/// One file arriving. Its bytes are hashed and written by a blocking thread of its own, so
/// the build task only hands pieces over: the hashing and the disk run beside the network
/// instead of after it, without a trip to the blocking pool per write.
struct Incoming {
    path: String,
    size: u64,
    received: u64,
    temp: PathBuf,
    /// Dropped to tell the writer the file is whole.
    pieces: Option<tokio::sync::mpsc::Sender<Vec<u8>>>,
    writer: tokio::task::JoinHandle<std::io::Result<Written>>,
}

/// What the writer thread made of a file: the file (not yet synced) and its SHA-256.
struct Written {
    file: std::fs::File,
    sha256: String,
}

/// Pieces waiting for the writer: bounded, so a slow disk slows the slave down.
const WRITER_QUEUE: usize = 16;

fn write_pieces(
    mut file: std::fs::File,
    mut pieces: tokio::sync::mpsc::Receiver<Vec<u8>>,
) -> std::io::Result<Written> {
    use std::io::Write as _;
    let mut hasher = sha2::Sha256::new();
    while let Some(piece) = pieces.blocking_recv() {
        hasher.update(&piece);
        file.write_all(&piece)?;
    }
    Ok(Written {
        file,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// Receives one collection's files for one step of a running build.
pub struct Sink {
    dir: PathBuf,
    store: SharedStore,
    owner: MasterLease,
    build_id: i64,
    step: i64,
    current: Option<Incoming>,
    /// The rest of a refused file is dropped as it arrives.
    discarding: bool,
    files: u64,
    bytes: u64,
    /// What was kept, for the log.
    pub kept: Vec<NewArtifact>,
    /// What went wrong, one line each; any makes the collection fail.
    pub errors: Vec<String>,
}

impl Sink {
    pub fn new(
        dir: PathBuf,
        store: SharedStore,
        owner: MasterLease,
        build_id: i64,
        step: i64,
    ) -> Sink {
        Sink {
            dir,
            store,
            owner,
            build_id,
            step,
            current: None,
            discarding: false,
            files: 0,
            bytes: 0,
            kept: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// A file is announced. A refusal drops its bytes as they come.
    pub async fn start(&mut self, path: String, size: u64) -> Result<(), ReceiveError> {
        self.abandon().await;
        self.discarding = true;
        let Some(relative) = safe_relative(&path) else {
            return Err(ReceiveError::BadPath { path });
        };
        if size > MAX_FILE_BYTES {
            return Err(ReceiveError::TooLarge {
                path,
                size,
                limit: MAX_FILE_BYTES,
            });
        }
        if self.files + 1 > MAX_FILES || self.bytes.saturating_add(size) > MAX_TOTAL_BYTES {
            return Err(ReceiveError::OverLimits {
                path,
                limit: MAX_FILES,
                bytes: MAX_TOTAL_BYTES,
            });
        }
        let io = |source| ReceiveError::Io {
            path: path.clone(),
            source,
        };
        tokio::fs::create_dir_all(&self.dir).await.map_err(io)?;
        // Written beside the build's directory under a name no artifact path can have (a
        // build directory is a number), renamed into place once whole and checked: a reader
        // never sees half a file.
        let temp = self.dir.with_file_name(format!(
            ".incoming-{}-{}-{}",
            self.dir
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default(),
            self.step,
            self.files
        ));
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&temp)
            .await
            .map_err(io)?
            .into_std()
            .await;
        let _ = relative;
        self.files += 1;
        self.bytes = self.bytes.saturating_add(size);
        self.discarding = false;
        let (pieces, queued) = tokio::sync::mpsc::channel(WRITER_QUEUE);
        self.current = Some(Incoming {
            path,
            size,
            received: 0,
            temp,
            pieces: Some(pieces),
            writer: tokio::task::spawn_blocking(move || write_pieces(file, queued)),
        });
        Ok(())
    }

    pub async fn data(&mut self, data: Vec<u8>) -> Result<(), ReceiveError> {
        if self.discarding {
            return Ok(());
        }
        let Some(incoming) = self.current.as_mut() else {
            return Err(ReceiveError::OutOfOrder);
        };
        incoming.received += data.len() as u64;
        if incoming.received > incoming.size {
            let error = ReceiveError::WrongSize {
                path: incoming.path.clone(),
                received: incoming.received,
                size: incoming.size,
            };
            self.abandon().await;
            self.discarding = true;
            return Err(error);
        }
        let sent = match &incoming.pieces {
            Some(pieces) => pieces.send(data).await.is_ok(),
            None => false,
        };
        if !sent {
            // The writer stopped: a write failed, and it says how.
            let path = incoming.path.clone();
            incoming.pieces = None;
            let source = match (&mut incoming.writer).await {
                Ok(Err(err)) => err,
                Ok(Ok(_)) => std::io::Error::other("the writer stopped early"),
                Err(join) => std::io::Error::other(join.to_string()),
            };
            self.abandon().await;
            self.discarding = true;
            return Err(ReceiveError::Io { path, source });
        }
        Ok(())
    }

    /// The file is whole: checked, put in place, copied into a shared store, recorded.
    pub async fn end(&mut self, sent: String) -> Result<Option<&NewArtifact>, ReceiveError> {
        if self.discarding {
            self.discarding = false;
            return Ok(None);
        }
        let Some(mut incoming) = self.current.take() else {
            return Err(ReceiveError::OutOfOrder);
        };
        incoming.pieces = None;
        let path = incoming.path.clone();
        let written = match (&mut incoming.writer).await {
            Ok(Ok(written)) => written,
            Ok(Err(source)) => {
                let _ = tokio::fs::remove_file(&incoming.temp).await;
                return Err(ReceiveError::Io { path, source });
            }
            Err(join) => {
                let _ = tokio::fs::remove_file(&incoming.temp).await;
                let source = std::io::Error::other(join.to_string());
                return Err(ReceiveError::Io { path, source });
            }
        };
        let received = written.sha256;
        let fail = |error: ReceiveError, temp: PathBuf| async move {
            let _ = tokio::fs::remove_file(&temp).await;
            Err(error)
        };
        if incoming.received != incoming.size {
            let error = ReceiveError::WrongSize {
                path,
                received: incoming.received,
                size: incoming.size,
            };
            return fail(error, incoming.temp).await;
        }
        if received != sent {
            let error = ReceiveError::Checksum {
                path,
                sent,
                received,
            };
            return fail(error, incoming.temp).await;
        }
        let io = |source| ReceiveError::Io {
            path: path.clone(),
            source,
        };
        let file = written.file;
        let synced = tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .unwrap_or_else(|join| Err(std::io::Error::other(join.to_string())));
        if let Err(source) = synced {
            return fail(io(source), incoming.temp).await;
        }
        let relative =
            safe_relative(&path).ok_or_else(|| ReceiveError::BadPath { path: path.clone() })?;
        let target = self.dir.join(&relative);
        let placed = async {
            if let Some(parent) = target.parent() {
                tokio::fs::create_dir_all(parent).await?;
            }
            tokio::fs::rename(&incoming.temp, &target).await
        }
        .await;
        if let Err(source) = placed {
            return fail(io(source), incoming.temp).await;
        }
        let artifact = NewArtifact {
            build_id: self.build_id,
            step: self.step,
            path: path.clone(),
            size: incoming.size,
            sha256: received,
        };
        let shared = self.store.is_shared();
        if shared {
            self.copy_into_store(&target, &path).await?;
        }
        self.store
            .record_artifact(&self.owner, &artifact, shared)
            .await
            .map_err(|source| ReceiveError::Store {
                path: path.clone(),
                source,
            })?;
        self.kept.push(artifact);
        Ok(self.kept.last())
    }

    /// Copies a kept file into the shared store, a chunk at a time (memory stays at one chunk).
    async fn copy_into_store(&self, file: &Path, path: &str) -> Result<(), ReceiveError> {
        let io = |source| ReceiveError::Io {
            path: path.to_string(),
            source,
        };
        let mut reader = tokio::fs::File::open(file).await.map_err(io)?;
        let mut seq = 0u64;
        loop {
            let mut chunk = Vec::with_capacity(ARTIFACT_CHUNK as usize);
            let read = (&mut reader)
                .take(ARTIFACT_CHUNK)
                .read_to_end(&mut chunk)
                .await
                .map_err(io)?;
            if read == 0 {
                return Ok(());
            }
            self.store
                .put_artifact_chunk(&self.owner, self.build_id, path, seq, chunk)
                .await
                .map_err(|source| ReceiveError::Store {
                    path: path.to_string(),
                    source,
                })?;
            seq += 1;
        }
    }

    /// Drops a file that did not arrive whole.
    async fn abandon(&mut self) {
        if let Some(incoming) = self.current.take() {
            // Without its sender the writer ends after what is queued, into a removed file.
            drop(incoming.pieces);
            let _ = tokio::fs::remove_file(&incoming.temp).await;
        }
    }

    /// The collection ended: a file still open did not arrive whole.
    pub async fn close(&mut self) {
        if let Some(incoming) = &self.current {
            self.errors.push(format!(
                "{}: the collection ended after {} of {} bytes",
                incoming.path, incoming.received, incoming.size
            ));
        }
        self.abandon().await;
    }
}

/// Where an artifact's bytes are for this master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Located {
    /// This master's own copy.
    File(PathBuf),
    /// Only the shared store has it (another master received it).
    Store,
    /// Nowhere (pruned, or received by a master whose disk this one cannot see).
    Gone,
}

/// Finds an artifact of a build (by its recorded path) and where its bytes are.
pub async fn locate(
    store: &SharedStore,
    master_dir: &Path,
    builder: &str,
    number: i64,
    build_id: i64,
    path: &str,
) -> Result<Option<(ArtifactRow, Located)>, StoreError> {
    let Some(relative) = safe_relative(path) else {
        return Ok(None);
    };
    let Some(row) = store
        .artifacts_of(build_id)
        .await?
        .into_iter()
        .find(|row| row.path == path)
    else {
        return Ok(None);
    };
    let file = build_dir(master_dir, builder, number).join(relative);
    let located = match tokio::fs::symlink_metadata(&file).await {
        Ok(metadata) if metadata.is_file() && metadata.len() == row.size => Located::File(file),
        _ if row.in_store => Located::Store,
        _ => Located::Gone,
    };
    Ok(Some((row, located)))
}

/// Bytes `start..end` of an artifact, as a stream of pieces of at most one chunk: memory stays
/// bounded whatever the size.
pub fn read_range(
    store: SharedStore,
    row: ArtifactRow,
    located: Located,
    start: u64,
    end: u64,
) -> impl futures_util::Stream<Item = std::io::Result<Vec<u8>>> + Send {
    enum Source {
        File(tokio::fs::File),
        Store,
    }
    struct State {
        store: SharedStore,
        row: ArtifactRow,
        located: Located,
        source: Option<Source>,
        position: u64,
        end: u64,
    }
    let state = State {
        store,
        row,
        located,
        source: None,
        position: start,
        end,
    };
    let stream = futures_util::stream::unfold(state, |mut state| async move {
        if state.position >= state.end {
            return None;
        }
        let piece = next_piece(&mut state).await;
        match piece {
            Ok(bytes) if bytes.is_empty() => None,
            Ok(bytes) => {
                state.position += bytes.len() as u64;
                Some((Ok(bytes), state))
            }
            Err(err) => {
                state.position = state.end;
                Some((Err(err), state))
            }
        }
    });
    async fn next_piece(state: &mut State) -> std::io::Result<Vec<u8>> {
        let want = (state.end - state.position).min(ARTIFACT_CHUNK);
        if state.source.is_none() {
            state.source = Some(match &state.located {
                Located::File(path) => {
                    let mut file = tokio::fs::File::open(path).await?;
                    file.seek(std::io::SeekFrom::Start(state.position)).await?;
                    Source::File(file)
                }
                Located::Store => Source::Store,
                Located::Gone => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "the artifact's bytes are gone",
                    ));
                }
            });
        }
        match state.source.as_mut() {
            Some(Source::File(file)) => {
                let mut bytes = Vec::with_capacity(want as usize);
                file.take(want).read_to_end(&mut bytes).await?;
                Ok(bytes)
            }
            Some(Source::Store) => {
                let seq = state.position / ARTIFACT_CHUNK;
                let chunk = state
                    .store
                    .artifact_chunk(state.row.build_id, &state.row.path, seq)
                    .await
                    .map_err(std::io::Error::other)?
                    .ok_or_else(|| {
                        std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            format!("chunk {seq} of {} is missing", state.row.path),
                        )
                    })?;
                let from = (state.position - seq * ARTIFACT_CHUNK) as usize;
                let to = (from + want as usize).min(chunk.len());
                Ok(chunk.get(from..to).unwrap_or_default().to_vec())
            }
            None => Ok(Vec::new()),
        }
    }
    stream
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths_are_kept() {
        for good in ["app", "target/release/app", "dist/a-1.0.tar.gz", "a b/c"] {
            assert!(safe_relative(good).is_some(), "{good}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            "./a",
            "a//b",
            "a\0b",
            "..",
            "a/",
        ] {
            assert!(safe_relative(bad).is_none(), "{bad:?}");
        }
    }
}
