//! The HTTP side of the master: for now the plain-text status at `/` and `/api/builders`.
//! Only this module touches axum (and, later, tera).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::State;
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
                    connected: connected.contains_key(name),
                })
                .collect(),
        })
        .collect();
    Json(builders)
}
