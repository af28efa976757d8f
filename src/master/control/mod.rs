//! The application layer: what every action means, once, for every front end. SSH commands,
//! web handlers (and the IRC bot) parse their input, call a method here, and render the typed
//! result or [`ControlError`] their own way. Here live the checks ("no builder named X", who
//! may stop), the one stop behaviour, try submission, cancelling a job, and the status snapshot.
//!
//! [`Control`] is a facade of actions and typed reads; its parts stay private. It holds the
//! master's parts, each the one owner of its facts: the config, the history (read by front
//! ends through [`Store`]), the event log, the board of running builds, the roster of slaves,
//! the web sessions, the IRC links, and the way into the scheduler. The core's workers get the
//! narrow handles of `parts` instead.

mod artifacts;
mod changes;
mod land;
mod parts;
mod requests;
pub mod shell;
pub(crate) use requests::start_try_policy;
mod stop;
mod tail;
mod test_results;

pub use crate::master::executor::{LockHolderView, LockStatus, LockWaiterView};
pub use land::{LandAccepted, LandEntryView, LandQueueView, LandRequest};
pub use parts::{
    ChangeRecorder, Enqueuer, IntakeHandle, LandHandle, PollerHandle, SchedulersHandle,
};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::exec_io::ExecIo;
use crate::master::access::AccessError;
use crate::master::board::Board;
use crate::master::build::BuildParts;
use crate::master::config::{BuilderConfig, Config};
use crate::master::events::{EventLog, Follower};
use crate::master::executor::{ExecutorParts, Mail, Port, Published};
use crate::master::irc_links::IrcLinks;
use crate::master::metrics::Metrics;
use crate::master::reconfig::ConfigView;
use crate::master::reconfig::{LiveConfig, Report};
use crate::master::roster::Roster;
use crate::master::scheduler::Input;
use crate::master::sessions::{Session, Sessions};
use crate::master::slaves::SlaveInfo;
use crate::master::slaves::{self, SlaveLink, SlaveRegistry};
use crate::master::store::{
    BuildRow, MasterLease, NewRequest, SharedStore, Store, StoreError, StoredChange,
};
use crate::spool::submit::SubmitError;
use crate::status::RunningBuild;
use crate::status::{BuildResult, BuilderActivity, BuilderStatus, PoolSlave, StatusSnapshot};
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
    /// A reason or comment with control characters (they would break IRC lines and logs).
    #[error("{0}")]
    NotPlain(#[from] crate::untrusted::text::NotPlain),
    #[error("{0}")]
    History(#[from] StoreError),
    /// A series refused by the merge queue (`buildbot land`).
    #[error("{0}")]
    Land(#[from] crate::master::land::LandError),
    // ---- shell (issue 25) ----
    #[error(
        "{builder} #{number} is not held: its directory was not kept (hold = {{ on = \"failure\" }} keeps failed builds; try --hold or force --hold keeps one)"
    )]
    NotHeld { builder: String, number: i64 },
    #[error(
        "{builder} #{number} was held until {until}; its directory may be in use by another build now"
    )]
    HoldEnded {
        builder: String,
        number: i64,
        until: String,
    },
    #[error("{builder} #{number} is still running; a shell opens once it has ended and is held")]
    StillRunning { builder: String, number: i64 },
    #[error("slave {slave}, which holds {builder} #{number}, is {}", match elsewhere {
        Some(other) => format!("connected to master {}, not this one: {} (buildbot shell goes there itself)", other.master, other.command(builder, *number)),
        None => "not connected now; its shell opens once it is back, while the hold lasts".to_string(),
    })]
    SlaveAway {
        slave: String,
        builder: String,
        number: i64,
        elsewhere: Option<Box<shell::OtherMaster>>,
    },
    #[error("{builder} #{number} kept no artifact {path} (or it was pruned)")]
    NoSuchArtifact {
        builder: String,
        number: i64,
        path: String,
    },
}

