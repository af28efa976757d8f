//! One connection of the bot to the IRC server: registration, channels and who is in them,
//! commands, announcements and the paced output. Everything happens in one loop that owns the
//! connection's state; commands that wait on the control layer (a stop waits for the build's
//! end) run as tasks of the connection and hand their answers back.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use ::irc::client::prelude::{Client, Command, Config as ClientConfig, Message, Response};
use futures_util::StreamExt;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::irc::answers::{self, Answer};
use crate::irc::commands::{self, BotCommand};
use crate::irc::notify::{classes_of, transition};
use crate::irc::pacer::{Item, Pacer};
use crate::irc::{Bot, Ended, Watch};
use crate::master::config::NotifyEvent;
use crate::master::control::ForceRequest;
use crate::master::events::{Followed, Follower};
use crate::master::irc_links::{CaseMapping, fold_nick};
use crate::status::{BuildEvent, SequencedEvent, text};

/// Time to connect (TCP and TLS).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Time the server has to welcome the bot.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(30);
/// After the message of the day, how long the bot waits for its channels before it starts
/// announcing anyway (a channel may refuse it).
const JOIN_WAIT: Duration = Duration::from_secs(5);
/// Time a catch-up may take to read the events it missed (they are in memory).
const CATCH_UP_WAIT: Duration = Duration::from_secs(5);
/// Longest line body sent; servers cut lines at 512 bytes with the prefix.
const MAX_LINE_BYTES: usize = 400;
/// How long the bot's QUIT gets to reach the server when the master stops.
const QUIT_WAIT: Duration = Duration::from_secs(1);

/// An error with its causes: the irc crate's own messages ("an io error occurred") say little.
fn causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

fn is_channel(target: &str) -> bool {
    target.starts_with(['#', '&'])
}

/// At most [`MAX_LINE_BYTES`], cut on a character boundary; no line breaks and no control
/// characters (a NUL drops the connection, a `\x01` makes the line a CTCP request; the text
/// often holds what users typed: reasons, comments, nicks).
fn one_line(text: &str) -> String {
    let mut line = crate::untrusted::text::one_line(text);
    if line.len() > MAX_LINE_BYTES {
        let mut end = MAX_LINE_BYTES;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
    }
    line
}

/// What one connection knows: who it is, where it is, and who is there with it.
struct Connection {
    nick: String,
    registered: bool,
    /// How the server compares names (ISUPPORT `CASEMAPPING`); every key below is folded by it.
    casemap: CaseMapping,
    /// Channels joined, in IRC lower case.
    joined: HashSet<String>,
    /// Who is in each channel joined (IRC lower case both).
    members: HashMap<String, HashSet<String>>,
    pacer: Pacer,
    /// Following the event log, once the bot is in its channels.
    follower: Option<Follower>,
    /// When to start announcing even if not every channel let the bot in.
    join_deadline: Option<Instant>,
    /// Answers of commands still running.
    tasks: JoinSet<(String, Answer)>,
}

impl Connection {
    /// Forgets `nick` in `channel`; false when it is in none of the bot's channels any more.
    fn remove_member(&mut self, channel: &str, nick: &str) -> bool {
        if let Some(members) = self.members.get_mut(&self.casemap.fold(channel)) {
            members.remove(&self.casemap.fold(nick));
        }
        self.is_seen(nick)
    }

    fn is_seen(&self, nick: &str) -> bool {
        let nick = self.casemap.fold(nick);
        self.members.values().any(|members| members.contains(&nick))
    }
}

