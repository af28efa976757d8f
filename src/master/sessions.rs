//! Web sessions: a one-time login token issued by `ssh master web-login`, exchanged for a
//! session tied to the unix user who asked; forms carry a per-session CSRF token. Issued by the
//! SSH front end and redeemed by the web front end, so it lives below both; cookies are the
//! web's business.
//!
//! Login tokens live 120 s in memory only (a restart voids them, and `web-login` is cheap).
//! Sessions survive a restart: each is written through a [`SessionStore`] (the history
//! database, through its migration 5) and loaded again at start, so nobody logs in over ssh
//! again after an upgrade. Only a SHA-256 of the session id is stored, so a copy of the
//! database opens no session; the expiry is stored and kept. Reads are answered from memory.
//! A store shared by several masters (a later issue) will also be asked on a miss.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use sha2::Digest;

use crate::master::history::{History, HistoryError};
use crate::master::lock;
use crate::unix::accounts::UnixAccount;

/// How long a login URL may wait before it is used.
pub const LOGIN_TOKEN_LIFETIME: Duration = Duration::from_secs(120);
/// How long a session lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

#[derive(Debug, Clone)]
pub struct Session {
    pub account: UnixAccount,
    pub csrf: String,
    expires: Instant,
}

/// A session as a store keeps it: the id only as its hash, the user by name and uid (the
/// account is looked up again when loaded), the expiry as unix time.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSession {
    pub token_hash: String,
    pub user: String,
    pub uid: u32,
    pub csrf: String,
    pub expires_at: f64,
}

/// Where sessions outlive the master process. Blocking calls: callers use a blocking thread.
pub trait SessionStore: Send + Sync {
    /// Every session not expired at `now` (unix seconds).
    fn load(&self, now: f64) -> Result<Vec<StoredSession>, HistoryError>;
    /// Keeps `session`; forgets those expired at `now`.
    fn save(&self, session: &StoredSession, now: f64) -> Result<(), HistoryError>;
}

/// Sessions in the history database (`web_sessions`).
pub struct HistorySessions(pub History);

