//! Step logs over HTTP, never read whole into memory: an HTML page showing the end of a big
//! log (`?tail=BYTES`), the raw log with byte ranges, and a live follow (`?follow=1`: a chunked
//! response that ends when the step ends, fine for `curl -N`). Where a log is (this master's
//! file or a shared store) is `master::logs`'s business; files are served as files.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use tokio::io::AsyncReadExt;
use tower::ServiceExt;

use crate::master::logs::{LOG_CHUNK, Located, LogError, LogSource, StepLog};
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
    /// Where the log is: this master's file, or the shared store.
    located: Located,
    log: StepLog,
}

impl From<LogError> for WebError {
    fn from(err: LogError) -> Self {
        WebError::Internal(err.to_string())
    }
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
    let log = StepLog {
        builder: builder.to_string(),
        number,
        build_id: detail.build.id,
        step,
        step_name: step_row.name.clone(),
        stream: kind,
    };
    let located = source(state).locate(&log).await;
    Ok(LogFile { located, log })
}

fn source(state: &AppState) -> LogSource {
    state.control.logs()
}

/// Whether a followed step may still write its log, asked of the board (memory) rather than
/// the history, because every follower asks at every poll. A step counts as running from before
/// the board reaches it until the board moves past it or the build leaves the board; the build
/// writes out a step's log before either happens.
fn step_may_write(state: &AppState, log: &LogFile) -> bool {
    state
        .control
        .running_build(&log.log.builder, log.log.number)
        .is_some_and(|build| {
            build
                .step_number
                .is_none_or(|current| current <= log.log.step)
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
    let running = step_running(&state, log.log.build_id, log.log.step).await;
    let source = source(&state);
    let size = source.size(&log.log).await?;
    let show = query
        .tail
        .unwrap_or(PAGE_LIMIT)
        .min(size)
        .min(16 * 1024 * 1024);
    let (bytes, _) = source
        .read(&log.log, size - show, usize::try_from(show).unwrap_or(0))
        .await?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let shown = text.len() as u64;
    let mut context = state.base_context(&headers).await;
    context.insert("builder", &builder);
    context.insert("number", &number);
    context.insert("step", &log.log.step_name);
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

/// The raw log, whole or a byte range (a file through `ServeFile`, a log in the shared store
/// through [`serve_stored`]), or followed live with `?follow=1`.
pub async fn raw(
    State(state): State<Arc<AppState>>,
    Path((builder, number, step, stream)): Path<(String, i64, i64, String)>,
    Query(query): Query<LogQuery>,
    request: Request,
) -> Result<Response, WebError> {
    let log = find_log(&state, &builder, number, step, &stream).await?;
    let path = match &log.located {
        Located::File(path) => path.clone(),
        Located::Store if query.follow.is_some() => {
            let stream = source(&state).follow_stored(log.log, 0);
            return Ok(follow_response(Body::from_stream(stream)));
        }
        Located::Store => return serve_stored(&state, &log.log, request.headers()).await,
    };
    if query.follow.is_some() {
        return Ok(follow(state, log, path).await);
    }
    if !path.exists() {
        return Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "").into_response());
    }
    let mut response = tower_http::services::ServeFile::new(&path)
        .oneshot(request)
        .await
        .map_err(|err| WebError::Internal(format!("serving {}: {err}", path.display())))?
        .map(Body::new);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(response)
}

/// A chunked response that sends the log as it grows and ends when the step has ended and
/// everything written was sent.
async fn follow(state: Arc<AppState>, log: LogFile, path: PathBuf) -> Response {
    struct Follow {
        state: Arc<AppState>,
        log: LogFile,
        path: PathBuf,
        file: Option<tokio::fs::File>,
        done: bool,
    }
    let initial = Follow {
        state,
        log,
        path,
        file: None,
        done: false,
    };
    let stream = futures_util::stream::unfold(initial, |mut follow| async move {
        if follow.done {
            return None;
        }
        loop {
            if follow.file.is_none() {
                follow.file = tokio::fs::File::open(&follow.path).await.ok();
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
    follow_response(Body::from_stream(stream))
}

fn follow_response(body: Body) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            // Proxies (nginx) must not buffer a live log.
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        body,
    )
        .into_response()
}

/// A log kept in the shared store, whole or one byte range (`Range: bytes=A-B`, `A-` or
/// `-N`; several ranges get the whole log, as HTTP allows), sent in pieces as it is read.
async fn serve_stored(
    state: &AppState,
    log: &StepLog,
    headers: &HeaderMap,
) -> Result<Response, WebError> {
    let source = source(state);
    let size = source.size(log).await?;
    let range = headers
        .get(header::RANGE)
        .and_then(|value| value.to_str().ok())
        .map(|value| byte_range(value, size));
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
    struct Piece {
        source: LogSource,
        log: StepLog,
        at: u64,
        end: u64,
    }
    let pieces = futures_util::stream::unfold(
        Piece {
            source,
            log: log.clone(),
            at: start,
            end,
        },
        |mut piece| async move {
            if piece.at >= piece.end {
                return None;
            }
            let want = usize::try_from(piece.end - piece.at)
                .unwrap_or(LOG_CHUNK)
                .min(LOG_CHUNK);
            match piece.source.read(&piece.log, piece.at, want).await {
                Ok((bytes, _)) if bytes.is_empty() => None,
                Ok((bytes, _)) => {
                    piece.at += bytes.len() as u64;
                    Some((Ok::<_, LogError>(bytes), piece))
                }
                Err(err) => {
                    piece.at = piece.end;
                    Some((Err(err), piece))
                }
            }
        },
    );
    let mut response = Response::new(Body::from_stream(pieces));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    if status == StatusCode::PARTIAL_CONTENT {
        let value = format!("bytes {start}-{}/{size}", end.saturating_sub(1));
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(header::CONTENT_RANGE, value);
        }
    }
    Ok(response)
}

/// The one byte range `[start, end)` a `Range` header asks of a log of `size` bytes: none
/// for a header this does not answer with a range (several ranges, another unit, nonsense),
/// which then gets the whole log; an error for a range outside the log.
pub(crate) fn byte_range(header: &str, size: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = header.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    let range = if first.is_empty() {
        let suffix: u64 = last.parse().ok()?;
        if suffix == 0 {
            return Some(Err(()));
        }
        (size.saturating_sub(suffix), size)
    } else {
        let start: u64 = first.parse().ok()?;
        let end = if last.is_empty() {
            size
        } else {
            let last: u64 = last.parse().ok()?;
            if last < start {
                return None;
            }
            last.saturating_add(1).min(size)
        };
        (start, end)
    };
    if range.0 >= size {
        return Some(Err(()));
    }
    Some(Ok(range))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use tower::ServiceExt;

    use super::byte_range;
    use crate::master::config::Config;
    use crate::master::control::{Control, Storage};
    use crate::master::logs::testing::running_build;
    use crate::master::logs::{StoreShipper, log_file_name};
    use crate::master::sessions::Sessions;
    use crate::proto::StreamKind;
    use crate::status::BuildResult;
    use crate::web::{AppState, router};

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test";

    async fn body_of(response: axum::response::Response) -> Vec<u8> {
        axum::body::to_bytes(response.into_body(), 64 << 20)
            .await
            .expect("the body")
            .to_vec()
    }

    /// A master that never ran the build serves its log from the shared store alone: the
    /// page, the raw log whole and in a range across a chunk border, and a live follow that
    /// ends with the step.
    #[tokio::test]
    async fn another_masters_log_is_served_from_the_shared_store() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, _, owner, build_id, step_id) = running_build(dir.path()).await;
        // What the master running the build wrote and shipped (two chunks and a bit).
        let writer = dir.path().join("writer");
        std::fs::create_dir_all(&writer).expect("dir");
        let path = writer.join(log_file_name(1, "make test", StreamKind::Stdout));
        let text: Vec<u8> = (0..140_000).map(|n| b"0123456789\n"[n % 11]).collect();
        std::fs::write(&path, &text).expect("write");
        let mut shipper = StoreShipper::new(Arc::clone(&store), owner.clone(), build_id, 1);
        shipper.grew(StreamKind::Stdout, &path);
        shipper
            .ship(&[(StreamKind::Stdout, text.len() as u64)], false)
            .await;

        let reader_dir = dir.path().join("reader");
        let config = Config::from_toml(
            &format!(
                "[master]\nname = \"b\"\n[sshd]\nlisten = \"127.0.0.1:2222\"\n\
                 authorized_keys = [\"authorized_keys.d/%u\"]\n\
                 [[slave]]\nname = \"s1\"\npublic_key = \"{KEY}\"\n\
                 [[builder]]\nname = \"linux\"\nslaves = [\"s1\"]\nrepo = \"/r\"\n"
            ),
            &reader_dir,
        )
        .expect("valid config");
        let reader_owner = store
            .register_master(
                "b",
                &crate::master::store::MasterInfo::default(),
                std::time::Duration::from_secs(60),
            )
            .await
            .expect("registered");
        let (inbox, _inbox) = tokio::sync::mpsc::channel(8);
        let (changes, _changes) = tokio::sync::mpsc::channel(8);
        let control = Arc::new(Control::new(
            Arc::new(config),
            "SHA256:test".into(),
            Storage {
                sessions: Sessions::load(Arc::clone(&store)).await,
                store: Arc::clone(&store),
                owner: reader_owner,
                journal: None,
            },
            "http://127.0.0.1:8010".into(),
            inbox,
            changes,
        ));
        let app = router(Arc::new(AppState::new(control).expect("templates")));
        let get = |uri: &str, range: Option<&str>| {
            let mut request = Request::get(uri);
            if let Some(range) = range {
                request = request.header(header::RANGE, range);
            }
            app.clone()
                .oneshot(request.body(Body::empty()).expect("request"))
        };
        let raw = "/builders/linux/builds/1/steps/1/logs/stdout/raw";

        let response = get(raw, None).await.expect("answered");
        assert_eq!(response.status(), StatusCode::OK);
        assert!(body_of(response).await == text, "the whole log");
        let response = get(raw, Some("bytes=65530-65545")).await.expect("answered");
        assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(
            response.headers()[header::CONTENT_RANGE],
            "bytes 65530-65545/140000"
        );
        assert_eq!(body_of(response).await, text[65530..65546]);
        let response = get(raw, Some("bytes=200000-")).await.expect("answered");
        assert_eq!(response.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        let response = get("/builders/linux/builds/1/steps/1/logs/stdout?tail=20", None)
            .await
            .expect("answered");
        assert_eq!(response.status(), StatusCode::OK);
        let page = String::from_utf8(body_of(response).await).expect("utf-8");
        let end = String::from_utf8_lossy(&text[text.len() - 20..]).into_owned();
        assert!(page.contains(&end), "the log's end on the page: {page}");
        // The build's page links the stream.
        let response = get("/builders/linux/builds/1", None)
            .await
            .expect("answered");
        let page = String::from_utf8(body_of(response).await).expect("utf-8");
        assert!(page.contains("/steps/1/logs/stdout"), "a link to the log");
        assert!(
            !page.contains("/steps/1/logs/stderr"),
            "no link to a log without output"
        );

        // Followed live: the step ends a little later, and the follow with it.
        let finisher = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            store
                .finish_step(&owner, step_id, BuildResult::Success, "ok")
                .await
        });
        let followed = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            let response = get(&format!("{raw}?follow=1"), None)
                .await
                .expect("answered");
            body_of(response).await
        })
        .await
        .expect("the follow ends with the step");
        finisher.await.expect("task").expect("finished");
        assert!(followed == text, "the followed log is whole");
    }

    #[test]
    fn byte_ranges_of_a_stored_log() {
        assert_eq!(byte_range("bytes=0-9", 100), Some(Ok((0, 10))));
        assert_eq!(byte_range("bytes=90-", 100), Some(Ok((90, 100))));
        assert_eq!(byte_range("bytes=-10", 100), Some(Ok((90, 100))));
        assert_eq!(byte_range("bytes=95-200", 100), Some(Ok((95, 100))));
        assert_eq!(byte_range("bytes=-500", 100), Some(Ok((0, 100))));
        assert_eq!(byte_range("bytes=100-", 100), Some(Err(())));
        assert_eq!(byte_range("bytes=0-1,5-6", 100), None);
        assert_eq!(byte_range("items=0-1", 100), None);
        assert_eq!(byte_range("bytes=x-1", 100), None);
    }
}
