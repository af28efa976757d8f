//! Whether a failure is new, known (failing since build #K), or flaky: a pure function of the
//! build and the results of the same tests in the builder's earlier builds, so the rules are
//! tested without a store.
//!
//! - **new**: the test did not fail in the last finished build of the same builder and branch
//!   (it passed, was skipped, or did not exist), or there is no such build.
//! - **known since #K**: it failed in every build of that branch from #K to the last one.
//! - **flaky**: it passed in another build of the same revision, or within the last
//!   [`FLAKY_WINDOW`] builds of the branch it failed and then passed again.
//!
//! Builds with a try patch are not what their branch is, and are never looked back at.

use std::collections::HashMap;

use crate::master::store::model_tests::{FailureHistory, TestOutcome};

/// How many earlier builds of the builder are looked at (the store's window).
pub const HISTORY_WINDOW: usize = 50;
/// Within how many builds of the branch a fail-then-pass makes a test flaky.
pub const FLAKY_WINDOW: usize = 10;

/// What a failure is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Classification {
    pub new: bool,
    pub failing_since: Option<i64>,
    pub flaky: bool,
}

/// The build whose failures are classified.
#[derive(Debug, Clone)]
pub struct ThisBuild<'a> {
    pub number: i64,
    pub branch: Option<&'a str>,
    pub revision: Option<&'a str>,
}

/// Classifies each failure `(suite, name)` of `build`; `history` is what
/// `Store::failure_history` answered for it.
pub fn classify<'k>(
    build: &ThisBuild<'_>,
    failures: impl IntoIterator<Item = (&'k str, &'k str)>,
    history: &FailureHistory,
) -> Vec<Classification> {
    let same_branch: Vec<&_> = history
        .builds
        .iter()
        .filter(|b| !b.patched && b.number < build.number && b.branch.as_deref() == build.branch)
        .collect();
    let same_revision: Vec<i64> = history
        .builds
        .iter()
        .filter(|b| {
            !b.patched && build.revision.is_some() && b.revision.as_deref() == build.revision
        })
        .map(|b| b.build_id)
        .collect();
    let mut results: HashMap<(&str, &str, i64), TestOutcome> = HashMap::new();
    for row in &history.results {
        results.insert((&row.suite, &row.name, row.build_id), row.result);
    }
    failures
        .into_iter()
        .map(|(suite, name)| {
            let result_in = |build_id: i64| results.get(&(suite, name, build_id)).copied();
            let failed_in =
                |build_id: i64| result_in(build_id).is_some_and(TestOutcome::is_failure);
            let new = same_branch
                .first()
                .is_none_or(|last| !failed_in(last.build_id));
            let failing_since = if new {
                None
            } else {
                same_branch
                    .iter()
                    .take_while(|b| failed_in(b.build_id))
                    .last()
                    .map(|b| b.number)
            };
            let passed_on_same_revision = same_revision
                .iter()
                .any(|id| result_in(*id) == Some(TestOutcome::Passed));
            // Oldest to newest: a failure with a pass after it.
            let mut failed_before = false;
            let mut flipped = false;
            for b in same_branch.iter().take(FLAKY_WINDOW).rev() {
                match result_in(b.build_id) {
                    Some(result) if result.is_failure() => failed_before = true,
                    Some(TestOutcome::Passed) if failed_before => flipped = true,
                    _ => {}
                }
            }
            Classification {
                new,
                failing_since,
                flaky: passed_on_same_revision || flipped,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::store::model_tests::{HistoryBuild, TestHistoryRow};

    /// Builds 1..=n of branch main at revision r<N>, with `results[i]` the test's result in
    /// build i+1 (None: absent).
    fn history(results: &[Option<TestOutcome>]) -> FailureHistory {
        let mut history = FailureHistory::default();
        for (i, result) in results.iter().enumerate().rev() {
            let number = i as i64 + 1;
            history.builds.push(HistoryBuild {
                build_id: number * 10,
                number,
                branch: Some("main".into()),
                revision: Some(format!("r{number}")),
                patched: false,
            });
            if let Some(result) = result {
                history.results.push(TestHistoryRow {
                    suite: "s".into(),
                    name: "t".into(),
                    build_id: number * 10,
                    number,
                    branch: Some("main".into()),
                    revision: Some(format!("r{number}")),
                    patched: false,
                    result: *result,
                    duration_ms: None,
                });
            }
        }
        history
    }

    fn one(number: i64, revision: &str, history: &FailureHistory) -> Classification {
        let build = ThisBuild {
            number,
            branch: Some("main"),
            revision: Some(revision),
        };
        classify(&build, [("s", "t")], history)[0]
    }

    use TestOutcome::{Error, Failed, Passed, Skipped};

    #[test]
    fn a_failure_after_a_pass_is_new() {
        let h = history(&[Some(Passed), Some(Passed)]);
        let c = one(3, "r3", &h);
        assert!(c.new && !c.flaky);
        assert_eq!(c.failing_since, None);
    }

    #[test]
    fn the_first_build_and_a_new_test_fail_as_new() {
        assert!(one(1, "r1", &history(&[])).new);
        assert!(one(3, "r3", &history(&[Some(Passed), None])).new);
        assert!(one(3, "r3", &history(&[Some(Passed), Some(Skipped)])).new);
    }

    #[test]
    fn a_failure_that_goes_on_is_known_since_its_first_build() {
        let h = history(&[Some(Passed), Some(Failed), Some(Error), Some(Failed)]);
        let c = one(5, "r5", &h);
        assert!(!c.new && !c.flaky);
        assert_eq!(c.failing_since, Some(2));
    }

    #[test]
    fn fail_then_pass_within_the_window_is_flaky() {
        let h = history(&[Some(Passed), Some(Failed), Some(Passed), Some(Passed)]);
        let c = one(5, "r5", &h);
        assert!(c.new && c.flaky);
        // Beyond the window it is just new.
        let mut long = vec![Some(Failed)];
        long.extend(std::iter::repeat_n(Some(Passed), FLAKY_WINDOW + 1));
        let h = history(&long);
        assert!(!one(long.len() as i64 + 1, "rx", &h).flaky);
    }

    #[test]
    fn a_pass_on_the_same_revision_is_flaky() {
        let h = history(&[Some(Passed), Some(Passed)]);
        let c = one(3, "r2", &h);
        assert!(c.new && c.flaky);
    }

    #[test]
    fn patched_and_other_branch_builds_are_not_looked_at() {
        let mut h = history(&[Some(Passed), Some(Failed)]);
        h.builds[0].patched = true;
        let c = one(3, "r3", &h);
        assert!(c.new, "the patched build #2 is skipped: #1 passed");
        let mut h = history(&[Some(Passed), Some(Failed)]);
        h.builds[0].branch = Some("other".into());
        assert!(one(3, "r3", &h).new);
    }
}
