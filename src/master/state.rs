//! The master's shared state: configuration, history, which slaves are connected, what each
//! builder is doing, and the stream of [`BuildEvent`]s that `try --wait`, `watch` and the web
//! page follow. The scheduler owns the decisions; this is what everyone else reads.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::{broadcast, mpsc};

use crate::master::config::Config;
use crate::master::history::History;
use crate::master::results::{BuildResult, format_eta};
use crate::master::scheduler::SchedulerEvent;
use crate::master::slaves::SlaveLink;

/// Something that happened to a build, for everyone following along.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BuildEvent {
    RequestsQueued {
        job_name: String,
        builders: Vec<String>,
    },
    BuildStarted {
        job_name: String,
        builder: String,
        number: i64,
        slave: String,
        /// How long the build should take, from recent successful builds.
        #[serde(skip)]
        expected: Option<std::time::Duration>,
    },
    StepStarted {
        job_name: String,
        builder: String,
        number: i64,
        step: i64,
        name: String,
    },
    StepFinished {
        job_name: String,
        builder: String,
        number: i64,
        step: i64,
        name: String,
        result: BuildResult,
        summary: String,
    },
    BuildFinished {
        job_name: String,
        builder: String,
        number: i64,
        result: BuildResult,
        reason: Option<String>,
        /// The request is queued again (its slave was lost): another build will follow.
        will_retry: bool,
    },
}

/// An event with its place in the master's event sequence, so a follower that reconnects can
/// resume after the last one it saw.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SequencedEvent {
    pub seq: u64,
    #[serde(flatten)]
    pub event: BuildEvent,
}

/// How many recent events are kept for followers that resume.
const EVENT_HISTORY: usize = 4096;

impl BuildEvent {
    pub fn job_name(&self) -> &str {
        match self {
            BuildEvent::RequestsQueued { job_name, .. }
            | BuildEvent::BuildStarted { job_name, .. }
            | BuildEvent::StepStarted { job_name, .. }
            | BuildEvent::StepFinished { job_name, .. }
            | BuildEvent::BuildFinished { job_name, .. } => job_name,
        }
    }
}

/// The handle to stop a running build.
pub struct BuildControl {
    pub job_name: String,
    /// Cancelled by a stop; the build interrupts its step and skips the rest.
    pub stop: tokio_util::sync::CancellationToken,
    stopped_by: Mutex<Option<(String, String)>>,
}

impl BuildControl {
    /// Stops the build, recording who and why (the first stop wins).
    pub fn request_stop(&self, by: &str, reason: &str) {
        let mut stopped_by = lock(&self.stopped_by);
        if stopped_by.is_none() {
            *stopped_by = Some((by.to_string(), reason.to_string()));
        }
        drop(stopped_by);
        self.stop.cancel();
    }

    /// (who, why) of the stop.
    pub fn stopped_by(&self) -> (String, String) {
        lock(&self.stopped_by)
            .clone()
            .unwrap_or_else(|| ("someone".to_string(), "no reason given".to_string()))
    }
}

/// A builder's live state, for status output.
#[derive(Debug, Clone)]
pub struct BuilderSummary {
    /// Numbers of the builds running now.
    pub running: Vec<i64>,
    /// "building #3 (test), ETA 1m05s", one per running build.
    pub running_text: String,
    pub queued: usize,
    /// The last build that finished since the master started, and its result.
    pub last: Option<(i64, BuildResult)>,
}

/// What a builder is doing now.
#[derive(Debug, Clone, Default)]
struct BuilderStatus {
    queued: usize,
    /// (build number, current step name, started, expected duration) while building.
    running: Vec<(i64, String, std::time::Instant, Option<std::time::Duration>)>,
    last: Option<(i64, BuildResult)>,
}

