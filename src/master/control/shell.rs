//! Shells into held builds (issue 25): who may open one, on which slave and in which
//! directory, how long the hold lasts, and the record of every session. The relay of bytes is
//! the front end's (`sshd::cmd::shell`); what a shell means is decided here, once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::master::access::{self, Action, Target};
use crate::master::control::{Control, ControlError};
use crate::master::events::{EventLog, Followed, Follower};
use crate::master::shell::LOGOUT_GRACE;
use crate::master::slaves::{ShellEvent, SlaveLink};
use crate::master::store::{BuildRef, SharedStore, ShellHold, ShellSession};
use crate::proto::{AckOwed, Message, SHELL_WINDOW, ShellRequest, TermSize, shell_cost};
use crate::status::{BuildEvent, unix_now};
use crate::unix::accounts::UnixAccount;

/// What a user asks for.
#[derive(Debug, Clone)]
pub struct ShellAsk {
    pub builder: String,
    pub number: i64,
    /// Where the user connects from (an address), for the record.
    pub from: String,
    /// One command instead of an interactive shell.
    pub command: Option<String>,
    /// The user's terminal type and size, when the user has one.
    pub pty: Option<(String, TermSize)>,
}

/// Another master of the cluster: the one a held build's slave is connected to, where its
/// shell opens.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OtherMaster {
    pub master: String,
    /// Where users reach its SSH listener.
    pub host: String,
    pub port: u16,
    /// Its host key's public line, for the client to pin.
    pub host_key: String,
}

impl OtherMaster {
    /// The command that opens the shell there.
    pub fn command(&self, builder: &str, number: i64) -> String {
        format!(
            "ssh -t {} shell {builder} {number}",
            ssh_destination(&self.host, self.port)
        )
    }
}

/// An SSH destination as users type it: `-p PORT HOST`, or `HOST` on port 22.
pub fn ssh_destination(host: &str, port: u16) -> String {
    match port {
        22 => host.to_string(),
        port => format!("-p {port} {host}"),
    }
}

/// Where a held build's shell opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShellPlace {
    /// On this master: the slave is connected here.
    Here,
    /// On another master of the cluster.
    Elsewhere(OtherMaster),
}

/// How a shell ended, as the user is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShellEnd {
    /// The shell exited: its status (128 + signal when a signal ended it).
    Exited(u32),
    /// Something else ended it; the sentence says what.
    Ended(String),
}

/// An open shell: the relay's handle on it. [`OpenedShell::finish`] records its end.
pub struct OpenedShell {
    link: Arc<SlaveLink>,
    id: u64,
    events: mpsc::UnboundedReceiver<ShellEvent>,
    store: SharedStore,
    log: Arc<EventLog>,
    /// The cluster's events from the shell's start, to hear of a release of its hold; until
    /// the relay takes them ([`OpenedShell::release_watch`]).
    releases: Option<Follower>,
    session_id: i64,
    hold: ShellHold,
    who: String,
    /// Input sent to the slave and not yet acknowledged, by `proto::shell_cost`.
    input_in_flight: u64,
    /// Output delivered to the user and not yet acknowledged to the slave.
    output_owed: AckOwed,
    exited: bool,
    /// `finish` ran; otherwise dropping the shell (its relay cancelled at shutdown) closes it.
    finished: bool,
}

/// The largest piece of input the relay hands over at once.
pub const INPUT_CHUNK: usize = 32 * 1024;

