//! What the pages and the JSON API show, built from the history and the live state: plain
//! serialisable structs, so templates hold no logic beyond loops and ifs.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::durations::format_eta;
use crate::master::build::log_file_name;
use crate::master::control::Control;
use crate::master::history::changes::StoredChange;
use crate::master::history::{BuildDetail, BuildRow, StepRow};
use crate::proto::StreamKind;
use crate::status::{BuildResult, BuilderActivity, RunningBuild, text, unix_now};

#[derive(Debug, Clone, Serialize)]
pub struct SlaveView {
    pub name: String,
    pub connected: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct BuilderView {
    pub name: String,
    /// "idle", "building #3 (test), ETA 1m05s", "offline".
    pub state: String,
    pub state_class: String,
    /// The builds running now, typed: number, step, start, ETA, slave.
    pub running: Vec<RunningBuild>,
    pub queued: usize,
    pub last: String,
    pub last_css: String,
    pub slaves: Vec<SlaveView>,
    pub builds: Vec<BuildView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LogLink {
    pub name: String,
    pub url: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepView {
    pub number: i64,
    pub name: String,
    pub result: Option<BuildResult>,
    pub result_text: String,
    pub css: String,
    pub summary: String,
    pub started_at: f64,
    pub finished_at: Option<f64>,
    pub took: String,
    pub logs: Vec<LogLink>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BuildView {
    pub id: i64,
    pub builder: String,
    pub number: i64,
    pub slave: String,
    pub result: Option<BuildResult>,
    pub result_text: String,
    pub css: String,
    pub reason: Option<String>,
    pub running: bool,
    pub started_at: f64,
    pub finished_at: Option<f64>,
    pub started: String,
    pub took: String,
    pub url: String,
    pub steps: Vec<StepView>,
}

/// A build page's extra facts: what was built and for whom.
#[derive(Debug, Clone, Serialize)]
pub struct BuildPage {
    #[serde(flatten)]
    pub build: BuildView,
    pub repository: String,
    pub branch: String,
    pub baserev: String,
    pub jobid: String,
    pub who: Option<String>,
    pub comment: Option<String>,
    pub has_patch: bool,
    pub properties: std::collections::BTreeMap<String, String>,
    pub eta: Option<String>,
    /// Why the build's request exists.
    pub why: Option<String>,
    pub changes: Vec<ChangeView>,
}

/// A change, as the build page and /changes list it.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeView {
    pub id: i64,
    pub repository: String,
    pub branch: String,
    pub revision: String,
    pub short_revision: String,
    pub who: String,
    pub comments: String,
    pub files: Vec<String>,
    pub received: String,
    pub sent_by: String,
    /// The builds it went into.
    pub builds: Vec<BuildLink>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BuildLink {
    pub builder: String,
    pub number: i64,
    pub url: String,
}

pub fn change_view(change: &StoredChange, builds: &[(String, i64)]) -> ChangeView {
    ChangeView {
        id: change.id,
        repository: change.repository.clone(),
        branch: change.branch.clone(),
        revision: change.revision.clone(),
        short_revision: change.revision.chars().take(12).collect(),
        who: change.who.clone().unwrap_or_default(),
        comments: change.comments.clone().unwrap_or_default(),
        files: change.files.clone(),
        received: format_time(change.received_at),
        sent_by: change.sent_by.clone(),
        builds: builds
            .iter()
            .map(|(builder, number)| BuildLink {
                builder: builder.clone(),
                number: *number,
                url: format!("/builders/{builder}/builds/{number}"),
            })
            .collect(),
    }
}

pub fn format_time(seconds: f64) -> String {
    chrono::DateTime::from_timestamp(seconds as i64, 0)
        .map(|time| time.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

fn took(started: f64, finished: Option<f64>) -> String {
    let end = finished.unwrap_or_else(crate::master::history::now);
    format_eta(Duration::from_secs_f64((end - started).max(0.0)))
}

fn css(result: Option<BuildResult>) -> String {
    result.map_or("running", BuildResult::as_str).to_string()
}

fn result_text(result: Option<BuildResult>) -> String {
    css(result)
}

/// The log files a step has, in stream order.
fn step_logs(logs_dir: &Path, builder: &str, number: i64, step: &StepRow) -> Vec<LogLink> {
    let dir = logs_dir.join(builder).join(number.to_string());
    [StreamKind::Stdout, StreamKind::Stderr, StreamKind::Info]
        .into_iter()
        .filter(|stream| {
            dir.join(log_file_name(step.number, &step.name, *stream))
                .exists()
        })
        .map(|stream| LogLink {
            name: stream.file_extension().to_string(),
            url: format!(
                "/builders/{builder}/builds/{number}/steps/{}/logs/{}",
                step.number,
                stream.file_extension()
            ),
        })
        .collect()
}

pub fn step_view(logs_dir: &Path, builder: &str, number: i64, step: &StepRow) -> StepView {
    StepView {
        number: step.number,
        name: step.name.clone(),
        result: step.result,
        result_text: result_text(step.result),
        css: css(step.result),
        summary: step.summary.clone().unwrap_or_default(),
        started_at: step.started_at,
        finished_at: step.finished_at,
        took: took(step.started_at, step.finished_at),
        logs: step_logs(logs_dir, builder, number, step),
    }
}

pub fn build_view(logs_dir: &Path, build: &BuildRow, steps: &[StepRow]) -> BuildView {
    BuildView {
        id: build.id,
        builder: build.builder.clone(),
        number: build.number,
        slave: build.slave.clone(),
        result: build.result,
        result_text: result_text(build.result),
        css: css(build.result),
        reason: build.reason.clone(),
        running: build.finished_at.is_none(),
        started_at: build.started_at,
        finished_at: build.finished_at,
        started: format_time(build.started_at),
        took: took(build.started_at, build.finished_at),
        url: format!("/builders/{}/builds/{}", build.builder, build.number),
        steps: steps
            .iter()
            .map(|step| step_view(logs_dir, &build.builder, build.number, step))
            .collect(),
    }
}

pub fn build_page(logs_dir: &Path, detail: &BuildDetail, eta: Option<String>) -> BuildPage {
    BuildPage {
        build: build_view(logs_dir, &detail.build, &detail.steps),
        repository: detail.repository.clone(),
        branch: detail.branch.clone().unwrap_or_default(),
        baserev: detail.baserev.clone().unwrap_or_default(),
        jobid: detail.jobid.clone(),
        who: detail.who.clone(),
        comment: detail.comment.clone(),
        has_patch: detail.has_patch,
        properties: detail.properties.clone(),
        eta,
        why: detail.why.clone(),
        changes: detail
            .changes
            .iter()
            .map(|change| change_view(change, &[]))
            .collect(),
    }
}

/// The current state of every builder (live state only; builds are filled in by the caller).
pub fn builder_views(control: &Control) -> Vec<BuilderView> {
    let Ok(snapshot) = control.status(&[]) else {
        return Vec::new();
    };
    let now = unix_now();
    snapshot
        .builders
        .into_iter()
        .map(|builder| {
            let state_class = match builder.activity {
                BuilderActivity::Building => "running",
                BuilderActivity::Idle => "idle",
                BuilderActivity::Offline => "offline",
            };
            let (last, last_css) = match builder.last {
                Some(last) => (
                    format!("#{} {}", last.number, last.result),
                    last.result.to_string(),
                ),
                None => ("none yet".to_string(), "idle".to_string()),
            };
            BuilderView {
                state: text::describe_activity(&builder, now),
                state_class: state_class.to_string(),
                running: builder.running,
                queued: builder.queued,
                last,
                last_css,
                slaves: builder
                    .slaves
                    .into_iter()
                    .map(|slave| SlaveView {
                        name: slave.name,
                        connected: slave.connected,
                    })
                    .collect(),
                name: builder.name,
                builds: Vec::new(),
            }
        })
        .collect()
}

/// A lock a builder takes, as its page shows it ("held by deploy #12 (migrate) since 2m10s").
#[derive(Debug, Clone, Serialize)]
pub struct LockView {
    pub name: String,
    pub holders: Vec<LockHolderLine>,
    pub waiters: Vec<crate::master::control::LockWaiterView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LockHolderLine {
    pub builder: String,
    pub number: Option<i64>,
    pub step: Option<String>,
    /// How long it has been held, as `2m10s`.
    pub since: String,
}

/// The locks `builder` takes (at build or step level), with holders and waiters.
pub fn lock_views(control: &Control, builder: &str) -> Vec<LockView> {
    let Some(config) = control.config.builder(builder) else {
        return Vec::new();
    };
    let used: Vec<&str> = config
        .locks
        .iter()
        .chain(config.steps.iter().flat_map(|step| step.locks.iter()))
        .map(|lock_use| lock_use.lock.as_str())
        .collect();
    let now = unix_now();
    control
        .locks()
        .into_iter()
        .filter(|lock| used.contains(&lock.name.as_str()))
        .map(|lock| LockView {
            name: lock.name,
            holders: lock
                .holders
                .into_iter()
                .map(|holder| LockHolderLine {
                    builder: holder.builder,
                    number: holder.number,
                    step: holder.step,
                    since: format_eta(Duration::from_secs_f64((now - holder.since).max(0.0))),
                })
                .collect(),
            waiters: lock.waiters,
        })
        .collect()
}
