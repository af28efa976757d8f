//! One exec channel, owned by one task: runs the command the client asked for with the
//! channel's stdin/stdout/stderr, then always sends an exit status, EOF and close.
//!
//! The exit status is not optional: OpenSSH reports 255 without one, and the classic Buildbot
//! client hangs forever on that (`../shared/reference/buildbot-try-format.md` §2.1).

use std::net::SocketAddr;
use std::sync::Arc;

use russh::Channel;
use russh::server::Msg;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::exec_io::ExecIo;
use crate::sshd::channel_input::{self, ChannelInput};
use crate::sshd::cmd;
use crate::sshd::{Identity, SshdContext};

/// What to run on an accepted channel.
#[derive(Debug)]
pub enum ExecRequest {
    /// A command string (after a forced `command=` replaced the client's, if there was one).
    Command {
        command: String,
        /// What the client asked for when a forced command replaced it.
        original: Option<String>,
        /// The terminal the client asked for first (`pty-req`): type, columns, rows.
        pty: Option<(String, u32, u32)>,
    },
    /// An interactive request we refuse: print the message, exit 1.
    Refuse { message: String },
}

/// A writer that turns LF into CR LF when `on` (output to a client's raw terminal).
struct CrLf<'a, W: tokio::io::AsyncWrite + Unpin> {
    inner: &'a mut W,
    on: bool,
    /// Translated bytes not yet taken by `inner`.
    pending: Vec<u8>,
}

impl<'a, W: tokio::io::AsyncWrite + Unpin> CrLf<'a, W> {
    fn new(inner: &'a mut W, on: bool) -> CrLf<'a, W> {
        CrLf {
            inner,
            on,
            pending: Vec::new(),
        }
    }

    fn poll_drain(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        while !self.pending.is_empty() {
            let written = std::task::ready!(
                std::pin::Pin::new(&mut *self.inner).poll_write(cx, &self.pending)
            )?;
            if written == 0 {
                return std::task::Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.pending.drain(..written);
        }
        std::task::Poll::Ready(Ok(()))
    }
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for CrLf<'_, W> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if !this.on {
            return std::pin::Pin::new(&mut *this.inner).poll_write(cx, data);
        }
        // One piece at a time: what was translated before goes out first.
        std::task::ready!(this.poll_drain(cx))?;
        for &byte in data {
            if byte == b'\n' {
                this.pending.push(b'\r');
            }
            this.pending.push(byte);
        }
        // Taken whole; `pending` is written by the next write or flush.
        let _ = this.poll_drain(cx);
        std::task::Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_drain(cx))?;
        std::pin::Pin::new(&mut *this.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_drain(cx))?;
        std::pin::Pin::new(&mut *this.inner).poll_shutdown(cx)
    }
}

/// Exit status when the master stops while a command runs.
const EXIT_SHUTTING_DOWN: u32 = 255;

/// Hands the channel to a task tracked by `ctx.tasks`, which holds the channel's `place`
/// among the connection's `max_sessions` until the channel is done.
pub fn spawn(
    ctx: Arc<SshdContext>,
    channel: Channel<Msg>,
    place: tokio::sync::OwnedSemaphorePermit,
    identity: Identity,
    peer: SocketAddr,
    request: ExecRequest,
    connection: Arc<std::sync::OnceLock<russh::server::Handle>>,
) {
    let tasks = ctx.tasks.clone();
    tasks.spawn(async move {
        run(ctx, channel, identity, peer, request, connection).await;
        // The connection's `max_sessions` place is free once the channel is done.
        drop(place);
    });
}