impl Control {
    /// Opens a shell into held build `ask.number` of `ask.builder` for `account`: its
    /// requester or an operator. Connecting extends the hold to the builder's `hold.for` from
    /// now.
    pub async fn open_shell(
        &self,
        account: &UnixAccount,
        ask: ShellAsk,
    ) -> Result<OpenedShell, ControlError> {
        let builder = self.builder(&ask.builder)?;
        let hold = self.hold_for(account, &ask.builder, ask.number).await?;
        let now = unix_now();
        if hold.held_until <= now {
            return Err(ControlError::HoldEnded {
                builder: ask.builder,
                number: ask.number,
                until: clock(hold.held_until),
            });
        }
        let Some(link) = self.roster.current(&hold.slave) else {
            return Err(ControlError::SlaveAway {
                elsewhere: self.master_holding(&hold.slave).await.map(Box::new),
                slave: hold.slave,
                builder: ask.builder,
                number: ask.number,
            });
        };
        let until = hold
            .held_until
            .max(now + builder.hold.hold_for.as_secs_f64());
        self.store.set_held_until(hold.build_id, until).await?;
        let request = ShellRequest {
            dir: hold.dir.clone(),
            env: hold.env.clone(),
            command: ask.command.clone(),
            pty: ask.pty.clone(),
        };
        // Followed from before the slave is asked: a release that comes while the shell
        // starts is not missed.
        let releases = self.events.follow();
        let (id, events) = link
            .open_shell(request)
            .await
            .map_err(|_| ControlError::SlaveAway {
                slave: hold.slave.clone(),
                builder: ask.builder.clone(),
                number: ask.number,
                elsewhere: None,
            })?;
        let session = ShellSession {
            id: 0,
            build_id: hold.build_id,
            who: account.name.clone(),
            from_addr: ask.from.clone(),
            master: self.owner.name.clone(),
            started_at: now,
            ended_at: None,
        };
        let session_id = match self.store.start_shell_session(session).await {
            Ok(id) => id,
            Err(err) => {
                // Unrecorded, it does not run.
                let _ = link
                    .to_shell(Message::ShellClose {
                        id,
                        reason: "the master cannot record the session".into(),
                    })
                    .await;
                link.forget_shell(id);
                return Err(err.into());
            }
        };
        tracing::info!(user = %account.name, builder = %ask.builder, number = ask.number, slave = %hold.slave, dir = %hold.dir, from = %ask.from, "shell opened");
        self.events.publish(BuildEvent::ShellOpened {
            builder: ask.builder.clone(),
            number: ask.number,
            who: account.name.clone(),
            from: ask.from.clone(),
        });
        Ok(OpenedShell {
            link,
            id,
            events,
            store: Arc::clone(&self.store),
            log: Arc::clone(&self.events),
            releases: Some(releases),
            session_id,
            hold: ShellHold {
                held_until: until,
                ..hold
            },
            who: account.name.clone(),
            input_in_flight: 0,
            output_owed: AckOwed::default(),
            exited: false,
            finished: false,
        })
    }

    /// Ends the hold of build `number` of `builder` now (`shell --release`): its directory is
    /// free for the next build, and open shells end.
    pub async fn release_hold(
        &self,
        account: &UnixAccount,
        builder: &str,
        number: i64,
    ) -> Result<ShellHold, ControlError> {
        let hold = self.hold_for(account, builder, number).await?;
        let now = unix_now();
        if hold.held_until > now {
            self.store.set_held_until(hold.build_id, now).await?;
            // Its open shells end, on whichever master relays them.
            self.events.publish(BuildEvent::HoldReleased {
                builder: builder.to_string(),
                number,
                who: account.name.clone(),
            });
        }
        tracing::info!(user = %account.name, %builder, number, "hold released");
        Ok(ShellHold {
            held_until: now.min(hold.held_until),
            ..hold
        })
    }

    /// Where the shell into held build `number` of `builder` opens, for `account` (who must
    /// be allowed to open it): here, on another master, or nowhere now (an error saying why).
    pub async fn shell_place(
        &self,
        account: &UnixAccount,
        builder: &str,
        number: i64,
    ) -> Result<ShellPlace, ControlError> {
        let hold = self.hold_for(account, builder, number).await?;
        if self.roster.current(&hold.slave).is_some() {
            return Ok(ShellPlace::Here);
        }
        match self.master_holding(&hold.slave).await {
            Some(other) => Ok(ShellPlace::Elsewhere(other)),
            None => Err(ControlError::SlaveAway {
                slave: hold.slave,
                builder: builder.to_string(),
                number,
                elsewhere: None,
            }),
        }
    }

    /// The master a shell into a build held on `slave` opens on, when that is not this one.
    pub async fn shell_elsewhere(&self, slave: &str) -> Option<OtherMaster> {
        if self.roster.current(slave).is_some() {
            return None;
        }
        self.master_holding(slave).await
    }

    /// The live master of the cluster, other than this one, that `slave` is connected to.
    pub async fn master_holding(&self, slave: &str) -> Option<OtherMaster> {
        let masters = match self.store.masters().await {
            Ok(masters) => masters,
            Err(err) => {
                tracing::warn!("cannot read the cluster's masters: {err}");
                return None;
            }
        };
        masters
            .into_iter()
            .filter(|row| row.alive && row.name != self.owner.name)
            .find(|row| row.info.slaves.iter().any(|name| name == slave))
            .map(|row| OtherMaster {
                master: row.name,
                host: row.info.ssh_host,
                port: row.info.ssh_port,
                host_key: row.info.host_key,
            })
    }

