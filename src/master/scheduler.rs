//! The scheduler's decisions, as a pure state machine: [`Queue::apply`] takes one [`Input`] and
//! returns the [`Effect`]s to perform (start this build on that slave, record these requests as
//! cancelled, close that connection). No I/O, no clock, no channels: every transition is a unit
//! test. `master::executor` runs it and performs the effects.
//!
//! The queue owns which requests wait and which slave slot each running request occupies; the
//! roster owns the connections themselves, the board the builds' progress.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use crate::master::history::StoredRequest;
use crate::status::RequestKind;

/// Everything that changes what the scheduler should do.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Requests durably recorded (new, recovered at start, or from any scheduler kind).
    Requests(Vec<StoredRequest>),
    SlaveConnected {
        name: String,
        conn_id: u64,
        /// How many builds it may run at once.
        capacity: usize,
    },
    SlaveLost {
        name: String,
        conn_id: u64,
    },
    /// Drop the queued requests of a try job (its submitter gave up waiting).
    CancelJob {
        job_name: String,
        by: String,
    },
    /// Drop one queued request of a builder.
    CancelRequest {
        builder: String,
        request_id: i64,
        by: String,
    },
    /// A build (or the attempt to start it) ended.
    BuildEnded {
        request_id: i64,
        /// Queue the request again, at the front (its slave was lost).
        retry: bool,
        /// The slave's connection is not usable (no pong, or gone before the start).
        slave_unusable: bool,
    },
}

/// What the executor must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    StartBuild {
        request: Box<StoredRequest>,
        slave: String,
        conn_id: u64,
    },
    /// Record these requests as cancelled and say so.
    RecordCancelled {
        by: String,
        /// (request id, job name, builder) of each.
        requests: Vec<(i64, String, String)>,
    },
    CloseSlave {
        name: String,
        conn_id: u64,
    },
    /// Queued requests were merged into request `into`, which builds all their changes.
    Collapsed {
        into: i64,
        /// (request id, job name, builder) of each merged request.
        requests: Vec<(i64, String, String)>,
        change_ids: Vec<i64>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    conn_id: u64,
    capacity: usize,
}

#[derive(Debug, Clone, PartialEq)]
struct Assigned {
    request: StoredRequest,
    slave: String,
}

/// The scheduler's state.
#[derive(Debug, Default)]
pub struct Queue {
    /// Builder name → the slaves of its pool, in configuration order.
    pools: HashMap<String, Vec<String>>,
    /// Builders whose queued scheduled requests for one branch collapse into the newest.
    collapsing: HashSet<String>,
    pending: VecDeque<StoredRequest>,
    running: BTreeMap<i64, Assigned>,
    slaves: BTreeMap<String, Slot>,
}

impl Queue {
    pub fn new(pools: HashMap<String, Vec<String>>, collapsing: HashSet<String>) -> Queue {
        Queue {
            pools,
            collapsing,
            ..Queue::default()
        }
    }

    /// Handles one input, then hands out whatever can start now.
    pub fn apply(&mut self, input: Input) -> Vec<Effect> {
        let mut effects = Vec::new();
        match input {
            Input::Requests(requests) => {
                for mut request in requests {
                    let known = self.running.contains_key(&request.id)
                        || self.pending.iter().any(|queued| queued.id == request.id);
                    if known {
                        continue;
                    }
                    if let Some(collapsed) = self.collapse_into(&mut request) {
                        effects.push(collapsed);
                    }
                    self.pending.push_back(request);
                }
            }
            Input::SlaveConnected {
                name,
                conn_id,
                capacity,
            } => {
                // A replaced connection's builds end through their own BuildEnded.
                self.slaves.insert(name, Slot { conn_id, capacity });
            }
            Input::SlaveLost { name, conn_id } => self.forget_slave(&name, conn_id),
            Input::CancelJob { job_name, by } => {
                effects.extend(self.cancel(by, |request| request.job_name == job_name));
            }
            Input::CancelRequest {
                builder,
                request_id,
                by,
            } => {
                effects.extend(self.cancel(by, |request| {
                    request.id == request_id && request.builder == builder
                }));
            }
            Input::BuildEnded {
                request_id,
                retry,
                slave_unusable,
            } => {
                if let Some(assigned) = self.running.remove(&request_id) {
                    if slave_unusable && let Some(slot) = self.slaves.get(&assigned.slave) {
                        effects.push(Effect::CloseSlave {
                            name: assigned.slave.clone(),
                            conn_id: slot.conn_id,
                        });
                        self.slaves.remove(&assigned.slave);
                    }
                    if retry {
                        // Retried requests go to the front: they were first in line already.
                        self.pending.push_front(assigned.request);
                    }
                }
            }
        }
        effects.extend(self.dispatch());
        effects
    }

