//! Framing: `u32` big-endian length, then a postcard-encoded message. Decoding is a pure
//! function over bytes ([`FrameDecoder`] buffers a byte stream into whole frames); any
//! malformed, oversized or unknown frame is an error that closes the connection, never a panic.

use crate::proto::{MAX_FRAME, Message};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame of {length} bytes is larger than the limit of {limit}")]
    Oversized { length: usize, limit: usize },
    #[error("empty frame")]
    Empty,
    #[error("undecodable frame of {length} bytes: {reason}")]
    Malformed { length: usize, reason: String },
    #[error("the stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated { buffered: usize },
}

/// Encodes one message as a frame, in one allocation (output frames are most of the traffic).
pub fn encode(message: &Message) -> Vec<u8> {
    // Serialised straight into the frame when the hint is room enough (always for output);
    // otherwise through postcard's own growing buffer. Serialising our own enum cannot fail
    // (no maps with non-string keys, no unsupported types); an empty frame would be rejected
    // by the peer, which is the right failure if it ever did.
    let mut frame = vec![0; 4 + encoded_size_hint(message)];
    let length = match postcard::to_slice(message, &mut frame[4..]) {
        Ok(body) => body.len(),
        Err(_) => {
            let body = postcard::to_stdvec(message).unwrap_or_default();
            frame.truncate(4);
            frame.extend_from_slice(&body);
            body.len()
        }
    };
    frame.truncate(4 + length);
    frame[..4].copy_from_slice(&u32::try_from(length).unwrap_or(u32::MAX).to_be_bytes());
    frame
}

/// Room for the body: the bytes of output or patch, plus a little for the rest.
fn encoded_size_hint(message: &Message) -> usize {
    match message {
        Message::Output { data, .. }
        | Message::ShellOutput { data, .. }
        | Message::ShellInput { data, .. } => data.len() + 32,
        Message::Checkout { checkout, .. } => {
            checkout.patch.as_ref().map_or(0, Vec::len) + checkout.repo.len() + 256
        }
        _ => 128,
    }
}

/// Decodes the frame at the start of `bytes`: `Ok(None)` when more bytes are needed, else the
/// message and how many bytes it used.
pub fn decode(bytes: &[u8], limit: usize) -> Result<Option<(Message, usize)>, DecodeError> {
    let Some(header) = bytes.get(..4) else {
        return Ok(None);
    };
    let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if length > limit {
        return Err(DecodeError::Oversized { length, limit });
    }
    if length == 0 {
        return Err(DecodeError::Empty);
    }
    let Some(body) = bytes.get(4..4 + length) else {
        return Ok(None);
    };
    match postcard::from_bytes::<Message>(body) {
        Ok(message) => Ok(Some((message, 4 + length))),
        Err(err) => Err(DecodeError::Malformed {
            length,
            reason: err.to_string(),
        }),
    }
}

/// Turns a byte stream into messages.
#[derive(Debug)]
pub struct FrameDecoder {
    buffer: Vec<u8>,
    /// Bytes of `buffer` already consumed; compacted lazily to avoid shifting on every frame.
    start: usize,
    limit: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new(MAX_FRAME)
    }
}

impl FrameDecoder {
    pub fn new(limit: usize) -> FrameDecoder {
        FrameDecoder {
            buffer: Vec::new(),
            start: 0,
            limit,
        }
    }

    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buffer.len() {
            self.buffer.clear();
            self.start = 0;
        } else if self.start > 1024 * 1024 {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole message, if one has arrived.
    pub fn next_message(&mut self) -> Result<Option<Message>, DecodeError> {
        match decode(&self.buffer[self.start..], self.limit)? {
            Some((message, used)) => {
                self.start += used;
                Ok(Some(message))
            }
            None => Ok(None),
        }
    }

    /// Call at end of stream: an unfinished frame is an error.
    pub fn finish(&self) -> Result<(), DecodeError> {
        let buffered = self.buffer.len() - self.start;
        if buffered == 0 {
            Ok(())
        } else {
            Err(DecodeError::Truncated { buffered })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{CheckoutRequest, ExitReport, Hello, StreamKind};

    fn samples() -> Vec<Message> {
        vec![
            Message::Hello(Hello::for_this_host(
                "linux-1",
                std::time::Duration::from_secs(600),
                std::time::Duration::from_secs(30),
            )),
            Message::Welcome { master: "m".into() },
            Message::Checkout {
                id: 7,
                checkout: CheckoutRequest {
                    builder: "linux".into(),
                    repo: "/srv/git/p.git".into(),
                    branch: "main".into(),
                    revision: Some("abc".into()),
                    patch: Some(vec![0, 255, 10]),
                    patch_level: 1,
                    submodules: true,
                    keep_siblings: Some(vec!["linux~2".into()]),
                },
            },
            Message::Output {
                id: 7,
                stream: StreamKind::Stderr,
                data: (0..=255).collect(),
            },
            Message::Exit {
                id: 7,
                exit: ExitReport {
                    exit_code: Some(0),
                    signal: None,
                    elapsed_ms: 12,
                    timed_out: false,
                    interrupted: false,
                    failure: Some(crate::proto::Failure::SlaveFault(
                        "the patch step failed".into(),
                    )),
                    checked_out: Some("0123456789abcdef0123456789abcdef01234567".into()),
                },
            },
            Message::Ping { nonce: u64::MAX },
        ]
    }

    #[test]
    fn frames_round_trip_byte_by_byte() {
        let stream: Vec<u8> = samples().iter().flat_map(encode).collect();
        let mut decoder = FrameDecoder::default();
        let mut decoded = Vec::new();
        for byte in &stream {
            decoder.push(std::slice::from_ref(byte));
            while let Some(message) = decoder.next_message().expect("valid") {
                decoded.push(message);
            }
        }
        assert_eq!(decoded, samples());
        decoder.finish().expect("nothing left over");
    }

    #[test]
    fn output_is_raw_bytes_not_escaped() {
        let data = vec![b'x'; 1000];
        let frame = encode(&Message::Output {
            id: 1,
            stream: StreamKind::Stdout,
            data: data.clone(),
        });
        assert!(
            frame.len() < data.len() + 16,
            "{} bytes of framing",
            frame.len() - data.len()
        );
    }

    #[test]
    fn bad_frames_are_errors() {
        assert_eq!(decode(&[0, 0, 0], 100), Ok(None));
        assert_eq!(decode(&[0, 0, 0, 0], 100), Err(DecodeError::Empty));
        assert_eq!(
            decode(&[0, 0, 1, 0], 100),
            Err(DecodeError::Oversized {
                length: 256,
                limit: 100
            })
        );
        assert!(matches!(
            decode(&[0, 0, 0, 1, 250], 100),
            Err(DecodeError::Malformed { .. })
        ));
        let mut decoder = FrameDecoder::default();
        decoder.push(&[0, 0, 0, 9, 1]);
        assert_eq!(decoder.next_message(), Ok(None));
        assert_eq!(
            decoder.finish(),
            Err(DecodeError::Truncated { buffered: 5 })
        );
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let mut decoder = FrameDecoder::new(1024);
            decoder.push(&bytes);
            while let Ok(Some(_)) = decoder.next_message() {}
        }

        #[test]
        fn output_round_trips(id in 0u64.., data in proptest::collection::vec(proptest::num::u8::ANY, 0..4096)) {
            let message = Message::Output { id, stream: StreamKind::Stdout, data };
            let frame = encode(&message);
            proptest::prop_assert_eq!(decode(&frame, MAX_FRAME), Ok(Some((message, frame.len()))));
        }
    }
}