    /// The hold of build `number` of a configured `builder`, when `account` may open its shell
    /// (its requester or an operator); else why not.
    async fn hold_for(
        &self,
        account: &UnixAccount,
        builder: &str,
        number: i64,
    ) -> Result<ShellHold, ControlError> {
        self.builder(builder)?;
        let hold = self.held(builder, number).await?;
        access::check(
            account,
            Action::Shell,
            Target::Owned {
                owner: hold.owner.as_deref(),
            },
            &self.config(),
        )?;
        Ok(hold)
    }

    /// The hold of a build, or why there is none.
    async fn held(&self, builder: &str, number: i64) -> Result<ShellHold, ControlError> {
        if let Some(hold) = self.store.shell_hold(builder, number).await? {
            return Ok(hold);
        }
        let key = BuildRef::Number {
            builder: builder.to_string(),
            number,
        };
        match self.store.build(key).await? {
            None => Err(ControlError::NoSuchBuild {
                builder: builder.to_string(),
                number,
            }),
            Some(detail) if detail.build.finished_at.is_none() => Err(ControlError::StillRunning {
                builder: builder.to_string(),
                number,
            }),
            Some(_) => Err(ControlError::NotHeld {
                builder: builder.to_string(),
                number,
            }),
        }
    }

    /// The hold of a build for pages: none when it was never held.
    pub async fn shell_hold(
        &self,
        builder: &str,
        number: i64,
    ) -> Result<Option<(ShellHold, Vec<ShellSession>)>, ControlError> {
        let Some(hold) = self.store.shell_hold(builder, number).await? else {
            return Ok(None);
        };
        let sessions = self.store.shell_sessions(hold.build_id).await?;
        Ok(Some((hold, sessions)))
    }

    /// Whether `account` may open a shell into a build held for `owner` (pages show the
    /// command only to those who may).
    pub fn may_shell(&self, account: &UnixAccount, owner: Option<&str>) -> bool {
        access::check(
            account,
            Action::Shell,
            Target::Owned { owner },
            &self.config(),
        )
        .is_ok()
    }
}

/// `HH:MM` (UTC) of a unix time, as a hold's end is shown.
pub fn clock(at: f64) -> String {
    chrono::DateTime::from_timestamp(at as i64, 0)
        .map(|time| time.format("%H:%M UTC").to_string())
        .unwrap_or_else(|| "?".into())
}

impl OpenedShell {
    pub fn hold(&self) -> &ShellHold {
        &self.hold
    }

    /// The next output, acknowledgement (after which [`OpenedShell::takes_input`] may have
    /// changed) or the end; `None` when the slave's connection ended.
    pub async fn next(&mut self) -> Option<ShellEvent> {
        let event = self.events.recv().await?;
        match &event {
            ShellEvent::Ack(cost) => {
                self.input_in_flight = self.input_in_flight.saturating_sub(*cost);
            }
            ShellEvent::Exit { .. } => self.exited = true,
            ShellEvent::Output { .. } => {}
        }
        Some(event)
    }

    /// What tells the relay that the hold was released; taken once (a second take gets a
    /// watch that never fires).
    pub fn release_watch(&mut self) -> ReleaseWatch {
        ReleaseWatch {
            releases: self.releases.take(),
            store: Arc::clone(&self.store),
            builder: self.hold.builder.clone(),
            number: self.hold.number,
        }
    }

    /// Whether the slave may take another [`INPUT_CHUNK`] of input now.
    pub fn takes_input(&self) -> bool {
        self.input_in_flight + shell_cost(INPUT_CHUNK) <= SHELL_WINDOW
    }

    /// Hands the user's input to the shell (at most [`INPUT_CHUNK`] at once).
    pub async fn input(&mut self, data: &[u8]) {
        for piece in data.chunks(INPUT_CHUNK) {
            self.input_in_flight += shell_cost(piece.len());
            let _ = self
                .link
                .to_shell(Message::ShellInput {
                    id: self.id,
                    data: piece.to_vec(),
                })
                .await;
        }
    }

    /// The user read `bytes` of output: the slave may send that much more (told in batches,
    /// [`crate::proto::SHELL_ACK_AT`]).
    pub async fn delivered(&mut self, bytes: usize) {
        if let Some(cost) = self.output_owed.add(shell_cost(bytes)) {
            let _ = self
                .link
                .to_shell(Message::ShellAck { id: self.id, cost })
                .await;
        }
    }

    pub async fn resize(&self, size: TermSize) {
        let _ = self
            .link
            .to_shell(Message::ShellResize { id: self.id, size })
            .await;
    }

