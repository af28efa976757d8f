//! The master's event log: every [`BuildEvent`] gets the next sequence number, is kept in a
//! ring of recent events for followers that resume, and is broadcast to those following now.
//! [`Follower`] is the one way to follow it (replay, then live, never an event twice); the SSE
//! endpoint, `watch`, `try --wait` and the stop action all use it.
//!
//! With a shared store (several masters), the log is *journaled*: `publish` hands the event
//! to the journal (`master::journal`), which appends it to the store, where it gets the
//! cluster's next sequence number; every master's journal tail reads the events back in
//! sequence order and [`EventLog::deliver`]s them, its own and the other masters' alike. So a
//! sequence number means the same event on every master and across restarts.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::broadcast;

use crate::master::lock;
use crate::status::{BuildEvent, SequencedEvent, unix_now};

/// How many recent events are kept for followers that resume.
const KEPT_EVENTS: usize = 4096;
/// How far a live follower may fall behind before it misses events.
const BROADCAST_CAPACITY: usize = 1024;

pub struct EventLog {
    /// Names the numbering: this run of the master, or the cluster's shared store. A sequence
    /// number from another numbering means nothing here.
    epoch: String,
    /// Where a journaled log sends what is published (none: numbered here).
    journal: Option<tokio::sync::mpsc::UnboundedSender<(f64, BuildEvent)>>,
    live: broadcast::Sender<SequencedEvent>,
    kept: Mutex<Kept>,
}

struct Kept {
    events: VecDeque<SequencedEvent>,
    next_seq: u64,
}

/// What a follower gets next.
#[derive(Debug, Clone, PartialEq)]
pub enum Followed {
    Event(SequencedEvent),
    /// This many events went by that the follower can no longer get.
    Missed(u64),
    /// The master is stopping: no more events.
    Closed,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog::new()
    }
}

impl EventLog {
    pub fn new() -> EventLog {
        let (live, _) = broadcast::channel(BROADCAST_CAPACITY);
        let epoch = format!("{:x}", rand::random::<u64>());
        EventLog {
            epoch,
            journal: None,
            live,
            kept: Mutex::new(Kept {
                events: VecDeque::new(),
                next_seq: 1,
            }),
        }
    }

