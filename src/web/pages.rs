//! The HTML pages: waterfall, summary, builder, build (with Stop Build), slaves, the patch
//! download and the login landing.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{Html, IntoResponse, Redirect, Response};

use crate::master::history;
use crate::web::views::{self, BuilderView};
use crate::web::{AppState, WebError, auth};

/// How many changes the waterfall lists beside the builders.
const WATERFALL_CHANGES: i64 = 20;
/// How many builds the waterfall shows.
const WATERFALL_BUILDS: i64 = 200;

/// Builders with their recent builds (for the waterfall and the builder page).
async fn builders_with_builds(
    state: &AppState,
    per_builder: i64,
) -> Result<Vec<BuilderView>, WebError> {
    let mut builders = views::builder_views(&state.control);
    let names: Vec<String> = builders.iter().map(|b| b.name.clone()).collect();
    let logs_dir = state.control.logs_dir.clone();
    let loaded = state
        .control
        .history
        .run(move |connection| {
            let mut all = Vec::new();
            for name in names {
                let mut builds = Vec::new();
                for build in history::recent_builds(connection, &name, per_builder)? {
                    let steps = history::steps_of(connection, build.id)?;
                    builds.push(views::build_view(&logs_dir, &build, &steps));
                }
                all.push(builds);
            }
            Ok(all)
        })
        .await?;
    for (builder, builds) in builders.iter_mut().zip(loaded) {
        // The last result survives restarts through the history.
        if let Some(last) = builds.iter().find(|build| !build.running) {
            builder.last = format!("#{} {}", last.number, last.result_text);
            builder.last_css = last.css.clone();
        }
        builder.builds = builds;
    }
    Ok(builders)
}

pub async fn waterfall(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Html<String>, WebError> {
    let per_builder = (WATERFALL_BUILDS
        / i64::try_from(state.control.config.builders.len().max(1)).unwrap_or(1))
    .max(5);
    let builders = builders_with_builds(&state, per_builder).await?;
    let mut context = state.base_context(&headers);
    context.insert("builders", &builders);
    context.insert(
        "changes",
        &crate::web::changes::recent_change_views(&state, WATERFALL_CHANGES).await?,
    );
    Ok(Html(state.render("waterfall.html", &context)?))
}

pub async fn summary(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Html<String>, WebError> {
    let builders = builders_with_builds(&state, 1).await?;
    let mut context = state.base_context(&headers);
    context.insert("builders", &builders);
    Ok(Html(state.render("summary.html", &context)?))
}

pub async fn builder(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Html<String>, WebError> {
    state.control.builder(&name)?;
    let builders = builders_with_builds(&state, 50).await?;
    let Some(builder) = builders.into_iter().find(|b| b.name == name) else {
        return Err(WebError::NotFound(format!("no builder named '{name}'")));
    };
    let queue = crate::web::changes::queue_views(&state, std::slice::from_ref(&name)).await?;
    let session = state.session(&headers);
    let mut context = state.base_context(&headers);
    context.insert("builds", &builder.builds);
    context.insert("builder", &builder);
    context.insert("queue", &queue);
    context.insert("can_force", &state.control.config.may_force(&name));
    context.insert("locks", &views::lock_views(&state.control, &name));
    context.insert("logged_in", &session.is_some());
    context.insert("csrf", &session.map(|s| s.csrf).unwrap_or_default());
    Ok(Html(state.render("builder.html", &context)?))
}

pub async fn build(
    State(state): State<Arc<AppState>>,
    Path((builder, number)): Path<(String, i64)>,
    headers: HeaderMap,
) -> Result<Html<String>, WebError> {
    let detail = state.load_build(&builder, number).await?;
    let eta = state
        .control
        .board
        .running_build(&builder, number)
        .and_then(|running| running.eta_at(crate::status::unix_now()))
        .map(crate::durations::format_eta);
    let page = views::build_page(&state.control.logs_dir, &detail, eta);
    let session = state.session(&headers);
    let mut context = state.base_context(&headers);
    context.insert("can_stop", &session.is_some());
    context.insert("csrf", &session.map(|s| s.csrf).unwrap_or_default());
    context.insert("build", &page);
    Ok(Html(state.render("build.html", &context)?))
}

pub async fn patch(
    State(state): State<Arc<AppState>>,
    Path((builder, number)): Path<(String, i64)>,
) -> Result<Response, WebError> {
    let detail = state.load_build(&builder, number).await?;
    let request_id = detail.request_id;
    let patch = state
        .control
        .history
        .run(move |connection| history::request_patch(connection, request_id))
        .await?
        .ok_or_else(|| WebError::NotFound(format!("{builder} #{number} built no patch")))?;
    let disposition = format!("attachment; filename=\"{builder}-{number}.patch\"");
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/x-diff"),
            ),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_str(&disposition)
                    .unwrap_or(HeaderValue::from_static("attachment")),
            ),
        ],
        patch,
    )
        .into_response())
}

pub async fn slaves(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Html<String>, WebError> {
    let mut context = state.base_context(&headers);
    context.insert("slaves", &crate::web::api::slave_rows(&state));
    let session = state.session(&headers);
    context.insert("logged_in", &session.is_some());
    context.insert("csrf", &session.map(|s| s.csrf).unwrap_or_default());
    Ok(Html(state.render("slaves.html", &context)?))
}

#[derive(serde::Deserialize)]
pub struct LoginQuery {
    token: String,
}

/// The one-time URL from `web-login`: sets the session cookie and goes to the waterfall.
pub async fn login(
    State(state): State<Arc<AppState>>,
    Query(query): Query<LoginQuery>,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    let Some(session_id) = state.control.sessions.redeem(&query.token) else {
        let page = state.message(
            &headers,
            "Login link expired",
            "This login link was used already or has expired. Run `ssh … web-login` again for a new one.",
        )?;
        return Ok((axum::http::StatusCode::FORBIDDEN, page).into_response());
    };
    let cookie = format!(
        "{}={session_id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        auth::SESSION_COOKIE,
        crate::master::sessions::SESSION_LIFETIME.as_secs()
    );
    let mut response = Redirect::to("/").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}
