//! `[[scheduler]]`, `[[change_source]]` and `[changes]` in `master.toml`: what starts builds
//! besides a person. Raw serde structs with spans, checked into [`SchedulerConfig`],
//! [`ChangeSourceConfig`] and [`ChangesConfig`] with every problem reported on its line.

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::master::config::Checker;

/// How long changes must stop arriving before a branch scheduler builds (when not set).
const DEFAULT_TREE_STABLE_TIMER: Duration = Duration::from_secs(15);
/// How often a poller asks its repository (when not set).
const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    /// Unique; `try` and `force` schedulers may leave it out.
    pub name: String,
    pub builders: Vec<String>,
    pub kind: SchedulerKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SchedulerKind {
    /// Builders a try job may name.
    Try,
    /// Builders that may be forced (when no force scheduler exists, every builder may).
    Force,
    /// Builds changes on matching branches once they stop arriving for `tree_stable_timer`.
    Branch {
        branches: Vec<glob::Pattern>,
        tree_stable_timer: Duration,
        /// Changes touching none of these are skipped (empty: every change counts).
        files: Vec<glob::Pattern>,
    },
    /// Builds `branch` every `interval`.
    Periodic {
        interval: Duration,
        branch: Option<String>,
        only_if_changed: bool,
    },
    /// Builds `branch` at the times of a cron expression, in the master's local time.
    Nightly {
        cron: Box<croner::Cron>,
        branch: Option<String>,
        only_if_changed: bool,
    },
    /// Builds the same source after every builder of scheduler `upstream` succeeded on it.
    Dependent { upstream: String },
}

impl SchedulerKind {
    pub fn is_try(&self) -> bool {
        matches!(self, SchedulerKind::Try)
    }
}

/// `[[change_source]]`: a repository the master polls for new heads.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeSourceConfig {
    /// Any URL or path the `git` command understands.
    pub repo: String,
    pub branches: Vec<glob::Pattern>,
    pub interval: Duration,
}

