//! One connection to one master: SSH handshake with the pinned host key, the `slave` channel,
//! the version handshake, then the message loop with keepalives. Which master to dial, and
//! when, is `slave::run`'s decision.
//!
//! The channel is read by a task of its own that always drains it (russh trap #1: a task that
//! reads and writes one channel stalls when both sides send at once); frames go out through a
//! writer task fed by a bounded queue, which is what slows down a command that prints faster
//! than the link carries. A shell's messages skip both: the reader hands them straight to the
//! shell's task (`ShellRoutes`), and the shell writes its frames on the channel itself
//! ([`Outgoing`](crate::slave::outgoing::Outgoing)), a task hop less each way per keystroke.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use russh::ChannelMsg;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::proto::{FrameDecoder, Hello, Message};
use crate::slave::SlaveConfig;
use crate::slave::containment::Containment;
use crate::slave::fetch::Piece;
use crate::slave::outgoing::Outgoing;
use crate::slave::shell::{ShellRoutes, Shells};
use crate::slave::work::Work;

/// How a connection ended once the master had welcomed the slave (failures before that are
/// errors: the slave never served that master).
pub enum Ended {
    Shutdown,
    Lost(String),
}

/// For the SSH handshake and the login, each; the RPC handshake has a limit of its own.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Frames waiting for the writer; bounded, so output producers feel the link's speed.
const OUTGOING_QUEUE: usize = 64;

struct ClientHandler {
    expected: PublicKey,
    /// What the master presented, when it was not the pinned key.
    mismatch: Arc<Mutex<Option<String>>>,
}

impl russh::client::Handler for ClientHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let presented = match server_key {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => {
                if key.key_data() == self.expected.key_data() {
                    return Ok(true);
                }
                key.fingerprint(russh::keys::HashAlg::Sha256).to_string()
            }
            russh::keys::PublicKeyOrCertificate::Certificate(_) => "a host certificate".to_string(),
        };
        if let Ok(mut mismatch) = self.mismatch.lock() {
            *mismatch = Some(presented);
        }
        Ok(false)
    }
}

