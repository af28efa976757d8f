//! Sending a step's test reports to the master (issue 26): the files `workfiles::collect`
//! finds for the master's patterns, read from the handles it opened (never reopened by
//! name), in pieces of at most `MAX_REPORT_CHUNK`, then one `ReportsDone` with what was left
//! out. Parsing them is the master's.

use std::io::Read;
use std::path::Path;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::proto::{CollectReportsRequest, MAX_REPORT_CHUNK, Message};
use crate::slave::workfiles::{self, Limits};

/// Finds and sends the reports; blocking (run it on the blocking pool). Stops early when
/// `cancel` fires or the connection is gone. `refused` starts with what the caller refused.
pub fn send(
    dir: &Path,
    id: u64,
    request: &CollectReportsRequest,
    outgoing: &mpsc::Sender<Message>,
    cancel: &CancellationToken,
) {
    let limits = Limits {
        max_files: usize::try_from(request.max_files).unwrap_or(usize::MAX),
        max_file_bytes: request.max_file_bytes,
        max_total_bytes: request.max_total_bytes,
    };
    let mut refused = Vec::new();
    match workfiles::collect(dir, &request.patterns, &limits) {
        Err(err) => refused.push(err.to_string()),
        Ok(collected) => {
            refused.extend(collected.refused);
            for found in collected.found {
                if cancel.is_cancelled() {
                    refused.push("collection interrupted".into());
                    break;
                }
                match send_file(
                    id,
                    &found.relative,
                    found.file,
                    found.size,
                    outgoing,
                    cancel,
                ) {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(err) => refused.push(format!("{}: cannot read: {err}", found.relative)),
                }
            }
        }
    }
    let _ = outgoing.blocking_send(Message::ReportsDone { id, refused });
}

/// Sends one file (its first `size` bytes: a file still growing is cut where it was found);
/// false when the connection is gone.
fn send_file(
    id: u64,
    relative: &str,
    file: std::fs::File,
    size: u64,
    outgoing: &mpsc::Sender<Message>,
    cancel: &CancellationToken,
) -> std::io::Result<bool> {
    let mut reader = file.take(size);
    let mut sent = 0u64;
    loop {
        let mut piece = Vec::with_capacity(MAX_REPORT_CHUNK);
        (&mut reader)
            .take(MAX_REPORT_CHUNK as u64)
            .read_to_end(&mut piece)?;
        sent += piece.len() as u64;
        let last = piece.is_empty() || sent >= size || cancel.is_cancelled();
        let message = Message::ReportChunk {
            id,
            path: relative.to_string(),
            data: piece,
            last,
        };
        if outgoing.blocking_send(message).is_err() {
            return Ok(false);
        }
        if last {
            return Ok(true);
        }
    }
}
