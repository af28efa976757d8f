//! Build and step results, how they combine, and the ETA format (`2m45s`).

use std::time::Duration;

/// The outcome of a step or a build, in increasing order of badness (a build's result is the
/// worst of its steps' contributions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BuildResult {
    Success,
    Warnings,
    Failure,
    /// Something other than the build's own commands went wrong (slave lost, checkout error).
    Exception,
    /// Stopped by a person; distinct from failure.
    Interrupted,
}

impl BuildResult {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildResult::Success => "success",
            BuildResult::Warnings => "warnings",
            BuildResult::Failure => "failure",
            BuildResult::Exception => "exception",
            BuildResult::Interrupted => "interrupted",
        }
    }

    pub fn is_good(self) -> bool {
        matches!(self, BuildResult::Success | BuildResult::Warnings)
    }
}

impl serde::Serialize for BuildResult {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl std::fmt::Display for BuildResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

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

/// `2m45s`, `1h02m`, `45s`.
pub fn format_eta(duration: Duration) -> String {
    let seconds = duration.as_secs();
    let (hours, minutes, seconds) = (seconds / 3600, (seconds / 60) % 60, seconds % 60);
    match (hours, minutes) {
        (0, 0) => format!("{seconds}s"),
        (0, _) => format!("{minutes}m{seconds:02}s"),
        _ => format!("{hours}h{minutes:02}m"),
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
    fn worse_results_sort_later() {
        assert!(BuildResult::Success < BuildResult::Warnings);
        assert!(BuildResult::Failure < BuildResult::Exception);
        assert_eq!(
            [
                BuildResult::Warnings,
                BuildResult::Failure,
                BuildResult::Success
            ]
            .into_iter()
            .max(),
            Some(BuildResult::Failure)
        );
    }

    #[test]
    fn eta_format() {
        assert_eq!(format_eta(Duration::from_secs(165)), "2m45s");
        assert_eq!(format_eta(Duration::from_secs(45)), "45s");
        assert_eq!(format_eta(Duration::from_secs(3720)), "1h02m");
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
