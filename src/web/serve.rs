//! The HTTP accept loop: hyper's HTTP/1 connection driver under the limits a listener on the
//! open network needs, which `axum::serve` does not set. Owns the connections; what a request
//! means is the router's business.
//!
//! - At most `max_connections` at once. The loop waits for a free place *before* accepting,
//!   so a flood of idle connections waits in the kernel's backlog and costs this process no
//!   file descriptor (SSH accepts keep working).
//! - A header-read timeout: a client must send a request's headers within it (slowloris). hyper
//!   starts the same timer again whenever a kept-alive connection waits for its next request,
//!   so it is also the idle timeout between requests. A response in progress (an event stream,
//!   a followed log) is not cut by it.
//! - At most `max_connections_per_source` from one source (an IPv4 address, an IPv6 /64): one
//!   more is closed as soon as it is accepted, so one host cannot hold every place.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::untrusted::source::source_of;

/// The limits of one HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    pub header_read_timeout: Duration,
}

/// Connections held, by source.
#[derive(Default)]
struct Sources {
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// One source's place; given back on drop.
struct SourcePlace {
    sources: Arc<Sources>,
    source: IpAddr,
}

impl Sources {
    fn take(self: &Arc<Self>, peer: IpAddr, max: usize) -> Option<SourcePlace> {
        let source = source_of(peer);
        let mut held = crate::master::lock(&self.held);
        let count = held.entry(source).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(SourcePlace {
            sources: Arc::clone(self),
            source,
        })
    }
}

impl Drop for SourcePlace {
    fn drop(&mut self) {
        let mut held = crate::master::lock(&self.sources.held);
        if let Some(count) = held.get_mut(&self.source) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.source);
            }
        }
    }
}

/// How long open connections get to finish their response once the master stops. Event
/// streams never finish on their own, so this is a deadline, not a courtesy.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// How often "all places are taken" is logged at most: under a flood it would be every accept.
const FULL_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// Serves `app` on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let places = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let mut last_full_warning: Option<Instant> = None;
    let mut last_source_warning: Option<Instant> = None;
    let sources = Arc::new(Sources::default());
    loop {
        if places.available_permits() == 0 {
            warn_full(&mut last_full_warning, limits.max_connections);
        }
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = Arc::clone(&places).acquire_owned() => match permit {
                Ok(permit) => permit,
                // The semaphore is never closed; if it were, no connection could be served.
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // EMFILE and friends: keep serving the connections we have.
                    tracing::warn!("web: accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(source_place) = sources.take(peer.ip(), limits.max_connections_per_source) else {
            // Closed at once: the place goes back to everyone else.
            if last_source_warning.is_none_or(|at| at.elapsed() >= FULL_WARNING_INTERVAL) {
                last_source_warning = Some(Instant::now());
                tracing::warn!(
                    %peer,
                    "web: {} connections from one source already ([http] max_connections_per_source); closing new ones",
                    limits.max_connections_per_source
                );
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = app.clone().map_request(
            move |mut request: axum::extract::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(ConnectInfo::<SocketAddr>(peer));
                request
            },
        );
        let connection =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            // The place is given back when this connection ends, however it ends.
            let _place = permit;
            let _source_place = source_place;
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        // Header timeouts, resets, garbage: the peer's problem, not ours.
                        tracing::debug!(%peer, "web: connection ended: {err}");
                    }
                }
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, connection).await;
                }
            }
        });
    }
    connections.close();
    if tokio::time::timeout(SHUTDOWN_GRACE * 2, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("web: connections still open after {SHUTDOWN_GRACE:?}; stopping anyway");
    }
    Ok(())
}

fn warn_full(last: &mut Option<Instant>, max_connections: usize) {
    if last.is_some_and(|at| at.elapsed() < FULL_WARNING_INTERVAL) {
        return;
    }
    *last = Some(Instant::now());
    tracing::warn!(
        "web: all {max_connections} connection places are taken ([http] max_connections); new connections wait"
    );
}
