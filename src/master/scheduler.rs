//! The scheduler: one task that owns the queue of build requests and which slave is busy, driven
//! by a closed set of [`SchedulerEvent`]s handled one at a time. Its decision — which queued
//! request goes to which free slave — is the pure function [`assign`], tested without sockets.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::master::build::{self, BuildOutcome};
use crate::master::history::{self, StoredRequest};
use crate::master::slaves::SlaveLink;
use crate::master::state::{BuildEvent, MasterState};
use crate::spool::watcher::SpooledJob;

/// Everything that changes what the scheduler should do.
pub enum SchedulerEvent {
    JobSpooled(SpooledJob),
    SlaveConnected(Arc<SlaveLink>),
    SlaveLost {
        name: String,
        conn_id: u64,
    },
    /// Drop the queued requests of a try job (its submitter gave up waiting).
    CancelJob {
        job_name: String,
        by: String,
    },
    BuildFinished {
        slave: String,
        outcome: BuildOutcome,
    },
}

/// How long a slave has to answer the ping before a build.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Picks (request id, slave) pairs: each queued request, oldest first, goes to a slave of its
/// builder's pool with a free slot (the one with most free slots, then pool order).
pub fn assign(
    queue: &[(i64, String)],
    pools: &HashMap<String, Vec<String>>,
    free_slots: &BTreeMap<String, usize>,
) -> Vec<(i64, String)> {
    let mut free = free_slots.clone();
    let mut assignments = Vec::new();
    for (request_id, builder) in queue {
        let Some(pool) = pools.get(builder) else {
            continue;
        };
        let best = pool
            .iter()
            .filter(|slave| free.get(*slave).copied().unwrap_or(0) > 0)
            .max_by_key(|slave| {
                (
                    free.get(*slave).copied().unwrap_or(0),
                    std::cmp::Reverse(pool.iter().position(|s| s == *slave)),
                )
            });
        if let Some(slave) = best {
            if let Some(slots) = free.get_mut(slave) {
                *slots -= 1;
            }
            assignments.push((*request_id, slave.clone()));
        }
    }
    assignments
}

struct Scheduler {
    state: Arc<MasterState>,
    queue: VecDeque<StoredRequest>,
    slaves: BTreeMap<String, Arc<SlaveLink>>,
    busy: HashMap<String, usize>,
    pools: HashMap<String, Vec<String>>,
    builds: TaskTracker,
    shutdown: CancellationToken,
}

/// Runs the scheduler until `shutdown`; requests left pending in the history at start are
/// queued first.
pub async fn run(
    state: Arc<MasterState>,
    mut events: mpsc::Receiver<SchedulerEvent>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let recovered = state
        .history
        .run(|connection| {
            let interrupted = history::recover_interrupted_builds(connection)?;
            Ok((interrupted, history::pending_requests(connection)?))
        })
        .await?;
    let (interrupted, pending) = recovered;
    if interrupted > 0 {
        tracing::warn!(
            builds = interrupted,
            "builds interrupted by a master restart are marked exception and queued again"
        );
    }
    let pools = state
        .config
        .builders
        .iter()
        .map(|builder| (builder.name.clone(), builder.slaves.clone()))
        .collect();
    let mut scheduler = Scheduler {
        state,
        queue: pending.into(),
        slaves: BTreeMap::new(),
        busy: HashMap::new(),
        pools,
        builds: TaskTracker::new(),
        shutdown: shutdown.clone(),
    };
    scheduler.publish_queue();
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            event = events.recv() => match event {
                Some(event) => event,
                None => break,
            },
        };
        scheduler.handle(event).await;
        scheduler.dispatch();
    }
    scheduler.builds.close();
    // Builds see the shutdown and end; what they leave unfinished is recovered at next start.
    let _ = tokio::time::timeout(Duration::from_secs(1), scheduler.builds.wait()).await;
    Ok(())
}

impl Scheduler {
    async fn handle(&mut self, event: SchedulerEvent) {
        match event {
            SchedulerEvent::JobSpooled(spooled) => self.record_job(spooled).await,
            SchedulerEvent::SlaveConnected(link) => {
                if let Some(old) = self.slaves.insert(link.name.clone(), Arc::clone(&link)) {
                    old.close();
                }
            }
            SchedulerEvent::SlaveLost { name, conn_id } => {
                if self
                    .slaves
                    .get(&name)
                    .is_some_and(|link| link.conn_id == conn_id)
                {
                    self.slaves.remove(&name);
                }
            }
            SchedulerEvent::CancelJob { job_name, by } => {
                let cancelled: Vec<i64> = self
                    .queue
                    .iter()
                    .filter(|request| request.job_name == job_name)
                    .map(|request| request.id)
                    .collect();
                self.queue.retain(|request| request.job_name != job_name);
                if !cancelled.is_empty() {
                    tracing::info!(job = %job_name, %by, requests = cancelled.len(), "queued requests cancelled");
                    let recorded = self
                        .state
                        .history
                        .run(move |connection| {
                            for id in cancelled {
                                history::set_request_state(connection, id, "cancelled")?;
                            }
                            Ok(())
                        })
                        .await;
                    if let Err(err) = recorded {
                        tracing::error!("cannot record cancelled requests: {err}");
                    }
                }
            }
            SchedulerEvent::BuildFinished { slave, outcome } => {
                if let Some(busy) = self.busy.get_mut(&slave) {
                    *busy = busy.saturating_sub(1);
                }
                if let Some(request) = outcome.requeue {
                    // Retried builds go to the front: they were first in line already.
                    self.queue.push_front(request);
                }
                if let Some(link) = outcome.unresponsive_slave {
                    link.close();
                    if self
                        .slaves
                        .get(&link.name)
                        .is_some_and(|known| known.conn_id == link.conn_id)
                    {
                        self.slaves.remove(&link.name);
                    }
                }
            }
        }
        self.publish_queue();
    }

