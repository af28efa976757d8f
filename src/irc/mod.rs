//! The IRC status bot (front end): one more way into `master::control`, beside SSH and the web.
//! It answers commands in its channels (`buildbot: status`) and in private messages, announces
//! builds by following the master's sequenced event log, and lets a nick linked to a unix user
//! (`ssh master irc-link`, then `/msg buildbot link CODE`) force and stop builds with that
//! user's rights. The `irc` crate speaks the protocol (registration, nick fallback, PING, TLS);
//! this module owns the connection's life: reconnecting with capped backoff, rejoining after a
//! kick, pacing what it says, and resuming announcements after the last one it really sent.
//! A lost IRC server never touches a build: nothing below waits on the bot.

pub mod answers;
pub mod commands;
pub mod notify;
pub mod pacer;
mod session;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::master::config::IrcConfig;
use crate::master::control::Control;

/// The bot's state that outlives a connection: where announcements stand, who hears about
/// what, and the builds people watch.
pub struct Bot {
    control: Arc<Control>,
    config: IrcConfig,
    /// Every announcement of events up to this sequence number has been handed to a
    /// connection; a new connection resumes after it.
    announced: u64,
    subscriptions: notify::Subscriptions,
    watches: Vec<Watch>,
    /// Watches whose build finished, with the event's sequence number, until the line that
    /// says so has been handed to a connection; a connection lost before that puts them back.
    fired: Vec<(u64, Watch)>,
}

/// `watch BUILDER`: say to `target` when build `number` of `builder` finishes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Watch {
    target: String,
    builder: String,
    number: i64,
}

/// How a connection ended.
enum Ended {
    /// The master is stopping.
    Shutdown,
    /// The connection failed or was lost; `registered` says whether the server had let the
    /// bot in (then the backoff starts again from its minimum).
    Lost { registered: bool, why: String },
}

/// Runs the bot while the config in force has an `[irc]` section, until `shutdown`. A reconfig
/// that changes the section ends the connection and starts one with the new settings; what was
/// announced and who watches what carry over, so nothing is said twice.
pub async fn run(control: Arc<Control>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut changes = control.config_changes();
    let mut bot: Option<Bot> = None;
    let mut running = false;
    loop {
        let wanted = changes.borrow_and_update().irc.clone();
        match wanted {
            None if running => {
                running = false;
                tracing::info!("IRC bot stopped: [irc] was removed from the configuration");
            }
            None => {}
            Some(config) => {
                running = true;
                let bot = match bot.as_mut() {
                    Some(bot) => {
                        bot.reconfigure(config.clone());
                        bot
                    }
                    None => bot.insert(Bot::new(Arc::clone(&control), config.clone())),
                };
                let connection_ends = shutdown.child_token();
                let watcher = tokio::spawn(end_on_irc_change(
                    changes.clone(),
                    config,
                    connection_ends.clone(),
                ));
                bot.connect_until(&connection_ends).await;
                watcher.abort();
            }
        }
        // After a connection ended for a new [irc] section, `changes` has not seen that
        // config yet, so this returns at once and the loop takes it up.
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            changed = changes.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// Cancels `connection_ends` when a reconfig puts an `[irc]` section other than `current` in
/// force (or removes it).
async fn end_on_irc_change(
    mut changes: tokio::sync::watch::Receiver<Arc<crate::master::config::Config>>,
    current: IrcConfig,
    connection_ends: CancellationToken,
) {
    while changes.changed().await.is_ok() {
        if changes.borrow_and_update().irc.as_ref() != Some(&current) {
            connection_ends.cancel();
            return;
        }
    }
}

impl Bot {
    fn new(control: Arc<Control>, config: IrcConfig) -> Bot {
        Bot {
            subscriptions: notify::Subscriptions::new(&config.channels, &config.notify),
            announced: 0,
            watches: Vec::new(),
            fired: Vec::new(),
            control,
            config,
        }
    }

    /// New settings from a reconfig. The channels' `notify on|off` choices are kept unless the
    /// channels or their defaults changed.
    fn reconfigure(&mut self, config: IrcConfig) {
        if config.channels != self.config.channels || config.notify != self.config.notify {
            self.subscriptions = notify::Subscriptions::new(&config.channels, &config.notify);
        }
        self.config = config;
    }

    /// Connects, and reconnects with backoff whenever the connection is lost, until `ends`.
    async fn connect_until(&mut self, ends: &CancellationToken) {
        let mut backoff = self.config.reconnect_min;
        loop {
            let ended = self.session(ends).await;
            // Their builds' ends will be announced again from the event log, to them too.
            let unsaid = std::mem::take(&mut self.fired);
            self.watches
                .extend(unsaid.into_iter().map(|(_, watch)| watch));
            // Whoever holds a nick now can no longer be seen to quit: links start again.
            self.control
                .irc_links()
                .unbind_all("the bot's IRC connection ended");
            let registered = match ended {
                Ended::Shutdown => return,
                Ended::Lost { registered, why } => {
                    if registered {
                        backoff = self.config.reconnect_min;
                    }
                    tracing::warn!(
                        server = %self.config.host, port = self.config.port,
                        "IRC connection lost: {why}; reconnecting in {backoff:?}"
                    );
                    registered
                }
            };
            tokio::select! {
                _ = ends.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            if !registered {
                backoff = next_backoff(backoff, self.config.reconnect_max);
            }
        }
    }
}

/// Doubles, up to `max`.
fn next_backoff(current: Duration, max: Duration) -> Duration {
    current.saturating_mul(2).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let max = Duration::from_secs(60);
        let mut backoff = Duration::from_secs(1);
        let mut seen = Vec::new();
        for _ in 0..8 {
            backoff = next_backoff(backoff, max);
            seen.push(backoff.as_secs());
        }
        assert_eq!(seen, [2, 4, 8, 16, 32, 60, 60, 60]);
    }
}
