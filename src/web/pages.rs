//! The HTML pages: waterfall, summary, builder, build (with Stop Build), slaves, the patch
//! download and the login landing.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{Html, IntoResponse, Redirect, Response};

use crate::web::views::{self, BuilderView};
use crate::web::{AppState, WebError, auth};

/// How many changes the waterfall lists beside the builders.
const WATERFALL_CHANGES: i64 = 20;
/// How many builds of one builder one page of the waterfall shows at most.
const WATERFALL_BUILDS: i64 = 200;
/// How much history the waterfall shows unless `?hours=` says otherwise.
const WATERFALL_HOURS: u32 = 24;
/// A week: longer windows would load too many builds for one page.
const WATERFALL_MAX_HOURS: u32 = 168;

/// Builders with their `per_builder` newest builds (with steps) and their duration trends
/// (for the summary and the builder page).
async fn builders_with_builds(
    state: &AppState,
    per_builder: i64,
) -> Result<Vec<BuilderView>, WebError> {
    let mut builders = views::builder_views(&state.control);
    let names: Vec<String> = builders.iter().map(|b| b.name.clone()).collect();
    let trend_limit = i64::try_from(views::TREND_BUILDS).unwrap_or(50);
    // Only the builds the page lists need their steps; the trend needs rows only.
    let recent = state
        .control
        .store()
        .recent_builds(
            names,
            per_builder.max(trend_limit),
            usize::try_from(per_builder).unwrap_or(0),
        )
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
    let loaded = recent.into_iter().map(|recent| {
        let builds = recent
            .rows
            .iter()
            .zip(&recent.steps)
            .map(|(build, steps)| views::build_view(&logs, build, steps))
            .collect::<Vec<_>>();
        let last = recent
            .rows
            .iter()
            .find(|row| row.finished_at.is_some())
            .map(|row| (row.number, row.result));
        (builds, views::trend_view(&recent.rows), last)
    });
    for (builder, (builds, trend, last)) in builders.iter_mut().zip(loaded) {
        // The last result survives restarts through the history.
        if let Some((number, result)) = last {
            builder.last = format!("#{number} {}", result.map_or("running", |r| r.as_str()));
            builder.last_css = result.map_or("running", |r| r.as_str()).to_string();
            builder.last_result = result;
        }
        builder.trend = trend;
        builder.builds = builds;
        attach_progress(builder);
    }
    Ok(builders)
}

/// A running build's box carries the same bar as the builder's "now".
fn attach_progress(builder: &mut BuilderView) {
    for build in builder.builds.iter_mut().filter(|build| build.running) {
        build.progress = builder
            .progress
            .iter()
            .find(|progress| progress.number == build.number)
            .cloned();
    }
}

/// The tab title and favicon from the builders' last results.
fn insert_light(state: &AppState, context: &mut tera::Context, builders: &[BuilderView]) {
    let results: Vec<_> = builders.iter().map(|builder| builder.last_result).collect();
    let light = views::status_light(&state.control.config().name, &results);
    context.insert("light", &light);
}

/// The waterfall's window: `?hours=` of history (default [`WATERFALL_HOURS`]) ending at
/// `?before=` (seconds since the epoch; default now).
#[derive(serde::Deserialize)]
pub struct WaterfallQuery {
    hours: Option<u32>,
    before: Option<f64>,
}

pub async fn waterfall(
    State(state): State<Arc<AppState>>,
    Query(query): Query<WaterfallQuery>,
    headers: HeaderMap,
) -> Result<Html<String>, WebError> {
    let hours = query
        .hours
        .unwrap_or(WATERFALL_HOURS)
        .clamp(1, WATERFALL_MAX_HOURS);
    let now = crate::status::unix_now();
    let upper = query
        .before
        .filter(|before| before.is_finite() && *before < now)
        .unwrap_or(now);
    let lower = upper - f64::from(hours) * 3600.0;
    let mut builders = views::builder_views(&state.control);
    let names: Vec<String> = builders.iter().map(|b| b.name.clone()).collect();
    let loaded = state
        .control
        .store()
        .builds_in_window(names, lower, upper, WATERFALL_BUILDS)
        .await?;
    let logs = state
        .control
        .logs()
        .index(
            loaded
                .iter()
                .flat_map(|window| &window.builds)
                .map(|found| (found.build.id, found.steps.as_slice()))
                .collect(),
        )
        .await?;
    for (builder, window) in builders.iter_mut().zip(loaded) {
        builder.builds = window
            .builds
            .iter()
            .map(|found| views::build_view(&logs, &found.build, &found.steps))
            .collect();
        builder.last_result = window.last_result.or(builder.last_result);
        attach_progress(builder);
    }
    let view = views::waterfall_view(&builders, (lower, upper), now, hours, upper >= now);
    let mut context = state.base_context(&headers).await;
    insert_light(&state, &mut context, &builders);
    context.insert("waterfall", &view);
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
    let mut context = state.base_context(&headers).await;
    insert_light(&state, &mut context, &builders);
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
    let mut context = state.base_context(&headers).await;
    insert_light(&state, &mut context, &builders);
    let Some(builder) = builders.into_iter().find(|b| b.name == name) else {
        return Err(WebError::NotFound(format!("no builder named '{name}'")));
    };
    let queue = crate::web::changes::queue_views(&state, std::slice::from_ref(&name)).await?;
    let session = state.session(&headers).await;
    context.insert("builds", &builder.builds);
    context.insert("builder", &builder);
    context.insert("queue", &queue);
    context.insert("can_force", &state.control.config().may_force(&name));
    context.insert("locks", &views::lock_views(&state.control, &name));
    let bisects = state.control.store().bisects(100).await?;
    context.insert("bisects", &views::builder_bisect_views(&bisects, &name));
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
    let now = crate::status::unix_now();
    let running = state.control.running_build(&builder, number);
    let eta = running
        .as_ref()
        .map(|running| crate::status::text::eta_text(running.eta_at(now)));
    let total_steps = state
        .control
        .config()
        .builder(&builder)
        .map(|config| config.steps.len() + 1);
    let progress = running
        .as_ref()
        .map(|running| views::progress_view(running, total_steps, now));
    let logs = state
        .control
        .logs()
        .index(vec![(detail.build.id, detail.steps.as_slice())])
        .await?;
    let mut page = views::build_page(&logs, &detail, eta, progress);
    let tests = crate::web::test_results::build_report(&state, &detail).await?;
    let kept = crate::web::artifacts::of_build(&state, &builder, number, detail.build.id).await?;
    let session = state.session(&headers).await;
    if let Some((hold, sessions)) = state.control.shell_hold(&builder, number).await? {
        // The command only for those who may open the shell (its requester, operators).
        let may = session.as_ref().is_some_and(|session| {
            state
                .control
                .may_shell(&session.account, hold.owner.as_deref())
        });
        let command = if may {
            // Where the build's slave is connected, in a cluster.
            Some(match state.control.shell_elsewhere(&hold.slave).await {
                Some(other) => other.command(&builder, number),
                None => format!("ssh -t {} shell {builder} {number}", ssh_host(&state)),
            })
        } else {
            None
        };
        page.shell = Some(views::shell_view(
            &hold,
            &sessions,
            command,
            session.is_some(),
        ));
    }
    let mut context = state.base_context(&headers).await;
    context.insert(
        "tests",
        &crate::web::test_results::summary_view(&builder, number, &tests),
    );
    context.insert("can_stop", &session.is_some());
    context.insert("csrf", &session.map(|s| s.csrf).unwrap_or_default());
    context.insert("build", &page);
    context.insert("artifacts", &kept);
    Ok(Html(state.render("build.html", &context)?))
}

