//! The scheduler's decisions, as a pure state machine: [`Queue::apply`] takes one [`Input`] and
//! returns the [`Effect`]s to perform (start this build on that slave, record these requests as
//! cancelled, close that connection). No I/O, no clock, no channels: every transition is a unit
//! test. `master::executor` runs it and performs the effects.
//!
//! The queue owns which requests wait, which slave slot each running request occupies, which
//! slaves are paused, and the lock table; the roster owns the connections themselves, the board
//! the builds' progress.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use crate::master::config::NextSlave;
use crate::master::locks::{Holder, LockTable, LockUse};
use crate::master::store::StoredRequest;
use crate::status::RequestKind;

/// How the queue serves one builder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuilderPolicy {
    /// The slaves of its pool, in configuration order.
    pub pool: Vec<String>,
    /// Higher is served first.
    pub priority: i64,
    pub max_concurrent: Option<usize>,
    pub next_slave: NextSlave,
    /// Taken all at once before a build starts.
    pub locks: Vec<LockUse>,
    /// The locks its steps take (by name), recorded with each build it starts: a reconfig
    /// may move a lock from step to build level while such a build runs (see `dispatch`).
    pub step_locks: Vec<String>,
    /// Queued scheduled requests of one branch collapse into the newest.
    pub collapse: bool,
    /// A trusted builder whose slaves take no patch (try) builds of any builder, so a user's
    /// patch never runs where a deploy runs next.
    pub keeps_patches_off_slaves: bool,
}

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
    /// Drop every queued request of a builder, or only those of one owner (an operator's
    /// bulk cancel).
    CancelQueued {
        builder: String,
        who: Option<String>,
        by: String,
    },
    /// A paused slave finishes its builds and takes no new ones.
    PauseSlave {
        name: String,
        paused: bool,
    },
    /// A running build's step wants its locks (granted now, or when they are released).
    StepLocks {
        request_id: i64,
        step: String,
        slave: String,
        uses: Vec<LockUse>,
    },
    /// A step's locks are released (or its wait is given up).
    ReleaseStepLocks {
        request_id: i64,
        step: String,
    },
    /// A new config is in force: builders' policies, the configured slaves and the locks.
    /// Queued requests of removed builders are cancelled; a connected slave that is no longer
    /// configured finishes its builds, takes no new one, and is then disconnected.
    Reconfigure {
        builders: HashMap<String, BuilderPolicy>,
        slaves: HashSet<String>,
        locks: Vec<crate::master::locks::LockDef>,
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
    /// A step's locks were taken: it may run.
    StepLocksGranted {
        request_id: i64,
        step: String,
    },
    /// A request waits for a lock (said once per request and lock).
    WaitingForLock {
        request_id: i64,
        job_name: String,
        builder: String,
        lock: String,
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
    /// The locks this build's steps may still ask for, as its config had them at its start.
    step_locks: Vec<String>,
}

/// A step waiting for its locks.
#[derive(Debug, Clone, PartialEq)]
struct StepWaiter {
    holder: Holder,
    slave: String,
    uses: Vec<LockUse>,
}

/// The scheduler's state.
#[derive(Debug, Default)]
pub struct Queue {
    builders: HashMap<String, BuilderPolicy>,
    pending: VecDeque<StoredRequest>,
    running: BTreeMap<i64, Assigned>,
    slaves: BTreeMap<String, Slot>,
    paused: HashSet<String>,
    locks: LockTable,
    step_waiters: Vec<StepWaiter>,
    /// (request, lock) pairs already announced as waiting.
    announced: HashSet<(i64, String)>,
    /// The queued requests that a build-level lock keeps from starting, with that lock, as
    /// the last dispatch found them (status pages show "waiting for lock db").
    lock_blocked: BTreeMap<i64, String>,
    /// Where round-robin pools go on from, per builder.
    round_robin: HashMap<String, usize>,
    /// xorshift state for `next_slave = "random"`.
    rng: u64,
    /// Connected slaves removed from the config: no new builds; closed when idle.
    retiring: HashSet<String>,
    /// Builds started so far, and when (in that count) each slave last started one.
    starts: u64,
    last_start: HashMap<String, u64>,
    /// When each (builder, owner) last had a build started, as a count of starts, so owners
    /// take turns (`service_order`).
    last_served: HashMap<(String, Option<String>), u64>,
}

impl Queue {
    pub fn new(builders: HashMap<String, BuilderPolicy>, locks: LockTable, seed: u64) -> Queue {
        Queue {
            builders,
            locks,
            rng: seed | 1,
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
                self.retiring.remove(&name);
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
            Input::CancelQueued { builder, who, by } => {
                effects.extend(self.cancel(by, |request| {
                    request.builder == builder
                        && who
                            .as_deref()
                            .is_none_or(|who| request.who.as_deref() == Some(who))
                }));
            }
            Input::PauseSlave { name, paused } => {
                if paused {
                    self.paused.insert(name);
                } else {
                    self.paused.remove(&name);
                }
            }
            Input::StepLocks {
                request_id,
                step,
                slave,
                uses,
            } => {
                let holder = Holder {
                    request_id,
                    step: Some(step.clone()),
                };
                // Waiters are served in order: a newcomer does not overtake them.
                if self.step_waiters.is_empty() && self.locks.acquire(&holder, &uses, &slave) {
                    effects.push(Effect::StepLocksGranted { request_id, step });
                } else {
                    self.step_waiters.push(StepWaiter {
                        holder,
                        slave,
                        uses,
                    });
                    effects.extend(self.grant_step_waiters());
                }
            }
            Input::ReleaseStepLocks { request_id, step } => {
                let holder = Holder {
                    request_id,
                    step: Some(step),
                };
                self.locks.release(&holder);
                self.step_waiters.retain(|waiter| waiter.holder != holder);
                effects.extend(self.grant_step_waiters());
            }
            Input::Reconfigure {
                builders,
                slaves,
                locks,
            } => {
                let mut removed: Vec<String> = self
                    .builders
                    .keys()
                    .filter(|name| !builders.contains_key(*name))
                    .cloned()
                    .collect();
                removed.sort();
                self.builders = builders;
                self.locks.redefine(locks);
                for builder in removed {
                    let by = format!("builder {builder} was removed from the configuration");
                    effects.extend(self.cancel(by, |request| request.builder == builder));
                }
                self.retiring = self
                    .slaves
                    .keys()
                    .filter(|name| !slaves.contains(*name))
                    .cloned()
                    .collect();
                effects.extend(self.close_idle_retiring());
            }
            Input::BuildEnded {
                request_id,
                retry,
                slave_unusable,
            } => {
                self.locks.release_request(request_id);
                self.step_waiters
                    .retain(|waiter| waiter.holder.request_id != request_id);
                effects.extend(self.grant_step_waiters());
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
        effects.extend(self.close_idle_retiring());
        effects.extend(self.dispatch());
        effects
    }

    /// Closes the connections of retiring slaves that run nothing now.
    fn close_idle_retiring(&mut self) -> Vec<Effect> {
        let idle: Vec<String> = self
            .retiring
            .iter()
            .filter(|name| self.busy(name) == 0)
            .cloned()
            .collect();
        let mut effects = Vec::new();
        for name in idle {
            self.retiring.remove(&name);
            if let Some(slot) = self.slaves.remove(&name) {
                effects.push(Effect::CloseSlave {
                    name,
                    conn_id: slot.conn_id,
                });
            }
        }
        effects
    }

    /// For a builder that collapses requests: the queued scheduled requests for the same branch
    /// are dropped in favour of `newer`, which takes over their changes.
    fn collapse_into(&mut self, newer: &mut StoredRequest) -> Option<Effect> {
        let collapse = self
            .builders
            .get(&newer.builder)
            .is_some_and(|policy| policy.collapse);
        if newer.kind != RequestKind::Scheduled || !collapse {
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
                .map(|request| {
                    (
                        request.id,
                        request.request.job_name,
                        request.request.builder,
                    )
                })
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
        self.announced
            .retain(|(id, _)| !requests.iter().any(|(cancelled, ..)| cancelled == id));
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

    /// Step waiters whose locks are free now, in the order they came.
    fn grant_step_waiters(&mut self) -> Vec<Effect> {
        let mut effects = Vec::new();
        let mut index = 0;
        while index < self.step_waiters.len() {
            let waiter = self.step_waiters[index].clone();
            if self
                .locks
                .acquire(&waiter.holder, &waiter.uses, &waiter.slave)
            {
                self.step_waiters.remove(index);
                effects.push(Effect::StepLocksGranted {
                    request_id: waiter.holder.request_id,
                    step: waiter.holder.step.unwrap_or_default(),
                });
            } else {
                index += 1;
            }
        }
        effects
    }

    fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    /// Hands out what can start now: pending requests in order of their builder's priority,
    /// then their place in the queue, each to a free, unpaused slave of its pool on which its
    /// build-level locks can all be had, chosen by the builder's `next_slave`. A request whose
    /// locks are taken waits without holding a slave.
    fn dispatch(&mut self) -> Vec<Effect> {
        let mut free: BTreeMap<String, usize> = self
            .slaves
            .iter()
            .filter(|(name, _)| !self.paused.contains(*name) && !self.retiring.contains(*name))
            .map(|(name, slot)| (name.clone(), slot.capacity.saturating_sub(self.busy(name))))
            .collect();
        let order = self.service_order();
        let no_patches: HashSet<String> = self
            .builders
            .values()
            .filter(|policy| policy.keeps_patches_off_slaves)
            .flat_map(|policy| policy.pool.iter().cloned())
            .collect();
        let mut effects = Vec::new();
        let mut started: HashSet<usize> = HashSet::new();
        let real: Vec<usize> = order
            .iter()
            .copied()
            .filter(|&index| !is_bisect(&self.pending[index]))
            .collect();
        // Locks an earlier request waits to take exclusively: later requests do not take them
        // first, so a stream of counting holders cannot keep an exclusive one waiting forever.
        let mut reserved: HashSet<String> = HashSet::new();
        self.lock_blocked.clear();
        for index in order {
            let request = &self.pending[index];
            // A bisection's build takes only what no other request waits for: it never
            // delays real work, and a new request goes before the bisection's next build.
            if is_bisect(request) && real.iter().any(|other| !started.contains(other)) {
                continue;
            }
            let Some(policy) = self.builders.get(&request.builder).cloned() else {
                continue;
            };
            if let Some(lock_use) = policy
                .locks
                .iter()
                .find(|lock_use| reserved.contains(&lock_use.lock))
            {
                self.lock_blocked.insert(request.id, lock_use.lock.clone());
                continue;
            }
            if let Some(max) = policy.max_concurrent {
                let running = self
                    .running
                    .values()
                    .filter(|assigned| assigned.request.builder == request.builder)
                    .count();
                if running >= max {
                    continue;
                }
            }
            let candidates: Vec<(usize, String)> = policy
                .pool
                .iter()
                .enumerate()
                .filter(|(_, slave)| free.get(*slave).copied().unwrap_or(0) > 0)
                .filter(|(_, slave)| request.patch.is_none() || !no_patches.contains(*slave))
                .map(|(position, slave)| (position, slave.clone()))
                .collect();
            if candidates.is_empty() {
                continue;
            }
            // A lock a reconfig moved from step to build level is not taken at build level
            // while a build started under the old config runs: that build may still ask for it
            // for a step while holding its own build-level locks, which this build may want
            // for its steps in turn (two builds waiting on each other for good).
            let in_transition = policy.locks.iter().find(|lock_use| {
                self.running
                    .values()
                    .any(|assigned| assigned.step_locks.contains(&lock_use.lock))
            });
            let lockable: Vec<(usize, String)> = if in_transition.is_some() {
                Vec::new()
            } else {
                candidates
                    .iter()
                    .filter(|(_, slave)| self.locks.blocker(&policy.locks, slave).is_none())
                    .cloned()
                    .collect()
            };
            if lockable.is_empty() {
                reserved.extend(
                    policy
                        .locks
                        .iter()
                        .filter(|lock_use| {
                            lock_use.access == crate::master::locks::Access::Exclusive
                        })
                        .map(|lock_use| lock_use.lock.clone()),
                );
                let blocker = in_transition
                    .map(|lock_use| lock_use.lock.clone())
                    .or_else(|| self.locks.blocker(&policy.locks, &candidates[0].1));
                if let Some(lock) = &blocker {
                    self.lock_blocked.insert(request.id, lock.clone());
                }
                if let Some(lock) = blocker
                    && self.announced.insert((request.id, lock.clone()))
                {
                    effects.push(Effect::WaitingForLock {
                        request_id: request.id,
                        job_name: request.job_name.clone(),
                        builder: request.builder.clone(),
                        lock,
                    });
                }
                continue;
            }
            let slave = match policy.next_slave {
                // Ties (two idle slaves) go to the one that started a build least recently,
                // so work spreads instead of always landing on the first of the pool.
                NextSlave::LeastBusy => lockable
                    .iter()
                    .max_by_key(|(position, slave)| {
                        (
                            free.get(slave).copied().unwrap_or(0),
                            std::cmp::Reverse(self.last_start.get(slave).copied().unwrap_or(0)),
                            std::cmp::Reverse(*position),
                        )
                    })
                    .map(|(_, slave)| slave.clone()),
                NextSlave::RoundRobin => {
                    let from = self.round_robin.get(&request.builder).copied().unwrap_or(0);
                    let chosen = lockable
                        .iter()
                        .find(|(position, _)| *position >= from)
                        .or_else(|| lockable.first())
                        .cloned();
                    if let Some((position, _)) = &chosen {
                        self.round_robin.insert(
                            request.builder.clone(),
                            (position + 1) % policy.pool.len().max(1),
                        );
                    }
                    chosen.map(|(_, slave)| slave)
                }
                NextSlave::Random => {
                    let pick = (self.next_random() % lockable.len() as u64) as usize;
                    lockable.get(pick).map(|(_, slave)| slave.clone())
                }
            };
            let Some(slave) = slave else {
                continue;
            };
            let request = self.pending[index].clone();
            let holder = Holder {
                request_id: request.id,
                step: None,
            };
            if !self.locks.acquire(&holder, &policy.locks, &slave) {
                continue;
            }
            if let Some(slots) = free.get_mut(&slave) {
                *slots -= 1;
            }
            let conn_id = self.slaves.get(&slave).map_or(0, |slot| slot.conn_id);
            self.announced.retain(|(id, _)| *id != request.id);
            self.starts += 1;
            self.last_start.insert(slave.clone(), self.starts);
            self.running.insert(
                request.id,
                Assigned {
                    request: request.clone(),
                    slave: slave.clone(),
                    step_locks: policy.step_locks.clone(),
                },
            );
            started.insert(index);
            self.last_served
                .insert((request.builder.clone(), request.who.clone()), self.starts);
            effects.push(Effect::StartBuild {
                request: Box::new(request),
                slave,
                conn_id,
            });
        }
        let mut position = 0;
        self.pending.retain(|_| {
            let keep = !started.contains(&position);
            position += 1;
            keep
        });
        effects
    }

    /// The lock table, for status pages.
    pub fn locks(&self) -> &LockTable {
        &self.locks
    }

    /// The queued requests a build-level lock keeps from starting, with that lock.
    pub fn waiting_for_lock(&self) -> BTreeMap<i64, String> {
        self.lock_blocked.clone()
    }

    /// Requests waiting for a lock, as (request id, lock).
    pub fn lock_waiters(&self) -> Vec<(i64, String, Option<String>)> {
        let queued = self
            .announced
            .iter()
            .map(|(id, lock)| (*id, lock.clone(), None));
        let steps = self.step_waiters.iter().map(|waiter| {
            let lock = waiter
                .uses
                .first()
                .map(|lock_use| lock_use.lock.clone())
                .unwrap_or_default();
            (waiter.holder.request_id, lock, waiter.holder.step.clone())
        });
        queued.chain(steps).collect()
    }

    /// The builder of a queued or running request.
    pub fn builder_of(&self, request_id: i64) -> Option<String> {
        self.running
            .get(&request_id)
            .map(|assigned| assigned.request.builder.clone())
            .or_else(|| {
                self.pending
                    .iter()
                    .find(|request| request.id == request_id)
                    .map(|request| request.builder.clone())
            })
    }

    /// The paused slaves.
    pub fn paused(&self) -> &HashSet<String> {
        &self.paused
    }

    /// (builder, slave) of a running request.
    pub fn running_on(&self, request_id: i64) -> Option<(&str, &str)> {
        self.running
            .get(&request_id)
            .map(|assigned| (assigned.request.builder.as_str(), assigned.slave.as_str()))
    }

    /// The requests waiting, per builder, in the order they will be served.
    /// Each builder's queue length and its oldest request's submission time, for the metrics.
    pub fn queue_gauges(&self) -> BTreeMap<String, crate::master::metrics::QueueGauge> {
        let mut gauges: BTreeMap<String, crate::master::metrics::QueueGauge> = BTreeMap::new();
        for request in &self.pending {
            let gauge = gauges.entry(request.builder.clone()).or_insert(
                crate::master::metrics::QueueGauge {
                    length: 0,
                    oldest_submitted_at: request.submitted_at,
                },
            );
            gauge.length += 1;
            gauge.oldest_submitted_at = gauge.oldest_submitted_at.min(request.submitted_at);
        }
        gauges
    }

    pub fn queued_per_builder(&self) -> BTreeMap<String, Vec<i64>> {
        let mut queued: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for request in self
            .service_order()
            .into_iter()
            .map(|index| &self.pending[index])
        {
            queued
                .entry(request.builder.clone())
                .or_default()
                .push(request.id);
        }
        queued
    }

    /// The ids of the pending requests, in the order they will be served.
    pub fn pending_ids(&self) -> Vec<i64> {
        self.service_order()
            .into_iter()
            .map(|index| self.pending[index].id)
            .collect()
    }

    /// The pending requests' indices in the order they are served: higher builder priority
    /// first, then queue order, except that within a builder's queue its owners (`who`) take
    /// turns: each owner's first waiting request, then each one's second, and so on, an owner
    /// served longer ago before one served recently. So one user's thousand requests do not
    /// make the next user wait for all of them. A builder's requests keep the places in the
    /// queue they had; only which of them stands in each place changes.
    fn service_order(&self) -> Vec<usize> {
        let mut by_builder: HashMap<&str, Vec<usize>> = HashMap::new();
        for (index, request) in self.pending.iter().enumerate() {
            by_builder
                .entry(request.builder.as_str())
                .or_default()
                .push(index);
        }
        let mut placed: Vec<usize> = (0..self.pending.len()).collect();
        for (builder, places) in by_builder {
            let mut turns: HashMap<Option<&str>, usize> = HashMap::new();
            let mut fair: Vec<(usize, u64, usize)> = places
                .iter()
                .map(|&index| {
                    let who = self.pending[index].who.as_deref();
                    let turn = turns.entry(who).or_insert(0);
                    let last = self
                        .last_served
                        .get(&(builder.to_string(), who.map(str::to_string)))
                        .copied()
                        .unwrap_or(0);
                    let key = (*turn, last, index);
                    *turn += 1;
                    key
                })
                .collect();
            fair.sort_unstable();
            for (&place, (_, _, index)) in places.iter().zip(fair) {
                placed[place] = index;
            }
        }
        // A stable sort: equal priorities keep the order above; bisections' builds last.
        placed.sort_by_key(|&index| {
            (
                is_bisect(&self.pending[index]),
                std::cmp::Reverse(
                    self.builders
                        .get(&self.pending[index].builder)
                        .map_or(0, |policy| policy.priority),
                ),
            )
        });
        placed
    }
}

/// The property that marks a bisection's request (`master::bisect`): its value is the
/// bisection's id.
pub const BISECT_PROPERTY: &str = crate::change::BISECT_PROPERTY;

/// Whether a request is a bisection's build, served only when nothing else waits.
pub fn is_bisect(request: &StoredRequest) -> bool {
    request.kind == crate::status::RequestKind::Scheduled
        && request.properties.contains_key(BISECT_PROPERTY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::locks::{Access, LockDef};
    use crate::master::store::NewRequest;

    fn request(id: i64, builder: &str, job_name: &str) -> StoredRequest {
        NewRequest {
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
        .stored(id)
    }

    fn policy(pool: &[&str]) -> BuilderPolicy {
        BuilderPolicy {
            pool: pool.iter().map(ToString::to_string).collect(),
            ..BuilderPolicy::default()
        }
    }

    fn queue() -> Queue {
        let mac = BuilderPolicy {
            collapse: true,
            ..policy(&["m1"])
        };
        Queue::new(
            HashMap::from([
                ("linux".to_string(), policy(&["l1", "l2"])),
                ("mac".to_string(), mac),
            ]),
            LockTable::default(),
            7,
        )
    }

    fn lock_def(name: &str, kind: crate::master::locks::LockKind, max: usize) -> LockDef {
        LockDef {
            name: name.into(),
            kind,
            max_count: max,
            max_count_for_slave: BTreeMap::new(),
        }
    }

    fn uses(lock: &str, access: Access) -> Vec<LockUse> {
        vec![LockUse {
            lock: lock.into(),
            access,
        }]
    }

    /// Builders a, b (sharing slaves s1..s3) taking the master lock "db" as given.
    fn locked_queue(a: Vec<LockUse>, b: Vec<LockUse>, db_max: usize) -> Queue {
        let pool = ["s1", "s2", "s3"];
        let mut queue = Queue::new(
            HashMap::from([
                (
                    "a".to_string(),
                    BuilderPolicy {
                        locks: a,
                        ..policy(&pool)
                    },
                ),
                (
                    "b".to_string(),
                    BuilderPolicy {
                        locks: b,
                        ..policy(&pool)
                    },
                ),
                ("free".to_string(), policy(&pool)),
            ]),
            LockTable::new([
                lock_def("db", crate::master::locks::LockKind::Master, db_max),
                lock_def("disk", crate::master::locks::LockKind::Slave, 1),
            ]),
            7,
        );
        for (conn, slave) in pool.iter().enumerate() {
            queue.apply(connect(slave, conn as u64, 2));
        }
        queue
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
    fn a_reconfig_cancels_removed_builders_requests_and_retires_removed_slaves_when_idle() {
        let mut queue = queue();
        queue.apply(connect("l1", 1, 1));
        queue.apply(connect("l2", 2, 1));
        queue.apply(connect("m1", 3, 1));
        let effects = queue.apply(Input::Requests(vec![
            request(1, "linux", "a"),
            request(2, "mac", "b"),
            request(3, "mac", "c"),
        ]));
        assert_eq!(
            started(&effects),
            vec![(1, "l1".to_string()), (2, "m1".to_string())]
        );
        // mac is removed (its queued request 3 goes, its running build 2 goes on) and so are
        // m1 (busy) and l2 (idle); a new builder "bsd" appears.
        let effects = queue.apply(Input::Reconfigure {
            builders: HashMap::from([
                ("linux".to_string(), policy(&["l1"])),
                ("bsd".to_string(), policy(&["l1"])),
            ]),
            slaves: HashSet::from(["l1".to_string()]),
            locks: Vec::new(),
        });
        assert_eq!(
            effects,
            vec![
                Effect::RecordCancelled {
                    by: "builder mac was removed from the configuration".into(),
                    requests: vec![(3, "c".into(), "mac".into())],
                },
                Effect::CloseSlave {
                    name: "l2".into(),
                    conn_id: 2,
                },
            ]
        );
        let effects = queue.apply(Input::Requests(vec![request(4, "bsd", "d")]));
        assert!(started(&effects).is_empty(), "l1 is busy: {effects:?}");
        let effects = queue.apply(ended(2, false, false));
        assert_eq!(
            effects,
            vec![Effect::CloseSlave {
                name: "m1".into(),
                conn_id: 3,
            }]
        );
        let effects = queue.apply(ended(1, false, false));
        assert_eq!(started(&effects), vec![(4, "l1".to_string())]);
    }

    fn bisect_request(id: i64, builder: &str) -> StoredRequest {
        let mut request = request(id, builder, &format!("bisect-{id}"));
        request.kind = RequestKind::Scheduled;
        request
            .properties
            .insert(BISECT_PROPERTY.to_string(), "1".to_string());
        request
    }

    #[test]
    fn a_bisections_build_takes_only_idle_slaves_and_yields_to_a_new_request() {
        let mut queue = queue();
        queue.apply(connect("l1", 1, 1));
        queue.apply(connect("l2", 2, 1));
        // Real work on l1; the bisection's build goes to the idle l2.
        let effects = queue.apply(Input::Requests(vec![request(1, "linux", "a")]));
        assert_eq!(started(&effects), vec![(1, "l1".into())]);
        let effects = queue.apply(Input::Requests(vec![bisect_request(2, "linux")]));
        assert_eq!(started(&effects), vec![(2, "l2".into())]);
        // Both busy: a bisection's next build and a new request wait; the request queued
        // later goes first when a slave frees.
        queue.apply(Input::Requests(vec![bisect_request(3, "linux")]));
        queue.apply(Input::Requests(vec![request(4, "linux", "b")]));
        assert_eq!(queue.pending_ids(), vec![4, 3]);
        let effects = queue.apply(ended(1, false, false));
        assert_eq!(started(&effects), vec![(4, "l1".into())]);
        // While a real request waits for a slave, no bisection build takes one, whatever its
        // builder: real work is never delayed.
        queue.apply(Input::Requests(vec![request(5, "linux", "c")]));
        let effects = queue.apply(ended(2, false, false));
        assert_eq!(started(&effects), vec![(5, "l2".into())]);
        let effects = queue.apply(ended(4, false, false));
        assert_eq!(started(&effects), vec![(3, "l1".into())]);
    }

    #[test]
    fn a_forced_build_with_a_bisect_property_is_real_work() {
        let mut request = request(1, "linux", "f");
        request.kind = RequestKind::Force;
        request
            .properties
            .insert(BISECT_PROPERTY.to_string(), "1".to_string());
        assert!(
            !is_bisect(&request),
            "a user cannot lower their build to a bisection's"
        );
        assert!(is_bisect(&bisect_request(2, "linux")));
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
        let mut scheduled = request(id, builder, &format!("job{id}"));
        scheduled.kind = RequestKind::Scheduled;
        scheduled.branch = Some(branch.into());
        scheduled.change_ids = changes.to_vec();
        scheduled
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
    fn an_exclusive_build_lock_lets_one_build_run_and_the_waiter_holds_no_slave() {
        let db = uses("db", Access::Exclusive);
        let mut queue = locked_queue(db.clone(), db, 1);
        let effects = queue.apply(Input::Requests(vec![
            request(1, "a", "j1"),
            request(2, "b", "j2"),
            request(3, "free", "j3"),
        ]));
        assert_eq!(started(&effects).len(), 2, "a and free start: {effects:?}");
        assert!(effects.iter().any(|effect| matches!(effect,
            Effect::WaitingForLock { request_id: 2, lock, .. } if lock == "db")));
        assert_eq!(queue.pending_ids(), vec![2]);
        // The waiter is announced once, however often the queue is looked at again, and the
        // status knows which lock it waits for.
        let again = queue.apply(Input::Requests(vec![]));
        assert!(again.is_empty(), "{again:?}");
        assert_eq!(
            queue.waiting_for_lock(),
            BTreeMap::from([(2, "db".to_string())])
        );
        // When a's build ends, b gets the lock.
        assert_eq!(started(&queue.apply(ended(1, false, false))).len(), 1);
        assert!(queue.pending_ids().is_empty());
        assert!(queue.waiting_for_lock().is_empty());
        assert_eq!(queue.locks().holds()[0].holder.request_id, 2);
    }

    #[test]
    fn a_counting_lock_admits_max_count_holders() {
        let db = uses("db", Access::Counting);
        let mut queue = locked_queue(db.clone(), db, 2);
        let effects = queue.apply(Input::Requests(vec![
            request(1, "a", "j"),
            request(2, "a", "j"),
            request(3, "b", "j"),
        ]));
        assert_eq!(started(&effects).len(), 2);
        assert_eq!(queue.pending_ids(), vec![3]);
        // A retried request gives its lock back too.
        queue.apply(Input::SlaveLost {
            name: "s1".into(),
            conn_id: 0,
        });
        let effects = queue.apply(ended(1, true, false));
        assert_eq!(started(&effects).len(), 1, "{effects:?}");
        assert_eq!(queue.locks().holds().len(), 2);
    }

    #[test]
    fn a_waiting_exclusive_request_is_not_overtaken_by_later_counting_ones() {
        let mut queue = locked_queue(
            uses("db", Access::Counting),
            uses("db", Access::Exclusive),
            2,
        );
        queue.apply(Input::Requests(vec![
            request(1, "a", "j"),
            request(2, "b", "j"),
        ]));
        // a holds db (counting); b waits to take it exclusively; a later counting request waits too.
        let effects = queue.apply(Input::Requests(vec![request(3, "a", "j")]));
        assert!(started(&effects).is_empty(), "{effects:?}");
        let effects = queue.apply(ended(1, false, false));
        assert_eq!(started(&effects).first().map(|(id, _)| *id), Some(2));
        assert_eq!(queue.pending_ids(), vec![3]);
    }

    #[test]
    fn a_slave_lock_is_counted_per_slave() {
        let disk = uses("disk", Access::Exclusive);
        let mut queue = locked_queue(disk.clone(), disk, 1);
        let effects = queue.apply(Input::Requests(
            (1..=4).map(|id| request(id, "a", "j")).collect(),
        ));
        let slaves: HashSet<String> = started(&effects).into_iter().map(|(_, s)| s).collect();
        assert_eq!(slaves.len(), 3, "one build per slave: {effects:?}");
        assert_eq!(queue.pending_ids(), vec![4]);
    }

    #[test]
    fn locks_taken_in_opposite_orders_never_deadlock() {
        // Build-level sets are taken whole: whatever the order, one of them gets both.
        let ab = vec![
            LockUse {
                lock: "db".into(),
                access: Access::Exclusive,
            },
            LockUse {
                lock: "disk".into(),
                access: Access::Exclusive,
            },
        ];
        let ba: Vec<LockUse> = ab.iter().rev().cloned().collect();
        let mut queue = locked_queue(ab, ba, 1);
        for round in 0..20 {
            let first = round * 2 + 1;
            let effects = queue.apply(Input::Requests(vec![
                request(first, "a", "j"),
                request(first + 1, "b", "j"),
            ]));
            let running = started(&effects);
            assert_eq!(running.len(), 1, "round {round}: {effects:?}");
            let waiting = if running[0].0 == first {
                first + 1
            } else {
                first
            };
            let effects = queue.apply(ended(running[0].0, false, false));
            assert_eq!(
                started(&effects),
                vec![(waiting, started(&effects)[0].1.clone())]
            );
            queue.apply(ended(waiting, false, false));
            assert!(queue.locks().holds().is_empty());
        }
    }

    #[test]
    fn a_reconfig_swapping_lock_levels_never_leaves_two_builds_waiting_on_each_other() {
        // Before: builder a takes "db" for the build and "disk" for its step "work".
        let pool = ["s1", "s2"];
        let before = |locks: Vec<LockUse>, step_locks: &[&str]| BuilderPolicy {
            locks,
            step_locks: step_locks.iter().map(ToString::to_string).collect(),
            ..policy(&pool)
        };
        let mut queue = Queue::new(
            HashMap::from([(
                "a".to_string(),
                before(uses("db", Access::Exclusive), &["disk"]),
            )]),
            LockTable::new([
                lock_def("db", crate::master::locks::LockKind::Master, 1),
                lock_def("disk", crate::master::locks::LockKind::Master, 1),
            ]),
            7,
        );
        for (conn, slave) in pool.iter().enumerate() {
            queue.apply(connect(slave, conn as u64, 1));
        }
        let effects = queue.apply(Input::Requests(vec![request(1, "a", "j")]));
        assert_eq!(started(&effects).len(), 1);
        // After: "disk" for the build, "db" for the step.
        queue.apply(Input::Reconfigure {
            builders: HashMap::from([(
                "a".to_string(),
                before(uses("disk", Access::Exclusive), &["db"]),
            )]),
            slaves: pool.iter().map(ToString::to_string).collect(),
            locks: vec![
                lock_def("db", crate::master::locks::LockKind::Master, 1),
                lock_def("disk", crate::master::locks::LockKind::Master, 1),
            ],
        });
        // Request 2 must not take "disk" for its build while build 1 may still ask for it
        // for a step (it would then wait for "db", which build 1 holds: a deadlock).
        let effects = queue.apply(Input::Requests(vec![request(2, "a", "j")]));
        assert!(started(&effects).is_empty(), "{effects:?}");
        assert!(
            effects.iter().any(|effect| matches!(effect,
                Effect::WaitingForLock { request_id: 2, lock, .. } if lock == "disk")),
            "{effects:?}"
        );
        let step = |request_id: i64, lock: &str, slave: &str| Input::StepLocks {
            request_id,
            step: "work".into(),
            slave: slave.into(),
            uses: uses(lock, Access::Exclusive),
        };
        assert_eq!(
            queue.apply(step(1, "disk", "s1")),
            vec![Effect::StepLocksGranted {
                request_id: 1,
                step: "work".into()
            }]
        );
        queue.apply(Input::ReleaseStepLocks {
            request_id: 1,
            step: "work".into(),
        });
        // Build 1 ends: request 2 starts, takes "disk", and its step gets "db".
        let effects = queue.apply(ended(1, false, false));
        let running = started(&effects);
        assert_eq!(
            running.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            vec![2]
        );
        assert_eq!(
            queue.apply(step(2, "db", &running[0].1)),
            vec![Effect::StepLocksGranted {
                request_id: 2,
                step: "work".into()
            }]
        );
    }

    #[test]
    fn least_busy_spreads_builds_over_idle_slaves() {
        let mut queue = Queue::new(
            HashMap::from([("a".to_string(), policy(&["s1", "s2"]))]),
            LockTable::default(),
            7,
        );
        queue.apply(connect("s1", 1, 1));
        queue.apply(connect("s2", 2, 1));
        let mut used = Vec::new();
        for id in 1..=4 {
            let effects = queue.apply(Input::Requests(vec![request(id, "a", "j")]));
            let running = started(&effects);
            assert_eq!(running.len(), 1, "{effects:?}");
            used.push(running[0].1.clone());
            queue.apply(ended(id, false, false));
        }
        assert_eq!(used, ["s1", "s2", "s1", "s2"]);
    }

    #[test]
    fn step_locks_are_granted_in_order_and_released_with_the_build() {
        let mut queue = locked_queue(vec![], vec![], 1);
        queue.apply(Input::Requests(vec![
            request(1, "a", "j"),
            request(2, "b", "j"),
        ]));
        let step = |request_id: i64| Input::StepLocks {
            request_id,
            step: "migrate".into(),
            slave: "s1".into(),
            uses: uses("db", Access::Exclusive),
        };
        assert_eq!(
            queue.apply(step(1)),
            vec![Effect::StepLocksGranted {
                request_id: 1,
                step: "migrate".into()
            }]
        );
        assert!(queue.apply(step(2)).is_empty(), "2 waits");
        // The build of 1 ends (stopped, slave lost...): its step lock goes to 2.
        assert_eq!(
            queue.apply(ended(1, false, false)),
            vec![Effect::StepLocksGranted {
                request_id: 2,
                step: "migrate".into()
            }]
        );
        queue.apply(Input::ReleaseStepLocks {
            request_id: 2,
            step: "migrate".into(),
        });
        assert!(queue.locks().holds().is_empty());
    }

    #[test]
    fn priorities_go_first_and_max_concurrent_caps_a_builder() {
        let mut queue = Queue::new(
            HashMap::from([
                ("low".to_string(), policy(&["s1"])),
                (
                    "high".to_string(),
                    BuilderPolicy {
                        priority: 10,
                        max_concurrent: Some(1),
                        ..policy(&["s1"])
                    },
                ),
            ]),
            LockTable::default(),
            7,
        );
        queue.apply(Input::Requests(vec![
            request(1, "low", "j"),
            request(2, "high", "j"),
            request(3, "high", "j"),
        ]));
        let effects = queue.apply(connect("s1", 1, 3));
        let ids: Vec<i64> = started(&effects).into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, vec![2, 1], "high first, but only one of it at a time");
        assert_eq!(queue.pending_ids(), vec![3]);
    }

    #[test]
    fn a_paused_slave_takes_no_new_build() {
        let mut queue = queue();
        queue.apply(connect("m1", 1, 1));
        queue.apply(Input::PauseSlave {
            name: "m1".into(),
            paused: true,
        });
        assert!(
            queue
                .apply(Input::Requests(vec![request(1, "mac", "j")]))
                .is_empty()
        );
        let effects = queue.apply(Input::PauseSlave {
            name: "m1".into(),
            paused: false,
        });
        assert_eq!(started(&effects), vec![(1, "m1".into())]);
    }

    #[test]
    fn round_robin_takes_each_slave_in_turn() {
        let mut queue = Queue::new(
            HashMap::from([(
                "a".to_string(),
                BuilderPolicy {
                    next_slave: NextSlave::RoundRobin,
                    ..policy(&["s1", "s2", "s3"])
                },
            )]),
            LockTable::default(),
            7,
        );
        for (conn, slave) in ["s1", "s2", "s3"].iter().enumerate() {
            queue.apply(connect(slave, conn as u64, 5));
        }
        let mut order = Vec::new();
        for id in 1..=4 {
            let effects = queue.apply(Input::Requests(vec![request(id, "a", "j")]));
            order.extend(started(&effects).into_iter().map(|(_, slave)| slave));
        }
        assert_eq!(order, vec!["s1", "s2", "s3", "s1"]);
    }

    #[test]
    fn owners_take_turns_in_a_builders_queue() {
        let mut queue = Queue::new(
            HashMap::from([("linux".to_string(), policy(&["l1"]))]),
            LockTable::default(),
            1,
        );
        let owned = |id: i64, who: &str| {
            let mut owned = request(id, "linux", &format!("job{id}"));
            owned.who = Some(who.into());
            owned
        };
        let flood: Vec<StoredRequest> = (1..=4).map(|id| owned(id, "mallory")).collect();
        queue.apply(Input::Requests(flood));
        queue.apply(Input::Requests(vec![owned(5, "alice"), owned(6, "alice")]));
        assert_eq!(queue.pending_ids(), [1, 5, 2, 6, 3, 4]);
        assert_eq!(queue.queued_per_builder()["linux"], [1, 5, 2, 6, 3, 4]);
        let effects = queue.apply(connect("l1", 1, 1));
        assert_eq!(started(&effects), [(1, "l1".to_string())]);
        let effects = queue.apply(ended(1, false, false));
        assert_eq!(started(&effects), [(5, "l1".to_string())]);
    }

    #[test]
    fn patch_builds_never_go_to_a_slave_of_a_trusted_builder() {
        let deploy = BuilderPolicy {
            keeps_patches_off_slaves: true,
            ..policy(&["shared"])
        };
        let mut queue = Queue::new(
            HashMap::from([
                ("linux".to_string(), policy(&["shared", "l2"])),
                ("deploy".to_string(), deploy),
            ]),
            LockTable::default(),
            1,
        );
        queue.apply(connect("shared", 1, 2));
        let mut patched = request(1, "linux", "try-1");
        patched.patch = Some(b"diff".to_vec());
        assert!(started(&queue.apply(Input::Requests(vec![patched]))).is_empty());
        // A build without a patch may use the shared slave.
        let effects = queue.apply(Input::Requests(vec![request(2, "linux", "force-2")]));
        assert_eq!(started(&effects), [(2, "shared".to_string())]);
        // The patch build waits for a slave that serves no trusted builder.
        let effects = queue.apply(connect("l2", 2, 1));
        assert_eq!(started(&effects), [(1, "l2".to_string())]);
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
