//! One SSH connection's russh [`Handler`]: authentication decisions and channel requests.
//!
//! Every callback here runs inside the connection's single russh event loop, so none of them
//! does real work: they decide, reply, and hand each accepted exec channel to a task of its own
//! (`sshd::session`). The one wait is the key lookup, which runs on a blocking thread under a
//! timeout (`SshdContext::authenticate`). Shell, subsystem, env, X11, agent and
//! port-forwarding requests are refused, as the design allows no interactive use of the master;
//! a pty request is kept for the channel's command (`shell` relays a terminal to a slave).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use russh::keys::PublicKey;
use russh::server::{
    Auth, ChannelOpenHandle, Handle, Handler, Msg, PublicKeyOffer, Session, VerifiedPublicKey,
};
use russh::{Channel, ChannelId, MethodKind, MethodSet};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::master::metrics::AuthFailure;
use crate::sshd::session::ExecRequest;
use crate::sshd::startups::StartupPermit;
use crate::sshd::{AuthOutcome, Identity, LoginRefusal, SshdContext};

/// Per-connection state. Created when the TCP connection is accepted.
pub struct ConnectionHandler {
    ctx: Arc<SshdContext>,
    peer: SocketAddr,
    identity: Option<Identity>,
    /// Session channels opened but not yet given a command, each with its place among
    /// `max_sessions`. Each one is either handed to a task (with its place) or dropped when the
    /// client closes it, so none stays undrained (russh trap #2).
    idle_channels: HashMap<ChannelId, (Channel<Msg>, OwnedSemaphorePermit)>,
    /// The `max_sessions` places of this connection; a channel's task holds its place until
    /// the channel is done.
    sessions: Arc<Semaphore>,
    /// Holds one of the `max_startups` places for unauthenticated connections; released on
    /// successful authentication or when the connection ends.
    startup_permit: Option<StartupPermit>,
    /// Tells the connection's owner that login succeeded, which stops the login-grace timer.
    authenticated_tx: Option<oneshot::Sender<Identity>>,
    /// The connection's own handle, set by its owner once the session runs. A login that no
    /// key can pass is disconnected through it with the reason, which the OpenSSH client
    /// prints. (russh sends its one banner before the client names a user, so the reason
    /// cannot be a banner.)
    handle: Arc<OnceLock<Handle>>,
    /// The terminal each idle channel asked for (`ssh -t`), handed to its command.
    ptys: HashMap<ChannelId, (String, u32, u32)>,
    /// Whether the reason was already sent.
    refusal_sent: bool,
    offered_keys: usize,
}

impl ConnectionHandler {
    pub fn new(
        ctx: Arc<SshdContext>,
        peer: SocketAddr,
        startup_permit: StartupPermit,
        authenticated_tx: oneshot::Sender<Identity>,
        handle: Arc<OnceLock<Handle>>,
    ) -> ConnectionHandler {
        let sessions = Arc::new(Semaphore::new(ctx.config().sshd.max_sessions));
        ConnectionHandler {
            ctx,
            peer,
            identity: None,
            idle_channels: HashMap::new(),
            sessions,
            startup_permit: Some(startup_permit),
            authenticated_tx: Some(authenticated_tx),
            handle,
            ptys: HashMap::new(),
            refusal_sent: false,
            offered_keys: 0,
        }
    }

    fn publickey_only() -> Auth {
        Auth::Reject {
            proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey][..])),
            partial_success: false,
        }
    }

    /// Awaits the key lookup, which runs on a blocking thread with a timeout: only this
    /// connection waits for it, never the runtime.
    async fn decide(&self, user: &str, key: &PublicKey) -> AuthOutcome {
        self.ctx.authenticate(user, key, self.peer.ip()).await
    }

    /// Logs a refusal that holds for every key and closes the connection with its reason.
    ///
    /// The disconnect is queued on the session's own channel before this callback returns, and
    /// russh drains that channel before it reads the client's next packet: the client gets the
    /// reason right after this rejection, before it can give up with a bare "Permission
    /// denied". During authentication no channel exists, so the queue has room and the send
    /// does not wait.
    async fn refuse_login(&mut self, user: &str, refusal: LoginRefusal) -> Auth {
        if !self.refusal_sent {
            self.refusal_sent = true;
            tracing::info!(peer = %self.peer, user, "refused login: {refusal}");
            self.ctx.control.metrics().auth_failure(refusal.failure());
            if let Some(handle) = self.handle.get() {
                let _ = handle
                    .disconnect(
                        russh::Disconnect::NoMoreAuthMethodsAvailable,
                        crate::commands::Farewell::LoginRefused(refusal.to_string()).to_string(),
                        String::new(),
                    )
                    .await;
            }
        }
        Self::publickey_only()
    }

    /// Refuses a channel request with a message on the channel's stderr and an exit status,
    /// so the OpenSSH client prints something a person understands instead of hanging.
    fn refuse_interactive(&mut self, channel: ChannelId, message: &str, session: &mut Session) {
        self.start(
            channel,
            ExecRequest::Refuse {
                message: message.to_string(),
            },
            session,
        );
    }

    fn start(&mut self, channel_id: ChannelId, request: ExecRequest, session: &mut Session) {
        let Some((channel, place)) = self.idle_channels.remove(&channel_id) else {
            // A second request on a channel that already runs something.
            let _ = session.channel_failure(channel_id);
            return;
        };
        let Some(identity) = self.identity.clone() else {
            let _ = session.channel_failure(channel_id);
            return;
        };
        let _ = session.channel_success(channel_id);
        crate::sshd::session::spawn(
            Arc::clone(&self.ctx),
            channel,
            place,
            identity,
            self.peer,
            request,
            Arc::clone(&self.handle),
        );
    }
}