    /// For a builder that collapses requests: the queued scheduled requests for the same branch
    /// are dropped in favour of `newer`, which takes over their changes.
    fn collapse_into(&mut self, newer: &mut StoredRequest) -> Option<Effect> {
        if newer.kind != RequestKind::Scheduled || !self.collapsing.contains(&newer.builder) {
            return None;
        }
        let same = |queued: &StoredRequest| {
            queued.kind == RequestKind::Scheduled
                && queued.builder == newer.builder
                && queued.branch == newer.branch
        };
        let older: Vec<StoredRequest> = self.pending.iter().filter(|q| same(q)).cloned().collect();
        if older.is_empty() {
            return None;
        }
        self.pending.retain(|queued| !same(queued));
        let mut change_ids: Vec<i64> = older
            .iter()
            .flat_map(|request| request.change_ids.iter().copied())
            .collect();
        change_ids.extend(newer.change_ids.iter().copied());
        change_ids.sort_unstable();
        change_ids.dedup();
        newer.change_ids = change_ids.clone();
        Some(Effect::Collapsed {
            into: newer.id,
            requests: older
                .into_iter()
                .map(|request| (request.id, request.job_name, request.builder))
                .collect(),
            change_ids,
        })
    }

    /// Drops the pending requests that `chosen` picks.
    fn cancel(&mut self, by: String, chosen: impl Fn(&StoredRequest) -> bool) -> Option<Effect> {
        let requests: Vec<(i64, String, String)> = self
            .pending
            .iter()
            .filter(|request| chosen(request))
            .map(|request| {
                (
                    request.id,
                    request.job_name.clone(),
                    request.builder.clone(),
                )
            })
            .collect();
        self.pending.retain(|request| !chosen(request));
        (!requests.is_empty()).then_some(Effect::RecordCancelled { by, requests })
    }

    fn forget_slave(&mut self, name: &str, conn_id: u64) {
        if self
            .slaves
            .get(name)
            .is_some_and(|slot| slot.conn_id == conn_id)
        {
            self.slaves.remove(name);
        }
    }

    fn busy(&self, slave: &str) -> usize {
        self.running
            .values()
            .filter(|assigned| assigned.slave == slave)
            .count()
    }

    /// Each pending request, oldest first, goes to a slave of its builder's pool with a free
    /// slot: the one with most free slots, then pool order.
    fn dispatch(&mut self) -> Vec<Effect> {
        let mut free: BTreeMap<String, usize> = self
            .slaves
            .iter()
            .map(|(name, slot)| (name.clone(), slot.capacity.saturating_sub(self.busy(name))))
            .collect();
        let mut effects = Vec::new();
        let mut waiting = VecDeque::new();
        while let Some(request) = self.pending.pop_front() {
            let pool = self
                .pools
                .get(&request.builder)
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let best = pool
                .iter()
                .enumerate()
                .filter(|(_, slave)| free.get(*slave).copied().unwrap_or(0) > 0)
                .max_by_key(|(position, slave)| {
                    (
                        free.get(*slave).copied().unwrap_or(0),
                        std::cmp::Reverse(*position),
                    )
                })
                .map(|(_, slave)| slave.clone());
            let Some(slave) = best else {
                waiting.push_back(request);
                continue;
            };
            if let Some(slots) = free.get_mut(&slave) {
                *slots -= 1;
            }
            let conn_id = self.slaves.get(&slave).map_or(0, |slot| slot.conn_id);
            self.running.insert(
                request.id,
                Assigned {
                    request: request.clone(),
                    slave: slave.clone(),
                },
            );
            effects.push(Effect::StartBuild {
                request: Box::new(request),
                slave,
                conn_id,
            });
        }
        self.pending = waiting;
        effects
    }