pub struct MasterState {
    pub config: Arc<Config>,
    /// `SHA256:...` of the host key, shown to users so they can check what they connect to.
    pub host_key_fingerprint: String,
    pub history: History,
    /// Where step logs are written: `logs/BUILDER/NUMBER/STEP-NAME.STREAM`.
    pub logs_dir: PathBuf,
    /// The web address, for links in `try --wait` summaries.
    pub web_url: String,
    slaves: Mutex<BTreeMap<String, Arc<SlaveLink>>>,
    builders: Mutex<BTreeMap<String, BuilderStatus>>,
    running: Mutex<BTreeMap<(String, i64), Arc<BuildControl>>>,
    scheduler: mpsc::Sender<SchedulerEvent>,
    events: broadcast::Sender<SequencedEvent>,
    /// The most recent events, oldest first, and the next sequence number.
    recent_events: Mutex<(std::collections::VecDeque<SequencedEvent>, u64)>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MasterState {
    pub fn new(
        config: Arc<Config>,
        host_key_fingerprint: String,
        history: History,
        web_url: String,
        scheduler: mpsc::Sender<SchedulerEvent>,
    ) -> MasterState {
        let (events, _) = broadcast::channel(1024);
        MasterState {
            logs_dir: config.master_dir.join("logs"),
            builders: Mutex::new(
                config
                    .builders
                    .iter()
                    .map(|builder| (builder.name.clone(), BuilderStatus::default()))
                    .collect(),
            ),
            config,
            host_key_fingerprint,
            history,
            web_url,
            slaves: Mutex::new(BTreeMap::new()),
            running: Mutex::new(BTreeMap::new()),
            scheduler,
            events,
            recent_events: Mutex::new((std::collections::VecDeque::new(), 1)),
        }
    }

    /// Makes a running build stoppable; `unregister_build` when it ends.
    pub fn register_build(&self, builder: &str, number: i64, job_name: &str) -> Arc<BuildControl> {
        let control = Arc::new(BuildControl {
            job_name: job_name.to_string(),
            stop: tokio_util::sync::CancellationToken::new(),
            stopped_by: Mutex::new(None),
        });
        lock(&self.running).insert((builder.to_string(), number), Arc::clone(&control));
        control
    }

    pub fn unregister_build(&self, builder: &str, number: i64) {
        lock(&self.running).remove(&(builder.to_string(), number));
    }

    /// The running builds of a builder, by number.
    pub fn running_builds(&self, builder: &str) -> Vec<(i64, Arc<BuildControl>)> {
        lock(&self.running)
            .iter()
            .filter(|((name, _), _)| name == builder)
            .map(|((_, number), control)| (*number, Arc::clone(control)))
            .collect()
    }

    /// Stops every running build of a try job; returns how many.
    pub fn stop_job(&self, job_name: &str, by: &str, reason: &str) -> usize {
        let running = lock(&self.running);
        let mut stopped = 0;
        for control in running
            .values()
            .filter(|control| control.job_name == job_name)
        {
            control.request_stop(by, reason);
            stopped += 1;
        }
        stopped
    }

    /// Follows the build events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<SequencedEvent> {
        self.events.subscribe()
    }

