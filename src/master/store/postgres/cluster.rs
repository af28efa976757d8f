//! The masters of the cluster in PostgreSQL: runs and their leases, fencing, cluster-wide
//! jobs, the shared event log, and the notices that tell every master when another one
//! appended events or changed what waits (LISTEN/NOTIFY on a connection of its own).
//!
//! Leases are kept by the database's clock (`clock_timestamp()`), not the masters': masters
//! whose clocks disagree still agree on whose lease ran out.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_postgres::{AsyncMessage, NoTls, Row};
use tokio_util::sync::CancellationToken;

use super::PgStore;
use crate::master::results::CUT_SHORT;
use crate::master::store::StoreError;
use crate::master::store::model::{LostMaster, MasterInfo, MasterLease, MasterLockUse, MasterRow};
use crate::status::RequestState;

/// Now, in unix seconds, by the database's clock.
pub(super) const DB_NOW: &str = "EXTRACT(EPOCH FROM clock_timestamp())::DOUBLE PRECISION";

/// The NOTIFY channels: events appended; requests recorded, claimed, cancelled or re-queued.
const EVENTS_CHANNEL: &str = "buildbot_events";
const REQUESTS_CHANNEL: &str = "buildbot_requests";

/// How often the notices fire anyway, in case a notification was lost with its connection.
const NOTICE_TICK: Duration = Duration::from_secs(15);

/// Serialises registrations of one name (two masters started under one name at once).
const LOCK_MASTER: i32 = 0x6262_0005;
/// Serialises appends to the event log, so numbers follow commit order without gaps.
const LOCK_EVENTS: i32 = 0x6262_0006;
/// Master locks: takers of one lock take turns deciding whether it is free.
const LOCK_MASTER_LOCK: i32 = 0x6262_0007;

/// The run `owner` may still write: the cluster has not declared it lost. The row stays
/// share-locked to the end of the caller's transaction, so a reaper declaring it lost waits
/// for the write and then sees it.
pub(super) async fn fence(
    transaction: &tokio_postgres::Transaction<'_>,
    owner: &MasterLease,
) -> Result<(), StoreError> {
    let live = transaction
        .query_opt(
            "SELECT 1 FROM masters WHERE name = $1 AND epoch = $2 AND state = 'up' FOR SHARE",
            &[&owner.name, &owner.epoch],
        )
        .await?;
    match live {
        Some(_) => Ok(()),
        None => Err(fenced(owner)),
    }
}

fn fenced(owner: &MasterLease) -> StoreError {
    StoreError::Fenced {
        name: owner.name.clone(),
        epoch: owner.epoch,
    }
}

/// `owner` may write about build `build_id`: its own, still running, and not declared lost.
pub(super) async fn fence_build(
    transaction: &tokio_postgres::Transaction<'_>,
    owner: &MasterLease,
    build_id: i64,
) -> Result<(), StoreError> {
    fence(transaction, owner).await?;
    let owned = transaction
        .query_opt(
            "SELECT 1 FROM builds WHERE id = $1 AND master = $2 AND master_epoch = $3
               AND finished_at IS NULL",
            &[&build_id, &owner.name, &owner.epoch],
        )
        .await?;
    match owned {
        Some(_) => Ok(()),
        None => Err(fenced(owner)),
    }
}

/// Tells every master (at commit) that what waits may have changed.
pub(super) async fn notify_requests(
    transaction: &tokio_postgres::Transaction<'_>,
) -> Result<(), StoreError> {
    transaction
        .execute("SELECT pg_notify($1, '')", &[&REQUESTS_CHANNEL])
        .await?;
    Ok(())
}

/// Ends the unfinished builds that `condition` selects (over `builds`, parameters from $1),
/// with their unfinished steps, as cut short for `why`; their requests wait again. Returns
/// (builder, number, request id) of each.
pub(super) async fn end_builds_where(
    transaction: &tokio_postgres::Transaction<'_>,
    condition: &str,
    values: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    why: &str,
) -> Result<Vec<(String, i64, i64)>, StoreError> {
    let rows = transaction
        .query(
            &format!(
                "SELECT id, builder, number, request_id FROM builds
                 WHERE finished_at IS NULL AND {condition} ORDER BY id FOR UPDATE"
            ),
            values,
        )
        .await?;
    let now = crate::master::store::now();
    let (cut_short, why) = (CUT_SHORT.as_str(), super::verbs::text(why));
    let mut ended = Vec::new();
    for row in &rows {
        let (id, builder, number, request_id): (i64, String, i64, i64) = (
            row.try_get(0)?,
            row.try_get(1)?,
            row.try_get(2)?,
            row.try_get(3)?,
        );
        transaction
            .execute(
                "UPDATE steps SET finished_at = $2, result = $3, summary = $4
                 WHERE build_id = $1 AND finished_at IS NULL",
                &[&id, &now, &cut_short, &why],
            )
            .await?;
        transaction
            .execute(
                "UPDATE builds SET finished_at = $2, result = $3, reason = $4 WHERE id = $1",
                &[&id, &now, &cut_short, &why],
            )
            .await?;
        transaction
            .execute(
                "UPDATE requests SET state = $2, claimed_by = NULL WHERE id = $1 AND state = $3",
                &[
                    &request_id,
                    &RequestState::Pending.as_str(),
                    &RequestState::Building.as_str(),
                ],
            )
            .await?;
        ended.push((builder, number, request_id));
    }
    if !ended.is_empty() {
        notify_requests(transaction).await?;
    }
    Ok(ended)
}

