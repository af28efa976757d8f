//! Open user connections end when their login stops holding: the key removed from the file
//! that let it in, or the account deleted or replaced. Each command checks that itself
//! (`SshdContext::still_authorized`); this closes what runs without a new command: an idle
//! connection, a `watch --follow`, a `try --wait`.
//!
//! No polling: the task watches (inotify, through `notify`) the directories of the key files
//! that let the open connections in, and the account database in `/etc`, and re-checks the
//! open logins only when one of them changes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::sshd::{Identity, SshdContext};

/// Changes come in bursts (an editor's temp file and rename, `userdel` touching several
/// files): one re-check after the burst.
const SETTLE: Duration = Duration::from_millis(200);

/// Where the account database lives; a change there may end any login.
const ACCOUNTS_DIR: &str = "/etc";
const ACCOUNT_FILES: [&str; 3] = ["passwd", "shadow", "group"];

/// The open, authenticated user connections.
#[derive(Default)]
pub struct Logins {
    open: Mutex<HashMap<u64, OpenLogin>>,
    next_id: std::sync::atomic::AtomicU64,
    /// To the watching task: a directory to watch from now on.
    dirs: Mutex<Option<mpsc::UnboundedSender<PathBuf>>>,
}

#[derive(Clone)]
struct OpenLogin {
    identity: Identity,
    client: IpAddr,
    /// Cancelled with the reason when the login no longer holds.
    revoked: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
}

/// An open login's registration; dropping it (the connection ended) forgets the login.
pub struct Registered {
    logins: Arc<Logins>,
    id: u64,
    pub revoked: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
}

impl Registered {
    /// Why the login was revoked.
    pub fn reason(&self) -> String {
        crate::master::lock(&self.reason)
            .clone()
            .unwrap_or_else(|| "the login no longer holds".to_string())
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        crate::master::lock(&self.logins.open).remove(&self.id);
    }
}

impl Logins {
    /// Follows a user connection until it ends; a slave's is not followed (its key lives in
    /// master.toml, and a reconfig closes a removed slave).
    pub fn register(self: &Arc<Self>, identity: &Identity, client: IpAddr) -> Option<Registered> {
        let Identity::User { grant, .. } = identity else {
            return None;
        };
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let revoked = CancellationToken::new();
        let reason = Arc::new(Mutex::new(None));
        crate::master::lock(&self.open).insert(
            id,
            OpenLogin {
                identity: identity.clone(),
                client,
                revoked: revoked.clone(),
                reason: Arc::clone(&reason),
            },
        );
        if let Some(dir) = grant.file.parent()
            && let Some(dirs) = crate::master::lock(&self.dirs).as_ref()
        {
            let _ = dirs.send(dir.to_path_buf());
        }
        Some(Registered {
            logins: Arc::clone(self),
            id,
            revoked,
            reason,
        })
    }

    fn snapshot(&self) -> Vec<OpenLogin> {
        crate::master::lock(&self.open)
            .values()
            .filter(|login| !login.revoked.is_cancelled())
            .cloned()
            .collect()
    }
}

/// Watches until `ctx.shutdown`: each change to a watched key directory or to the account
/// files re-checks every open login, and revokes those that no longer hold.
pub async fn run(ctx: Arc<SshdContext>) {
    let (dirs_tx, mut dirs_rx) = mpsc::unbounded_channel::<PathBuf>();
    let (changed_tx, mut changed_rx) = mpsc::unbounded_channel::<()>();
    *crate::master::lock(&ctx.logins.dirs) = Some(dirs_tx);
    let mut watcher = match notify::recommended_watcher(
        move |event: notify::Result<notify::Event>| {
            let relevant = match &event {
                Ok(event) => event.paths.iter().any(|path| is_relevant(path)),
                // An overflow or a watcher error: re-check, to be safe.
                Err(_) => true,
            };
            if relevant {
                let _ = changed_tx.send(());
            }
        },
    ) {
        Ok(watcher) => watcher,
        Err(err) => {
            tracing::warn!(
                "cannot watch key files ({err}); a removed key ends its connections only at their next command"
            );
            return;
        }
    };
    if let Err(err) = watcher.watch(Path::new(ACCOUNTS_DIR), RecursiveMode::NonRecursive) {
        tracing::warn!("cannot watch {ACCOUNTS_DIR} for account changes: {err}");
    }
    let mut watched: Vec<PathBuf> = Vec::new();
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            dir = dirs_rx.recv() => {
                let Some(dir) = dir else { return };
                if !watched.contains(&dir) {
                    match watcher.watch(&dir, RecursiveMode::NonRecursive) {
                        Ok(()) => watched.push(dir),
                        Err(err) => tracing::debug!(dir = %dir.display(), "cannot watch a key directory: {err}"),
                    }
                }
            }
            changed = changed_rx.recv() => {
                if changed.is_none() {
                    return;
                }
                tokio::time::sleep(SETTLE).await;
                while changed_rx.try_recv().is_ok() {}
                recheck(&ctx).await;
            }
        }
    }
}

/// Key files live anywhere the patterns say; of `/etc` only the account files matter.
fn is_relevant(path: &Path) -> bool {
    if path.parent() != Some(Path::new(ACCOUNTS_DIR)) {
        return true;
    }
    // The files themselves and the lock, backup and temp files the tools write beside them.
    let name = path
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or("");
    ACCOUNT_FILES.iter().any(|file| {
        name.strip_prefix(file)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '+', '-']))
    })
}

async fn recheck(ctx: &SshdContext) {
    for login in ctx.logins.snapshot() {
        if let Err(why) = ctx.still_authorized(&login.identity, login.client).await {
            tracing::info!(who = %login.identity.describe(), client = %login.client, "closing a connection whose login no longer holds: {why}");
            *crate::master::lock(&login.reason) = Some(why);
            login.revoked.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn of_etc_only_the_account_files_count() {
        assert!(is_relevant(Path::new("/etc/passwd")));
        assert!(is_relevant(Path::new("/etc/group")));
        assert!(is_relevant(Path::new("/etc/passwd+")));
        assert!(is_relevant(Path::new("/etc/shadow.lock")));
        assert!(!is_relevant(Path::new("/etc/hostname")));
        assert!(!is_relevant(Path::new("/etc/ld.so.cache")));
        assert!(is_relevant(Path::new(
            "/srv/master/authorized_keys.d/alice"
        )));
    }
}
