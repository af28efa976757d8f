//! The limits every listener needs because it faces hostile peers: sshd-style `max_startups`
//! (`start:rate:full` random early drop) and its per-source share. This module only parses and
//! decides; `sshd` counts the connections and applies the decision.

use serde::Deserialize;

/// sshd's MaxStartups: below `start` unauthenticated connections every new one is accepted; from
/// `start` on a new one is dropped with probability `rate`% rising linearly to 100% at `full`.
/// A plain number `N` means `N:100:N` (drop everything from N on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxStartups {
    pub start: usize,
    /// Percent, 0..=100.
    pub rate: u32,
    pub full: usize,
}

impl MaxStartups {
    pub fn plain(limit: usize) -> MaxStartups {
        MaxStartups {
            start: limit,
            rate: 100,
            full: limit,
        }
    }

    /// Parses `N` or `start:rate:full` (sshd's syntax).
    pub fn parse(text: &str) -> Result<MaxStartups, String> {
        let bad = || {
            format!(
                "max_startups = \"{text}\" is neither a number nor start:rate:full (e.g. \"10:30:100\")"
            )
        };
        let parts: Vec<&str> = text.trim().split(':').collect();
        let number = |part: &str| part.trim().parse::<usize>().map_err(|_| bad());
        let limits = match parts.as_slice() {
            [limit] => MaxStartups::plain(number(limit)?),
            [start, rate, full] => MaxStartups {
                start: number(start)?,
                rate: rate.trim().parse::<u32>().map_err(|_| bad())?,
                full: number(full)?,
            },
            _ => return Err(bad()),
        };
        limits.check().map(|()| limits)
    }

    fn check(&self) -> Result<(), String> {
        if self.start == 0 || self.full == 0 {
            return Err("max_startups must allow at least one connection".to_string());
        }
        if self.rate > 100 {
            return Err(format!(
                "max_startups rate {} is a percentage (0 to 100)",
                self.rate
            ));
        }
        if self.start > self.full {
            return Err(format!(
                "max_startups start {} is larger than full {}",
                self.start, self.full
            ));
        }
        Ok(())
    }

    /// What a source address may hold when the config does not say: a quarter of `full`, at
    /// least one, so one host cannot take every place.
    pub fn default_per_source(&self) -> usize {
        (self.full / 4).max(1)
    }

    /// Percent chance that a new connection is dropped when `unauthenticated` are already
    /// waiting (sshd's formula).
    pub fn drop_percent(&self, unauthenticated: usize) -> u32 {
        if unauthenticated < self.start {
            return 0;
        }
        if unauthenticated >= self.full {
            return 100;
        }
        let span = (self.full - self.start) as u64;
        let over = (unauthenticated - self.start) as u64;
        let rate = u64::from(self.rate);
        // `span` > 0 here: start <= unauthenticated < full.
        (rate + (100 - rate) * over / span) as u32
    }
}

/// How `max_startups` is written: a number or a string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawMaxStartups {
    Number(usize),
    Text(String),
}

impl RawMaxStartups {
    pub(super) fn parse(&self) -> Result<MaxStartups, String> {
        match self {
            RawMaxStartups::Number(limit) => {
                let limits = MaxStartups::plain(*limit);
                limits.check().map(|()| limits)
            }
            RawMaxStartups::Text(text) => MaxStartups::parse(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_spellings_parse() {
        assert_eq!(MaxStartups::parse("10"), Ok(MaxStartups::plain(10)));
        assert_eq!(
            MaxStartups::parse("10:30:100"),
            Ok(MaxStartups {
                start: 10,
                rate: 30,
                full: 100
            })
        );
        for bad in ["", "x", "1:2", "10:30:5", "1:101:4", "0", "1:2:3:4", "-1"] {
            assert!(MaxStartups::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_drop_chance_rises_from_rate_to_all() {
        let limits = MaxStartups::parse("10:30:60").expect("valid");
        assert_eq!(limits.drop_percent(9), 0);
        assert_eq!(limits.drop_percent(10), 30);
        assert_eq!(limits.drop_percent(35), 65);
        assert_eq!(limits.drop_percent(59), 98);
        assert_eq!(limits.drop_percent(60), 100);
        assert_eq!(limits.drop_percent(1000), 100);
        assert_eq!(MaxStartups::plain(2).drop_percent(1), 0);
        assert_eq!(MaxStartups::plain(2).drop_percent(2), 100);
    }

    #[test]
    fn a_source_gets_a_quarter_and_at_least_one() {
        assert_eq!(MaxStartups::plain(10).default_per_source(), 2);
        assert_eq!(MaxStartups::plain(2).default_per_source(), 1);
        assert_eq!(
            MaxStartups::parse("10:30:100")
                .expect("valid")
                .default_per_source(),
            25
        );
    }
}
