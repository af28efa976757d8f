//! The master's end of the slave RPC: one [`SlaveLink`] per connected slave, and [`serve`],
//! which runs the `slave` exec channel (handshake, then a reader and a writer running side by
//! side so neither can block the other). A shell's relay writes to the slave itself, not
//! through the writer, so a keystroke wakes no task on its way out (bench/results-issue-25.md).
//!
//! Commands are multiplexed by id: whoever starts one gets a receiver of its [`SlaveEvent`]s.
//! When the connection ends, every such receiver sees its channel close: that is how a build
//! learns its slave is lost.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::exec_io::{ExecIo, SharedWriter};
use crate::master::lock;
use crate::proto::{self, ExitReport, FrameDecoder, Hello, Message, PROTOCOL_VERSION, StreamKind};

/// What a running checkout or command reports.
#[derive(Debug)]
pub enum SlaveEvent {
    Output {
        stream: StreamKind,
        data: Vec<u8>,
    },
    Exit(ExitReport),
    /// A piece of a test report (issue 26); `last` ends its file.
    ReportChunk {
        path: String,
        data: Vec<u8>,
        last: bool,
    },
    /// Every test report sent; what the slave left out, one line each.
    ReportsDone {
        refused: Vec<String>,
    },
    /// A collected file follows (`master::artifacts`).
    FileStart {
        path: String,
        size: u64,
    },
    FileData(Vec<u8>),
    FileEnd {
        sha256: String,
    },
    /// The slave wrote this many more bytes of a fetch (`ReceiveFiles`).
    FileAck(u64),
}

/// What a shell on the slave reports (issue 25).
#[derive(Debug)]
pub enum ShellEvent {
    Output {
        stream: StreamKind,
        data: Vec<u8>,
    },
    /// The slave wrote input costing this much ([`proto::shell_cost`]).
    Ack(u64),
    Exit {
        exit_code: Option<i32>,
        signal: Option<i32>,
        error: Option<String>,
    },
}

/// Output waiting for a build to write it; bounded, so a slow disk slows the slave down
/// instead of filling the master's memory.
const EVENT_QUEUE: usize = 64;
/// How long a slave has to introduce itself.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

/// A connected slave.
pub struct SlaveLink {
    pub name: String,
    /// Distinguishes this connection from an earlier or later one of the same slave.
    pub conn_id: u64,
    pub peer: SocketAddr,
    pub hello: Hello,
    pub since: SystemTime,
    outgoing: mpsc::UnboundedSender<Message>,
    /// The channel to the slave: the writer task and shell relays write whole frames on it.
    writer: tokio::sync::Mutex<SharedWriter>,
    routes: Mutex<HashMap<u64, mpsc::Sender<SlaveEvent>>>,
    pings: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    /// Open shells. Unbounded, because the slave sends at most `proto::SHELL_WINDOW` of a
    /// shell's output before the relay acknowledges it: the reader never waits on a user.
    shells: Mutex<HashMap<u64, mpsc::UnboundedSender<ShellEvent>>>,
    next_id: AtomicU64,
    /// The work directories this connection's running builds use (`master::shell::work_dir`
    /// claims one per build; a slave builds for one master at a time).
    pub(crate) dirs_in_use: Mutex<Vec<String>>,
    /// Cancelled when the connection ends or a newer connection of the same slave replaces it.
    pub closed: CancellationToken,
}

/// Who learns of a slave's connection when its handshake is done and when it ends (the
/// master's control layer: the roster and the scheduler).
pub trait SlaveRegistry: Sync {
    fn connected(&self, link: Arc<SlaveLink>) -> impl Future<Output = ()> + Send;
    fn disconnected(&self, link: &SlaveLink) -> impl Future<Output = ()> + Send;
}

/// A connected slave, as status pages show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SlaveInfo {
    pub name: String,
    pub conn_id: u64,
    pub peer: SocketAddr,
    /// Seconds since the unix epoch.
    pub since: u64,
    pub os: String,
    pub arch: String,
    pub cpus: u32,
    pub buildbot_version: String,
}

/// The slave's connection is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("slave lost")]
pub struct SlaveLost;

