//! The decisions of the schedulers that start builds without a person, as plain state and
//! functions of (input, time): branch schedulers with their tree-stable timer and file globs,
//! periodic and nightly timers, dependent schedulers waiting for their upstream. No I/O; the
//! task in `schedulers` feeds it and performs what it decides.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use chrono::{DateTime, Local};

use crate::master::config::{SchedulerConfig, SchedulerKind};
use crate::master::store::StoredChange;
use crate::status::BuildResult;

/// What a build should build: a branch of the builders' repositories at a revision (none: the
/// head when the build starts), the changes it contains and their properties.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Source {
    pub branch: Option<String>,
    pub revision: Option<String>,
    pub change_ids: Vec<i64>,
    pub properties: BTreeMap<String, String>,
}

/// A scheduler decided to build `source` on `builders`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fire {
    pub scheduler: String,
    pub builders: Vec<String>,
    pub source: Source,
    /// Why, for people.
    pub reason: String,
}

/// A periodic or nightly scheduler whose time came: the task looks up the branch head, then
/// calls [`Engine::timed_fire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedDue {
    pub index: usize,
    pub branch: Option<String>,
    /// Its builders, whose repository has the branch.
    pub builders: Vec<String>,
}

enum Timing {
    Every(Duration),
    Cron(Box<croner::Cron>),
}

struct Pending {
    changes: Vec<StoredChange>,
    deadline: Instant,
}

struct BranchScheduler {
    name: String,
    builders: Vec<String>,
    branches: Vec<glob::Pattern>,
    files: Vec<glob::Pattern>,
    timer: Duration,
    pending: BTreeMap<String, Pending>,
}

struct TimedScheduler {
    name: String,
    builders: Vec<String>,
    branch: Option<String>,
    only_if_changed: bool,
    timing: Timing,
    next: Option<Instant>,
    last_revision: Option<String>,
}

struct DependentScheduler {
    name: String,
    builders: Vec<String>,
    upstream: String,
}

/// The property of a dependent scheduler's build that names the job of its upstream firing.
pub const UPSTREAM_JOB: &str = crate::change::UPSTREAM_JOB_PROPERTY;

/// A firing of an upstream scheduler that dependents wait on.
struct UpstreamRun {
    scheduler: String,
    source: Source,
    waiting: BTreeSet<String>,
    failed: bool,
}

#[derive(Default)]
pub struct Engine {
    branch: Vec<BranchScheduler>,
    timed: Vec<TimedScheduler>,
    dependent: Vec<DependentScheduler>,
    /// Job name → the upstream firing it is, while its builds run.
    upstream_runs: HashMap<String, UpstreamRun>,
}

impl Engine {
    pub fn new(schedulers: &[SchedulerConfig], now: Instant, local_now: DateTime<Local>) -> Engine {
        let mut engine = Engine::default();
        for scheduler in schedulers {
            let name = scheduler.name.clone();
            let builders = scheduler.builders.clone();
            match &scheduler.kind {
                SchedulerKind::Try | SchedulerKind::Force => {}
                SchedulerKind::Branch {
                    branches,
                    tree_stable_timer,
                    files,
                } => engine.branch.push(BranchScheduler {
                    name,
                    builders,
                    branches: branches.clone(),
                    files: files.clone(),
                    timer: *tree_stable_timer,
                    pending: BTreeMap::new(),
                }),
                SchedulerKind::Periodic {
                    interval,
                    branch,
                    only_if_changed,
                } => engine.timed.push(TimedScheduler {
                    name,
                    builders,
                    branch: branch.clone(),
                    only_if_changed: *only_if_changed,
                    timing: Timing::Every(*interval),
                    next: Some(now + *interval),
                    last_revision: None,
                }),
                SchedulerKind::Nightly {
                    cron,
                    branch,
                    only_if_changed,
                } => {
                    let timing = Timing::Cron(cron.clone());
                    let next = next_time(&timing, now, local_now);
                    engine.timed.push(TimedScheduler {
                        name,
                        builders,
                        branch: branch.clone(),
                        only_if_changed: *only_if_changed,
                        timing,
                        next,
                        last_revision: None,
                    });
                }
                SchedulerKind::Dependent { upstream } => {
                    engine.dependent.push(DependentScheduler {
                        name,
                        builders,
                        upstream: upstream.clone(),
                    })
                }
            }
        }
        engine
    }

