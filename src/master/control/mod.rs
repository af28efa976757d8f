//! The application layer: what every action means, once, for every front end. SSH commands,
//! web handlers (and the IRC bot) parse their input, call a method here, and render the typed
//! result or [`ControlError`] their own way. Here live the checks ("no builder named X", who
//! may stop), the one stop behaviour, try submission, cancelling a job, and the status snapshot.
//!
//! [`Control`] holds the master's parts, each the one owner of its facts: the config, the
//! history, the event log, the board of running builds, the roster of slaves, the web sessions,
//! and the way into the scheduler.

mod changes;
mod requests;
mod stop;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::exec_io::ExecIo;
use crate::master::access::AccessError;
use crate::master::board::Board;
use crate::master::config::{BuilderConfig, Config};
use crate::master::events::EventLog;
use crate::master::history::changes::StoredChange;
use crate::master::history::{self, BuildRow, History, HistoryError, StoredRequest};
use crate::master::irc_links::IrcLinks;
use crate::master::lock;
use crate::master::reconfig::{LiveConfig, Report};
use crate::master::roster::Roster;
use crate::master::scheduler::Input;
use crate::master::sessions::Sessions;
use crate::master::slaves::{self, SlaveLink, SlaveRegistry};
use crate::spool::submit::SubmitError;
use crate::status::{
    BuildEvent, BuildResult, BuilderActivity, BuilderStatus, PoolSlave, StatusSnapshot,
};
use crate::unix::accounts::UnixAccount;

/// Why an action was refused or failed. Front ends render these their own way.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no builder named '{name}'")]
    NoSuchBuilder { name: String, known: Vec<String> },
    #[error("{builder}{} is not running", number.map(|n| format!(" #{n}")).unwrap_or_default())]
    NotRunning {
        builder: String,
        number: Option<i64>,
    },
    #[error("{builder} is running {}; say which", numbers.iter().map(|n| format!("#{n}")).collect::<Vec<_>>().join(", "))]
    Ambiguous { builder: String, numbers: Vec<i64> },
    #[error("{builder} may not be forced: no kind = \"force\" scheduler lists it")]
    NotForcible { builder: String },
    #[error("no slave named '{name}'")]
    NoSuchSlave { name: String },
    #[error("{builder} has no build #{number}")]
    NoSuchBuild { builder: String, number: i64 },
    #[error("{builder} has no queued request {request_id} (it may be building or done already)")]
    NotQueued { builder: String, request_id: i64 },
    #[error("{0}")]
    NotAllowed(#[from] AccessError),
    #[error("{0}")]
    Submit(#[from] SubmitError),
    #[error("{0}")]
    BadChange(#[from] crate::change::ChangeError),
    #[error("{0}")]
    History(#[from] HistoryError),
}

/// A try job taken into the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The file name in the spool: the job's identity in events.
    pub job_name: String,
    pub jobid: String,
    pub builders: Vec<String>,
}

/// A request put in the queue by hand (force, rebuild).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// Names the request in events (as a try job's spool name does).
    pub job_name: String,
    pub builder: String,
    pub request_id: i64,
}

/// What a forced build should build.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForceRequest {
    /// Default: the builder's branch.
    pub branch: Option<String>,
    /// Default: the branch's head when the build starts.
    pub revision: Option<String>,
    pub reason: String,
    pub properties: BTreeMap<String, String>,
}

/// What reaches the scheduler executor: an input for the queue, or a cancellation whose
/// caller wants to know whether the request was still queued.
#[derive(Debug)]
pub enum Mail {
    Input(Input),
    /// Recorded requests to queue; `applied` fires once the queue (and what it publishes) has
    /// them.
    Enqueue {
        requests: Vec<StoredRequest>,
        applied: tokio::sync::oneshot::Sender<()>,
    },
    CancelRequest {
        builder: String,
        request_id: i64,
        by: String,
        reply: tokio::sync::oneshot::Sender<bool>,
    },
    /// A running build's step wants its locks; `granted` fires when it has them.
    StepLocks {
        request_id: i64,
        step: String,
        slave: String,
        uses: Vec<crate::master::locks::LockUse>,
        granted: tokio::sync::oneshot::Sender<()>,
    },
}

