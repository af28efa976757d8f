//! Test results on the web (issue 26): the summary and failures on the build page, a build's
//! tests (paged, worst first, and its slowest), a test's history (a strip of its last results
//! and its duration trend), a builder's flakiest tests, and the JSON of
//! `/api/builds/ID/tests` and `/api/tests`. What a failure is (new, known, flaky) is
//! `master::test_results`; this renders it.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Html;
use serde::{Deserialize, Serialize};

use crate::master::store::{BuildDetail, BuildRef, BuildRow, TestCase, TestOrder, TestOutcome};
use crate::master::test_results::classify::Classification;
use crate::master::test_results::report::{self, TestReport};
use crate::status::BuildResult;
use crate::web::views::{TrendView, trend_view};
use crate::web::{AppState, WebError};

/// Test cases per page of `/builders/B/builds/N/tests`.
pub const PAGE_SIZE: i64 = 200;
/// How many results a test's history shows.
pub const HISTORY_LENGTH: i64 = 50;
/// The builds the flakiest tests of a builder are found in.
pub const FLAKY_WINDOW: i64 = 30;
/// The most cases one `/api/builds/ID/tests` answer lists.
pub const API_MAX_LIMIT: i64 = 100_000;

/// The build's report, read for its page.
pub async fn build_report(state: &AppState, detail: &BuildDetail) -> Result<TestReport, WebError> {
    Ok(report::of_build(
        state.control.store(),
        detail.build.id,
        detail.build.number,
        detail.branch.as_deref(),
        detail.revision.as_deref(),
    )
    .await?)
}

/// One test case as the pages show it.
#[derive(Debug, Clone, Serialize)]
pub struct CaseView {
    pub suite: String,
    pub name: String,
    pub result: &'static str,
    pub css: &'static str,
    pub duration: String,
    pub message: String,
    pub new: bool,
    pub failing_since: Option<i64>,
    pub flaky: bool,
    /// Its step's output.
    pub log_url: String,
    /// Its history page.
    pub history_url: String,
}

fn css(result: TestOutcome) -> &'static str {
    match result {
        TestOutcome::Passed => "success",
        TestOutcome::Failed => "failure",
        TestOutcome::Error => "exception",
        TestOutcome::Skipped => "skipped",
    }
}

fn duration_text(ms: Option<i64>) -> String {
    match ms {
        None => String::new(),
        Some(ms) if ms < 1000 => format!("{ms} ms"),
        Some(ms) => format!("{:.1} s", ms as f64 / 1000.0),
    }
}

/// A query-string value, escaped.
fn query_value(text: &str) -> String {
    let mut escaped = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            escaped.push(byte as char);
        } else {
            escaped.push_str(&format!("%{byte:02X}"));
        }
    }
    escaped
}

fn history_url(builder: &str, suite: &str, name: &str) -> String {
    format!(
        "/builders/{}/tests?name={}&suite={}",
        query_value(builder),
        query_value(name),
        query_value(suite)
    )
}

fn case_view(
    builder: &str,
    number: i64,
    case: &TestCase,
    class: Option<Classification>,
) -> CaseView {
    let class = class.unwrap_or_default();
    CaseView {
        suite: case.suite.clone(),
        name: case.name.clone(),
        result: case.result.as_str(),
        css: css(case.result),
        duration: duration_text(case.duration_ms),
        message: case.message.clone(),
        new: class.new,
        failing_since: class.failing_since,
        flaky: class.flaky,
        log_url: format!(
            "/builders/{builder}/builds/{number}/steps/{}/logs/stdout",
            case.step
        ),
        history_url: history_url(builder, &case.suite, &case.name),
    }
}

/// What the build page shows of its tests: the summary line and each failure.
#[derive(Debug, Clone, Serialize)]
pub struct SummaryView {
    pub line: String,
    pub failures: Vec<CaseView>,
    /// More failures than are listed.
    pub more_failures: i64,
    pub tests_url: String,
}

pub fn summary_view(builder: &str, number: i64, report: &TestReport) -> Option<SummaryView> {
    if report.is_empty() {
        return None;
    }
    Some(SummaryView {
        line: report.summary(),
        failures: report
            .failures
            .iter()
            .map(|(case, class)| case_view(builder, number, case, Some(*class)))
            .collect(),
        more_failures: report.counts.failures() - report.failures.len() as i64,
        tests_url: format!("/builders/{builder}/builds/{number}/tests"),
    })
}

#[derive(Debug, Deserialize)]
pub struct PageQuery {
    #[serde(default)]
    page: Option<i64>,
}

