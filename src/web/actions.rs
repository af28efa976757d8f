//! The control forms: Stop Build, Force Build, Rebuild, and Cancel on a queued request. Each
//! needs a session from `ssh master web-login` and its CSRF token; what the action means (and
//! who may do it) is the control layer's, as for the same commands over SSH.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};

use crate::master::control::ForceRequest;
use crate::master::sessions::Session;
use crate::web::{AppState, WebError, auth};

/// The largest form body taken (a Force Build form with its properties is a few KiB).
pub const MAX_FORM_BYTES: usize = 64 * 1024;

/// Before any POST's body is read: a request without a valid session is refused at once (its
/// body never read, so hyper closes the connection and the place is free again), and a body is
/// read whole within `body_timeout` and [`MAX_FORM_BYTES`], so a slow or huge body cannot hold
/// a connection place. Every POST route is a control form; GET handlers never read a body.
pub async fn guard_body(
    State((state, body_timeout)): State<(Arc<AppState>, std::time::Duration)>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if request.method() != axum::http::Method::POST {
        return next.run(request).await;
    }
    if state.session(request.headers()).await.is_none() {
        return WebError::Forbidden(LOG_IN_FIRST.into()).into_response();
    }
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_FORM_BYTES as u64) {
        return (
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            format!("a form is at most {} KiB\n", MAX_FORM_BYTES / 1024),
        )
            .into_response();
    }
    let (parts, body) = request.into_parts();
    let read = tokio::time::timeout(body_timeout, axum::body::to_bytes(body, MAX_FORM_BYTES));
    let bytes = match read.await {
        Ok(Ok(bytes)) => bytes,
        // Too long (a chunked body past the limit), or cut off.
        Ok(Err(err)) => {
            return WebError::BadRequest(format!(
                "cannot read the form (at most {} KiB): {err}",
                MAX_FORM_BYTES / 1024
            ))
            .into_response();
        }
        Err(_) => {
            return (
                axum::http::StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the form did not arrive within {} ([http] header_read_timeout)\n",
                    crate::durations::format_eta(body_timeout)
                ),
            )
                .into_response();
        }
    };
    next.run(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(bytes),
    ))
    .await
}

const LOG_IN_FIRST: &str = "log in first: run `ssh … web-login` and open the URL it prints";

impl AppState {
    /// The session of a form post whose CSRF token matches it.
    pub(super) async fn form_session(
        &self,
        headers: &HeaderMap,
        csrf: Option<&str>,
    ) -> Result<Session, WebError> {
        let Some(session) = self.session(headers).await else {
            return Err(WebError::Forbidden(LOG_IN_FIRST.into()));
        };
        if !csrf.is_some_and(|token| auth::same_secret(token, &session.csrf)) {
            return Err(WebError::Forbidden("this form is stale or was not sent by this site (CSRF check failed); reload the page".into()));
        }
        Ok(session)
    }
}

fn or_default(text: Option<String>, default: &str) -> String {
    match text {
        Some(text) if !text.trim().is_empty() => text,
        _ => default.to_string(),
    }
}

fn some_text(text: Option<String>) -> Option<String> {
    text.map(|text| text.trim().to_string())
        .filter(|text| !text.is_empty())
}

#[derive(serde::Deserialize)]
pub struct StopForm {
    csrf: Option<String>,
    reason: Option<String>,
}

/// Stop Build: the same stop as `ssh master stop`.
pub async fn stop(
    State(state): State<Arc<AppState>>,
    Path((builder, number)): Path<(String, i64)>,
    headers: HeaderMap,
    Form(form): Form<StopForm>,
) -> Result<Response, WebError> {
    let session = state.form_session(&headers, form.csrf.as_deref()).await?;
    let reason = or_default(form.reason, "stopped from the web page");
    // Returns once the build has ended (or the wait ran out), so the page the browser lands on
    // shows the result.
    state
        .control
        .stop_build(&session.account, &builder, Some(number), &reason)
        .await?;
    Ok(Redirect::to(&format!("/builders/{builder}/builds/{number}")).into_response())
}

#[derive(serde::Deserialize)]
pub struct ForceForm {
    csrf: Option<String>,
    branch: Option<String>,
    revision: Option<String>,
    reason: Option<String>,
    /// `NAME=VALUE`, one per line.
    properties: Option<String>,
}

/// Force Build, from the builder page.
pub async fn force(
    State(state): State<Arc<AppState>>,
    Path(builder): Path<String>,
    headers: HeaderMap,
    Form(form): Form<ForceForm>,
) -> Result<Response, WebError> {
    let session = state.form_session(&headers, form.csrf.as_deref()).await?;
    let mut properties = BTreeMap::new();
    for line in form.properties.unwrap_or_default().lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            return Err(WebError::BadRequest(format!(
                "property line '{line}' is not NAME=VALUE"
            )));
        };
        properties.insert(name.trim().to_string(), value.to_string());
    }
    let force = ForceRequest {
        branch: some_text(form.branch),
        revision: some_text(form.revision),
        reason: or_default(form.reason, "forced from the web page"),
        properties,
    };
    state
        .control
        .force(&session.account, &builder, force)
        .await?;
    Ok(Redirect::to(&format!("/builders/{builder}")).into_response())
}

#[derive(serde::Deserialize)]
pub struct RebuildForm {
    csrf: Option<String>,
    reason: Option<String>,
}

/// Rebuild, from a finished build's page: the same source and patch again.
pub async fn rebuild(
    State(state): State<Arc<AppState>>,
    Path((builder, number)): Path<(String, i64)>,
    headers: HeaderMap,
    Form(form): Form<RebuildForm>,
) -> Result<Response, WebError> {
    let session = state.form_session(&headers, form.csrf.as_deref()).await?;
    let reason = or_default(form.reason, "rebuilt from the web page");
    state
        .control
        .rebuild(&session.account, &builder, number, &reason)
        .await?;
    Ok(Redirect::to(&format!("/builders/{builder}")).into_response())
}

#[derive(serde::Deserialize)]
pub struct CancelForm {
    csrf: Option<String>,
}

/// Cancel, on a queued request of the builder page.
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    Path((builder, request_id)): Path<(String, i64)>,
    headers: HeaderMap,
    Form(form): Form<CancelForm>,
) -> Result<Response, WebError> {
    let session = state.form_session(&headers, form.csrf.as_deref()).await?;
    state
        .control
        .cancel_request(&session.account, &builder, request_id)
        .await?;
    Ok(Redirect::to(&format!("/builders/{builder}")).into_response())
}

/// Pause or Unpause, on the slaves page: the same as `ssh master pause-slave NAME`.
pub async fn pause(
    State(state): State<Arc<AppState>>,
    Path((slave, what)): Path<(String, String)>,
    headers: HeaderMap,
    Form(form): Form<CancelForm>,
) -> Result<Response, WebError> {
    let session = state.form_session(&headers, form.csrf.as_deref()).await?;
    let paused = match what.as_str() {
        "pause" => true,
        "unpause" => false,
        _ => {
            return Err(WebError::NotFound(format!(
                "no action '{what}' for a slave"
            )));
        }
    };
    state
        .control
        .pause_slave(&session.account, &slave, paused)
        .await?;
    Ok(Redirect::to("/slaves").into_response())
}
