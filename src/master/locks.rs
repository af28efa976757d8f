//! Locks, as pure state: master-wide or per-slave, exclusive or counting. A set of locks is
//! taken all at once or not at all. The scheduler's queue owns the one table, so every grant
//! and release is a transition of its state machine.
//!
//! Deadlock freedom: a build takes its build-level locks all at once before it starts, holding
//! nothing else; a step takes its step-level locks all at once, and the config refuses a lock
//! used at both levels. So no holder of a step lock ever waits for a lock, and no wait-for cycle
//! can form, whatever order the config lists locks in. A reconfig may move a lock between the
//! levels while builds of the old config run: the queue then takes no lock at build level that
//! a running build may still ask for at step level (`scheduler::Queue::dispatch`), so a build
//! holding it never waits on a build that waits for it.

use std::collections::{BTreeMap, HashMap};

/// Exclusive or counting access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Exclusive,
    Counting,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Exclusive => "exclusive",
            Access::Counting => "counting",
        }
    }
}

/// One count for the whole master, or one per slave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LockKind {
    Master,
    Slave,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockDef {
    pub name: String,
    pub kind: LockKind,
    pub max_count: usize,
    /// Slave locks: a different count for some slaves.
    pub max_count_for_slave: BTreeMap<String, usize>,
}

/// A lock a build or step asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockUse {
    pub lock: String,
    pub access: Access,
}

/// Who holds a lock: a request (its build), at build level or for one step.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Holder {
    pub request_id: i64,
    /// None: the whole build.
    pub step: Option<String>,
}

/// One lock instance: the lock, and for slave locks the slave.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Instance {
    pub lock: String,
    pub slave: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub holder: Holder,
    pub instance: Instance,
    pub access: Access,
}

#[derive(Debug, Default)]
pub struct LockTable {
    defs: HashMap<String, LockDef>,
    holds: Vec<Hold>,
}

impl LockTable {
    pub fn new(defs: impl IntoIterator<Item = LockDef>) -> LockTable {
        LockTable {
            defs: defs
                .into_iter()
                .map(|def| (def.name.clone(), def))
                .collect(),
            holds: Vec::new(),
        }
    }

    /// Replaces the lock definitions (a reconfig). Holds stay until released: a lock removed
    /// from the config is still held by the builds that took it, and granted to no one new.
    pub fn redefine(&mut self, defs: impl IntoIterator<Item = LockDef>) {
        self.defs = defs
            .into_iter()
            .map(|def| (def.name.clone(), def))
            .collect();
    }

    fn instance(&self, lock: &str, slave: &str) -> Option<(Instance, usize)> {
        let def = self.defs.get(lock)?;
        Some(match def.kind {
            LockKind::Master => (
                Instance {
                    lock: lock.to_string(),
                    slave: None,
                },
                def.max_count,
            ),
            LockKind::Slave => (
                Instance {
                    lock: lock.to_string(),
                    slave: Some(slave.to_string()),
                },
                def.max_count_for_slave
                    .get(slave)
                    .copied()
                    .unwrap_or(def.max_count),
            ),
        })
    }

    /// The first lock of `uses` that cannot be had now on `slave`, if any (checking them
    /// together: a set that names one lock twice needs room for both).
    pub fn blocker(&self, uses: &[LockUse], slave: &str) -> Option<String> {
        let mut extra: HashMap<Instance, (usize, bool)> = HashMap::new();
        for lock_use in uses {
            let Some((instance, max)) = self.instance(&lock_use.lock, slave) else {
                // The config checks lock names; an unknown one never blocks.
                continue;
            };
            let held: Vec<&Hold> = self
                .holds
                .iter()
                .filter(|h| h.instance == instance)
                .collect();
            let (added, added_exclusive) = extra.entry(instance.clone()).or_default();
            let exclusive_held =
                *added_exclusive || held.iter().any(|h| h.access == Access::Exclusive);
            let count = held.len() + *added;
            let free = match lock_use.access {
                Access::Exclusive => count == 0,
                Access::Counting => !exclusive_held && count < max.max(1),
            };
            if !free {
                return Some(lock_use.lock.clone());
            }
            *added += 1;
            *added_exclusive |= lock_use.access == Access::Exclusive;
        }
        None
    }