    /// A change was recorded: every branch scheduler it matters to waits for the tree to be
    /// stable again.
    pub fn on_change(&mut self, change: &StoredChange, now: Instant) {
        for scheduler in &mut self.branch {
            let on_branch = scheduler
                .branches
                .iter()
                .any(|pattern| pattern.matches(&change.branch));
            // A change that does not say which files it touched may touch any.
            let important = scheduler.files.is_empty()
                || change.files.is_empty()
                || change
                    .files
                    .iter()
                    .any(|file| scheduler.files.iter().any(|pattern| pattern.matches(file)));
            if !on_branch || !important {
                continue;
            }
            let pending = scheduler
                .pending
                .entry(change.branch.clone())
                .or_insert_with(|| Pending {
                    changes: Vec::new(),
                    deadline: now,
                });
            pending.changes.push(change.clone());
            pending.deadline = now + scheduler.timer;
        }
    }

    /// When something is due next (none: nothing ever is until an input comes).
    pub fn next_deadline(&self) -> Option<Instant> {
        let branch = self
            .branch
            .iter()
            .flat_map(|scheduler| scheduler.pending.values().map(|pending| pending.deadline));
        let timed = self.timed.iter().filter_map(|scheduler| scheduler.next);
        branch.chain(timed).min()
    }

    /// Branch schedulers whose tree has been stable long enough fire: one build of the newest
    /// revision, with every change that arrived in the window.
    pub fn due_branches(&mut self, now: Instant) -> Vec<Fire> {
        let mut fires = Vec::new();
        for scheduler in &mut self.branch {
            let due: Vec<String> = scheduler
                .pending
                .iter()
                .filter(|(_, pending)| pending.deadline <= now)
                .map(|(branch, _)| branch.clone())
                .collect();
            for branch in due {
                let Some(pending) = scheduler.pending.remove(&branch) else {
                    continue;
                };
                let Some(newest) = pending.changes.last() else {
                    continue;
                };
                let mut properties = BTreeMap::new();
                for change in &pending.changes {
                    properties.extend(change.properties.clone());
                }
                let ids: Vec<i64> = pending.changes.iter().map(|change| change.id).collect();
                let listed: Vec<String> = ids.iter().map(ToString::to_string).collect();
                fires.push(Fire {
                    scheduler: scheduler.name.clone(),
                    builders: scheduler.builders.clone(),
                    reason: format!(
                        "{} {} on {branch} (scheduler {})",
                        if ids.len() == 1 { "change" } else { "changes" },
                        listed.join(", "),
                        scheduler.name
                    ),
                    source: Source {
                        branch: Some(branch.clone()),
                        revision: Some(newest.revision.clone()),
                        change_ids: ids,
                        properties,
                    },
                });
            }
        }
        fires
    }

    /// Periodic and nightly schedulers whose time came; each is set to its next time.
    pub fn due_timed(&mut self, now: Instant, local_now: DateTime<Local>) -> Vec<TimedDue> {
        let mut due = Vec::new();
        for (index, scheduler) in self.timed.iter_mut().enumerate() {
            if scheduler.next.is_some_and(|next| next <= now) {
                scheduler.next = next_time(&scheduler.timing, now, local_now);
                due.push(TimedDue {
                    index,
                    branch: scheduler.branch.clone(),
                    builders: scheduler.builders.clone(),
                });
            }
        }
        due
    }

    /// A due timed scheduler fires on `revision` (the branch head, when it could be found),
    /// unless it builds only changes and the head is the one it built last time.
    pub fn timed_fire(&mut self, due: &TimedDue, revision: Option<String>) -> Option<Fire> {
        let scheduler = self.timed.get_mut(due.index)?;
        if scheduler.only_if_changed && revision.is_some() && revision == scheduler.last_revision {
            return None;
        }
        if revision.is_some() {
            scheduler.last_revision = revision.clone();
        }
        let what = match scheduler.timing {
            Timing::Every(_) => "periodic",
            Timing::Cron(_) => "nightly",
        };
        Some(Fire {
            scheduler: scheduler.name.clone(),
            builders: scheduler.builders.clone(),
            reason: format!("{what} build (scheduler {})", scheduler.name),
            source: Source {
                branch: scheduler.branch.clone(),
                revision,
                ..Source::default()
            },
        })
    }

    /// A firing was queued as job `job_name`: dependents of its scheduler will wait for it.
    pub fn fired(&mut self, job_name: &str, fire: &Fire) {
        if !self
            .dependent
            .iter()
            .any(|dependent| dependent.upstream == fire.scheduler)
        {
            return;
        }
        self.upstream_runs.insert(
            job_name.to_string(),
            UpstreamRun {
                scheduler: fire.scheduler.clone(),
                source: fire.source.clone(),
                waiting: fire.builders.iter().cloned().collect(),
                failed: false,
            },
        );
    }

