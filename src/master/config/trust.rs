//! The keys about trust between users: `[master] operators` (alias `admin_group`) and the
//! per-user quotas of `[limits]`.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{Checker, RawMaster};

/// Per-user limits on what one account may put in the queue (operators are exempt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaConfig {
    /// Requests of one user waiting in the queues at once (try, force, rebuild).
    pub max_queued_per_user: usize,
    /// Requests one user may submit per minute.
    pub max_requests_per_minute: u32,
    /// The longest a build of a builder that uses locks may run: it is stopped then, so a
    /// lock is never held without a limit.
    pub max_lock_hold: Duration,
}

pub const DEFAULT_MAX_LOCK_HOLD: Duration = Duration::from_secs(4 * 3600);

pub const DEFAULT_MAX_QUEUED_PER_USER: usize = 50;
pub const DEFAULT_MAX_REQUESTS_PER_MINUTE: u32 = 30;

impl Default for QuotaConfig {
    fn default() -> Self {
        QuotaConfig {
            max_queued_per_user: DEFAULT_MAX_QUEUED_PER_USER,
            max_requests_per_minute: DEFAULT_MAX_REQUESTS_PER_MINUTE,
            max_lock_hold: DEFAULT_MAX_LOCK_HOLD,
        }
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct RawQuotas {
    #[serde(default)]
    max_queued_per_user: Option<Spanned<usize>>,
    #[serde(default)]
    max_requests_per_minute: Option<Spanned<u32>>,
    #[serde(default)]
    max_lock_hold: Option<Spanned<String>>,
}

impl Checker<'_> {
    pub(super) fn operators(&mut self, raw: &RawMaster) -> Option<String> {
        if let (Some(_), Some(alias)) = (&raw.operators, &raw.admin_group) {
            self.problem(
                alias,
                "admin_group is the older name of operators: set only one of them".into(),
            );
        }
        let group = raw.operators.as_ref().or(raw.admin_group.as_ref())?;
        if nix::unistd::Group::from_name(group.get_ref())
            .ok()
            .flatten()
            .is_none()
        {
            let key = if raw.operators.is_some() {
                "operators"
            } else {
                "admin_group"
            };
            let message = format!(
                "{key} \"{}\" is not a unix group on this host",
                group.get_ref()
            );
            self.problem(group, message);
        }
        Some(group.get_ref().clone())
    }

    pub(super) fn quotas(&mut self, raw: Option<&RawQuotas>) -> QuotaConfig {
        let Some(raw) = raw else {
            return QuotaConfig::default();
        };
        let max_queued_per_user = self.at_least_one(
            raw.max_queued_per_user.as_ref(),
            DEFAULT_MAX_QUEUED_PER_USER,
            "[limits] max_queued_per_user",
        );
        let max_requests_per_minute = match &raw.max_requests_per_minute {
            None => DEFAULT_MAX_REQUESTS_PER_MINUTE,
            Some(value) if *value.get_ref() == 0 => {
                self.problem(
                    value,
                    "[limits] max_requests_per_minute must be at least 1".into(),
                );
                DEFAULT_MAX_REQUESTS_PER_MINUTE
            }
            Some(value) => *value.get_ref(),
        };
        let max_lock_hold = self.duration(raw.max_lock_hold.as_ref(), DEFAULT_MAX_LOCK_HOLD);
        QuotaConfig {
            max_queued_per_user,
            max_requests_per_minute,
            max_lock_hold,
        }
    }
}
