//! Who may start a login: the places for unauthenticated connections (sshd's MaxStartups with
//! random early drop) and each source address's share of them, so that one host holding idle
//! sockets cannot lock out slaves and other users. Owns the counts; the accept loop asks
//! [`Startups::admit`] and the connection holds the [`StartupPermit`] until it authenticates
//! or ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::master::config::MaxStartups;
use crate::untrusted::source::source_of;

/// The counts of unauthenticated connections, in total and by source.
pub struct Startups {
    limits: MaxStartups,
    per_source: usize,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// Why a new connection was dropped; its `Display` is the log line's reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{waiting} unauthenticated connections already (max_startups full at {full})")]
    Full { waiting: usize, full: usize },
    #[error(
        "random early drop at {waiting} unauthenticated connections ({percent}% chance, max_startups)"
    )]
    EarlyDrop { waiting: usize, percent: u32 },
    #[error(
        "{source_address} already holds {holding} unauthenticated connections (max_startups_per_source)"
    )]
    SourceShare {
        source_address: IpAddr,
        holding: usize,
    },
}

/// One place taken by an unauthenticated connection; dropping it gives the place back.
pub struct StartupPermit {
    startups: Arc<Startups>,
    source: IpAddr,
}

impl Drop for StartupPermit {
    fn drop(&mut self) {
        let mut counts = crate::master::lock(&self.startups.counts);
        counts.total = counts.total.saturating_sub(1);
        if let Some(count) = counts.by_source.get_mut(&self.source) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.by_source.remove(&self.source);
            }
        }
    }
}

impl Startups {
    pub fn new(limits: MaxStartups, per_source: usize) -> Arc<Startups> {
        Arc::new(Startups {
            limits,
            per_source: per_source.max(1),
            counts: Mutex::new(Counts::default()),
        })
    }

    /// Takes a place for a connection from `peer`, or says why there is none.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<StartupPermit, Refusal> {
        self.admit_with_roll(peer, rand::random::<u32>() % 100)
    }

    /// [`Startups::admit`] with the die already cast (0..100), so tests choose it.
    fn admit_with_roll(
        self: &Arc<Self>,
        peer: IpAddr,
        roll: u32,
    ) -> Result<StartupPermit, Refusal> {
        let source = source_of(peer);
        let mut counts = crate::master::lock(&self.counts);
        let from_source = counts.by_source.get(&source).copied().unwrap_or(0);
        decide(
            &self.limits,
            self.per_source,
            counts.total,
            source,
            from_source,
            roll,
        )?;
        counts.total += 1;
        *counts.by_source.entry(source).or_insert(0) += 1;
        Ok(StartupPermit {
            startups: Arc::clone(self),
            source,
        })
    }
}

/// The decision, pure. A source over its share is refused first (that is deterministic and
/// names the culprit); `full` is full for everyone. sshd's random early drop then applies only
/// to sources that already hold an unauthenticated connection: a host that holds none gets in
/// while there is room, so one busy host (capped at its share) pushing the count past `start`
/// cannot make every other host lose the draw.
fn decide(
    limits: &MaxStartups,
    per_source: usize,
    waiting: usize,
    source: IpAddr,
    from_source: usize,
    roll: u32,
) -> Result<(), Refusal> {
    if from_source >= per_source {
        return Err(Refusal::SourceShare {
            source_address: source,
            holding: from_source,
        });
    }
    if waiting >= limits.full {
        return Err(Refusal::Full {
            waiting,
            full: limits.full,
        });
    }
    if from_source == 0 {
        return Ok(());
    }
    let percent = limits.drop_percent(waiting);
    if roll < percent {
        return Err(Refusal::EarlyDrop { waiting, percent });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn one_source_gets_only_its_share_and_others_still_get_in() {
        let startups = Startups::new(MaxStartups::plain(8), 2);
        let first = startups.admit_with_roll(ip("10.0.0.1"), 99).expect("first");
        let _second = startups
            .admit_with_roll(ip("10.0.0.1"), 99)
            .expect("second");
        assert!(matches!(
            startups.admit_with_roll(ip("10.0.0.1"), 99),
            Err(Refusal::SourceShare { holding: 2, .. })
        ));
        let _other = startups
            .admit_with_roll(ip("10.0.0.2"), 99)
            .expect("another host gets in");
        drop(first);
        let _again = startups
            .admit_with_roll(ip("10.0.0.1"), 99)
            .expect("a place given back is taken again");
    }

    #[test]
    fn random_early_drop_follows_the_roll_and_full_is_full() {
        let limits = MaxStartups::parse("2:50:4").expect("valid");
        let startups = Startups::new(limits, 10);
        let mut held: Vec<StartupPermit> = (1..=2)
            .map(|_| {
                startups
                    .admit_with_roll(ip("10.0.0.1"), 0)
                    .expect("below start")
            })
            .collect();
        // 2 waiting: 50% chance for a source that holds some. A roll of 49 drops, 50 gets in.
        assert_eq!(
            startups.admit_with_roll(ip("10.0.0.1"), 49).err(),
            Some(Refusal::EarlyDrop {
                waiting: 2,
                percent: 50
            })
        );
        held.push(startups.admit_with_roll(ip("10.0.0.1"), 50).expect("lucky"));
        // A host that holds nothing is not in the draw.
        held.push(
            startups
                .admit_with_roll(ip("10.0.1.2"), 0)
                .expect("a fresh host gets in below full"),
        );
        assert_eq!(
            startups.admit_with_roll(ip("10.0.1.3"), 99).err(),
            Some(Refusal::Full {
                waiting: 4,
                full: 4
            })
        );
        held.clear();
        assert!(startups.admit_with_roll(ip("10.0.1.3"), 0).is_ok());
    }

    #[test]
    fn a_busy_host_past_start_does_not_make_others_lose_the_draw() {
        // Everyone who holds a place is dropped past start (rate 100).
        let limits = MaxStartups::parse("2:100:100").expect("valid");
        let startups = Startups::new(limits, 25);
        let busy: Vec<StartupPermit> = (0..2)
            .map(|_| {
                startups
                    .admit_with_roll(ip("10.0.0.1"), 99)
                    .expect("below start")
            })
            .collect();
        assert!(matches!(
            startups.admit_with_roll(ip("10.0.0.1"), 99),
            Err(Refusal::EarlyDrop { .. })
        ));
        let _other = startups
            .admit_with_roll(ip("10.0.0.2"), 0)
            .expect("another host still gets in");
        drop(busy);
    }
}
