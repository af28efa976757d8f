//! What the pages and the JSON API show, built from the history and the live state: plain
//! serialisable structs, so templates hold no logic beyond loops and ifs.

use std::time::Duration;

use serde::Serialize;

use crate::durations::format_eta;
use crate::master::control::Control;
use crate::master::logs::LogIndex;
use crate::master::store::{BuildDetail, BuildRow, StepRow, StoredChange};
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
    /// "idle", "building #3 (test), ETA 1m05s", "waiting for lock db", "offline".
    pub state: String,
    pub state_class: String,
    /// The builds running now, typed: number, step, start, ETA, slave.
    pub running: Vec<RunningBuild>,
    /// One progress bar per running build, in the order of `running`.
    pub progress: Vec<ProgressView>,
    pub queued: usize,
    /// The lock that keeps the next queued request from starting, if one does.
    pub waiting_for_lock: Option<String>,
    pub last: String,
    pub last_css: String,
    /// The last finished build's result, for the tab title.
    pub last_result: Option<BuildResult>,
    /// The duration trend, once a build has finished.
    pub trend: Option<TrendView>,
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
    /// Set while the build runs and the board knows it (filled in by the page).
    pub progress: Option<ProgressView>,
}

/// How far along a running build is: a `<progress>` bar and the line beside it, from the
/// same estimate as the ETA (the median of recent successful builds).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProgressView {
    pub number: i64,
    /// False past the estimate or without one: the page shows an indeterminate bar, so a
    /// build still running never looks finished.
    pub determinate: bool,
    /// Elapsed seconds, below `max` whenever `determinate`.
    pub value: String,
    /// Expected seconds.
    pub max: String,
    /// "step 3/5 (test) · 1m10s of ~2m45s", or "… · overdue by 20s".
    pub text: String,
    pub overdue: bool,
}

/// The progress of `running` at `now`; `total_steps` counts the checkout step.
pub fn progress_view(running: &RunningBuild, total_steps: Option<usize>, now: f64) -> ProgressView {
    let step = match (&running.step, running.step_number, total_steps) {
        (Some(name), Some(number), Some(total)) => format!("step {number}/{total} ({name})"),
        (Some(name), _, _) => format!("step {name}"),
        (None, _, _) => "starting".to_string(),
    };
    let elapsed = running.elapsed_at(now);
    let elapsed_secs = elapsed.as_secs_f64();
    let expected = running.expected_secs.filter(|secs| *secs > 0.0);
    match expected {
        Some(expected) if elapsed_secs < expected => ProgressView {
            number: running.number,
            determinate: true,
            // Whole seconds, so the bar and the text agree; floor keeps it below max.
            value: format!("{}", elapsed_secs.floor()),
            max: format!("{}", expected.ceil()),
            text: format!(
                "{step} · {} of ~{}",
                format_eta(elapsed),
                format_eta(Duration::from_secs_f64(expected))
            ),
            overdue: false,
        },
        Some(expected) => ProgressView {
            number: running.number,
            determinate: false,
            value: String::new(),
            max: format!("{}", expected.ceil()),
            text: format!(
                "{step} · overdue by {}",
                format_eta(Duration::from_secs_f64(elapsed_secs - expected))
            ),
            overdue: true,
        },
        None => ProgressView {
            number: running.number,
            determinate: false,
            value: String::new(),
            max: String::new(),
            text: format!("{step} · {} (no estimate yet)", format_eta(elapsed)),
            overdue: false,
        },
    }
}

/// A build page's extra facts: what was built and for whom.
#[derive(Debug, Clone, Serialize)]
pub struct BuildPage {
    #[serde(flatten)]
    pub build: BuildView,
    pub repository: String,
    pub branch: String,
    pub baserev: String,
    /// The commit the build checked out (empty until its checkout succeeded).
    pub revision: String,
    pub jobid: String,
    pub who: Option<String>,
    pub comment: Option<String>,
    pub has_patch: bool,
    pub properties: std::collections::BTreeMap<String, String>,
    pub eta: Option<String>,
    /// Why the build's request exists.
    pub why: Option<String>,
    pub changes: Vec<ChangeView>,
    /// The build's hold for a shell, when it was held (issue 25).
    pub shell: Option<ShellView>,
}