impl ControlError {
    /// The one line a person reads for this refusal, over SSH and IRC alike (the web maps the
    /// variants onto HTTP statuses). A failure of the master itself says only that: its detail
    /// (a database error may name tables, paths or SQL) goes to the log, here.
    pub fn user_line(&self) -> String {
        match self {
            ControlError::NoSuchBuilder { name, known } => {
                let known = if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                };
                format!("no builder named '{name}' (builders: {known})")
            }
            _ if self.is_internal() => {
                tracing::error!("action failed: {self}");
                "internal error (logged on the master)".to_string()
            }
            _ => {
                tracing::info!("refused: {self}");
                self.to_string()
            }
        }
    }

    /// A failure of the master (its database, its spool), not of the request.
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            ControlError::History(_)
                | ControlError::Submit(crate::spool::submit::SubmitError::Spool(_))
                | ControlError::Land(crate::master::land::LandError::Git(_))
        )
    }

    /// The exit status of the one scheme (`commands`, docs/try.md "Exit codes"): 2 for a
    /// usage mistake (a builder running several builds needs the number), 1 for every other
    /// refusal, whatever the command.
    pub fn exit_code(&self) -> u8 {
        match self {
            ControlError::Ambiguous { .. } => crate::commands::EXIT_USAGE,
            _ => crate::commands::EXIT_FAILED,
        }
    }
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

/// Where a queued request stands in its builder's queue.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct QueueEstimate {
    pub request_id: i64,
    /// 1 = next.
    pub position: usize,
    /// Seconds from now, when there is anything to go by.
    pub starts_in: Option<f64>,
    pub finishes_in: Option<f64>,
    /// The build-level lock that keeps it from starting (then no start is estimated).
    pub waiting_for_lock: Option<String>,
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
    host_key_fingerprint: String,
    store: SharedStore,
    /// This run of the master: what its writes about its builds are fenced with.
    owner: MasterLease,
    events: Arc<EventLog>,
    board: Arc<Board>,
    roster: Arc<Roster>,
    /// The Prometheus metrics every part updates; `/metrics` encodes them.
    metrics: Arc<Metrics>,
    sessions: Sessions,
    /// IRC nicks bound to unix users (`ssh master irc-link`, then `/msg BOT link CODE`).
    irc_links: IrcLinks,
    /// The web address, for links in answers.
    web_url: String,
    /// Where step logs are written: `logs/BUILDER/NUMBER/STEP-NAME.STREAM`.
    logs_dir: PathBuf,
    /// What the scheduler executor last published: queued requests, paused slaves, locks.
    published: Arc<Published>,
    /// Into the scheduler executor; bounded, so a flood of inputs slows their senders.
    inbox: mpsc::Sender<Mail>,
    enqueuer: Enqueuer,
    changes: ChangeRecorder,
    /// Each user's recent submissions, for `[limits]`.
    quotas: crate::master::quotas::Quotas,
}

/// What the master keeps beyond a build: the store, the web sessions loaded from it, and this
/// run's registration in it.
pub struct Storage {
    pub store: SharedStore,
    pub sessions: Sessions,
    pub owner: MasterLease,
    /// With a shared store: the name of its event numbering and where published events go
    /// (`master::journal`); none: events are numbered by this master alone.
    pub journal: Option<(
        String,
        tokio::sync::mpsc::UnboundedSender<(f64, crate::status::BuildEvent)>,
    )>,
}

