//! A build's test results as every surface shows them (web page, API, `try --wait`, `watch`,
//! IRC): the counts, each failure classified (`classify`), and the one summary line. Front
//! ends render this; what it means is decided here once.

use std::collections::HashMap;

use super::classify::{self, Classification, HISTORY_WINDOW, ThisBuild};
use super::{TestCase, TestCounts, summary_line};
use crate::master::store::{Store, StoreError, TestOrder};

/// At most this many failures of one build are listed and classified.
pub const MAX_CLASSIFIED: i64 = 1000;

/// A build's tests, summed up.
#[derive(Debug, Clone, Default)]
pub struct TestReport {
    pub counts: TestCounts,
    /// The failures (failed and error; the first [`MAX_CLASSIFIED`]), worst first, each
    /// classified.
    pub failures: Vec<(TestCase, Classification)>,
}

impl TestReport {
    pub fn new_failures(&self) -> impl Iterator<Item = &TestCase> {
        self.failures
            .iter()
            .filter(|(_, class)| class.new)
            .map(|(case, _)| case)
    }

    /// How many failures are known, and since which build the oldest of them.
    pub fn known_since(&self) -> Option<(usize, i64)> {
        let known: Vec<i64> = self
            .failures
            .iter()
            .filter_map(|(_, class)| class.failing_since)
            .collect();
        known.iter().min().map(|since| (known.len(), *since))
    }

    pub fn flaky(&self) -> usize {
        self.failures
            .iter()
            .filter(|(_, class)| class.flaky)
            .count()
    }

    /// "412 passed · 3 failed (2 new, 1 known since #40) · 5 skipped"; with flaky failures
    /// they are named too.
    pub fn summary(&self) -> String {
        let line = summary_line(
            &self.counts,
            self.new_failures().count(),
            self.known_since(),
        );
        match self.flaky() {
            0 => line,
            flaky => format!("{line} · {flaky} flaky"),
        }
    }

    /// Whether the build had any test results at all.
    pub fn is_empty(&self) -> bool {
        self.counts.total() == 0
    }

    /// The classification of a failure by (suite, name); none for a test that did not fail.
    pub fn classification(&self) -> HashMap<(&str, &str), Classification> {
        self.failures
            .iter()
            .map(|(case, class)| ((case.suite.as_str(), case.name.as_str()), *class))
            .collect()
    }

    /// "2 new failures (test_a, test_b)", or None without new failures.
    pub fn new_failures_line(&self, max_names: usize) -> Option<String> {
        let names: Vec<&str> = self.new_failures().map(|case| case.name.as_str()).collect();
        if names.is_empty() {
            return None;
        }
        let plural = if names.len() == 1 { "" } else { "s" };
        let mut shown = names
            .iter()
            .take(max_names)
            .copied()
            .collect::<Vec<_>>()
            .join(", ");
        if names.len() > max_names {
            shown.push_str(&format!(", … {} more", names.len() - max_names));
        }
        Some(format!("{} new failure{plural} ({shown})", names.len()))
    }
}

/// The test report of build `build_id` (number `number` of its builder, built from `branch`
/// at `revision`).
pub async fn of_build(
    store: &dyn Store,
    build_id: i64,
    number: i64,
    branch: Option<&str>,
    revision: Option<&str>,
) -> Result<TestReport, StoreError> {
    let counts = store.test_counts(build_id).await?;
    if counts.failures() == 0 {
        return Ok(TestReport {
            counts,
            failures: Vec::new(),
        });
    }
    let failures = store
        .build_tests(build_id, TestOrder::WorstFirst, true, 0, MAX_CLASSIFIED)
        .await?;
    let history = store
        .failure_history(build_id, HISTORY_WINDOW as i64, MAX_CLASSIFIED)
        .await?;
    let this = ThisBuild {
        number,
        branch,
        revision,
    };
    let classes = classify::classify(
        &this,
        failures
            .iter()
            .map(|case| (case.suite.as_str(), case.name.as_str())),
        &history,
    );
    Ok(TestReport {
        counts,
        failures: failures.into_iter().zip(classes).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::store::TestOutcome;

    fn failure(name: &str, class: Classification) -> (TestCase, Classification) {
        let case = TestCase {
            suite: "s".into(),
            name: name.into(),
            result: TestOutcome::Failed,
            duration_ms: None,
            message: String::new(),
            step: 2,
        };
        (case, class)
    }

    #[test]
    fn new_failures_are_named_and_known_ones_dated() {
        let new = Classification {
            new: true,
            ..Classification::default()
        };
        let report = TestReport {
            counts: TestCounts {
                passed: 412,
                failed: 3,
                error: 0,
                skipped: 5,
            },
            failures: vec![
                failure("test_a", new),
                failure("test_b", new),
                failure(
                    "test_c",
                    Classification {
                        failing_since: Some(40),
                        ..Classification::default()
                    },
                ),
            ],
        };
        assert_eq!(
            report.summary(),
            "412 passed · 3 failed (2 new, 1 known since #40) · 5 skipped"
        );
        assert_eq!(
            report.new_failures_line(5).as_deref(),
            Some("2 new failures (test_a, test_b)")
        );
        assert_eq!(
            report.new_failures_line(1).as_deref(),
            Some("2 new failures (test_a, … 1 more)")
        );
        assert_eq!(TestReport::default().new_failures_line(5), None);
    }
}