/// The master's SSH address as users type it: the web address's host, and `-p PORT` unless
/// sshd listens on 22.
fn ssh_host(state: &AppState) -> String {
    let web = state.control.web_url();
    let host = web
        .split("://")
        .nth(1)
        .unwrap_or(web)
        .split(['/', ':'])
        .next()
        .unwrap_or("master");
    let host = if host.is_empty() { "master" } else { host };
    crate::master::control::shell::ssh_destination(host, state.control.config().sshd.listen.port())
}

pub async fn patch(
    State(state): State<Arc<AppState>>,
    Path((builder, number)): Path<(String, i64)>,
    headers: axum::http::HeaderMap,
) -> Result<Response, WebError> {
    let detail = state.load_build(&builder, number).await?;
    // A patch may hold what is not public yet: its owner and operators see it, logged in.
    let Some(session) = state.session(&headers).await else {
        return Err(WebError::Forbidden(
            "try patches are shown to their owner and operators: log in with `ssh master web-login`"
                .into(),
        ));
    };
    crate::master::access::check(
        &session.account,
        crate::master::access::Action::SeePatch,
        crate::master::access::Target::Owned {
            owner: detail.who.as_deref(),
        },
        &state.control.config(),
    )
    .map_err(|err| WebError::Forbidden(err.to_string()))?;
    let request_id = detail.request_id;
    let patch = state
        .control
        .store()
        .patch(request_id)
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
    let mut context = state.base_context(&headers).await;
    let session = state.session(&headers).await;
    context.insert(
        "slaves",
        &crate::web::api::slave_rows(&state, session.is_some()),
    );
    context.insert("logged_in", &session.is_some());
    context.insert("csrf", &session.map(|s| s.csrf).unwrap_or_default());
    Ok(Html(state.render("slaves.html", &context)?))
}

/// `/masters`: the masters of the cluster, their leases, slaves and builds.
pub async fn masters(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Html<String>, WebError> {
    let mut context = state.base_context(&headers).await;
    let rows = crate::web::api::master_rows(&state).await?;
    let now = crate::master::store::now();
    let shown: Vec<serde_json::Value> = rows
        .iter()
        .map(|row| {
            let left = row.lease_expires_at - now;
            let lease = if !row.alive {
                format!(
                    "ended {}",
                    crate::web::views::format_time(row.lease_expires_at)
                )
            } else if left > 86_400.0 {
                // One master on its own file: its lease is not renewed and does not run out.
                "held (one master)".to_string()
            } else {
                format!("{:.0}s left", left.max(0.0))
            };
            serde_json::json!({
                "name": row.name,
                "state": row.state,
                "alive": row.alive,
                "epoch": row.epoch,
                "started": crate::web::views::format_time(row.started_at),
                "lease": lease,
                "ssh": row.ssh,
                "http": row.http,
                "slaves": row.slaves.join(", "),
                "builds": row.builds.join(", "),
                "config_differs": row.config_differs,
                "leads": row.leads,
                "this": row.this,
            })
        })
        .collect();
    context.insert("masters", &shown);
    // This master's disk, as last measured (at start, then every ten minutes).
    let storage: Vec<serde_json::Value> = state
        .control
        .metrics()
        .storage()
        .into_iter()
        .map(|(kind, bytes)| {
            serde_json::json!({
                "kind": kind,
                "bytes": bytes,
                "shown": crate::web::views::human_bytes(bytes),
            })
        })
        .collect();
    context.insert("storage", &storage);
    Ok(Html(state.render("masters.html", &context)?))
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
    let Some(session_id) = state.control.redeem_web_login(&query.token).await else {
        let page = state.message(
            &headers,
            "Login link expired",
            "This login link was used already or has expired. Run `ssh … web-login` again for a new one.",
        )
        .await?;
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