impl Control {
    pub fn new(
        config: Arc<Config>,
        host_key_fingerprint: String,
        storage: Storage,
        web_url: String,
        inbox: mpsc::Sender<Mail>,
        changes: mpsc::Sender<StoredChange>,
    ) -> Control {
        let Storage {
            store,
            sessions,
            owner,
            journal,
        } = storage;
        let irc_links = IrcLinks::new(
            config
                .irc
                .as_ref()
                .map_or(std::time::Duration::from_secs(12 * 3600), |irc| {
                    irc.link_ttl
                }),
        );
        let irc_links = if store.is_shared() {
            irc_links.shared_through(Arc::clone(&store))
        } else {
            irc_links
        };
        let events = Arc::new(match journal {
            Some((epoch, journal)) => EventLog::journaled(epoch, journal),
            None => EventLog::new(),
        });
        Control {
            logs_dir: config.master_dir.join("logs"),
            live: LiveConfig::new(config),
            host_key_fingerprint,
            enqueuer: Enqueuer {
                store: Arc::clone(&store),
                events: Arc::clone(&events),
                inbox: inbox.clone(),
            },
            changes: ChangeRecorder {
                store: Arc::clone(&store),
                events: Arc::clone(&events),
                changes,
            },
            store,
            owner,
            events,
            board: Arc::default(),
            roster: Arc::default(),
            metrics: Arc::new(Metrics::new()),
            sessions,
            irc_links,
            web_url,
            published: Arc::default(),
            inbox,
            quotas: crate::master::quotas::Quotas::default(),
        }
    }

    fn config_view(&self) -> ConfigView {
        ConfigView::new(self.live.subscribe())
    }

    fn build_parts(&self) -> BuildParts {
        BuildParts {
            config: self.config_view(),
            store: Arc::clone(&self.store),
            events: Arc::clone(&self.events),
            board: Arc::clone(&self.board),
            metrics: Arc::clone(&self.metrics),
            logs_dir: self.logs_dir.clone(),
            scheduler: Arc::new(Port(self.inbox.clone())),
            owner: self.owner.clone(),
        }
    }

    /// The scheduler executor's handle.
    pub fn executor_parts(&self) -> ExecutorParts {
        ExecutorParts {
            config: self.config_view(),
            store: Arc::clone(&self.store),
            events: Arc::clone(&self.events),
            board: Arc::clone(&self.board),
            metrics: Arc::clone(&self.metrics),
            roster: Arc::clone(&self.roster),
            published: Arc::clone(&self.published),
            build: Arc::new(self.build_parts()),
        }
    }

    /// The schedulers task's handle; `leading` says whether this master fires them.
    pub fn schedulers_handle(
        &self,
        leading: tokio::sync::watch::Receiver<bool>,
    ) -> SchedulersHandle {
        SchedulersHandle {
            leading,
            store: Arc::clone(&self.store),
            config: self.config_view(),
            events: Arc::clone(&self.events),
            enqueuer: self.enqueuer.clone(),
        }
    }

    /// A change poller's handle.
    pub fn poller_handle(&self) -> PollerHandle {
        PollerHandle {
            store: Arc::clone(&self.store),
            recorder: self.changes.clone(),
            master_dir: self.config().master_dir.clone(),
        }
    }

