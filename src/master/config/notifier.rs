//! `[[notifier]]` in `master.toml` (issue 28): where notifications go beyond IRC — mail over
//! SMTP, or a signed webhook — and for which events and builders. Raw serde struct with spans,
//! checked into [`NotifierConfig`] with every problem on its line.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::master::config::Checker;

/// What a notifier can be told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NotifierEvent {
    /// A build failed.
    Failure,
    /// A build succeeded after a failed one.
    Fixed,
    /// A build failed after a successful one.
    Broken,
    /// A series was landed (the `landed` event).
    Landed,
    /// A bisection named the commit that broke a builder (the `culprit_found` event).
    Culprit,
}

impl NotifierEvent {
    pub const ALL: [NotifierEvent; 5] = [
        NotifierEvent::Failure,
        NotifierEvent::Fixed,
        NotifierEvent::Broken,
        NotifierEvent::Landed,
        NotifierEvent::Culprit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NotifierEvent::Failure => "failure",
            NotifierEvent::Fixed => "fixed",
            NotifierEvent::Broken => "broken",
            NotifierEvent::Landed => "landed",
            NotifierEvent::Culprit => "culprit",
        }
    }

    pub fn parse(word: &str) -> Option<NotifierEvent> {
        NotifierEvent::ALL
            .into_iter()
            .find(|event| event.as_str() == word)
    }
}

/// How a notifier delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifierKind {
    Mail(MailConfig),
    Webhook(WebhookConfig),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailConfig {
    /// The SMTP relay's host (also the TLS server name) and port.
    pub host: String,
    pub port: u16,
    /// `STARTTLS` required (the default); false only with `smtp_tls = "none"`.
    pub starttls: bool,
    /// A PEM file of extra certificates to trust (a private CA or a self-signed relay).
    pub ca_file: Option<PathBuf>,
    pub from: String,
    /// `to = ["try_user"]` mails the user who asked for the build (try, force, land) at
    /// `USER@user_domain`; a user name that is a mail address already is used as it is.
    pub user_domain: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    pub url: String,
    /// The HMAC key, read at each delivery (so it never sits in the config or its `Debug`).
    pub secret_file: Option<PathBuf>,
}

/// A validated `[[notifier]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifierConfig {
    /// Names it in the outbox (default `mail-N` / `webhook-N`, N its place in the file).
    pub name: String,
    pub kind: NotifierKind,
    /// Mail: addresses, and the words `author` (the authors of the build's changes),
    /// `culprit` (the author of a bisection's culprit) and `try_user` (who asked for the
    /// build or the landing). Webhooks: unused (the URL is it).
    pub to: Vec<String>,
    pub events: Vec<NotifierEvent>,
    /// Only these builders (empty: all).
    pub builders: Vec<String>,
    /// A notification not delivered after this long is given up, with a log line.
    pub give_up: Duration,
    /// One attempt may take this long (connect, send, answer).
    pub timeout: Duration,
    /// Retries wait 1 s, doubling up to this (default 5 min).
    pub retry_max: Duration,
}

pub const DEFAULT_EVENTS: [NotifierEvent; 3] = [
    NotifierEvent::Broken,
    NotifierEvent::Fixed,
    NotifierEvent::Culprit,
];
const DEFAULT_GIVE_UP: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(300);

#[derive(Debug, Deserialize)]
pub(super) struct RawNotifier {
    kind: Spanned<String>,
    #[serde(default)]
    name: Option<Spanned<String>>,
    #[serde(default)]
    to: Vec<Spanned<String>>,
    #[serde(default)]
    events: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    builders: Vec<Spanned<String>>,
    #[serde(default)]
    smtp: Option<Spanned<String>>,
    #[serde(default)]
    smtp_tls: Option<Spanned<String>>,
    #[serde(default)]
    ca_file: Option<String>,
    #[serde(default)]
    from: Option<Spanned<String>>,
    #[serde(default)]
    user_domain: Option<Spanned<String>>,
    #[serde(default)]
    url: Option<Spanned<String>>,
    #[serde(default)]
    secret_file: Option<Spanned<String>>,
    #[serde(default)]
    give_up: Option<Spanned<String>>,
    #[serde(default)]
    timeout: Option<Spanned<String>>,
    #[serde(default)]
    retry_max: Option<Spanned<String>>,
}

/// The `to` word for the user who asked for the build: the try, force or land user.
pub const TRY_USER: &str = "try_user";

/// An address as SMTP takes it in an envelope: one `@`, no spaces, brackets or controls.
pub fn plain_address(address: &str) -> bool {
    let Some((local, domain)) = address.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && !domain.contains('@')
        && address.len() <= 254
        && !address
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>,;\"()[]\\".contains(c))
}

