//! The HTTP side of the master: server-rendered pages (axum + tera, templates embedded in the
//! binary, usable without JavaScript), the JSON API under `/api/`, live and huge logs, and the
//! Stop Build button behind a session from `ssh master web-login`. Only this module touches
//! axum and tera.

mod actions;
mod api;
mod artifacts;
mod auth;
mod changes;
mod land;
mod logs;
mod metrics;
mod pages;
mod serve;
pub mod test_results;
pub mod views;

#[cfg(test)]
mod glance_tests;

use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{any, get, post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::master::control::{Control, ControlError};
use crate::master::sessions::Session;

/// Every template, embedded so the binary needs no files at run time.
pub const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("waterfall.html", include_str!("templates/waterfall.html")),
    ("summary.html", include_str!("templates/summary.html")),
    ("builder.html", include_str!("templates/builder.html")),
    ("build.html", include_str!("templates/build.html")),
    ("shell.html", include_str!("templates/shell.html")),
    ("log.html", include_str!("templates/log.html")),
    ("slaves.html", include_str!("templates/slaves.html")),
    ("masters.html", include_str!("templates/masters.html")),
    ("message.html", include_str!("templates/message.html")),
    ("changes.html", include_str!("templates/changes.html")),
    ("progress.html", include_str!("templates/progress.html")),
    ("trend.html", include_str!("templates/trend.html")),
    ("land.html", include_str!("templates/land.html")),
    ("tests.html", include_str!("templates/tests.html")),
    ("test.html", include_str!("templates/test.html")),
    (
        "tests_summary.html",
        include_str!("templates/tests_summary.html"),
    ),
    ("artifacts.html", include_str!("templates/artifacts.html")),
];

/// What every handler shares.
pub struct AppState {
    /// What actions mean and what is true now: the master's control layer.
    pub control: Arc<Control>,
    templates: tera::Tera,
}

/// Errors a handler returns: 4xx say what was wrong; 5xx say nothing internal (the detail is
/// logged).
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<crate::master::store::StoreError> for WebError {
    fn from(err: crate::master::store::StoreError) -> Self {
        WebError::Internal(err.to_string())
    }
}

impl From<ControlError> for WebError {
    fn from(err: ControlError) -> Self {
        match err {
            ControlError::NoSuchBuilder { .. }
            | ControlError::NoSuchBuild { .. }
            | ControlError::NoSuchSlave { .. }
            | ControlError::NoSuchArtifact { .. } => WebError::NotFound(err.to_string()),
            ControlError::NotRunning { .. }
            | ControlError::NotQueued { .. }
            | ControlError::Ambiguous { .. }
            | ControlError::Submit(_)
            | ControlError::BadChange(_)
            | ControlError::NotPlain(_) => WebError::BadRequest(err.to_string()),
            ControlError::NotAllowed(_) | ControlError::NotForcible { .. } => {
                WebError::Forbidden(err.to_string())
            }
            ControlError::History(_) => WebError::Internal(err.to_string()),
            ControlError::Land(crate::master::land::LandError::Git(_)) => {
                WebError::Internal(err.to_string())
            }
            ControlError::Land(_) => WebError::BadRequest(err.to_string()),
            ControlError::NotHeld { .. }
            | ControlError::HoldEnded { .. }
            | ControlError::StillRunning { .. }
            | ControlError::SlaveAway { .. } => WebError::BadRequest(err.to_string()),
        }
    }
}

impl From<std::io::Error> for WebError {
    fn from(err: std::io::Error) -> Self {
        WebError::Internal(err.to_string())
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            WebError::NotFound(message) => (StatusCode::NOT_FOUND, message),
            WebError::BadRequest(message) => (StatusCode::BAD_REQUEST, message),
            WebError::Forbidden(message) => (StatusCode::FORBIDDEN, message),
            WebError::Internal(detail) => {
                tracing::error!("web: {detail}");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error; see the master's log".to_string(),
                )
            }
        };
        (status, format!("{message}\n")).into_response()
    }
}

