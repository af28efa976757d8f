//! The search of one bisection, as `git bisect` does it, hardened against flaky builds.
//!
//! The commits are those after the good revision up to the bad one, oldest first (the bad one
//! last). Each build of one of them ends good, bad, or skipped (`exception`, or the builder's
//! skip exit code: the commit does not build the same way, as `git bisect skip`). A commit's
//! verdict is *good* when any of its builds was good (a failure that does not always happen is
//! taken for noise), *bad* when every build was bad, *skipped* when every build was skipped.
//! The first bad commit is the lowest bad one above the highest good one. Before it is named,
//! it is built until it has `1 + repeats` bad builds (the bad revision's own build counts); one
//! good build among them makes it good and the search goes on above it. Its parent is not built
//! again: a good verdict stands on one good build, so more builds of the parent could never
//! change what is named. Hence at most ⌈log2 N⌉ + `repeats` builds for N commits when nothing
//! flakes.

use std::collections::BTreeMap;

/// How one build of one commit ended, for the search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Outcome {
    Good,
    Bad,
    Skip,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Build this commit.
    Build(String),
    /// The first bad commit.
    Culprit(String),
    /// No single commit can be named, and why.
    Inconclusive(String),
}

/// One bisection's search state.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    good: String,
    /// After `good`, oldest first; the last is the bad revision.
    commits: Vec<String>,
    repeats: u32,
    max_builds: u32,
    /// Outcomes of the builds this bisection asked for, by commit (the good and bad
    /// revisions' original builds are not in here and not counted against `max_builds`).
    runs: BTreeMap<String, Vec<Outcome>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Unknown,
    Good,
    Bad,
    Skipped,
}

impl Plan {
    /// A search from `good` (built successfully) to the last of `commits` (built and failed).
    pub fn new(good: String, commits: Vec<String>, repeats: u32, max_builds: u32) -> Plan {
        // Kept with the plan: a bisection goes on with the settings it started with.
        Plan {
            good,
            commits,
            repeats,
            max_builds,
            runs: BTreeMap::new(),
        }
    }

    /// Records how a build of `commit` ended.
    pub fn record(&mut self, commit: &str, outcome: Outcome) {
        self.runs
            .entry(commit.to_string())
            .or_default()
            .push(outcome);
    }

    /// How many builds this bisection asked for so far.
    pub fn builds(&self) -> u32 {
        u32::try_from(self.runs.values().map(Vec::len).sum::<usize>()).unwrap_or(u32::MAX)
    }

    /// Runs of commit `index` (-1: the good revision), with the original builds counted.
    fn outcomes(&self, index: isize) -> Vec<Outcome> {
        let (commit, original) = if index < 0 {
            (&self.good, Some(Outcome::Good))
        } else {
            let i = index.unsigned_abs();
            (
                &self.commits[i],
                (i + 1 == self.commits.len()).then_some(Outcome::Bad),
            )
        };
        let mut all: Vec<Outcome> = original.into_iter().collect();
        all.extend(self.runs.get(commit).into_iter().flatten().copied());
        all
    }

    fn verdict(&self, index: isize) -> Verdict {
        let runs = self.outcomes(index);
        if runs.contains(&Outcome::Good) {
            Verdict::Good
        } else if runs.contains(&Outcome::Bad) {
            Verdict::Bad
        } else if runs.is_empty() {
            Verdict::Unknown
        } else {
            Verdict::Skipped
        }
    }

    fn name(&self, index: isize) -> String {
        if index < 0 {
            self.good.clone()
        } else {
            self.commits[index.unsigned_abs()].clone()
        }
    }