impl Checker<'_> {
    pub(super) fn notifiers(
        &mut self,
        raw: &[RawNotifier],
        builder_names: &std::collections::HashSet<&str>,
    ) -> Vec<NotifierConfig> {
        let mut found: Vec<NotifierConfig> = Vec::new();
        for (index, raw) in raw.iter().enumerate() {
            if let Some(notifier) = self.notifier(index, raw, builder_names) {
                if let Some(name) = &raw.name
                    && found.iter().any(|other| other.name == notifier.name)
                {
                    let message = format!("[[notifier]] name \"{}\" is used twice", notifier.name);
                    self.problem(name, message);
                }
                found.push(notifier);
            }
        }
        found
    }

    fn notifier(
        &mut self,
        index: usize,
        raw: &RawNotifier,
        builder_names: &std::collections::HashSet<&str>,
    ) -> Option<NotifierConfig> {
        let kind_word = raw.kind.get_ref().as_str();
        let name = raw.name.as_ref().map_or_else(
            || format!("{kind_word}-{}", index + 1),
            |n| n.get_ref().clone(),
        );
        let events = match &raw.events {
            None => DEFAULT_EVENTS.to_vec(),
            Some(words) => {
                let mut events = Vec::new();
                for word in words {
                    match NotifierEvent::parse(word.get_ref()) {
                        Some(event) => events.push(event),
                        None => {
                            let message = format!(
                                "[[notifier]] events: unknown event \"{}\" (one of: {})",
                                word.get_ref(),
                                NotifierEvent::ALL.map(NotifierEvent::as_str).join(", ")
                            );
                            self.problem(word, message);
                        }
                    }
                }
                events
            }
        };
        for builder in &raw.builders {
            if !builder_names.contains(builder.get_ref().as_str()) {
                let message = format!(
                    "[[notifier]] builders: no builder named \"{}\"",
                    builder.get_ref()
                );
                self.problem(builder, message);
            }
        }
        let give_up = self.duration(raw.give_up.as_ref(), DEFAULT_GIVE_UP);
        let timeout = self.duration(raw.timeout.as_ref(), DEFAULT_TIMEOUT);
        let retry_max = self
            .duration(raw.retry_max.as_ref(), DEFAULT_RETRY_MAX)
            .max(Duration::from_secs(1));
        let kind = match kind_word {
            "mail" => NotifierKind::Mail(self.mail(raw)?),
            "webhook" => NotifierKind::Webhook(self.webhook(raw)?),
            other => {
                let message = format!(
                    "[[notifier]] kind = \"{other}\" is not a notifier kind (one of: mail, webhook)"
                );
                self.problem(&raw.kind, message);
                return None;
            }
        };
        Some(NotifierConfig {
            name,
            kind,
            to: raw.to.iter().map(|to| to.get_ref().clone()).collect(),
            events,
            builders: raw.builders.iter().map(|b| b.get_ref().clone()).collect(),
            give_up,
            timeout,
            retry_max,
        })
    }

    fn mail(&mut self, raw: &RawNotifier) -> Option<MailConfig> {
        if raw.to.is_empty() {
            self.problem(
                &raw.kind,
                "[[notifier]] kind = \"mail\" needs to = [\"address\", ...] (addresses, \"author\" or \"culprit\")".to_string(),
            );
        }
        for to in &raw.to {
            let to_word = to.get_ref().as_str();
            if !matches!(to_word, "author" | "culprit" | TRY_USER) && !plain_address(to_word) {
                let message = format!(
                    "[[notifier]] to: \"{to_word}\" is not a mail address (write it like \"ci@example.org\", or \"author\" / \"culprit\" / \"try_user\")"
                );
                self.problem(to, message);
            }
        }
        let user_domain = match &raw.user_domain {
            Some(domain) if !plain_address(&format!("user@{}", domain.get_ref())) => {
                let message = format!(
                    "[[notifier]] user_domain = \"{}\" is not a mail domain (write it like \"example.org\")",
                    domain.get_ref()
                );
                self.problem(domain, message);
                None
            }
            Some(domain) => Some(domain.get_ref().clone()),
            None => None,
        };
        if user_domain.is_none()
            && let Some(to) = raw.to.iter().find(|to| to.get_ref() == TRY_USER)
        {
            self.problem(
                to,
                "[[notifier]] to = [\"try_user\"] needs user_domain = \"example.org\" (the try user is mailed at USER@user_domain)".to_string(),
            );
        }
        let Some(smtp) = &raw.smtp else {
            self.problem(
                &raw.kind,
                "[[notifier]] kind = \"mail\" needs smtp = \"HOST:PORT\" (write it like \"smtp.example.org:587\")".to_string(),
            );
            return None;
        };
        let (host, port) = match smtp.get_ref().rsplit_once(':') {
            Some((host, port)) if !host.is_empty() => match port.parse::<u16>() {
                Ok(port) if port > 0 => (host.trim_matches(['[', ']']).to_string(), port),
                _ => (String::new(), 0),
            },
            _ => (String::new(), 0),
        };
        if port == 0 {
            let message = format!(
                "[[notifier]] smtp = \"{}\" is not HOST:PORT (write it like \"smtp.example.org:587\")",
                smtp.get_ref()
            );
            self.problem(smtp, message);
            return None;
        }
        let starttls = match raw.smtp_tls.as_ref().map(|tls| tls.get_ref().as_str()) {
            None | Some("starttls") => true,
            Some("none") => false,
            Some(other) => {
                let message =
                    format!("[[notifier]] smtp_tls = \"{other}\" is not one of: starttls, none");
                if let Some(tls) = &raw.smtp_tls {
                    self.problem(tls, message);
                }
                true
            }
        };
        let from = match &raw.from {
            Some(from) if !plain_address(from.get_ref()) => {
                let message = format!(
                    "[[notifier]] from = \"{}\" is not a mail address",
                    from.get_ref()
                );
                self.problem(from, message);
                String::new()
            }
            Some(from) => from.get_ref().clone(),
            None => format!(
                "buildbot@{}",
                crate::unix::host::name().unwrap_or_else(|| "localhost".to_string())
            ),
        };
        Some(MailConfig {
            host,
            port,
            starttls,
            ca_file: raw.ca_file.as_deref().map(|path| self.resolve(path)),
            from,
            user_domain,
        })
    }

    fn webhook(&mut self, raw: &RawNotifier) -> Option<WebhookConfig> {
        let Some(url) = &raw.url else {
            self.problem(
                &raw.kind,
                "[[notifier]] kind = \"webhook\" needs url = \"https://…\"".to_string(),
            );
            return None;
        };
        let text = url.get_ref();
        if !(text.starts_with("https://") || text.starts_with("http://"))
            || text.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            let message =
                format!("[[notifier]] url = \"{text}\" is not an http:// or https:// URL");
            self.problem(url, message);
            return None;
        }
        let secret_file = raw.secret_file.as_ref().and_then(|file| {
            let path = self.resolve(file.get_ref());
            match read_webhook_key(&path) {
                Ok(_) => Some(path),
                Err(reason) => {
                    self.problem(file, format!("[[notifier]] secret_file: {reason}"));
                    None
                }
            }
        });
        Some(WebhookConfig {
            url: text.clone(),
            secret_file,
        })
    }
}

