//! `[[lock]]` and the `locks = [...]` of builders and steps, and how a builder's pool picks
//! its next slave: checked into `master::locks` definitions with every problem on its line.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Deserialize;
use toml::Spanned;

use crate::master::config::Checker;
use crate::master::locks::{Access, LockDef, LockKind, LockUse};

/// Which free slave of a pool gets the next build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NextSlave {
    /// The one with the most free slots (then the one that started a build least recently,
    /// then pool order).
    #[default]
    LeastBusy,
    /// Each in turn.
    RoundRobin,
    Random,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawLock {
    name: Spanned<String>,
    kind: Spanned<String>,
    #[serde(default)]
    max_count: Option<Spanned<usize>>,
    #[serde(default)]
    max_count_for_slave: Option<Spanned<BTreeMap<String, usize>>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawLockUse {
    lock: Spanned<String>,
    #[serde(default)]
    access: Option<Access>,
}

impl Checker<'_> {
    pub(super) fn lock_defs(
        &mut self,
        raw: &[RawLock],
        slave_names: &HashSet<&str>,
    ) -> Vec<LockDef> {
        let mut defs: Vec<LockDef> = Vec::new();
        for lock in raw {
            let name = lock.name.get_ref();
            if defs.iter().any(|def| &def.name == name) {
                self.problem(&lock.name, format!("lock \"{name}\" is defined twice"));
                continue;
            }
            let kind = match lock.kind.get_ref().as_str() {
                "master" => LockKind::Master,
                "slave" => LockKind::Slave,
                other => {
                    let message = format!(
                        "unknown lock kind \"{other}\" (kinds: master, slave){}",
                        super::suggest::hint(other, ["master", "slave"])
                    );
                    self.problem(&lock.kind, message);
                    continue;
                }
            };
            let max_count = lock.max_count.as_ref().map_or(1, |count| *count.get_ref());
            if max_count == 0
                && let Some(count) = &lock.max_count
            {
                self.problem(count, "max_count must be at least 1".into());
            }
            let per_slave = lock
                .max_count_for_slave
                .as_ref()
                .map(|counts| counts.get_ref().clone())
                .unwrap_or_default();
            if let Some(counts) = &lock.max_count_for_slave {
                if kind == LockKind::Master {
                    self.problem(
                        counts,
                        "max_count_for_slave is only for kind = \"slave\" locks".into(),
                    );
                }
                for slave in counts.get_ref().keys() {
                    if !slave_names.contains(slave.as_str()) {
                        let hint = super::suggest::hint(slave, slave_names.iter().copied());
                        self.problem(counts, format!("max_count_for_slave names slave \"{slave}\", which is not defined by any [[slave]]{hint}"));
                    }
                }
            }
            defs.push(LockDef {
                name: name.clone(),
                kind,
                max_count: max_count.max(1),
                max_count_for_slave: per_slave,
            });
        }
        defs
    }

    /// The locks a builder or step takes; `level` says which, for the mixed-use check.
    pub(super) fn lock_uses(
        &mut self,
        raw: &[RawLockUse],
        defs: &[LockDef],
        level: &'static str,
        levels: &mut HashMap<String, (&'static str, Option<std::ops::Range<usize>>)>,
    ) -> Vec<LockUse> {
        let mut uses = Vec::new();
        for lock_use in raw {
            let name = lock_use.lock.get_ref();
            if !defs.iter().any(|def| &def.name == name) {
                let message = format!(
                    "lock \"{name}\" is not defined by any [[lock]]{}",
                    super::suggest::hint(name, defs.iter().map(|def| def.name.as_str()))
                );
                self.problem(&lock_use.lock, message);
                continue;
            }
            match levels.get(name) {
                Some((other, _)) if *other != level => {
                    let message = format!(
                        "lock \"{name}\" is taken for whole builds and for single steps; use it at one level only (two levels can deadlock)"
                    );
                    self.problem(&lock_use.lock, message);
                }
                _ => {
                    levels.insert(name.clone(), (level, Some(lock_use.lock.span())));
                }
            }
            uses.push(LockUse {
                lock: name.clone(),
                access: lock_use.access.unwrap_or(Access::Exclusive),
            });
        }
        uses
    }
}