fn info_json(info: &MasterInfo) -> String {
    serde_json::to_string(info).unwrap_or_else(|_| "{}".into())
}

/// A unix time for people, in UTC.
fn when(seconds: f64) -> String {
    chrono::DateTime::from_timestamp(seconds as i64, 0)
        .map(|time| time.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| format!("{seconds}"))
}

impl PgStore {
    pub(super) async fn register(
        &self,
        name: &str,
        info: &MasterInfo,
        lease: Duration,
    ) -> Result<MasterLease, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        super::verbs::lock(&transaction, LOCK_MASTER, name).await?;
        let known = transaction
            .query_opt(
                &format!(
                    "SELECT epoch, state = 'up' AND expires_at > {DB_NOW}, expires_at
                     FROM masters WHERE name = $1"
                ),
                &[&name],
            )
            .await?;
        let epoch = match known {
            Some(row) => {
                let (epoch, live, expires_at): (i64, bool, f64) =
                    (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
                if live {
                    return Err(StoreError::NameTaken {
                        name: name.to_string(),
                        until: when(expires_at),
                    });
                }
                epoch + 1
            }
            None => 1,
        };
        // A run of this name that was never reaped ends here; its builds are recovered by
        // this run's `recover_interrupted_builds` (they are its master's earlier runs').
        transaction
            .execute(
                &format!(
                    "INSERT INTO masters (name, epoch, started_at, renewed_at, expires_at, state, info)
                     VALUES ($1, $2, {DB_NOW}, {DB_NOW}, {DB_NOW} + $3, 'up', $4)
                     ON CONFLICT (name) DO UPDATE SET epoch = EXCLUDED.epoch,
                       started_at = EXCLUDED.started_at, renewed_at = EXCLUDED.renewed_at,
                       expires_at = EXCLUDED.expires_at, state = 'up', info = EXCLUDED.info"
                ),
                &[&name, &epoch, &lease.as_secs_f64(), &info_json(info)],
            )
            .await?;
        transaction.commit().await?;
        Ok(MasterLease {
            name: name.to_string(),
            epoch,
        })
    }

    pub(super) async fn renew(
        &self,
        master: &MasterLease,
        info: &MasterInfo,
        lease: Duration,
    ) -> Result<(), StoreError> {
        let renewed = self
            .client()
            .await?
            .execute(
                &format!(
                    "UPDATE masters SET renewed_at = {DB_NOW}, expires_at = {DB_NOW} + $3,
                       info = $4
                     WHERE name = $1 AND epoch = $2 AND state = 'up'"
                ),
                &[
                    &master.name,
                    &master.epoch,
                    &lease.as_secs_f64(),
                    &info_json(info),
                ],
            )
            .await?;
        if renewed == 0 {
            return Err(fenced(master));
        }
        Ok(())
    }

