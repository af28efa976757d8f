//! Shells into held builds (issue 25): the master relays a user's terminal over this slave's
//! connection, and here each shell runs in the build's directory with the build's environment,
//! on a PTY (`nix::pty::openpty`: one libc call, so no PTY crate) when the user has a
//! terminal, else as one command with pipes.
//!
//! Each shell is a task owning its process: a session of its own (`setsid`, the PTY as its
//! controlling terminal) or a process group of its own, inside a containment cell as steps
//! are, so everything it started is killed when it ends, when the master closes it, or when
//! the connection ends. Data is bounded both ways by [`SHELL_WINDOW`]: the slave reads the
//! PTY only while the master has acknowledged enough of what it sent, and acknowledges input
//! only once it is written, so a `cat` of a big file runs at the speed of the user's link.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::proto::{
    AckOwed, Message, SHELL_WINDOW, ShellRequest, StreamKind, TermSize, shell_cost,
};
use crate::slave::containment::Containment;
use crate::slave::outgoing::Outgoing;

/// The most one output message carries.
const CHUNK: usize = 32 * 1024;
/// How long output is still read once the shell's main process exited (a background process
/// may hold the terminal open forever).
const DRAIN: Duration = Duration::from_millis(500);

/// What the connection hands a running shell.
#[derive(Debug)]
pub enum ShellControl {
    Input(Vec<u8>),
    Resize(TermSize),
    Eof,
    Ack(u64),
    Close(String),
}

/// Where the connection's reader hands a shell's input, acknowledgements and the like straight
/// to the shell's task: through the connection's message loop, a keystroke took one task hop
/// more on its way to the PTY (bench/results-issue-25.md).
#[derive(Clone, Default)]
pub struct ShellRoutes(Arc<std::sync::Mutex<RouteTable>>);

#[derive(Default)]
struct RouteTable {
    open: HashMap<u64, mpsc::UnboundedSender<ShellControl>>,
    /// The controls of shells whose `ShellOpen` is still on its way to the message loop: the
    /// route exists from the moment the reader saw it, so no input after it is lost.
    starting: HashMap<u64, mpsc::UnboundedReceiver<ShellControl>>,
}

impl ShellRoutes {
    fn table(&self) -> std::sync::MutexGuard<'_, RouteTable> {
        // A panic elsewhere while holding the lock leaves the table itself consistent.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes `message` when it is for a running shell; gives back any other (a `ShellOpen`
    /// too, after making its route).
    pub fn route(&self, message: Message) -> Option<Message> {
        let (id, control) = match message {
            Message::ShellOpen { id, .. } => {
                let (controls_tx, controls) = mpsc::unbounded_channel();
                let mut table = self.table();
                table.open.insert(id, controls_tx);
                table.starting.insert(id, controls);
                return Some(message);
            }
            Message::ShellInput { id, data } => (id, ShellControl::Input(data)),
            Message::ShellResize { id, size } => (id, ShellControl::Resize(size)),
            Message::ShellEof { id } => (id, ShellControl::Eof),
            Message::ShellAck { id, cost } => (id, ShellControl::Ack(cost)),
            Message::ShellClose { id, reason } => (id, ShellControl::Close(reason)),
            other => return Some(other),
        };
        // Gone shells ignore it: their exit is on its way.
        if let Some(shell) = self.table().open.get(&id) {
            let _ = shell.send(control);
        }
        None
    }
}

/// The shells the master opened on this connection.
pub struct Shells {
    workdir: PathBuf,
    containment: Arc<Containment>,
    outgoing: Outgoing,
    routes: ShellRoutes,
    tasks: JoinSet<u64>,
}

impl Shells {
    pub fn new(
        workdir: PathBuf,
        containment: Arc<Containment>,
        outgoing: Outgoing,
        routes: ShellRoutes,
    ) -> Shells {
        Shells {
            workdir,
            containment,
            outgoing,
            routes,
            tasks: JoinSet::new(),
        }
    }

    fn reap(&mut self) {
        while let Some(done) = self.tasks.try_join_next() {
            if let Ok(id) = done {
                self.routes.table().open.remove(&id);
            }
        }
    }

