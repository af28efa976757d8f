//! Runs the scheduler: one task that owns the [`Queue`], feeds it one [`Input`] at a time, and
//! performs the [`Effect`]s it decides: starting builds on the slaves the roster links to,
//! recording cancelled requests, closing unusable connections. All decisions are in
//! `scheduler`; this is the thin I/O around them.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::master::board::Board;
use crate::master::build;
use crate::master::build::{BuildParts, SchedulerPort};
use crate::master::config::Config;
use crate::master::events::EventLog;
use crate::master::locks::{LockTable, LockUse};
use crate::master::metrics::Metrics;
use crate::master::reconfig::ConfigView;
use crate::master::roster::Roster;
use crate::master::scheduler::{BuilderPolicy, Effect, Input, Queue};
use crate::master::store::{SharedStore, Store, StoreError, StoredRequest};
use crate::status::BuildEvent;

/// The executor's inbox: what the rest of the master asks of the scheduler. Most letters are
/// a plain [`Input`] for the queue; the others carry the one answer their sender waits for.
#[derive(Debug)]
pub enum Mail {
    Input(Input),
    /// Recorded requests to queue; `applied` fires once the queue (and what it publishes) has
    /// them.
    Enqueue {
        requests: Vec<StoredRequest>,
        applied: oneshot::Sender<()>,
    },
    /// Drop a queued request; the answer says whether it was still queued.
    CancelRequest {
        builder: String,
        request_id: i64,
        by: String,
        reply: oneshot::Sender<bool>,
    },
    /// A running build's step wants its locks; `granted` fires when it has them.
    StepLocks {
        request_id: i64,
        step: String,
        slave: String,
        uses: Vec<LockUse>,
        granted: oneshot::Sender<()>,
    },
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

/// The executor's end of [`SchedulerPort`]: what builds send back lands in the inbox.
pub struct Port(pub mpsc::Sender<Mail>);

impl SchedulerPort for Port {
    fn input(&self, input: Input) -> futures_util::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            if self.0.send(Mail::Input(input)).await.is_err() {
                tracing::debug!("scheduler gone (master stopping)");
            }
        })
    }

    fn step_locks(
        &self,
        request_id: i64,
        step: String,
        slave: String,
        uses: Vec<LockUse>,
    ) -> futures_util::future::BoxFuture<'_, Option<()>> {
        Box::pin(async move {
            let (granted, answer) = oneshot::channel();
            let mail = Mail::StepLocks {
                request_id,
                step,
                slave,
                uses,
                granted,
            };
            self.0.send(mail).await.ok()?;
            answer.await.ok()
        })
    }
}

/// What the scheduler executor touches: what builds touch (it starts them), the roster (to
/// find a slave's link, to close one) and what it publishes. Not the whole control layer.
pub struct ExecutorParts {
    pub(crate) config: ConfigView,
    pub(crate) store: SharedStore,
    pub(crate) events: Arc<EventLog>,
    pub(crate) board: Arc<Board>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) roster: Arc<Roster>,
    pub(crate) published: Arc<Published>,
    pub(crate) build: Arc<BuildParts>,
}

impl ExecutorParts {
    pub fn config(&self) -> Arc<Config> {
        self.config.current()
    }

    pub fn config_changes(&self) -> tokio::sync::watch::Receiver<Arc<Config>> {
        self.config.changes()
    }
}

/// What the executor publishes after each input for readers outside it (the status, the queue
/// pages, the locks page): a snapshot, replaced whole, so a reader never sees half an update.
#[derive(Debug, Default)]
pub struct Published {
    view: std::sync::Mutex<PublishedView>,
}

#[derive(Debug, Clone, Default)]
pub struct PublishedView {
    /// Requests waiting per builder, in the order they will be served.
    pub queued: std::collections::BTreeMap<String, Vec<i64>>,
    /// The queued requests a build-level lock keeps from starting, with that lock (the queue
    /// owns the fact).
    pub lock_waits: std::collections::BTreeMap<i64, String>,
    /// The paused slaves, sorted.
    pub paused: Vec<String>,
    /// The locks, with their holders and waiters.
    pub locks: Vec<LockStatus>,
}