impl SlaveLink {
    /// Sends a checkout or command built by `make` from a fresh id; returns the id and the
    /// receiver of its events.
    pub fn start(
        &self,
        make: impl FnOnce(u64) -> Message,
    ) -> Result<(u64, mpsc::Receiver<SlaveEvent>), SlaveLost> {
        if self.closed.is_cancelled() {
            return Err(SlaveLost);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
        lock(&self.routes).insert(id, events_tx);
        if self.outgoing.send(make(id)).is_err() {
            lock(&self.routes).remove(&id);
            return Err(SlaveLost);
        }
        Ok((id, events_rx))
    }

    /// Opens a shell on the slave; returns its id and the receiver of its events, which ends
    /// when the connection does.
    pub async fn open_shell(
        &self,
        shell: proto::ShellRequest,
    ) -> Result<(u64, mpsc::UnboundedReceiver<ShellEvent>), SlaveLost> {
        if self.closed.is_cancelled() {
            return Err(SlaveLost);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        lock(&self.shells).insert(id, events_tx);
        // Written directly, as the shell's input after it will be: nothing overtakes it.
        if self.write(&Message::ShellOpen { id, shell }).await.is_err() {
            lock(&self.shells).remove(&id);
            return Err(SlaveLost);
        }
        Ok((id, events_rx))
    }

    /// Sends a shell's input, resize, EOF, acknowledgement or close, written to the slave's
    /// channel by the caller (in the order of the calls).
    pub async fn to_shell(&self, message: Message) -> Result<(), SlaveLost> {
        self.write(&message).await
    }

    /// Sends a shell's close through the writer task, for callers that cannot wait.
    pub fn to_shell_later(&self, message: Message) {
        let _ = self.outgoing.send(message);
    }

    /// Writes one frame on the channel to the slave.
    async fn write(&self, message: &Message) -> Result<(), SlaveLost> {
        let frame = proto::encode(message);
        let mut writer = self.writer.lock().await;
        writer.write_all(&frame).await.map_err(|_| SlaveLost)?;
        writer.flush().await.map_err(|_| SlaveLost)
    }

    /// Sends the next piece of a fetch (`ReceiveFiles`) the master streams to the slave.
    pub fn send_file_piece(&self, message: Message) -> Result<(), SlaveLost> {
        self.outgoing.send(message).map_err(|_| SlaveLost)
    }

    /// Forgets shell `id` (its relay ended).
    pub fn forget_shell(&self, id: u64) {
        lock(&self.shells).remove(&id);
    }

    pub fn interrupt(&self, id: u64, reason: &str) {
        let _ = self.outgoing.send(Message::Interrupt {
            id,
            reason: reason.to_string(),
        });
    }

    /// Whether the slave answers a ping within `timeout`.
    pub async fn ping(&self, timeout: Duration) -> bool {
        let nonce = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (pong_tx, pong_rx) = oneshot::channel();
        lock(&self.pings).insert(nonce, pong_tx);
        if self.outgoing.send(Message::Ping { nonce }).is_err() {
            return false;
        }
        let answered = matches!(tokio::time::timeout(timeout, pong_rx).await, Ok(Ok(())));
        lock(&self.pings).remove(&nonce);
        answered
    }

    /// What status pages show of this connection.
    pub fn info(&self) -> SlaveInfo {
        SlaveInfo {
            name: self.name.clone(),
            conn_id: self.conn_id,
            peer: self.peer,
            since: self
                .since
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_secs()),
            os: self.hello.os.clone(),
            arch: self.hello.arch.clone(),
            cpus: self.hello.cpus,
            buildbot_version: self.hello.buildbot_version.clone(),
        }
    }

    /// Drops the connection (ping unanswered, or replaced).
    pub fn close(&self) {
        self.closed.cancel();
    }
}

static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

/// Runs the RPC for slave `name` (already authenticated by its key) on an exec channel.
pub async fn serve(
    registry: &impl SlaveRegistry,
    master_name: &str,
    name: &str,
    peer: SocketAddr,
    io: &mut ExecIo<'_>,
) -> u32 {
    let ExecIo {
        stdin,
        stdout,
        stderr,
        shared_stdout,
        ..
    } = io;
    let Some(writer) = shared_stdout.take() else {
        return refuse(*stdout, name, "this front end cannot carry the slave RPC").await;
    };
    let mut decoder = FrameDecoder::default();
    let mut buffer = vec![0u8; 64 * 1024];

    let hello = match tokio::time::timeout(
        HELLO_TIMEOUT,
        read_message(*stdin, &mut decoder, &mut buffer),
    )
    .await
    {
        Ok(Ok(Some(Message::Hello(hello)))) => hello,
        Ok(Ok(Some(other))) => {
            return refuse(*stdout, name, &format!("expected Hello, got {other:?}")).await;
        }
        Ok(Ok(None)) => return 1,
        Ok(Err(reason)) => return refuse(*stdout, name, &reason).await,
        Err(_) => return refuse(*stdout, name, "no Hello within 30 s").await,
    };
    if hello.name != name {
        return refuse(
            *stdout,
            name,
            &format!("this key belongs to slave {name}, not {}", hello.name),
        )
        .await;
    }
    if hello.protocol_version != PROTOCOL_VERSION {
        let reason = format!(
            "protocol version {} is not this master's {PROTOCOL_VERSION}; upgrade the slave to buildbot {}",
            hello.protocol_version,
            env!("CARGO_PKG_VERSION")
        );
        return refuse(*stdout, name, &reason).await;
    }

    let (outgoing, mut outgoing_rx) = mpsc::unbounded_channel();
    let link = Arc::new(SlaveLink {
        name: name.to_string(),
        conn_id: NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed),
        peer,
        hello,
        since: SystemTime::now(),
        outgoing,
        writer: tokio::sync::Mutex::new(writer),
        routes: Mutex::new(HashMap::new()),
        pings: Mutex::new(HashMap::new()),
        shells: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
        dirs_in_use: Mutex::new(Vec::new()),
        closed: CancellationToken::new(),
    });
    let _ = link.outgoing.send(Message::Welcome {
        master: master_name.to_string(),
    });
    registry.connected(Arc::clone(&link)).await;