impl AppState {
    pub fn new(control: Arc<Control>) -> anyhow::Result<AppState> {
        let mut templates = tera::Tera::new();
        templates
            .add_raw_templates(TEMPLATES.iter().copied())
            .map_err(|err| anyhow::anyhow!("template error: {err}"))?;
        templates.autoescape_on(vec![".html"]);
        Ok(AppState { control, templates })
    }

    pub fn render(&self, name: &str, context: &tera::Context) -> Result<String, WebError> {
        self.templates
            .render(name, context)
            .map_err(|err| WebError::Internal(format!("rendering {name}: {err}")))
    }

    /// A build by builder and number, with its steps; 404 if there is none.
    pub async fn load_build(
        &self,
        builder: &str,
        number: i64,
    ) -> Result<crate::master::store::BuildDetail, WebError> {
        let key = crate::master::store::BuildRef::Number {
            builder: builder.to_string(),
            number,
        };
        self.control
            .store()
            .build(key)
            .await?
            .ok_or_else(|| WebError::NotFound(format!("{builder} has no build #{number}")))
    }

    /// The session of this request, if it has a valid one.
    pub async fn session(&self, headers: &axum::http::HeaderMap) -> Option<Session> {
        let id = auth::session_cookie(headers)?;
        self.control.web_session(&id).await
    }

    /// What every page shows: the master's name and host key, who is logged in.
    pub async fn base_context(&self, headers: &axum::http::HeaderMap) -> tera::Context {
        let mut context = tera::Context::new();
        context.insert("master_name", &self.control.config().name);
        context.insert("host_key", self.control.host_key_fingerprint());
        let user = self
            .session(headers)
            .await
            .map(|session| session.account.name);
        context.insert("user", &user);
        // The board's last results (since this master started); pages that load the
        // history replace it with the light from each builder's last recorded build.
        let results: Vec<_> = self
            .control
            .config()
            .builders
            .iter()
            .map(|builder| {
                self.control
                    .last_build(&builder.name)
                    .map(|last| last.result)
            })
            .collect();
        context.insert(
            "light",
            &views::status_light(&self.control.config().name, &results),
        );
        context
    }

    pub async fn message(
        &self,
        headers: &axum::http::HeaderMap,
        heading: &str,
        message: &str,
    ) -> Result<Html<String>, WebError> {
        let mut context = self.base_context(headers).await;
        context.insert("heading", heading);
        context.insert("message", message);
        Ok(Html(self.render("message.html", &context)?))
    }
}

pub use serve::Limits;

/// Serves HTTP on `listener` until `shutdown` is cancelled, under `limits` (the caller lowers
/// `[http] max_connections` when the process has fewer descriptors to spare).
pub async fn run(
    listener: TcpListener,
    control: Arc<Control>,
    limits: Limits,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let state = Arc::new(AppState::new(control)?);
    let app = router(Arc::clone(&state)).layer(axum::middleware::from_fn_with_state(
        (state, limits.header_read_timeout),
        actions::guard_body,
    ));
    serve::serve(listener, app, limits, shutdown)
        .await
        .context("the web server failed")
}

