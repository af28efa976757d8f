//! Web sessions: a one-time login token issued by `ssh master web-login`, exchanged for a
//! session tied to the unix user who asked; forms carry a per-session CSRF token. Issued by the
//! SSH front end and redeemed by the web front end, so it lives below both; cookies are the
//! web's business.
//!
//! Login tokens live 120 s in memory only (a restart voids them, and `web-login` is cheap).
//! Sessions survive a restart: each is written through the [`Store`] (`web_sessions`) and
//! loaded again at start, so nobody logs in over ssh again after an upgrade. Only a SHA-256 of
//! the session id is stored, so a copy of the database opens no session; the expiry is stored
//! and kept. Reads are answered from memory; a session this master does not know (created on
//! another master of the cluster since the start) is looked up in the store on a miss.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use sha2::Digest;

use crate::master::lock;
use crate::master::store::{SharedStore, StoredSession, now};
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

/// The login tokens and sessions of this master. `Default` keeps sessions in memory only.
#[derive(Default)]
pub struct Sessions {
    login_tokens: Mutex<HashMap<String, (UnixAccount, Instant)>>,
    /// By the hash of the session id, as stored.
    sessions: Mutex<HashMap<String, Session>>,
    store: Option<SharedStore>,
}

fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What a store keeps instead of a session id.
fn token_hash(id: &str) -> String {
    hex::encode(sha2::Sha256::digest(id.as_bytes()))
}

impl Sessions {
    /// Sessions kept in `store`, with those it holds loaded. A session whose user is gone, or
    /// now has another uid, is not loaded.
    pub async fn load(store: SharedStore) -> Sessions {
        let now_unix = now();
        let mut sessions = HashMap::new();
        match store.live_sessions(now_unix).await {
            Ok(stored) => {
                for session in stored {
                    if let Some((hash, session)) = revive(session, now_unix) {
                        sessions.insert(hash, session);
                    }
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
            let now = now();
            let stored = StoredSession {
                token_hash: hash.clone(),
                user: session.account.name.clone(),
                uid: session.account.uid,
                csrf: session.csrf.clone(),
                expires_at: now + SESSION_LIFETIME.as_secs_f64(),
            };
            // The session still works here until a restart; the log says why it will not last.
            if let Err(err) = store.save_session(&stored, now).await {
                tracing::warn!("cannot store a web session: {err}");
            }
        }
        let mut sessions = lock(&self.sessions);
        let now = Instant::now();
        sessions.retain(|_, session| session.expires > now);
        sessions.insert(hash, session);
        Some(id)
    }

    /// The session `id` names, if it is live: from memory, else (created on another master
    /// of the cluster, or before this one started) from the store.
    pub async fn get(&self, id: &str) -> Option<Session> {
        let hash = token_hash(id);
        let known = lock(&self.sessions)
            .get(&hash)
            .filter(|session| session.expires > Instant::now())
            .cloned();
        if known.is_some() {
            return known;
        }
        let store = self.store.as_ref()?;
        let now_unix = now();
        let found = match store.session(&hash, now_unix).await {
            Ok(found) => found?,
            Err(err) => {
                tracing::warn!("cannot look a web session up: {err}");
                return None;
            }
        };
        let (hash, session) = revive(found, now_unix)?;
        lock(&self.sessions).insert(hash, session.clone());
        Some(session)
    }
}

/// A stored session as this master holds it, unless its user is gone or now has another uid.
fn revive(stored: StoredSession, now_unix: f64) -> Option<(String, Session)> {
    let account = match crate::unix::accounts::lookup(&stored.user) {
        Ok(Some(account)) if account.uid == stored.uid => account,
        _ => return None,
    };
    let left = Duration::try_from_secs_f64(stored.expires_at - now_unix)
        .ok()
        .filter(|left| !left.is_zero())?
        .min(SESSION_LIFETIME);
    Some((
        stored.token_hash,
        Session {
            account,
            csrf: stored.csrf,
            expires: Instant::now() + left,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

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
        assert_eq!(
            sessions.get(&id).await.expect("session").account.name,
            "alice"
        );
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
        let store: SharedStore = Arc::new(
            crate::master::store::sqlite::SqliteStore::open(&dir.path().join("state.sqlite"))
                .expect("store"),
        );
        let first = Sessions::load(Arc::clone(&store)).await;
        // Another master of the cluster, started before the login.
        let elsewhere = Sessions::load(Arc::clone(&store)).await;
        let token = first.new_login_token(root());
        let id = first.redeem(&token).await.expect("redeemed");
        let csrf = first.get(&id).await.expect("session").csrf;
        let there = elsewhere
            .get(&id)
            .await
            .expect("found in the store on a miss");
        assert_eq!(there.csrf, csrf);

        // A new master process on the same database.
        let second = Sessions::load(Arc::clone(&store)).await;
        let kept = second.get(&id).await.expect("the session survived");
        assert_eq!(
            (kept.account.name.as_str(), kept.csrf.as_str()),
            ("root", csrf.as_str())
        );
        let left = kept.expires.saturating_duration_since(Instant::now());
        assert!(left <= SESSION_LIFETIME && left > SESSION_LIFETIME - Duration::from_secs(600));

        // Only the hash is stored; an expired session is not loaded; login tokens do not last.
        let mut stored = store.live_sessions(now()).await.expect("load");
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].token_hash, token_hash(&id));
        assert_ne!(stored[0].token_hash, id);
        let mut expired = stored.remove(0);
        expired.expires_at = 1.0;
        store.save_session(&expired, 0.0).await.expect("expire it");
        assert!(
            Sessions::load(Arc::clone(&store))
                .await
                .get(&id)
                .await
                .is_none()
        );
        let token = second.new_login_token(root());
        assert!(Sessions::load(store).await.redeem(&token).await.is_none());
    }
}
