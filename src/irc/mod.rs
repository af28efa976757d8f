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

/// Runs the bot until `shutdown`: connects, and reconnects with backoff whenever the
/// connection is lost. Returns only when the master stops.
pub async fn run(
    control: Arc<Control>,
    config: IrcConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut bot = Bot {
        subscriptions: notify::Subscriptions::new(&config.channels, &config.notify),
        announced: 0,
        watches: Vec::new(),
        fired: Vec::new(),
        control,
        config,
    };
    let mut backoff = bot.config.reconnect_min;
    loop {
        let ended = bot.session(&shutdown).await;
        // Their builds' ends will be announced again from the event log, to them too.
        let unsaid = std::mem::take(&mut bot.fired);
        bot.watches
            .extend(unsaid.into_iter().map(|(_, watch)| watch));
        // Whoever holds a nick now can no longer be seen to quit: links start again.
        bot.control
            .irc_links
            .unbind_all("the bot's IRC connection ended");
        let registered = match ended {
            Ended::Shutdown => return Ok(()),
            Ended::Lost { registered, why } => {
                if registered {
                    backoff = bot.config.reconnect_min;
                }
                tracing::warn!(
                    server = %bot.config.host, port = bot.config.port,
                    "IRC connection lost: {why}; reconnecting in {backoff:?}"
                );
                registered
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(backoff) => {}
        }
        if !registered {
            backoff = next_backoff(backoff, bot.config.reconnect_max);
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
