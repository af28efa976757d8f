//! What `try --wait`, `watch` and the IRC bot say of a finished build's tests (issue 26):
//! the summary line and the names of its new failures, from `master::test_results::report`.

use crate::master::control::{Control, ControlError};
use crate::master::store::BuildRef;
use crate::master::test_results::report::{self, TestReport};

/// How many new failures a line names before it says "… N more".
pub const NAMES_SHOWN: usize = 5;

impl Control {
    /// The test report of build `number` of `builder`; none when it has no test results.
    pub async fn test_report(
        &self,
        builder: &str,
        number: i64,
    ) -> Result<Option<TestReport>, ControlError> {
        let key = BuildRef::Number {
            builder: builder.to_string(),
            number,
        };
        let Some(detail) = self.store.build_detail(&key).await? else {
            return Ok(None);
        };
        let report = report::of_build(
            self.store.as_ref(),
            detail.build.id,
            number,
            detail.branch.as_deref(),
            detail.revision.as_deref(),
        )
        .await?;
        Ok((!report.is_empty()).then_some(report))
    }

    /// "linux #5 tests: 1 passed · 2 failed (1 new, 1 known since #2); new: beta", for the
    /// end of `try --wait` and `watch`; none without test results (or when they cannot be
    /// read: the caller's output goes on without them).
    pub async fn test_line(&self, builder: &str, number: i64) -> Option<String> {
        match self.test_report(builder, number).await {
            Ok(Some(report)) => {
                let mut line = format!("{builder} #{number} tests: {}", report.summary());
                if let Some(new) = report.new_failures_line(NAMES_SHOWN) {
                    line.push_str(&format!("; {new}"));
                }
                Some(line)
            }
            Ok(None) => None,
            Err(err) => {
                tracing::warn!("cannot read the test results of {builder} #{number}: {err}");
                None
            }
        }
    }

    /// "2 new failures (test_a, test_b)" for the IRC announcement; none without new failures.
    pub async fn new_failures_line(&self, builder: &str, number: i64) -> Option<String> {
        match self.test_report(builder, number).await {
            Ok(report) => report?.new_failures_line(NAMES_SHOWN),
            Err(err) => {
                tracing::warn!("cannot read the test results of {builder} #{number}: {err}");
                None
            }
        }
    }
}
