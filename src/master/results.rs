//! How step failures count towards a build's result, and the expected duration of the next
//! build. The results themselves are `status::BuildResult`.

use std::time::Duration;

use crate::status::BuildResult;

/// The result of a step, and of its build, cut short by the loss of its slave or of its master
/// (a lost connection, a slave shutting down, the master stopping or restarted): never the
/// command's own failure. The one rule for both `build::judge` and the start-up recovery
/// (`history::recover_interrupted_builds`).
pub const CUT_SHORT: BuildResult = BuildResult::Exception;

/// What a failed step does to its build, from the step's flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailurePolicy {
    pub halt_on_failure: bool,
    pub flunk_on_failure: bool,
    pub warn_on_failure: bool,
}

impl FailurePolicy {
    /// How a failed step counts towards the build's result.
    pub fn contribution(self) -> BuildResult {
        if self.flunk_on_failure {
            BuildResult::Failure
        } else if self.warn_on_failure {
            BuildResult::Warnings
        } else {
            BuildResult::Success
        }
    }
}

/// The expected duration of the next build from recent successful ones: their median.
pub fn expected_duration(recent_successes: &[f64]) -> Option<Duration> {
    let mut durations: Vec<f64> = recent_successes
        .iter()
        .copied()
        .filter(|d| d.is_finite() && *d >= 0.0)
        .collect();
    if durations.is_empty() {
        return None;
    }
    durations.sort_by(f64::total_cmp);
    Some(Duration::from_secs_f64(durations[durations.len() / 2]))
}

/// When each of `queued` requests should start and finish, in seconds from now: slots free up
/// at `slot_free_in` (0 for an idle slot, a running build's remaining time otherwise), and each
/// build takes `expected`. None where there is nothing to go by (no slot, no expected duration
/// for a wait behind a queued build).
pub fn queue_estimates(
    slot_free_in: &[f64],
    expected: Option<f64>,
    queued: usize,
) -> Vec<Option<(f64, f64)>> {
    let mut slots: Vec<f64> = slot_free_in.iter().map(|t| t.max(0.0)).collect();
    let mut estimates = Vec::with_capacity(queued);
    for _ in 0..queued {
        let Some((index, start)) = slots
            .iter()
            .copied()
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(&b.1))
        else {
            estimates.push(None);
            continue;
        };
        match expected {
            Some(duration) => {
                slots[index] = start + duration;
                estimates.push(Some((start, start + duration)));
            }
            None => {
                // Without a duration only the first wait behind each slot is known.
                estimates.push(Some((start, start)).filter(|_| start.is_finite()));
                slots[index] = f64::INFINITY;
            }
        }
    }
    estimates
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expected_duration_is_the_median_of_recent_successes() {
        assert_eq!(
            expected_duration(&[10.0, 300.0, 20.0]),
            Some(Duration::from_secs(20))
        );
        assert_eq!(expected_duration(&[]), None);
    }

    #[test]
    fn queued_requests_start_as_slots_free_up() {
        // Two slots: one idle, one free in 30 s; builds take 100 s.
        let estimates = queue_estimates(&[0.0, 30.0], Some(100.0), 3);
        assert_eq!(
            estimates,
            vec![
                Some((0.0, 100.0)),
                Some((30.0, 130.0)),
                Some((100.0, 200.0))
            ]
        );
        assert_eq!(queue_estimates(&[], Some(100.0), 1), vec![None]);
        assert_eq!(
            queue_estimates(&[20.0], None, 2),
            vec![Some((20.0, 20.0)), None]
        );
    }

    #[test]
    fn failure_policies() {
        let policy = |flunk, warn| FailurePolicy {
            halt_on_failure: true,
            flunk_on_failure: flunk,
            warn_on_failure: warn,
        };
        assert_eq!(policy(true, false).contribution(), BuildResult::Failure);
        assert_eq!(policy(false, true).contribution(), BuildResult::Warnings);
        assert_eq!(policy(false, false).contribution(), BuildResult::Success);
    }
}
