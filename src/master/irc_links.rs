//! Which IRC nick speaks for which unix user. `ssh master irc-link` (the SSH front end) asks for a
//! one-time code; `/msg BOT link CODE` (the IRC front end) redeems it and binds the nick that
//! said it to the user who asked. A binding ends when the nick quits or changes nick (the bot
//! tells us), when the bot loses sight of it (its connection drops, or the nick leaves every
//! channel the bot is in), or after `[irc] link_ttl`: someone who takes the nick later inherits
//! nothing. Both front ends use it, so it lives below them; bindings are in memory only.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::master::lock;
use crate::unix::accounts::UnixAccount;

/// How long a link code waits to be used.
pub const LINK_CODE_LIFETIME: Duration = Duration::from_secs(10 * 60);

/// Wrong codes one nick may try per [`ATTEMPT_WINDOW`] before it must wait.
pub const MAX_FAILED_PER_NICK: usize = 5;
/// Wrong codes all nicks together may try per [`ATTEMPT_WINDOW`]: a guesser who changes nick
/// for every try still gets this few (a code has 31^8 values and lives 10 minutes).
pub const MAX_FAILED_OVERALL: usize = 30;
/// The window the limits above count in.
pub const ATTEMPT_WINDOW: Duration = Duration::from_secs(60);

/// Why a code was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("unknown or expired link code (ask for a new one with: ssh MASTER irc-link)")]
    UnknownCode,
    #[error(
        "too many wrong link codes {}; try again in {}",
        if *.from_this_nick { "from this nick" } else { "from everyone (someone may be guessing)" },
        crate::durations::format_eta(*.retry_in)
    )]
    TooManyTries {
        from_this_nick: bool,
        retry_in: Duration,
    },
}

/// Recent wrong codes, by nick and in all, for the limits above (pure: the caller gives the
/// time).
#[derive(Default)]
struct FailedTries {
    by_nick: HashMap<String, VecDeque<Instant>>,
    overall: VecDeque<Instant>,
}

impl FailedTries {
    fn forget_old(&mut self, now: Instant) {
        let fresh = |at: &Instant| now.saturating_duration_since(*at) < ATTEMPT_WINDOW;
        while self.overall.front().is_some_and(|at| !fresh(at)) {
            self.overall.pop_front();
        }
        self.by_nick.retain(|_, tries| {
            while tries.front().is_some_and(|at| !fresh(at)) {
                tries.pop_front();
            }
            !tries.is_empty()
        });
    }

    /// Whether `nick` may try a code now, decided before the code is looked at.
    fn check(&mut self, nick: &str, now: Instant) -> Result<(), LinkError> {
        self.forget_old(now);
        let wait = |oldest: Option<&Instant>| {
            oldest.map_or(Duration::ZERO, |at| {
                ATTEMPT_WINDOW.saturating_sub(now.saturating_duration_since(*at))
            })
        };
        if let Some(tries) = self.by_nick.get(nick)
            && tries.len() >= MAX_FAILED_PER_NICK
        {
            return Err(LinkError::TooManyTries {
                from_this_nick: true,
                retry_in: wait(tries.front()),
            });
        }
        if self.overall.len() >= MAX_FAILED_OVERALL {
            return Err(LinkError::TooManyTries {
                from_this_nick: false,
                retry_in: wait(self.overall.front()),
            });
        }
        Ok(())
    }

    fn failed(&mut self, nick: &str, now: Instant) {
        self.by_nick
            .entry(nick.to_string())
            .or_default()
            .push_back(now);
        self.overall.push_back(now);
    }
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
    /// Keyed by the nick in the server's lower case (`casemapping`).
    bindings: Mutex<HashMap<String, Bound>>,
    /// The connected server's case mapping; the bot sets it from ISUPPORT.
    casemapping: Mutex<CaseMapping>,
    /// Wrong codes lately, keyed by folded nick: guessing is slowed to a few tries a minute.
    failed: Mutex<FailedTries>,
    /// With several masters: codes are also kept in the store (by their hash), so the bot of
    /// whichever master leads redeems a code issued on any of them.
    store: Option<crate::master::store::SharedStore>,
}

