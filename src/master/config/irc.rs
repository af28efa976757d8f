//! `[irc]` in `master.toml`: the IRC status bot (off when the section is absent). Raw serde
//! struct with spans, checked into [`IrcConfig`] with every problem reported on its line.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::master::config::Checker;

/// What the bot can announce, per channel or per user (`notify on|off EVENT...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NotifyEvent {
    Started,
    Finished,
    Success,
    Failure,
    Exception,
    Interrupted,
    /// failure → success
    Fixed,
    /// success → failure
    Broken,
}

impl NotifyEvent {
    pub const ALL: [NotifyEvent; 8] = [
        NotifyEvent::Started,
        NotifyEvent::Finished,
        NotifyEvent::Success,
        NotifyEvent::Failure,
        NotifyEvent::Exception,
        NotifyEvent::Interrupted,
        NotifyEvent::Fixed,
        NotifyEvent::Broken,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::Started => "started",
            NotifyEvent::Finished => "finished",
            NotifyEvent::Success => "success",
            NotifyEvent::Failure => "failure",
            NotifyEvent::Exception => "exception",
            NotifyEvent::Interrupted => "interrupted",
            NotifyEvent::Fixed => "fixed",
            NotifyEvent::Broken => "broken",
        }
    }

    pub fn parse(word: &str) -> Option<NotifyEvent> {
        NotifyEvent::ALL
            .into_iter()
            .find(|event| event.as_str().eq_ignore_ascii_case(word))
    }
}

/// The validated `[irc]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IrcConfig {
    /// Host name (also the TLS server name) and port.
    pub host: String,
    pub port: u16,
    pub tls: bool,
    /// A PEM file of extra certificates to trust (a private CA or a self-signed server).
    pub ca_file: Option<PathBuf>,
    /// The server password (`PASS`), if the server wants one.
    pub password: Option<String>,
    pub nick: String,
    /// Tried in order when `nick` is taken (default: `nick_`, `nick__`, `nick1`..`nick9`).
    pub alt_nicks: Vec<String>,
    pub channels: Vec<String>,
    /// What channels hear about until someone says `notify on|off` there.
    pub notify: Vec<NotifyEvent>,
    /// How long a nick stays bound to a unix user after `link` (default 12h).
    pub link_ttl: Duration,
    /// An answer longer than this is cut, with a URL to the rest (default 8).
    pub max_lines: usize,
    /// Lines sent at once before pacing starts (default 4).
    pub burst: usize,
    /// Then one line per this (default 2s, what the common clients use to stay clear of
    /// flood limits).
    pub line_interval: Duration,
    /// Reconnect backoff: from the first, doubling, capped at the second (default 1s..60s).
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// After a reconnect, at most this many announcements per target, then one summary line.
    pub catch_up: usize,
}

const DEFAULT_NICK: &str = "buildbot";
const DEFAULT_LINK_TTL: Duration = Duration::from_secs(12 * 3600);
const DEFAULT_MAX_LINES: usize = 8;
const DEFAULT_BURST: usize = 4;
const DEFAULT_LINE_INTERVAL: Duration = Duration::from_secs(2);
const DEFAULT_RECONNECT_MIN: Duration = Duration::from_secs(1);
const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(60);
const DEFAULT_CATCH_UP: usize = 10;
pub const DEFAULT_NOTIFY: [NotifyEvent; 3] = [
    NotifyEvent::Failure,
    NotifyEvent::Fixed,
    NotifyEvent::Exception,
];

#[derive(Debug, Deserialize)]
pub(super) struct RawIrc {
    server: Spanned<String>,
    #[serde(default)]
    tls: bool,
    #[serde(default)]
    ca_file: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    nick: Option<Spanned<String>>,
    #[serde(default)]
    alt_nicks: Option<Vec<String>>,
    #[serde(default)]
    channels: Vec<Spanned<String>>,
    #[serde(default)]
    notify: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    link_ttl: Option<Spanned<String>>,
    #[serde(default)]
    max_lines: Option<Spanned<usize>>,
    #[serde(default)]
    burst: Option<Spanned<usize>>,
    #[serde(default)]
    line_interval: Option<Spanned<String>>,
    #[serde(default)]
    reconnect_min: Option<Spanned<String>>,
    #[serde(default)]
    reconnect_max: Option<Spanned<String>>,
    #[serde(default)]
    catch_up: Option<usize>,
}