    pub async fn eof(&self) {
        let _ = self.link.to_shell(Message::ShellEof { id: self.id }).await;
    }

    /// When the hold ends now, as the store says (another session may have extended or
    /// released it).
    pub async fn held_until(&mut self) -> f64 {
        match self
            .store
            .shell_hold(&self.hold.builder, self.hold.number)
            .await
        {
            Ok(Some(hold)) => self.hold.held_until = hold.held_until,
            Ok(None) => {}
            // The store is away: the hold ends when it said, not later.
            Err(err) => tracing::warn!("cannot read the hold of a shell's build: {err}"),
        }
        self.hold.held_until
    }

    /// Ends the shell (its processes are killed on the slave if it still runs) and records
    /// the end; the last one out shortens the hold to [`LOGOUT_GRACE`] from now.
    pub async fn finish(mut self, end: &ShellEnd) {
        self.finished = true;
        if !self.exited {
            let reason = match end {
                ShellEnd::Exited(_) => "the shell ended".to_string(),
                ShellEnd::Ended(reason) => reason.clone(),
            };
            let _ = self
                .link
                .to_shell(Message::ShellClose {
                    id: self.id,
                    reason,
                })
                .await;
        }
        self.link.forget_shell(self.id);
        let now = unix_now();
        match self.store.end_shell_session(self.session_id, now).await {
            Ok(0) => {
                let until = self.hold.held_until.min(now + LOGOUT_GRACE.as_secs_f64());
                if let Err(err) = self.store.set_held_until(self.hold.build_id, until).await {
                    tracing::error!("cannot shorten the hold after the last shell: {err}");
                }
            }
            Ok(_) => {}
            Err(err) => tracing::error!("cannot record the end of a shell: {err}"),
        }
        let reason = match end {
            ShellEnd::Exited(status) => format!("exited with status {status}"),
            ShellEnd::Ended(reason) => reason.clone(),
        };
        tracing::info!(user = %self.who, builder = %self.hold.builder, number = self.hold.number, %reason, "shell closed");
        self.log.publish(BuildEvent::ShellClosed {
            builder: self.hold.builder.clone(),
            number: self.hold.number,
            who: self.who.clone(),
            reason,
        });
    }
}

impl Drop for OpenedShell {
    /// A relay dropped without `finish` (the master is shutting down): the shell is closed on
    /// the slave at once, and its end recorded if the runtime still runs.
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let reason = "the master is shutting down".to_string();
        if !self.exited {
            self.link.to_shell_later(Message::ShellClose {
                id: self.id,
                reason: reason.clone(),
            });
        }
        self.link.forget_shell(self.id);
        let store = Arc::clone(&self.store);
        let session_id = self.session_id;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(err) = store.end_shell_session(session_id, unix_now()).await {
                    tracing::warn!("cannot record the end of a shell: {err}");
                }
            });
        }
        self.log.publish(BuildEvent::ShellClosed {
            builder: self.hold.builder.clone(),
            number: self.hold.number,
            who: self.who.clone(),
            reason,
        });
    }
}

/// Hears of a release of a shell's hold (`shell --release`, on any master).
pub struct ReleaseWatch {
    releases: Option<Follower>,
    store: SharedStore,
    builder: String,
    number: i64,
}

impl ReleaseWatch {
    /// Waits until the hold is released; the sentence says by whom.
    pub async fn released(&mut self) -> String {
        let Some(releases) = self.releases.as_mut() else {
            return std::future::pending().await;
        };
        loop {
            match releases.next().await {
                Followed::Event(sequenced) => {
                    if let BuildEvent::HoldReleased {
                        builder,
                        number,
                        who,
                    } = sequenced.event
                        && builder == self.builder
                        && number == self.number
                    {
                        return format!("{who} released the hold of {builder} #{number}");
                    }
                }
                // Events went by unseen: the store says whether the hold still stands.
                Followed::Missed(_) => {
                    let hold = self.store.shell_hold(&self.builder, self.number).await;
                    if let Ok(Some(hold)) = hold
                        && hold.held_until <= unix_now()
                    {
                        return format!(
                            "the hold of {} #{} was released",
                            self.builder, self.number
                        );
                    }
                }
                // The master is stopping; the relay ends with it.
                Followed::Closed => return std::future::pending().await,
            }
        }
    }
}

/// How long a shell may outlive its hold while it is being closed: the relay checks the
/// store at the hold's end and closes the shell if nothing extended it.
pub const HOLD_CHECK_SLACK: Duration = Duration::from_millis(200);