    let interval = Duration::from_millis(link.hello.keepalive_interval_ms.max(1000));
    let provoke_after =
        interval.saturating_sub(Duration::from_millis(link.hello.keepalive_timeout_ms));
    let last_heard = Mutex::new(Instant::now());
    let reader = async {
        loop {
            let message = match read_message(*stdin, &mut decoder, &mut buffer).await {
                Ok(Some(message)) => message,
                Ok(None) => return "the slave closed the connection".to_string(),
                Err(reason) => return reason,
            };
            // Any traffic is a sign of life.
            *lock(&last_heard) = Instant::now();
            match message {
                Message::Output { id, stream, data } => {
                    let route = lock(&link.routes).get(&id).cloned();
                    if let Some(route) = route {
                        // A build that stopped listening (stopped, gone) just drops output.
                        let _ = route.send(SlaveEvent::Output { stream, data }).await;
                    }
                }
                Message::FileStart { id, path, size } => {
                    route_event(&link, id, SlaveEvent::FileStart { path, size }).await;
                }
                Message::FileData { id, data } => {
                    route_event(&link, id, SlaveEvent::FileData(data)).await;
                }
                Message::FileEnd { id, sha256 } => {
                    route_event(&link, id, SlaveEvent::FileEnd { sha256 }).await;
                }
                Message::FileAck { id, bytes } => {
                    route_event(&link, id, SlaveEvent::FileAck(bytes)).await;
                }
                Message::Exit { id, exit } => {
                    let route = lock(&link.routes).remove(&id);
                    if let Some(route) = route {
                        let _ = route.send(SlaveEvent::Exit(exit)).await;
                    }
                }
                Message::ReportChunk {
                    id,
                    path,
                    data,
                    last,
                } => {
                    let route = lock(&link.routes).get(&id).cloned();
                    if let Some(route) = route {
                        let _ = route
                            .send(SlaveEvent::ReportChunk { path, data, last })
                            .await;
                    }
                }
                Message::ReportsDone { id, refused } => {
                    let route = lock(&link.routes).remove(&id);
                    if let Some(route) = route {
                        let _ = route.send(SlaveEvent::ReportsDone { refused }).await;
                    }
                }
                Message::Pong { nonce } => {
                    if let Some(waiter) = lock(&link.pings).remove(&nonce) {
                        let _ = waiter.send(());
                    }
                }
                Message::Keepalive { nonce } => {
                    let _ = link.outgoing.send(Message::KeepaliveAck { nonce });
                }
                Message::ShellOutput { id, stream, data } => {
                    if let Some(shell) = lock(&link.shells).get(&id) {
                        let _ = shell.send(ShellEvent::Output { stream, data });
                    }
                }
                Message::ShellAck { id, cost } => {
                    if let Some(shell) = lock(&link.shells).get(&id) {
                        let _ = shell.send(ShellEvent::Ack(cost));
                    }
                }
                Message::ShellExit {
                    id,
                    exit_code,
                    signal,
                    error,
                } => {
                    if let Some(shell) = lock(&link.shells).remove(&id) {
                        let _ = shell.send(ShellEvent::Exit {
                            exit_code,
                            signal,
                            error,
                        });
                    }
                }
                other => return format!("unexpected message from the slave: {other:?}"),
            }
        }
    };
    let writer = async {
        while let Some(message) = outgoing_rx.recv().await {
            if link.write(&message).await.is_err() {
                return "cannot write to the slave".to_string();
            }
        }
        "the master dropped the connection".to_string()
    };
    // The master watches the link as the slave does: silence for `provoke_after` gets a ping,
    // silence for the whole interval means the slave is gone (a quiet loss: no FIN, no RST).
    // It sleeps until the next of those deadlines, not on a tick: a thousand idle slaves cost
    // a wake-up each per keepalive interval, not four a second.
    let watchdog = async {
        let mut pinged_at: Option<Instant> = None;
        loop {
            let heard = *lock(&last_heard);
            let deadline = match pinged_at {
                Some(at) if at >= heard => heard + interval,
                _ => heard + provoke_after,
            };
            tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
            let heard = *lock(&last_heard);
            let silent = heard.elapsed();
            if silent >= interval {
                return format!(
                    "no traffic from the slave for {silent:.1?} (keepalive interval {interval:?})"
                );
            }
            if silent >= provoke_after && pinged_at.is_none_or(|at| at < heard) {
                pinged_at = Some(Instant::now());
                let nonce = link.next_id.fetch_add(1, Ordering::Relaxed);
                let _ = link.outgoing.send(Message::Ping { nonce });
            }
        }
    };
    let reason = tokio::select! {
        reason = reader => reason,
        reason = writer => reason,
        reason = watchdog => reason,
        _ = link.closed.cancelled() => "connection replaced or dropped by the master".to_string(),
    };
    link.closed.cancel();
    // Every build waiting on this slave sees its event channel close: "slave lost".
    lock(&link.routes).clear();
    // And every shell's relay: it tells its user why.
    lock(&link.shells).clear();
    tracing::info!(slave = %name, %peer, "slave disconnected: {reason}");
    registry.disconnected(&link).await;
    let _ = stderr
        .write_all(format!("buildbot: {reason}\n").as_bytes())
        .await;
    0
}

