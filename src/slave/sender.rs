//! Sending the files the master asked for by glob (test reports, artifacts): one blocking
//! reader for both, from the handles `workfiles::collect` opened (never reopened by name),
//! hashing as it reads. Run it on the blocking pool: a plain read into a buffer costs no
//! trip through the runtime per piece, and the bounded outgoing queue paces it to what the
//! connection carries.

use std::io::Read as _;

use sha2::Digest as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::proto::{CollectRequest, MAX_FILE_CHUNK, MAX_OUTPUT_CHUNK, Message, StreamKind};
use crate::slave::workfiles::{self, Limits};

/// How sending one file ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// All `size` bytes (fewer if the file shrank), with their SHA-256 in hex.
    Whole { sha256: String },
    /// `cancel` fired: the piece sent last was marked last.
    Cut,
    /// The connection is gone.
    Closed,
}

/// Sends the first `size` bytes of `file` (a file still growing is cut where it was found)
/// in pieces of at most `piece` bytes, each made a message by `frame(data, last)`. At least
/// one piece goes, so an empty file is sent too.
pub fn send_file(
    file: std::fs::File,
    size: u64,
    piece: usize,
    outgoing: &mpsc::Sender<Message>,
    cancel: &CancellationToken,
    mut frame: impl FnMut(Vec<u8>, bool) -> Message,
) -> std::io::Result<Sent> {
    let mut reader = file.take(size);
    let mut hasher = sha2::Sha256::new();
    let mut sent = 0u64;
    loop {
        let mut data = Vec::with_capacity(piece);
        (&mut reader).take(piece as u64).read_to_end(&mut data)?;
        sent += data.len() as u64;
        hasher.update(&data);
        let cut = cancel.is_cancelled();
        let last = data.is_empty() || sent >= size || cut;
        if outgoing.blocking_send(frame(data, last)).is_err() {
            return Ok(Sent::Closed);
        }
        if cut {
            return Ok(Sent::Cut);
        }
        if last {
            let sha256 = hex::encode(hasher.finalize());
            return Ok(Sent::Whole { sha256 });
        }
    }
}

/// Sends the files of `dir` that match the request's globs, one after the other, each as
/// `FileStart`, `FileData`s and `FileEnd` with its SHA-256; what was left out is one `Info`
/// line each. `Some(reason)` when the collection could not be done.
pub fn send_artifacts(
    outgoing: &mpsc::Sender<Message>,
    id: u64,
    dir: &std::path::Path,
    request: &CollectRequest,
    cancel: &CancellationToken,
) -> Option<String> {
    let limits = Limits {
        max_files: usize::try_from(request.max_files).unwrap_or(usize::MAX),
        max_file_bytes: request.max_file_bytes,
        max_total_bytes: request.max_total_bytes,
    };
    let collected = match workfiles::collect(dir, &request.patterns, &limits) {
        Ok(collected) => collected,
        Err(err) => return Some(err.to_string()),
    };
    let info = |line: String| {
        for piece in format!("{line}\n").into_bytes().chunks(MAX_OUTPUT_CHUNK) {
            let message = Message::Output {
                id,
                stream: StreamKind::Info,
                data: piece.to_vec(),
            };
            let _ = outgoing.blocking_send(message);
        }
    };
    for line in collected.refused {
        info(line);
    }
    if collected.found.is_empty() {
        info("no file matched the artifact patterns".into());
    }
    let closed = || Some("the connection closed".to_string());
    for found in collected.found {
        let start = Message::FileStart {
            id,
            path: found.relative.clone(),
            size: found.size,
        };
        if outgoing.blocking_send(start).is_err() {
            return closed();
        }
        let frame = |data, _last| Message::FileData { id, data };
        match send_file(
            found.file,
            found.size,
            MAX_FILE_CHUNK,
            outgoing,
            cancel,
            frame,
        ) {
            Ok(Sent::Whole { sha256 }) => {
                if outgoing
                    .blocking_send(Message::FileEnd { id, sha256 })
                    .is_err()
                {
                    return closed();
                }
            }
            Ok(Sent::Cut) => return Some("interrupted".into()),
            Ok(Sent::Closed) => return closed(),
            Err(err) => return Some(format!("cannot read {}: {err}", found.relative)),
        }
    }
    None
}