pub fn router(state: Arc<AppState>) -> Router {
    // The JSON API: every error in it is JSON (`api::json_errors`), 404s included.
    let api = Router::new()
        .route("/api", get(api::index))
        .route("/api/", get(api::index))
        .route("/api/changes", get(changes::api_changes))
        .route("/api/requests", get(changes::api_requests))
        .route("/api/locks", get(api::locks))
        .route("/api/masters", get(api::masters))
        .route("/api/builders", get(api::builders))
        .route("/api/builders/{builder}", get(api::builder))
        .route("/api/builds", get(api::builds))
        .route("/api/builds/{id}", get(api::build))
        .route("/api/slaves", get(api::slaves))
        .route("/api/events", get(api::events))
        .route("/api/land", get(land::api))
        .route("/api/builds/{id}/tests", get(test_results::api_build_tests))
        .route("/api/tests", get(test_results::api_tests))
        .route("/api/bisects", get(api::bisects))
        .route("/api/{*rest}", any(api::not_found))
        .layer(axum::middleware::map_response(api::json_errors));
    Router::new()
        .route("/", get(pages::waterfall))
        // The nav says "waterfall": the page answers under that name too.
        .route("/waterfall", get(pages::waterfall))
        .route("/summary", get(pages::summary))
        .route("/slaves", get(pages::slaves))
        .route("/masters", get(pages::masters))
        .route("/login", get(pages::login))
        .route("/builders/{builder}", get(pages::builder))
        .route("/builders/{builder}/builds/{number}", get(pages::build))
        .route(
            "/builders/{builder}/builds/{number}/patch",
            get(pages::patch),
        )
        .route(
            "/builders/{builder}/builds/{number}/stop",
            post(actions::stop),
        )
        .route(
            "/builders/{builder}/builds/{number}/rebuild",
            post(actions::rebuild),
        )
        .route("/builders/{builder}/force", post(actions::force))
        .route(
            "/builders/{builder}/builds/{number}/tests",
            get(test_results::build_tests_page),
        )
        .route("/builders/{builder}/tests", get(test_results::test_page))
        .route(
            "/builders/{builder}/requests/{request}/cancel",
            post(actions::cancel),
        )
        .route("/slaves/{slave}/{action}", post(actions::pause))
        .route("/changes", get(changes::page))
        .route("/land", get(land::page))
        .route("/land/{id}/cancel", post(land::cancel))
        .route(
            "/builders/{builder}/builds/{number}/steps/{step}/logs/{stream}",
            get(logs::page),
        )
        .route(
            "/builders/{builder}/builds/{number}/steps/{step}/logs/{stream}/raw",
            get(logs::raw),
        )
        // ---- artifacts (issue 27) ----
        .route(
            "/builders/{builder}/builds/{number}/artifacts/{*path}",
            get(artifacts::download),
        )
        .route("/api/builds/{id}/artifacts", get(artifacts::api))
        .route("/metrics", get(metrics::scrape))
        .merge(api)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            private_farm,
        ))
        .with_state(state)
}