/// A webhook's signing key, read from a file that must be as a key file is: a regular file (no
/// symlink, checked on the descriptor it is read from), owned by the master's user, and neither
/// readable nor writable by group or others (as sshd asks of a host key). One open for the
/// checks and the read, so what was checked is what signs.
pub fn read_webhook_key(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use crate::unix::regular_file::{Refused, open_regular};
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    /// A signing key, not a data set.
    const MAX_KEY_BYTES: u64 = 64 * 1024;
    let shown = path.display();
    let (file, metadata) = match open_regular(path) {
        Ok(Some(opened)) => opened,
        Ok(None) => return Err(format!("cannot read {shown}: it does not exist")),
        Err(Refused::Symlink) => return Err(format!("{shown} is a symlink; name the file itself")),
        Err(Refused::NotRegular) => return Err(format!("{shown} is not a file")),
        Err(Refused::Changed) => return Err(format!("{shown} changed while it was being opened")),
        Err(Refused::Io(err)) => return Err(format!("cannot read {shown}: {err}")),
    };
    let mode = metadata.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{shown} is open to others (mode {mode:o}); run chmod 600 on it"
        ));
    }
    let me = nix::unistd::geteuid().as_raw();
    if metadata.uid() != me {
        return Err(format!(
            "{shown} is owned by uid {}, not by the master's user (uid {me})",
            metadata.uid()
        ));
    }
    let mut key = Vec::new();
    file.take(MAX_KEY_BYTES + 1)
        .read_to_end(&mut key)
        .map_err(|err| format!("cannot read {shown}: {err}"))?;
    if key.len() as u64 > MAX_KEY_BYTES {
        return Err(format!("{shown} is larger than {MAX_KEY_BYTES} bytes"));
    }
    Ok(key)
}