/// A held build as pages and the API show it: until when, and the shells opened into it.
#[derive(Debug, Clone, Serialize)]
pub struct ShellView {
    /// Seconds since the unix epoch.
    pub held_until: f64,
    /// `HH:MM UTC`.
    pub held_until_text: String,
    /// Still held now.
    pub held: bool,
    /// The command that opens a shell, shown only to those who may (empty otherwise).
    pub command: String,
    pub sessions: Vec<ShellSessionView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShellSessionView {
    pub who: String,
    /// Where the user connected from: shown only to signed-in visitors (empty otherwise).
    pub from: String,
    pub started_at: f64,
    pub ended_at: Option<f64>,
    pub started: String,
    pub ended: String,
}

/// `hold` and its sessions as shown; `command` and addresses only when given.
pub fn shell_view(
    hold: &crate::master::store::ShellHold,
    sessions: &[crate::master::store::ShellSession],
    command: Option<String>,
    show_addresses: bool,
) -> ShellView {
    let clock = crate::master::control::shell::clock;
    ShellView {
        held_until: hold.held_until,
        held_until_text: clock(hold.held_until),
        held: hold.held_until > crate::status::unix_now(),
        command: command.unwrap_or_default(),
        sessions: sessions
            .iter()
            .map(|session| ShellSessionView {
                who: session.who.clone(),
                from: if show_addresses {
                    session.from_addr.clone()
                } else {
                    String::new()
                },
                started_at: session.started_at,
                ended_at: session.ended_at,
                started: clock(session.started_at),
                ended: session.ended_at.map(clock).unwrap_or_else(|| "open".into()),
            })
            .collect(),
    }
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

/// A bisection as the builder page shows it (issue 28).
#[derive(Debug, Clone, Serialize)]
pub struct BuilderBisectView {
    pub id: i64,
    pub branch: String,
    /// `running`, `found`, `inconclusive` or `stopped`.
    pub state: String,
    /// Progress or result in a line ("bisecting abc1234..def5678: 3 of ≤6 builds, 5 commits
    /// left", "first bad: abc1234 by alice 'Refactor parser' — 4 builds").
    pub summary: String,
    pub started: String,
}

/// What a builder's page says about its bisections: every running one and the newest one
/// that ended (older results are in `/api/bisects`). `rows` newest first.
pub fn builder_bisect_views(
    rows: &[crate::master::store::BisectRow],
    builder: &str,
) -> Vec<BuilderBisectView> {
    let mut ended = false;
    rows.iter()
        .filter(|row| row.builder == builder)
        .filter(|row| row.state == "running" || !std::mem::replace(&mut ended, true))
        .map(|row| BuilderBisectView {
            id: row.id,
            branch: row.branch.clone(),
            state: row.state.clone(),
            summary: row.summary.clone(),
            started: format_time(row.started_at),
        })
        .collect()
}

pub fn format_time(seconds: f64) -> String {
    chrono::DateTime::from_timestamp(seconds as i64, 0)
        .map(|time| time.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

/// Bytes for a person: `512 B`, `3.4 MB`, `1.2 GB` (decimal units, as `df -H` and disk
/// vendors count).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1000.0;
    let mut unit = 0;
    while value >= 999.95 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

fn took(started: f64, finished: Option<f64>) -> String {
    let end = finished.unwrap_or_else(crate::master::store::now);
    format_eta(Duration::from_secs_f64((end - started).max(0.0)))
}

fn css(result: Option<BuildResult>) -> String {
    result.map_or("running", BuildResult::as_str).to_string()
}

fn result_text(result: Option<BuildResult>) -> String {
    css(result)
}

/// The logs a step has, in stream order.
fn step_logs(
    logs: &LogIndex,
    builder: &str,
    number: i64,
    build_id: i64,
    step: &StepRow,
) -> Vec<LogLink> {
    [StreamKind::Stdout, StreamKind::Stderr, StreamKind::Info]
        .into_iter()
        .filter(|stream| logs.has(builder, number, build_id, step, *stream))
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

pub fn step_view(
    logs: &LogIndex,
    builder: &str,
    number: i64,
    build_id: i64,
    step: &StepRow,
) -> StepView {
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
        logs: step_logs(logs, builder, number, build_id, step),
    }
}

pub fn build_view(logs: &LogIndex, build: &BuildRow, steps: &[StepRow]) -> BuildView {
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
            .map(|step| step_view(logs, &build.builder, build.number, build.id, step))
            .collect(),
        progress: None,
    }
}

pub fn build_page(
    logs: &LogIndex,
    detail: &BuildDetail,
    eta: Option<String>,
    progress: Option<ProgressView>,
) -> BuildPage {
    let mut build = build_view(logs, &detail.build, &detail.steps);
    build.progress = progress;
    BuildPage {
        build,
        repository: detail.repository.clone(),
        branch: detail.branch.clone().unwrap_or_default(),
        baserev: detail.baserev.clone().unwrap_or_default(),
        revision: detail.revision.clone().unwrap_or_default(),
        jobid: detail.jobid.clone(),
        who: detail.who.clone(),
        comment: detail.comment.clone(),
        has_patch: detail.has_patch,
        properties: detail.properties.clone(),
        eta,
        shell: None,
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
                BuilderActivity::WaitingForLock => "queued",
                BuilderActivity::Offline => "offline",
            };
            let last_result = builder.last.map(|last| last.result);
            let (last, last_css) = match builder.last {
                Some(last) => (
                    format!("#{} {}", last.number, last.result),
                    last.result.to_string(),
                ),
                None => ("none yet".to_string(), "idle".to_string()),
            };
            let total_steps = control
                .config()
                .builder(&builder.name)
                .map(|config| config.steps.len() + 1);
            BuilderView {
                state: text::describe_activity(&builder, now),
                progress: builder
                    .running
                    .iter()
                    .map(|running| progress_view(running, total_steps, now))
                    .collect(),
                state_class: state_class.to_string(),
                running: builder.running,
                queued: builder.queued,
                waiting_for_lock: builder.waiting_for_lock,
                last,
                last_css,
                last_result,
                trend: None,
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
    let current = control.config();
    let Some(config) = current.builder(builder) else {
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

/// How many finished builds a duration trend plots.
pub const TREND_BUILDS: usize = 50;
const TREND_WIDTH: f64 = 300.0;
const TREND_HEIGHT: f64 = 80.0;
const TREND_PAD: f64 = 6.0;

/// A builder's duration trend: build time against build number, as an inline SVG.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrendView {
    pub width: String,
    pub height: String,
    /// The line through the points, oldest first (an SVG `points` list).
    pub line: String,
    pub points: Vec<TrendPoint>,
    /// The longest duration plotted, as the axis label ("max 2m45s").
    pub max_label: String,
    pub first_number: i64,
    pub last_number: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrendPoint {
    pub x: String,
    pub y: String,
    /// The result class ("success", "failure", ...) that colours the point.
    pub css: String,
    /// "#12 failure 1m10s", the point's `<title>`.
    pub title: String,
}

/// The trend of the newest [`TREND_BUILDS`] finished builds in `builds` (any order); none
/// when nothing has finished yet.
pub fn trend_view(builds: &[BuildRow]) -> Option<TrendView> {
    let mut finished: Vec<(i64, String, f64)> = builds
        .iter()
        .filter_map(|build| {
            let finished_at = build.finished_at?;
            Some((
                build.number,
                css(build.result),
                (finished_at - build.started_at).max(0.0),
            ))
        })
        .collect();
    finished.sort_by_key(|(number, _, _)| std::cmp::Reverse(*number));
    finished.truncate(TREND_BUILDS);
    finished.reverse();
    let (first, last) = (finished.first()?.0, finished.last()?.0);
    let longest = finished
        .iter()
        .map(|(_, _, secs)| *secs)
        .fold(0.0_f64, f64::max)
        // A floor of one second keeps all-instant builds from dividing by zero.
        .max(1.0);
    let span = (last - first).max(1) as f64;
    let points: Vec<TrendPoint> = finished
        .iter()
        .map(|(number, class, secs)| {
            let x = if first == last {
                TREND_WIDTH / 2.0
            } else {
                TREND_PAD + (number - first) as f64 / span * (TREND_WIDTH - 2.0 * TREND_PAD)
            };
            let y = TREND_HEIGHT - TREND_PAD - secs / longest * (TREND_HEIGHT - 2.0 * TREND_PAD);
            TrendPoint {
                x: format!("{x:.1}"),
                y: format!("{y:.1}"),
                css: class.clone(),
                title: format!(
                    "#{number} {class} {}",
                    format_eta(Duration::from_secs_f64(*secs))
                ),
            }
        })
        .collect();
    Some(TrendView {
        width: format!("{TREND_WIDTH}"),
        height: format!("{TREND_HEIGHT}"),
        line: points
            .iter()
            .map(|point| format!("{},{}", point.x, point.y))
            .collect::<Vec<_>>()
            .join(" "),
        points,
        max_label: format!("max {}", format_eta(Duration::from_secs_f64(longest))),
        first_number: first,
        last_number: last,
    })
}

/// The tab title and favicon: a status light from each builder's last result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusLight {
    /// "✔ example" or "✘ 2 failing · example".
    pub title: String,
    /// A `data:` URL of a round SVG icon in the state's colour.
    pub favicon: String,
}

/// The light for `master` from each builder's last finished result (none: never built,
/// which is not failing).
pub fn status_light(master: &str, last_results: &[Option<BuildResult>]) -> StatusLight {
    let failing = last_results
        .iter()
        .flatten()
        .filter(|result| !result.is_good())
        .count();
    let (title, colour) = match failing {
        0 => (format!("✔ {master}"), "%2388dd44"),
        _ => (format!("✘ {failing} failing · {master}"), "%23dd4444"),
    };
    StatusLight {
        title,
        // `#` is a fragment marker in a URL, hence `%23`; the rest needs no encoding.
        favicon: format!(
            "data:image/svg+xml,<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'><circle cx='8' cy='8' r='7' fill='{colour}'/></svg>"
        ),
    }
}

/// Pixels per second of a busy stretch of the waterfall's time axis.
const WATERFALL_PX_PER_SEC: f64 = 0.5;
/// A busy stretch is never shorter than one line of text, nor taller than this.
const WATERFALL_MIN_PX: f64 = 40.0;
const WATERFALL_MAX_PX: f64 = 240.0;
/// Idle time between builds is squeezed to this, whatever its length.
const WATERFALL_IDLE_PX: f64 = 14.0;

/// The waterfall: builders as columns on one time axis, newest at the top.
#[derive(Debug, Clone, Serialize)]
pub struct WaterfallView {
    /// The height of every column, in pixels.
    pub height: String,
    pub columns: Vec<WaterfallColumn>,
    /// Time labels down the left, at each build's start.
    pub ticks: Vec<WaterfallTick>,
    pub hours: u32,
    /// The page before this window (older builds).
    pub older_url: String,
    /// The page after it, unless this is the newest.
    pub newer_url: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WaterfallColumn {
    pub name: String,
    pub state: String,
    pub state_class: String,
    /// Newest first, so their `top` grows down the column.
    pub boxes: Vec<WaterfallBox>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WaterfallBox {
    pub number: i64,
    pub url: String,
    pub css: String,
    pub result_text: String,
    pub took: String,
    pub title: String,
    pub top: String,
    pub height: String,
    pub steps: Vec<WaterfallStep>,
    pub progress: Option<ProgressView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WaterfallStep {
    pub name: String,
    pub css: String,
    pub title: String,
    /// Relative to the build's box.
    pub top: String,
    pub height: String,
    pub logs: Vec<LogLink>,
    /// Whether the step is tall enough for its name and links (else they would overprint
    /// the next step's; the title still names it).
    pub labelled: bool,
}

/// A line of a step's label, in pixels.
const WATERFALL_STEP_LINE_PX: f64 = 13.0;

#[derive(Debug, Clone, Serialize)]
pub struct WaterfallTick {
    pub top: String,
    pub label: String,
}

/// Maps times to pixels down the page: busy stretches keep their proportions, idle ones
/// shrink to a sliver, so short builds stay readable beside long quiet nights.
struct TimeAxis {
    /// Distinct moments where a build starts or ends, newest first.
    moments: Vec<f64>,
    /// The pixel offset of each moment.
    offsets: Vec<f64>,
}

impl TimeAxis {
    /// `spans`: (start, end, the least height in pixels the span needs, e.g. a line per step).
    fn new(spans: &[(f64, f64, f64)], upper: f64) -> TimeAxis {
        let mut moments: Vec<f64> = spans
            .iter()
            .flat_map(|(start, end, _)| [*start, *end])
            .chain([upper])
            .collect();
        moments.sort_by(|a, b| b.total_cmp(a));
        moments.dedup();
        let mut offsets = vec![0.0];
        for pair in moments.windows(2) {
            let (newer, older) = (pair[0], pair[1]);
            let covering = spans
                .iter()
                .filter(|(start, end, _)| *start <= older && *end >= newer);
            // A span crossing several gaps shares its least height among them.
            let least = covering
                .clone()
                .map(|(start, end, least)| {
                    let gaps = moments
                        .iter()
                        .filter(|moment| *moment > start && *moment < end)
                        .count()
                        + 1;
                    least / gaps as f64
                })
                .fold(WATERFALL_MIN_PX, f64::max);
            let gap = if covering.count() > 0 {
                ((newer - older) * WATERFALL_PX_PER_SEC).clamp(least, WATERFALL_MAX_PX.max(least))
            } else {
                WATERFALL_IDLE_PX
            };
            offsets.push(offsets.last().copied().unwrap_or(0.0) + gap);
        }
        TimeAxis { moments, offsets }
    }

    fn y(&self, time: f64) -> f64 {
        for (index, pair) in self.moments.windows(2).enumerate() {
            if time >= pair[1] {
                let fraction = ((pair[0] - time) / (pair[0] - pair[1])).clamp(0.0, 1.0);
                return self.offsets[index]
                    + fraction * (self.offsets[index + 1] - self.offsets[index]);
            }
        }
        self.offsets.last().copied().unwrap_or(0.0)
    }

    fn height(&self) -> f64 {
        self.offsets.last().copied().unwrap_or(0.0)
    }
}

/// The steps of one build's box (`top`, `box_height` in pixels): on the time axis, unless a
/// step would be too thin for its label while the box has a line for every step; then (a
/// short build) the steps share the box evenly, oldest at the bottom, so no label overprints
/// another. In a box too small even for that, thin steps go without a label.
fn waterfall_steps(
    build: &BuildView,
    axis: &TimeAxis,
    top: f64,
    box_height: f64,
    clamp: &impl Fn(f64) -> f64,
    now: f64,
) -> Vec<WaterfallStep> {
    let px = |value: f64| format!("{value:.0}");
    let placed: Vec<(f64, f64)> = build
        .steps
        .iter()
        .map(|step| {
            let step_top = axis.y(clamp(step.finished_at.unwrap_or(now)));
            let step_bottom = axis.y(clamp(step.started_at));
            (step_top - top, (step_bottom - step_top).max(1.0))
        })
        .collect();
    let count = build.steps.len() as f64;
    let too_thin = placed
        .iter()
        .any(|(_, height)| *height < WATERFALL_STEP_LINE_PX);
    let even = too_thin && count > 0.0 && box_height / count >= WATERFALL_STEP_LINE_PX;
    build
        .steps
        .iter()
        .zip(placed)
        .enumerate()
        .map(|(index, (step, (step_top, height)))| {
            let (step_top, height) = if even {
                let share = box_height / count;
                (box_height - share * (index as f64 + 1.0), share)
            } else {
                (step_top, height)
            };
            WaterfallStep {
                name: step.name.clone(),
                css: step.css.clone(),
                title: format!("{} {} {}", step.name, step.result_text, step.took),
                top: px(step_top),
                height: px(height),
                logs: step.logs.clone(),
                labelled: height >= WATERFALL_STEP_LINE_PX,
            }
        })
        .collect()
}

/// Lays out `builders` (with the builds of the window in `builds`) between `lower` and
/// `upper`; running builds end at `now`. `newest` says whether `upper` is now (no newer page).
pub fn waterfall_view(
    builders: &[BuilderView],
    window: (f64, f64),
    now: f64,
    hours: u32,
    newest: bool,
) -> WaterfallView {
    let (lower, upper) = window;
    let clamp = |time: f64| time.clamp(lower, upper);
    let span_of = |build: &BuildView| {
        (
            clamp(build.started_at),
            clamp(build.finished_at.unwrap_or(now)),
        )
    };
    let spans: Vec<(f64, f64, f64)> = builders
        .iter()
        .flat_map(|builder| builder.builds.iter())
        .map(|build| {
            let (start, end) = span_of(build);
            (
                start,
                end,
                build.steps.len() as f64 * WATERFALL_STEP_LINE_PX,
            )
        })
        .collect();
    let axis = TimeAxis::new(&spans, upper);
    let px = |value: f64| format!("{value:.0}");
    let columns = builders
        .iter()
        .map(|builder| {
            let mut builds: Vec<&BuildView> = builder.builds.iter().collect();
            builds.sort_by(|a, b| b.started_at.total_cmp(&a.started_at));
            WaterfallColumn {
                name: builder.name.clone(),
                state: builder.state.clone(),
                state_class: builder.state_class.clone(),
                boxes: builds
                    .into_iter()
                    .map(|build| {
                        let (start, end) = span_of(build);
                        let top = axis.y(end);
                        let bottom = axis.y(start);
                        WaterfallBox {
                            number: build.number,
                            url: build.url.clone(),
                            css: build.css.clone(),
                            result_text: build.result_text.clone(),
                            took: build.took.clone(),
                            title: format!(
                                "#{} {} · {} · took {}",
                                build.number, build.result_text, build.started, build.took
                            ),
                            top: px(top),
                            height: px(bottom - top),
                            steps: waterfall_steps(build, &axis, top, bottom - top, &clamp, now),
                            progress: build.progress.clone(),
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    let mut ticks: Vec<WaterfallTick> = Vec::new();
    let mut starts: Vec<f64> = spans.iter().map(|(start, _, _)| *start).collect();
    starts.sort_by(|a, b| b.total_cmp(a));
    let mut last_top: Option<f64> = None;
    for start in starts {
        let top = axis.y(start);
        // Labels closer than a line apart would overprint each other.
        if last_top.is_some_and(|last| top - last < 16.0) {
            continue;
        }
        last_top = Some(top);
        ticks.push(WaterfallTick {
            top: px(top),
            label: chrono::DateTime::from_timestamp(start as i64, 0)
                .map(|time| time.format("%m-%d %H:%M").to_string())
                .unwrap_or_default(),
        });
    }
    let window_secs = f64::from(hours) * 3600.0;
    WaterfallView {
        height: px(axis.height().max(WATERFALL_MIN_PX)),
        columns,
        ticks,
        hours,
        older_url: format!("/?hours={hours}&before={}", lower.floor()),
        newer_url: (!newest)
            .then(|| format!("/?hours={hours}&before={}", (upper + window_secs).floor())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::store::BisectRow;

    fn row(id: i64, builder: &str, state: &str) -> BisectRow {
        BisectRow {
            id,
            builder: builder.into(),
            branch: "main".into(),
            good: "a".into(),
            bad: "b".into(),
            state: state.into(),
            culprit: None,
            builds: 0,
            summary: format!("summary {id}"),
            plan: String::new(),
            started_at: 0.0,
        }
    }

    #[test]
    fn sizes_read_as_a_person_would_say_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1000), "1.0 kB");
        assert_eq!(human_bytes(3_450_000), "3.5 MB");
        assert_eq!(human_bytes(999_990_000), "1.0 GB");
        assert_eq!(human_bytes(1_200_000_000), "1.2 GB");
    }

    #[test]
    fn a_builder_page_shows_its_running_bisections_and_its_newest_ended_one() {
        // Newest first, as the store gives them.
        let rows = [
            row(6, "mac", "running"),
            row(5, "linux", "running"),
            row(4, "linux", "found"),
            row(3, "linux", "running"),
            row(2, "linux", "stopped"),
        ];
        let shown: Vec<i64> = builder_bisect_views(&rows, "linux")
            .iter()
            .map(|view| view.id)
            .collect();
        assert_eq!(shown, [5, 4, 3]);
        assert!(builder_bisect_views(&rows, "windows").is_empty());
    }
}