/// Hands an event to the command it belongs to. The queue is bounded: a receiver writing to a
/// slow disk holds the reader here, and the slave's sends wait in turn (memory stays bounded).
async fn route_event(link: &SlaveLink, id: u64, event: SlaveEvent) {
    let route = lock(&link.routes).get(&id).cloned();
    if let Some(route) = route {
        let _ = route.send(event).await;
    }
}

async fn read_message(
    stdin: &mut (dyn tokio::io::AsyncRead + Unpin + Send),
    decoder: &mut FrameDecoder,
    buffer: &mut [u8],
) -> Result<Option<Message>, String> {
    loop {
        if let Some(message) = decoder
            .next_message()
            .map_err(|err| format!("bad frame: {err}"))?
        {
            return Ok(Some(message));
        }
        let read = stdin
            .read(buffer)
            .await
            .map_err(|err| format!("read failed: {err}"))?;
        if read == 0 {
            decoder
                .finish()
                .map_err(|err| format!("bad frame: {err}"))?;
            return Ok(None);
        }
        decoder.push(&buffer[..read]);
    }
}

async fn refuse(
    stdout: &mut (dyn tokio::io::AsyncWrite + Unpin + Send),
    name: &str,
    reason: &str,
) -> u32 {
    tracing::warn!(slave = %name, "refused slave: {reason}");
    let frame = proto::encode(&Message::Refused {
        reason: reason.to_string(),
    });
    let _ = stdout.write_all(&frame).await;
    let _ = stdout.flush().await;
    1
}