    /// Follows the events, starting with the kept ones after `since` (none when `since` is
    /// `None`). Returns the replay and the receiver of what comes next; an event may be in
    /// both, so followers skip sequence numbers they have seen.
    pub fn subscribe_since(
        &self,
        since: Option<u64>,
    ) -> (Vec<SequencedEvent>, broadcast::Receiver<SequencedEvent>) {
        let receiver = self.events.subscribe();
        let replay = match since {
            Some(since) => lock(&self.recent_events)
                .0
                .iter()
                .filter(|event| event.seq > since)
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        (replay, receiver)
    }

    /// Records an event in the builder status and tells every follower.
    pub fn publish(&self, event: BuildEvent) {
        {
            let mut builders = lock(&self.builders);
            match &event {
                BuildEvent::BuildStarted {
                    builder,
                    number,
                    expected,
                    ..
                } => {
                    if let Some(status) = builders.get_mut(builder) {
                        let started = std::time::Instant::now();
                        status
                            .running
                            .push((*number, String::new(), started, *expected));
                    }
                }
                BuildEvent::StepStarted {
                    builder,
                    number,
                    name,
                    ..
                } => {
                    if let Some(status) = builders.get_mut(builder)
                        && let Some(running) = status.running.iter_mut().find(|(n, ..)| n == number)
                    {
                        running.1 = name.clone();
                    }
                }
                BuildEvent::BuildFinished {
                    builder,
                    number,
                    result,
                    ..
                } => {
                    if let Some(status) = builders.get_mut(builder) {
                        status.running.retain(|(n, ..)| n != number);
                        status.last = Some((*number, *result));
                    }
                }
                BuildEvent::RequestsQueued { .. } | BuildEvent::StepFinished { .. } => {}
            }
        }
        let sequenced = {
            let mut recent = lock(&self.recent_events);
            let sequenced = SequencedEvent {
                seq: recent.1,
                event,
            };
            recent.1 += 1;
            recent.0.push_back(sequenced.clone());
            if recent.0.len() > EVENT_HISTORY {
                recent.0.pop_front();
            }
            sequenced
        };
        // No subscribers is fine.
        let _ = self.events.send(sequenced);
    }

    /// The scheduler's view of the queue, per builder.
    pub fn set_queued(&self, queued: BTreeMap<String, usize>) {
        let mut builders = lock(&self.builders);
        for (name, status) in builders.iter_mut() {
            status.queued = queued.get(name).copied().unwrap_or(0);
        }
    }

    pub async fn scheduler_event(&self, event: SchedulerEvent) {
        if self.scheduler.send(event).await.is_err() {
            tracing::debug!("scheduler gone (master stopping)");
        }
    }

    /// A slave registered; a connection it already had is dropped (the newer one wins).
    pub async fn slave_connected(&self, link: Arc<SlaveLink>) {
        let previous = lock(&self.slaves).insert(link.name.clone(), Arc::clone(&link));
        if let Some(previous) = previous {
            tracing::warn!(slave = %link.name, old = %previous.peer, new = %link.peer, "slave connected again; dropping the older connection");
            previous.close();
        }
        tracing::info!(slave = %link.name, peer = %link.peer, os = %link.hello.os, arch = %link.hello.arch, cpus = link.hello.cpus, version = %link.hello.buildbot_version, "slave connected");
        self.scheduler_event(SchedulerEvent::SlaveConnected(link))
            .await;
    }

    pub async fn slave_disconnected(&self, link: &SlaveLink) {
        {
            let mut slaves = lock(&self.slaves);
            if slaves
                .get(&link.name)
                .is_some_and(|known| known.conn_id == link.conn_id)
            {
                slaves.remove(&link.name);
            }
        }
        self.scheduler_event(SchedulerEvent::SlaveLost {
            name: link.name.clone(),
            conn_id: link.conn_id,
        })
        .await;
    }

    pub fn connected_slaves(&self) -> BTreeMap<String, Arc<SlaveLink>> {
        lock(&self.slaves).clone()
    }

    /// What each builder is doing now, in configuration order.
    pub fn builder_states(&self) -> Vec<(String, BuilderSummary)> {
        let builders = lock(&self.builders).clone();
        self.config
            .builders
            .iter()
            .map(|builder| {
                let status = builders.get(&builder.name).cloned().unwrap_or_default();
                let running_text = status
                    .running
                    .iter()
                    .map(|(number, step, started, expected)| match expected {
                        Some(expected) => {
                            let left = expected.saturating_sub(started.elapsed());
                            format!("building #{number} ({step}), ETA {}", format_eta(left))
                        }
                        None => format!("building #{number} ({step})"),
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                let summary = BuilderSummary {
                    running: status.running.iter().map(|(number, ..)| *number).collect(),
                    running_text,
                    queued: status.queued,
                    last: status.last,
                };
                (builder.name.clone(), summary)
            })
            .collect()
    }

    /// A plain-text status: one line for the master, one per builder (all, or those named).
    pub fn status_lines(&self, only: &[String]) -> String {
        let connected = self.connected_slaves();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "master {}: {} builders, {} of {} slaves connected",
            self.config.name,
            self.config.builders.len(),
            connected.len(),
            self.config.slaves.len()
        );
        for (name, summary) in self.builder_states() {
            if !only.is_empty() && !only.contains(&name) {
                continue;
            }
            let pool = self
                .config
                .builders
                .iter()
                .find(|builder| builder.name == name)
                .map(|builder| builder.slaves.clone())
                .unwrap_or_default();
            let slaves: Vec<String> = pool
                .iter()
                .map(|slave| match connected.get(slave) {
                    Some(_) => format!("{slave} (connected)"),
                    None => format!("{slave} (not connected)"),
                })
                .collect();
            let state = if !summary.running.is_empty() {
                summary.running_text.clone()
            } else if pool.iter().any(|slave| connected.contains_key(slave)) {
                "idle".to_string()
            } else {
                "offline".to_string()
            };
            let last = match summary.last {
                Some((number, result)) => format!("; last #{number} {result}"),
                None => String::new(),
            };
            let _ = writeln!(
                out,
                "{name}: {state}, {} queued{last}; slaves: {}",
                summary.queued,
                slaves.join(", ")
            );
        }
        out
    }

    /// When a slave connected, for status pages.
    pub fn slave_since(&self, name: &str) -> Option<SystemTime> {
        lock(&self.slaves).get(name).map(|link| link.since)
    }
}