    /// What to build next, or the end of the search.
    pub fn next(&self) -> Next {
        let count = isize::try_from(self.commits.len()).unwrap_or(isize::MAX);
        if count == 0 {
            return Next::Inconclusive("no commits between the good and the bad revision".into());
        }
        // The highest good commit, then the lowest bad one above it.
        let low = (0..count)
            .rev()
            .find(|&i| self.verdict(i) == Verdict::Good)
            .unwrap_or(-1);
        let Some(high) = (low + 1..count).find(|&i| self.verdict(i) == Verdict::Bad) else {
            return Next::Inconclusive(format!(
                "the failure did not come back: {} built successfully",
                short(&self.name(count - 1))
            ));
        };
        let over_budget = self.builds() >= self.max_builds;
        let open: Vec<isize> = (low + 1..high)
            .filter(|&i| self.verdict(i) == Verdict::Unknown)
            .collect();
        if !open.is_empty() {
            if over_budget {
                return self.out_of_builds(low, high);
            }
            // The untested commit nearest the middle halves what is left, skips or not.
            let middle = low + (high - low) / 2;
            let pick = open
                .iter()
                .copied()
                .min_by_key(|&i| ((i - middle).abs(), i))
                .unwrap_or(middle);
            return Next::Build(self.name(pick));
        }
        if (low + 1..high).any(|i| self.verdict(i) == Verdict::Skipped) {
            return Next::Inconclusive(format!(
                "the first bad commit is one of {}..{}: the commits between could not be built",
                short(&self.name(low + 1)),
                short(&self.name(high))
            ));
        }
        // Confirm the suspect: 1 + repeats builds, all bad. Its parent is not built again: its
        // verdict is good from one good build, and more builds could never change that.
        if self.confirmations_wanted(high) > 0 {
            if over_budget {
                return self.out_of_builds(low, high);
            }
            return Next::Build(self.name(high));
        }
        Next::Culprit(self.name(high))
    }

    /// Builds the suspect `index` still needs before it is named.
    fn confirmations_wanted(&self, index: isize) -> u32 {
        let bad_runs = self
            .outcomes(index)
            .iter()
            .filter(|&&o| o == Outcome::Bad)
            .count();
        let bad_runs = u32::try_from(bad_runs).unwrap_or(u32::MAX);
        (1 + self.repeats).saturating_sub(bad_runs)
    }

    /// Where a running search stands: the builds so far, at most how many it takes in all
    /// (when no build flakes; never over `max_builds`), and how many commits may still be the
    /// first bad one.
    pub fn progress(&self) -> Progress {
        let builds = self.builds();
        let count = isize::try_from(self.commits.len()).unwrap_or(isize::MAX);
        let low = (0..count)
            .rev()
            .find(|&i| self.verdict(i) == Verdict::Good)
            .unwrap_or(-1);
        let high = (low + 1..count)
            .find(|&i| self.verdict(i) == Verdict::Bad)
            .unwrap_or(count - 1);
        let left = usize::try_from(high - low).unwrap_or(0);
        let searching = (low + 1..high).any(|i| self.verdict(i) == Verdict::Unknown);
        // Halving `left` candidates takes ⌈log2 left⌉ builds; the one found then has one bad
        // build and wants `repeats` more (unless it is the suspect already).
        let to_go = if searching {
            ceil_log2(left) + self.repeats
        } else {
            self.confirmations_wanted(high)
        };
        Progress {
            builds,
            at_most: (builds + to_go).min(self.max_builds.max(builds)),
            left,
        }
    }

    fn out_of_builds(&self, low: isize, high: isize) -> Next {
        Next::Inconclusive(format!(
            "max_builds ({}) reached; the first bad commit is one of {}..{}",
            self.max_builds,
            short(&self.name(low + 1)),
            short(&self.name(high))
        ))
    }
}

fn short(commit: &str) -> &str {
    commit.get(..10).unwrap_or(commit)
}

/// ⌈log2 n⌉: the builds that halve `n` candidates down to one.
fn ceil_log2(n: usize) -> u32 {
    if n <= 1 {
        0
    } else {
        usize::BITS - (n - 1).leading_zeros()
    }
}

