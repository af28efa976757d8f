//! The JSON API under `/api/` (what `watch`, the IRC bot and scripts use) and the event stream
//! `/api/events` (server-sent events whose ids are sequence numbers, so a client resumes from
//! the last one it saw with `Last-Event-ID` or `?since=N`).

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::Serialize;

use crate::master::events::Followed;
use crate::master::store::BuildRef;

use crate::status::RunningBuild;
use crate::web::views::{self, BuildPage, BuildView, BuilderView};
use crate::web::{AppState, WebError};

/// One endpoint of the JSON API, as `/api/` lists it (docs/api.md says more).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Endpoint {
    pub method: &'static str,
    pub path: &'static str,
    pub description: &'static str,
}

/// Every endpoint under `/api/`, and `/metrics`.
pub const ENDPOINTS: [Endpoint; 12] = [
    Endpoint {
        method: "GET",
        path: "/api/",
        description: "this list",
    },
    Endpoint {
        method: "GET",
        path: "/api/builders",
        description: "every builder: state, queue, slaves, last result",
    },
    Endpoint {
        method: "GET",
        path: "/api/builders/{builder}",
        description: "one builder",
    },
    Endpoint {
        method: "GET",
        path: "/api/builds?builder={builder}&limit={n}",
        description: "a builder's most recent builds with their steps (limit 1..1000, default 20)",
    },
    Endpoint {
        method: "GET",
        path: "/api/builds/{id}",
        description: "one build: steps, results, times, source, properties, log URLs",
    },
    Endpoint {
        method: "GET",
        path: "/api/slaves",
        description: "every configured slave: connected, paused, what it builds",
    },
    Endpoint {
        method: "GET",
        path: "/api/requests",
        description: "queued build requests with position and ETA",
    },
    Endpoint {
        method: "GET",
        path: "/api/changes",
        description: "recent changes and the builds of each",
    },
    Endpoint {
        method: "GET",
        path: "/api/masters",
        description: "the masters of the cluster: lease, slaves, builds, whether their config differs",
    },
    Endpoint {
        method: "GET",
        path: "/api/locks",
        description: "each lock: who holds it since when, who waits",
    },
    Endpoint {
        method: "GET",
        path: "/api/events?since={seq}",
        description: "server-sent build events; the id is the sequence number (Last-Event-ID resumes)",
    },
    Endpoint {
        method: "GET",
        path: "/metrics",
        description: "Prometheus text format",
    },
];

#[derive(Serialize)]
pub struct Index {
    pub endpoints: &'static [Endpoint],
}

/// `/api/`: what there is.
pub async fn index() -> Json<Index> {
    Json(Index {
        endpoints: &ENDPOINTS,
    })
}

/// Anything else under `/api/`.
pub async fn not_found(uri: axum::http::Uri) -> WebError {
    WebError::NotFound(format!("no API endpoint {}; see /api/", uri.path()))
}

/// Under `/api/` every error is JSON, `{"error": "..."}`, with its status: the handlers' own
/// errors and axum's rejections (a bad query string, a path parameter of the wrong type, a
/// wrong method) alike, which come as plain text.
pub async fn json_errors(response: axum::response::Response) -> axum::response::Response {
    use axum::response::IntoResponse;
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let body = axum::body::to_bytes(response.into_body(), ERROR_BODY_LIMIT)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body).trim().to_string();
    let error = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
    } else {
        text
    };
    (status, Json(serde_json::json!({ "error": error }))).into_response()
}

/// Error bodies are one line; anything longer is cut rather than buffered.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

pub async fn builders(State(state): State<Arc<AppState>>) -> Json<Vec<BuilderView>> {
    Json(views::builder_views(&state.control))
}