    /// A build of job `job_name` ended. When every builder of an upstream firing succeeded,
    /// its dependents fire on the same source; a failure (or a stop) ends the wait.
    pub fn on_build_finished(
        &mut self,
        job_name: &str,
        builder: &str,
        result: BuildResult,
        will_retry: bool,
    ) -> Vec<Fire> {
        if will_retry {
            return Vec::new();
        }
        let Some(run) = self.upstream_runs.get_mut(job_name) else {
            return Vec::new();
        };
        run.waiting.remove(builder);
        run.failed |= !result.is_good();
        if !run.waiting.is_empty() {
            return Vec::new();
        }
        let Some(run) = self.upstream_runs.remove(job_name) else {
            return Vec::new();
        };
        if run.failed {
            return Vec::new();
        }
        self.dependent
            .iter()
            .filter(|dependent| dependent.upstream == run.scheduler)
            .map(|dependent| Fire {
                scheduler: dependent.name.clone(),
                builders: dependent.builders.clone(),
                reason: format!(
                    "after {} succeeded{} (scheduler {})",
                    run.scheduler,
                    run.source
                        .revision
                        .as_deref()
                        .map(|revision| format!(" on {}", revision.get(..12).unwrap_or(revision)))
                        .unwrap_or_default(),
                    dependent.name
                ),
                // Names the upstream firing, so a step can fetch its artifacts
                // (`fetch_artifacts = [{ from = "upstream", … }]`).
                source: Source {
                    properties: {
                        let mut properties = run.source.properties.clone();
                        properties.insert(UPSTREAM_JOB.to_string(), job_name.to_string());
                        properties
                    },
                    ..run.source.clone()
                },
            })
            .collect()
    }
}

