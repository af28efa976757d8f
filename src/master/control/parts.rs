//! The narrow handles that the master core's workers get instead of the whole [`Control`]:
//! each names only the parts its worker touches. The schedulers task follows events and queues
//! requests; a poller records changes; the spool intake records claimed jobs. (A build's handle
//! is `build::BuildParts`, the executor's `executor::ExecutorParts`.) Front ends get none of these: they call `Control`'s actions and reads.
//!
//! [`Control`]: super::Control

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use crate::change::ChangeSpec;
use crate::master::config::Config;
use crate::master::control::ControlError;
use crate::master::events::{EventLog, Follower};
use crate::master::executor::Mail;
use crate::master::reconfig::ConfigView;
use crate::master::store::{NewRequest, Recorded, SharedStore, StoredChange};
use crate::status::BuildEvent;

/// Records requests and hands them to the executor: the one way into the queue, for try jobs,
/// forced builds, rebuilds and the schedulers.
#[derive(Clone)]
pub struct Enqueuer {
    pub(super) store: SharedStore,
    pub(super) events: Arc<EventLog>,
    pub(super) inbox: mpsc::Sender<Mail>,
}

impl Enqueuer {
    /// Records requests and queues them; tells the followers under their job's name.
    pub async fn enqueue(&self, requests: Vec<NewRequest>) -> Result<Vec<i64>, ControlError> {
        let to_store = requests.clone();
        let ids = self.store.record_requests(to_store).await?;
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
            .map(|(request, id)| request.stored(*id))
            .collect();
        // Announced once the queue has them, so a follower asking for its place finds it.
        let (applied, done) = oneshot::channel();
        if self
            .inbox
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
}

/// Records a change, announces it and hands it to the schedulers.
#[derive(Clone)]
pub struct ChangeRecorder {
    pub(super) store: SharedStore,
    pub(super) events: Arc<EventLog>,
    pub(super) changes: mpsc::Sender<StoredChange>,
}

impl ChangeRecorder {
    pub async fn record(
        &self,
        change: ChangeSpec,
        sent_by: &str,
    ) -> Result<StoredChange, ControlError> {
        let sent_by = sent_by.to_string();
        let recorded = self.store.record_change(&change, &sent_by).await?;
        // The hook and a poller on one repository both bring a revision: the change recorded
        // first is the answer, and nothing is built again.
        let stored = match recorded {
            Recorded::New(stored) => stored,
            Recorded::Known(known) => {
                tracing::info!(change = known.id, branch = %known.branch, revision = %known.revision, "change already recorded");
                return Ok(known);
            }
        };
        tracing::info!(change = stored.id, branch = %stored.branch, revision = %stored.revision, by = %stored.sent_by, "change recorded");
        self.events.publish(BuildEvent::ChangeAdded {
            change_id: stored.id,
            repository: stored.repository.clone(),
            branch: stored.branch.clone(),
            revision: stored.revision.clone(),
            who: stored.who.clone(),
        });
        // With a shared store every master's schedulers take changes from the event log (this
        // one's included), so only a master alone hands them over directly.
        if !self.store.is_shared() && self.changes.send(stored.clone()).await.is_err() {
            tracing::debug!("schedulers gone (master stopping)");
        }
        Ok(stored)
    }
}

/// What the schedulers task touches: the config, the event log (build results) and the queue.
pub struct SchedulersHandle {
    /// Whether this master fires the schedulers (one master of a cluster does).
    pub(super) leading: watch::Receiver<bool>,
    pub(super) store: SharedStore,
    pub(super) config: ConfigView,
    pub(super) events: Arc<EventLog>,
    pub(super) enqueuer: Enqueuer,
}

impl SchedulersHandle {
    pub fn config(&self) -> Arc<Config> {
        self.config.current()
    }

    pub fn config_changes(&self) -> watch::Receiver<Arc<Config>> {
        self.config.changes()
    }

    pub fn follow(&self) -> Follower {
        self.events.follow()
    }

    /// Whether this master fires the schedulers now.
    pub fn leads(&self) -> bool {
        *self.leading.borrow()
    }

    /// Whether other masters record changes too: then every change comes through the event
    /// log, the local ones included.
    pub fn shared(&self) -> bool {
        self.store.is_shared()
    }

    /// A recorded change, by id.
    pub async fn change(&self, id: i64) -> Result<Option<StoredChange>, ControlError> {
        Ok(self.store.change(id).await?)
    }

    pub async fn enqueue(&self, requests: Vec<NewRequest>) -> Result<Vec<i64>, ControlError> {
        self.enqueuer.enqueue(requests).await
    }
}

/// What a change poller touches: the heads it saw (in the history) and the change recorder.
pub struct PollerHandle {
    pub(crate) store: SharedStore,
    pub(super) recorder: ChangeRecorder,
    /// Where the poller keeps its mirrors (`DIR/gitpoll/`), bound at start.
    pub(super) master_dir: std::path::PathBuf,
}

impl PollerHandle {
    pub fn master_dir(&self) -> &std::path::Path {
        &self.master_dir
    }

    /// A change the poller found in `repository`.
    pub async fn polled_change(&self, change: ChangeSpec) -> Result<StoredChange, ControlError> {
        let sent_by = format!("poller {}", change.repository);
        self.recorder.record(change, &sent_by).await
    }
}

/// What the spool intake touches: which jobs are recorded, the config (try builders, size
/// limit) and the queue.
pub struct IntakeHandle {
    pub(crate) store: SharedStore,
    pub(super) config: ConfigView,
    pub(super) enqueuer: Enqueuer,
}

impl IntakeHandle {
    pub fn config(&self) -> Arc<Config> {
        self.config.current()
    }

    pub async fn enqueue(&self, requests: Vec<NewRequest>) -> Result<Vec<i64>, ControlError> {
        self.enqueuer.enqueue(requests).await
    }
}

/// What the merge queue's driver touches (`master::land::driver`): the config, the store
/// (the queue), the queue of builds and the event log.
pub struct LandHandle {
    pub store: SharedStore,
    pub(super) config: ConfigView,
    pub enqueuer: Enqueuer,
    pub events: Arc<EventLog>,
    pub(super) board: Arc<crate::master::board::Board>,
    pub(super) inbox: mpsc::Sender<Mail>,
}

impl LandHandle {
    /// Stops a land test's builds and drops its queued requests (a series evicted from a
    /// speculative test, or taken out of the queue).
    pub async fn cancel_job(&self, job_name: &str, by: &str, reason: &str) {
        let stopped = self.board.stop_job(job_name, by, reason);
        let input = crate::master::scheduler::Input::CancelJob {
            job_name: job_name.to_string(),
            by: by.to_string(),
        };
        if self.inbox.send(Mail::Input(input)).await.is_err() {
            tracing::debug!("scheduler gone (master stopping)");
        }
        tracing::info!(job = %job_name, stopped, %by, "land test cancelled");
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.current()
    }

    pub fn follow(&self) -> Follower {
        self.events.follow()
    }
}