impl Published {
    pub fn get(&self) -> PublishedView {
        crate::master::lock(&self.view).clone()
    }

    pub fn queued(&self, builder: &str) -> Vec<i64> {
        crate::master::lock(&self.view)
            .queued
            .get(builder)
            .cloned()
            .unwrap_or_default()
    }

    fn set(&self, view: PublishedView) {
        *crate::master::lock(&self.view) = view;
    }
}

/// How long a slave has to answer the ping before a build.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// How long running builds get to end when the master stops; what they leave unfinished is
/// recovered at the next start.
const BUILDS_GRACE: Duration = Duration::from_secs(1);

/// Runs the scheduler until `shutdown`; requests left pending in the history at start are
/// queued first.
pub async fn run(
    control: ExecutorParts,
    mut inputs: mpsc::Receiver<Mail>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let control = Arc::new(control);
    let interrupted = control
        .store
        .recover_interrupted_builds(&control.build.owner)
        .await?;
    let pending = control.store.pending_requests().await?;
    if interrupted > 0 {
        // Those builds ended just now, as exceptions: they are their builders' last.
        restore_last_builds(control.store.as_ref(), &control.board).await?;
        tracing::warn!(
            builds = interrupted,
            "builds interrupted by a master restart are marked exception and queued again"
        );
    }
    let mut config_changes = control.config_changes();
    let config = control.config();
    // Nothing held survives a restart: the table starts empty.
    let locks = LockTable::new(config.locks.iter().cloned());
    let mut queue = Queue::new(policies(&config), locks, rand::random());
    let mut lock_times = LockTimes::default();
    // The locks exist from the start, free, before any input arrives.
    control.published.set(PublishedView {
        locks: lock_times.view(&queue, &control),
        ..PublishedView::default()
    });
    let mut step_grants: HashMap<(i64, String), oneshot::Sender<()>> = HashMap::new();
    let mut enqueued: Option<oneshot::Sender<()>> = None;
    let builds = TaskTracker::new();
    // Inputs that come from performing effects, handled before the next one from outside.
    let mut follow_ups = VecDeque::from([Input::Requests(pending)]);
    // Requests recorded, re-queued or dropped by other masters of the cluster: the queue takes
    // the ones it does not know; one claimed elsewhere first is dropped when its start finds
    // it claimed (the store decides who builds it).
    let mut notices = control.store.request_notices();
    loop {
        let (input, reply) = match follow_ups.pop_front() {
            Some(input) => (input, None),
            None => tokio::select! {
                _ = shutdown.cancelled() => break,
                mail = inputs.recv() => match mail {
                    Some(Mail::Input(input)) => (input, None),
                    Some(Mail::Enqueue { requests, applied }) => {
                        enqueued = Some(applied);
                        (Input::Requests(requests), None)
                    }
                    Some(Mail::CancelRequest { builder, request_id, by, reply }) => {
                        (Input::CancelRequest { builder, request_id, by }, Some((request_id, reply)))
                    }
                    Some(Mail::StepLocks { request_id, step, slave, uses, granted }) => {
                        step_grants.insert((request_id, step.clone()), granted);
                        (Input::StepLocks { request_id, step, slave, uses }, None)
                    }
                    None => break,
                },
                noticed = async {
                    match notices.as_mut() {
                        Some(notices) => notices.changed().await,
                        None => std::future::pending().await,
                    }
                } => match noticed {
                    Ok(()) => match control.store.pending_requests().await {
                        Ok(pending) => (Input::Requests(pending), None),
                        Err(err) => {
                            tracing::warn!("cannot read the cluster's waiting requests: {err}");
                            continue;
                        }
                    },
                    Err(_) => {
                        notices = None;
                        continue;
                    }
                },
                changed = config_changes.changed() => match changed {
                    Ok(()) => {
                        let config = config_changes.borrow_and_update().clone();
                        (reconfigure_input(&config), None)
                    }
                    // The control layer is gone: the master is stopping.
                    Err(_) => break,
                },
            },
        };
        let effects = queue.apply(input);
        if let Some((request_id, reply)) = reply {
            let cancelled = effects.iter().any(|effect| {
                matches!(effect, Effect::RecordCancelled { requests, .. }
                    if requests.iter().any(|(id, ..)| *id == request_id))
            });
            // The asker may have given up; the cancellation stands anyway.
            let _ = reply.send(cancelled);
        }
        for effect in effects {
            match effect {
                Effect::StepLocksGranted { request_id, step } => {
                    if let Some(granted) = step_grants.remove(&(request_id, step)) {
                        // A build that stopped waiting releases the step's locks itself.
                        let _ = granted.send(());
                    }
                }
                Effect::WaitingForLock {
                    job_name,
                    builder,
                    lock,
                    ..
                } => {
                    control.metrics.lock_wait(&lock);
                    control.events.publish(BuildEvent::WaitingForLock {
                        job_name,
                        builder,
                        number: None,
                        step: None,
                        lock,
                    });
                }
                effect => {
                    if let Some(follow_up) = perform(&control, effect, &builds, &shutdown) {
                        follow_ups.push_back(follow_up);
                    }
                }
            }
        }
        step_grants.retain(|_, granted| !granted.is_closed());
        control.metrics.set_queues(queue.queue_gauges());
        let mut paused: Vec<String> = queue.paused().iter().cloned().collect();
        paused.sort();
        control.published.set(PublishedView {
            queued: queue.queued_per_builder(),
            lock_waits: queue.waiting_for_lock(),
            paused,
            locks: lock_times.view(&queue, &control),
        });
        if let Some(applied) = enqueued.take() {
            // The enqueuer may have gone; the requests are queued all the same.
            let _ = applied.send(());
        }
    }
    builds.close();
    let _ = tokio::time::timeout(BUILDS_GRACE, builds.wait()).await;
    Ok(())
}