/// The next time a timed scheduler is due after `now`.
fn next_time(timing: &Timing, now: Instant, local_now: DateTime<Local>) -> Option<Instant> {
    match timing {
        Timing::Every(interval) => Some(now + *interval),
        Timing::Cron(cron) => {
            let next = cron.find_next_occurrence(&local_now, false).ok()?;
            let wait = (next - local_now).to_std().unwrap_or_default();
            Some(now + wait)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn change(id: i64, branch: &str, revision: &str, files: &[&str]) -> StoredChange {
        StoredChange {
            id,
            repository: "/r.git".into(),
            branch: branch.into(),
            revision: revision.into(),
            who: None,
            comments: None,
            files: files.iter().map(ToString::to_string).collect(),
            properties: BTreeMap::new(),
            received_at: 0.0,
            sent_by: "alice".into(),
        }
    }

    fn scheduler(name: &str, kind: SchedulerKind) -> SchedulerConfig {
        SchedulerConfig {
            name: name.into(),
            builders: vec!["linux".into()],
            kind,
        }
    }

    fn branch_scheduler(files: &[&str]) -> SchedulerConfig {
        scheduler(
            "main",
            SchedulerKind::Branch {
                branches: vec![glob::Pattern::new("main").expect("glob")],
                tree_stable_timer: Duration::from_secs(10),
                files: files
                    .iter()
                    .map(|f| glob::Pattern::new(f).expect("glob"))
                    .collect(),
            },
        )
    }

    #[test]
    fn changes_within_the_stable_timer_become_one_build_of_the_newest_revision() {
        let start = Instant::now();
        let mut engine = Engine::new(&[branch_scheduler(&[])], start, Local::now());
        assert_eq!(engine.next_deadline(), None, "idle: nothing to wake for");
        engine.on_change(&change(1, "main", "aaa", &[]), start);
        engine.on_change(
            &change(2, "main", "bbb", &[]),
            start + Duration::from_secs(5),
        );
        engine.on_change(
            &change(3, "feature", "ccc", &[]),
            start + Duration::from_secs(5),
        );
        assert!(
            engine
                .due_branches(start + Duration::from_secs(11))
                .is_empty(),
            "the timer restarted"
        );
        assert_eq!(
            engine.next_deadline(),
            Some(start + Duration::from_secs(15))
        );
        let fires = engine.due_branches(start + Duration::from_secs(15));
        assert_eq!(fires.len(), 1);
        assert_eq!(fires[0].source.revision.as_deref(), Some("bbb"));
        assert_eq!(fires[0].source.change_ids, vec![1, 2]);
        assert_eq!(fires[0].reason, "changes 1, 2 on main (scheduler main)");
        assert!(
            engine
                .due_branches(start + Duration::from_secs(60))
                .is_empty()
        );
    }

    #[test]
    fn changes_touching_no_important_file_are_skipped() {
        let start = Instant::now();
        let mut engine = Engine::new(&[branch_scheduler(&["src/**"])], start, Local::now());
        engine.on_change(&change(1, "main", "aaa", &["docs/readme.md"]), start);
        assert_eq!(engine.next_deadline(), None);
        engine.on_change(
            &change(2, "main", "bbb", &["docs/a.md", "src/x/y.rs"]),
            start,
        );
        let fires = engine.due_branches(start + Duration::from_secs(10));
        assert_eq!(fires[0].source.change_ids, vec![2]);
    }

    #[test]
    fn a_periodic_scheduler_builds_only_a_new_head_when_asked_to() {
        let start = Instant::now();
        let periodic = scheduler(
            "hourly",
            SchedulerKind::Periodic {
                interval: Duration::from_secs(3600),
                branch: Some("main".into()),
                only_if_changed: true,
            },
        );
        let mut engine = Engine::new(&[periodic], start, Local::now());
        assert!(engine.due_timed(start, Local::now()).is_empty());
        let due = engine.due_timed(start + Duration::from_secs(3600), Local::now());
        assert_eq!(due.len(), 1);
        assert_eq!(
            engine.next_deadline(),
            Some(start + Duration::from_secs(7200))
        );
        let fire = engine
            .timed_fire(&due[0], Some("aaa".into()))
            .expect("first build");
        assert_eq!(fire.source.branch.as_deref(), Some("main"));
        assert!(
            engine.timed_fire(&due[0], Some("aaa".into())).is_none(),
            "same head"
        );
        assert!(engine.timed_fire(&due[0], Some("bbb".into())).is_some());
    }

    #[test]
    fn a_nightly_scheduler_waits_for_its_cron_time() {
        let start = Instant::now();
        let local = Local::now();
        let nightly = scheduler(
            "night",
            SchedulerKind::Nightly {
                cron: Box::new(croner::Cron::from_str("0 3 * * *").expect("cron")),
                branch: None,
                only_if_changed: false,
            },
        );
        let engine = Engine::new(&[nightly], start, local);
        let next = engine.next_deadline().expect("a next time");
        let wait = next - start;
        assert!(wait <= Duration::from_secs(24 * 3600), "{wait:?}");
        assert!(wait > Duration::ZERO);
    }

    #[test]
    fn a_dependent_scheduler_fires_only_after_every_upstream_builder_succeeded() {
        let start = Instant::now();
        let mut upstream = branch_scheduler(&[]);
        upstream.builders = vec!["linux".into(), "mac".into()];
        let dependent = SchedulerConfig {
            name: "deploy".into(),
            builders: vec!["deploy".into()],
            kind: SchedulerKind::Dependent {
                upstream: "main".into(),
            },
        };
        let mut engine = Engine::new(&[upstream, dependent], start, Local::now());
        engine.on_change(&change(1, "main", "aaa", &[]), start);
        let fire = engine
            .due_branches(start + Duration::from_secs(10))
            .remove(0);
        engine.fired("job-1", &fire);
        assert!(
            engine
                .on_build_finished("job-1", "linux", BuildResult::Exception, true)
                .is_empty()
        );
        assert!(
            engine
                .on_build_finished("job-1", "linux", BuildResult::Success, false)
                .is_empty()
        );
        let fires = engine.on_build_finished("job-1", "mac", BuildResult::Warnings, false);
        assert_eq!(fires.len(), 1);
        assert_eq!(fires[0].builders, vec!["deploy".to_string()]);
        assert_eq!(fires[0].source.revision.as_deref(), Some("aaa"));
        assert_eq!(
            fires[0]
                .source
                .properties
                .get(UPSTREAM_JOB)
                .map(String::as_str),
            Some("job-1"),
            "the dependent build knows its upstream firing (to fetch its artifacts)"
        );

        engine.on_change(&change(2, "main", "bbb", &[]), start);
        let fire = engine
            .due_branches(start + Duration::from_secs(10))
            .remove(0);
        engine.fired("job-2", &fire);
        engine.on_build_finished("job-2", "linux", BuildResult::Failure, false);
        assert!(
            engine
                .on_build_finished("job-2", "mac", BuildResult::Success, false)
                .is_empty(),
            "a failed upstream does not trigger it"
        );
        assert!(
            engine
                .on_build_finished("other", "mac", BuildResult::Success, false)
                .is_empty()
        );
    }
}
