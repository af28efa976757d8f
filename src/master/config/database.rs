//! `[database]`: where the master keeps what outlives it. Absent, the embedded SQLite file
//! `state.sqlite` in the master directory (one master, nothing to install). With a PostgreSQL
//! `url`, any number of masters with the same master.toml share that database and act as one
//! CI; `lease` is how long a master may go unseen before the others take its work over.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::Checker;

/// A master unseen (its lease not renewed) for longer is dead: its builds are retried.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);
/// Below this a busy master (a long fsync, a GC pause of the database) would be declared dead.
pub const MIN_LEASE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq)]
pub struct DatabaseConfig {
    pub backend: Backend,
    /// How long a master's lease lasts; it is renewed three times per lease.
    pub lease: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            backend: Backend::Sqlite,
            lease: DEFAULT_LEASE,
        }
    }
}

#[derive(Clone, PartialEq)]
pub enum Backend {
    /// `state.sqlite` in the master directory.
    Sqlite,
    /// A PostgreSQL server: a `postgresql://` URL or `key=value` settings (libpq's two forms).
    Postgres { url: String },
}

impl std::fmt::Debug for Backend {
    // Debug output reaches logs (a reconfig names what it kept): never with the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Sqlite => f.write_str("sqlite"),
            Backend::Postgres { url } => write!(f, "{}", redact_password(url)),
        }
    }
}

impl Backend {
    /// What people see of it: the URL without its password.
    pub fn shown(&self) -> String {
        format!("{self:?}")
    }
}

/// A connection string with its password replaced by `***`, in either form.
pub fn redact_password(url: &str) -> String {
    if let Some(rest) = url
        .strip_prefix("postgresql://")
        .or_else(|| url.strip_prefix("postgres://"))
    {
        let scheme = &url[..url.len() - rest.len()];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let redacted_tail = redact_query_password(tail);
        return match authority.rfind('@') {
            Some(at) => {
                let (userinfo, host) = authority.split_at(at);
                let user = userinfo.split(':').next().unwrap_or_default();
                if userinfo.contains(':') {
                    format!("{scheme}{user}:***{host}{redacted_tail}")
                } else {
                    format!("{scheme}{authority}{redacted_tail}")
                }
            }
            None => format!("{scheme}{authority}{redacted_tail}"),
        };
    }
    url.split_whitespace()
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => "password=***".to_string(),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn redact_query_password(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_string();
    };
    let query = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => "password=***".to_string(),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&");
    format!("{path}?{query}")
}

#[derive(Debug, Deserialize)]
pub(super) struct RawDatabase {
    #[serde(default)]
    url: Option<Spanned<String>>,
    #[serde(default)]
    lease: Option<Spanned<String>>,
}

impl Checker<'_> {
    pub(super) fn database(&mut self, raw: Option<&RawDatabase>) -> DatabaseConfig {
        let Some(raw) = raw else {
            return DatabaseConfig::default();
        };
        let lease = self.duration(raw.lease.as_ref(), DEFAULT_LEASE);
        let lease = match &raw.lease {
            Some(spanned) if lease < MIN_LEASE => {
                self.problem(
                    spanned,
                    format!(
                        "[database] lease must be at least {}s: a shorter one declares busy masters dead",
                        MIN_LEASE.as_secs()
                    ),
                );
                DEFAULT_LEASE
            }
            _ => lease,
        };
        let backend = match &raw.url {
            None => Backend::Sqlite,
            Some(url) => {
                let text = url.get_ref().trim();
                let is_url = text.starts_with("postgresql://") || text.starts_with("postgres://");
                let is_settings = !text.contains("://")
                    && text
                        .split_whitespace()
                        .next()
                        .is_some_and(|first| first.contains('='));
                if is_url || is_settings {
                    Backend::Postgres {
                        url: text.to_string(),
                    }
                } else {
                    self.problem(
                        url,
                        "[database] url must be a postgresql:// URL or settings such as \
                         \"host=/run/postgresql dbname=buildbot\"; leave it out for the \
                         embedded SQLite file"
                            .into(),
                    );
                    Backend::Sqlite
                }
            }
        };
        DatabaseConfig { backend, lease }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        for (url, shown) in [
            (
                "postgresql://bb:s3cret@db.example.org:5432/buildbot",
                "postgresql://bb:***@db.example.org:5432/buildbot",
            ),
            (
                "postgres://bb@db/buildbot?password=s3cret&sslmode=require",
                "postgres://bb@db/buildbot?password=***&sslmode=require",
            ),
            (
                "host=/run/pg dbname=buildbot user=bb password=s3cret",
                "host=/run/pg dbname=buildbot user=bb password=***",
            ),
            (
                "postgresql://db.example.org/buildbot",
                "postgresql://db.example.org/buildbot",
            ),
        ] {
            assert_eq!(redact_password(url), shown);
            let backend = Backend::Postgres { url: url.into() };
            assert!(!format!("{backend:?}").contains("s3cret"));
        }
    }
}
