//! Gathers a command's output into frames: what the step prints arrives as one piece per pipe
//! `read` (often a few KiB, or one line), and a frame per piece costs the master a decode, a
//! route and a write each. [`Coalescer`] joins consecutive pieces of one stream into frames of
//! up to [`MAX_OUTPUT_CHUNK`]; its owner sends what it holds when the flush deadline
//! ([`OUTPUT_FLUSH`] after the first byte held) passes, so a live log stays live.
//!
//! Bytes are never reordered or altered: a piece of the other stream first sends what is held
//! (stdout and stderr keep their interleaving at frame granularity), and a frame never holds
//! two streams. Pure: no I/O, no clock.

use std::time::Duration;

use crate::proto::{MAX_OUTPUT_CHUNK, StreamKind};

/// How long output may wait to fill a frame.
pub const OUTPUT_FLUSH: Duration = Duration::from_millis(5);

/// Output held back to fill a frame; see the module comment.
#[derive(Debug)]
pub struct Coalescer {
    stream: StreamKind,
    held: Vec<u8>,
}

impl Default for Coalescer {
    fn default() -> Self {
        Coalescer {
            stream: StreamKind::Stdout,
            held: Vec::new(),
        }
    }
}

impl Coalescer {
    /// Whether anything is held (the owner then keeps a flush deadline running).
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Adds a piece of `stream`; calls `frame` with every frame that is complete, in order.
    pub fn push(
        &mut self,
        stream: StreamKind,
        data: Vec<u8>,
        frame: &mut impl FnMut(StreamKind, Vec<u8>),
    ) {
        if stream != self.stream {
            if let Some(held) = self.take() {
                frame(held.0, held.1);
            }
            self.stream = stream;
        }
        // A piece that fills a frame on its own goes as it is, without a copy.
        if self.held.is_empty() && data.len() == MAX_OUTPUT_CHUNK {
            frame(stream, data);
            return;
        }
        let mut rest = &data[..];
        while !rest.is_empty() {
            if self.held.capacity() == 0 {
                self.held.reserve_exact(MAX_OUTPUT_CHUNK);
            }
            let take = (MAX_OUTPUT_CHUNK - self.held.len()).min(rest.len());
            self.held.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.held.len() == MAX_OUTPUT_CHUNK
                && let Some((stream, full)) = self.take()
            {
                frame(stream, full);
            }
        }
    }

    /// What is held, as one frame (at the flush deadline, or at the end of the output).
    pub fn take(&mut self) -> Option<(StreamKind, Vec<u8>)> {
        if self.held.is_empty() {
            return None;
        }
        Some((self.stream, std::mem::take(&mut self.held)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pieces: &[(StreamKind, Vec<u8>)]) -> Vec<(StreamKind, Vec<u8>)> {
        let mut coalescer = Coalescer::default();
        let mut frames = Vec::new();
        for (stream, data) in pieces {
            coalescer.push(*stream, data.clone(), &mut |s, d| frames.push((s, d)));
        }
        frames.extend(coalescer.take());
        frames
    }

    #[test]
    fn lines_become_full_frames_and_a_rest() {
        let line =
            b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz-bench!\n";
        let pieces: Vec<_> = (0..2000)
            .map(|_| (StreamKind::Stdout, line.to_vec()))
            .collect();
        let frames = run(&pieces);
        assert_eq!(frames.len(), 3);
        assert!(
            frames[..2]
                .iter()
                .all(|(_, data)| data.len() == MAX_OUTPUT_CHUNK)
        );
        let joined: Vec<u8> = frames.iter().flat_map(|(_, data)| data.clone()).collect();
        assert_eq!(joined, line.repeat(2000));
    }

    #[test]
    fn streams_stay_apart_and_in_order() {
        let pieces = vec![
            (StreamKind::Stdout, b"out 1\n".to_vec()),
            (StreamKind::Stdout, b"out 2\n".to_vec()),
            (StreamKind::Stderr, b"err 1\n".to_vec()),
            (StreamKind::Stdout, b"out 3\n".to_vec()),
        ];
        assert_eq!(
            run(&pieces),
            vec![
                (StreamKind::Stdout, b"out 1\nout 2\n".to_vec()),
                (StreamKind::Stderr, b"err 1\n".to_vec()),
                (StreamKind::Stdout, b"out 3\n".to_vec()),
            ]
        );
    }

    #[test]
    fn nothing_held_means_no_frame() {
        assert_eq!(run(&[]), vec![]);
        assert_eq!(run(&[(StreamKind::Stderr, Vec::new())]), vec![]);
    }

    proptest::proptest! {
        #[test]
        fn every_byte_arrives_once_in_order_per_stream(
            pieces in proptest::collection::vec(
                (proptest::bool::ANY, proptest::collection::vec(proptest::num::u8::ANY, 0..70_000)),
                0..12,
            )
        ) {
            let pieces: Vec<_> = pieces
                .into_iter()
                .map(|(err, data)| (if err { StreamKind::Stderr } else { StreamKind::Stdout }, data))
                .collect();
            let frames = run(&pieces);
            for stream in [StreamKind::Stdout, StreamKind::Stderr] {
                let sent: Vec<u8> = pieces.iter().filter(|(s, _)| *s == stream).flat_map(|(_, d)| d.clone()).collect();
                let got: Vec<u8> = frames.iter().filter(|(s, _)| *s == stream).flat_map(|(_, d)| d.clone()).collect();
                proptest::prop_assert_eq!(sent, got);
            }
            proptest::prop_assert!(frames.iter().all(|(_, d)| !d.is_empty() && d.len() <= MAX_OUTPUT_CHUNK));
        }
    }
}
