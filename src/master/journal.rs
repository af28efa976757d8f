//! The journal of a journaled event log (several masters on one store): the writer appends
//! what this master publishes to the store, in order, where each event gets the cluster's next
//! sequence number; the tail reads every master's events back in sequence order and delivers
//! them to this master's followers (`watch`, `try --wait`, SSE, the IRC bot). A store that
//! cannot be reached delays events, never drops them: the writer keeps its batch and retries.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::master::events::EventLog;
use crate::master::store::SharedStore;
use crate::status::{BuildEvent, SequencedEvent};

/// Events written per append (a burst of output events becomes one transaction).
const BATCH: usize = 256;
/// Events read per query by the tail.
const PAGE: i64 = 500;
/// How many of the newest events a starting master replays to followers that resume.
const PRELOAD: i64 = 4096;
/// The wait between attempts while the store cannot be reached.
const RETRY: Duration = Duration::from_secs(1);

/// Appends what this master publishes until `shutdown`, then what is still queued.
pub async fn write(
    store: SharedStore,
    master: String,
    mut published: mpsc::UnboundedReceiver<(f64, BuildEvent)>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let first = tokio::select! {
            () = shutdown.cancelled() => None,
            first = published.recv() => first,
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match published.try_recv() {
                Ok(event) => batch.push(event),
                Err(_) => break,
            }
        }
        append(&store, &master, &batch, Some(&shutdown)).await;
    }
    // What was published up to the end goes out too (the last builds' ends).
    let mut rest = Vec::new();
    while let Ok(event) = published.try_recv() {
        rest.push(event);
    }
    if !rest.is_empty() {
        append(&store, &master, &rest, None).await;
    }
    Ok(())
}

/// Appends `batch`, retrying while the store fails until `shutdown` (none: one attempt, the
/// last words of a stopping master).
async fn append(
    store: &SharedStore,
    master: &str,
    batch: &[(f64, BuildEvent)],
    shutdown: Option<&CancellationToken>,
) {
    let rows: Vec<(f64, String)> = batch
        .iter()
        .filter_map(|(at, event)| match serde_json::to_string(event) {
            Ok(json) => Some((*at, json)),
            Err(err) => {
                tracing::error!("cannot encode an event for the journal: {err}");
                None
            }
        })
        .collect();
    let mut told = false;
    loop {
        match store.append_events(master, rows.clone()).await {
            Ok(_) => {
                if told {
                    tracing::info!("the event journal is written again");
                }
                return;
            }
            Err(err) => {
                let Some(shutdown) = shutdown.filter(|shutdown| !shutdown.is_cancelled()) else {
                    tracing::error!(
                        events = rows.len(),
                        "cannot write the last events to the journal: {err}"
                    );
                    return;
                };
                if !told {
                    tracing::warn!("cannot write events to the journal, retrying: {err}");
                    told = true;
                }
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = tokio::time::sleep(RETRY) => {}
                }
            }
        }
    }
}

/// Delivers every master's events to `log` in sequence order until `shutdown`: first the
/// newest ones, so followers that resume find them, then each batch the store reports.
pub async fn tail(
    store: SharedStore,
    log: Arc<EventLog>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Some(mut notices) = store.event_notices() else {
        anyhow::bail!("the store does not report new events");
    };
    let newest = store.last_event_seq().await?;
    let mut last = (newest - PRELOAD).max(0);
    let mut told = false;
    loop {
        match store.events_after(last, PAGE).await {
            Ok(rows) => {
                told = false;
                let full = rows.len() as i64 == PAGE;
                for (seq, at, body) in rows {
                    last = seq;
                    match serde_json::from_str::<BuildEvent>(&body) {
                        Ok(event) => log.deliver(SequencedEvent {
                            seq: u64::try_from(seq).unwrap_or_default(),
                            at,
                            event,
                        }),
                        // Written by a newer master of the cluster: skipped, not fatal.
                        Err(err) => tracing::warn!(seq, "an event this master cannot read: {err}"),
                    }
                }
                if full {
                    continue;
                }
            }
            Err(err) => {
                if !told {
                    tracing::warn!("cannot read the event journal, retrying: {err}");
                    told = true;
                }
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(RETRY) => {}
                }
                continue;
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            changed = notices.changed() => {
                if changed.is_err() {
                    anyhow::bail!("the store stopped reporting new events");
                }
            }
        }
    }
}
