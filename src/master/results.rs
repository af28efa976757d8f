//! How step failures count towards a build's result, and the expected duration of the next
//! build. The results themselves are `status::BuildResult`.

use std::time::Duration;

use crate::status::BuildResult;

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
