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

use crate::master::history::{self, BuildKey};
use crate::web::views::{self, BuildPage, BuildView, BuilderView};
use crate::web::{AppState, WebError};

pub async fn builders(State(state): State<Arc<AppState>>) -> Json<Vec<BuilderView>> {
    Json(views::builder_views(&state.master))
}

pub async fn builder(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<BuilderView>, WebError> {
    views::builder_views(&state.master)
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
    if !state
        .master
        .config
        .builders
        .iter()
        .any(|b| b.name == query.builder)
    {
        return Err(WebError::NotFound(format!(
            "no builder named '{}'",
            query.builder
        )));
    }
    let limit = query.limit.unwrap_or(20).clamp(1, 1000);
    let logs_dir = state.master.logs_dir.clone();
    let builder = query.builder.clone();
    let views = state
        .master
        .history
        .run(move |connection| {
            let mut views = Vec::new();
            for build in history::recent_builds(connection, &builder, limit)? {
                let steps = history::steps_of(connection, build.id)?;
                views.push(views::build_view(&logs_dir, &build, &steps));
            }
            Ok(views)
        })
        .await?;
    Ok(Json(views))
}

/// `/api/builds/ID`: one build with its steps, results, times and log URLs.
pub async fn build(
    State(state): State<Arc<AppState>>,
    Path(id): Path<i64>,
) -> Result<Json<BuildPage>, WebError> {
    let detail = state
        .master
        .history
        .run(move |connection| history::build_detail(connection, BuildKey::Id(id)))
        .await?
        .ok_or_else(|| WebError::NotFound(format!("no build with id {id}")))?;
    Ok(Json(views::build_page(
        &state.master.logs_dir,
        &detail,
        None,
    )))
}

#[derive(Debug, Clone, Serialize)]
pub struct SlaveRow {
    pub name: String,
    pub connected: bool,
    pub since: String,
    pub facts: String,
    pub building: String,
}

pub fn slave_rows(state: &AppState) -> Vec<SlaveRow> {
    let connected = state.master.connected_slaves();
    let running: Vec<(String, i64, String)> = state
        .master
        .builder_states()
        .into_iter()
        .flat_map(|(builder, summary)| {
            summary
                .running
                .into_iter()
                .map(move |number| (builder.clone(), number, String::new()))
        })
        .collect();
    state
        .master
        .config
        .slaves
        .iter()
        .map(|slave| {
            let link = connected.get(&slave.name);
            SlaveRow {
                name: slave.name.clone(),
                connected: link.is_some(),
                since: link
                    .map(|link| {
                        let seconds = link
                            .since
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_secs_f64())
                            .unwrap_or_default();
                        views::format_time(seconds)
                    })
                    .unwrap_or_default(),
                facts: link
                    .map(|link| {
                        format!(
                            "{} {}, {} CPUs, buildbot {} from {}",
                            link.hello.os,
                            link.hello.arch,
                            link.hello.cpus,
                            link.hello.buildbot_version,
                            link.peer
                        )
                    })
                    .unwrap_or_default(),
                building: running
                    .iter()
                    .filter(|_| link.is_some())
                    .filter(|(builder, _, _)| {
                        state
                            .master
                            .config
                            .builders
                            .iter()
                            .any(|b| &b.name == builder && b.slaves.contains(&slave.name))
                    })
                    .map(|(builder, number, _)| format!("{builder} #{number}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            }
        })
        .collect()
}

pub async fn slaves(State(state): State<Arc<AppState>>) -> Json<Vec<SlaveRow>> {
    Json(slave_rows(&state))
}

#[derive(serde::Deserialize)]
pub struct EventsQuery {
    since: Option<u64>,
}

/// Server-sent events: every build event as JSON, with its sequence number as the event id.
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
    let (replay, receiver) = state.master.subscribe_since(last_seen);
    let high_water = replay
        .last()
        .map(|event| event.seq)
        .or(last_seen)
        .unwrap_or(0);
    let start = (replay.into_iter(), receiver, high_water);
    let stream = futures_util::stream::unfold(
        start,
        |(mut replay, mut receiver, mut high_water)| async move {
            let next = match replay.next() {
                Some(event) => Some(event),
                None => loop {
                    match receiver.recv().await {
                        // Events already replayed can arrive again: skip them.
                        Ok(event) if event.seq <= high_water => continue,
                        Ok(event) => break Some(event),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break None,
                    }
                },
            };
            let event = next?;
            high_water = high_water.max(event.seq);
            let data = serde_json::to_string(&event).unwrap_or_else(|_| "{}".into());
            let sse = Event::default().id(event.seq.to_string()).data(data);
            Some((Ok(sse), (replay, receiver, high_water)))
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}
