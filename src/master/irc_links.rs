//! Which IRC nick speaks for which unix user. `ssh master irc-link` (the SSH front end) asks for a
//! one-time code; `/msg BOT link CODE` (the IRC front end) redeems it and binds the nick that
//! said it to the user who asked. A binding ends when the nick quits or changes nick (the bot
//! tells us), when the bot loses sight of it (its connection drops, or the nick leaves every
//! channel the bot is in), or after `[irc] link_ttl`: someone who takes the nick later inherits
//! nothing. Both front ends use it, so it lives below them; bindings are in memory only.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::master::lock;
use crate::unix::accounts::UnixAccount;

/// How long a link code waits to be used.
pub const LINK_CODE_LIFETIME: Duration = Duration::from_secs(10 * 60);

/// Why a code was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("unknown or expired link code (ask for a new one with: ssh MASTER irc-link)")]
    UnknownCode,
}

/// A nick bound to a unix user.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    /// As the nick was written when it linked.
    pub nick: String,
    pub account: UnixAccount,
    /// Seconds since the unix epoch.
    pub since: f64,
    /// Seconds from now until the binding ends by itself.
    pub expires_in: Duration,
}

struct Bound {
    nick: String,
    account: UnixAccount,
    since: f64,
    expires: Instant,
}

pub struct IrcLinks {
    ttl: Duration,
    codes: Mutex<HashMap<String, (UnixAccount, Instant)>>,
    /// Keyed by the nick in IRC's lower case.
    bindings: Mutex<HashMap<String, Bound>>,
}

/// A nick in IRC's case mapping (rfc1459: `[]\~` are the upper case of `{}|^`).
pub fn fold_nick(nick: &str) -> String {
    nick.chars()
        .map(|c| match c {
            '[' => '{',
            ']' => '}',
            '\\' => '|',
            '~' => '^',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// Eight characters from an alphabet without look-alikes, in two groups: `K7MX-Q2PD`.
fn new_code() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";
    let bytes: [u8; 8] = rand::random();
    let chars: Vec<char> = bytes
        .iter()
        .map(|byte| ALPHABET[usize::from(*byte) % ALPHABET.len()] as char)
        .collect();
    format!(
        "{}-{}",
        chars[..4].iter().collect::<String>(),
        chars[4..].iter().collect::<String>()
    )
}

impl IrcLinks {
    /// Bindings last `ttl` at most.
    pub fn new(ttl: Duration) -> IrcLinks {
        IrcLinks {
            ttl,
            codes: Mutex::new(HashMap::new()),
            bindings: Mutex::new(HashMap::new()),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A one-time code for `account`, valid for [`LINK_CODE_LIFETIME`].
    pub fn new_code(&self, account: UnixAccount) -> String {
        let code = new_code();
        let mut codes = lock(&self.codes);
        let now = Instant::now();
        codes.retain(|_, (_, expires)| *expires > now);
        codes.insert(code.clone(), (account, now + LINK_CODE_LIFETIME));
        code
    }

    /// Uses up `code` and binds `nick` to its user (replacing what the nick had).
    pub fn redeem(&self, code: &str, nick: &str) -> Result<UnixAccount, LinkError> {
        let code = code.trim().to_ascii_uppercase();
        let (account, expires) = lock(&self.codes)
            .remove(&code)
            .ok_or(LinkError::UnknownCode)?;
        if expires <= Instant::now() {
            return Err(LinkError::UnknownCode);
        }
        tracing::info!(%nick, user = %account.name, "IRC nick linked");
        lock(&self.bindings).insert(
            fold_nick(nick),
            Bound {
                nick: nick.to_string(),
                account: account.clone(),
                since: crate::status::unix_now(),
                expires: Instant::now() + self.ttl,
            },
        );
        Ok(account)
    }

    /// Voids a code that was shown where others could read it.
    pub fn discard(&self, code: &str) {
        lock(&self.codes).remove(&code.trim().to_ascii_uppercase());
    }

    /// The user `nick` speaks for, if it is bound and the binding has not expired.
    pub fn account_of(&self, nick: &str) -> Option<UnixAccount> {
        let mut bindings = lock(&self.bindings);
        let key = fold_nick(nick);
        match bindings.get(&key) {
            Some(bound) if bound.expires > Instant::now() => Some(bound.account.clone()),
            Some(_) => {
                bindings.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends the binding of `nick` (it quit, changed nick, or left the bot's sight).
    pub fn unbind(&self, nick: &str, why: &str) {
        if let Some(bound) = lock(&self.bindings).remove(&fold_nick(nick)) {
            tracing::info!(nick = %bound.nick, user = %bound.account.name, %why, "IRC link ended");
        }
    }

    /// Ends every binding: the bot can no longer see who holds which nick.
    pub fn unbind_all(&self, why: &str) {
        let mut bindings = lock(&self.bindings);
        if !bindings.is_empty() {
            tracing::info!(count = bindings.len(), %why, "IRC links ended");
        }
        bindings.clear();
    }

    /// The live bindings, by nick.
    pub fn list(&self) -> Vec<Binding> {
        let now = Instant::now();
        let mut bindings = lock(&self.bindings);
        bindings.retain(|_, bound| bound.expires > now);
        let mut list: Vec<Binding> = bindings
            .values()
            .map(|bound| Binding {
                nick: bound.nick.clone(),
                account: bound.account.clone(),
                since: bound.since,
                expires_in: bound.expires.saturating_duration_since(now),
            })
            .collect();
        list.sort_by(|a, b| a.nick.cmp(&b.nick));
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> UnixAccount {
        UnixAccount {
            name: "alice".into(),
            uid: 1000,
            gids: vec![1000],
            home: "/home/alice".into(),
        }
    }

    #[test]
    fn a_code_binds_once_and_the_binding_ends_on_unbind() {
        let links = IrcLinks::new(Duration::from_secs(3600));
        let code = links.new_code(alice());
        assert_eq!(code.len(), 9);
        assert_eq!(links.redeem(&code.to_lowercase(), "Al[ice]"), Ok(alice()));
        assert_eq!(links.redeem(&code, "mallory"), Err(LinkError::UnknownCode));
        assert_eq!(
            links.account_of("al{ICE}"),
            Some(alice()),
            "IRC case mapping"
        );
        assert_eq!(links.list().len(), 1);
        links.unbind("AL[ICE]", "quit");
        assert_eq!(links.account_of("Al[ice]"), None);
        assert!(links.list().is_empty());
    }

    #[test]
    fn a_binding_expires() {
        let links = IrcLinks::new(Duration::ZERO);
        let code = links.new_code(alice());
        links.redeem(&code, "alice").expect("code works");
        assert_eq!(links.account_of("alice"), None);
    }
}