/// What the store keeps instead of a code.
fn code_hash(code: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(code.as_bytes()))
}

/// How the IRC server compares nicks and channel names (ISUPPORT `CASEMAPPING`). Two nicks
/// the server holds apart must never fold to one here: folding more than the server lets one
/// person act as another (`dev{a}` as `dev[a]` on an ASCII server).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CaseMapping {
    /// Only `A-Z` fold (ngIRCd, most modern servers).
    Ascii,
    /// `A-Z`, and `[]\~` are the upper case of `{}|^`: the RFC's, and what to assume when the
    /// server does not say.
    #[default]
    Rfc1459,
    /// As rfc1459 without `~`/`^`.
    StrictRfc1459,
}

impl CaseMapping {
    /// The mapping an ISUPPORT `CASEMAPPING=VALUE` names. One this bot does not know (e.g.
    /// `rfc7613`) is taken as ascii, the one that folds least: refusing a person is safe,
    /// taking one for another is not.
    pub fn from_isupport(value: &str) -> CaseMapping {
        match value.to_ascii_lowercase().as_str() {
            "rfc1459" => CaseMapping::Rfc1459,
            "strict-rfc1459" => CaseMapping::StrictRfc1459,
            _ => CaseMapping::Ascii,
        }
    }

    /// `name` (a nick or channel) in this mapping's lower case.
    pub fn fold(self, name: &str) -> String {
        name.chars()
            .map(|c| match (self, c) {
                (CaseMapping::Rfc1459 | CaseMapping::StrictRfc1459, '[') => '{',
                (CaseMapping::Rfc1459 | CaseMapping::StrictRfc1459, ']') => '}',
                (CaseMapping::Rfc1459 | CaseMapping::StrictRfc1459, '\\') => '|',
                (CaseMapping::Rfc1459, '~') => '^',
                (_, c) => c.to_ascii_lowercase(),
            })
            .collect()
    }
}