async fn run(
    ctx: Arc<SshdContext>,
    channel: Channel<Msg>,
    identity: Identity,
    peer: SocketAddr,
    request: ExecRequest,
    connection: Arc<std::sync::OnceLock<russh::server::Handle>>,
) {
    let (read_half, write_half) = channel.split();
    // Rights end when the key or account goes, even on a connection opened before.
    let revoked = match &request {
        ExecRequest::Command { .. } => ctx.still_authorized(&identity, peer.ip()).await.err(),
        ExecRequest::Refuse { .. } => None,
    };
    let closing = revoked.is_some();
    let request = match revoked {
        Some(reason) => {
            tracing::info!(%peer, who = %identity.describe(), "closing a connection whose login no longer holds: {reason}");
            ExecRequest::Refuse {
                message: format!(
                    "buildbot: the login of this connection no longer holds ({reason}); the connection is closed"
                ),
            }
        }
        None => request,
    };

    let mut stdout = write_half.make_writer();
    let mut stderr = write_half.make_writer_ext(Some(1));
    let exit_status = match request {
        ExecRequest::Refuse { message } => {
            let _ = stderr.write_all(format!("{message}\n").as_bytes()).await;
            1
        }
        ExecRequest::Command {
            command,
            original,
            pty,
        } => {
            let span =
                tracing::info_span!("exec", %peer, who = %identity.describe(), command = %command);
            if let Some(original) = &original {
                tracing::info!(parent: &span, %original, "a forced command replaced what the client asked for");
            }
            let client_gone = CancellationToken::new();
            let (resizes, terminal) = match pty {
                Some((term, cols, rows)) => {
                    let (resizes_tx, resizes) = tokio::sync::mpsc::unbounded_channel();
                    let terminal = crate::exec_io::Terminal {
                        term,
                        cols: channel_input::clamp(cols),
                        rows: channel_input::clamp(rows),
                        resizes,
                    };
                    (Some(resizes_tx), Some(terminal))
                }
                None => (None, None),
            };
            // A client with a terminal (`ssh -t`) put it in raw mode: lines of commands other
            // than `shell` (whose PTY on the slave does this itself) need CR LF.
            let raw_terminal = terminal.is_some()
                && !matches!(
                    cmd::parse(&command),
                    cmd::ExecCommand::Run(cmd::Command::Shell(_))
                );
            let mut stdout_lines = CrLf::new(&mut stdout, raw_terminal);
            let mut stderr_lines = CrLf::new(&mut stderr, raw_terminal);
            let finished = {
                let input = ChannelInput::new(read_half, client_gone.clone(), resizes);
                let mut stdin = input.stdin();
                let mut io = ExecIo {
                    stdin: &mut stdin,
                    stdout: &mut stdout_lines,
                    stderr: &mut stderr_lines,
                    client_gone,
                    terminal,
                    shared_stdout: Some(Box::new(write_half.make_writer())),
                };
                let command_future =
                    cmd::run(&ctx, &identity, peer, &command, &mut io).instrument(span.clone());
                tokio::pin!(command_future);
                loop {
                    // The command first: a command that reads its stdin takes the data
                    // first-hand; the watch only takes what it leaves.
                    tokio::select! {
                        biased;
                        status = &mut command_future => break Some(status),
                        () = input.tick(), if !input.is_closed() => {}
                        _ = ctx.shutdown.cancelled() => break None,
                    }
                }
            };
            let status = match finished {
                Some(status) => status,
                None => {
                    let farewell = format!("{}\n", crate::commands::Farewell::ShuttingDown);
                    let _ = stderr_lines.write_all(farewell.as_bytes()).await;
                    EXIT_SHUTTING_DOWN
                }
            };
            let _ = stdout_lines.flush().await;
            let _ = stderr_lines.flush().await;
            tracing::info!(parent: &span, status, "exec finished");
            status
        }
    };
    let _ = stdout.flush().await;
    let _ = stderr.flush().await;
    let _ = write_half.exit_status(exit_status).await;
    let _ = write_half.eof().await;
    let _ = write_half.close().await;
    if closing && let Some(handle) = connection.get() {
        let _ = handle
            .disconnect(
                russh::Disconnect::ByApplication,
                "buildbot: the login of this connection no longer holds".into(),
                String::new(),
            )
            .await;
    }
}