    /// Takes all of `uses` for `holder` on `slave`, or none; returns whether it did.
    pub fn acquire(&mut self, holder: &Holder, uses: &[LockUse], slave: &str) -> bool {
        if self.blocker(uses, slave).is_some() {
            return false;
        }
        for lock_use in uses {
            if let Some((instance, _)) = self.instance(&lock_use.lock, slave) {
                self.holds.push(Hold {
                    holder: holder.clone(),
                    instance,
                    access: lock_use.access,
                });
            }
        }
        true
    }

    /// Releases what `holder` holds.
    pub fn release(&mut self, holder: &Holder) {
        self.holds.retain(|hold| &hold.holder != holder);
    }

    /// Releases everything a request holds, build and steps alike.
    pub fn release_request(&mut self, request_id: i64) {
        self.holds
            .retain(|hold| hold.holder.request_id != request_id);
    }

    pub fn holds(&self) -> &[Hold] {
        &self.holds
    }

    pub fn defs(&self) -> impl Iterator<Item = &LockDef> {
        self.defs.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> LockTable {
        LockTable::new([
            LockDef {
                name: "db".into(),
                kind: LockKind::Master,
                max_count: 2,
                max_count_for_slave: BTreeMap::new(),
            },
            LockDef {
                name: "disk".into(),
                kind: LockKind::Slave,
                max_count: 1,
                max_count_for_slave: BTreeMap::from([("big".to_string(), 2)]),
            },
        ])
    }

    fn uses(pairs: &[(&str, Access)]) -> Vec<LockUse> {
        pairs
            .iter()
            .map(|(lock, access)| LockUse {
                lock: lock.to_string(),
                access: *access,
            })
            .collect()
    }

    fn build(request_id: i64) -> Holder {
        Holder {
            request_id,
            step: None,
        }
    }

    #[test]
    fn exclusive_excludes_everyone_and_counting_stops_at_max_count() {
        let mut locks = table();
        assert!(locks.acquire(&build(1), &uses(&[("db", Access::Counting)]), "s1"));
        assert!(locks.acquire(&build(2), &uses(&[("db", Access::Counting)]), "s2"));
        assert_eq!(
            locks
                .blocker(&uses(&[("db", Access::Counting)]), "s3")
                .as_deref(),
            Some("db")
        );
        assert_eq!(
            locks
                .blocker(&uses(&[("db", Access::Exclusive)]), "s3")
                .as_deref(),
            Some("db")
        );
        locks.release(&build(1));
        locks.release(&build(2));
        assert!(locks.acquire(&build(3), &uses(&[("db", Access::Exclusive)]), "s1"));
        assert!(!locks.acquire(&build(4), &uses(&[("db", Access::Counting)]), "s1"));
    }

    #[test]
    fn a_slave_lock_counts_per_slave() {
        let mut locks = table();
        let disk = uses(&[("disk", Access::Counting)]);
        assert!(locks.acquire(&build(1), &disk, "s1"));
        assert!(!locks.acquire(&build(2), &disk, "s1"));
        assert!(locks.acquire(&build(3), &disk, "s2"));
        assert!(locks.acquire(&build(4), &disk, "big"));
        assert!(
            locks.acquire(&build(5), &disk, "big"),
            "max_count_for_slave"
        );
        assert!(!locks.acquire(&build(6), &disk, "big"));
    }

    #[test]
    fn a_set_is_taken_whole_or_not_at_all() {
        let mut locks = table();
        assert!(locks.acquire(&build(1), &uses(&[("disk", Access::Exclusive)]), "s1"));
        let both = uses(&[("db", Access::Exclusive), ("disk", Access::Exclusive)]);
        assert!(!locks.acquire(&build(2), &both, "s1"));
        assert!(
            locks.holds().iter().all(|hold| hold.holder.request_id == 1),
            "db not taken"
        );
        assert!(locks.acquire(&build(2), &both, "s2"));
        assert_eq!(
            locks.blocker(
                &uses(&[("db", Access::Counting), ("db", Access::Counting)]),
                "s3"
            ),
            Some("db".to_string())
        );
    }

    #[test]
    fn a_request_releases_its_build_and_step_locks_together() {
        let mut locks = table();
        locks.acquire(&build(1), &uses(&[("db", Access::Counting)]), "s1");
        let step = Holder {
            request_id: 1,
            step: Some("migrate".into()),
        };
        assert!(locks.acquire(&step, &uses(&[("disk", Access::Exclusive)]), "s1"));
        locks.release_request(1);
        assert!(locks.holds().is_empty());
    }
}