    /// Stops this master's builds that were asked to stop on another master of the cluster,
    /// until `shutdown` (the daemon runs it with a shared store).
    pub fn serve_remote_stops(
        &self,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static {
        stop::serve_remote_stops(
            Arc::clone(&self.board),
            Arc::clone(&self.roster),
            self.owner.name.clone(),
            self.events.follow(),
            shutdown,
        )
    }

    /// What the journal's tail delivers to: the store and this master's event log (the
    /// daemon runs the tail with a shared store).
    pub fn journal_parts(&self) -> (SharedStore, Arc<EventLog>) {
        (Arc::clone(&self.store), Arc::clone(&self.events))
    }

    /// The lease task's handle; `reach` says where this master is.
    pub fn lease_parts(
        &self,
        reach: crate::master::lease::Reach,
        leading: tokio::sync::watch::Sender<bool>,
    ) -> crate::master::lease::LeaseParts {
        crate::master::lease::LeaseParts {
            config: self.config_view(),
            leading,
            store: Arc::clone(&self.store),
            roster: Arc::clone(&self.roster),
            board: Arc::clone(&self.board),
            metrics: Arc::clone(&self.metrics),
            reach,
        }
    }

    /// The masters of the cluster as the store knows them, and the digest of this master's
    /// config (a master whose digest differs runs another config).
    pub async fn masters(
        &self,
    ) -> Result<(Vec<crate::master::store::MasterRow>, String), ControlError> {
        let rows = self.store.masters().await?;
        Ok((rows, crate::master::lease::config_digest(&self.config())))
    }

    /// The spool intake's handle.
    pub fn intake_handle(&self) -> IntakeHandle {
        IntakeHandle {
            store: Arc::clone(&self.store),
            config: self.config_view(),
            enqueuer: self.enqueuer.clone(),
        }
    }

    /// The read side of the store, for pages and the API.
    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// The metrics every part updates (sshd counts its logins and refusals).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// `SHA256:...` of the host key.
    pub fn host_key_fingerprint(&self) -> &str {
        &self.host_key_fingerprint
    }

    /// The web address, `http://HOST:PORT`.
    pub fn web_url(&self) -> &str {
        &self.web_url
    }

    /// The URL of a builder's page.
    pub fn builder_url(&self, builder: &str) -> String {
        format!("{}/builders/{builder}", self.web_url)
    }

    /// Where this master's step log files are; readers go through [`Control::logs`], which
    /// also finds logs other masters wrote.
    pub fn logs_dir(&self) -> &Path {
        &self.logs_dir
    }

    /// Step logs to read, from this master's files or the shared store (`master::logs`).
    pub fn logs(&self) -> crate::master::logs::LogSource {
        crate::master::logs::LogSource::new(self.logs_dir.clone(), Arc::clone(&self.store))
    }

    /// Tells every follower (and, with a shared store, every master) of an event.
    pub fn publish(&self, event: crate::status::BuildEvent) {
        self.events.publish(event);
    }

    /// Every event from now on.
    pub fn follow(&self) -> Follower {
        self.events.follow()
    }

    /// The kept events after `since`, then every new one.
    pub fn follow_since(&self, since: u64) -> Follower {
        self.events.follow_since(since)
    }

    /// As [`Control::follow_since`], replaying at most `max_replay` kept events.
    pub fn follow_since_at_most(&self, since: u64, max_replay: usize) -> Follower {
        self.events.follow_since_at_most(since, max_replay)
    }

    /// The sequence number of the newest event.
    pub fn last_event_seq(&self) -> u64 {
        self.events.last_seq()
    }

    /// Names this master run's event sequence numbers.
    pub fn events_epoch(&self) -> &str {
        self.events.epoch()
    }

    /// The running builds of `builder`.
    pub fn running(&self, builder: &str) -> Vec<RunningBuild> {
        self.board.running(builder)
    }

    /// Build `number` of `builder`, while it runs.
    pub fn running_build(&self, builder: &str, number: i64) -> Option<RunningBuild> {
        self.board.running_build(builder, number)
    }

    /// The last build of `builder` to end (since start, or as the history had it at start).
    /// Each builder's last build, as the history has it, put on the board at start (before the
    /// listeners serve anyone).
    pub async fn restore_last_builds(&self) -> Result<(), ControlError> {
        crate::master::executor::restore_last_builds(self.store.as_ref(), &self.board).await?;
        Ok(())
    }

    pub fn last_build(&self, builder: &str) -> Option<crate::status::LastBuild> {
        self.board.last(builder)
    }

    /// The number of the build of request `request_id`, once it has started.
    pub fn build_number_of_request(&self, request_id: i64) -> Option<i64> {
        self.board.number_of_request(request_id)
    }

    /// The connected slaves.
    pub fn slaves(&self) -> BTreeMap<String, SlaveInfo> {
        self.roster.snapshot()
    }

    /// The web session of that id, if it is live.
    pub async fn web_session(&self, id: &str) -> Option<Session> {
        self.sessions.get(id).await
    }

    /// Turns a one-time login token into a session id.
    pub async fn redeem_web_login(&self, token: &str) -> Option<String> {
        self.sessions.redeem(token).await
    }

    /// The IRC links: issued by `ssh master irc-link`, redeemed and ended by the bot.
    pub fn irc_links(&self) -> &IrcLinks {
        &self.irc_links
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

    async fn scheduler_input(&self, input: Input) {
        if self.inbox.send(Mail::Input(input)).await.is_err() {
            tracing::debug!("scheduler gone (master stopping)");
        }
    }

    pub fn is_paused(&self, slave: &str) -> bool {
        self.published.get().paused.iter().any(|name| name == slave)
    }

    /// Who holds and who waits for each lock.
    pub fn locks(&self) -> Vec<LockStatus> {
        let locks = self.published.get().locks;
        with_build_numbers(locks, |request_id| self.board.number_of_request(request_id))
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
        let durations = self.store.recent_success_durations(&name, 10).await?;
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
        let waits = self.published.get().lock_waits;
        Ok(ids
            .into_iter()
            .zip(estimates)
            .enumerate()
            .map(|(index, (request_id, estimate))| {
                let waiting_for_lock = waits.get(&request_id).cloned();
                // A free slot says nothing about when a lock is given back.
                let estimate = estimate.filter(|_| waiting_for_lock.is_none());
                QueueEstimate {
                    request_id,
                    position: index + 1,
                    starts_in: estimate.map(|(start, _)| start),
                    finishes_in: estimate
                        .filter(|_| expected.is_some())
                        .map(|(_, finish)| finish),
                    waiting_for_lock,
                }
            })
            .collect())
    }

    /// The ids of a job's requests for `builder`.
    pub async fn request_ids_of_job(&self, job_name: &str, builder: &str) -> Vec<i64> {
        let (job_name, builder) = (job_name.to_string(), builder.to_string());
        self.store
            .request_ids_of_job(&job_name, &builder)
            .await
            .unwrap_or_default()
    }

    /// The ids of a builder's queued requests, in the order they will be served.
    pub fn queued_ids(&self, builder: &str) -> Vec<i64> {
        self.published.queued(builder)
    }

    /// Records requests and queues them; tells the followers under their job's name.
    async fn enqueue(&self, requests: Vec<NewRequest>) -> Result<Vec<i64>, ControlError> {
        self.enqueuer.enqueue(requests).await
    }

    /// What each builder (all, or those named) is doing now.
    pub fn status(&self, only: &[String]) -> Result<StatusSnapshot, ControlError> {
        self.check_builders(only)?;
        let connected = self.roster.snapshot();
        let published = self.published.get();
        let queued = published.queued;
        let waits = published.lock_waits;
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
                let ids = queued.get(&builder.name).map_or(&[][..], Vec::as_slice);
                let waiting_for_lock = ids.iter().find_map(|id| waits.get(id)).cloned();
                let activity = if !running.is_empty() {
                    BuilderActivity::Building
                } else if waiting_for_lock.is_some() {
                    BuilderActivity::WaitingForLock
                } else if slaves.iter().any(|slave| slave.connected) {
                    BuilderActivity::Idle
                } else {
                    BuilderActivity::Offline
                };
                BuilderStatus {
                    name: builder.name.clone(),
                    activity,
                    running,
                    queued: ids.len(),
                    waiting_for_lock,
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
        let rows = self.store.newest_builds(&name, 20).await?;
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
        let rows = self.store.newest_builds(&name, 50).await?;
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
        let slave = link.name.clone();
        self.roster.connect(link);
        self.scheduler_input(input).await;
        if self.store.is_shared() {
            self.events
                .publish(crate::status::BuildEvent::SlaveConnected {
                    slave,
                    master: self.owner.name.clone(),
                });
        }
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

    /// Regression (issue 21): SSH showed raw database errors to users.
    #[test]
    fn a_history_error_renders_without_database_text() {
        let err = ControlError::History(StoreError::Sql(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(11),
            Some("database disk image is malformed: table requests".into()),
        )));
        let line = err.user_line();
        assert_eq!(line, "internal error (logged on the master)");
        assert!(!line.contains("requests") && !line.contains("malformed"));
        assert_eq!(err.exit_code(), 1);
        let refused = ControlError::NoSuchBuild {
            builder: "long".into(),
            number: 99,
        };
        assert_eq!(refused.user_line(), "long has no build #99");
    }

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
