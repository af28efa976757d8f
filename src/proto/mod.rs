//! The master <-> slave RPC, shared by both ends: the messages, their framing, and the version
//! handshake. It knows nothing of SSH: frames travel over whatever byte stream the `slave`
//! exec channel gives (`sshd` on the master, `slave` on the slave).
//!
//! A frame is a 4-byte big-endian length and a postcard-encoded [`Message`]. Output travels as
//! raw bytes (postcard writes byte strings as a length and the bytes: no base64, no escaping).
//! Frames are bounded ([`MAX_FRAME`]) so a big log chunk never delays a keepalive for long.

pub mod frame;

use serde::{Deserialize, Serialize};

pub use frame::{DecodeError, FrameDecoder, encode};

/// Bumped on any incompatible change to [`Message`]. postcard is positional, so an added field
/// is one: 2 added `CheckoutRequest::submodules` and `ExitReport::exception`; 3 replaced
/// `error` and `exception` by [`Failure`] and added `ExitReport::checked_out`; 4 added the
/// test report, `Shell*` and artifact messages (an older slave would drop the connection on
/// the first one it cannot decode, so the handshake refuses it instead, with the versions);
/// 5 added `ReceiveFiles` and `FileAck` (fetching artifacts into a work tree).
pub const PROTOCOL_VERSION: u32 = 5;

/// The largest frame either side sends or accepts (the length prefix excluded). A checkout
/// message carries the whole try patch, so this bounds the patch size the RPC can carry.
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

/// The largest piece of command output in one `Output` message: small enough that a ping or a
/// keepalive waits behind at most one of them.
pub const MAX_OUTPUT_CHUNK: usize = 64 * 1024;

/// Which stream of a command a piece of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamKind {
    Stdout,
    Stderr,
    /// Lines the slave writes itself (checkout progress, "killed after timeout").
    Info,
}

impl StreamKind {
    /// The extension of this stream's log file on the master.
    pub fn file_extension(self) -> &'static str {
        match self {
            StreamKind::Stdout => "stdout",
            StreamKind::Stderr => "stderr",
            StreamKind::Info => "info",
        }
    }

    /// The stream whose log file has this extension.
    pub fn from_file_extension(extension: &str) -> Option<StreamKind> {
        [StreamKind::Stdout, StreamKind::Stderr, StreamKind::Info]
            .into_iter()
            .find(|stream| stream.file_extension() == extension)
    }
}