/// Where a queued request stands in its builder's queue.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct QueueEstimate {
    pub request_id: i64,
    /// 1 = next.
    pub position: usize,
    /// Seconds from now, when there is anything to go by.
    pub starts_in: Option<f64>,
    pub finishes_in: Option<f64>,
}

/// Who holds and who waits for each lock, as the scheduler executor last published it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LockStatus {
    pub name: String,
    pub kind: crate::master::locks::LockKind,
    pub max_count: usize,
    pub holders: Vec<LockHolderView>,
    pub waiters: Vec<LockWaiterView>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LockHolderView {
    pub request_id: i64,
    pub builder: String,
    /// The build's number, once it has one.
    pub number: Option<i64>,
    pub slave: Option<String>,
    pub step: Option<String>,
    pub access: crate::master::locks::Access,
    /// Seconds since the unix epoch.
    pub since: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LockWaiterView {
    pub request_id: i64,
    pub builder: String,
    pub step: Option<String>,
}

/// Fills in the build numbers the published status lacks: the executor publishes it as it
/// hands a build out, before the build task has put the build on the board and so before it
/// has a number, and publishes again only on its next input.
fn with_build_numbers(
    mut locks: Vec<LockStatus>,
    number_of: impl Fn(i64) -> Option<i64>,
) -> Vec<LockStatus> {
    for holder in locks
        .iter_mut()
        .flat_map(|status| status.holders.iter_mut())
    {
        if holder.number.is_none() {
            holder.number = number_of(holder.request_id);
        }
    }
    locks
}

/// The answer to a stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    pub builder: String,
    pub number: i64,
    /// The build's result, or none when it has not reported its end in time.
    pub result: Option<BuildResult>,
}

pub struct Control {
    /// The config in force; see [`Control::config`] and `master::reconfig`.
    live: LiveConfig,
    /// `SHA256:...` of the host key, shown to users so they can check what they connect to.
    pub host_key_fingerprint: String,
    pub history: History,
    pub events: EventLog,
    pub board: Board,
    pub roster: Roster,
    /// The Prometheus metrics every part updates; `/metrics` encodes them.
    pub metrics: crate::master::metrics::Metrics,
    pub sessions: Sessions,
    /// IRC nicks bound to unix users (`ssh master irc-link`, then `/msg BOT link CODE`).
    pub irc_links: IrcLinks,
    /// The web address, for links in summaries.
    pub web_url: String,
    /// Where step logs are written: `logs/BUILDER/NUMBER/STEP-NAME.STREAM`.
    pub logs_dir: PathBuf,
    /// The paused slaves, as the scheduler executor last published them.
    paused: Mutex<Vec<String>>,
    /// The locks, as the scheduler executor last published them.
    locks: Mutex<Vec<LockStatus>>,
    /// Requests waiting per builder, as the scheduler executor last published them.
    queued: Mutex<BTreeMap<String, Vec<i64>>>,
    /// Into the scheduler executor; bounded, so a flood of inputs slows their senders.
    scheduler: mpsc::Sender<Mail>,
    /// Recorded changes, to the schedulers that build them (`master::schedulers`).
    changes: mpsc::Sender<StoredChange>,
    /// Each user's recent submissions, for `[limits]`.
    quotas: crate::master::quotas::Quotas,
}

impl Control {
    pub fn new(
        config: Arc<Config>,
        host_key_fingerprint: String,
        history: History,
        web_url: String,
        scheduler: mpsc::Sender<Mail>,
        changes: mpsc::Sender<StoredChange>,
    ) -> Control {
        let irc_links = IrcLinks::new(
            config
                .irc
                .as_ref()
                .map_or(std::time::Duration::from_secs(12 * 3600), |irc| {
                    irc.link_ttl
                }),
        );
        Control {
            logs_dir: config.master_dir.join("logs"),
            live: LiveConfig::new(config),
            host_key_fingerprint,
            history,
            events: EventLog::new(),
            board: Board::default(),
            roster: Roster::default(),
            metrics: crate::master::metrics::Metrics::new(),
            sessions: Sessions::default(),
            irc_links,
            web_url,
            queued: Mutex::new(BTreeMap::new()),
            locks: Mutex::new(Vec::new()),
            paused: Mutex::new(Vec::new()),
            scheduler,
            changes,
            quotas: crate::master::quotas::Quotas::default(),
        }
    }

