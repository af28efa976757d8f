//! Artifacts over HTTP: the list on a build's page and in the API, and the download of one
//! (`/builders/B/builds/N/artifacts/PATH`, whole or one byte range), streamed a chunk at a time
//! from this master's copy or the shared store (`master::artifacts`). Who may read them is who
//! may read the build's logs: everyone on a public master, a signed-in account on a private one
//! (the `private_farm` layer in front of every route).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::master::store::ArtifactRow;
use crate::web::{AppState, WebError};

/// One artifact as pages and the API show it.
#[derive(Debug, Clone, Serialize)]
pub struct ArtifactView {
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub step: i64,
    pub url: String,
}

fn view(builder: &str, number: i64, row: &ArtifactRow) -> ArtifactView {
    // Each path segment escaped on its own, so `/` stays a separator.
    let escaped: Vec<String> = row
        .path
        .split('/')
        .map(|part| percent_encoding::utf8_percent_encode(part, SEGMENT).to_string())
        .collect();
    ArtifactView {
        path: row.path.clone(),
        size: row.size,
        sha256: row.sha256.clone(),
        step: row.step,
        url: format!(
            "/builders/{}/builds/{number}/artifacts/{}",
            percent_encoding::utf8_percent_encode(builder, SEGMENT),
            escaped.join("/")
        ),
    }
}

const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A build's artifacts for its page.
pub async fn of_build(
    state: &AppState,
    builder: &str,
    number: i64,
    build_id: i64,
) -> Result<Vec<ArtifactView>, WebError> {
    Ok(state
        .control
        .store()
        .artifacts_of(build_id)
        .await?
        .iter()
        .map(|row| view(builder, number, row))
        .collect())
}

/// `/api/builds/ID/artifacts`.
pub async fn api(
    State(state): State<Arc<AppState>>,
    Path(id): Path<i64>,
) -> Result<Json<Vec<ArtifactView>>, WebError> {
    let detail = state
        .control
        .store()
        .build(crate::master::store::BuildRef::Id(id))
        .await?
        .ok_or_else(|| WebError::NotFound(format!("no build with id {id}")))?;
    Ok(Json(
        of_build(&state, &detail.build.builder, detail.build.number, id).await?,
    ))
}

/// `/builders/B/builds/N/artifacts/PATH`: the bytes, whole or one range.
pub async fn download(
    State(state): State<Arc<AppState>>,
    Path((builder, number, path)): Path<(String, i64, String)>,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    let download = state.control.artifact(&builder, number, &path).await?;
    let row = download.row.clone();
    let size = row.size;
    let range = headers
        .get(header::RANGE)
        .and_then(|value| value.to_str().ok())
        .map(|value| crate::web::logs::byte_range(value, size));
    let (status, start, end) = match range {
        Some(Some(Ok((start, end)))) => (StatusCode::PARTIAL_CONTENT, start, end),
        Some(Some(Err(()))) => {
            return Ok((
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{size}"))],
            )
                .into_response());
        }
        Some(None) | None => (StatusCode::OK, 0, size),
    };
    let name = path.rsplit('/').next().unwrap_or("artifact").to_string();
    let sha256 = row.sha256.clone();
    let body = Body::from_stream(download.read(start, end));
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    let disposition = format!(
        "attachment; filename=\"{}\"",
        name.replace(['"', '\\'], "_")
    );
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    if let Ok(value) = HeaderValue::from_str(&format!("sha256={sha256}")) {
        headers.insert(header::HeaderName::from_static("x-checksum"), value);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        let value = format!("bytes {start}-{}/{size}", end.saturating_sub(1));
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(header::CONTENT_RANGE, value);
        }
    }
    Ok(response)
}