/// `[http] public = false`: every page and API call needs a session of an account that still
/// exists; only `/login` (where `ssh master web-login` links lead) is open.
async fn private_farm(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if state.control.config().http.public || request.uri().path() == "/login" {
        return next.run(request).await;
    }
    let signed_in = state
        .session(request.headers())
        .await
        .is_some_and(|session| crate::master::access::current_account(&session.account).is_some());
    if signed_in {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        "this CI is private: log in first with `ssh -p PORT HOST web-login` and open the link it prints\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Renders every template with sample data, as the pages fill them.
    #[test]
    fn every_template_renders() {
        let mut templates = tera::Tera::new();
        templates
            .add_raw_templates(TEMPLATES.iter().copied())
            .expect("templates parse");
        templates.autoescape_on(vec![".html"]);
        let change = serde_json::json!({"id": 7, "repository": "/r.git", "branch": "main", "revision": "abc",
            "short_revision": "abc", "who": "<alice>", "comments": "fix", "files": ["a"], "received": "now",
            "sent_by": "alice", "builds": [{"builder": "linux", "number": 3, "url": "/builders/linux/builds/3"}]});
        let step = serde_json::json!({"number": 1, "name": "test", "result": "failure", "result_text": "failure",
            "css": "failure", "summary": "exit 1", "started_at": 0.0, "finished_at": 1.0, "took": "1s",
            "logs": [{"name": "stdout", "url": "/x"}]});
        let progress = serde_json::json!({"number": 3, "determinate": true, "value": "70", "max": "165",
            "text": "step 2/3 (test) · 1m10s of ~2m45s", "overdue": false});
        let trend = serde_json::json!({"width": "300", "height": "80", "line": "6,70 294,10", "first_number": 1,
            "last_number": 2, "max_label": "max 1m", "points": [{"x": "6", "y": "70", "css": "success", "title": "#1 success 5s"}]});
        let mut build = serde_json::json!({"id": 1, "builder": "linux", "number": 3, "slave": "s1", "result": null,
            "result_text": "running", "css": "running", "reason": "stopped by <alice>", "running": true,
            "started_at": 0.0, "finished_at": null, "started": "now", "took": "1s", "url": "/builders/linux/builds/3",
            "steps": [step], "progress": progress.clone(), "repository": "r", "branch": "main", "baserev": "abc", "revision": "abcdef", "jobid": "j", "who": "alice",
            "comment": "c", "has_patch": true, "eta": "2m45s", "properties": {"foo": "bar"},
            "why": "changes 1, 2 on main (scheduler main)", "changes": [change.clone()]});
        let session = serde_json::json!({"who": "<alice>", "from": "10.0.0.1", "started_at": 0.0,
            "ended_at": null, "started": "12:30 UTC", "ended": "open"});
        build["shell"] = serde_json::json!({"held_until": 0.0, "held_until_text": "12:40 UTC",
            "held": true, "command": "ssh -t master shell linux 3", "sessions": [session]});
        let builder = serde_json::json!({"name": "linux", "state": "idle", "state_class": "idle", "queued": 1,
            "progress": [progress.clone()], "trend": trend.clone(),
            "last": "#2 success", "last_css": "success", "slaves": [{"name": "s1", "connected": true}],
            "builds": [build.clone()]});
        let light = serde_json::json!({"title": "✔ m", "favicon": "data:image/svg+xml,<svg/>"});
        let waterfall_step = serde_json::json!({"name": "test", "css": "running", "title": "t", "top": "0",
            "height": "40", "logs": [{"name": "stdout", "url": "/x"}]});
        let waterfall_box = serde_json::json!({"number": 3, "url": "/builders/linux/builds/3", "css": "running",
            "result_text": "running", "took": "1s", "title": "t", "top": "0", "height": "40",
            "progress": progress.clone(), "steps": [waterfall_step]});
        let waterfall = serde_json::json!({"height": "100", "hours": 24, "older_url": "/?before=1",
            "newer_url": null, "ticks": [{"top": "0", "label": "01-01 00:00"}],
            "columns": [{"name": "linux", "state": "idle", "state_class": "idle", "boxes": [waterfall_box]}]});
        let master = serde_json::json!({"name": "ci-a", "state": "up", "alive": true, "epoch": 3,
            "started": "now", "lease": "7s left", "ssh": "a:2222", "http": "a:8010", "slaves": "s1",
            "builds": "linux #3", "config_differs": true, "leads": true, "this": true});
        let land_entry = serde_json::json!({"id": 4, "position": 1, "who": "alice", "commits": 3,
            "summary": "<b>output</b>", "state": "testing", "tested_base": "abc", "attempts": 1,
            "estimate": "2m"});
        let land_recent = serde_json::json!({"id": 3, "who": "bob", "commits": 1, "summary": "s",
            "state": "landed", "landed_sha": "def", "reason": "", "submitted": "now"});
        let land_queue = serde_json::json!({"branch": "main", "builders": "linux", "window": 2,
            "queue": [land_entry], "recent": [land_recent]});
        let test_case = serde_json::json!({"suite": "s", "name": "<b>t</b>", "result": "failed",
            "css": "failure", "duration": "1 s", "message": "<b>boom</b>", "new": true,
            "failing_since": null, "flaky": true, "log_url": "/l", "history_url": "/h"});
        let context = tera::Context::from_serialize(&serde_json::json!({
            "master_name": "m", "host_key": "SHA256:x", "user": "alice", "builders": [builder.clone()],
            "builder": builder, "builds": [build.clone()], "queue": [{"id": 4, "builder": "linux", "position": 1, "kind": "force", "why": "forced by alice: x",
                "who": "alice", "branch": "main", "revision": "", "submitted": "now", "starts_in": "~4m10s"}],
            "changes": [change], "can_force": true, "logged_in": true,
            "locks": [{"name": "db", "holders": [{"builder": "deploy", "number": 12, "step": "migrate", "since": "2m10s"}],
                "waiters": [{"request_id": 9, "builder": "linux", "step": null}]}],
            "build": build, "can_stop": true, "csrf": "token",
            "number": 3, "step": "test", "stream": "stdout", "size": 10, "shown": 5, "truncated": true, "more": 20,
            "running": true, "raw_url": "/raw", "text": "<b>output</b>",
            "slaves": [{"name": "s1", "connected": true, "since": "now", "facts": "linux", "building": "linux #3"}],
            "heading": "h", "message": "m", "progress": progress.clone(), "trend": trend,
            "light": light, "waterfall": waterfall,
            "masters": [master],
            "queues": [land_queue],
            "artifacts": [{"path": "dist/<b>output</b>", "size": 3, "sha256": "ab", "step": 3, "url": "/u"}],
        }))
        .expect("context");
        let mut context = context;
        context.insert(
            "storage",
            &serde_json::json!([{"kind": "logs", "bytes": 2_000_000, "shown": "2.0 MB"}]),
        );
        let tests = serde_json::json!({"line": "1 passed · 1 failed (1 new)", "more_failures": 2,
            "tests_url": "/t", "failures": [test_case.clone()]});
        let flaky = serde_json::json!([{"suite": "s", "name": "<b>t</b>", "failed": 1, "passed": 2,
            "url": "/u"}]);
        let cells = serde_json::json!([{"number": 3, "css": "failure", "title": "#3 failed 1 s",
            "url": "/b"}]);
        context.insert("test_builder", "linux");
        context.insert("tests", &tests);
        context.insert("summary", "1 passed · 1 failed (1 new)");
        context.insert("cases", std::slice::from_ref(&test_case));
        context.insert("slowest", &[test_case]);
        context.insert("flaky", &flaky);
        context.insert("flaky_window", &30);
        context.insert("page", &2);
        context.insert("pages", &3);
        context.insert("name", "<b>t</b>");
        context.insert("suite", "s");
        context.insert("cells", &cells);
        for &(name, _) in TEMPLATES {
            let html = templates
                .render(name, &context)
                .unwrap_or_else(|err| panic!("{name}: {err}"));
            // These are pieces the pages include.
            let is_page = !matches!(
                name,
                "progress.html"
                    | "trend.html"
                    | "tests_summary.html"
                    | "shell.html"
                    | "artifacts.html"
            );
            assert_eq!(html.contains("</html>"), is_page, "{name}");
            assert!(
                !html.contains("<b>output</b>"),
                "{name} must escape log text"
            );
            assert!(
                !html.contains("<b>t</b>") && !html.contains("<b>boom</b>"),
                "{name} must escape test names and messages"
            );
        }
        let build_page = templates
            .render("build.html", &context)
            .expect("build page");
        assert!(build_page.contains("stopped by &lt;alice&gt;"));
        assert!(build_page.contains("Stop Build"));
        assert!(build_page.contains("ETA 2m45s"));
        assert!(build_page.contains("held until 12:40 UTC"));
        assert!(build_page.contains("ssh -t master shell linux 3"));
        assert!(build_page.contains("&lt;alice&gt;</td><td>10.0.0.1"));
        assert!(
            build_page.contains("property foo</th><td>bar"),
            "{build_page}"
        );
        assert!(
            build_page.contains("<td id=\"why\">changes 1, 2 on main"),
            "{build_page}"
        );
        assert!(
            build_page.contains("&lt;alice&gt;</td>"),
            "change authors are escaped"
        );
        let builder_page = templates
            .render("builder.html", &context)
            .expect("builder page");
        assert!(builder_page.contains("id=\"force-form\""), "{builder_page}");
        // The included pieces see the variables the pages set for them.
        assert!(
            builder_page.contains("<circle class=\"pt success\" cx=\"6\""),
            "{builder_page}"
        );
        assert!(
            builder_page.contains("<progress value=\"70\" max=\"165\">"),
            "{builder_page}"
        );
        let summary = templates.render("summary.html", &context).expect("summary");
        assert!(
            summary.contains("<title>#1 success 5s</title>"),
            "{summary}"
        );
        assert!(
            build_page.contains("<progress value=\"70\""),
            "{build_page}"
        );
        assert!(
            builder_page
                .contains("db: held by deploy #12 (migrate) since 2m10s; waiting: linux request 9"),
            "{builder_page}"
        );
        assert!(
            builder_page.contains("/builders/linux/requests/4/cancel"),
            "{builder_page}"
        );
    }
}