impl Handler for ConnectionHandler {
    type Error = russh::Error;

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        // OpenSSH asks with "none" first, naming the user: the moment to tell a person that no
        // key of theirs can work under this name.
        match self.ctx.login_refusal(user).await {
            Some(refusal) => Ok(self.refuse_login(user, refusal).await),
            None => Ok(Self::publickey_only()),
        }
    }

    async fn auth_password(&mut self, user: &str, _password: &str) -> Result<Auth, Self::Error> {
        tracing::info!(peer = %self.peer, user, "refused password authentication (public keys only)");
        Ok(Self::publickey_only())
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        _user: &str,
        _submethods: &str,
        _response: Option<russh::server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        Ok(Self::publickey_only())
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        self.offered_keys += 1;
        if self.offered_keys > self.ctx.config().sshd.max_auth_tries {
            tracing::info!(peer = %self.peer, user, "too many authentication attempts; disconnecting");
            self.ctx
                .control
                .metrics()
                .auth_failure(AuthFailure::TooManyTries);
            return Err(russh::Error::Disconnect);
        }
        // Only keys that would be accepted are asked to prove possession; refusals are logged
        // once, when the verified attempt (or this offer) fails.
        match self.decide(user, offer.public_key).await {
            AuthOutcome::Accepted(_) => Ok(Auth::Accept),
            AuthOutcome::Refused(failure, reason) => {
                tracing::info!(peer = %self.peer, user, key = %fingerprint(offer.public_key), "refused key: {reason}");
                self.ctx.control.metrics().auth_failure(failure);
                Ok(Self::publickey_only())
            }
            AuthOutcome::NoLogin(refusal) => Ok(self.refuse_login(user, refusal).await),
        }
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        match self.decide(user, key.public_key).await {
            AuthOutcome::Accepted(identity) => {
                tracing::info!(peer = %self.peer, user, key = %fingerprint(key.public_key), algorithm = %key.algorithm, "accepted {}", identity.describe());
                self.identity = Some(identity);
                Ok(Auth::Accept)
            }
            AuthOutcome::Refused(failure, reason) => {
                tracing::info!(peer = %self.peer, user, "refused key: {reason}");
                self.ctx.control.metrics().auth_failure(failure);
                Ok(Self::publickey_only())
            }
            AuthOutcome::NoLogin(refusal) => Ok(self.refuse_login(user, refusal).await),
        }
    }

    async fn auth_succeeded(&mut self, _session: &mut Session) -> Result<(), Self::Error> {
        self.startup_permit = None;
        if let Some(tx) = self.authenticated_tx.take()
            && let Some(identity) = self.identity.clone()
        {
            let _ = tx.send(identity);
        }
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.identity.is_none() {
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        // A connection may hold only so many channels: each one is a task, buffers and, for
        // `watch --follow`, a follower of the event log.
        let Ok(place) = Arc::clone(&self.sessions).try_acquire_owned() else {
            tracing::warn!(peer = %self.peer, "refused a channel: {} already open on this connection (max_sessions)", self.ctx.config().sshd.max_sessions);
            reply
                .reject(russh::ChannelOpenFailure::ResourceShortage)
                .await;
            return Ok(());
        };
        self.idle_channels.insert(channel.id(), (channel, place));
        reply.accept().await;
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.idle_channels.remove(&channel);
        self.ptys.remove(&channel);
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let requested = String::from_utf8_lossy(data).into_owned();
        let pty = self.ptys.remove(&channel);
        let request = match self.identity.as_ref().and_then(Identity::forced_command) {
            Some(forced) => {
                tracing::info!(peer = %self.peer, requested = %requested, forced = %forced, "forced command replaces the requested one");
                ExecRequest::Command {
                    command: forced.to_string(),
                    original: Some(requested),
                    pty,
                }
            }
            None => ExecRequest::Command {
                command: requested,
                original: None,
                pty,
            },
        };
        self.start(channel, request, session);
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // A forced command runs for a shell request too, as with sshd.
        if let Some(forced) = self.identity.as_ref().and_then(Identity::forced_command) {
            let request = ExecRequest::Command {
                command: forced.to_string(),
                original: None,
                pty: self.ptys.remove(&channel),
            };
            self.start(channel, request, session);
            return Ok(());
        }
        self.refuse_interactive(
            channel,
            "buildbot: this master has no interactive shell; run a command, e.g. `ssh ... watch`",
            session,
        );
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let message = format!("buildbot: subsystem '{name}' is not available on this master");
        self.refuse_interactive(channel, &message, session);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Kept for the command: `shell` opens a PTY on the slave with it; the others have no
        // use for one and write plain lines. A second request, or one for a channel already
        // running, fails (OpenSSH prints "PTY allocation request failed" and carries on).
        if self.idle_channels.contains_key(&channel) && !self.ptys.contains_key(&channel) {
            let term = crate::untrusted::text::one_line(term);
            let term: String = term.chars().take(64).collect();
            self.ptys.insert(channel, (term, col_width, row_height));
            let _ = session.channel_success(channel);
        } else {
            let _ = session.channel_failure(channel);
        }
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _variable_name: &str,
        _variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let _ = session.channel_failure(channel);
        Ok(())
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let _ = session.channel_failure(channel);
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        tracing::info!(peer = %self.peer, "refused port forwarding to {host_to_connect}:{port_to_connect}");
        reply
            .reject(russh::ChannelOpenFailure::Other {
                code: 1,
                reason: "port forwarding is not allowed on this master".into(),
            })
            .await;
        Ok(())
    }
}

/// The SHA-256 fingerprint of a key, as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(russh::keys::HashAlg::Sha256).to_string()
}