    /// The config in force now. A snapshot: take it once per action, so one action sees one
    /// config even when a reconfig happens meanwhile.
    pub fn config(&self) -> Arc<Config> {
        self.live.current()
    }

    /// Wakes on every reconfig, for subsystems that keep state derived from the config.
    pub fn config_changes(&self) -> tokio::sync::watch::Receiver<Arc<Config>> {
        self.live.subscribe()
    }

    /// How many reconfigs this master has applied (0 = the config read at start).
    pub fn config_generation(&self) -> u64 {
        self.live.generation()
    }

    /// Puts a new, validated config in force; each subsystem applies its part as it wakes.
    pub fn reconfigure(&self, new: Config) -> Report {
        let report = self.live.replace(new);
        for change in &report.changes {
            tracing::info!(generation = report.generation, "reconfig: {change}");
        }
        for note in &report.needs_restart {
            tracing::warn!(generation = report.generation, "reconfig: {note}");
        }
        report
    }

    /// The metrics in Prometheus text format, with the gauges read now.
    pub fn metrics_text(&self) -> String {
        let builders: Vec<String> = self
            .config()
            .builders
            .iter()
            .map(|builder| builder.name.clone())
            .collect();
        self.metrics.encode(
            &builders,
            self.roster.snapshot().len(),
            crate::status::unix_now(),
        )
    }

    /// The builder of that name, or the one error every front end renders.
    pub fn builder(&self, name: &str) -> Result<BuilderConfig, ControlError> {
        let config = self.config();
        config
            .builder(name)
            .cloned()
            .ok_or_else(|| ControlError::NoSuchBuilder {
                name: name.to_string(),
                known: config.builders.iter().map(|b| b.name.clone()).collect(),
            })
    }

    /// Checks every name; the first unknown one is the error.
    pub fn check_builders(&self, names: &[String]) -> Result<(), ControlError> {
        names
            .iter()
            .try_for_each(|name| self.builder(name).map(|_| ()))
    }

    pub async fn scheduler_input(&self, input: Input) {
        if self.scheduler.send(Mail::Input(input)).await.is_err() {
            tracing::debug!("scheduler gone (master stopping)");
        }
    }

    pub(crate) fn set_queued(&self, queued: BTreeMap<String, Vec<i64>>) {
        *lock(&self.queued) = queued;
    }

    pub(crate) fn set_paused(&self, paused: Vec<String>) {
        *lock(&self.paused) = paused;
    }

    pub fn is_paused(&self, slave: &str) -> bool {
        lock(&self.paused).iter().any(|name| name == slave)
    }

    pub(crate) fn set_locks(&self, locks: Vec<LockStatus>) {
        *lock(&self.locks) = locks;
    }

    /// Who holds and who waits for each lock.
    pub fn locks(&self) -> Vec<LockStatus> {
        let locks = lock(&self.locks).clone();
        with_build_numbers(locks, |request_id| self.board.number_of_request(request_id))
    }

    /// Asks for a step's locks and waits until they are granted; none when the master stops.
    pub(crate) async fn step_locks(
        &self,
        request_id: i64,
        step: &str,
        slave: &str,
        uses: Vec<crate::master::locks::LockUse>,
    ) -> Option<()> {
        let (granted, answer) = tokio::sync::oneshot::channel();
        let mail = Mail::StepLocks {
            request_id,
            step: step.to_string(),
            slave: slave.to_string(),
            uses,
            granted,
        };
        self.scheduler.send(mail).await.ok()?;
        answer.await.ok()
    }

