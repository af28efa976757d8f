//! The bot's outgoing queue, paced so that the server never kicks it for flooding: a token
//! bucket of `burst` lines, refilled one per `line_interval`. Announcements go first: answers to
//! commands wait in a queue of their own, so a busy channel asking the bot things cannot delay
//! a build result by minutes. Marks in the announcement queue say "every announcement of events
//! up to this sequence number has been handed to the connection", so a reconnect resumes after
//! what was really sent (pure: the caller gives the time).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Something to send. Announcements, joins and marks keep their order among themselves;
/// answers keep theirs, and go only when no announcement waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A PRIVMSG line; `answer` lines may be dropped when the queue is full, announcements not.
    Line {
        target: String,
        text: String,
        answer: bool,
    },
    Join {
        channel: String,
    },
    /// Announcements up to this event have been sent. Costs nothing.
    Mark {
        seq: u64,
    },
}

impl Item {
    fn is_answer(&self) -> bool {
        matches!(self, Item::Line { answer: true, .. })
    }
}

/// Answers beyond this many queued are dropped (a flood of commands must not grow the queue
/// without bound).
const MAX_QUEUED: usize = 1000;

pub struct Pacer {
    /// Announcements, joins and marks: first.
    first: VecDeque<Item>,
    /// Answers to commands: when `first` is empty.
    answers: VecDeque<Item>,
    burst: f64,
    interval: Duration,
    tokens: f64,
    updated: Instant,
}

impl Pacer {
    pub fn new(burst: usize, interval: Duration, now: Instant) -> Pacer {
        Pacer {
            first: VecDeque::new(),
            answers: VecDeque::new(),
            burst: burst.max(1) as f64,
            interval,
            tokens: burst.max(1) as f64,
            updated: now,
        }
    }

    /// Queues an item; false when an answer was dropped because the queue is full.
    pub fn push(&mut self, item: Item) -> bool {
        if !item.is_answer() {
            self.first.push_back(item);
            return true;
        }
        if self.answers.len() >= MAX_QUEUED {
            return false;
        }
        self.answers.push_back(item);
        true
    }

    pub fn len(&self) -> usize {
        self.first.len() + self.answers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_empty() && self.answers.is_empty()
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated);
        if self.interval.is_zero() {
            self.tokens = self.burst;
        } else {
            self.tokens =
                (self.tokens + elapsed.as_secs_f64() / self.interval.as_secs_f64()).min(self.burst);
        }
        self.updated = now;
    }

    fn front(&self) -> Option<&Item> {
        self.first.front().or_else(|| self.answers.front())
    }

    /// When the next item may go: none when the queue is empty.
    pub fn due(&mut self, now: Instant) -> Option<Instant> {
        let front = self.front()?;
        if matches!(front, Item::Mark { .. }) {
            return Some(now);
        }
        self.refill(now);
        if self.tokens >= 1.0 {
            return Some(now);
        }
        Some(now + self.interval.mul_f64(1.0 - self.tokens))
    }

    /// The next item, if it may go now.
    pub fn pop(&mut self, now: Instant) -> Option<Item> {
        if matches!(self.first.front(), Some(Item::Mark { .. })) {
            return self.first.pop_front();
        }
        self.front()?;
        self.refill(now);
        if self.tokens < 1.0 {
            return None;
        }
        self.tokens -= 1.0;
        self.first.pop_front().or_else(|| self.answers.pop_front())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(n: usize) -> Item {
        Item::Line {
            target: "#ci".into(),
            text: format!("line {n}"),
            answer: true,
        }
    }

    #[test]
    fn a_burst_then_one_line_per_interval() {
        let start = Instant::now();
        let interval = Duration::from_millis(500);
        let mut pacer = Pacer::new(4, interval, start);
        for n in 0..10 {
            pacer.push(Item::Line {
                target: "#ci".into(),
                text: format!("announcement {n}"),
                answer: false,
            });
        }
        pacer.push(Item::Mark { seq: 7 });
        let mut now = start;
        let mut sent = Vec::new();
        while let Some(due) = pacer.due(now) {
            now = due.max(now);
            if let Some(item) = pacer.pop(now) {
                sent.push((item, now.duration_since(start)));
            }
        }
        assert_eq!(sent.len(), 11);
        assert!(sent[..4].iter().all(|(_, at)| at.is_zero()), "burst of 4");
        for window in sent[4..10].windows(2) {
            assert!(window[1].1 - window[0].1 >= interval - Duration::from_millis(1));
        }
        assert_eq!(sent[10].0, Item::Mark { seq: 7 });
        assert_eq!(sent[10].1, sent[9].1, "a mark costs nothing");
    }

    #[test]
    fn announcements_overtake_waiting_answers() {
        let start = Instant::now();
        let mut pacer = Pacer::new(1, Duration::from_secs(1), start);
        for n in 0..50 {
            pacer.push(line(n));
        }
        assert_eq!(pacer.pop(start), Some(line(0)));
        let result = Item::Line {
            target: "#ci".into(),
            text: "linux #3: failure".into(),
            answer: false,
        };
        pacer.push(result.clone());
        pacer.push(Item::Mark { seq: 9 });
        let later = start + Duration::from_secs(1);
        assert_eq!(pacer.due(later), Some(later));
        assert_eq!(
            pacer.pop(later),
            Some(result),
            "the result before 49 answers"
        );
        assert_eq!(pacer.pop(later), Some(Item::Mark { seq: 9 }));
        assert_eq!(pacer.pop(later + Duration::from_secs(1)), Some(line(1)));
        assert_eq!(pacer.len(), 48);
    }

    #[test]
    fn answers_are_dropped_when_full_but_announcements_are_not() {
        let mut pacer = Pacer::new(1, Duration::from_secs(1), Instant::now());
        for n in 0..MAX_QUEUED {
            assert!(pacer.push(line(n)));
        }
        assert!(!pacer.push(line(0)));
        assert!(pacer.push(Item::Line {
            target: "#ci".into(),
            text: "linux #3: failure".into(),
            answer: false
        }));
    }
}