/// Puts each builder's last finished build, as the history has it, on the board: at start
/// (by the master, before the listeners serve), and again once builds a
/// restart interrupted have been ended as exceptions.
pub(crate) async fn restore_last_builds(
    records: &dyn Store,
    board: &crate::master::board::Board,
) -> Result<(), StoreError> {
    let last_builds = records.last_finished_builds().await?;
    for (builder, last) in last_builds {
        board.restore_last(&builder, last);
    }
    Ok(())
}

/// Each builder's scheduling policy, from the config.
fn policies(config: &Config) -> HashMap<String, BuilderPolicy> {
    config
        .builders
        .iter()
        .map(|builder| {
            let policy = BuilderPolicy {
                pool: builder.slaves.clone(),
                priority: builder.priority,
                max_concurrent: builder.max_concurrent,
                next_slave: builder.next_slave,
                locks: builder.locks.clone(),
                step_locks: builder
                    .steps
                    .iter()
                    .flat_map(|step| step.locks.iter().map(|lock_use| lock_use.lock.clone()))
                    .collect(),
                collapse: builder.collapse_requests,
                keeps_patches_off_slaves: builder.trusted && !builder.patch_builds_on_slaves,
            };
            (builder.name.clone(), policy)
        })
        .collect()
}

/// The scheduler's part of a new config.
fn reconfigure_input(config: &Config) -> Input {
    Input::Reconfigure {
        builders: policies(config),
        slaves: config
            .slaves
            .iter()
            .map(|slave| slave.name.clone())
            .collect(),
        locks: config.locks.clone(),
    }
}