impl SessionStore for HistorySessions {
    fn load(&self, now: f64) -> Result<Vec<StoredSession>, HistoryError> {
        self.0.with(|connection| {
            let mut statement = connection.prepare(
                "SELECT token_hash, user, uid, csrf, expires_at FROM web_sessions
                 WHERE expires_at > ?1",
            )?;
            let rows = statement.query_map([now], |row| {
                Ok(StoredSession {
                    token_hash: row.get(0)?,
                    user: row.get(1)?,
                    uid: row.get(2)?,
                    csrf: row.get(3)?,
                    expires_at: row.get(4)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn save(&self, session: &StoredSession, now: f64) -> Result<(), HistoryError> {
        self.0.with(|connection| {
            let transaction = connection.transaction()?;
            transaction.execute("DELETE FROM web_sessions WHERE expires_at <= ?1", [now])?;
            transaction.execute(
                "INSERT OR REPLACE INTO web_sessions (token_hash, user, uid, csrf, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![
                    session.token_hash,
                    session.user,
                    session.uid,
                    session.csrf,
                    session.expires_at
                ],
            )?;
            transaction.commit()?;
            Ok(())
        })
    }
}

/// The login tokens and sessions of this master. `Default` keeps sessions in memory only.
#[derive(Default)]
pub struct Sessions {
    login_tokens: Mutex<HashMap<String, (UnixAccount, Instant)>>,
    /// By the hash of the session id, as stored.
    sessions: Mutex<HashMap<String, Session>>,
    store: Option<Arc<dyn SessionStore>>,
}

fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What a store keeps instead of a session id.
fn token_hash(id: &str) -> String {
    sha2::Sha256::digest(id.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

impl Sessions {
    /// Sessions kept in `store`, with those it holds loaded (blocking: call at start). A
    /// session whose user is gone, or now has another uid, is not loaded.
    pub fn with_store(store: Arc<dyn SessionStore>) -> Sessions {
        let now_unix = crate::master::history::now();
        let now = Instant::now();
        let mut sessions = HashMap::new();
        match store.load(now_unix) {
            Ok(stored) => {
                for session in stored {
                    let account = match crate::unix::accounts::lookup(&session.user) {
                        Ok(Some(account)) if account.uid == session.uid => account,
                        _ => continue,
                    };
                    let left = Duration::try_from_secs_f64(session.expires_at - now_unix)
                        .unwrap_or(Duration::ZERO)
                        .min(SESSION_LIFETIME);
                    sessions.insert(
                        session.token_hash,
                        Session {
                            account,
                            csrf: session.csrf,
                            expires: now + left,
                        },
                    );
                }
                tracing::info!(
                    "{} web session(s) kept from before the start",
                    sessions.len()
                );
            }
            Err(err) => tracing::warn!("cannot load the web sessions: {err}"),
        }
        Sessions {
            login_tokens: Mutex::default(),
            sessions: Mutex::new(sessions),
            store: Some(store),
        }
    }

    /// A single-use login token for `account`, valid for [`LOGIN_TOKEN_LIFETIME`].
    pub fn new_login_token(&self, account: UnixAccount) -> String {
        let token = random_token();
        let mut tokens = lock(&self.login_tokens);
        let now = Instant::now();
        tokens.retain(|_, (_, expires)| *expires > now);
        tokens.insert(token.clone(), (account, now + LOGIN_TOKEN_LIFETIME));
        token
    }

    /// Uses up a login token; returns the new session id once it is stored.
    pub async fn redeem(&self, token: &str) -> Option<String> {
        let (account, expires) = lock(&self.login_tokens).remove(token)?;
        if expires <= Instant::now() {
            return None;
        }
        let id = random_token();
        let hash = token_hash(&id);
        let session = Session {
            account,
            csrf: random_token(),
            expires: Instant::now() + SESSION_LIFETIME,
        };
        if let Some(store) = &self.store {
            let now = crate::master::history::now();
            let stored = StoredSession {
                token_hash: hash.clone(),
                user: session.account.name.clone(),
                uid: session.account.uid,
                csrf: session.csrf.clone(),
                expires_at: now + SESSION_LIFETIME.as_secs_f64(),
            };
            let store = Arc::clone(store);
            let saved = tokio::task::spawn_blocking(move || store.save(&stored, now)).await;
            match saved {
                Ok(Ok(())) => {}
                // The session still works until a restart; the log says why it will not last.
                Ok(Err(err)) => tracing::warn!("cannot store a web session: {err}"),
                Err(err) => tracing::warn!("cannot store a web session: {err}"),
            }
        }
        let mut sessions = lock(&self.sessions);
        let now = Instant::now();
        sessions.retain(|_, session| session.expires > now);
        sessions.insert(hash, session);
        Some(id)
    }

    pub fn get(&self, id: &str) -> Option<Session> {
        let sessions = lock(&self.sessions);
        sessions
            .get(&token_hash(id))
            .filter(|session| session.expires > Instant::now())
            .cloned()
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
    async fn a_login_token_works_once() {
        let sessions = Sessions::default();
        let token = sessions.new_login_token(alice());
        let id = sessions.redeem(&token).await.expect("first use");
        assert_eq!(sessions.get(&id).expect("session").account.name, "alice");
        assert!(sessions.redeem(&token).await.is_none(), "single use");
        assert!(sessions.redeem("made-up").await.is_none());
    }

    fn root() -> UnixAccount {
        crate::unix::accounts::lookup("root")
            .expect("passwd readable")
            .expect("root exists")
    }

    #[tokio::test]
    async fn sessions_outlive_the_process_by_their_hash_with_their_expiry() {
        let dir = tempfile::tempdir().expect("temp dir");
        let history = History::open(&dir.path().join("state.sqlite")).expect("history");
        let store: Arc<dyn SessionStore> = Arc::new(HistorySessions(history.clone()));
        let first = Sessions::with_store(Arc::clone(&store));
        let token = first.new_login_token(root());
        let id = first.redeem(&token).await.expect("redeemed");
        let csrf = first.get(&id).expect("session").csrf;

        // A new master process on the same database.
        let second = Sessions::with_store(Arc::clone(&store));
        let kept = second.get(&id).expect("the session survived");
        assert_eq!(
            (kept.account.name.as_str(), kept.csrf.as_str()),
            ("root", csrf.as_str())
        );
        let left = kept.expires.saturating_duration_since(Instant::now());
        assert!(left <= SESSION_LIFETIME && left > SESSION_LIFETIME - Duration::from_secs(600));

        // Only the hash is stored; an expired session is not loaded; login tokens do not last.
        let stored = store.load(crate::master::history::now()).expect("load");
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].token_hash, token_hash(&id));
        assert_ne!(stored[0].token_hash, id);
        history
            .with(|connection| {
                connection.execute("UPDATE web_sessions SET expires_at = 1", [])?;
                Ok(())
            })
            .expect("expire it");
        assert!(Sessions::with_store(Arc::clone(&store)).get(&id).is_none());
        let token = second.new_login_token(root());
        assert!(Sessions::with_store(store).redeem(&token).await.is_none());
    }
}
