//! `[retention]`: how long old builds keep their logs and artifacts, and their records.
//! Absent: everything is kept forever, as before.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::Checker;

/// What the retention task prunes (`master::retention`). A part without an age is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionConfig {
    /// Step logs of builds that finished longer ago than this are removed.
    pub logs: Option<Duration>,
    /// Artifacts of builds that finished longer ago than this are removed.
    pub artifacts: Option<Duration>,
    /// Builds that finished longer ago than this are removed whole: record, steps, logs, test
    /// results, artifacts, shell sessions, sent notifications.
    pub builds: Option<Duration>,
    /// The newest this many builds of each builder keep everything, whatever their age.
    pub keep_last: u64,
}

pub const DEFAULT_KEEP_LAST: u64 = 20;

#[derive(Debug, Deserialize)]
pub(super) struct RawRetention {
    #[serde(default)]
    logs: Option<Spanned<String>>,
    #[serde(default)]
    artifacts: Option<Spanned<String>>,
    #[serde(default)]
    builds: Option<Spanned<String>>,
    #[serde(default)]
    keep_last: Option<u64>,
}

impl Checker<'_> {
    pub(super) fn retention(&mut self, raw: Option<&RawRetention>) -> Option<RetentionConfig> {
        let raw = raw?;
        let mut age = |value: Option<&Spanned<String>>| {
            value.map(|value| self.duration(Some(value), Duration::ZERO))
        };
        let logs = age(raw.logs.as_ref());
        let artifacts = age(raw.artifacts.as_ref());
        let builds = age(raw.builds.as_ref());
        Some(RetentionConfig {
            logs,
            artifacts,
            builds,
            keep_last: raw.keep_last.unwrap_or(DEFAULT_KEEP_LAST),
        })
    }
}
