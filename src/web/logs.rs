//! Step logs over HTTP, straight from the log files and never read whole into memory: an HTML
//! page showing the end of a big log (`?tail=BYTES`), the raw file with byte ranges, and a live
//! follow (`?follow=1`: a chunked response that ends when the step ends, fine for `curl -N`).

use std::io::SeekFrom;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tower::ServiceExt;

use crate::master::build::log_file_name;
use crate::proto::StreamKind;
use crate::web::{AppState, WebError};

/// Logs up to this size are shown whole on the page; bigger ones show their end.
const PAGE_LIMIT: u64 = 256 * 1024;
/// How often a followed log is checked for growth: with the slave's and the master's output
/// buffering (5 ms and 10 ms at most), a line a step prints reaches a follower within about
/// 45 ms. Only followers of a running step poll, and a poll reads the board, not the history.
const FOLLOW_POLL: Duration = Duration::from_millis(30);

#[derive(serde::Deserialize)]
pub struct LogQuery {
    tail: Option<u64>,
    follow: Option<String>,
}

struct LogFile {
    path: PathBuf,
    step_name: String,
    build_id: i64,
    step_number: i64,
    builder: String,
    number: i64,
}

async fn find_log(
    state: &AppState,
    builder: &str,
    number: i64,
    step: i64,
    stream: &str,
) -> Result<LogFile, WebError> {
    let Some(kind) = StreamKind::from_file_extension(stream) else {
        return Err(WebError::NotFound(format!("no log stream '{stream}'")));
    };
    let detail = state.load_build(builder, number).await?;
    let step_row = detail
        .steps
        .iter()
        .find(|row| row.number == step)
        .ok_or_else(|| WebError::NotFound(format!("{builder} #{number} has no step {step}")))?;
    let path = state
        .control
        .logs_dir()
        .join(builder)
        .join(number.to_string())
        .join(log_file_name(step, &step_row.name, kind));
    Ok(LogFile {
        path,
        step_name: step_row.name.clone(),
        build_id: detail.build.id,
        step_number: step,
        builder: builder.to_string(),
        number,
    })
}

/// Whether a followed step may still write its log, asked of the board (memory) rather than
/// the history, because every follower asks at every poll. A step counts as running from before
/// the board reaches it until the board moves past it or the build leaves the board; the build
/// writes out a step's log before either happens.
fn step_may_write(state: &AppState, log: &LogFile) -> bool {
    state
        .control
        .running_build(&log.builder, log.number)
        .is_some_and(|build| {
            build
                .step_number
                .is_none_or(|current| current <= log.step_number)
        })
}

async fn step_running(state: &AppState, build_id: i64, step: i64) -> bool {
    state
        .control
        .store()
        .step_running(build_id, step)
        .await
        .unwrap_or(false)
}

/// The log page: the whole log if small, else its last `tail` bytes.
pub async fn page(
    State(state): State<Arc<AppState>>,
    Path((builder, number, step, stream)): Path<(String, i64, i64, String)>,
    Query(query): Query<LogQuery>,
    headers: axum::http::HeaderMap,
) -> Result<Response, WebError> {
    let log = find_log(&state, &builder, number, step, &stream).await?;
    let running = step_running(&state, log.build_id, log.step_number).await;
    let (size, text) = match tokio::fs::File::open(&log.path).await {
        Ok(mut file) => {
            let size = file.metadata().await?.len();
            let show = query
                .tail
                .unwrap_or(PAGE_LIMIT)
                .min(size)
                .min(16 * 1024 * 1024);
            file.seek(SeekFrom::Start(size - show)).await?;
            let mut bytes = Vec::with_capacity(show as usize);
            (&mut file).take(show).read_to_end(&mut bytes).await?;
            (size, String::from_utf8_lossy(&bytes).into_owned())
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => (0, String::new()),
        Err(err) => return Err(err.into()),
    };
    let shown = text.len() as u64;
    let mut context = state.base_context(&headers).await;
    context.insert("builder", &builder);
    context.insert("number", &number);
    context.insert("step", &log.step_name);
    context.insert("stream", &stream);
    context.insert("size", &size);
    context.insert("shown", &shown);
    context.insert("truncated", &(shown < size));
    context.insert("more", &(shown.saturating_mul(4)));
    context.insert("running", &running);
    context.insert(
        "raw_url",
        &format!("/builders/{builder}/builds/{number}/steps/{step}/logs/{stream}/raw"),
    );
    context.insert("text", &text);
    Ok(Html(state.render("log.html", &context)?).into_response())
}

/// The raw log: with byte ranges (via `ServeFile`), or followed live with `?follow=1`.
pub async fn raw(
    State(state): State<Arc<AppState>>,
    Path((builder, number, step, stream)): Path<(String, i64, i64, String)>,
    Query(query): Query<LogQuery>,
    request: Request,
) -> Result<Response, WebError> {
    let log = find_log(&state, &builder, number, step, &stream).await?;
    if query.follow.is_some() {
        return Ok(follow(state, log).await);
    }
    if !log.path.exists() {
        return Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "").into_response());
    }
    let mut response = tower_http::services::ServeFile::new(&log.path)
        .oneshot(request)
        .await
        .map_err(|err| WebError::Internal(format!("serving {}: {err}", log.path.display())))?
        .map(Body::new);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(response)
}

/// A chunked response that sends the log as it grows and ends when the step has ended and
/// everything written was sent.
async fn follow(state: Arc<AppState>, log: LogFile) -> Response {
    struct Follow {
        state: Arc<AppState>,
        log: LogFile,
        file: Option<tokio::fs::File>,
        done: bool,
    }
    let initial = Follow {
        state,
        log,
        file: None,
        done: false,
    };
    let stream = futures_util::stream::unfold(initial, |mut follow| async move {
        if follow.done {
            return None;
        }
        loop {
            if follow.file.is_none() {
                follow.file = tokio::fs::File::open(&follow.log.path).await.ok();
            }
            if let Some(file) = follow.file.as_mut() {
                let mut buffer = vec![0u8; 64 * 1024];
                match file.read(&mut buffer).await {
                    Ok(0) => {}
                    Ok(count) => {
                        buffer.truncate(count);
                        return Some((Ok::<_, std::io::Error>(buffer), follow));
                    }
                    Err(err) => {
                        return Some((
                            Err(err),
                            Follow {
                                done: true,
                                ..follow
                            },
                        ));
                    }
                }
            }
            // Nothing new: finished when the step has ended (one more read catches its tail).
            let running = step_may_write(&follow.state, &follow.log);
            if !running {
                if let Some(file) = follow.file.as_mut() {
                    let mut rest = Vec::new();
                    if file.read_to_end(&mut rest).await.is_ok() && !rest.is_empty() {
                        return Some((
                            Ok(rest),
                            Follow {
                                done: true,
                                ..follow
                            },
                        ));
                    }
                }
                return None;
            }
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    });
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            // Proxies (nginx) must not buffer a live log.
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}