/// [`Plan::progress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub builds: u32,
    pub at_most: u32,
    pub left: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commits(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("c{i:02}")).collect()
    }

    /// Runs the search against `build` (the outcome of building commit i, 1-based; a closure
    /// may keep state for flaky builds); returns the end and the builds it took.
    fn search(
        n: usize,
        repeats: u32,
        max_builds: u32,
        mut build: impl FnMut(usize) -> Outcome,
    ) -> (Next, u32) {
        let mut plan = Plan::new("c00".into(), commits(n), repeats, max_builds);
        for _ in 0..1000 {
            match plan.next() {
                Next::Build(commit) => {
                    let index: usize = commit[1..].parse().expect("index");
                    let outcome = if index == 0 {
                        Outcome::Good
                    } else {
                        build(index)
                    };
                    plan.record(&commit, outcome);
                }
                end => return (end, plan.builds()),
            }
        }
        panic!("the search did not end");
    }

    #[test]
    fn every_culprit_of_sixteen_is_found_in_log2_builds_plus_repeats() {
        for culprit in 1..=16 {
            for repeats in 0..=2 {
                let (end, builds) = search(16, repeats, 100, |i| {
                    if i >= culprit {
                        Outcome::Bad
                    } else {
                        Outcome::Good
                    }
                });
                assert_eq!(
                    end,
                    Next::Culprit(format!("c{culprit:02}")),
                    "culprit {culprit}"
                );
                assert!(
                    builds <= ceil_log2(16) + repeats,
                    "culprit {culprit}, repeats {repeats}: {builds} builds"
                );
            }
        }
    }

    #[test]
    fn the_progress_bound_holds_all_along_and_counts_down_the_candidates() {
        for culprit in 1..=16 {
            let mut plan = Plan::new("c00".into(), commits(16), 1, 100);
            let first = plan.progress();
            assert_eq!(
                first,
                Progress {
                    builds: 0,
                    at_most: 5,
                    left: 16
                }
            );
            let mut bounds = vec![first];
            while let Next::Build(commit) = plan.next() {
                let index: usize = commit[1..].parse().expect("index");
                let outcome = if index >= culprit {
                    Outcome::Bad
                } else {
                    Outcome::Good
                };
                plan.record(&commit, outcome);
                bounds.push(plan.progress());
            }
            assert_eq!(plan.next(), Next::Culprit(format!("c{culprit:02}")));
            let last = bounds.last().copied().expect("a progress");
            assert_eq!(last.left, 1, "culprit {culprit}");
            for progress in &bounds {
                assert!(
                    progress.at_most >= plan.builds(),
                    "culprit {culprit}: {progress:?} under {} builds",
                    plan.builds()
                );
            }
        }
    }

    #[test]
    fn a_commit_that_does_not_build_is_skipped_around() {
        // c07 does not build; the culprit is c09.
        let (end, _) = search(16, 1, 100, |i| match i {
            7 => Outcome::Skip,
            i if i >= 9 => Outcome::Bad,
            _ => Outcome::Good,
        });
        assert_eq!(end, Next::Culprit("c09".into()));
        // When the skipped one is next to the culprit, the search says so instead of guessing.
        let (end, _) = search(16, 1, 100, |i| match i {
            8 => Outcome::Skip,
            i if i >= 9 => Outcome::Bad,
            _ => Outcome::Good,
        });
        assert!(
            matches!(&end, Next::Inconclusive(why) if why.contains("c08..c09")),
            "{end:?}"
        );
    }

    #[test]
    fn a_flaky_failure_does_not_name_an_innocent_commit() {
        // The culprit is c12; every commit's first build before it fails one time in three
        // (here: c04 and c06 fail their first build, whatever is asked first).
        let mut seen: BTreeMap<usize, u32> = BTreeMap::new();
        let (end, _) = search(16, 2, 100, |i| {
            let n = seen.entry(i).or_default();
            *n += 1;
            let flaked = *n == 1 && [4, 6, 8].contains(&i);
            if i >= 12 || flaked {
                Outcome::Bad
            } else {
                Outcome::Good
            }
        });
        assert_eq!(end, Next::Culprit("c12".into()));
    }

    #[test]
    fn a_failure_that_does_not_come_back_names_nobody() {
        let (end, _) = search(4, 1, 100, |_| Outcome::Good);
        assert!(matches!(end, Next::Inconclusive(why) if why.contains("did not come back")));
    }

    #[test]
    fn the_build_budget_is_kept() {
        let (end, builds) = search(
            16,
            1,
            2,
            |i| {
                if i >= 5 { Outcome::Bad } else { Outcome::Good }
            },
        );
        assert!(matches!(end, Next::Inconclusive(why) if why.contains("max_builds (2)")));
        assert_eq!(builds, 2);
    }
}
