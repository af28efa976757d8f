//! `/metrics`: the master's metrics (`master::metrics`) in Prometheus text format. Anyone who
//! can reach the web port may scrape it, like the status pages; it names builders, locks and
//! counts, never users, keys or addresses.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::web::AppState;

/// prometheus-client writes OpenMetrics text (`_total` counters, `# EOF`), which Prometheus
/// scrapes as such.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub async fn scrape(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        state.control.metrics_text(),
    )
}