/// Everything that crosses the `slave` channel, in both directions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    // ---- handshake ----
    /// slave → master, first frame: who it is.
    Hello(Hello),
    /// master → slave: registered.
    Welcome {
        master: String,
    },
    /// master → slave: not registered; the slave logs the reason.
    Refused {
        reason: String,
    },

    // ---- master → slave ----
    /// Prepare a builder's work tree (fetch, check out, clean, apply the try patch).
    Checkout {
        id: u64,
        checkout: CheckoutRequest,
    },
    /// Run one command.
    StartCommand {
        id: u64,
        command: CommandRequest,
    },
    /// Stop a running checkout or command (SIGTERM to its process group, then SIGKILL).
    Interrupt {
        id: u64,
        reason: String,
    },
    Ping {
        nonce: u64,
    },
    /// Answer to a slave's keepalive.
    KeepaliveAck {
        nonce: u64,
    },

    // ---- slave → master ----
    Output {
        id: u64,
        stream: StreamKind,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// A checkout or command ended.
    Exit {
        id: u64,
        exit: ExitReport,
    },
    Pong {
        nonce: u64,
    },
    Keepalive {
        nonce: u64,
    },

    // ---- test reports (issue 26) ----
    /// master → slave, after a command step: send the step's test reports (files of the work
    /// tree matching the patterns, within the limits) as [`Message::ReportChunk`]s, then
    /// [`Message::ReportsDone`]. `id` is a fresh one, as for a command.
    CollectReports {
        id: u64,
        collect: CollectReportsRequest,
    },
    /// slave → master: the next piece of report `path` (relative to the step's work tree);
    /// `last` on a file's final piece. Files follow one another, never interleaved.
    ReportChunk {
        id: u64,
        path: String,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        last: bool,
    },
    /// slave → master: every report sent; `refused` says, one line each, what was left out
    /// (outside the work tree, a symlink, too large, over the limits).
    ReportsDone {
        id: u64,
        refused: Vec<String>,
    },
    // ---- shell into a held build (issue 25) ----
    /// master → slave: open a shell (or run one command) in a held build's directory.
    ShellOpen {
        id: u64,
        shell: ShellRequest,
    },
    /// master → slave: the user's keystrokes (or a command's stdin).
    ShellInput {
        id: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// master → slave: the user's terminal has a new size.
    ShellResize {
        id: u64,
        size: TermSize,
    },
    /// master → slave: the user's input ended (a command's stdin is closed).
    ShellEof {
        id: u64,
    },
    /// master → slave: end the shell now; its processes are killed.
    ShellClose {
        id: u64,
        reason: String,
    },
    /// Either way: the peer delivered data costing `cost` ([`shell_cost`]), so that much more
    /// may be sent. Each side keeps at most [`SHELL_WINDOW`] unacknowledged, so a shell that
    /// prints faster than its user reads (or a paste into a program that does not read)
    /// waits instead of filling the memory between them.
    ShellAck {
        id: u64,
        cost: u64,
    },
    /// slave → master: what the shell wrote.
    ShellOutput {
        id: u64,
        stream: StreamKind,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// slave → master: the shell ended (after its last output), or could not start.
    ShellExit {
        id: u64,
        exit_code: Option<i32>,
        signal: Option<i32>,
        error: Option<String>,
    },
    // ---- artifacts (issue 27) ----
    /// master → slave: send the files of the builder's work tree that match these globs (an
    /// `Exit` ends it; refusals come as `Info` output lines before it).
    CollectFiles {
        id: u64,
        collect: CollectRequest,
    },
    /// slave → master: a file follows, `size` bytes in `FileData` frames, then `FileEnd`.
    FileStart {
        id: u64,
        path: String,
        size: u64,
    },
    FileData {
        id: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// The file's SHA-256 (hex) as the sender read it; the receiver checks its own against it.
    /// `FileStart`, `FileData` and `FileEnd` also go master → slave after a `ReceiveFiles`.
    FileEnd {
        id: u64,
        sha256: String,
    },
    /// master → slave: artifacts follow (as `FileStart`, `FileData`s, `FileEnd`, in the order
    /// listed) to be written into the builder's work tree; an `Exit` ends it, refusals come
    /// as `Info` output lines before it.
    ReceiveFiles {
        id: u64,
        receive: ReceiveRequest,
    },
    /// slave → master: `bytes` more of a `ReceiveFiles`' data are written, so that much more
    /// may be sent (at most [`FILE_WINDOW`] is on its way unacknowledged).
    FileAck {
        id: u64,
        bytes: u64,
    },
}

/// What a `ReceiveFiles` brings: the files in the order they come, each at its relative path
/// under the builder's work tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiveRequest {
    pub builder: String,
    pub files: Vec<IncomingFile>,
    /// The slave refuses more than this in all (the master's limit, checked again there).
    pub max_total_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncomingFile {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// How many bytes of a `ReceiveFiles` may be unacknowledged: the master's outgoing queue is
/// unbounded, so this is what keeps a 4 GiB artifact out of both ends' memory.
pub const FILE_WINDOW: u64 = 4 * 1024 * 1024;

/// What a `CollectFiles` asks for: globs relative to the builder's work tree, and limits the
/// slave applies before sending anything (the master checks them again as bytes arrive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectRequest {
    pub builder: String,
    pub patterns: Vec<String>,
    pub max_files: u64,
    pub max_file_bytes: u64,
    pub max_total_bytes: u64,
}

/// The largest piece of a file in one `FileData` frame: big enough that a 200 MB artifact is
/// not a million frames, small enough that a keepalive never waits long behind one.
pub const MAX_FILE_CHUNK: usize = 256 * 1024;

/// How many bytes of shell data (counted by [`shell_cost`]) may be on their way, unacknowledged,
/// in each direction of one shell.
pub const SHELL_WINDOW: u64 = 1024 * 1024;

/// What a piece of shell data counts against [`SHELL_WINDOW`]: its bytes and a fixed part for
/// the message, so a flood of one-byte messages is bounded too.
pub fn shell_cost(bytes: usize) -> u64 {
    bytes as u64 + 256
}

/// An acknowledgement goes once this much is owed, not per message: per message, a keystroke's
/// echo queued behind the acknowledgement of the keystroke, and each one cost both processes
/// a frame (bench/results-issue-25.md). It stays below [`SHELL_WINDOW`] less the largest piece
/// of shell data (32 KiB), so a sender stopped at its window always gets the acknowledgement
/// that lets it go on once the peer has delivered everything.
pub const SHELL_ACK_AT: u64 = SHELL_WINDOW / 4;

/// Shell data delivered and not yet acknowledged to its sender; see [`SHELL_ACK_AT`].
#[derive(Debug, Default)]
pub struct AckOwed(u64);

impl AckOwed {
    /// Counts data costing `cost` as delivered: the acknowledgement to send now, if one is due.
    pub fn add(&mut self, cost: u64) -> Option<u64> {
        self.0 += cost;
        (self.0 >= SHELL_ACK_AT).then(|| std::mem::take(&mut self.0))
    }
}

/// A terminal's size in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermSize {
    pub cols: u16,
    pub rows: u16,
}

/// What a shell needs on the slave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShellRequest {
    /// The held build's directory under the slave's work directory.
    pub dir: String,
    /// The build's environment.
    pub env: Vec<(String, String)>,
    /// Run this with the user's shell `-c` instead of an interactive shell.
    pub command: Option<String>,
    /// A terminal (`TERM` and its size) when the user asked for one: the shell runs on a PTY.
    /// Without one its output comes back as stdout and stderr.
    pub pty: Option<(String, TermSize)>,
}

/// Which files of a step's work tree are its test reports, and how much of them to send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectReportsRequest {
    pub builder: String,
    /// The step's work tree, relative to the builder's (as [`CommandRequest::workdir`]).
    pub workdir: Option<String>,
    /// Globs relative to it.
    pub patterns: Vec<String>,
    pub max_files: u32,
    pub max_file_bytes: u64,
    pub max_total_bytes: u64,
}

