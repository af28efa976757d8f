//! The incoming side of one exec channel, read by the task that runs the command: the data
//! is the command's stdin, a window change goes to its terminal, and the channel's close
//! cancels `client_gone`.
//!
//! The command reads the channel itself, not through a pipe filled by a second future of the
//! same task: a future that wakes its own task makes tokio re-queue the task behind the others
//! and wake an idle worker thread to steal it, which cost each keystroke through a shell relay
//! two futex wake-ups on the master (bench/results-issue-25.md). [`ChannelInput::tick`] keeps
//! watching the channel while the command does not read it (after EOF, or while it is busy),
//! so a client that goes away is still noticed.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::pin;
use std::sync::Mutex;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use russh::{ChannelMsg, ChannelReadHalf};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

/// A channel's incoming side, shared by the command's stdin ([`ChannelInput::stdin`]) and the
/// watch of its session ([`ChannelInput::tick`]), both polled by one task.
pub struct ChannelInput {
    inbox: Mutex<Inbox>,
}

/// How much of the client's stdin the watch takes off the channel while the command does not
/// read it (as a pipe would hold); beyond it the channel waits, and a close is noticed once
/// the command reads.
const STDIN_BUFFER: usize = 64 * 1024;

struct Inbox {
    read_half: ChannelReadHalf,
    /// Data taken off the channel that the command has not read yet, in order.
    pending: VecDeque<Bytes>,
    pending_bytes: usize,
    /// The watch stopped at a full `pending`: a read that makes room must bring it back.
    watch_waits_for_room: bool,
    /// The client sent EOF: stdin ends once `pending` is read; later data is dropped.
    eof: bool,
    /// The channel is closed (or its session gone): stdin ends, nothing more comes.
    closed: bool,
    client_gone: CancellationToken,
    resizes: Option<UnboundedSender<(u16, u16)>>,
}

/// What the next message of the channel means to stdin.
enum Incoming {
    Data(Bytes),
    Eof,
    Closed,
}

impl ChannelInput {
    pub fn new(
        read_half: ChannelReadHalf,
        client_gone: CancellationToken,
        resizes: Option<UnboundedSender<(u16, u16)>>,
    ) -> ChannelInput {
        ChannelInput {
            inbox: Mutex::new(Inbox {
                read_half,
                pending: VecDeque::new(),
                pending_bytes: 0,
                watch_waits_for_room: false,
                eof: false,
                closed: false,
                client_gone,
                resizes,
            }),
        }
    }

    /// The command's stdin.
    pub fn stdin(&self) -> Stdin<'_> {
        Stdin { input: self }
    }

    /// Whether the channel is closed: [`ChannelInput::tick`] has nothing more to watch.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Takes the next message off the channel when the command is not reading it; ready when
    /// one was taken, so the caller goes round its loop and the command sees it. Meant to be
    /// polled after the command in a `biased` select, so that a command that reads gets its
    /// data first-hand.
    pub fn tick(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            let mut inbox = self.lock();
            if inbox.closed {
                return Poll::Pending;
            }
            // A full buffer holds the channel, as a full pipe would hold the writer; the
            // command's read brings the watch back.
            if inbox.pending_bytes >= STDIN_BUFFER {
                inbox.watch_waits_for_room = true;
                return Poll::Pending;
            }
            match ready!(inbox.poll_incoming(cx)) {
                Incoming::Data(data) => {
                    if !inbox.eof && !data.is_empty() {
                        inbox.pending_bytes += data.len();
                        inbox.pending.push_back(data);
                    }
                }
                Incoming::Eof => inbox.eof = true,
                Incoming::Closed => inbox.close(),
            }
            Poll::Ready(())
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inbox> {
        self.inbox
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Inbox {
    /// The next message that matters to stdin; window changes go to the terminal on the way.
    fn poll_incoming(&mut self, cx: &mut Context<'_>) -> Poll<Incoming> {
        loop {
            // `wait` is a receive on the channel's queue: made anew on each poll, it loses
            // nothing when dropped unfinished.
            let message = ready!(pin!(self.read_half.wait()).poll(cx));
            match message {
                Some(ChannelMsg::Data { data }) => return Poll::Ready(Incoming::Data(data)),
                Some(ChannelMsg::Eof) => return Poll::Ready(Incoming::Eof),
                Some(ChannelMsg::Close) | None => return Poll::Ready(Incoming::Closed),
                Some(ChannelMsg::WindowChange {
                    col_width,
                    row_height,
                    ..
                }) => {
                    if let Some(resizes) = &self.resizes {
                        let _ = resizes.send((clamp(col_width), clamp(row_height)));
                    }
                }
                Some(_) => {}
            }
        }
    }

    fn close(&mut self) {
        self.closed = true;
        self.pending.clear();
        self.pending_bytes = 0;
        self.client_gone.cancel();
    }
}

/// The command's stdin: the channel's data up to the client's EOF or the channel's close.
pub struct Stdin<'a> {
    input: &'a ChannelInput,
}

impl AsyncRead for Stdin<'_> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let mut inbox = self.input.lock();
        loop {
            if let Some(front) = inbox.pending.front_mut() {
                let taken = buf.remaining().min(front.len());
                buf.put_slice(&front[..taken]);
                front.advance(taken);
                if front.is_empty() {
                    inbox.pending.pop_front();
                }
                inbox.pending_bytes -= taken;
                if inbox.watch_waits_for_room && inbox.pending_bytes < STDIN_BUFFER {
                    inbox.watch_waits_for_room = false;
                    // The watch stopped at a full buffer; it looks at the channel again.
                    cx.waker().wake_by_ref();
                }
                return Poll::Ready(Ok(()));
            }
            if inbox.eof || inbox.closed || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            match ready!(inbox.poll_incoming(cx)) {
                // An empty message is not the end of stdin: read on.
                Incoming::Data(data) if data.is_empty() => {}
                Incoming::Data(data) => {
                    inbox.pending_bytes += data.len();
                    inbox.pending.push_back(data);
                }
                Incoming::Eof => inbox.eof = true,
                Incoming::Closed => inbox.close(),
            }
        }
    }
}

/// A terminal dimension as a PTY takes it.
pub fn clamp(value: u32) -> u16 {
    u16::try_from(value).unwrap_or(u16::MAX)
}