/// Connects to the master at `address` (one of `config.masters`), registers and serves until
/// the connection ends or `shutdown` is cancelled. `connect_timeout` bounds the TCP connect.
pub async fn serve(
    config: &SlaveConfig,
    address: &str,
    connect_timeout: Duration,
    key: &PrivateKey,
    containment: &Arc<Containment>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Ended> {
    let stream = tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(address))
        .await
        .with_context(|| format!("timed out connecting to {address}"))?
        .with_context(|| format!("cannot connect to {address}"))?;
    // russh applies its `nodelay` only to sockets it opens itself. Without it, Nagle holds a
    // small frame (a pong, an exit report) until the master's delayed ACK, some 40 ms.
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!("cannot set TCP_NODELAY: {err}");
    }
    let mismatch = Arc::new(Mutex::new(None));
    let handler = ClientHandler {
        expected: config.master_host_key.clone(),
        mismatch: Arc::clone(&mismatch),
    };
    let ssh_config = Arc::new(russh::client::Config {
        // Quiet links are probed at the SSH level too, and NAT mappings kept alive.
        keepalive_interval: Some(config.keepalive_interval.min(Duration::from_secs(60))),
        keepalive_max: 3,
        inactivity_timeout: None,
        nodelay: true,
        // AES-GCM first: with AES-NI it costs about half of what ChaCha20-Poly1305 (russh's
        // first choice) does per byte, and the RPC carries every byte of every log.
        preferred: russh::Preferred {
            cipher: std::borrow::Cow::Borrowed(&[
                russh::cipher::AES_256_GCM,
                russh::cipher::CHACHA20_POLY1305,
                russh::cipher::AES_256_CTR,
            ]),
            ..russh::Preferred::DEFAULT
        },
        ..Default::default()
    });
    // A stopped master's kernel still accepts the connection: without a limit the slave would
    // wait on it forever instead of dialing the next master.
    let handshake = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        // russh reads a packet in two reads (its length, then the rest); buffered, a small
        // packet (a keystroke into a shell) costs one read from the socket instead of two.
        russh::client::connect_stream(
            ssh_config,
            tokio::io::BufReader::with_capacity(8 * 1024, stream),
            handler,
        ),
    )
    .await
    .with_context(|| format!("no SSH handshake from {address} within {HANDSHAKE_TIMEOUT:?}"))?;
    let mut session = match handshake {
        Ok(session) => session,
        Err(err) => {
            if let Some(presented) = mismatch.lock().ok().and_then(|m| m.clone()) {
                bail!(
                    "MASTER HOST KEY MISMATCH: {address} presented {presented}, but slave.toml pins {}; refusing to connect (if the master's key really changed, update master_host_key; every master of a cluster must present the same key)",
                    config
                        .master_host_key
                        .fingerprint(russh::keys::HashAlg::Sha256)
                );
            }
            return Err(err).with_context(|| format!("SSH handshake with {address} failed"));
        }
    };
    let auth = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        session.authenticate_publickey(
            config.name.clone(),
            PrivateKeyWithHashAlg::new(Arc::new(key.clone()), None),
        ),
    )
    .await
    .with_context(|| format!("no answer to the login from {address} within {HANDSHAKE_TIMEOUT:?}"))?
    .context("authentication failed")?;
    if !auth.success() {
        bail!(
            "the master refused this slave's key for login '{}' (is the [[slave]] block with this key in master.toml?)",
            config.name
        );
    }
    let channel = session
        .channel_open_session()
        .await
        .context("cannot open a channel")?;
    channel
        .exec(true, "slave")
        .await
        .context("cannot start the slave RPC")?;
    let (mut read_half, write_half) = channel.split();
    let direct = Outgoing::new(write_half);

    let (incoming_tx, mut incoming) = mpsc::unbounded_channel::<Result<Message, String>>();
    let routes = ShellRoutes::default();
    let shell_routes = routes.clone();
    let reader = tokio::spawn(async move {
        let mut decoder = FrameDecoder::default();
        while let Some(message) = read_half.wait().await {
            match message {
                ChannelMsg::Data { data } => {
                    decoder.push(&data);
                    loop {
                        match decoder.next_message() {
                            Ok(Some(message)) => {
                                // A shell's keystrokes go straight to it, not through
                                // `run_session`.
                                let Some(message) = shell_routes.route(message) else {
                                    continue;
                                };
                                if incoming_tx.send(Ok(message)).is_err() {
                                    return;
                                }
                            }
                            Ok(None) => break,
                            Err(err) => {
                                let _ = incoming_tx
                                    .send(Err(format!("bad frame from the master: {err}")));
                                return;
                            }
                        }
                    }
                }
                ChannelMsg::ExtendedData { data, .. } => {
                    let text = String::from_utf8_lossy(&data);
                    let _ = incoming_tx.send(Err(format!("the master says: {}", text.trim())));
                }
                ChannelMsg::ExitStatus { exit_status } => {
                    let _ = incoming_tx.send(Err(format!(
                        "the master ended the RPC (status {exit_status})"
                    )));
                    return;
                }
                ChannelMsg::Eof | ChannelMsg::Close => break,
                _ => {}
            }
        }
        let _ = incoming_tx.send(Err("the master closed the connection".into()));
    });

    let (outgoing, mut outgoing_rx) = mpsc::channel::<Message>(OUTGOING_QUEUE);
    let (control, mut control_rx) = mpsc::unbounded_channel::<Message>();
    let channel = direct.clone();
    let writer = tokio::spawn(async move {
        loop {
            // Pongs and keepalives overtake queued output: a busy step must not look dead.
            let message = tokio::select! {
                biased;
                Some(message) = control_rx.recv() => message,
                Some(message) = outgoing_rx.recv() => message,
                else => break,
            };
            if channel.send(message).await.is_err() {
                return;
            }
        }
        // Everything queued (the last Exit reports above all) went out before this EOF, on the
        // same channel, and the shells wrote their last before `run_session` returned; the
        // master closes its side once it has read them.
        channel.eof().await;
    });

    let workers = Workers {
        work: Work::new(
            config.workdir.clone(),
            config.patch_runner.clone(),
            Arc::clone(containment),
            outgoing.clone(),
        ),
        shells: Shells::new(
            config.workdir.clone(),
            Arc::clone(containment),
            direct,
            routes,
        ),
    };
    let result = run_session(
        config,
        address,
        workers,
        &outgoing,
        &control,
        &mut incoming,
        shutdown,
    )
    .await;
    drop(outgoing);
    drop(control);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    // A disconnect can overtake channel data still on its way, so the reports of the commands
    // terminated at shutdown ("slave shutting down", not "slave lost") would be lost: wait
    // (briefly) for the master to close the channel after our EOF.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while incoming.recv().await.is_some() {}
    })
    .await;
    reader.abort();
    let _ = session
        .disconnect(russh::Disconnect::ByApplication, "slave leaving", "")
        .await;
    result
}