    /// Where each of a builder's queued requests stands: its position and when it should start
    /// and finish (seconds from now), from the running builds' ETAs and recent durations.
    pub async fn queue_estimates(&self, builder: &str) -> Result<Vec<QueueEstimate>, ControlError> {
        let config = self.builder(builder)?;
        let ids = self.queued_ids(builder);
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let name = builder.to_string();
        let durations = self
            .history
            .run(move |connection| history::recent_success_durations(connection, &name, 10))
            .await?;
        let expected = crate::master::results::expected_duration(&durations)
            .map(|duration| duration.as_secs_f64());
        let now = crate::status::unix_now();
        let connected = self.roster.snapshot();
        let running = self.board.running(builder);
        let mut slots = Vec::new();
        for slave in config
            .slaves
            .iter()
            .filter(|slave| connected.contains_key(*slave))
        {
            let capacity = self
                .config()
                .slave(slave)
                .map_or(1, |slave| slave.max_builds);
            let busy = self.board.running_on_slave(slave);
            slots.extend(std::iter::repeat_n(0.0, capacity.saturating_sub(busy)));
        }
        slots.extend(running.iter().map(|build| {
            build
                .eta_at(now)
                .map_or(expected.unwrap_or(0.0), |eta| eta.as_secs_f64())
        }));
        let estimates = crate::master::results::queue_estimates(&slots, expected, ids.len());
        Ok(ids
            .into_iter()
            .zip(estimates)
            .enumerate()
            .map(|(index, (request_id, estimate))| QueueEstimate {
                request_id,
                position: index + 1,
                starts_in: estimate.map(|(start, _)| start),
                finishes_in: estimate
                    .filter(|_| expected.is_some())
                    .map(|(_, finish)| finish),
            })
            .collect())
    }

    /// The ids of a job's requests for `builder`.
    pub async fn request_ids_of_job(&self, job_name: &str, builder: &str) -> Vec<i64> {
        let (job_name, builder) = (job_name.to_string(), builder.to_string());
        self.history
            .run(move |connection| history::request_ids_of_job(connection, &job_name, &builder))
            .await
            .unwrap_or_default()
    }

    /// The ids of a builder's queued requests, in the order they will be served.
    pub fn queued_ids(&self, builder: &str) -> Vec<i64> {
        lock(&self.queued).get(builder).cloned().unwrap_or_default()
    }

    /// Records requests and queues them; tells the followers under `job_name`.
    pub(crate) async fn enqueue(
        &self,
        requests: Vec<StoredRequest>,
    ) -> Result<Vec<i64>, ControlError> {
        let to_store = requests.clone();
        let ids = self
            .history
            .run(move |connection| history::insert_requests(connection, &to_store))
            .await?;
        let Some(job_name) = requests.first().map(|request| request.job_name.clone()) else {
            return Ok(ids);
        };
        let builders = requests
            .iter()
            .map(|request| request.builder.clone())
            .collect();
        let stored = requests
            .into_iter()
            .zip(ids.iter())
            .map(|(request, id)| StoredRequest { id: *id, ..request })
            .collect();
        // Announced once the queue has them, so a follower asking for its place finds it.
        let (applied, done) = tokio::sync::oneshot::channel();
        if self
            .scheduler
            .send(Mail::Enqueue {
                requests: stored,
                applied,
            })
            .await
            .is_ok()
        {
            let _ = done.await;
        }
        self.events
            .publish(BuildEvent::RequestsQueued { job_name, builders });
        Ok(ids)
    }

    /// What each builder (all, or those named) is doing now.
    pub fn status(&self, only: &[String]) -> Result<StatusSnapshot, ControlError> {
        self.check_builders(only)?;
        let connected = self.roster.snapshot();
        let queued = lock(&self.queued).clone();
        let builders = self
            .config()
            .builders
            .iter()
            .filter(|builder| only.is_empty() || only.contains(&builder.name))
            .map(|builder| {
                let slaves: Vec<PoolSlave> = builder
                    .slaves
                    .iter()
                    .map(|name| PoolSlave {
                        name: name.clone(),
                        connected: connected.contains_key(name),
                    })
                    .collect();
                let running = self.board.running(&builder.name);
                let activity = if !running.is_empty() {
                    BuilderActivity::Building
                } else if slaves.iter().any(|slave| slave.connected) {
                    BuilderActivity::Idle
                } else {
                    BuilderActivity::Offline
                };
                BuilderStatus {
                    name: builder.name.clone(),
                    activity,
                    running,
                    queued: queued.get(&builder.name).map_or(0, Vec::len),
                    last: self.board.last(&builder.name),
                    slaves,
                }
            })
            .collect();
        Ok(StatusSnapshot {
            master: self.config().name.clone(),
            slaves_connected: connected.len(),
            slaves_configured: self.config().slaves.len(),
            builders,
        })
    }