/// `/builders/B/builds/N/tests`: every test case of the build, worst first, paged; the
/// slowest ten; the builder's flakiest tests.
pub async fn build_tests_page(
    State(state): State<Arc<AppState>>,
    Path((builder, number)): Path<(String, i64)>,
    Query(query): Query<PageQuery>,
    headers: HeaderMap,
) -> Result<Html<String>, WebError> {
    let detail = state.load_build(&builder, number).await?;
    let report = build_report(&state, &detail).await?;
    let classes = report.classification();
    let store = state.control.store();
    let page = query.page.unwrap_or(1).max(1);
    let pages = ((report.counts.total() + PAGE_SIZE - 1) / PAGE_SIZE).max(1);
    let cases = store
        .build_tests(
            detail.build.id,
            TestOrder::WorstFirst,
            false,
            (page - 1).saturating_mul(PAGE_SIZE),
            PAGE_SIZE,
        )
        .await?;
    let view = |case: &TestCase| {
        let class = classes
            .get(&(case.suite.as_str(), case.name.as_str()))
            .copied();
        case_view(&builder, number, case, class)
    };
    let cases: Vec<CaseView> = cases.iter().map(view).collect();
    let slowest: Vec<CaseView> = store
        .build_tests(detail.build.id, TestOrder::Slowest, false, 0, 10)
        .await?
        .iter()
        .filter(|case| case.duration_ms.is_some())
        .map(view)
        .collect();
    let flaky = store.flaky_tests(&builder, FLAKY_WINDOW, 10).await?;
    let flaky: Vec<_> = flaky
        .iter()
        .map(|test| {
            serde_json::json!({
                "suite": test.suite, "name": test.name, "failed": test.failed,
                "passed": test.passed, "url": history_url(&builder, &test.suite, &test.name),
            })
        })
        .collect();
    let mut context = state.base_context(&headers).await;
    context.insert("test_builder", &builder);
    context.insert("number", &number);
    context.insert("summary", &report.summary());
    context.insert("cases", &cases);
    context.insert("slowest", &slowest);
    context.insert("flaky", &flaky);
    context.insert("flaky_window", &FLAKY_WINDOW);
    context.insert("page", &page);
    context.insert("pages", &pages);
    Ok(Html(state.render("tests.html", &context)?))
}

#[derive(Debug, Deserialize)]
pub struct TestQuery {
    name: Option<String>,
    suite: Option<String>,
}

/// One cell of a test's history strip.
#[derive(Debug, Clone, Serialize)]
struct Cell {
    number: i64,
    css: &'static str,
    title: String,
    url: String,
}

/// `/builders/B/tests?name=N[&suite=S]`: a test's last results and duration trend; without a
/// name, the builder's flakiest tests.
pub async fn test_page(
    State(state): State<Arc<AppState>>,
    Path(builder): Path<String>,
    Query(query): Query<TestQuery>,
    headers: HeaderMap,
) -> Result<Html<String>, WebError> {
    let store = state.control.store();
    let mut context = state.base_context(&headers).await;
    context.insert("test_builder", &builder);
    let Some(name) = query.name.filter(|name| !name.is_empty()) else {
        let flaky = store.flaky_tests(&builder, FLAKY_WINDOW, 50).await?;
        let flaky: Vec<_> = flaky
            .iter()
            .map(|test| {
                serde_json::json!({
                    "suite": test.suite, "name": test.name, "failed": test.failed,
                    "passed": test.passed, "url": history_url(&builder, &test.suite, &test.name),
                })
            })
            .collect();
        context.insert("flaky", &flaky);
        context.insert("flaky_window", &FLAKY_WINDOW);
        return Ok(Html(state.render("test.html", &context)?));
    };
    let suite = query.suite.filter(|suite| !suite.is_empty());
    let history = store
        .test_history(&builder, suite.clone(), &name, HISTORY_LENGTH)
        .await?;
    let mut cells: Vec<Cell> = history
        .iter()
        .map(|row| Cell {
            number: row.number,
            css: css(row.result),
            title: format!(
                "#{} {} {}",
                row.number,
                row.result,
                duration_text(row.duration_ms)
            ),
            url: format!("/builders/{builder}/builds/{}", row.number),
        })
        .collect();
    cells.reverse();
    // The builder page's trend, with a test's duration for a build's.
    let rows: Vec<BuildRow> = history
        .iter()
        .filter_map(|row| {
            let ms = row.duration_ms?;
            Some(BuildRow {
                id: row.build_id,
                builder: builder.clone(),
                number: row.number,
                slave: String::new(),
                started_at: 0.0,
                finished_at: Some(ms as f64 / 1000.0),
                result: Some(match row.result {
                    TestOutcome::Passed => BuildResult::Success,
                    TestOutcome::Failed => BuildResult::Failure,
                    TestOutcome::Error => BuildResult::Exception,
                    TestOutcome::Skipped => BuildResult::Warnings,
                }),
                reason: None,
            })
        })
        .collect();
    let trend: Option<TrendView> = trend_view(&rows);
    context.insert("name", &name);
    context.insert("suite", &suite.unwrap_or_default());
    context.insert("cells", &cells);
    context.insert("trend", &trend);
    Ok(Html(state.render("test.html", &context)?))
}