    /// Starts shell `id`, whose route the reader made when it saw the `ShellOpen`.
    pub fn open(&mut self, id: u64, request: ShellRequest) {
        self.reap();
        let controls = self.routes.table().starting.remove(&id);
        let controls = controls.unwrap_or_else(|| {
            // Not seen by the reader (cannot happen): a route of its own, so it still runs.
            let (controls_tx, controls) = mpsc::unbounded_channel();
            self.routes.table().open.insert(id, controls_tx);
            controls
        });
        let outgoing = self.outgoing.clone();
        let containment = Arc::clone(&self.containment);
        let dir = crate::slave::work::relative_inside(&self.workdir, &request.dir);
        self.tasks.spawn(async move {
            let end = match dir {
                Ok(dir) => run(id, &dir, request, containment, &outgoing, controls).await,
                Err(message) => Err(message),
            };
            let (exit_code, signal, error) = match end {
                Ok((code, signal)) => (code, signal, None),
                Err(error) => (None, None, Some(error)),
            };
            let _ = outgoing
                .send(Message::ShellExit {
                    id,
                    exit_code,
                    signal,
                    error,
                })
                .await;
            id
        });
    }

    /// The connection ended: every shell is closed (its processes killed) before this returns.
    pub async fn stop_all(&mut self, reason: &str) {
        for shell in self.routes.table().open.values() {
            let _ = shell.send(ShellControl::Close(reason.to_string()));
        }
        if tokio::time::timeout(Duration::from_secs(5), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
        let mut table = self.routes.table();
        table.open.clear();
        table.starting.clear();
    }
}

/// The login shell of the account the slave runs as, else `/bin/sh`.
fn user_shell() -> PathBuf {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|user| user.shell)
        .filter(|shell| shell.is_absolute() && shell.exists())
        .unwrap_or_else(|| PathBuf::from("/bin/sh"))
}

/// The PTY's master side as an async stream.
struct PtyMaster(AsyncFd<OwnedFd>);

impl PtyMaster {
    fn new(fd: OwnedFd) -> io::Result<PtyMaster> {
        let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL)?;
        let mut flags = nix::fcntl::OFlag::from_bits_truncate(flags);
        flags.insert(nix::fcntl::OFlag::O_NONBLOCK);
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
        // SAFETY: an OwnedFd is a valid open descriptor, owned by the AsyncFd to its end.
        let registered = unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)?;
        Ok(PtyMaster(registered))
    }

    fn resize(&self, size: TermSize) {
        let winsize = winsize(size);
        // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which outlives the call.
        unsafe {
            nix::libc::ioctl(
                self.0.get_ref().as_raw_fd(),
                nix::libc::TIOCSWINSZ,
                &winsize,
            );
        }
    }
}

fn winsize(size: TermSize) -> nix::libc::winsize {
    nix::libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

impl AsyncRead for SharedPty {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard
                .try_io(|fd| nix::unistd::read(fd.get_ref(), unfilled).map_err(io::Error::from))
            {
                Ok(Ok(read)) => {
                    buf.advance(read);
                    return Poll::Ready(Ok(()));
                }
                // Linux says EIO once no process holds the terminal's other side: the end.
                Ok(Err(err)) if err.raw_os_error() == Some(nix::libc::EIO) => {
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(err)) => return Poll::Ready(Err(err)),
                Err(_would_block) => continue,
            }
        }
    }
}

type Reader = Pin<Box<dyn AsyncRead + Send>>;
type Writer = Pin<Box<dyn AsyncWrite + Send>>;

/// Reads what is there, up to `CHUNK`: the first read waits, the next ones only take what is
/// ready, so a fast producer fills a message and a keystroke's echo goes at once.
async fn read_some(reader: &mut Option<Reader>, buffer: &mut Vec<u8>) -> io::Result<usize> {
    let Some(reader) = reader.as_mut() else {
        return std::future::pending().await;
    };
    buffer.clear();
    buffer.resize(CHUNK, 0);
    let mut filled = reader.read(&mut buffer[..]).await?;
    while filled > 0 && filled < CHUNK {
        match reader.read(&mut buffer[filled..]).now_or_never() {
            Some(Ok(0)) | None => break,
            Some(Ok(read)) => filled += read,
            Some(Err(_)) => break,
        }
    }
    buffer.truncate(filled);
    Ok(filled)
}

