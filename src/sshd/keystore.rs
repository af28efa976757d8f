//! Where user keys come from and whether a key may log in: expands the sshd-style
//! `AuthorizedKeysFile` patterns for a login, reads those files (re-reading a file whenever its
//! size, mtime or inode changed, so edits take effect without a restart), and decides whether an
//! offered key from a given address is accepted. A file is only trusted if it passes sshd's
//! StrictModes checks (`sshd::strict_modes`). Parsing one file's text is
//! `sshd::authorized_keys`; slave keys come from master.toml and are checked in
//! `SshdContext::authenticate`.
//!
//! All of this is blocking file I/O: it runs on a blocking thread, never on the async runtime.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use russh::keys::PublicKey;

use crate::sshd::authorized_keys::{self, AuthorizedKey, KeyOptions};
use crate::sshd::strict_modes::{self, Scope};
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
    /// Not listed in any file that could be trusted, and this file was not trusted (the
    /// reason names the file and what is wrong with it).
    UnsafeFile { reason: String },
}

/// One file the patterns give for a login, and the rules it must pass to be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFile {
    pub path: PathBuf,
    pub scope: Scope,
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
    /// The uid the master runs as: it may own the files under the master directory.
    master_uid: u32,
    cache: Mutex<HashMap<PathBuf, CachedFile>>,
}

impl KeyStore {
    pub fn new(patterns: Vec<String>, master_dir: PathBuf) -> KeyStore {
        KeyStore {
            patterns,
            master_dir,
            master_uid: nix::unistd::geteuid().as_raw(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The files the patterns give for `account`, in pattern order.
    ///
    /// A file from an absolute pattern (`%h/...`) belongs to the user: it and its directories
    /// up to the home must be owned by the user or root. A relative pattern's file lives in the
    /// master directory, which the master's admin keeps: its owner may also be the master's uid,
    /// and the directory walk stops at the master directory.
    pub fn files_for(&self, account: &UnixAccount) -> Vec<KeyFile> {
        self.patterns
            .iter()
            .map(|pattern| {
                let expanded = PathBuf::from(expand_pattern(pattern, &account.name, &account.home));
                if expanded.is_absolute() {
                    return KeyFile {
                        path: expanded,
                        scope: Scope {
                            allowed_owners: dedup(vec![account.uid, 0]),
                            stop_at: account.home.clone(),
                        },
                    };
                }
                // As sshd does, a relative result is taken relative to a fixed place; ours is
                // the master directory (sshd's is the user's home).
                KeyFile {
                    path: self.master_dir.join(expanded),
                    scope: Scope {
                        allowed_owners: dedup(vec![account.uid, 0, self.master_uid]),
                        stop_at: self.master_dir.clone(),
                    },
                }
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
        for KeyFile { path: file, scope } in self.files_for(account) {
            let keys = match self.keys_in(&file, &scope) {
                Ok(keys) => keys,
                Err(unsafe_file) => {
                    // As sshd: the file is skipped (another file may still list the key), and
                    // the reason goes to the log and into the login's refusal.
                    tracing::warn!(user = %account.name, "authentication refused: {unsafe_file}");
                    if refusal == Refusal::NotListed {
                        refusal = Refusal::UnsafeFile {
                            reason: unsafe_file.to_string(),
                        };
                    }
                    continue;
                }
            };
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

    /// The parsed keys of one file; a missing file has none, an unsafe one is an error. Parse
    /// warnings are logged once per version of the file, not on every login.
    fn keys_in(
        &self,
        file: &Path,
        scope: &Scope,
    ) -> Result<Arc<Vec<AuthorizedKey>>, strict_modes::UnsafeKeyFile> {
        // Every login checks the file and its directories again (a few stats): a cached parse
        // must not outlive a chmod that made the file unsafe.
        let checked = match strict_modes::open_checked(file, scope) {
            Ok(Some(checked)) => checked,
            Ok(None) => {
                self.forget(file);
                return Ok(Arc::new(Vec::new()));
            }
            Err(err) => {
                self.forget(file);
                return Err(err);
            }
        };
        let stamp = FileStamp::of(&checked.metadata);
        if let Some(cached) = self.lock_cache().get(file)
            && cached.stamp == stamp
        {
            return Ok(Arc::clone(&cached.keys));
        }
        let bytes = strict_modes::read_capped(file, checked.file).inspect_err(|_| {
            self.forget(file);
        })?;
        let text = String::from_utf8_lossy(&bytes);
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
        Ok(keys)
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

fn dedup(mut uids: Vec<u32>) -> Vec<u32> {
    uids.sort_unstable();
    uids.dedup();
    uids
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
        let files = store.files_for(&account);
        let paths: Vec<&Path> = files.iter().map(|file| file.path.as_path()).collect();
        assert_eq!(
            paths,
            vec![
                Path::new("/home/bob/.ssh/authorized_keys"),
                Path::new("/srv/master/authorized_keys.d/bob"),
            ]
        );
        // The user's own file: the user or root, checked up to the home.
        assert_eq!(files[0].scope.allowed_owners, vec![0, 1000]);
        assert_eq!(files[0].scope.stop_at, PathBuf::from("/home/bob"));
        // The admin's file: the master's uid may own it too; checked up to the master dir.
        assert!(files[1].scope.allowed_owners.contains(&store.master_uid));
        assert_eq!(files[1].scope.stop_at, PathBuf::from("/srv/master"));
    }
}