/// The largest piece of a report in one [`Message::ReportChunk`]: a keepalive waits behind
/// at most one of them.
pub const MAX_REPORT_CHUNK: usize = 256 * 1024;

/// The slave's introduction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub name: String,
    pub protocol_version: u32,
    pub buildbot_version: String,
    pub os: String,
    pub arch: String,
    pub cpus: u32,
    /// The slave's keepalive settings, so the master watches the link by the same clock:
    /// either side that hears nothing for `keepalive_interval_ms` declares the other lost, and
    /// provokes traffic `keepalive_timeout_ms` before that.
    pub keepalive_interval_ms: u64,
    pub keepalive_timeout_ms: u64,
}

impl Hello {
    /// This slave's facts.
    pub fn for_this_host(
        name: &str,
        keepalive_interval: std::time::Duration,
        keepalive_timeout: std::time::Duration,
    ) -> Hello {
        Hello {
            keepalive_interval_ms: u64::try_from(keepalive_interval.as_millis())
                .unwrap_or(u64::MAX),
            keepalive_timeout_ms: u64::try_from(keepalive_timeout.as_millis()).unwrap_or(u64::MAX),
            name: name.to_string(),
            protocol_version: PROTOCOL_VERSION,
            buildbot_version: env!("CARGO_PKG_VERSION").to_string(),
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
            cpus: std::thread::available_parallelism()
                .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
                .unwrap_or(1),
        }
    }
}

/// What a checkout step needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckoutRequest {
    /// The builder's directory name under the slave's work directory.
    pub builder: String,
    pub repo: String,
    pub branch: String,
    pub revision: Option<String>,
    #[serde(with = "serde_bytes")]
    pub patch: Option<Vec<u8>>,
    pub patch_level: u32,
    /// Check out the submodules at the pointers the (patched) tree records. Without it a slave
    /// never fetches submodule contents.
    pub submodules: bool,
    /// The builder's other directories (`BUILDER~N`) a hold or a running build still uses:
    /// the slave removes the rest of them before this checkout. None: the master does not
    /// know, nothing is removed.
    pub keep_siblings: Option<Vec<String>>,
}

/// What a command step needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandRequest {
    pub builder: String,
    /// Run with `/bin/sh -c`.
    pub shell: String,
    /// Relative to the builder's work tree.
    pub workdir: Option<String>,
    pub env: Vec<(String, String)>,
    pub timeout_secs: Option<u64>,
}

/// How a checkout or command ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitReport {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub elapsed_ms: u64,
    pub timed_out: bool,
    /// The slave terminated it: when the master asked (a stop), or on its own when the slave
    /// is shutting down (the master tells the two apart by whether it asked).
    pub interrupted: bool,
    /// Set when the slave could not run it at all, and whose fault that is.
    pub failure: Option<Failure>,
    /// A checkout's answer: the full id of the commit it checked out (before any patch), so
    /// the master records what was built even when it asked only for a branch's tip. `None`
    /// for commands and for a checkout that failed.
    pub checked_out: Option<String>,
}

/// Why the slave could not run a checkout or command at all. Each says why in its text, which
/// goes into the step's log and summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Failure {
    /// The input's fault (an unknown revision, a patch that does not apply, a command that
    /// cannot be spawned): the step fails.
    Failed(String),
    /// The slave's own fault, not a verdict on the input (the patch process crashed or ran
    /// out of time, the checkout panicked): the master ends the build as an exception.
    SlaveFault(String),
}

impl Failure {
    /// What went wrong, for the step's log and summary.
    pub fn message(&self) -> &str {
        match self {
            Failure::Failed(message) | Failure::SlaveFault(message) => message,
        }
    }
}

impl ExitReport {
    pub fn succeeded(&self) -> bool {
        self.failure.is_none() && self.exit_code == Some(0) && !self.timed_out && !self.interrupted
    }

    /// Whether the slave reports the failure as its own fault.
    pub fn is_slave_fault(&self) -> bool {
        matches!(self.failure, Some(Failure::SlaveFault(_)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledgements_go_in_batches_and_lose_nothing() {
        let mut owed = AckOwed::default();
        let keystroke = shell_cost(1);
        let mut sent = 0;
        let mut messages = 0;
        for _ in 0..10_000 {
            if let Some(cost) = owed.add(keystroke) {
                assert!(cost >= SHELL_ACK_AT);
                sent += cost;
                messages += 1;
            }
        }
        assert_eq!(sent + owed.0, 10_000 * keystroke);
        assert_eq!(messages, 10_000 * keystroke / SHELL_ACK_AT);
        // A sender stopped at its window is owed an acknowledgement before the peer holds
        // all of it: it never waits for one that is not coming.
        const { assert!(SHELL_ACK_AT + 32 * 1024 + 256 <= SHELL_WINDOW) };
    }
}