/// What the message loop hands the master's requests to.
struct Workers {
    work: Work,
    shells: Shells,
}

async fn run_session(
    config: &SlaveConfig,
    address: &str,
    Workers {
        mut work,
        mut shells,
    }: Workers,
    outgoing: &mpsc::Sender<Message>,
    control: &mpsc::UnboundedSender<Message>,
    incoming: &mut mpsc::UnboundedReceiver<Result<Message, String>>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Ended> {
    outgoing
        .send(Message::Hello(Hello::for_this_host(
            &config.name,
            config.keepalive_interval,
            config.keepalive_timeout,
        )))
        .await
        .context("the connection closed before the handshake")?;
    let welcome = tokio::time::timeout(Duration::from_secs(30), incoming.recv())
        .await
        .context("no answer to the handshake within 30 s")?;
    match welcome {
        Some(Ok(Message::Welcome { master })) => {
            tracing::info!(master = %master, address = %address, "connected as slave {} to master {master} at {address}", config.name)
        }
        Some(Ok(Message::Refused { reason })) => bail!("the master refused this slave: {reason}"),
        Some(Ok(other)) => bail!("unexpected first message from the master: {other:?}"),
        Some(Err(reason)) => bail!("{reason}"),
        None => bail!("the connection closed during the handshake"),
    }

    let mut last_heard = Instant::now();
    let mut keepalive_sent: Option<Instant> = None;
    let mut nonce = 0u64;
    let provoke_at = config
        .keepalive_interval
        .saturating_sub(config.keepalive_timeout);
    let ended = loop {
        // Sleeps until the next deadline (provoke the master, or give it up), not on a tick.
        let deadline = match keepalive_sent {
            None => last_heard + provoke_at,
            Some(_) => last_heard + config.keepalive_interval,
        };
        tokio::select! {
            _ = shutdown.cancelled() => break Ended::Shutdown,
            message = incoming.recv() => {
                let message = match message {
                    Some(Ok(message)) => message,
                    Some(Err(reason)) => break Ended::Lost(reason),
                    None => break Ended::Lost("the connection closed".into()),
                };
                // Any traffic counts as a sign of life, acknowledgements included (a shell's
                // keystrokes went to it from the reader: on a link carrying only those, the
                // keepalive below asks, as on an idle one).
                last_heard = Instant::now();
                keepalive_sent = None;
                match message {
                    Message::Ping { nonce } => {
                        let _ = control.send(Message::Pong { nonce });
                    }
                    Message::KeepaliveAck { .. } => {}
                    Message::Checkout { id, checkout } => work.start_checkout(id, checkout),
                    Message::StartCommand { id, command } => work.start_command(id, command),
                    Message::Interrupt { id, reason } => work.interrupt(id, &reason),
                    Message::CollectReports { id, collect } => work.collect_reports(id, collect),
                    // The rest of a shell's messages went to it from the reader.
                    Message::ShellOpen { id, shell } => shells.open(id, shell),
                    Message::CollectFiles { id, collect } => work.start_collect(id, collect),
                    Message::ReceiveFiles { id, receive } => work.start_receive(id, receive),
                    Message::FileStart { id, path, size } => work.receive_piece(id, Piece::Start { path, size }),
                    Message::FileData { id, data } => work.receive_piece(id, Piece::Data(data)),
                    Message::FileEnd { id, sha256 } => work.receive_piece(id, Piece::End { sha256 }),
                    other => break Ended::Lost(format!("unexpected message from the master: {other:?}")),
                }
            }
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                let silent = last_heard.elapsed();
                if silent >= config.keepalive_interval {
                    break Ended::Lost(format!("no traffic from the master for {silent:?} (keepalive_interval)"));
                }
                if silent >= provoke_at && keepalive_sent.is_none() {
                    nonce += 1;
                    keepalive_sent = Some(Instant::now());
                    let _ = control.send(Message::Keepalive { nonce });
                }
            }
        }
    };
    let reason = match &ended {
        Ended::Shutdown => "the slave is shutting down".to_string(),
        Ended::Lost(reason) => format!("the slave lost its master: {reason}"),
    };
    tokio::join!(work.stop_all(), shells.stop_all(&reason));
    Ok(ended)
}
