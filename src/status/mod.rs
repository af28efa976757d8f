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

pub use event::{BuildEvent, SequencedEvent, StepTail, StreamItem, TailStream};
pub use progress::{DEFAULT_TAIL_LINES, JobProgress, JobRecord};
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

/// `1st`, `2nd`, `3rd`, `11th`.
pub fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn ordinals() {
        assert_eq!(
            [1, 2, 3, 4, 11, 12, 13, 21, 22].map(super::ordinal),
            [
                "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd"
            ]
        );
    }
}