pub async fn builder(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<BuilderView>, WebError> {
    state.control.builder(&name)?;
    views::builder_views(&state.control)
        .into_iter()
        .find(|builder| builder.name == name)
        .map(Json)
        .ok_or_else(|| WebError::NotFound(format!("no builder named '{name}'")))
}

#[derive(serde::Deserialize)]
pub struct BuildsQuery {
    builder: String,
    limit: Option<i64>,
}

/// `/api/builds?builder=NAME&limit=N`: the builder's most recent builds with their steps.
pub async fn builds(
    State(state): State<Arc<AppState>>,
    Query(query): Query<BuildsQuery>,
) -> Result<Json<Vec<BuildView>>, WebError> {
    state.control.builder(&query.builder)?;
    let limit = query.limit.unwrap_or(20).clamp(1, 1000);
    let recent = state
        .control
        .store()
        .recent_builds(vec![query.builder.clone()], limit, usize::MAX)
        .await?;
    let logs = state
        .control
        .logs()
        .index(
            recent
                .iter()
                .flat_map(|recent| recent.rows.iter().zip(&recent.steps))
                .map(|(build, steps)| (build.id, steps.as_slice()))
                .collect(),
        )
        .await?;
    let views = recent
        .into_iter()
        .flat_map(|recent| recent.rows.into_iter().zip(recent.steps))
        .map(|(build, steps)| views::build_view(&logs, &build, &steps))
        .collect();
    Ok(Json(views))
}

/// `/api/builds/ID`: one build with its steps, results, times and log URLs.
pub async fn build(
    State(state): State<Arc<AppState>>,
    Path(id): Path<i64>,
) -> Result<Json<BuildPage>, WebError> {
    let detail = state
        .control
        .store()
        .build(BuildRef::Id(id))
        .await?
        .ok_or_else(|| WebError::NotFound(format!("no build with id {id}")))?;
    let logs = state
        .control
        .logs()
        .index(vec![(detail.build.id, detail.steps.as_slice())])
        .await?;
    let mut page = views::build_page(&logs, &detail, None, None);
    if let Some((hold, sessions)) = state
        .control
        .shell_hold(&detail.build.builder, detail.build.number)
        .await?
    {
        page.shell = Some(views::shell_view(&hold, &sessions, None, false));
    }
    Ok(Json(page))
}

#[derive(Debug, Clone, Serialize)]
pub struct SlaveRow {
    pub name: String,
    pub connected: bool,
    /// Takes no new builds until unpaused.
    pub paused: bool,
    pub since: String,
    pub facts: String,
    pub building: String,
}

/// `signed_in`: a visitor without a session is not shown where slaves connect from.
pub fn slave_rows(state: &AppState, signed_in: bool) -> Vec<SlaveRow> {
    let connected = state.control.slaves();
    let running: Vec<RunningBuild> = state
        .control
        .status(&[])
        .map(|snapshot| {
            snapshot
                .builders
                .into_iter()
                .flat_map(|builder| builder.running)
                .collect()
        })
        .unwrap_or_default();
    state
        .control
        .config()
        .slaves
        .iter()
        .map(|slave| {
            let info = connected.get(&slave.name);
            SlaveRow {
                name: slave.name.clone(),
                connected: info.is_some(),
                paused: state.control.is_paused(&slave.name),
                since: info
                    .map(|info| views::format_time(info.since as f64))
                    .unwrap_or_default(),
                facts: info
                    .map(|info| {
                        let from = match signed_in {
                            true => format!(" from {}", info.peer),
                            false => String::new(),
                        };
                        format!(
                            "{} {}, {} CPUs, buildbot {}{from}",
                            info.os, info.arch, info.cpus, info.buildbot_version
                        )
                    })
                    .unwrap_or_default(),
                building: running
                    .iter()
                    .filter(|build| build.slave == slave.name)
                    .map(|build| format!("{} #{}", build.builder, build.number))
                    .collect::<Vec<_>>()
                    .join(", "),
            }
        })
        .collect()
}

pub async fn slaves(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Json<Vec<SlaveRow>> {
    let signed_in = state.session(&headers).await.is_some();
    Json(slave_rows(&state, signed_in))
}

/// The most events one SSE client is replayed when it resumes; anyone may connect, and each
/// replayed event is a copy held for that client.
pub const SSE_MAX_REPLAY: usize = 256;

#[derive(serde::Deserialize)]
pub struct EventsQuery {
    since: Option<u64>,
}

/// Server-sent events: every build event as JSON, with its sequence number as the event id.
/// A resume replays at most [`SSE_MAX_REPLAY`] events; what it cannot have comes first as one
/// `missed` event whose data is the count, so a client knows to reload instead of trusting a
/// gapless history.
pub async fn events(
    State(state): State<Arc<AppState>>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let last_seen = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok())
        .or(query.since);
    let follower = match last_seen {
        Some(seq) => state.control.follow_since_at_most(seq, SSE_MAX_REPLAY),
        None => state.control.follow(),
    };
    let stream = futures_util::stream::unfold(follower, |mut follower| async move {
        let sse = match follower.next().await {
            Followed::Event(event) => {
                let data = serde_json::to_string(&event).unwrap_or_else(|_| "{}".into());
                Event::default().id(event.seq.to_string()).data(data)
            }
            Followed::Missed(count) => Event::default().event("missed").data(count.to_string()),
            Followed::Closed => return None,
        };
        Some((Ok(sse), follower))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// `/api/locks`: each lock with who holds it (since when) and who waits for it.
pub async fn locks(
    State(state): State<Arc<AppState>>,
) -> Json<Vec<crate::master::control::LockStatus>> {
    Json(state.control.locks())
}

/// A master of the cluster, as `/masters` and `/api/masters` show it.
#[derive(Debug, Clone, Serialize)]
pub struct MasterRow {
    pub name: String,
    /// "up", "stopped" or "lost".
    pub state: String,
    /// Whether its lease holds now.
    pub alive: bool,
    /// The number of its run (every start takes the next).
    pub epoch: i64,
    pub started_at: f64,
    pub renewed_at: f64,
    pub lease_expires_at: f64,
    pub ssh: String,
    pub http: String,
    pub version: String,
    pub slaves: Vec<String>,
    pub builds: Vec<String>,
    pub config_digest: String,
    /// Its config differs from this master's (what masters of one cluster share).
    pub config_differs: bool,
    /// It leads the cluster's jobs (schedulers, pollers, the IRC bot).
    pub leads: bool,
    /// The master answering.
    pub this: bool,
}

pub async fn master_rows(state: &AppState) -> Result<Vec<MasterRow>, WebError> {
    let (rows, digest) = state.control.masters().await?;
    let this = state.control.config().name.clone();
    Ok(rows
        .into_iter()
        .map(|row| MasterRow {
            config_differs: row.alive && row.info.config_digest != digest,
            leads: row.alive && row.info.leads,
            this: row.name == this,
            name: row.name,
            state: if row.state == "up" && !row.alive {
                "lost".to_string()
            } else {
                row.state
            },
            alive: row.alive,
            epoch: row.epoch,
            started_at: row.started_at,
            renewed_at: row.renewed_at,
            lease_expires_at: row.expires_at,
            ssh: row.info.ssh,
            http: row.info.http,
            version: row.info.version,
            slaves: row.info.slaves,
            builds: row.info.builds,
            config_digest: row.info.config_digest,
        })
        .collect())
}

/// `/api/masters`.
pub async fn masters(State(state): State<Arc<AppState>>) -> Result<Json<Vec<MasterRow>>, WebError> {
    Ok(Json(master_rows(&state).await?))
}

/// One bisection in `/api/bisects` (issue 28).
#[derive(Serialize)]
pub struct BisectView {
    pub id: i64,
    pub builder: String,
    pub branch: String,
    pub good: String,
    pub bad: String,
    /// `running`, `found`, `inconclusive` or `stopped`.
    pub state: String,
    /// The first bad commit, once found.
    pub culprit: Option<String>,
    /// Builds the bisection asked for so far.
    pub builds: i64,
    /// Progress or result in one line ("first bad: abc1234 by alice 'Refactor parser' — 4 builds").
    pub summary: String,
    pub started_at: f64,
}

/// `GET /api/bisects`: the newest bisections, newest first.
pub async fn bisects(
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<BisectView>>, WebError> {
    let rows = state.control.store().bisects(100).await?;
    Ok(Json(
        rows.into_iter()
            .map(|row| BisectView {
                id: row.id,
                builder: row.builder,
                branch: row.branch,
                good: row.good,
                bad: row.bad,
                state: row.state,
                culprit: row.culprit,
                builds: row.builds,
                summary: row.summary,
                started_at: row.started_at,
            })
            .collect(),
    ))
}
