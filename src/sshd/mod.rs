//! The master's embedded SSH server: accepting connections, authenticating users (unix accounts
//! with OpenSSH authorized_keys files) and slaves (keys from master.toml), and routing exec
//! commands to what the master does.
//!
//! Identity decisions are made here ([`Identity`]); what an identity may *do* (write into the
//! spool, stop a build) is decided by `master::control` with the unix permission rules of
//! `master::access`. This front end parses command lines and renders the control layer's
//! answers as text (or JSON lines) on the channel.

pub mod authorized_keys;
mod channel_input;
pub mod cmd;
mod cutoff;
mod handler;
pub mod keystore;
mod revocation;
mod session;
mod startups;
pub mod strict_modes;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use russh::keys::{PrivateKey, PublicKey};
use russh::{MethodKind, MethodSet};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::master::config::Config;
use crate::master::control::Control;
use crate::master::metrics::AuthFailure;
use crate::sshd::keystore::{Grant, KeyStore, Refusal};
use crate::unix::accounts::{self, UnixAccount};

pub use handler::fingerprint;

/// Who is on the other end of an authenticated connection.
#[derive(Debug, Clone)]
pub enum Identity {
    /// A person, logged in as a unix account with a key from one of its authorized_keys files.
    User {
        account: UnixAccount,
        grant: Grant,
        /// The key it logged in with: each command checks that it still lets this user in.
        key: Box<PublicKey>,
    },
    /// A build slave, logged in with its name and the key master.toml lists for it.
    Slave { name: String },
}

impl Identity {
    /// The `command="..."` of the key line that let this user in, if any.
    pub fn forced_command(&self) -> Option<&str> {
        match self {
            Identity::User { grant, .. } => grant.options.command.as_deref(),
            Identity::Slave { .. } => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Identity::User { account, grant, .. } => format!(
                "user {} (uid {}) by {}:{}",
                account.name,
                account.uid,
                grant.file.display(),
                grant.line
            ),
            Identity::Slave { name } => format!("slave {name}"),
        }
    }
}

/// The result of checking one key for one login name.
#[derive(Debug)]
pub enum AuthOutcome {
    Accepted(Identity),
    /// This key may not log in; another key might. Why (a bounded reason, for the metrics)
    /// and the line for the log.
    Refused(AuthFailure, String),
    /// No key may log in under this name (no such account, root without `allow_root`). The
    /// reason is told to the client before the connection is closed (see [`LoginRefusal`]).
    NoLogin(LoginRefusal),
}

/// Why no key at all can log in under a name: what the client is told in the disconnect
/// message, so the person sees the reason instead of a bare "Permission denied".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginRefusal {
    #[error("no unix account {0} on this master")]
    NoAccount(String),
    #[error("root may not log in (allow_root = false)")]
    RootNotAllowed,
}

impl LoginRefusal {
    /// The bounded reason the metrics count it under.
    pub fn failure(&self) -> AuthFailure {
        match self {
            LoginRefusal::NoAccount(_) => AuthFailure::UnknownUser,
            LoginRefusal::RootNotAllowed => AuthFailure::Root,
        }
    }
}

/// Everything connections share: configuration, key lookup, master state, and the owner of
/// every task a connection spawns.
pub struct SshdContext {
    /// Shared with the blocking threads that read key files.
    pub keys: Arc<KeyStore>,
    /// What commands do: the master's control layer.
    pub control: Arc<Control>,
    /// Exec-channel tasks; the server waits for them (under a deadline) when it stops.
    pub tasks: TaskTracker,
    /// Cancelled when the master stops.
    pub shutdown: CancellationToken,
    /// The open user connections, closed when their login stops holding (`revocation`).
    pub logins: Arc<revocation::Logins>,
}

impl SshdContext {
    pub fn new(
        config: Arc<Config>,
        control: Arc<Control>,
        shutdown: CancellationToken,
    ) -> SshdContext {
        SshdContext {
            keys: Arc::new(KeyStore::new(
                config.sshd.authorized_keys.clone(),
                config.master_dir.clone(),
            )),
            control,
            tasks: TaskTracker::new(),
            shutdown,
            logins: Arc::default(),
        }
    }

    /// The config in force now (slaves, `allow_root` and the limits per connection follow a
    /// reconfig at the next login; listeners and `max_startups` are bound at start).
    pub fn config(&self) -> Arc<Config> {
        self.control.config()
    }