    /// Records a spooled job's requests durably (after which the spool file is only an
    /// archive) and queues them.
    async fn record_job(&mut self, spooled: SpooledJob) {
        let submitted_at = history::now();
        let requests: Vec<StoredRequest> = spooled
            .builders
            .iter()
            .map(|builder| StoredRequest {
                id: 0,
                job_name: spooled.name.clone(),
                jobid: spooled.job.jobid.clone(),
                builder: builder.clone(),
                who: spooled.job.who.clone(),
                comment: spooled.job.comment.clone(),
                repository: spooled.job.repository.clone(),
                branch: spooled.job.branch.clone(),
                baserev: spooled.job.baserev.clone(),
                patch: spooled.job.patch.clone(),
                patch_level: spooled.job.patch_level,
                submitted_at,
                properties: spooled.job.properties.clone(),
            })
            .collect();
        let to_store = requests.clone();
        let stored = self
            .state
            .history
            .run(move |connection| history::insert_requests(connection, &to_store))
            .await;
        match stored {
            Ok(ids) => {
                for (mut request, id) in requests.into_iter().zip(ids) {
                    request.id = id;
                    if !self.queue.iter().any(|queued| queued.id == id) {
                        self.queue.push_back(request);
                    }
                }
                self.state.publish(BuildEvent::RequestsQueued {
                    job_name: spooled.name,
                    builders: spooled.builders,
                });
            }
            Err(err) => {
                tracing::error!(job = %spooled.name, "cannot record the job's requests: {err}")
            }
        }
    }

    fn publish_queue(&self) {
        let mut queued: BTreeMap<String, usize> = BTreeMap::new();
        for request in &self.queue {
            *queued.entry(request.builder.clone()).or_default() += 1;
        }
        self.state.set_queued(queued);
    }

    fn dispatch(&mut self) {
        let free: BTreeMap<String, usize> = self
            .slaves
            .iter()
            .map(|(name, link)| {
                let capacity = self
                    .state
                    .config
                    .slave(name)
                    .map_or(1, |slave| slave.max_builds);
                let busy = self.busy.get(name).copied().unwrap_or(0);
                let _ = link;
                (name.clone(), capacity.saturating_sub(busy))
            })
            .collect();
        let queue: Vec<(i64, String)> = self
            .queue
            .iter()
            .map(|r| (r.id, r.builder.clone()))
            .collect();
        for (request_id, slave) in assign(&queue, &self.pools, &free) {
            let Some(position) = self.queue.iter().position(|r| r.id == request_id) else {
                continue;
            };
            let Some(request) = self.queue.remove(position) else {
                continue;
            };
            let Some(link) = self.slaves.get(&slave).cloned() else {
                self.queue.insert(position, request);
                continue;
            };
            *self.busy.entry(slave.clone()).or_default() += 1;
            let state = Arc::clone(&self.state);
            let shutdown = self.shutdown.clone();
            self.builds.spawn(async move {
                let outcome =
                    build::run(&state, request, Arc::clone(&link), PING_TIMEOUT, shutdown).await;
                state
                    .scheduler_event(SchedulerEvent::BuildFinished {
                        slave: link.name.clone(),
                        outcome,
                    })
                    .await;
            });
        }
        self.publish_queue();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pools() -> HashMap<String, Vec<String>> {
        HashMap::from([
            (
                "linux".to_string(),
                vec!["l1".to_string(), "l2".to_string()],
            ),
            ("mac".to_string(), vec!["m1".to_string()]),
        ])
    }

    #[test]
    fn oldest_requests_go_to_free_pool_members() {
        let queue = vec![
            (1, "linux".to_string()),
            (2, "linux".to_string()),
            (3, "linux".to_string()),
            (4, "mac".to_string()),
        ];
        let free = BTreeMap::from([
            ("l1".to_string(), 1),
            ("l2".to_string(), 1),
            ("m1".to_string(), 0),
        ]);
        assert_eq!(
            assign(&queue, &pools(), &free),
            vec![(1, "l1".to_string()), (2, "l2".to_string())]
        );
    }

    #[test]
    fn a_slave_with_more_free_slots_is_preferred_and_unknown_builders_wait() {
        let queue = vec![
            (1, "linux".to_string()),
            (2, "gone".to_string()),
            (3, "mac".to_string()),
        ];
        let free = BTreeMap::from([
            ("l1".to_string(), 1),
            ("l2".to_string(), 2),
            ("m1".to_string(), 1),
        ]);
        assert_eq!(
            assign(&queue, &pools(), &free),
            vec![(1, "l2".to_string()), (3, "m1".to_string())]
        );
    }

    #[test]
    fn nothing_connected_means_nothing_assigned() {
        let queue = vec![(1, "linux".to_string())];
        assert!(assign(&queue, &pools(), &BTreeMap::new()).is_empty());
    }
}
