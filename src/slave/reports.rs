//! Sending a step's test reports to the master (issue 26): the files `workfiles::collect`
//! finds for the master's patterns, sent by `sender::send_file` in `ReportChunk` pieces of at
//! most `MAX_REPORT_CHUNK`, then one `ReportsDone` with what was left out. Parsing them is
//! the master's.

use std::path::Path;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::proto::{CollectReportsRequest, MAX_REPORT_CHUNK, Message};
use crate::slave::sender::{self, Sent};
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
                let path = found.relative.clone();
                let frame = |data, last| Message::ReportChunk {
                    id,
                    path: path.clone(),
                    data,
                    last,
                };
                match sender::send_file(
                    found.file,
                    found.size,
                    MAX_REPORT_CHUNK,
                    outgoing,
                    cancel,
                    frame,
                ) {
                    Ok(Sent::Whole { .. } | Sent::Cut) => {}
                    Ok(Sent::Closed) => return,
                    Err(err) => refused.push(format!("{}: cannot read: {err}", found.relative)),
                }
            }
        }
    }
    let _ = outgoing.blocking_send(Message::ReportsDone { id, refused });
}