    /// Decides whether `key` may log in as `login` from `client`.
    ///
    /// A slave name with its configured key is a slave. Any other login must be a unix account
    /// (root only with `allow_root`) whose authorized_keys files list the key. A key that
    /// belongs to a slave is never accepted as a user key, whatever the files say.
    ///
    /// The account lookup (NSS) and the key files are read on a blocking thread under
    /// [`KEY_LOOKUP_TIMEOUT`]: a user controls their own key files (a FIFO, a slow network
    /// home), and the connection's event loop must not wait on them for long.
    pub async fn authenticate(&self, login: &str, key: &PublicKey, client: IpAddr) -> AuthOutcome {
        let config = self.config();
        let is_slave_key = |slave: &crate::master::config::SlaveConfig| {
            slave.public_key.key_data() == key.key_data()
        };
        if let Some(slave) = config.slave(login)
            && is_slave_key(slave)
        {
            return AuthOutcome::Accepted(Identity::Slave {
                name: slave.name.clone(),
            });
        }
        if let Some(owner) = config.slaves.iter().find(|slave| is_slave_key(slave)) {
            return AuthOutcome::Refused(
                AuthFailure::SlaveKey,
                format!(
                    "the key of slave {} may only log in as that slave",
                    owner.name
                ),
            );
        }
        let lookup = {
            let keys = Arc::clone(&self.keys);
            let login = login.to_string();
            let key = key.clone();
            let allow_root = config.sshd.allow_root;
            tokio::task::spawn_blocking(move || {
                authenticate_user(&keys, &login, &key, client, allow_root)
            })
        };
        match tokio::time::timeout(KEY_LOOKUP_TIMEOUT, lookup).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(join_error)) => {
                tracing::error!(user = login, "key lookup failed: {join_error}");
                AuthOutcome::Refused(AuthFailure::LookupFailed, "key lookup failed".into())
            }
            // The blocking thread is left to finish on its own; all it can still do is read a
            // capped amount from a file that was already checked.
            Err(_) => AuthOutcome::Refused(
                AuthFailure::LookupFailed,
                format!("account or key files not read within {KEY_LOOKUP_TIMEOUT:?}"),
            ),
        }
    }
}

impl SshdContext {
    /// Whether the key and account a connection logged in with still let it in now, asked
    /// before each command: a key removed from its file, an account deleted or replaced, ends
    /// what an open connection may do. The key files are cached by their stamp (`keystore`),
    /// so this re-reads only a file that changed. `Err` says why not.
    pub async fn still_authorized(
        &self,
        identity: &Identity,
        client: IpAddr,
    ) -> Result<(), String> {
        let Identity::User { account, key, .. } = identity else {
            return Ok(());
        };
        let lookup = {
            let keys = Arc::clone(&self.keys);
            let login = account.name.clone();
            let key = PublicKey::clone(key);
            let allow_root = self.config().sshd.allow_root;
            tokio::task::spawn_blocking(move || {
                authenticate_user(&keys, &login, &key, client, allow_root)
            })
        };
        match tokio::time::timeout(KEY_LOOKUP_TIMEOUT, lookup).await {
            Ok(Ok(AuthOutcome::Accepted(Identity::User { account: now, .. })))
                if now.uid == account.uid =>
            {
                Ok(())
            }
            Ok(Ok(AuthOutcome::Accepted(_))) => Err("the account is another one now".into()),
            Ok(Ok(AuthOutcome::Refused(_, reason))) => Err(reason),
            Ok(Ok(AuthOutcome::NoLogin(refusal))) => Err(refusal.to_string()),
            Ok(Err(_)) | Err(_) => Err("the key files could not be read in time".into()),
        }
    }

    /// Whether no key can log in as `login` at all, decided from the name alone: a name that is
    /// neither a slave nor a unix account, or root without `allow_root`. Asked at the first
    /// authentication request (OpenSSH's "none" probe), so the client can be told why. `None`
    /// when a key might still log in, or when the account database did not answer in time
    /// (the key check then decides, and logs).
    pub async fn login_refusal(&self, login: &str) -> Option<LoginRefusal> {
        let config = self.config();
        if config.slave(login).is_some() {
            return None;
        }
        let allow_root = config.sshd.allow_root;
        let lookup = {
            let login = login.to_string();
            tokio::task::spawn_blocking(move || account_refusal(&login, allow_root))
        };
        match tokio::time::timeout(KEY_LOOKUP_TIMEOUT, lookup).await {
            // Left to the key check, which refuses it like a wrong key (and logs why).
            Ok(Ok(Some(LoginRefusal::NoAccount(_)))) if !config.sshd.tell_unknown_users => None,
            Ok(Ok(refusal)) => refusal,
            Ok(Err(_)) | Err(_) => None,
        }
    }
}