/// A nick in rfc1459 case, for matching where folding more than the server is harmless (is a
/// line addressed to the bot; notify targets). Links use the server's own [`CaseMapping`].
pub fn fold_nick(nick: &str) -> String {
    CaseMapping::Rfc1459.fold(nick)
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
            casemapping: Mutex::new(CaseMapping::default()),
            failed: Mutex::new(FailedTries::default()),
            store: None,
        }
    }

    /// Codes kept in `store` too: for the masters of a cluster.
    pub fn shared_through(mut self, store: crate::master::store::SharedStore) -> IrcLinks {
        self.store = Some(store);
        self
    }

    /// The server says how it compares nicks; bindings are keyed again by it.
    pub fn set_casemapping(&self, casemapping: CaseMapping) {
        let mut current = lock(&self.casemapping);
        if *current == casemapping {
            return;
        }
        *current = casemapping;
        let mut bindings = lock(&self.bindings);
        let old = std::mem::take(&mut *bindings);
        for (_, bound) in old {
            bindings.insert(casemapping.fold(&bound.nick), bound);
        }
    }

    fn key(&self, nick: &str) -> String {
        lock(&self.casemapping).fold(nick)
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A one-time code for `account`, valid for [`LINK_CODE_LIFETIME`].
    pub async fn new_code(&self, account: UnixAccount) -> String {
        let code = new_code();
        if let Some(store) = &self.store {
            let expires_at = crate::status::unix_now() + LINK_CODE_LIFETIME.as_secs_f64();
            if let Err(err) = store
                .save_link_code(&code_hash(&code), &account.name, account.uid, expires_at)
                .await
            {
                // It still works with this master's bot; the log says why not elsewhere.
                tracing::warn!("cannot share an IRC link code with the other masters: {err}");
            }
        }
        let mut codes = lock(&self.codes);
        let now = Instant::now();
        codes.retain(|_, (_, expires)| *expires > now);
        codes.insert(code.clone(), (account, now + LINK_CODE_LIFETIME));
        code
    }

    /// Uses up `code` and binds `nick` to its user (replacing what the nick had). A nick with
    /// too many wrong codes lately (or everyone, see [`MAX_FAILED_OVERALL`]) is told to wait,
    /// before its code is looked at.
    pub async fn redeem(&self, code: &str, nick: &str) -> Result<UnixAccount, LinkError> {
        let code = code.trim().to_ascii_uppercase();
        let key = self.key(nick);
        let now = Instant::now();
        lock(&self.failed).check(&key, now)?;
        let local = lock(&self.codes)
            .remove(&code)
            .filter(|(_, expires)| *expires > now)
            .map(|(account, _)| account);
        let found = match &self.store {
            None => local,
            // The store decides, whichever master issued the code: used once, on one master.
            Some(store) => match store
                .take_link_code(&code_hash(&code), crate::status::unix_now())
                .await
            {
                Ok(Some((name, uid))) => local.or_else(|| {
                    crate::unix::accounts::lookup(&name)
                        .ok()
                        .flatten()
                        .filter(|account| account.uid == uid)
                }),
                // Used or voided on another master (or expired).
                Ok(None) => None,
                // The store cannot say: this master's own codes still work.
                Err(err) => {
                    tracing::warn!("cannot look an IRC link code up: {err}");
                    local
                }
            },
        };
        let Some(account) = found else {
            lock(&self.failed).failed(&key, Instant::now());
            return Err(LinkError::UnknownCode);
        };
        tracing::info!(%nick, user = %account.name, "IRC nick linked");
        lock(&self.bindings).insert(
            key,
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
    pub async fn discard(&self, code: &str) {
        let code = code.trim().to_ascii_uppercase();
        lock(&self.codes).remove(&code);
        if let Some(store) = &self.store {
            let _ = store
                .take_link_code(&code_hash(&code), crate::status::unix_now())
                .await;
        }
    }

    /// The user `nick` speaks for, if it is bound and the binding has not expired.
    pub fn account_of(&self, nick: &str) -> Option<UnixAccount> {
        let key = self.key(nick);
        let mut bindings = lock(&self.bindings);
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
        let key = self.key(nick);
        if let Some(bound) = lock(&self.bindings).remove(&key) {
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

    #[tokio::test]
    async fn a_code_binds_once_and_the_binding_ends_on_unbind() {
        let links = IrcLinks::new(Duration::from_secs(3600));
        let code = links.new_code(alice()).await;
        assert_eq!(code.len(), 9);
        assert_eq!(
            links.redeem(&code.to_lowercase(), "Al[ice]").await,
            Ok(alice())
        );
        assert_eq!(
            links.redeem(&code, "mallory").await,
            Err(LinkError::UnknownCode)
        );
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

    #[tokio::test]
    async fn an_ascii_server_keeps_brackets_and_braces_apart() {
        let links = IrcLinks::new(Duration::from_secs(3600));
        links.set_casemapping(CaseMapping::from_isupport("ascii"));
        let code = links.new_code(alice()).await;
        links.redeem(&code, "dev[a]").await.expect("code works");
        assert_eq!(links.account_of("DEV[A]"), Some(alice()));
        assert_eq!(links.account_of("dev{a}"), None, "another person on ngIRCd");
        links.unbind("dev{a}", "quit");
        assert_eq!(links.account_of("dev[a]"), Some(alice()));
        // Back to rfc1459 (a reconnect to another server): the binding is keyed again.
        links.set_casemapping(CaseMapping::Rfc1459);
        assert_eq!(links.account_of("dev{a}"), Some(alice()));
    }

    #[test]
    fn casemappings_fold_as_their_names_say() {
        assert_eq!(CaseMapping::Ascii.fold("A[]\\~Z"), "a[]\\~z");
        assert_eq!(CaseMapping::Rfc1459.fold("A[]\\~Z"), "a{}|^z");
        assert_eq!(CaseMapping::StrictRfc1459.fold("A[]\\~Z"), "a{}|~z");
        assert_eq!(CaseMapping::from_isupport("RFC1459"), CaseMapping::Rfc1459);
        assert_eq!(
            CaseMapping::from_isupport("strict-rfc1459"),
            CaseMapping::StrictRfc1459
        );
        assert_eq!(CaseMapping::from_isupport("rfc7613"), CaseMapping::Ascii);
        assert_eq!(CaseMapping::default(), CaseMapping::Rfc1459);
    }

    #[test]
    fn wrong_codes_are_limited_per_nick_and_overall() {
        let start = Instant::now();
        let mut tries = FailedTries::default();
        for _ in 0..MAX_FAILED_PER_NICK {
            assert_eq!(tries.check("mallory", start), Ok(()));
            tries.failed("mallory", start);
        }
        let Err(LinkError::TooManyTries {
            from_this_nick: true,
            retry_in,
        }) = tries.check("mallory", start + Duration::from_secs(20))
        else {
            panic!("the sixth try in a minute must wait");
        };
        assert_eq!(retry_in, Duration::from_secs(40));
        assert_eq!(tries.check("alice", start), Ok(()), "another nick may try");
        assert_eq!(tries.check("mallory", start + ATTEMPT_WINDOW), Ok(()));
        // Many nicks, one try each: the overall limit.
        for n in 0..MAX_FAILED_OVERALL {
            let nick = format!("m{n}");
            if tries.check(&nick, start).is_ok() {
                tries.failed(&nick, start);
            }
        }
        assert!(matches!(
            tries.check("fresh", start),
            Err(LinkError::TooManyTries {
                from_this_nick: false,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn a_limited_nick_cannot_redeem_even_a_good_code() {
        let links = IrcLinks::new(Duration::from_secs(3600));
        for _ in 0..MAX_FAILED_PER_NICK {
            assert_eq!(
                links.redeem("AAAA-AAAA", "mallory").await,
                Err(LinkError::UnknownCode)
            );
        }
        let code = links.new_code(alice()).await;
        let refused = links.redeem(&code, "Mallory").await.expect_err("limited");
        assert!(
            refused
                .to_string()
                .starts_with("too many wrong link codes from this nick; try again in "),
            "{refused}"
        );
        assert_eq!(
            links.redeem(&code, "alice").await,
            Ok(alice()),
            "the code was not used up"
        );
    }

    #[tokio::test]
    async fn a_binding_expires() {
        let links = IrcLinks::new(Duration::ZERO);
        let code = links.new_code(alice()).await;
        links.redeem(&code, "alice").await.expect("code works");
        assert_eq!(links.account_of("alice"), None);
    }

    #[tokio::test]
    async fn a_code_issued_on_one_master_is_redeemed_once_on_another() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store: crate::master::store::SharedStore = std::sync::Arc::new(
            crate::master::store::sqlite::SqliteStore::open(&dir.path().join("state.sqlite"))
                .expect("store"),
        );
        let issuing =
            IrcLinks::new(Duration::from_secs(3600)).shared_through(std::sync::Arc::clone(&store));
        let leading =
            IrcLinks::new(Duration::from_secs(3600)).shared_through(std::sync::Arc::clone(&store));
        let root = crate::unix::accounts::lookup("root")
            .expect("passwd readable")
            .expect("root exists");
        let code = issuing.new_code(root.clone()).await;
        assert_eq!(leading.redeem(&code, "alice").await, Ok(root.clone()));
        assert_eq!(leading.account_of("alice"), Some(root.clone()));
        // Once: neither master takes it again.
        assert_eq!(
            leading.redeem(&code, "bob").await,
            Err(LinkError::UnknownCode)
        );
        assert_eq!(
            issuing.redeem(&code, "bob").await,
            Err(LinkError::UnknownCode)
        );
        // A code said in a channel is void on every master.
        let code = issuing.new_code(root).await;
        leading.discard(&code).await;
        assert_eq!(
            issuing.redeem(&code, "carol").await,
            Err(LinkError::UnknownCode)
        );
    }
}