    /// The newest finished build of `builder`, from the history.
    pub async fn last_finished_build(
        &self,
        builder: &str,
    ) -> Result<Option<BuildRow>, ControlError> {
        self.builder(builder)?;
        let name = builder.to_string();
        let rows = self
            .history
            .run(move |connection| history::recent_builds(connection, &name, 20))
            .await?;
        Ok(rows.into_iter().find(|row| row.result.is_some()))
    }

    /// The result of the newest finished build of `builder` numbered below `number`: what a
    /// result is compared with to call it fixed or broken.
    pub async fn result_before(
        &self,
        builder: &str,
        number: i64,
    ) -> Result<Option<BuildResult>, ControlError> {
        let name = builder.to_string();
        let rows = self
            .history
            .run(move |connection| history::recent_builds(connection, &name, 50))
            .await?;
        Ok(rows
            .into_iter()
            .filter(|row| row.number < number)
            .find_map(|row| row.result))
    }

    /// The URL of a build's page.
    pub fn build_url(&self, builder: &str, number: i64) -> String {
        format!("{}/builders/{builder}/builds/{number}", self.web_url)
    }

    /// A one-time URL that logs a browser in as `account`.
    pub fn web_login(&self, account: &UnixAccount) -> String {
        let token = self.sessions.new_login_token(account.clone());
        format!("{}/login?token={token}", self.web_url)
    }

    /// Runs the RPC of slave `name` (authenticated by its key) on an exec channel.
    pub async fn serve_slave(
        &self,
        name: &str,
        peer: std::net::SocketAddr,
        io: &mut ExecIo<'_>,
    ) -> u32 {
        slaves::serve(self, &self.config().name, name, peer, io).await
    }
}

impl SlaveRegistry for Control {
    /// A slave finished its handshake: it joins the roster (replacing an older connection) and
    /// the scheduler may use it.
    async fn connected(&self, link: Arc<SlaveLink>) {
        tracing::info!(slave = %link.name, peer = %link.peer, os = %link.hello.os, arch = %link.hello.arch, cpus = link.hello.cpus, version = %link.hello.buildbot_version, "slave connected");
        let capacity = self
            .config()
            .slave(&link.name)
            .map_or(1, |slave| slave.max_builds);
        let input = Input::SlaveConnected {
            name: link.name.clone(),
            conn_id: link.conn_id,
            capacity,
        };
        self.roster.connect(link);
        self.scheduler_input(input).await;
    }

    async fn disconnected(&self, link: &SlaveLink) {
        self.roster.disconnect(&link.name, link.conn_id);
        self.scheduler_input(Input::SlaveLost {
            name: link.name.clone(),
            conn_id: link.conn_id,
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_as_one_line() {
        let ambiguous = ControlError::Ambiguous {
            builder: "linux".into(),
            numbers: vec![3, 4],
        };
        assert_eq!(ambiguous.to_string(), "linux is running #3, #4; say which");
        let not_running = ControlError::NotRunning {
            builder: "linux".into(),
            number: Some(7),
        };
        assert_eq!(not_running.to_string(), "linux #7 is not running");
    }

    /// Regression: a build-level holder published before its build was on the board showed
    /// `number: null` in /api/locks for as long as the build ran.
    #[test]
    fn lock_holders_get_their_build_number_once_the_build_has_one() {
        let holder = |request_id, number| LockHolderView {
            request_id,
            builder: "linux".into(),
            number,
            slave: Some("s1".into()),
            step: None,
            access: crate::master::locks::Access::Exclusive,
            since: 0.0,
        };
        let status = LockStatus {
            name: "db".into(),
            kind: crate::master::locks::LockKind::Master,
            max_count: 2,
            holders: vec![holder(7, None), holder(8, Some(4)), holder(9, None)],
            waiters: Vec::new(),
        };
        let board = Board::default();
        let numbers = |request_id| match request_id {
            7 => Some(3),
            8 => Some(99),
            _ => board.number_of_request(request_id),
        };
        let filled = with_build_numbers(vec![status], numbers);
        let got: Vec<Option<i64>> = filled[0].holders.iter().map(|h| h.number).collect();
        assert_eq!(got, [Some(3), Some(4), None]);
    }
}