/// `[changes]`: who may send changes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChangesConfig {
    /// Members of this unix group may send changes; without it, whoever may try may.
    pub group: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawScheduler {
    kind: Spanned<String>,
    #[serde(default)]
    name: Option<Spanned<String>>,
    builders: Vec<Spanned<String>>,
    #[serde(default)]
    branches: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    tree_stable_timer: Option<Spanned<String>>,
    #[serde(default)]
    files: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    interval: Option<Spanned<String>>,
    #[serde(default)]
    branch: Option<Spanned<String>>,
    #[serde(default)]
    only_if_changed: Option<Spanned<bool>>,
    #[serde(default)]
    cron: Option<Spanned<String>>,
    #[serde(default)]
    upstream: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawChangeSource {
    kind: Spanned<String>,
    repo: Spanned<String>,
    #[serde(default)]
    branches: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    interval: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawChanges {
    #[serde(default)]
    group: Option<Spanned<String>>,
}

impl Checker<'_> {
    pub(super) fn schedulers(
        &mut self,
        raw: &[RawScheduler],
        builder_names: &HashSet<&str>,
    ) -> Vec<SchedulerConfig> {
        let mut schedulers = Vec::new();
        let mut names = HashSet::new();
        for scheduler in raw {
            for builder in &scheduler.builders {
                if !builder_names.contains(builder.get_ref().as_str()) {
                    let message = format!(
                        "scheduler names builder \"{}\", which is not defined by any [[builder]]{}",
                        builder.get_ref(),
                        super::suggest::hint(builder.get_ref(), builder_names.iter().copied())
                    );
                    self.problem(builder, message);
                }
            }
            let Some(kind) = self.scheduler_kind(scheduler) else {
                continue;
            };
            let name = match &scheduler.name {
                Some(name) => {
                    if !names.insert(name.get_ref().clone()) {
                        let message = format!("a second scheduler named \"{}\"", name.get_ref());
                        self.problem(name, message);
                    }
                    name.get_ref().clone()
                }
                None if matches!(kind, SchedulerKind::Try | SchedulerKind::Force) => {
                    scheduler.kind.get_ref().clone()
                }
                None => {
                    let message = format!(
                        "a {} scheduler needs a name (name = \"...\")",
                        scheduler.kind.get_ref()
                    );
                    self.problem(&scheduler.kind, message);
                    continue;
                }
            };
            schedulers.push(SchedulerConfig {
                name,
                builders: scheduler
                    .builders
                    .iter()
                    .map(|b| b.get_ref().clone())
                    .collect(),
                kind,
            });
        }
        for (scheduler, raw) in raw.iter().filter_map(|raw| {
            let upstream = raw.upstream.as_ref()?;
            let name = raw.name.as_ref()?;
            Some((name.get_ref(), upstream))
        }) {
            let known = schedulers
                .iter()
                .any(|other| &other.name == raw.get_ref() && &other.name != scheduler);
            if !known {
                let message = format!(
                    "upstream = \"{}\" names no other [[scheduler]] of this master",
                    raw.get_ref()
                );
                self.problem(raw, message);
            }
        }
        schedulers
    }

    /// The kind with its settings; settings that belong to another kind are problems.
    fn scheduler_kind(&mut self, raw: &RawScheduler) -> Option<SchedulerKind> {
        let kind = raw.kind.get_ref().as_str();
        let allowed: &[&str] = match kind {
            "try" | "force" => &[],
            "branch" => &["branches", "tree_stable_timer", "files"],
            "periodic" => &["interval", "branch", "only_if_changed"],
            "nightly" => &["cron", "branch", "only_if_changed"],
            "dependent" => &["upstream"],
            _ => {
                let message = format!(
                    "unknown scheduler kind \"{kind}\" (kinds: try, force, branch, periodic, nightly, dependent){}",
                    super::suggest::hint(
                        kind,
                        ["try", "force", "branch", "periodic", "nightly", "dependent"]
                    )
                );
                self.problem(&raw.kind, message);
                return None;
            }
        };
        let present: [(&str, Option<std::ops::Range<usize>>); 9] = [
            ("branches", raw.branches.as_ref().map(Spanned::span)),
            (
                "tree_stable_timer",
                raw.tree_stable_timer.as_ref().map(Spanned::span),
            ),
            ("files", raw.files.as_ref().map(Spanned::span)),
            ("interval", raw.interval.as_ref().map(Spanned::span)),
            ("branch", raw.branch.as_ref().map(Spanned::span)),
            (
                "only_if_changed",
                raw.only_if_changed.as_ref().map(Spanned::span),
            ),
            ("cron", raw.cron.as_ref().map(Spanned::span)),
            ("upstream", raw.upstream.as_ref().map(Spanned::span)),
            ("", None),
        ];
        let mut fine = true;
        for (setting, span) in present {
            if let Some(span) = span
                && !allowed.contains(&setting)
            {
                self.problem_at(
                    span,
                    format!("`{setting}` is not a setting of a {kind} scheduler"),
                );
                fine = false;
            }
        }
        if !fine {
            return None;
        }
        let only_if_changed = raw.only_if_changed.as_ref().is_some_and(|v| *v.get_ref());
        let branch = raw.branch.as_ref().map(|branch| branch.get_ref().clone());
        Some(match kind {
            "try" => SchedulerKind::Try,
            "force" => SchedulerKind::Force,
            "branch" => SchedulerKind::Branch {
                branches: match &raw.branches {
                    Some(branches) => self.globs(branches),
                    None => {
                        self.problem(
                            &raw.kind,
                            "a branch scheduler needs branches = [...]".into(),
                        );
                        return None;
                    }
                },
                tree_stable_timer: self
                    .duration(raw.tree_stable_timer.as_ref(), DEFAULT_TREE_STABLE_TIMER),
                files: raw
                    .files
                    .as_ref()
                    .map(|files| self.globs(files))
                    .unwrap_or_default(),
            },
            "periodic" => {
                let Some(interval) = &raw.interval else {
                    self.problem(
                        &raw.kind,
                        "a periodic scheduler needs interval = \"...\"".into(),
                    );
                    return None;
                };
                let interval = self.duration(Some(interval), DEFAULT_POLL_INTERVAL);
                SchedulerKind::Periodic {
                    interval: interval.max(Duration::from_secs(1)),
                    branch,
                    only_if_changed,
                }
            }
            "nightly" => {
                let Some(cron) = &raw.cron else {
                    self.problem(
                        &raw.kind,
                        "a nightly scheduler needs cron = \"MIN HOUR DAY MONTH WEEKDAY\"".into(),
                    );
                    return None;
                };
                match croner::Cron::from_str(cron.get_ref()) {
                    Ok(parsed) => SchedulerKind::Nightly {
                        cron: Box::new(parsed),
                        branch,
                        only_if_changed,
                    },
                    Err(err) => {
                        let message = format!(
                            "cron = \"{}\" is not a cron expression: {err}",
                            cron.get_ref()
                        );
                        self.problem(cron, message);
                        return None;
                    }
                }
            }
            _ => match &raw.upstream {
                Some(upstream) => SchedulerKind::Dependent {
                    upstream: upstream.get_ref().clone(),
                },
                None => {
                    self.problem(
                        &raw.kind,
                        "a dependent scheduler needs upstream = \"SCHEDULER\"".into(),
                    );
                    return None;
                }
            },
        })
    }

    fn globs(&mut self, raw: &Spanned<Vec<String>>) -> Vec<glob::Pattern> {
        let mut patterns = Vec::new();
        for text in raw.get_ref() {
            match glob::Pattern::new(text) {
                Ok(pattern) => patterns.push(pattern),
                Err(err) => {
                    let message = format!("\"{text}\" is not a glob: {err}");
                    self.problem(raw, message);
                }
            }
        }
        patterns
    }

    pub(super) fn change_sources(&mut self, raw: &[RawChangeSource]) -> Vec<ChangeSourceConfig> {
        let mut sources = Vec::new();
        for source in raw {
            if source.kind.get_ref() != "git-poll" {
                let message = format!(
                    "unknown change source kind \"{}\" (kinds: git-poll){}",
                    source.kind.get_ref(),
                    super::suggest::hint(source.kind.get_ref(), ["git-poll"])
                );
                self.problem(&source.kind, message);
                continue;
            }
            if source.repo.get_ref().trim().is_empty() || source.repo.get_ref().starts_with('-') {
                self.problem(
                    &source.repo,
                    "repo must be a URL or path git understands".into(),
                );
                continue;
            }
            let branches = match &source.branches {
                Some(branches) => self.globs(branches),
                None => vec![glob::Pattern::new("*").expect("\"*\" is a valid glob")],
            };
            sources.push(ChangeSourceConfig {
                repo: source.repo.get_ref().clone(),
                branches,
                interval: self
                    .duration(source.interval.as_ref(), DEFAULT_POLL_INTERVAL)
                    .max(Duration::from_secs(1)),
            });
        }
        sources
    }

    pub(super) fn changes(&mut self, raw: Option<&RawChanges>) -> ChangesConfig {
        let group = raw.and_then(|raw| raw.group.as_ref());
        if let Some(group) = group
            && nix::unistd::Group::from_name(group.get_ref())
                .ok()
                .flatten()
                .is_none()
        {
            let message = format!(
                "[changes] group \"{}\" is not a unix group on this host",
                group.get_ref()
            );
            self.problem(group, message);
        }
        ChangesConfig {
            group: group.map(|group| group.get_ref().clone()),
        }
    }
}