async fn next_followed(follower: &mut Option<Follower>) -> Followed {
    match follower {
        Some(follower) => follower.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn next_answer(tasks: &mut JoinSet<(String, Answer)>) -> Option<(String, Answer)> {
    if tasks.is_empty() {
        return std::future::pending().await;
    }
    match tasks.join_next().await {
        Some(Ok(answer)) => Some(answer),
        Some(Err(err)) => {
            tracing::error!("an IRC command task failed: {err}");
            None
        }
        None => None,
    }
}

impl Bot {
    fn client_config(&self) -> ClientConfig {
        let config = &self.config;
        ClientConfig {
            nickname: Some(config.nick.clone()),
            alt_nicks: config.alt_nicks.clone(),
            username: Some("buildbot".to_string()),
            realname: Some(format!("buildbot master {}", self.control.config().name)),
            server: Some(config.host.clone()),
            port: Some(config.port),
            password: config.password.clone(),
            use_tls: Some(config.tls),
            cert_path: config
                .ca_file
                .as_ref()
                .map(|path| path.display().to_string()),
            channels: config.channels.clone(),
            encoding: Some("UTF-8".to_string()),
            ping_time: Some(60),
            ping_timeout: Some(30),
            version: Some(format!("buildbot {}", env!("CARGO_PKG_VERSION"))),
            ..ClientConfig::default()
        }
    }

    /// One connection, from connect to its end.
    pub(super) async fn session(&mut self, shutdown: &CancellationToken) -> Ended {
        let lost = |registered: bool, why: String| Ended::Lost { registered, why };
        let connect = tokio::select! {
            _ = shutdown.cancelled() => return Ended::Shutdown,
            connect = tokio::time::timeout(CONNECT_TIMEOUT, Client::from_config(self.client_config())) => connect,
        };
        let mut client = match connect {
            Ok(Ok(client)) => client,
            Ok(Err(err)) => return lost(false, format!("cannot connect: {}", causes(&err))),
            Err(_) => return lost(false, "cannot connect: timed out".to_string()),
        };
        if let Err(err) = client.identify() {
            return lost(false, format!("cannot register: {err}"));
        }
        let mut stream = match client.stream() {
            Ok(stream) => stream,
            Err(err) => return lost(false, err.to_string()),
        };
        let sender = client.sender();
        // Until the server says otherwise (links of an earlier connection are gone already).
        self.control
            .irc_links()
            .set_casemapping(CaseMapping::default());
        tracing::info!(server = %self.config.host, port = self.config.port, tls = self.config.tls, "IRC connected");
        let mut conn = Connection {
            nick: self.config.nick.clone(),
            registered: false,
            casemap: CaseMapping::default(),
            joined: HashSet::new(),
            members: HashMap::new(),
            pacer: Pacer::new(
                self.config.burst,
                self.config.line_interval,
                Instant::now().into_std(),
            ),
            follower: None,
            join_deadline: None,
            tasks: JoinSet::new(),
        };
        let register_deadline = Instant::now() + REGISTER_TIMEOUT;
        loop {
            let due = conn
                .pacer
                .due(Instant::now().into_std())
                .map(Instant::from_std);
            let register_by = (!conn.registered).then_some(register_deadline);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    let _ = sender.send_quit("master stopping");
                    let _ = tokio::time::timeout(QUIT_WAIT, async {
                        while let Some(Ok(_)) = stream.next().await {}
                    }).await;
                    return Ended::Shutdown;
                }
                message = stream.next() => match message {
                    Some(Ok(message)) => self.on_message(&mut conn, &client, message).await,
                    Some(Err(err)) => return lost(conn.registered, causes(&err)),
                    None => return lost(conn.registered, "the server closed the connection".to_string()),
                },
                _ = sleep_until_some(due) => {
                    if let Some(item) = conn.pacer.pop(Instant::now().into_std()) {
                        let sent = match item {
                            // To a person: a NOTICE, which no client or bot answers
                            // automatically, so two bots cannot talk each other into a loop.
                            Item::Line { target, text, .. } if !is_channel(&target) => {
                                sender.send_notice(target, text)
                            }
                            Item::Line { target, text, .. } => sender.send_privmsg(target, text),
                            Item::Join { channel } => sender.send_join(channel),
                            Item::Mark { seq } => {
                                self.announced = self.announced.max(seq);
                                self.fired.retain(|(fired_at, _)| *fired_at > seq);
                                Ok(())
                            }
                        };
                        if let Err(err) = sent {
                            return lost(conn.registered, err.to_string());
                        }
                    }
                }
                answer = next_answer(&mut conn.tasks) => {
                    if let Some((target, answer)) = answer {
                        self.say_answer(&mut conn, &target, answer);
                    }
                }
                followed = next_followed(&mut conn.follower) => self.on_followed(&mut conn, followed, None).await,
                _ = sleep_until_some(conn.join_deadline) => {
                    conn.join_deadline = None;
                    self.start_announcing(&mut conn).await;
                }
                _ = sleep_until_some(register_by) => {
                    return lost(false, "the server did not welcome the bot in time".to_string());
                }
            }
        }
    }

    fn say(&self, conn: &mut Connection, target: &str, text: &str, answer: bool) {
        for line in text.lines() {
            let pushed = conn.pacer.push(Item::Line {
                target: target.to_string(),
                text: one_line(line),
                answer,
            });
            if !pushed {
                tracing::warn!(%target, "IRC output queue full: answer dropped");
                return;
            }
        }
    }

    fn say_answer(&self, conn: &mut Connection, target: &str, answer: Answer) {
        for line in answer.cut(self.config.max_lines) {
            self.say(conn, target, &line, true);
        }
    }

    async fn on_message(&mut self, conn: &mut Connection, client: &Client, message: Message) {
        let source = message.source_nickname().unwrap_or_default().to_string();
        let from_me = conn.casemap.fold(&source) == conn.casemap.fold(&conn.nick);
        match &message.command {
            Command::Response(Response::RPL_WELCOME, args) => {
                conn.registered = true;
                conn.nick = args
                    .first()
                    .cloned()
                    .unwrap_or_else(|| client.current_nickname().to_string());
                tracing::info!(nick = %conn.nick, "IRC registered");
            }
            // Sent before the message of day, so before any channel or link is keyed.
            Command::Response(Response::RPL_ISUPPORT, args) => {
                let mapping = args
                    .iter()
                    .find_map(|token| token.strip_prefix("CASEMAPPING="));
                if let Some(mapping) = mapping {
                    conn.casemap = CaseMapping::from_isupport(mapping);
                    self.control.irc_links().set_casemapping(conn.casemap);
                    tracing::info!(casemapping = ?conn.casemap, "IRC server's nick case mapping");
                }
            }
            // The irc crate joins the configured channels now.
            Command::Response(Response::RPL_ENDOFMOTD, _)
            | Command::Response(Response::ERR_NOMOTD, _)
                if conn.follower.is_none() =>
            {
                conn.join_deadline = Some(Instant::now() + JOIN_WAIT);
                self.maybe_ready(conn).await;
            }
            Command::Response(Response::RPL_NAMREPLY, args) => {
                if let (Some(channel), Some(names)) = (args.get(2), args.get(3)) {
                    let members = conn.members.entry(conn.casemap.fold(channel)).or_default();
                    for name in names.split_whitespace() {
                        members.insert(
                            conn.casemap
                                .fold(name.trim_start_matches(['@', '+', '%', '~', '&', '!'])),
                        );
                    }
                }
            }
            Command::JOIN(channel, _, _) => {
                let key = conn.casemap.fold(channel);
                if from_me {
                    tracing::info!(%channel, "IRC channel joined");
                    conn.joined.insert(key.clone());
                    conn.members.entry(key).or_default();
                    self.maybe_ready(conn).await;
                } else {
                    conn.members
                        .entry(key)
                        .or_default()
                        .insert(conn.casemap.fold(&source));
                }
            }
            Command::PART(channel, _) => {
                if from_me {
                    self.left_channel(conn, channel);
                } else if !conn.remove_member(channel, &source) {
                    self.control
                        .irc_links()
                        .unbind(&source, "left the bot's channels");
                }
            }
            Command::KICK(channel, kicked, _) => {
                if conn.casemap.fold(kicked) == conn.casemap.fold(&conn.nick) {
                    tracing::warn!(%channel, by = %source, "IRC: kicked; rejoining");
                    self.left_channel(conn, channel);
                    let _ = conn.pacer.push(Item::Join {
                        channel: channel.clone(),
                    });
                } else if !conn.remove_member(channel, kicked) {
                    self.control
                        .irc_links()
                        .unbind(kicked, "kicked from the bot's channels");
                }
            }
            Command::QUIT(_) => {
                let key = conn.casemap.fold(&source);
                for members in conn.members.values_mut() {
                    members.remove(&key);
                }
                self.control.irc_links().unbind(&source, "quit");
            }
            Command::NICK(new_nick) => {
                if from_me {
                    conn.nick = new_nick.clone();
                } else {
                    let (old, new) = (conn.casemap.fold(&source), conn.casemap.fold(new_nick));
                    for members in conn.members.values_mut() {
                        if members.remove(&old) {
                            members.insert(new.clone());
                        }
                    }
                    self.control.irc_links().unbind(&source, "changed nick");
                }
            }
            Command::PRIVMSG(target, body) if !from_me && !source.is_empty() => {
                self.on_privmsg(conn, &source, target, body).await;
            }
            _ => {}
        }
    }

    /// The bot is out of `channel`: whoever it saw only there can no longer be seen to quit.
    fn left_channel(&self, conn: &mut Connection, channel: &str) {
        let key = conn.casemap.fold(channel);
        conn.joined.remove(&key);
        let members = conn.members.remove(&key).unwrap_or_default();
        for nick in members {
            if !conn.is_seen(&nick) {
                self.control
                    .irc_links()
                    .unbind(&nick, "the bot left the channel it shared");
            }
        }
    }

    /// Starts announcing once every configured channel is joined.
    async fn maybe_ready(&mut self, conn: &mut Connection) {
        if conn.follower.is_some() || conn.join_deadline.is_none() {
            return;
        }
        let all_joined = self
            .config
            .channels
            .iter()
            .all(|channel| conn.joined.contains(&conn.casemap.fold(channel)));
        if all_joined {
            conn.join_deadline = None;
            self.start_announcing(conn).await;
        }
    }

    /// Follows the event log from the last announcement handed to a connection: what happened
    /// while the bot was away is announced first (at most `catch_up` lines per target, then one
    /// summary line), then events as they come.
    async fn start_announcing(&mut self, conn: &mut Connection) {
        if conn.follower.is_some() {
            return;
        }
        let head = self.control.last_event_seq();
        let mut follower = self.control.follow_since(self.announced);
        let mut catch_up = CatchUp::default();
        let drained = tokio::time::timeout(CATCH_UP_WAIT, async {
            while follower.last_seq() < head {
                let followed = follower.next().await;
                if followed == Followed::Closed {
                    break;
                }
                self.on_followed(conn, followed, Some(&mut catch_up)).await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("IRC catch-up did not finish in time");
        }
        for (target, skipped) in catch_up.skipped {
            let line = format!(
                "... and {skipped} more while I was away: {}/",
                self.control.web_url()
            );
            self.say(conn, &target, &line, false);
        }
        tracing::info!(
            from = self.announced,
            to = follower.last_seq(),
            "IRC announcing"
        );
        let _ = conn.pacer.push(Item::Mark {
            seq: follower.last_seq(),
        });
        conn.follower = Some(follower);
    }

    async fn on_followed(
        &mut self,
        conn: &mut Connection,
        followed: Followed,
        catch_up: Option<&mut CatchUp>,
    ) {
        match followed {
            Followed::Event(event) => {
                let seq = event.seq;
                self.announce(conn, event, catch_up).await;
                let _ = conn.pacer.push(Item::Mark { seq });
            }
            Followed::Missed(count) => {
                tracing::warn!(count, "IRC bot missed build events (it fell behind)");
            }
            Followed::Closed => {
                conn.follower = None;
            }
        }
    }

    /// Queues the lines one event makes for everyone who hears about it.
    async fn announce(
        &mut self,
        conn: &mut Connection,
        sequenced: SequencedEvent,
        catch_up: Option<&mut CatchUp>,
    ) {
        let mut lines: BTreeMap<String, String> = BTreeMap::new();
        match &sequenced.event {
            // Old news after a reconnect: only results are caught up on.
            BuildEvent::BuildStarted { .. } if catch_up.is_none() => {
                let classes = [NotifyEvent::Started].into_iter().collect();
                let line = text::describe_event(&sequenced.event);
                for target in self.subscriptions.targets_for(&classes) {
                    lines.insert(target, line.clone());
                }
            }
            BuildEvent::BuildFinished {
                builder,
                number,
                result,
                ..
            } => {
                let previous = self
                    .control
                    .result_before(builder, *number)
                    .await
                    .ok()
                    .flatten();
                let classes = classes_of(*result, previous);
                let mut line = text::describe_event(&sequenced.event);
                if !result.is_good()
                    && let Some(new) = self.control.new_failures_line(builder, *number).await
                {
                    line.push_str(&format!(": {new}"));
                }
                if let Some(word) = transition(&classes) {
                    line.push_str(&format!(" ({word})"));
                }
                line.push_str(&format!(" {}", self.control.build_url(builder, *number)));
                for target in self.subscriptions.targets_for(&classes) {
                    lines.insert(target, line.clone());
                }
                let (done, waiting): (Vec<Watch>, Vec<Watch>) = std::mem::take(&mut self.watches)
                    .into_iter()
                    .partition(|watch| watch.builder == *builder && watch.number == *number);
                self.watches = waiting;
                for watch in done {
                    lines
                        .entry(watch.target.clone())
                        .or_insert_with(|| line.clone());
                    self.fired.push((sequenced.seq, watch));
                }
            }
            BuildEvent::Landed { .. } | BuildEvent::LandRejected { .. } => {
                // What happened to a branch: told wherever build results are (the default
                // notify set too), landed or not.
                let classes = [
                    NotifyEvent::Finished,
                    NotifyEvent::Success,
                    NotifyEvent::Failure,
                ]
                .into_iter()
                .collect();
                let line = text::describe_event(&sequenced.event);
                for target in self.subscriptions.targets_for(&classes) {
                    lines.insert(target, line.clone());
                }
            }
            BuildEvent::BisectStarted { builder, .. }
            | BuildEvent::CulpritFound { builder, .. }
            | BuildEvent::BisectEnded { builder, .. } => {
                // Who broke a builder is news wherever its failures are; with its page, where
                // the bisection's progress is.
                let classes = [NotifyEvent::Finished, NotifyEvent::Failure]
                    .into_iter()
                    .collect();
                let line = format!(
                    "{} {}",
                    text::describe_event(&sequenced.event),
                    self.control.builder_url(builder)
                );
                for target in self.subscriptions.targets_for(&classes) {
                    lines.insert(target, line.clone());
                }
            }
            _ => {}
        }
        match catch_up {
            None => {
                for (target, line) in lines {
                    self.say(conn, &target, &line, false);
                }
            }
            Some(catch_up) => {
                for (target, line) in lines {
                    let said = catch_up.said.entry(fold_nick(&target)).or_default();
                    if *said < self.config.catch_up {
                        *said += 1;
                        self.say(conn, &target, &line, false);
                    } else {
                        *catch_up.skipped.entry(target).or_default() += 1;
                    }
                }
            }
        }
    }

    async fn on_privmsg(&mut self, conn: &mut Connection, source: &str, target: &str, body: &str) {
        // CTCP (ACTION, VERSION...) is not a command.
        if body.starts_with('\u{1}') {
            return;
        }
        let (reply_to, line) = if is_channel(target) {
            match commands::addressed_to(body, &conn.nick) {
                Some(line) => (target.to_string(), line.to_string()),
                None => return,
            }
        } else {
            let line = commands::addressed_to(body, &conn.nick).unwrap_or(body);
            (source.to_string(), line.to_string())
        };
        let command = commands::parse(&line);
        tracing::debug!(%source, %target, ?command, "IRC command");
        self.run_command(conn, source, &reply_to, command).await;
    }

    async fn run_command(
        &mut self,
        conn: &mut Connection,
        source: &str,
        reply_to: &str,
        command: BotCommand,
    ) {
        let control = std::sync::Arc::clone(&self.control);
        let target = reply_to.to_string();
        match command {
            BotCommand::Help { topic } => {
                for line in commands::help_lines(topic.as_deref()) {
                    self.say(conn, reply_to, &line, true);
                }
            }
            BotCommand::Unknown { word } => {
                let line = format!("unknown command '{word}'; say help for the commands");
                self.say(conn, reply_to, &line, true);
            }
            BotCommand::Usage { command, message } => {
                let usage = commands::HELP
                    .iter()
                    .find(|help| help.name == command)
                    .map_or(command, |help| help.usage);
                let line = format!("{command}: {message} (usage: {usage}; say help {command})");
                self.say(conn, reply_to, &line, true);
            }
            BotCommand::Version => {
                let line = format!(
                    "buildbot {} (master {})",
                    env!("CARGO_PKG_VERSION"),
                    self.control.config().name
                );
                self.say(conn, reply_to, &line, true);
            }
            BotCommand::Status { builder } => {
                conn.tasks.spawn(async move {
                    let answer = answers::status(&control, builder).await;
                    (target, answer)
                });
            }
            BotCommand::Last { builder } => {
                conn.tasks.spawn(async move {
                    let answer = answers::last(&control, &builder).await;
                    (target, answer)
                });
            }
            BotCommand::Queue { builder } => {
                conn.tasks.spawn(async move {
                    let answer = answers::queue(&control, &builder).await;
                    (target, answer)
                });
            }
            BotCommand::Watch { builder } => {
                let line = self.watch(reply_to, &builder);
                self.say(conn, reply_to, &line, true);
            }
            BotCommand::Notify { change } => {
                if let Some((on, events)) = change {
                    self.subscriptions.change(reply_to, on, &events);
                }
                let now: Vec<&str> = self
                    .subscriptions
                    .of(reply_to)
                    .into_iter()
                    .map(NotifyEvent::as_str)
                    .collect();
                let line = match now.is_empty() {
                    true => format!("{reply_to} hears about nothing"),
                    false => format!("{reply_to} hears about: {}", now.join(", ")),
                };
                self.say(conn, reply_to, &line, true);
            }
            BotCommand::Link { code } => {
                let line = self.link(conn, source, reply_to, &code).await;
                self.say(conn, reply_to, &line, true);
            }
            BotCommand::Force {
                builder,
                branch,
                revision,
                reason,
            } => {
                let Some(account) = self.linked(conn, source, reply_to) else {
                    return;
                };
                let force = ForceRequest {
                    branch,
                    revision,
                    reason: format!("{reason} (IRC, {source})"),
                    properties: Default::default(),
                };
                conn.tasks.spawn(async move {
                    let answer = answers::force(&control, &account, &builder, force).await;
                    (target, answer)
                });
            }
            BotCommand::Stop {
                builder,
                number,
                reason,
            } => {
                let Some(account) = self.linked(conn, source, reply_to) else {
                    return;
                };
                let reason = format!("{reason} (IRC, {source})");
                conn.tasks.spawn(async move {
                    let answer = answers::stop(&control, &account, &builder, number, &reason).await;
                    (target, answer)
                });
            }
        }
    }

    /// The unix user `source` speaks for, or a refusal said to `reply_to`. The nick must be in
    /// one of the bot's channels now: only there does the bot see it quit or change, which is
    /// what ends a link.
    fn linked(
        &self,
        conn: &mut Connection,
        source: &str,
        reply_to: &str,
    ) -> Option<crate::unix::accounts::UnixAccount> {
        if !conn.is_seen(source) {
            let line = format!(
                "{source}: I act only for linked nicks I can see; join {} first",
                self.config
                    .channels
                    .first()
                    .map_or("my channel", String::as_str)
            );
            self.say(conn, reply_to, &line, true);
            return None;
        }
        let account = self.control.irc_links().account_of(source);
        if account.is_none() {
            let line = format!(
                "{source}: your nick is not linked to a unix user; run `ssh MASTER irc-link` and /msg {} link CODE",
                conn.nick
            );
            self.say(conn, reply_to, &line, true);
        }
        account
    }

    fn watch(&mut self, reply_to: &str, builder: &str) -> String {
        if let Err(err) = self.control.builder(builder) {
            return answers::refusal(&err);
        }
        let running = self.control.running(builder);
        if running.is_empty() {
            return format!("{builder} is not building; nothing to watch");
        }
        let mut numbers = Vec::new();
        for build in running {
            let watch = Watch {
                target: reply_to.to_string(),
                builder: builder.to_string(),
                number: build.number,
            };
            if !self.watches.contains(&watch) {
                self.watches.push(watch);
            }
            numbers.push(format!("#{}", build.number));
        }
        format!(
            "watching {builder} {}: I will say here when it finishes",
            numbers.join(", ")
        )
    }

    async fn link(&self, conn: &Connection, source: &str, reply_to: &str, code: &str) -> String {
        let links = &self.control.irc_links();
        if is_channel(reply_to) {
            links.discard(code).await;
            return format!(
                "{source}: a link code said in a channel is void now; get a new one and say it to me in private: /msg {} link CODE",
                conn.nick
            );
        }
        if !conn.is_seen(source) {
            return format!(
                "join {} first: I must see your nick to know when it quits",
                self.config
                    .channels
                    .first()
                    .map_or("my channel", String::as_str)
            );
        }
        match links.redeem(code, source).await {
            Ok(account) => format!(
                "{source} now speaks for unix user {} (until this nick quits or changes, or for {} at most)",
                account.name,
                crate::durations::format_eta(links.ttl())
            ),
            Err(err) => err.to_string(),
        }
    }
}

/// What a catch-up said and held back, per target.
#[derive(Default)]
struct CatchUp {
    said: HashMap<String, usize>,
    skipped: BTreeMap<String, usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_single_and_bounded() {
        assert_eq!(one_line("a\r\nb"), "a  b");
        assert_eq!(one_line("x\0y\u{1}ACTION"), "x\u{fffd}y\u{fffd}ACTION");
        let long = "é".repeat(300);
        let cut = one_line(&long);
        assert!(cut.len() <= MAX_LINE_BYTES);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