    /// A log numbered by the cluster's store: published events go to `journal`, and come back
    /// through [`EventLog::deliver`] with their number. `epoch` names the store's numbering.
    pub fn journaled(
        epoch: String,
        journal: tokio::sync::mpsc::UnboundedSender<(f64, BuildEvent)>,
    ) -> EventLog {
        EventLog {
            journal: Some(journal),
            epoch,
            ..EventLog::new()
        }
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Numbers the event, keeps it, and tells every follower (journaled: hands it to the
    /// journal, which numbers it in the store; it is delivered from there).
    pub fn publish(&self, event: BuildEvent) {
        if let Some(journal) = &self.journal {
            // The journal outlives every publisher but at the very end of a shutdown, when
            // nobody follows any more.
            let _ = journal.send((unix_now(), event));
            return;
        }
        let mut kept = lock(&self.kept);
        let sequenced = SequencedEvent {
            seq: kept.next_seq,
            at: unix_now(),
            event,
        };
        kept.next_seq += 1;
        kept.events.push_back(sequenced.clone());
        if kept.events.len() > KEPT_EVENTS {
            kept.events.pop_front();
        }
        // Sent under the lock, so followers see events in sequence order; no follower is fine.
        let _ = self.live.send(sequenced);
    }

    /// Keeps and tells an event numbered by the store (a journaled log). Events come in
    /// sequence order; one already delivered is ignored.
    pub fn deliver(&self, sequenced: SequencedEvent) {
        let mut kept = lock(&self.kept);
        if sequenced.seq < kept.next_seq {
            return;
        }
        kept.next_seq = sequenced.seq + 1;
        kept.events.push_back(sequenced.clone());
        if kept.events.len() > KEPT_EVENTS {
            kept.events.pop_front();
        }
        let _ = self.live.send(sequenced);
    }

    /// The sequence number of the newest event (0 before the first).
    pub fn last_seq(&self) -> u64 {
        lock(&self.kept).next_seq - 1
    }

    /// Follows from now on.
    pub fn follow(&self) -> Follower {
        let kept = lock(&self.kept);
        Follower {
            replay: VecDeque::new(),
            missed_before: 0,
            live: self.live.subscribe(),
            last_seq: kept.next_seq - 1,
        }
    }

    /// Follows from the event after `since` (a sequence number of this epoch): the kept ones
    /// first, then live ones. Events older than the ring are reported as missed.
    pub fn follow_since(&self, since: u64) -> Follower {
        self.follow_since_at_most(since, KEPT_EVENTS)
    }

    /// As [`EventLog::follow_since`], but replays at most `max_replay` events (the newest);
    /// older ones are reported as missed. A client on the open network asking for a replay from
    /// long ago costs `max_replay` copies, not the whole ring.
    pub fn follow_since_at_most(&self, since: u64, max_replay: usize) -> Follower {
        let kept = lock(&self.kept);
        let live = self.live.subscribe();
        let newer = kept
            .events
            .iter()
            .rev()
            .take_while(|event| event.seq > since)
            .count();
        let replay: VecDeque<SequencedEvent> = kept
            .events
            .iter()
            .skip(kept.events.len() - newer.min(max_replay))
            .cloned()
            .collect();
        let first_replayed = replay.front().map_or(kept.next_seq, |event| event.seq);
        let missed_before = first_replayed
            .saturating_sub(since + 1)
            .min(kept.next_seq - 1);
        Follower {
            replay,
            missed_before,
            live,
            last_seq: since.min(kept.next_seq - 1),
        }
    }
}

/// One follower of the event log. Each event comes once, in sequence order.
pub struct Follower {
    replay: VecDeque<SequencedEvent>,
    missed_before: u64,
    live: broadcast::Receiver<SequencedEvent>,
    last_seq: u64,
}

impl Follower {
    /// The sequence number of the last event handed out (or skipped as missed).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub async fn next(&mut self) -> Followed {
        if self.missed_before > 0 {
            let missed = std::mem::take(&mut self.missed_before);
            return Followed::Missed(missed);
        }
        if let Some(event) = self.replay.pop_front() {
            self.last_seq = event.seq;
            return Followed::Event(event);
        }
        loop {
            match self.live.recv().await {
                // Replayed events may come again live: skip what was handed out.
                Ok(event) if event.seq <= self.last_seq => continue,
                Ok(event) => {
                    let missed = event.seq - self.last_seq - 1;
                    if missed > 0 {
                        // Lagged past events that were dropped from the channel.
                        self.replay.push_back(event.clone());
                        self.last_seq = event.seq - 1;
                        return Followed::Missed(missed);
                    }
                    self.last_seq = event.seq;
                    return Followed::Event(event);
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return Followed::Closed,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(job: &str) -> BuildEvent {
        BuildEvent::RequestsQueued {
            job_name: job.into(),
            builders: vec!["linux".into()],
        }
    }

    fn seq_of(followed: Followed) -> u64 {
        match followed {
            Followed::Event(event) => event.seq,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_resumed_follower_gets_each_event_once_in_order() {
        let log = EventLog::new();
        for job in ["a", "b", "c"] {
            log.publish(queued(job));
        }
        let mut follower = log.follow_since(1);
        log.publish(queued("d"));
        let seen = [
            seq_of(follower.next().await),
            seq_of(follower.next().await),
            seq_of(follower.next().await),
        ];
        assert_eq!(seen, [2, 3, 4], "replay then live, no repeats");
        log.publish(queued("e"));
        assert_eq!(seq_of(follower.next().await), 5);
        assert_eq!(follower.last_seq(), 5);
    }

    #[tokio::test]
    async fn following_from_now_skips_the_past() {
        let log = EventLog::new();
        log.publish(queued("old"));
        let mut follower = log.follow();
        log.publish(queued("new"));
        assert_eq!(seq_of(follower.next().await), 2);
    }

    #[tokio::test]
    async fn resuming_from_before_the_ring_reports_what_is_missed() {
        let log = EventLog::new();
        for _ in 0..KEPT_EVENTS + 10 {
            log.publish(queued("x"));
        }
        let mut follower = log.follow_since(5);
        assert_eq!(follower.next().await, Followed::Missed(5));
        assert_eq!(seq_of(follower.next().await), 11);
    }

    #[tokio::test]
    async fn a_bounded_replay_hands_out_the_newest_and_reports_the_rest() {
        let log = EventLog::new();
        for _ in 0..100 {
            log.publish(queued("x"));
        }
        let mut follower = log.follow_since_at_most(0, 10);
        assert_eq!(follower.next().await, Followed::Missed(90));
        assert_eq!(seq_of(follower.next().await), 91);
        // Asking for less than the bound replays all of it.
        let mut follower = log.follow_since_at_most(95, 10);
        assert_eq!(seq_of(follower.next().await), 96);
        // Nothing newer: nothing missed, nothing replayed.
        let mut follower = log.follow_since_at_most(100, 10);
        log.publish(queued("y"));
        assert_eq!(seq_of(follower.next().await), 101);
    }

    #[tokio::test]
    async fn a_follower_that_lags_is_told_how_many_it_missed() {
        let log = EventLog::new();
        let mut follower = log.follow();
        for _ in 0..BROADCAST_CAPACITY + 5 {
            log.publish(queued("x"));
        }
        assert_eq!(follower.next().await, Followed::Missed(5));
        assert_eq!(seq_of(follower.next().await), 6);
    }
}
