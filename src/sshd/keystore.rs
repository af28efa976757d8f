//! Where user keys come from and whether a key may log in: expands the sshd-style
//! `AuthorizedKeysFile` patterns for a login, reads those files (re-reading a file whenever its
//! size, mtime or inode changed, so edits take effect without a restart), and decides whether an
//! offered key from a given address is accepted. Parsing one file's text is
//! `sshd::authorized_keys`; slave keys come from master.toml and are checked in
//! `SshdContext::authenticate`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use russh::keys::PublicKey;

use crate::sshd::authorized_keys::{self, AuthorizedKey, KeyOptions};
use crate::unix::accounts::UnixAccount;

/// A key entry that allowed a login: which file and line, and the options that come with it.
#[derive(Debug, Clone)]
pub struct Grant {
    pub file: PathBuf,
    pub line: usize,
    pub options: KeyOptions,
}

/// Why a key that *was* listed for the login still did not get in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The key is in no file the patterns give for this login.
    NotListed,
    /// Listed, but only on lines whose `from=` does not match the client address.
    FromMismatch { file: PathBuf, line: usize },
    /// Listed, but only on lines whose `expiry-time=` has passed.
    Expired { file: PathBuf, line: usize },
}

/// Identifies one version of a file: if any of these change, the file is read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileStamp {
    fn of(metadata: &std::fs::Metadata) -> FileStamp {
        FileStamp {
            dev: metadata.dev(),
            ino: metadata.ino(),
            len: metadata.len(),
            mtime_ns: i128::from(metadata.mtime()) * 1_000_000_000
                + i128::from(metadata.mtime_nsec()),
            ctime_ns: i128::from(metadata.ctime()) * 1_000_000_000
                + i128::from(metadata.ctime_nsec()),
        }
    }
}

struct CachedFile {
    stamp: FileStamp,
    keys: Arc<Vec<AuthorizedKey>>,
}

/// The user-key side of authentication. Cheap to share; the cache sits behind a short mutex.
pub struct KeyStore {
    patterns: Vec<String>,
    master_dir: PathBuf,
    cache: Mutex<HashMap<PathBuf, CachedFile>>,
}

impl KeyStore {
    pub fn new(patterns: Vec<String>, master_dir: PathBuf) -> KeyStore {
        KeyStore {
            patterns,
            master_dir,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The files the patterns give for `account`, in pattern order.
    pub fn files_for(&self, account: &UnixAccount) -> Vec<PathBuf> {
        self.patterns
            .iter()
            .map(|pattern| {
                let expanded = expand_pattern(pattern, &account.name, &account.home);
                // As sshd does, a relative result is taken relative to a fixed place; ours is
                // the master directory (sshd's is the user's home).
                self.master_dir.join(expanded)
            })
            .collect()
    }

    /// Decides whether `key`, offered from `client`, may log in as `account` at time `now`.
    pub fn authorize(
        &self,
        account: &UnixAccount,
        key: &PublicKey,
        client: IpAddr,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Grant, Refusal> {
        let mut refusal = Refusal::NotListed;
        for file in self.files_for(account) {
            let keys = self.keys_in(&file);
            for entry in keys.iter() {
                // key_data(): PublicKey's own == would also compare the comment.
                if entry.key.key_data() != key.key_data() {
                    continue;
                }
                if entry.options.is_expired(now) {
                    refusal = Refusal::Expired {
                        file: file.clone(),
                        line: entry.line,
                    };
                    continue;
                }
                if let Some(from) = &entry.options.from
                    && !from.allows(client)
                {
                    refusal = Refusal::FromMismatch {
                        file: file.clone(),
                        line: entry.line,
                    };
                    continue;
                }
                return Ok(Grant {
                    file,
                    line: entry.line,
                    options: entry.options.clone(),
                });
            }
        }
        Err(refusal)
    }

    /// The parsed keys of one file; a missing or unreadable file has none. Parse warnings are
    /// logged once per version of the file, not on every login.
    fn keys_in(&self, file: &Path) -> Arc<Vec<AuthorizedKey>> {
        let metadata = match std::fs::metadata(file) {
            Ok(metadata) => metadata,
            Err(err) => {
                if err.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(file = %file.display(), "cannot read authorized keys: {err}");
                }
                self.forget(file);
                return Arc::new(Vec::new());
            }
        };
        let stamp = FileStamp::of(&metadata);
        if let Some(cached) = self.lock_cache().get(file)
            && cached.stamp == stamp
        {
            return Arc::clone(&cached.keys);
        }
        let text = match std::fs::read(file) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(err) => {
                tracing::warn!(file = %file.display(), "cannot read authorized keys: {err}");
                self.forget(file);
                return Arc::new(Vec::new());
            }
        };
        let (keys, warnings) = authorized_keys::parse(&text);
        for warning in &warnings {
            tracing::warn!("{}:{}", file.display(), warning);
        }
        tracing::debug!(file = %file.display(), keys = keys.len(), "read authorized keys");
        let keys = Arc::new(keys);
        self.lock_cache().insert(
            file.to_path_buf(),
            CachedFile {
                stamp,
                keys: Arc::clone(&keys),
            },
        );
        keys
    }

    fn forget(&self, file: &Path) {
        self.lock_cache().remove(file);
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, CachedFile>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts and
        // removes), so a poisoned lock is still usable.
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Expands `%u` (login name), `%h` (home directory) and `%%` as sshd does for
/// AuthorizedKeysFile. An unknown `%x` is kept literally.
pub fn expand_pattern(pattern: &str, user: &str, home: &Path) -> String {
    let mut out = String::with_capacity(pattern.len() + 32);
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('u') => out.push_str(user),
            Some('h') => out.push_str(&home.to_string_lossy()),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_expand_like_sshd() {
        let home = Path::new("/home/alice");
        assert_eq!(
            expand_pattern("%h/.ssh/authorized_keys", "alice", home),
            "/home/alice/.ssh/authorized_keys"
        );
        assert_eq!(
            expand_pattern("authorized_keys.d/%u", "alice", home),
            "authorized_keys.d/alice"
        );
        assert_eq!(expand_pattern("100%%/%x%", "a", home), "100%/%x%");
    }

    #[test]
    fn relative_files_are_under_the_master_dir() {
        let store = KeyStore::new(
            vec![
                "%h/.ssh/authorized_keys".into(),
                "authorized_keys.d/%u".into(),
            ],
            PathBuf::from("/srv/master"),
        );
        let account = UnixAccount {
            name: "bob".into(),
            uid: 1000,
            gids: vec![1000],
            home: PathBuf::from("/home/bob"),
        };
        assert_eq!(
            store.files_for(&account),
            vec![
                PathBuf::from("/home/bob/.ssh/authorized_keys"),
                PathBuf::from("/srv/master/authorized_keys.d/bob"),
            ]
        );
    }
}