// ---- JSON ---------------------------------------------------------------------------------

/// `/api/builds/ID/tests`, as the contract spells it.
#[derive(Debug, Serialize)]
pub struct ApiBuildTests {
    pub summary: ApiSummary,
    pub tests: Vec<ApiTest>,
}

#[derive(Debug, Serialize)]
pub struct ApiSummary {
    pub passed: i64,
    /// Failed and error together.
    pub failed: i64,
    pub new: i64,
    pub skipped: i64,
}

#[derive(Debug, Serialize)]
pub struct ApiTest {
    pub suite: String,
    pub name: String,
    pub result: TestOutcome,
    /// Seconds; null when the report said nothing.
    pub duration: Option<f64>,
    pub message: String,
    pub new: bool,
    pub failing_since: Option<i64>,
    pub flaky: bool,
}

#[derive(Debug, Deserialize)]
pub struct ApiPage {
    offset: Option<i64>,
    limit: Option<i64>,
}

pub async fn api_build_tests(
    State(state): State<Arc<AppState>>,
    Path(id): Path<i64>,
    Query(page): Query<ApiPage>,
) -> Result<Json<ApiBuildTests>, WebError> {
    let detail = state
        .control
        .store()
        .build(BuildRef::Id(id))
        .await?
        .ok_or_else(|| WebError::NotFound(format!("no build with id {id}")))?;
    let report = build_report(&state, &detail).await?;
    let classes = report.classification();
    let offset = page.offset.unwrap_or(0).max(0);
    let limit = page.limit.unwrap_or(API_MAX_LIMIT).clamp(0, API_MAX_LIMIT);
    let cases = state
        .control
        .store()
        .build_tests(id, TestOrder::WorstFirst, false, offset, limit)
        .await?;
    let tests = cases
        .into_iter()
        .map(|case| {
            let class = classes
                .get(&(case.suite.as_str(), case.name.as_str()))
                .copied()
                .unwrap_or_default();
            ApiTest {
                duration: case.duration_ms.map(|ms| ms as f64 / 1000.0),
                suite: case.suite,
                name: case.name,
                result: case.result,
                message: case.message,
                new: class.new,
                failing_since: class.failing_since,
                flaky: class.flaky,
            }
        })
        .collect();
    Ok(Json(ApiBuildTests {
        summary: ApiSummary {
            passed: report.counts.passed,
            failed: report.counts.failures(),
            new: report.new_failures().count() as i64,
            skipped: report.counts.skipped,
        },
        tests,
    }))
}

#[derive(Debug, Deserialize)]
pub struct ApiTestQuery {
    builder: Option<String>,
    name: Option<String>,
    suite: Option<String>,
    limit: Option<i64>,
}

/// `/api/tests?builder=B&name=N`: one result per build, newest first.
#[derive(Debug, Serialize)]
pub struct ApiTestRuns {
    pub builder: String,
    pub name: String,
    pub results: Vec<ApiTestResult>,
}

#[derive(Debug, Serialize)]
pub struct ApiTestResult {
    pub build: i64,
    pub build_id: i64,
    pub suite: String,
    pub result: TestOutcome,
    pub duration: Option<f64>,
    pub branch: Option<String>,
    pub revision: Option<String>,
}

pub async fn api_tests(
    State(state): State<Arc<AppState>>,
    Query(query): Query<ApiTestQuery>,
) -> Result<Json<ApiTestRuns>, WebError> {
    let (Some(builder), Some(name)) = (query.builder, query.name) else {
        return Err(WebError::BadRequest(
            "give the test: /api/tests?builder=BUILDER&name=NAME[&suite=SUITE]".into(),
        ));
    };
    let limit = query.limit.unwrap_or(HISTORY_LENGTH).clamp(1, 1000);
    let history = state
        .control
        .store()
        .test_history(
            &builder,
            query.suite.filter(|s| !s.is_empty()),
            &name,
            limit,
        )
        .await?;
    Ok(Json(ApiTestRuns {
        builder,
        name,
        results: history
            .into_iter()
            .map(|row| ApiTestResult {
                build: row.number,
                build_id: row.build_id,
                suite: row.suite,
                result: row.result,
                duration: row.duration_ms.map(|ms| ms as f64 / 1000.0),
                branch: row.branch,
                revision: row.revision,
            })
            .collect(),
    }))
}