/// The blocking half of [`SshdContext::login_refusal`].
fn account_refusal(login: &str, allow_root: bool) -> Option<LoginRefusal> {
    match accounts::lookup(login) {
        Ok(Some(account)) if account.is_root() && !allow_root => Some(LoginRefusal::RootNotAllowed),
        Ok(Some(_)) | Err(_) => None,
        Ok(None) => Some(LoginRefusal::NoAccount(login.to_string())),
    }
}

/// How long one login may wait for the account database and its key files.
pub const KEY_LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The blocking half of [`SshdContext::authenticate`] for a user login.
fn authenticate_user(
    keys: &KeyStore,
    login: &str,
    key: &PublicKey,
    client: IpAddr,
    allow_root: bool,
) -> AuthOutcome {
    let account = match accounts::lookup(login) {
        Ok(Some(account)) => account,
        Ok(None) => return AuthOutcome::NoLogin(LoginRefusal::NoAccount(login.to_string())),
        Err(err) => {
            return AuthOutcome::Refused(
                AuthFailure::LookupFailed,
                format!("cannot look up account: {err}"),
            );
        }
    };
    if account.is_root() && !allow_root {
        return AuthOutcome::NoLogin(LoginRefusal::RootNotAllowed);
    }
    match keys.authorize(&account, key, client, chrono::Utc::now()) {
        Ok(grant) => AuthOutcome::Accepted(Identity::User {
            account,
            grant,
            key: Box::new(key.clone()),
        }),
        Err(Refusal::NotListed) => AuthOutcome::Refused(
            AuthFailure::KeyNotListed,
            "key not in any authorized_keys file for this login".into(),
        ),
        Err(Refusal::FromMismatch { file, line }) => AuthOutcome::Refused(
            AuthFailure::FromMismatch,
            format!("{}:{line}: from= does not allow {client}", file.display()),
        ),
        Err(Refusal::Expired { file, line }) => AuthOutcome::Refused(
            AuthFailure::Expired,
            format!("{}:{line}: key expired (expiry-time)", file.display()),
        ),
        Err(Refusal::UnsafeFile { reason }) => AuthOutcome::Refused(
            AuthFailure::UnsafeKeyFile,
            format!("key file not trusted: {reason}"),
        ),
    }
}

/// Reads the host key, refusing a key file that others may read (as sshd does).
pub fn load_host_key(path: &Path) -> anyhow::Result<PrivateKey> {
    use std::os::unix::fs::PermissionsExt;
    let metadata = std::fs::metadata(path)
        .with_context(|| format!("cannot read host key {}", path.display()))?;
    if metadata.permissions().mode() & 0o077 != 0 {
        anyhow::bail!(
            "host key {} is readable by others (mode {:o}); run chmod 600 on it",
            path.display(),
            metadata.permissions().mode() & 0o777
        );
    }
    PrivateKey::read_openssh_file(path)
        .with_context(|| format!("cannot load host key {}", path.display()))
}

fn russh_config(config: &Config, host_key: PrivateKey) -> russh::server::Config {
    russh::server::Config {
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        // OpenSSH probes with "none" first; public-key refusals need no constant-time delay.
        auth_rejection_time: Duration::from_millis(20),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        // The handler enforces max_auth_tries on key offers, as sshd counts them. russh counts
        // every request (the "none" probe, each offer, each signed attempt), so its own limit
        // is only a backstop.
        max_auth_attempts: config.sshd.max_auth_tries * 2 + 1,
        // Dead peers are found by keepalives, not by an idle timer that would drop quiet slaves.
        inactivity_timeout: None,
        keepalive_interval: Some(config.sshd.keepalive_interval),
        keepalive_max: 3,
        nodelay: true,
        ..Default::default()
    }
}

