//! Changes and the queue: `/changes` and `/api/changes` (each change with the builds it went
//! into), `/api/requests` (queued requests in the order they will be served, with why each
//! exists). The builder page shows its own part of the queue from the same views.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Html;
use serde::Serialize;

use crate::web::views::{self, ChangeView};
use crate::web::{AppState, WebError};

/// How many changes `/changes` and `/api/changes` show.
const RECENT_CHANGES: i64 = 200;

/// A queued request, where it stands in its builder's queue.
#[derive(Debug, Clone, Serialize)]
pub struct QueuedView {
    pub id: i64,
    pub builder: String,
    /// 1 = next to build.
    pub position: usize,
    pub kind: String,
    pub why: String,
    pub who: String,
    pub branch: String,
    pub revision: String,
    pub submitted: String,
    /// "~4m10s", "now", "waiting for lock db", or empty when nothing is known; and in seconds
    /// for scripts.
    pub starts_in: String,
    pub starts_in_secs: Option<f64>,
    pub finishes_in_secs: Option<f64>,
    /// The build-level lock that keeps it from starting, if one does.
    pub waiting_for_lock: Option<String>,
}

/// The queued requests of `builders`, each builder's in the scheduler's order.
pub async fn queue_views(
    state: &AppState,
    builders: &[String],
) -> Result<Vec<QueuedView>, WebError> {
    let mut wanted: Vec<(String, Vec<i64>)> = Vec::new();
    let mut estimates = std::collections::HashMap::new();
    for builder in builders {
        let queued = state.control.queue_estimates(builder).await?;
        wanted.push((
            builder.clone(),
            queued.iter().map(|estimate| estimate.request_id).collect(),
        ));
        estimates.extend(
            queued
                .into_iter()
                .map(|estimate| (estimate.request_id, estimate)),
        );
    }
    let mut views = Vec::new();
    for (builder, ids) in wanted {
        let requests = state.control.store().requests(ids.clone()).await?;
        for (index, id) in ids.into_iter().enumerate() {
            let Some(request) = requests
                .iter()
                .find(|request| request.id == id)
                .cloned()
                .map(|stored| stored.request)
            else {
                continue;
            };
            views.push(QueuedView {
                id,
                builder: builder.clone(),
                position: index + 1,
                kind: request.kind.to_string(),
                why: request.reason.unwrap_or_default(),
                who: request.who.unwrap_or_default(),
                branch: request.branch.unwrap_or_default(),
                revision: request.baserev.unwrap_or_default(),
                submitted: views::format_time(request.submitted_at),
                starts_in: String::new(),
                starts_in_secs: None,
                finishes_in_secs: None,
                waiting_for_lock: None,
            });
        }
    }
    for view in &mut views {
        if let Some(estimate) = estimates.get(&view.id) {
            view.starts_in_secs = estimate.starts_in;
            view.finishes_in_secs = estimate.finishes_in;
            view.waiting_for_lock = estimate.waiting_for_lock.clone();
            view.starts_in = match (&estimate.waiting_for_lock, estimate.starts_in) {
                (Some(lock), _) => format!("waiting for lock {lock}"),
                (None, Some(secs)) if secs >= 1.0 => format!(
                    "~{}",
                    crate::durations::format_eta(std::time::Duration::from_secs_f64(secs))
                ),
                (None, Some(_)) => "now".to_string(),
                (None, None) => String::new(),
            };
        }
    }
    Ok(views)
}

pub async fn recent_change_views(
    state: &AppState,
    limit: i64,
) -> Result<Vec<ChangeView>, WebError> {
    Ok(state
        .control
        .store()
        .recent_changes(limit)
        .await?
        .iter()
        .map(|(change, builds)| views::change_view(change, builds))
        .collect())
}

pub async fn page(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Html<String>, WebError> {
    let mut context = state.base_context(&headers).await;
    context.insert(
        "changes",
        &recent_change_views(&state, RECENT_CHANGES).await?,
    );
    Ok(Html(state.render("changes.html", &context)?))
}

pub async fn api_changes(
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<ChangeView>>, WebError> {
    Ok(Json(recent_change_views(&state, RECENT_CHANGES).await?))
}

pub async fn api_requests(
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<QueuedView>>, WebError> {
    let builders: Vec<String> = state
        .control
        .config()
        .builders
        .iter()
        .map(|builder| builder.name.clone())
        .collect();
    Ok(Json(queue_views(&state, &builders).await?))
}
