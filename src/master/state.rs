//! The master's live state that several parts read: which slaves are connected right now.
//! Owned by the master; the SSH server and the web server read it through `Arc<MasterState>`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::master::config::Config;

/// A slave with a live RPC connection.
#[derive(Debug, Clone)]
pub struct ConnectedSlave {
    pub peer: SocketAddr,
    pub since: SystemTime,
}

/// A build request made from a try job, waiting for a slave.
#[derive(Debug, Clone)]
pub struct PendingRequest {
    pub builder: String,
    /// The job's file name in the spool's `cur/`.
    pub job_name: String,
    pub jobid: String,
    pub who: Option<String>,
    pub comment: Option<String>,
    pub received: SystemTime,
}

pub struct MasterState {
    pub config: Arc<Config>,
    /// `SHA256:...` of the host key, shown to users so they can check what they connect to.
    pub host_key_fingerprint: String,
    connected: Mutex<BTreeMap<String, ConnectedSlave>>,
    pending: Mutex<Vec<PendingRequest>>,
}

impl MasterState {
    pub fn new(config: Arc<Config>, host_key_fingerprint: String) -> MasterState {
        MasterState {
            config,
            host_key_fingerprint,
            connected: Mutex::new(BTreeMap::new()),
            pending: Mutex::new(Vec::new()),
        }
    }

    /// Queues one request per builder of a job taken from the spool.
    pub fn add_requests(&self, requests: impl IntoIterator<Item = PendingRequest>) {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .extend(requests);
    }

    pub fn pending_requests(&self) -> Vec<PendingRequest> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn connected_slaves(&self) -> BTreeMap<String, ConnectedSlave> {
        self.connected
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// A plain-text status: one line for the master, one per builder (all, or those named).
    pub fn status_lines(&self, only: &[String]) -> String {
        let connected = self.connected_slaves();
        let pending = self.pending_requests();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "master {}: {} builders, {} of {} slaves connected",
            self.config.name,
            self.config.builders.len(),
            connected.len(),
            self.config.slaves.len()
        );
        for builder in &self.config.builders {
            if !only.is_empty() && !only.contains(&builder.name) {
                continue;
            }
            let slaves: Vec<String> = builder
                .slaves
                .iter()
                .map(|name| match connected.get(name) {
                    Some(_) => format!("{name} (connected)"),
                    None => format!("{name} (not connected)"),
                })
                .collect();
            let state = if builder
                .slaves
                .iter()
                .any(|name| connected.contains_key(name))
            {
                "idle"
            } else {
                "offline"
            };
            let queued = pending
                .iter()
                .filter(|request| request.builder == builder.name)
                .count();
            let _ = writeln!(
                out,
                "{}: {state}, {queued} queued; slaves: {}",
                builder.name,
                slaves.join(", ")
            );
        }
        out
    }
}
