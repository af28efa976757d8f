//! The HTTP side of the master: for now the plain-text status at `/` and `/api/builders`.
//! Only this module touches axum (and, later, tera).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::master::state::MasterState;

/// Serves HTTP on `listener` until `shutdown` is cancelled.
pub async fn run(
    listener: TcpListener,
    state: Arc<MasterState>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = router(state);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
    .context("the web server failed")
}

pub fn router(state: Arc<MasterState>) -> Router {
    Router::new()
        .route("/", get(status_text))
        .route("/api/builders", get(api_builders))
        .route("/api/builds", get(api_builds))
        .with_state(state)
}

async fn status_text(State(state): State<Arc<MasterState>>) -> String {
    format!(
        "{}host key: {}\n",
        state.status_lines(&[]),
        state.host_key_fingerprint
    )
}

#[derive(Serialize)]
struct BuilderView {
    name: String,
    slaves: Vec<SlaveView>,
}

#[derive(Serialize)]
struct SlaveView {
    name: String,
    connected: bool,
}

async fn api_builders(State(state): State<Arc<MasterState>>) -> Json<Vec<BuilderView>> {
    let connected = state.connected_slaves();
    let builders = state
        .config
        .builders
        .iter()
        .map(|builder| BuilderView {
            name: builder.name.clone(),
            slaves: builder
                .slaves
                .iter()
                .map(|name| SlaveView {
                    name: name.clone(),
                    connected: connected.contains_key(name.as_str()),
                })
                .collect(),
        })
        .collect();
    Json(builders)
}

#[derive(serde::Deserialize)]
struct BuildsQuery {
    builder: String,
    limit: Option<i64>,
}

#[derive(Serialize)]
struct BuildView {
    id: i64,
    builder: String,
    number: i64,
    slave: String,
    started_at: f64,
    finished_at: Option<f64>,
    result: Option<String>,
    reason: Option<String>,
    steps: Vec<StepView>,
}

#[derive(Serialize)]
struct StepView {
    number: i64,
    name: String,
    started_at: f64,
    finished_at: Option<f64>,
    result: Option<String>,
    summary: Option<String>,
}

/// `/api/builds?builder=NAME&limit=N`: the builder's most recent builds with their steps.
async fn api_builds(
    State(state): State<Arc<MasterState>>,
    Query(query): Query<BuildsQuery>,
) -> Response {
    if !state
        .config
        .builders
        .iter()
        .any(|b| b.name == query.builder)
    {
        return (
            StatusCode::NOT_FOUND,
            format!("no builder named '{}'\n", query.builder),
        )
            .into_response();
    }
    let limit = query.limit.unwrap_or(20).clamp(1, 1000);
    let builder = query.builder.clone();
    let loaded = state
        .history
        .run(move |connection| {
            let builds = crate::master::history::recent_builds(connection, &builder, limit)?;
            let mut views = Vec::new();
            for build in builds {
                let steps = crate::master::history::steps_of(connection, build.id)?;
                views.push(BuildView {
                    id: build.id,
                    builder: build.builder,
                    number: build.number,
                    slave: build.slave,
                    started_at: build.started_at,
                    finished_at: build.finished_at,
                    result: build.result,
                    reason: build.reason,
                    steps: steps
                        .into_iter()
                        .map(|step| StepView {
                            number: step.number,
                            name: step.name,
                            started_at: step.started_at,
                            finished_at: step.finished_at,
                            result: step.result,
                            summary: step.summary,
                        })
                        .collect(),
                });
            }
            Ok(views)
        })
        .await;
    match loaded {
        Ok(views) => Json(views).into_response(),
        Err(err) => {
            tracing::error!("/api/builds: {err}");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