fn perform(
    control: &Arc<ExecutorParts>,
    effect: Effect,
    builds: &TaskTracker,
    shutdown: &CancellationToken,
) -> Option<Input> {
    match effect {
        Effect::StartBuild {
            request,
            slave,
            conn_id,
        } => {
            let Some(link) = control.roster.link(&slave, conn_id) else {
                // Gone between the decision and now: the request goes back to the front.
                return Some(Input::BuildEnded {
                    request_id: request.id,
                    retry: true,
                    slave_unusable: true,
                });
            };
            let parts = Arc::clone(&control.build);
            let shutdown = shutdown.clone();
            builds.spawn(async move {
                let request_id = request.id;
                let hold_limit =
                    crate::master::quotas::lock_hold_limit(&parts.config(), &request.builder);
                let build = build::run(&parts, *request, link, PING_TIMEOUT, shutdown);
                let outcome = crate::master::quotas::within_lock_hold(build, hold_limit, || {
                    parts.board.stop_request(
                        request_id,
                        "the master",
                        "it held its locks longer than [limits] max_lock_hold",
                    )
                })
                .await;
                parts
                    .scheduler_input(Input::BuildEnded {
                        request_id,
                        retry: outcome.retry,
                        slave_unusable: outcome.slave_unusable,
                    })
                    .await;
            });
            None
        }
        Effect::RecordCancelled { by, requests } => {
            tracing::info!(%by, requests = ?requests, "queued requests cancelled");
            builds.spawn(drop_requests(Arc::clone(control), requests, by, None));
            None
        }
        Effect::Collapsed {
            into,
            requests,
            change_ids,
        } => {
            tracing::info!(into, merged = ?requests, "queued requests collapsed");
            let by = format!("collapsed into request {into}");
            builds.spawn(drop_requests(
                Arc::clone(control),
                requests,
                by,
                Some((into, change_ids)),
            ));
            None
        }
        Effect::CloseSlave { name, conn_id } => {
            control.roster.close(&name, conn_id);
            None
        }
        // Answered in the loop, which holds the waiting steps' channels.
        Effect::StepLocksGranted { .. } | Effect::WaitingForLock { .. } => None,
    }
}

/// Records queued requests as cancelled (moving their changes to the request they collapsed
/// into, if any), then tells the followers, each with who or what dropped it.
async fn drop_requests(
    control: Arc<ExecutorParts>,
    requests: Vec<(i64, String, String)>,
    by: String,
    collapsed_into: Option<(i64, Vec<i64>)>,
) {
    let ids: Vec<i64> = requests.iter().map(|(id, ..)| *id).collect();
    let recorded = control.store.cancel_requests(ids, collapsed_into).await;
    if let Err(err) = recorded {
        tracing::error!("cannot record dropped requests: {err}");
    }
    for (request_id, job_name, builder) in requests {
        control.events.publish(BuildEvent::RequestCancelled {
            job_name,
            builder,
            request_id,
            by: by.clone(),
        });
    }
}

/// When each lock hold was first seen, so pages can say "held since 2m10s".
#[derive(Default)]
struct LockTimes {
    since: HashMap<(i64, Option<String>, String), f64>,
}

impl LockTimes {
    fn view(&mut self, queue: &Queue, control: &ExecutorParts) -> Vec<LockStatus> {
        let now = crate::status::unix_now();
        let holds = queue.locks().holds();
        self.since.retain(|(request_id, step, lock), _| {
            holds.iter().any(|hold| {
                hold.holder.request_id == *request_id
                    && &hold.holder.step == step
                    && &hold.instance.lock == lock
            })
        });
        let waiters = queue.lock_waiters();
        let mut defs: Vec<_> = queue.locks().defs().collect();
        defs.sort_by(|a, b| a.name.cmp(&b.name));
        defs.into_iter()
            .map(|def| LockStatus {
                name: def.name.clone(),
                kind: def.kind,
                max_count: def.max_count,
                holders: holds
                    .iter()
                    .filter(|hold| hold.instance.lock == def.name)
                    .map(|hold| {
                        let key = (
                            hold.holder.request_id,
                            hold.holder.step.clone(),
                            def.name.clone(),
                        );
                        let since = *self.since.entry(key).or_insert(now);
                        let (builder, slave) = queue
                            .running_on(hold.holder.request_id)
                            .map(|(builder, slave)| (builder.to_string(), Some(slave.to_string())))
                            .unwrap_or_default();
                        LockHolderView {
                            request_id: hold.holder.request_id,
                            number: control.board.number_of_request(hold.holder.request_id),
                            builder,
                            slave: hold.instance.slave.clone().or(slave),
                            step: hold.holder.step.clone(),
                            access: hold.access,
                            since,
                        }
                    })
                    .collect(),
                waiters: waiters
                    .iter()
                    .filter(|(_, lock, _)| lock == &def.name)
                    .map(|(request_id, _, step)| LockWaiterView {
                        request_id: *request_id,
                        builder: queue.builder_of(*request_id).unwrap_or_default(),
                        step: step.clone(),
                    })
                    .collect(),
            })
            .collect()
    }
}
