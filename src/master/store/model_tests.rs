//! The test results of builds as the store keeps them (issue 26): one row per test case.
//! Parsing reports into these lives in `master::test_results`; classifying failures (new,
//! known, flaky) too. The store only keeps and answers.

use std::fmt;

/// How one test case ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TestOutcome {
    /// Ordered so that the worst sorts first on a page of failures.
    Error,
    Failed,
    Skipped,
    Passed,
}

impl TestOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            TestOutcome::Passed => "passed",
            TestOutcome::Failed => "failed",
            TestOutcome::Error => "error",
            TestOutcome::Skipped => "skipped",
        }
    }

    pub fn parse(text: &str) -> Option<TestOutcome> {
        match text {
            "passed" => Some(TestOutcome::Passed),
            "failed" => Some(TestOutcome::Failed),
            "error" => Some(TestOutcome::Error),
            "skipped" => Some(TestOutcome::Skipped),
            _ => None,
        }
    }

    /// Failed or error: what a user has to look at.
    pub fn is_failure(self) -> bool {
        matches!(self, TestOutcome::Failed | TestOutcome::Error)
    }
}

impl fmt::Display for TestOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One test case of a build.
#[derive(Debug, Clone, PartialEq)]
pub struct TestCase {
    pub suite: String,
    pub name: String,
    pub result: TestOutcome,
    /// As the report says; `None` when it says nothing.
    pub duration_ms: Option<i64>,
    /// The first lines of the failure, error or skipped message; empty for a pass.
    pub message: String,
    /// The number of the build step whose reports held it (its log is the one to read); 0
    /// until the master knows (a parser does not).
    pub step: i64,
}

/// How many test cases of a build ended each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TestCounts {
    pub passed: i64,
    pub failed: i64,
    pub error: i64,
    pub skipped: i64,
}

impl TestCounts {
    pub fn total(&self) -> i64 {
        self.passed + self.failed + self.error + self.skipped
    }

    /// Failed and error together, as the summary line counts them.
    pub fn failures(&self) -> i64 {
        self.failed + self.error
    }

    pub fn add(&mut self, outcome: TestOutcome, count: i64) {
        match outcome {
            TestOutcome::Passed => self.passed += count,
            TestOutcome::Failed => self.failed += count,
            TestOutcome::Error => self.error += count,
            TestOutcome::Skipped => self.skipped += count,
        }
    }
}

/// Which test cases of a build a page lists, in which order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestOrder {
    /// Failures and errors first, then skipped, then passed; by suite and name within each.
    WorstFirst,
    /// The longest first.
    Slowest,
}

/// One result of a test in some build of its builder: a cell of its history strip, and what
/// classifying a failure looks back at.
#[derive(Debug, Clone, PartialEq)]
pub struct TestHistoryRow {
    pub suite: String,
    pub name: String,
    pub build_id: i64,
    pub number: i64,
    pub branch: Option<String>,
    pub revision: Option<String>,
    /// Built with a try patch: not what the branch is, so classification skips it.
    pub patched: bool,
    pub result: TestOutcome,
    pub duration_ms: Option<i64>,
}

/// A test of a builder that both failed and passed lately.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FlakyTest {
    pub suite: String,
    pub name: String,
    pub failed: i64,
    pub passed: i64,
}

/// A build that classifying a failure looks back at.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryBuild {
    pub build_id: i64,
    pub number: i64,
    pub branch: Option<String>,
    pub revision: Option<String>,
    /// Built with a try patch: not what the branch is, so classification skips it.
    pub patched: bool,
}

/// The finished builds of a builder before one build (newest first), and the results there of
/// the tests that build failed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FailureHistory {
    pub builds: Vec<HistoryBuild>,
    pub results: Vec<TestHistoryRow>,
}
