//! Per-user quotas on the queue (`[limits]`): how many requests one user may have waiting, and
//! how many one user may submit per minute. A refusal is one line that names the limit.
//! Operators are exempt (they clean up, they do not flood). The rate is a sliding window of
//! the last minute's submission times per user, in memory: a restart forgives, which is fine
//! for a limit whose point is a flood of thousands per minute.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::master::config::QuotaConfig;

const WINDOW: Duration = Duration::from_secs(60);

/// Why a user may not queue more now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    #[error(
        "{user} has {queued} requests waiting already; at most {limit} may wait per user ([limits] max_queued_per_user): wait for some to build or cancel some"
    )]
    TooManyQueued {
        user: String,
        queued: usize,
        limit: usize,
    },
    #[error(
        "{user} submitted {limit} requests in the last minute, this master's limit ([limits] max_requests_per_minute): try again in {retry_in}s"
    )]
    TooFast {
        user: String,
        limit: u32,
        retry_in: u64,
    },
}

/// The submission times of each user within the last minute.
#[derive(Debug, Default)]
pub struct Quotas {
    recent: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl Quotas {
    /// May `user`, who has `queued` requests waiting now, add `adding` more? If so, they are
    /// counted against the rate.
    pub fn admit(
        &self,
        user: &str,
        queued: usize,
        adding: usize,
        limits: &QuotaConfig,
        now: Instant,
    ) -> Result<(), QuotaError> {
        if queued + adding > limits.max_queued_per_user {
            return Err(QuotaError::TooManyQueued {
                user: user.to_string(),
                queued,
                limit: limits.max_queued_per_user,
            });
        }
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Users who went quiet are forgotten, so the map holds only the last minute's users.
        recent.retain(|_, times| {
            while times
                .front()
                .is_some_and(|at| now.duration_since(*at) >= WINDOW)
            {
                times.pop_front();
            }
            !times.is_empty()
        });
        let times = recent.entry(user.to_string()).or_default();
        let limit = limits.max_requests_per_minute as usize;
        if times.len() + adding > limit {
            let oldest = times.front().copied().unwrap_or(now);
            let retry_in = WINDOW
                .saturating_sub(now.duration_since(oldest))
                .as_secs()
                .max(1);
            return Err(QuotaError::TooFast {
                user: user.to_string(),
                limit: limits.max_requests_per_minute,
                retry_in,
            });
        }
        times.extend(std::iter::repeat_n(now, adding));
        Ok(())
    }
}

/// How long a build of `builder` may hold its locks: `[limits] max_lock_hold` when the builder
/// uses any (for the build or a step), none otherwise.
pub fn lock_hold_limit(config: &crate::master::config::Config, builder: &str) -> Option<Duration> {
    let builder = config.builder(builder)?;
    let uses_locks =
        !builder.locks.is_empty() || builder.steps.iter().any(|step| !step.locks.is_empty());
    uses_locks.then_some(config.quotas.max_lock_hold)
}

/// Runs `build`; if it is still running after `limit`, `stop` asks it to stop (the build then
/// ends as interrupted and releases its locks) and its end is awaited as usual.
pub async fn within_lock_hold<T>(
    build: impl std::future::Future<Output = T>,
    limit: Option<Duration>,
    stop: impl FnOnce() -> bool,
) -> T {
    let Some(limit) = limit else {
        return build.await;
    };
    tokio::pin!(build);
    tokio::select! {
        outcome = &mut build => outcome,
        () = tokio::time::sleep(limit) => {
            if stop() {
                tracing::warn!(?limit, "a build held its locks past [limits] max_lock_hold; stopped");
            }
            build.await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: QuotaConfig = QuotaConfig {
        max_queued_per_user: 5,
        max_requests_per_minute: 3,
        max_lock_hold: Duration::from_secs(60),
    };

    #[test]
    fn a_user_past_the_queue_limit_is_refused_with_the_numbers() {
        let quotas = Quotas::default();
        let now = Instant::now();
        assert!(quotas.admit("alice", 4, 1, &LIMITS, now).is_ok());
        let refused = quotas.admit("alice", 5, 1, &LIMITS, now).expect_err("full");
        assert_eq!(
            refused.to_string(),
            "alice has 5 requests waiting already; at most 5 may wait per user ([limits] max_queued_per_user): wait for some to build or cancel some"
        );
    }

    #[test]
    fn the_rate_is_per_user_and_slides_with_the_minute() {
        let quotas = Quotas::default();
        let start = Instant::now();
        for _ in 0..3 {
            quotas
                .admit("alice", 0, 1, &LIMITS, start)
                .expect("within rate");
        }
        let refused = quotas
            .admit("alice", 0, 1, &LIMITS, start + Duration::from_secs(20))
            .expect_err("too fast");
        assert!(
            matches!(refused, QuotaError::TooFast { retry_in: 40, .. }),
            "{refused:?}"
        );
        // Another user is not held up by alice.
        assert!(quotas.admit("bob", 0, 1, &LIMITS, start).is_ok());
        // A minute later alice may again.
        assert!(quotas.admit("alice", 0, 1, &LIMITS, start + WINDOW).is_ok());
        // A job for more builders than the rate allows at once is refused whole.
        assert!(quotas.admit("carol", 0, 4, &LIMITS, start).is_err());
    }
}
