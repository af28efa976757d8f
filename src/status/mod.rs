//! The vocabulary of build status that crosses every boundary: results and request states, the
//! events the master publishes, the snapshot of what each builder is doing, and the stream items
//! `try --wait` and `watch` receive. The master produces these, the front ends and the clients
//! consume them as typed values (over SSH as one JSON object per line) and render text with
//! [`text`] themselves: nobody parses sentences back into state.
//!
//! Bottom layer: plain data and pure rendering, no I/O.

mod event;
mod progress;
mod result;
mod snapshot;
pub mod text;

pub use event::{BuildEvent, SequencedEvent, StreamItem};
pub use progress::JobProgress;
pub use result::{BuildResult, RequestKind, RequestState, UnknownName};
pub use snapshot::{
    BuilderActivity, BuilderStatus, LastBuild, PoolSlave, RunningBuild, StatusSnapshot,
};

/// Seconds since the unix epoch, as stored in the history and carried in events.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |elapsed| elapsed.as_secs_f64())
}