/// Runs one shell to its end: its exit code or signal, or why it could not run.
async fn run(
    id: u64,
    dir: &Path,
    request: ShellRequest,
    containment: Arc<Containment>,
    outgoing: &Outgoing,
    mut controls: mpsc::UnboundedReceiver<ShellControl>,
) -> Result<(Option<i32>, Option<i32>), String> {
    if !dir.is_dir() {
        return Err(format!(
            "the build's directory {} is not on this slave any more",
            dir.display()
        ));
    }
    let cell = containment
        .cell()
        .map_err(|err| format!("cannot contain the shell: {err}"))?;
    let shell = user_shell();
    let mut command = tokio::process::Command::new(&shell);
    if let Some(line) = &request.command {
        command.arg("-c").arg(line);
    }
    command
        .current_dir(dir)
        .envs(request.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .kill_on_drop(true);
    let (name, value) = cell.env();
    command.env(name, value);
    cell.prepare(&mut command);
    let mut pty = None;
    let (mut stdout, mut stderr): (Option<Reader>, Option<Reader>);
    match &request.pty {
        Some((term, size)) => {
            let pair = nix::pty::openpty(Some(&winsize(*size)), None)
                .map_err(|err| format!("cannot open a terminal: {err}"))?;
            let terminal = |fd: &OwnedFd| -> Result<Stdio, String> {
                fd.try_clone()
                    .map(Stdio::from)
                    .map_err(|err| format!("cannot open a terminal: {err}"))
            };
            command
                .env("TERM", if term.is_empty() { "dumb" } else { term })
                .stdin(terminal(&pair.slave)?)
                .stdout(terminal(&pair.slave)?)
                .stderr(terminal(&pair.slave)?);
            // SAFETY: between fork and exec only async-signal-safe calls (setsid, ioctl).
            unsafe {
                command.pre_exec(|| {
                    // A session of its own with the terminal as its controlling one: Ctrl-C
                    // and Ctrl-Z reach its foreground job, and job control works.
                    nix::unistd::setsid().map_err(io::Error::from)?;
                    if nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            // One registration for both directions: a second descriptor of the same PTY
            // would make each change of it two events.
            let master = Arc::new(
                PtyMaster::new(pair.master)
                    .map_err(|err| format!("cannot open a terminal: {err}"))?,
            );
            drop(pair.slave);
            stdout = Some(Box::pin(SharedPty(Arc::clone(&master))));
            stderr = None;
            pty = Some(master);
        }
        None => {
            command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0);
            stdout = None;
            stderr = None;
        }
    }
    let mut child = command
        .spawn()
        .map_err(|err| format!("cannot start {}: {err}", shell.display()))?;
    // The parent's copies of the terminal's other side go with the Command.
    drop(command);
    let pid = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .map(nix::unistd::Pid::from_raw);
    let mut stdin: Option<Writer> = match &pty {
        Some(master) => Some(Box::pin(SharedPty(Arc::clone(master)))),
        None => {
            stdout = child.stdout.take().map(|out| Box::pin(out) as Reader);
            stderr = child.stderr.take().map(|err| Box::pin(err) as Reader);
            child.stdin.take().map(|input| Box::pin(input) as Writer)
        }
    };
    tracing::info!(id, dir = %dir.display(), pty = pty.is_some(), "shell started");

    let mut in_flight: u64 = 0;
    let mut owed = AckOwed::default();
    let mut pending: VecDeque<(Vec<u8>, usize)> = VecDeque::new();
    let mut input_ended = false;
    let mut out_buffer = Vec::with_capacity(CHUNK);
    let mut err_buffer = Vec::with_capacity(CHUNK);
    let mut status = None;
    let mut drain_until: Option<tokio::time::Instant> = None;
    let mut closed: Option<String> = None;
    loop {
        if status.is_some() && stdout.is_none() && stderr.is_none() {
            break;
        }
        let may_send = in_flight + shell_cost(CHUNK) <= SHELL_WINDOW;
        let writing = stdin.is_some() && !pending.is_empty();
        tokio::select! {
            read = read_some(&mut stdout, &mut out_buffer), if may_send && stdout.is_some() => {
                match read {
                    Ok(read) if read > 0 => {
                        in_flight += shell_cost(read);
                        let data = std::mem::take(&mut out_buffer);
                        if outgoing.send(Message::ShellOutput { id, stream: StreamKind::Stdout, data }).await.is_err() {
                            closed = Some("the connection ended".into());
                            break;
                        }
                    }
                    _ => stdout = None,
                }
            }
            read = read_some(&mut stderr, &mut err_buffer), if may_send && stderr.is_some() => {
                match read {
                    Ok(read) if read > 0 => {
                        in_flight += shell_cost(read);
                        let data = std::mem::take(&mut err_buffer);
                        if outgoing.send(Message::ShellOutput { id, stream: StreamKind::Stderr, data }).await.is_err() {
                            closed = Some("the connection ended".into());
                            break;
                        }
                    }
                    _ => stderr = None,
                }
            }
            written = write_front(&mut stdin, &mut pending), if writing => {
                match written {
                    Ok(Some(cost)) => {
                        if let Some(cost) = owed.add(cost) {
                            let _ = outgoing.send(Message::ShellAck { id, cost }).await;
                        }
                    }
                    Ok(None) => {}
                    // The program closed its input: the rest is acknowledged and dropped.
                    Err(_) => {
                        stdin = None;
                        let cost: u64 = pending.drain(..).map(|(data, _)| shell_cost(data.len())).sum();
                        if let Some(cost) = owed.add(cost) {
                            let _ = outgoing.send(Message::ShellAck { id, cost }).await;
                        }
                    }
                }
                if input_ended && pending.is_empty() && pty.is_none() {
                    stdin = None;
                }
            }
            control = controls.recv() => match control {
                Some(ShellControl::Input(data)) => {
                    if stdin.is_some() {
                        pending.push_back((data, 0));
                    } else if let Some(cost) = owed.add(shell_cost(data.len())) {
                        let _ = outgoing.send(Message::ShellAck { id, cost }).await;
                    }
                }
                Some(ShellControl::Resize(size)) => {
                    if let Some(master) = &pty {
                        master.resize(size);
                    }
                }
                Some(ShellControl::Eof) => {
                    input_ended = true;
                    if pending.is_empty() && pty.is_none() {
                        stdin = None;
                    }
                }
                Some(ShellControl::Ack(cost)) => in_flight = in_flight.saturating_sub(cost),
                Some(ShellControl::Close(reason)) => {
                    closed = Some(reason);
                    break;
                }
                None => {
                    closed = Some("the connection ended".into());
                    break;
                }
            },
            exited = child.wait(), if status.is_none() => {
                status = Some(exited);
                drain_until = Some(tokio::time::Instant::now() + DRAIN);
            }
            () = tokio::time::sleep_until(drain_until.unwrap_or_else(tokio::time::Instant::now)), if drain_until.is_some() => break,
        }
    }
    // Whatever the shell started goes with it: its session or group, then its cell.
    if let Some(pid) = pid {
        let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
    }
    let _ = child.start_kill();
    let status = match status {
        Some(status) => Some(status),
        None => tokio::time::timeout(Duration::from_secs(2), child.wait())
            .await
            .ok(),
    };
    drop(stdin);
    drop(stdout);
    drop(stderr);
    drop(pty);
    let _ = tokio::task::spawn_blocking(move || drop(cell)).await;
    tracing::info!(id, ?closed, "shell ended");
    if let Some(reason) = closed {
        return Err(reason);
    }
    match status {
        Some(Ok(status)) => {
            use std::os::unix::process::ExitStatusExt;
            Ok((status.code(), status.signal()))
        }
        Some(Err(err)) => Err(format!("cannot wait for the shell: {err}")),
        None => Err("the shell did not end".into()),
    }
}

/// The PTY's master side, shared by the reader and the writer.
struct SharedPty(Arc<PtyMaster>);

impl AsyncWrite for SharedPty {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.0.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Writes some of the oldest pending input; the cost to acknowledge once a message is written
/// whole.
async fn write_front(
    stdin: &mut Option<Writer>,
    pending: &mut VecDeque<(Vec<u8>, usize)>,
) -> io::Result<Option<u64>> {
    let (Some(writer), Some((data, offset))) = (stdin.as_mut(), pending.front_mut()) else {
        return std::future::pending().await;
    };
    let written = writer.write(&data[*offset..]).await?;
    if written == 0 {
        return Err(io::ErrorKind::WriteZero.into());
    }
    *offset += written;
    if *offset < data.len() {
        return Ok(None);
    }
    let cost = shell_cost(data.len());
    pending.pop_front();
    Ok(Some(cost))
}