    pub(super) async fn retire(&self, master: &MasterLease) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        transaction
            .execute(
                &format!(
                    "UPDATE masters SET expires_at = {DB_NOW}, state = 'stopped'
                     WHERE name = $1 AND epoch = $2"
                ),
                &[&master.name, &master.epoch],
            )
            .await?;
        transaction
            .execute(
                "DELETE FROM singletons WHERE master = $1 AND epoch = $2",
                &[&master.name, &master.epoch],
            )
            .await?;
        transaction
            .execute(
                "DELETE FROM master_locks WHERE master = $1 AND epoch = $2",
                &[&master.name, &master.epoch],
            )
            .await?;
        transaction.commit().await?;
        Ok(())
    }

    pub(super) async fn take_locks(
        &self,
        owner: &MasterLease,
        holder: &str,
        uses: &[MasterLockUse],
    ) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        fence(&transaction, owner).await?;
        // In one order, so two takers of overlapping sets cannot wait on each other.
        let mut names: Vec<&str> = uses.iter().map(|wanted| wanted.lock.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            super::verbs::lock(&transaction, LOCK_MASTER_LOCK, name).await?;
        }
        for wanted in uses {
            let row = transaction
                .query_one(
                    "SELECT COUNT(*), COALESCE(MAX(exclusive), 0) FROM master_locks
                     WHERE lock = $1 AND holder <> $2",
                    &[&wanted.lock, &holder],
                )
                .await?;
            let (held, exclusive): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
            let free = if wanted.exclusive {
                held == 0
            } else {
                exclusive == 0 && held < wanted.max_count
            };
            if !free {
                return Ok(false);
            }
        }
        for wanted in uses {
            transaction
                .execute(
                    "INSERT INTO master_locks (lock, holder, exclusive, master, epoch, since)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (lock, holder) DO UPDATE SET exclusive = EXCLUDED.exclusive,
                       master = EXCLUDED.master, epoch = EXCLUDED.epoch, since = EXCLUDED.since",
                    &[
                        &wanted.lock,
                        &holder,
                        &i64::from(wanted.exclusive),
                        &owner.name,
                        &owner.epoch,
                        &crate::master::store::now(),
                    ],
                )
                .await?;
        }
        transaction.commit().await?;
        Ok(true)
    }

    pub(super) async fn release_locks(
        &self,
        owner: &MasterLease,
        holder: &str,
    ) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "DELETE FROM master_locks WHERE holder = $1 AND master = $2 AND epoch = $3",
                &[&holder, &owner.name, &owner.epoch],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn hold(
        &self,
        job: &str,
        owner: &MasterLease,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        if fence(&transaction, owner).await.is_err() {
            return Ok(false);
        }
        // The row lock ON CONFLICT takes makes two masters taking a free job at once take
        // turns: the second sees the first's hold and leaves it.
        transaction
            .execute(
                &format!(
                    "INSERT INTO singletons (job, master, epoch, expires_at)
                     VALUES ($1, $2, $3, {DB_NOW} + $4)
                     ON CONFLICT (job) DO UPDATE SET master = EXCLUDED.master,
                       epoch = EXCLUDED.epoch, expires_at = EXCLUDED.expires_at
                     WHERE singletons.expires_at < {DB_NOW}
                        OR (singletons.master = EXCLUDED.master
                            AND singletons.epoch <= EXCLUDED.epoch)"
                ),
                &[&job, &owner.name, &owner.epoch, &lease.as_secs_f64()],
            )
            .await?;
        let held = transaction
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM singletons WHERE job = $1 AND master = $2
                   AND epoch = $3)",
                &[&job, &owner.name, &owner.epoch],
            )
            .await?
            .try_get(0)?;
        transaction.commit().await?;
        Ok(held)
    }

    pub(super) async fn all_masters(&self) -> Result<Vec<MasterRow>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT name, epoch, started_at, renewed_at, expires_at, state, info,
                       state = 'up' AND expires_at > {DB_NOW}
                     FROM masters ORDER BY name"
                ),
                &[],
            )
            .await?;
        rows.iter().map(master_from_row).collect()
    }

    pub(super) async fn reap(&self, by: &MasterLease) -> Result<Vec<LostMaster>, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        // Locked: a second reaper at once waits, then finds them lost already.
        let lost = transaction
            .query(
                &format!(
                    "SELECT name, epoch FROM masters
                     WHERE state = 'up' AND expires_at < {DB_NOW} AND name <> $1
                     ORDER BY name FOR UPDATE"
                ),
                &[&by.name],
            )
            .await?;
        let mut reaped = Vec::new();
        for row in &lost {
            let (name, epoch): (String, i64) = (row.try_get(0)?, row.try_get(1)?);
            transaction
                .execute(
                    "UPDATE masters SET state = 'lost' WHERE name = $1 AND epoch = $2",
                    &[&name, &epoch],
                )
                .await?;
            transaction
                .execute("DELETE FROM master_locks WHERE master = $1", &[&name])
                .await?;
            let retried = end_builds_where(
                &transaction,
                "master = $1",
                &[&name],
                &format!("master {name} lost (its lease ran out); retried"),
            )
            .await?;
            reaped.push(LostMaster {
                name,
                epoch,
                retried,
            });
        }
        transaction.commit().await?;
        Ok(reaped)
    }

    pub(super) async fn cluster_identity(&self) -> Result<String, StoreError> {
        Ok(self
            .client()
            .await?
            .query_one("SELECT value FROM cluster WHERE key = 'id'", &[])
            .await?
            .try_get(0)?)
    }

    pub(super) async fn append(
        &self,
        master: &str,
        events: Vec<(f64, String)>,
    ) -> Result<Vec<i64>, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        // Events are marks too (see `verbs::relaxed`): what a server crash loses of the last
        // ones, the followers lose as they would a master's ring.
        super::verbs::relaxed(&transaction).await?;
        // Numbers in commit order without gaps: one appender at a time, to its commit.
        transaction
            .execute("SELECT pg_advisory_xact_lock($1, 0)", &[&LOCK_EVENTS])
            .await?;
        let first: i64 = transaction
            .query_one("SELECT COALESCE(MAX(seq), 0) + 1 FROM events", &[])
            .await?
            .try_get(0)?;
        let master = super::verbs::text(master);
        let mut numbers = Vec::new();
        for (seq, (at, body)) in (first..).zip(&events) {
            transaction
                .execute(
                    "INSERT INTO events (seq, at, master, body) VALUES ($1, $2, $3, $4)",
                    &[&seq, at, &master, &super::verbs::text(body)],
                )
                .await?;
            numbers.push(seq);
        }
        transaction
            .execute("SELECT pg_notify($1, '')", &[&EVENTS_CHANNEL])
            .await?;
        transaction.commit().await?;
        Ok(numbers)
    }

    pub(super) async fn read_events(
        &self,
        seq: i64,
        limit: i64,
    ) -> Result<Vec<(i64, f64, String)>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT seq, at, body FROM events WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&seq, &super::verbs::no_limit_if_negative(limit)],
            )
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
            .collect()
    }

    pub(super) async fn newest_event(&self) -> Result<i64, StoreError> {
        Ok(self
            .client()
            .await?
            .query_one("SELECT COALESCE(MAX(seq), 0) FROM events", &[])
            .await?
            .try_get(0)?)
    }
}

