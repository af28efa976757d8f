//! Web sessions: a one-time login token issued by `ssh master web-login`, exchanged for a
//! session tied to the unix user who asked; forms carry a per-session CSRF token. Sessions live
//! in memory: a master restart logs everyone out. Issued by the SSH front end and redeemed by
//! the web front end, so it lives below both; cookies are the web's business.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;

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

#[derive(Default)]
pub struct Sessions {
    login_tokens: Mutex<HashMap<String, (UnixAccount, Instant)>>,
    sessions: Mutex<HashMap<String, Session>>,
}

fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Sessions {
    /// A single-use login token for `account`, valid for [`LOGIN_TOKEN_LIFETIME`].
    pub fn new_login_token(&self, account: UnixAccount) -> String {
        let token = random_token();
        let mut tokens = lock(&self.login_tokens);
        let now = Instant::now();
        tokens.retain(|_, (_, expires)| *expires > now);
        tokens.insert(token.clone(), (account, now + LOGIN_TOKEN_LIFETIME));
        token
    }

    /// Uses up a login token; returns the new session id.
    pub fn redeem(&self, token: &str) -> Option<String> {
        let (account, expires) = lock(&self.login_tokens).remove(token)?;
        if expires <= Instant::now() {
            return None;
        }
        let id = random_token();
        let session = Session {
            account,
            csrf: random_token(),
            expires: Instant::now() + SESSION_LIFETIME,
        };
        let mut sessions = lock(&self.sessions);
        let now = Instant::now();
        sessions.retain(|_, session| session.expires > now);
        sessions.insert(id.clone(), session);
        Some(id)
    }

    pub fn get(&self, id: &str) -> Option<Session> {
        let sessions = lock(&self.sessions);
        sessions
            .get(id)
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

    #[test]
    fn a_login_token_works_once() {
        let sessions = Sessions::default();
        let token = sessions.new_login_token(alice());
        let id = sessions.redeem(&token).expect("first use");
        assert_eq!(sessions.get(&id).expect("session").account.name, "alice");
        assert!(sessions.redeem(&token).is_none(), "single use");
        assert!(sessions.redeem("made-up").is_none());
    }
}
