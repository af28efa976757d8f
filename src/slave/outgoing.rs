//! The slave's side of its one channel to the master, shared by the connection's writer task
//! and the shells (below both, so neither imports the other for it).

use std::sync::Arc;

use crate::proto::{self, Message};

/// The channel to the master, shared by the writer task and the shells, each writing whole
/// frames: a shell's output goes out from its own task instead of waking the writer, one task
/// hop less per echoed keystroke (bench/results-issue-25.md).
#[derive(Clone)]
pub struct Outgoing(Arc<tokio::sync::Mutex<russh::ChannelWriteHalf<russh::client::Msg>>>);

/// The connection to the master is gone.
#[derive(Debug)]
pub struct LinkGone;

impl Outgoing {
    pub fn new(channel: russh::ChannelWriteHalf<russh::client::Msg>) -> Outgoing {
        Outgoing(Arc::new(tokio::sync::Mutex::new(channel)))
    }

    pub async fn send(&self, message: Message) -> Result<(), LinkGone> {
        // Owned bytes go out in packets of the channel's largest size; `data` would copy
        // them through an 8 KiB buffer, four packets for one 32 KiB output frame.
        let frame = proto::encode(&message);
        let channel = self.0.lock().await;
        channel.data_bytes(frame).await.map_err(|_| LinkGone)
    }

    /// The end of what this slave sends; the master closes its side once it has read it all.
    pub async fn eof(&self) {
        let _ = self.0.lock().await.eof().await;
    }
}