fn master_from_row(row: &Row) -> Result<MasterRow, StoreError> {
    let info: &str = row.try_get(6)?;
    Ok(MasterRow {
        name: row.try_get(0)?,
        epoch: row.try_get(1)?,
        started_at: row.try_get(2)?,
        renewed_at: row.try_get(3)?,
        expires_at: row.try_get(4)?,
        state: row.try_get(5)?,
        info: serde_json::from_str(info).unwrap_or_default(),
        alive: row.try_get(7)?,
    })
}

/// The two notice channels; the listener task bumps them.
pub(super) struct Channels {
    pub(super) events: watch::Sender<u64>,
    pub(super) requests: watch::Sender<u64>,
}

impl Channels {
    fn bump(&self, channel: &str) {
        let sender = match channel {
            EVENTS_CHANNEL => &self.events,
            REQUESTS_CHANNEL => &self.requests,
            _ => return,
        };
        sender.send_modify(|count| *count = count.wrapping_add(1));
    }

    fn bump_all(&self) {
        self.bump(EVENTS_CHANNEL);
        self.bump(REQUESTS_CHANNEL);
    }
}

/// The listener of one store; dropping the last clone of the store stops it.
pub(super) struct Notices {
    pub(super) channels: Arc<Channels>,
    stop: CancellationToken,
}

impl Drop for Notices {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Notices {
    /// Starts listening on a connection of its own to `config`'s database.
    pub(super) fn start(config: tokio_postgres::Config) -> Notices {
        let channels = Arc::new(Channels {
            events: watch::channel(0).0,
            requests: watch::channel(0).0,
        });
        let stop = CancellationToken::new();
        tokio::spawn(listen(config, Arc::clone(&channels), stop.clone()));
        Notices { channels, stop }
    }
}

/// Listens until `stop`, connecting again (1 s, doubling up to 30 s) when the connection
/// ends; after each (re)connection, and every `NOTICE_TICK`, both channels fire anyway, since
/// a notification sent while nobody listened is gone.
async fn listen(config: tokio_postgres::Config, channels: Arc<Channels>, stop: CancellationToken) {
    let mut pause = Duration::from_secs(1);
    loop {
        let ended = tokio::select! {
            () = stop.cancelled() => return,
            ended = listen_once(&config, &channels) => ended,
        };
        match ended {
            Ok(()) => tracing::warn!("the PostgreSQL notice connection closed; reconnecting"),
            Err(err) => tracing::warn!(
                "the PostgreSQL notice connection failed: {}; reconnecting",
                super::one_line(&err)
            ),
        }
        channels.bump_all();
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(30));
    }
}

async fn listen_once(
    config: &tokio_postgres::Config,
    channels: &Channels,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let mut messages =
        futures_util::stream::poll_fn(move |context| connection.poll_message(context));
    let statement = format!("LISTEN {EVENTS_CHANNEL}; LISTEN {REQUESTS_CHANNEL}");
    let listen = client.batch_execute(&statement);
    tokio::pin!(listen);
    let mut listening = false;
    let mut tick = tokio::time::interval(NOTICE_TICK);
    loop {
        tokio::select! {
            result = &mut listen, if !listening => {
                result?;
                listening = true;
                channels.bump_all();
            }
            message = messages.next() => match message {
                Some(Ok(AsyncMessage::Notification(notification))) => {
                    channels.bump(notification.channel());
                }
                Some(Ok(_)) => {}
                Some(Err(err)) => return Err(err),
                None => return Ok(()),
            },
            _ = tick.tick(), if listening => channels.bump_all(),
        }
    }
}
