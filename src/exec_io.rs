//! The standard streams of one exec command, as plain async byte streams: what the SSH server
//! hands to whoever serves a command (the master's control layer, the slave RPC), so nothing
//! below the SSH front end sees a russh type. Bottom layer.

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// The standard streams of one exec channel.
pub struct ExecIo<'a> {
    pub stdin: &'a mut (dyn AsyncRead + Unpin + Send),
    pub stdout: &'a mut (dyn AsyncWrite + Unpin + Send),
    pub stderr: &'a mut (dyn AsyncWrite + Unpin + Send),
    /// Cancelled when the client closes the channel (Ctrl-C on `try --wait`).
    pub client_gone: CancellationToken,
    /// The client's terminal, when it asked for one (`ssh -t`); only `shell` uses it.
    pub terminal: Option<Terminal>,
    /// Another writer onto `stdout`, owned, for a command written to from more than one task:
    /// the slave RPC, where a shell's relay writes the user's keystrokes to the slave itself
    /// instead of waking the RPC's writer for each. A message written on it must not be
    /// interleaved with writes on `stdout`.
    pub shared_stdout: Option<SharedWriter>,
}

/// An owned writer onto a command's stdout; see [`ExecIo::shared_stdout`].
pub type SharedWriter = Box<dyn AsyncWrite + Send + Unpin>;

/// A client's terminal: its type, its size, and its size changes as they come.
pub struct Terminal {
    pub term: String,
    pub cols: u16,
    pub rows: u16,
    pub resizes: tokio::sync::mpsc::UnboundedReceiver<(u16, u16)>,
}

impl ExecIo<'_> {
    /// Writes one line to stderr. A client that went away is not an error worth reporting.
    pub async fn say(&mut self, line: &str) {
        let _ = self.stderr.write_all(format!("{line}\n").as_bytes()).await;
    }

    /// Writes text to stdout; whether the client still reads is its own business.
    pub async fn print(&mut self, text: &str) {
        let _ = self.stdout.write_all(text.as_bytes()).await;
    }

    /// Writes one JSON line to stdout.
    pub async fn print_json(&mut self, value: &impl serde::Serialize) {
        match serde_json::to_string(value) {
            Ok(line) => self.print(&format!("{line}\n")).await,
            Err(err) => tracing::error!("cannot encode a stream item: {err}"),
        }
    }
}
