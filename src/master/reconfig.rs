//! Reconfiguration: the master's current [`Config`] and how a new one replaces it while the
//! master runs (`buildbot reconfig DIR`, SIGHUP).
//!
//! [`LiveConfig`] holds the current config in a `watch` channel: readers take a snapshot
//! (`Arc<Config>`) for the action at hand, and each subsystem that keeps state derived from the
//! config subscribes and applies its own part when it changes (the scheduler executor: builders,
//! slaves and locks; the schedulers task: the schedulers; the spool intake reads the try
//! builders per scan; sshd reads slaves and access settings per login; the IRC bot reconnects
//! when its `[irc]` section changes, and starts or stops when the section comes or goes).
//! [`merge`] is the pure decision of what a new file may change now: settings bound at start
//! (listeners, host key, state paths, connection limits) keep their running value and each such
//! change is reported as needing a restart. This module does not read the file (`config`) nor
//! talk to the process that asked (`daemon`).

use std::sync::Arc;

use tokio::sync::watch;

use super::config::Config;

/// The current configuration and its generation (0 = read at start, +1 per reconfig).
pub struct LiveConfig {
    current: watch::Sender<Arc<Config>>,
    generation: std::sync::atomic::AtomicU64,
}

impl LiveConfig {
    pub fn new(config: Arc<Config>) -> LiveConfig {
        LiveConfig {
            current: watch::Sender::new(config),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The config in force now: a snapshot, unchanged by later reconfigs.
    pub fn current(&self) -> Arc<Config> {
        Arc::clone(&self.current.borrow())
    }

    /// Wakes on every reconfig; the receiver's value is the new config.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Config>> {
        self.current.subscribe()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Puts `new` in force (after [`merge`] with the current one) and tells the subscribers.
    pub fn replace(&self, new: Config) -> Report {
        let old = self.current();
        let (applied, notes) = merge(&old, new);
        let changes = summarize(&old, &applied);
        self.current.send_replace(Arc::new(applied));
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        Report {
            generation,
            changes,
            needs_restart: notes,
        }
    }
}

/// The config in force, as a handle reads it: one snapshot per call.
#[derive(Clone)]
pub struct ConfigView(watch::Receiver<Arc<Config>>);

impl ConfigView {
    pub fn new(receiver: watch::Receiver<Arc<Config>>) -> ConfigView {
        ConfigView(receiver)
    }

    pub fn current(&self) -> Arc<Config> {
        self.0.borrow().clone()
    }

    /// Wakes on every reconfig.
    pub fn changes(&self) -> watch::Receiver<Arc<Config>> {
        self.0.clone()
    }
}

/// What one reconfig did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub generation: u64,
    /// What changed, one line each ("builder mac added").
    pub changes: Vec<String>,
    /// Settings that only a restart changes, kept at their running value, one line each.
    pub needs_restart: Vec<String>,
}

/// The config to put in force: `new`, except the settings bound at start, which keep `old`'s
/// value; each such difference is one line saying so.
pub fn merge(old: &Config, mut new: Config) -> (Config, Vec<String>) {
    let mut notes = Vec::new();
    macro_rules! keep {
        ($($field:ident).+, $name:expr) => {
            if new.$($field).+ != old.$($field).+ {
                notes.push(format!(
                    "{} change needs a restart; kept {}",
                    $name,
                    shown(&format!("{:?}", old.$($field).+))
                ));
                new.$($field).+ = old.$($field).+.clone();
            }
        };
    }
    keep!(master_dir, "master directory");
    keep!(sshd.listen, "[sshd] listen");
    keep!(sshd.host_key, "[sshd] host_key");
    keep!(sshd.authorized_keys, "[sshd] authorized_keys");
    // russh's own attempt limit is set from it when the server starts.
    keep!(sshd.max_auth_tries, "[sshd] max_auth_tries");
    keep!(sshd.max_startups, "[sshd] max_startups");
    keep!(
        sshd.max_startups_per_source,
        "[sshd] max_startups_per_source"
    );
    keep!(sshd.keepalive_interval, "[sshd] keepalive_interval");
    keep!(http.listen, "[http] listen");
    keep!(http.max_connections, "[http] max_connections");
    keep!(
        http.max_connections_per_source,
        "[http] max_connections_per_source"
    );
    keep!(http.header_read_timeout, "[http] header_read_timeout");
    keep!(spool.dir, "[spool] dir");
    keep!(change_sources, "[[change_source]]");
    keep!(database, "[database]");
    (new, notes)
}

/// Debug output of a value, shortened for one line.
fn shown(debug: &str) -> String {
    const MAX: usize = 80;
    let trimmed = debug.trim_matches('"');
    if matches!(trimmed, "[]" | "{}" | "" | "None") {
        return "none".to_string();
    }
    if trimmed.chars().count() > MAX {
        let short: String = trimmed.chars().take(MAX).collect();
        format!("{short}...")
    } else {
        trimmed.to_string()
    }
}

/// The builders and slaves added, removed and changed, and the other sections that changed.
fn summarize(old: &Config, new: &Config) -> Vec<String> {
    let mut changes = Vec::new();
    let names = |config: &Config, builders: bool| -> Vec<String> {
        if builders {
            config.builders.iter().map(|b| b.name.clone()).collect()
        } else {
            config.slaves.iter().map(|s| s.name.clone()).collect()
        }
    };
    for (kind, builders) in [("builder", true), ("slave", false)] {
        let (before, after) = (names(old, builders), names(new, builders));
        for name in after.iter().filter(|name| !before.contains(name)) {
            changes.push(format!("{kind} {name} added"));
        }
        for name in before.iter().filter(|name| !after.contains(name)) {
            changes.push(format!("{kind} {name} removed"));
        }
    }
    for builder in &new.builders {
        if let Some(previous) = old.builder(&builder.name)
            && previous != builder
        {
            changes.push(format!("builder {} changed", builder.name));
        }
    }
    for slave in &new.slaves {
        if let Some(previous) = old.slave(&slave.name)
            && previous != slave
        {
            changes.push(format!("slave {} changed", slave.name));
        }
    }
    let sections = [
        ("[[scheduler]]", old.schedulers != new.schedulers),
        ("[[lock]]", old.locks != new.locks),
        (
            "[master]",
            (&old.name, &old.operators, &old.quotas) != (&new.name, &new.operators, &new.quotas),
        ),
        ("[sshd]", old.sshd != new.sshd),
        ("[spool]", old.spool != new.spool),
        ("[changes]", old.changes != new.changes),
        ("[irc]", old.irc != new.irc),
    ];
    for (section, changed) in sections {
        if changed {
            changes.push(format!("{section} changed"));
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test";

    fn config(extra_sshd: &str, builders: &[&str]) -> Config {
        let mut text = format!(
            "[master]\nname = \"t\"\n[sshd]\nlisten = \"127.0.0.1:2222\"\n{extra_sshd}\n\
             authorized_keys = [\"authorized_keys.d/%u\"]\n\
             [[slave]]\nname = \"s1\"\npublic_key = \"{KEY}\"\n"
        );
        for builder in builders {
            text.push_str(&format!(
                "[[builder]]\nname = \"{builder}\"\nslaves = [\"s1\"]\nrepo = \"/r\"\n"
            ));
        }
        Config::from_toml(&text, Path::new("/m")).expect("valid config")
    }

    #[test]
    fn settings_bound_at_start_are_kept_and_reported() {
        let old = config("", &["linux"]);
        let new = config("allow_root = true", &["linux"]);
        let mut new = new;
        new.sshd.listen = "127.0.0.1:2223".parse().expect("address");
        let (applied, notes) = merge(&old, new);
        assert_eq!(
            notes,
            vec!["[sshd] listen change needs a restart; kept 127.0.0.1:2222"]
        );
        assert_eq!(applied.sshd.listen, old.sshd.listen);
        assert!(applied.sshd.allow_root, "access settings apply at once");
    }

    #[test]
    fn a_reconfig_says_what_changed_and_counts_generations() {
        let live = LiveConfig::new(Arc::new(config("", &["linux", "old"])));
        let mut changed = live.subscribe();
        let report = live.replace(config("allow_root = true", &["linux", "mac"]));
        assert_eq!(report.generation, 1);
        assert_eq!(
            report.changes,
            vec!["builder mac added", "builder old removed", "[sshd] changed"]
        );
        assert!(report.needs_restart.is_empty());
        assert!(changed.has_changed().expect("sender alive"));
        assert!(changed.borrow_and_update().builder("mac").is_some());
        assert_eq!(live.generation(), 1);
    }
}