    /// The requests waiting, per builder, in the order they will be served.
    pub fn queued_per_builder(&self) -> BTreeMap<String, Vec<i64>> {
        let mut queued: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for request in &self.pending {
            queued
                .entry(request.builder.clone())
                .or_default()
                .push(request.id);
        }
        queued
    }

    /// The ids of the pending requests, in the order they will be served.
    pub fn pending_ids(&self) -> Vec<i64> {
        self.pending.iter().map(|request| request.id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: i64, builder: &str, job_name: &str) -> StoredRequest {
        StoredRequest {
            id,
            job_name: job_name.into(),
            jobid: format!("job{id}"),
            builder: builder.into(),
            who: None,
            comment: None,
            repository: String::new(),
            branch: None,
            baserev: None,
            patch: None,
            patch_level: 1,
            submitted_at: 0.0,
            properties: BTreeMap::new(),
            kind: RequestKind::Try,
            reason: None,
            change_ids: Vec::new(),
        }
    }

    fn queue() -> Queue {
        Queue::new(
            HashMap::from([
                (
                    "linux".to_string(),
                    vec!["l1".to_string(), "l2".to_string()],
                ),
                ("mac".to_string(), vec!["m1".to_string()]),
            ]),
            HashSet::from(["mac".to_string()]),
        )
    }

    fn connect(name: &str, conn_id: u64, capacity: usize) -> Input {
        Input::SlaveConnected {
            name: name.into(),
            conn_id,
            capacity,
        }
    }

    /// (request id, slave) of every build started.
    fn started(effects: &[Effect]) -> Vec<(i64, String)> {
        effects
            .iter()
            .filter_map(|effect| match effect {
                Effect::StartBuild { request, slave, .. } => Some((request.id, slave.clone())),
                _ => None,
            })
            .collect()
    }

    fn ended(request_id: i64, retry: bool, slave_unusable: bool) -> Input {
        Input::BuildEnded {
            request_id,
            retry,
            slave_unusable,
        }
    }

    #[test]
    fn oldest_requests_go_to_free_pool_members() {
        let mut queue = queue();
        queue.apply(connect("l1", 1, 1));
        queue.apply(connect("l2", 2, 1));
        let effects = queue.apply(Input::Requests(vec![
            request(1, "linux", "a"),
            request(2, "linux", "a"),
            request(3, "linux", "a"),
            request(4, "mac", "a"),
        ]));
        assert_eq!(started(&effects), vec![(1, "l1".into()), (2, "l2".into())]);
        assert_eq!(queue.pending_ids(), vec![3, 4]);
        assert_eq!(
            queue.queued_per_builder(),
            BTreeMap::from([("linux".to_string(), vec![3]), ("mac".to_string(), vec![4])])
        );
    }

    #[test]
    fn a_slave_with_more_free_slots_is_preferred_and_unknown_builders_wait() {
        let mut queue = queue();
        queue.apply(connect("l1", 1, 1));
        queue.apply(connect("l2", 2, 2));
        queue.apply(connect("m1", 3, 1));
        let effects = queue.apply(Input::Requests(vec![
            request(1, "linux", "a"),
            request(2, "gone", "a"),
            request(3, "mac", "a"),
        ]));
        assert_eq!(started(&effects), vec![(1, "l2".into()), (3, "m1".into())]);
        assert_eq!(queue.pending_ids(), vec![2]);
    }

    #[test]
    fn nothing_connected_means_nothing_started_until_a_slave_comes() {
        let mut queue = queue();
        assert!(
            queue
                .apply(Input::Requests(vec![request(1, "linux", "a")]))
                .is_empty()
        );
        let effects = queue.apply(connect("l2", 7, 1));
        assert_eq!(
            effects,
            vec![Effect::StartBuild {
                request: Box::new(request(1, "linux", "a")),
                slave: "l2".into(),
                conn_id: 7
            }]
        );
    }

    #[test]
    fn a_busy_slave_takes_the_next_request_when_its_build_ends() {
        let mut queue = queue();
        queue.apply(connect("m1", 1, 1));
        queue.apply(Input::Requests(vec![
            request(1, "mac", "a"),
            request(2, "mac", "b"),
        ]));
        assert_eq!(queue.pending_ids(), vec![2]);
        let effects = queue.apply(ended(1, false, false));
        assert_eq!(started(&effects), vec![(2, "m1".into())]);
    }

    #[test]
    fn a_retried_request_goes_to_the_front_of_the_queue() {
        let mut queue = queue();
        queue.apply(connect("m1", 1, 1));
        queue.apply(Input::Requests(vec![
            request(1, "mac", "a"),
            request(2, "mac", "b"),
        ]));
        // The slave was lost: its connection goes, the request waits first in line.
        queue.apply(Input::SlaveLost {
            name: "m1".into(),
            conn_id: 1,
        });
        assert!(queue.apply(ended(1, true, false)).is_empty());
        assert_eq!(queue.pending_ids(), vec![1, 2]);
        let effects = queue.apply(connect("m1", 2, 1));
        assert_eq!(started(&effects), vec![(1, "m1".into())]);
    }

    #[test]
    fn a_request_that_is_not_retried_is_gone_after_its_build() {
        let mut queue = queue();
        queue.apply(connect("m1", 1, 1));
        queue.apply(Input::Requests(vec![request(1, "mac", "a")]));
        assert!(queue.apply(ended(1, false, false)).is_empty());
        assert!(queue.pending_ids().is_empty());
    }

    #[test]
    fn a_stale_slave_lost_does_not_forget_the_newer_connection() {
        let mut queue = queue();
        queue.apply(connect("m1", 1, 1));
        // The slave reconnected (dynamic IP); the old connection's loss arrives afterwards.
        queue.apply(connect("m1", 2, 1));
        queue.apply(Input::SlaveLost {
            name: "m1".into(),
            conn_id: 1,
        });
        let effects = queue.apply(Input::Requests(vec![request(1, "mac", "a")]));
        assert_eq!(
            effects,
            vec![Effect::StartBuild {
                request: Box::new(request(1, "mac", "a")),
                slave: "m1".into(),
                conn_id: 2
            }]
        );
    }

    #[test]
    fn an_unresponsive_slave_is_closed_and_its_request_runs_on_a_pool_mate() {
        let mut queue = queue();
        queue.apply(connect("l1", 1, 1));
        queue.apply(Input::Requests(vec![request(1, "linux", "a")]));
        queue.apply(connect("l2", 2, 1));
        let effects = queue.apply(ended(1, true, true));
        assert_eq!(
            effects,
            vec![
                Effect::CloseSlave {
                    name: "l1".into(),
                    conn_id: 1
                },
                Effect::StartBuild {
                    request: Box::new(request(1, "linux", "a")),
                    slave: "l2".into(),
                    conn_id: 2
                }
            ]
        );
    }

    #[test]
    fn busy_counts_respect_capacity() {
        let mut queue = queue();
        queue.apply(connect("m1", 1, 2));
        let effects = queue.apply(Input::Requests(vec![
            request(1, "mac", "a"),
            request(2, "mac", "a"),
            request(3, "mac", "a"),
        ]));
        assert_eq!(started(&effects), vec![(1, "m1".into()), (2, "m1".into())]);
        assert_eq!(queue.pending_ids(), vec![3]);
        // An end for a request that is not running changes nothing.
        assert!(queue.apply(ended(99, true, true)).is_empty());
        assert_eq!(
            started(&queue.apply(ended(2, false, false))),
            vec![(3, "m1".into())]
        );
    }

    #[test]
    fn cancelling_a_job_drops_only_its_queued_requests() {
        let mut queue = queue();
        queue.apply(connect("m1", 1, 1));
        queue.apply(Input::Requests(vec![
            request(1, "mac", "a"),
            request(2, "mac", "a"),
            request(3, "mac", "b"),
        ]));
        let effects = queue.apply(Input::CancelJob {
            job_name: "a".into(),
            by: "alice".into(),
        });
        assert_eq!(
            effects,
            vec![Effect::RecordCancelled {
                by: "alice".into(),
                requests: vec![(2, "a".into(), "mac".into())]
            }]
        );
        assert_eq!(queue.pending_ids(), vec![3]);
        assert!(
            queue
                .apply(Input::CancelJob {
                    job_name: "nothing-queued".into(),
                    by: "alice".into()
                })
                .is_empty()
        );
    }

    #[test]
    fn cancelling_one_request_needs_its_builder_and_leaves_running_ones_alone() {
        let mut queue = queue();
        queue.apply(connect("m1", 1, 1));
        queue.apply(Input::Requests(vec![
            request(1, "mac", "a"),
            request(2, "mac", "b"),
        ]));
        let cancel = |builder: &str, request_id| Input::CancelRequest {
            builder: builder.into(),
            request_id,
            by: "bob".into(),
        };
        assert!(
            queue.apply(cancel("linux", 2)).is_empty(),
            "not linux's request"
        );
        assert!(
            queue.apply(cancel("mac", 1)).is_empty(),
            "running, not queued"
        );
        assert_eq!(
            queue.apply(cancel("mac", 2)),
            vec![Effect::RecordCancelled {
                by: "bob".into(),
                requests: vec![(2, "b".into(), "mac".into())]
            }]
        );
        assert!(queue.pending_ids().is_empty());
    }

    fn scheduled(id: i64, builder: &str, branch: &str, changes: &[i64]) -> StoredRequest {
        StoredRequest {
            kind: RequestKind::Scheduled,
            branch: Some(branch.into()),
            change_ids: changes.to_vec(),
            ..request(id, builder, &format!("job{id}"))
        }
    }

    #[test]
    fn a_collapsing_builder_keeps_the_newest_scheduled_request_per_branch() {
        let mut queue = queue();
        queue.apply(Input::Requests(vec![
            scheduled(1, "mac", "main", &[10]),
            scheduled(2, "mac", "release", &[11]),
            request(3, "mac", "try-job"),
        ]));
        let effects = queue.apply(Input::Requests(vec![scheduled(4, "mac", "main", &[12])]));
        assert_eq!(
            effects,
            vec![Effect::Collapsed {
                into: 4,
                requests: vec![(1, "job1".into(), "mac".into())],
                change_ids: vec![10, 12],
            }]
        );
        assert_eq!(
            queue.pending_ids(),
            vec![2, 3, 4],
            "other branches and try jobs stay"
        );
        // linux does not collapse.
        queue.apply(Input::Requests(vec![scheduled(5, "linux", "main", &[])]));
        assert!(
            queue
                .apply(Input::Requests(vec![scheduled(6, "linux", "main", &[])]))
                .is_empty()
        );
        assert_eq!(queue.pending_ids(), vec![2, 3, 4, 5, 6]);
        queue.apply(connect("m1", 1, 1));
        assert_eq!(queue.running.get(&2).map(|a| a.request.id), Some(2));
        assert_eq!(
            queue
                .pending
                .iter()
                .find(|r| r.id == 4)
                .map(|r| r.change_ids.clone()),
            Some(vec![10, 12])
        );
    }

    #[test]
    fn requests_recorded_twice_are_queued_once() {
        let mut queue = queue();
        queue.apply(Input::Requests(vec![request(1, "mac", "a")]));
        queue.apply(Input::Requests(vec![
            request(1, "mac", "a"),
            request(2, "mac", "a"),
        ]));
        assert_eq!(queue.pending_ids(), vec![1, 2]);
        queue.apply(connect("m1", 1, 1));
        queue.apply(Input::Requests(vec![request(1, "mac", "a")]));
        assert_eq!(
            queue.pending_ids(),
            vec![2],
            "a running request is not queued again"
        );
    }
}
