//! Receiving artifacts the master sends into a builder's work tree (a step's
//! `fetch_artifacts`): each file written through `workfiles::create_inside` (no `..`, no
//! symlink followed anywhere on its path), its SHA-256 checked against the master's record
//! before it takes its name, the total held to the master's limit. Blocking: run it on the
//! blocking pool. What arrives is paced by the master's window ([`FILE_WINDOW`]), which this
//! side opens again with a `FileAck` per piece written.

use std::io::Write as _;
use std::path::Path;

use sha2::Digest as _;
use tokio::sync::mpsc;

use crate::proto::{Message, ReceiveRequest};
use crate::slave::workfiles;

/// A piece of a `ReceiveFiles` as the connection hands it over.
#[derive(Debug)]
pub enum Piece {
    Start { path: String, size: u64 },
    Data(Vec<u8>),
    End { sha256: String },
}

/// Writes the files of `request` as their pieces arrive on `pieces`; `Some(line)` says why it
/// stopped short (the first file refused ends the fetch: the step would run without it).
pub fn receive(
    dir: &Path,
    id: u64,
    request: &ReceiveRequest,
    pieces: &mut mpsc::UnboundedReceiver<Piece>,
    outgoing: &mpsc::Sender<Message>,
) -> Option<String> {
    let total: u64 = request.files.iter().map(|file| file.size).sum();
    if total > request.max_total_bytes {
        return Some(format!(
            "refused: {total} bytes of artifacts is over the limit of {}",
            request.max_total_bytes
        ));
    }
    for expected in &request.files {
        let Some(Piece::Start { path, size }) = pieces.blocking_recv() else {
            return Some("the master stopped sending".into());
        };
        if path != expected.path || size != expected.size {
            return Some(format!(
                "{path}: not the file announced ({})",
                expected.path
            ));
        }
        let mut placing = match workfiles::create_inside(dir, &path) {
            Ok(placing) => placing,
            Err(line) => return Some(line),
        };
        let mut hasher = sha2::Sha256::new();
        let mut received = 0u64;
        let failure = loop {
            match pieces.blocking_recv() {
                Some(Piece::Data(data)) => {
                    received += data.len() as u64;
                    if received > size {
                        break Some(format!("{path}: more than the {size} bytes announced"));
                    }
                    hasher.update(&data);
                    if let Err(err) = placing.file.write_all(&data) {
                        break Some(format!("cannot write {path}: {err}"));
                    }
                    let bytes = data.len() as u64;
                    if outgoing
                        .blocking_send(Message::FileAck { id, bytes })
                        .is_err()
                    {
                        break Some("the connection closed".into());
                    }
                }
                Some(Piece::End { sha256 }) => {
                    let got = hex::encode(std::mem::take(&mut hasher).finalize());
                    if received != size {
                        break Some(format!("{path}: {received} bytes arrived of {size}"));
                    }
                    if got != sha256 || got != expected.sha256 {
                        break Some(format!(
                            "{path}: the checksum does not match (recorded {}, received {got})",
                            expected.sha256
                        ));
                    }
                    break None;
                }
                Some(Piece::Start { .. }) | None => {
                    break Some(format!("{path}: the master stopped sending it"));
                }
            }
        };
        if let Some(failure) = failure {
            placing.abandon();
            return Some(failure);
        }
        if let Err(line) = placing.place() {
            return Some(line);
        }
    }
    None
}