/// Serves SSH on `listener` until `ctx.shutdown` is cancelled, then disconnects every client
/// and waits (at most `grace`) for running exec tasks to finish.
pub async fn run(
    listener: TcpListener,
    host_key: PrivateKey,
    ctx: Arc<SshdContext>,
    grace: Duration,
) -> anyhow::Result<()> {
    let russh_config = Arc::new(russh_config(&ctx.config(), host_key));
    let startups = startups::Startups::new(
        ctx.config().sshd.max_startups,
        ctx.config().sshd.max_startups_per_source,
    );
    let connections = TaskTracker::new();
    connections.spawn(revocation::run(Arc::clone(&ctx)));
    loop {
        let (stream, peer) = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // EMFILE and friends: keep serving the connections we have.
                    tracing::warn!("accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        ctx.control.metrics().ssh_connection();
        let permit = match startups.admit(peer.ip()) {
            Ok(permit) => permit,
            Err(refusal) => {
                tracing::warn!(%peer, "dropped connection: {refusal}");
                drop(stream);
                continue;
            }
        };
        let ctx = Arc::clone(&ctx);
        let russh_config = Arc::clone(&russh_config);
        connections.spawn(async move {
            serve_connection(stream, peer, permit, russh_config, ctx).await;
        });
    }
    connections.close();
    ctx.tasks.close();
    let drained = async {
        connections.wait().await;
        ctx.tasks.wait().await;
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!("SSH connections still open after {grace:?}; stopping anyway");
    }
    Ok(())
}

/// The read buffer under each SSH connection: large enough for a few small packets, small
/// against a connection's other state (a large packet bypasses it).
pub const SOCKET_READ_BUFFER: usize = 8 * 1024;

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    permit: startups::StartupPermit,
    russh_config: Arc<russh::server::Config>,
    ctx: Arc<SshdContext>,
) {
    // russh applies its `nodelay` only to sockets it accepts itself. Without it, Nagle holds a
    // small frame (a pong, a command's exit) until the peer's delayed ACK, some 40 ms.
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(%peer, "cannot set TCP_NODELAY: {err}");
    }
    let (authenticated_tx, authenticated_rx) = oneshot::channel();
    let own_handle = Arc::new(std::sync::OnceLock::new());
    let handler = handler::ConnectionHandler::new(
        Arc::clone(&ctx),
        peer,
        permit,
        authenticated_tx,
        Arc::clone(&own_handle),
    );
    let cut = CancellationToken::new();
    // russh reads a packet in two reads (its length, then the rest); buffered, a small packet
    // (a keystroke) costs one read from the socket instead of two.
    let stream = tokio::io::BufReader::with_capacity(
        SOCKET_READ_BUFFER,
        cutoff::CutOffStream::new(stream, cut.clone()),
    );
    // Cancelling `cut` ends the session task whatever state it is in; this guard does it on
    // every way out of this function, so no session outlives its owner.
    let _cut_on_exit = cut.clone().drop_guard();
    let grace = ctx.config().sshd.login_grace_time;
    let login_deadline = tokio::time::sleep(grace);
    tokio::pin!(login_deadline);
    let session = tokio::select! {
        started = russh::server::run_stream(russh_config, stream, handler) => match started {
            Ok(session) => session,
            Err(err) => {
                tracing::debug!(%peer, "SSH handshake failed: {err}");
                return;
            }
        },
        _ = &mut login_deadline => {
            tracing::info!(%peer, "dropped connection: no SSH banner within {grace:?} (login_grace_time)");
            return;
        }
    };
    let handle = session.handle();
    // Key exchange comes first, so the handle is there before any authentication request.
    let _ = own_handle.set(handle.clone());
    let mut session = std::pin::pin!(session);
    let mut authenticated_rx = authenticated_rx;
    let mut authenticated = false;
    let mut login: Option<revocation::Registered> = None;
    loop {
        let revoked = async {
            match &login {
                Some(login) => login.revoked.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = &mut session => {
                if let Err(err) = result {
                    tracing::debug!(%peer, "connection ended: {err}");
                }
                return;
            }
            _ = &mut login_deadline, if !authenticated => {
                tracing::info!(%peer, "dropped connection: not authenticated within {grace:?} (login_grace_time)");
                return;
            }
            result = &mut authenticated_rx, if !authenticated => {
                authenticated = true;
                match result {
                    Ok(identity) => login = ctx.logins.register(&identity, peer.ip()),
                    // The handler is gone without authenticating: the session is ending.
                    Err(_) => continue,
                }
            }
            _ = revoked => {
                let reason = login.as_ref().map(revocation::Registered::reason).unwrap_or_default();
                let _ = handle
                    .disconnect(
                        russh::Disconnect::ByApplication,
                        format!("buildbot: the login of this connection no longer holds ({reason})"),
                        String::new(),
                    )
                    .await;
                let _ = tokio::time::timeout(Duration::from_millis(500), &mut session).await;
                return;
            }
            _ = ctx.shutdown.cancelled() => {
                let _ = handle
                    .disconnect(
                        russh::Disconnect::ByApplication,
                        crate::commands::Farewell::ShuttingDown.to_string(),
                        String::new(),
                    )
                    .await;
                let _ = tokio::time::timeout(Duration::from_millis(500), &mut session).await;
                return;
            }
        }
    }
}
