//! The merge queues: `/land` (each branch's queue with positions and estimates, and its last
//! landed or rejected series), its Cancel button (`POST /land/ID/cancel`, the same action as
//! `buildbot land --cancel`) and `/api/land` (the same as JSON).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Form, Path, State};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Redirect, Response};

use crate::master::control::LandQueueView;
use crate::web::{AppState, WebError};

pub async fn page(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Html<String>, WebError> {
    let mut context = state.base_context(&headers).await;
    let queues = state.control.land_queues().await?;
    let rows: Vec<serde_json::Value> = queues
        .iter()
        .map(|queue| {
            serde_json::json!({
                "branch": queue.branch,
                "builders": queue.builders.join(", "),
                "window": queue.window,
                "queue": queue.queue.iter().map(row).collect::<Vec<_>>(),
                "recent": queue.recent.iter().map(row).collect::<Vec<_>>(),
            })
        })
        .collect();
    context.insert("queues", &rows);
    let session = state.session(&headers).await;
    context.insert("logged_in", &session.is_some());
    context.insert("csrf", &session.map(|s| s.csrf).unwrap_or_default());
    Ok(Html(state.render("land.html", &context)?))
}

fn row(view: &crate::master::control::LandEntryView) -> serde_json::Value {
    let entry = &view.entry;
    let short = |sha: &Option<String>| {
        sha.as_deref()
            .map(|sha| sha.get(..12).unwrap_or(sha).to_string())
            .unwrap_or_default()
    };
    serde_json::json!({
        "id": entry.id,
        "who": entry.who,
        "commits": entry.commits,
        "summary": entry.summary,
        "state": entry.state,
        "position": view.position,
        "estimate": view.estimate_secs.map(|secs| crate::durations::format_eta(std::time::Duration::from_secs_f64(secs))).unwrap_or_default(),
        "job_name": entry.progress.job_name.clone().unwrap_or_default(),
        "tested_base": short(&entry.progress.tested_base),
        "landed_sha": short(&entry.progress.landed_sha),
        "reason": entry.progress.reason.clone().unwrap_or_default(),
        "attempts": entry.progress.attempts,
        "submitted": crate::web::views::format_time(entry.submitted_at),
    })
}

pub async fn api(State(state): State<Arc<AppState>>) -> Result<Json<Vec<LandQueueView>>, WebError> {
    Ok(Json(state.control.land_queues().await?))
}

#[derive(Debug, serde::Deserialize)]
pub struct CancelForm {
    csrf: Option<String>,
}

/// Cancel, on an entry of the `/land` page: its owner's (or an operator's) session.
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    Path(id): Path<i64>,
    headers: HeaderMap,
    Form(form): Form<CancelForm>,
) -> Result<Response, WebError> {
    let session = state.form_session(&headers, form.csrf.as_deref()).await?;
    let entry = state
        .control
        .land_entry(id)
        .await?
        .ok_or_else(|| WebError::NotFound(format!("no land entry #{id}")))?;
    state
        .control
        .land_cancel(&session.account, &entry.branch, Some(id))
        .await?;
    Ok(Redirect::to("/land").into_response())
}
