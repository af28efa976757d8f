//! The master core: configuration, history, the scheduler and the builds it runs, the slaves'
//! end of the RPC, and `control`, the application layer every front end (SSH, web, IRC) calls.
//! It knows nothing of SSH sessions or HTTP: `daemon` composes it with the front ends.

pub mod access;
pub mod artifact_fetch;
pub mod artifacts;
pub mod bisect;
pub mod board;
pub mod build;
pub mod config;
pub mod control;
pub mod events;
pub mod executor;
pub mod git_remote;
pub mod intake;
pub mod interpolate;
pub mod irc_links;
pub mod journal;
pub mod land;
pub mod lease;
pub mod locks;
pub mod log_tail;
pub mod logs;
pub mod metrics;
pub mod notify;
pub mod poller;
pub mod quotas;
pub mod reconfig;
pub mod results;
pub mod retention;
pub mod revisions;
pub mod roster;
pub mod scheduler;
pub mod schedulers;
pub mod secrets;
pub mod sessions;
pub mod shell;
pub mod slaves;
pub mod store;
pub mod test_results;

/// Locks a mutex that guards plain data; a panic elsewhere while it was held leaves data that is
/// still consistent for these short, non-awaiting sections, so poisoning is not an error.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