/// A nick as IRC allows it: a letter or one of `[]\`_^{|}` first, then those, digits and `-`.
fn valid_nick(nick: &str) -> bool {
    let special = |c: char| "[]\\`_^{|}".contains(c);
    let mut chars = nick.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || special(c))
        && chars.all(|c| c.is_ascii_alphanumeric() || special(c) || c == '-')
        && nick.len() <= 30
}

impl Checker<'_> {
    pub(super) fn irc(&mut self, raw: Option<&RawIrc>) -> Option<IrcConfig> {
        let raw = raw?;
        let (host, port) = match raw.server.get_ref().rsplit_once(':') {
            Some((host, port)) if !host.is_empty() => match port.parse::<u16>() {
                Ok(port) if port > 0 => (host.trim_matches(['[', ']']).to_string(), port),
                _ => {
                    self.irc_server_problem(&raw.server);
                    (String::new(), 0)
                }
            },
            _ => {
                self.irc_server_problem(&raw.server);
                (String::new(), 0)
            }
        };
        let nick = match &raw.nick {
            Some(nick) if !valid_nick(nick.get_ref()) => {
                let message = format!("[irc] nick \"{}\" is not a valid IRC nick", nick.get_ref());
                self.problem(nick, message);
                DEFAULT_NICK.to_string()
            }
            Some(nick) => nick.get_ref().clone(),
            None => DEFAULT_NICK.to_string(),
        };
        for channel in &raw.channels {
            let name = channel.get_ref();
            if !name.starts_with(['#', '&']) || name.contains([' ', ',', '\x07']) || name.len() < 2
            {
                let message = format!(
                    "[irc] channel \"{name}\" is not a channel name (write it like \"#ci\")"
                );
                self.problem(channel, message);
            }
        }
        let notify = match &raw.notify {
            None => DEFAULT_NOTIFY.to_vec(),
            Some(words) => {
                let mut events = Vec::new();
                for word in words {
                    match NotifyEvent::parse(word.get_ref()) {
                        Some(event) => events.push(event),
                        None => {
                            let message = format!(
                                "[irc] notify: unknown event \"{}\" (one of: {})",
                                word.get_ref(),
                                NotifyEvent::ALL.map(NotifyEvent::as_str).join(", ")
                            );
                            self.problem(word, message);
                        }
                    }
                }
                events
            }
        };
        let alt_nicks = raw.alt_nicks.clone().unwrap_or_else(|| {
            let mut alt = vec![format!("{nick}_"), format!("{nick}__")];
            alt.extend((1..=9).map(|n| format!("{nick}{n}")));
            alt
        });
        let link_ttl = self.duration(raw.link_ttl.as_ref(), DEFAULT_LINK_TTL);
        let line_interval = self.duration(raw.line_interval.as_ref(), DEFAULT_LINE_INTERVAL);
        let reconnect_min = self.duration(raw.reconnect_min.as_ref(), DEFAULT_RECONNECT_MIN);
        let reconnect_max = self.duration(raw.reconnect_max.as_ref(), DEFAULT_RECONNECT_MAX);
        if let Some(max) = &raw.reconnect_max
            && reconnect_max < reconnect_min
        {
            self.problem(
                max,
                "[irc] reconnect_max must not be shorter than reconnect_min".to_string(),
            );
        }
        let max_lines =
            self.at_least_one(raw.max_lines.as_ref(), DEFAULT_MAX_LINES, "[irc] max_lines");
        let burst = self.at_least_one(raw.burst.as_ref(), DEFAULT_BURST, "[irc] burst");
        Some(IrcConfig {
            host,
            port,
            tls: raw.tls,
            ca_file: raw.ca_file.as_deref().map(|path| self.resolve(path)),
            password: raw.password.clone().filter(|password| !password.is_empty()),
            nick,
            alt_nicks,
            channels: raw.channels.iter().map(|c| c.get_ref().clone()).collect(),
            notify,
            link_ttl,
            max_lines,
            burst,
            line_interval,
            reconnect_min: reconnect_min.max(Duration::from_millis(10)),
            reconnect_max: reconnect_max.max(reconnect_min),
            catch_up: raw.catch_up.unwrap_or(DEFAULT_CATCH_UP),
        })
    }

    fn irc_server_problem(&mut self, server: &Spanned<String>) {
        let message = format!(
            "[irc] server = \"{}\" is not HOST:PORT (write it like \"irc.example.org:6697\")",
            server.get_ref()
        );
        self.problem(server, message);
    }
}
