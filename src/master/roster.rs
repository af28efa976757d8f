//! The roster of connected slaves: the one place that knows which connection each slave has.
//! A newer connection of the same slave replaces the older one (which is closed). Readers get
//! [`SlaveInfo`] snapshots; only the build executor takes a slave's link, to run a build on it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::master::lock;
use crate::master::slaves::{SlaveInfo, SlaveLink};

#[derive(Default)]
pub struct Roster {
    links: Mutex<BTreeMap<String, Arc<SlaveLink>>>,
}

impl Roster {
    /// Records a slave's new connection; the one it replaces, if any, is closed.
    pub fn connect(&self, link: Arc<SlaveLink>) {
        let previous = lock(&self.links).insert(link.name.clone(), Arc::clone(&link));
        if let Some(previous) = previous {
            tracing::warn!(slave = %link.name, old = %previous.peer, new = %link.peer, "slave connected again; dropping the older connection");
            previous.close();
        }
    }

    /// Forgets connection `conn_id` of `name`; a newer connection is left alone. Returns
    /// whether it was the current one.
    pub fn disconnect(&self, name: &str, conn_id: u64) -> bool {
        let mut links = lock(&self.links);
        if links.get(name).is_some_and(|link| link.conn_id == conn_id) {
            links.remove(name);
            return true;
        }
        false
    }

    /// Closes the slave's connection if it was made before `before` (a newer one of the same
    /// slave reached another master of the cluster). Returns whether one was closed.
    pub fn close_older(&self, name: &str, before: std::time::SystemTime) -> bool {
        let link = lock(&self.links).get(name).cloned();
        match link.filter(|link| link.since < before) {
            Some(link) => {
                link.close();
                true
            }
            None => false,
        }
    }

    /// Closes connection `conn_id` of `name` (it did not answer a ping).
    pub fn close(&self, name: &str, conn_id: u64) {
        let link = lock(&self.links).get(name).cloned();
        if let Some(link) = link.filter(|link| link.conn_id == conn_id) {
            link.close();
        }
    }

    /// The link to run a build on, if connection `conn_id` is still the slave's current one.
    pub fn link(&self, name: &str, conn_id: u64) -> Option<Arc<SlaveLink>> {
        lock(&self.links)
            .get(name)
            .filter(|link| link.conn_id == conn_id && !link.closed.is_cancelled())
            .cloned()
    }

    /// The slave's current connection, if it has one here (a shell relays over it).
    pub fn current(&self, name: &str) -> Option<Arc<SlaveLink>> {
        lock(&self.links)
            .get(name)
            .filter(|link| !link.closed.is_cancelled())
            .cloned()
    }

    pub fn is_connected(&self, name: &str) -> bool {
        lock(&self.links).contains_key(name)
    }

    pub fn snapshot(&self) -> BTreeMap<String, SlaveInfo> {
        lock(&self.links)
            .iter()
            .map(|(name, link)| (name.clone(), link.info()))
            .collect()
    }
}
