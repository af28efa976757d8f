//! The glanceable parts of the pages (progress bars, duration trends, the waterfall's time
//! axis, the tab title), rendered from typed views with known data through the real templates.

use crate::master::store::BuildRow;
use crate::status::{BuildResult, RunningBuild};
use crate::web::TEMPLATES;
use crate::web::views::{
    self, BuildView, BuilderView, ProgressView, StepView, progress_view, status_light, trend_view,
    waterfall_view,
};

fn templates() -> tera::Tera {
    let mut templates = tera::Tera::new();
    templates
        .add_raw_templates(TEMPLATES.iter().copied())
        .expect("templates parse");
    templates.autoescape_on(vec![".html"]);
    templates
}

/// What base.html needs, with a light for `results`.
fn base_context(results: &[Option<BuildResult>]) -> tera::Context {
    let mut context = tera::Context::new();
    context.insert("master_name", "example");
    context.insert("host_key", "SHA256:x");
    context.insert("user", &Option::<String>::None);
    context.insert("light", &status_light("example", results));
    context
}

fn running(expected: Option<f64>) -> RunningBuild {
    RunningBuild {
        builder: "linux".into(),
        number: 7,
        slave: "s1".into(),
        step: Some("test".into()),
        step_number: Some(3),
        started_at: 1000.0,
        expected_secs: expected,
    }
}

fn render_progress(progress: &ProgressView) -> String {
    let mut context = tera::Context::new();
    context.insert("progress", progress);
    templates()
        .render("progress.html", &context)
        .expect("progress renders")
}

/// The `<progress ...>` start tag of a rendered bar.
fn progress_tag(html: &str) -> &str {
    let start = html.find("<progress").expect("a <progress> element");
    let end = html[start..].find('>').expect("the tag ends") + start;
    &html[start..=end]
}

#[test]
fn a_build_half_done_fills_half_the_bar() {
    let progress = progress_view(&running(Some(100.0)), Some(5), 1050.0);
    let html = render_progress(&progress);
    assert_eq!(progress_tag(&html), r#"<progress value="50" max="100">"#);
    assert!(html.contains("step 3/5 (test) · 50s of ~1m40s"), "{html}");
}

#[test]
fn past_the_estimate_the_bar_says_overdue_and_is_never_full() {
    let progress = progress_view(&running(Some(100.0)), Some(5), 1120.0);
    let html = render_progress(&progress);
    assert_eq!(
        progress_tag(&html),
        r#"<progress class="overdue">"#,
        "indeterminate: no value, so it cannot look finished"
    );
    assert!(html.contains("step 3/5 (test) · overdue by 20s"), "{html}");
    // Just before the estimate the value stays below max.
    let almost = progress_view(&running(Some(100.0)), Some(5), 1099.9);
    assert_eq!(
        progress_tag(&render_progress(&almost)),
        r#"<progress value="99" max="100">"#
    );
}

#[test]
fn without_an_estimate_the_bar_is_indeterminate() {
    let progress = progress_view(&running(None), Some(5), 1070.0);
    let html = render_progress(&progress);
    assert_eq!(progress_tag(&html), "<progress>");
    assert!(
        html.contains("step 3/5 (test) · 1m10s (no estimate yet)"),
        "{html}"
    );
}

fn row(number: i64, result: Option<BuildResult>, started_at: f64, secs: f64) -> BuildRow {
    BuildRow {
        id: number,
        builder: "linux".into(),
        number,
        slave: "s1".into(),
        started_at,
        finished_at: result.map(|_| started_at + secs),
        result,
        reason: None,
    }
}

#[test]
fn the_trend_has_one_point_per_finished_build_coloured_by_result() {
    let rows = vec![
        row(4, None, 400.0, 0.0),
        row(3, Some(BuildResult::Success), 300.0, 50.0),
        row(2, Some(BuildResult::Failure), 200.0, 60.0),
        row(1, Some(BuildResult::Success), 100.0, 40.0),
    ];
    let trend = trend_view(&rows).expect("finished builds make a trend");
    let mut context = tera::Context::new();
    context.insert("trend", &trend);
    let svg = templates()
        .render("trend.html", &context)
        .expect("trend renders");
    assert_eq!(
        svg.matches("<circle ").count(),
        3,
        "running #4 is not plotted: {svg}"
    );
    assert_eq!(svg.matches(r#"class="pt success""#).count(), 2, "{svg}");
    assert_eq!(svg.matches(r#"class="pt failure""#).count(), 1, "{svg}");
    assert!(svg.contains("<title>#2 failure 1m00s</title>"), "{svg}");
    // Oldest on the left, and the longest build is the highest point (smallest y).
    let xs: Vec<f64> = trend
        .points
        .iter()
        .map(|p| p.x.parse().expect("x"))
        .collect();
    assert!(xs.windows(2).all(|pair| pair[0] < pair[1]), "{xs:?}");
    let ys: Vec<f64> = trend
        .points
        .iter()
        .map(|p| p.y.parse().expect("y"))
        .collect();
    assert!(ys[1] < ys[0] && ys[1] < ys[2], "{ys:?}");
}

#[test]
fn the_trend_keeps_the_newest_fifty() {
    let rows: Vec<BuildRow> = (1..=60)
        .map(|number| {
            row(
                number,
                Some(BuildResult::Success),
                number as f64 * 100.0,
                10.0,
            )
        })
        .collect();
    let trend = trend_view(&rows).expect("a trend");
    assert_eq!(trend.points.len(), views::TREND_BUILDS);
    assert_eq!((trend.first_number, trend.last_number), (11, 60));
}

fn step(name: &str, started_at: f64, finished_at: f64) -> StepView {
    StepView {
        number: 1,
        name: name.into(),
        result: Some(BuildResult::Success),
        result_text: "success".into(),
        css: "success".into(),
        summary: String::new(),
        started_at,
        finished_at: Some(finished_at),
        took: "10s".into(),
        logs: Vec::new(),
    }
}

fn build(builder: &str, number: i64, started_at: f64, finished_at: f64) -> BuildView {
    BuildView {
        id: number,
        builder: builder.into(),
        number,
        slave: "s1".into(),
        result: Some(BuildResult::Success),
        result_text: "success".into(),
        css: "success".into(),
        reason: None,
        running: false,
        started_at,
        finished_at: Some(finished_at),
        started: "then".into(),
        took: "1m".into(),
        url: format!("/builders/{builder}/builds/{number}"),
        steps: vec![
            step("checkout", started_at, started_at + 10.0),
            step("test", started_at + 10.0, finished_at),
        ],
        progress: None,
    }
}

fn builder(name: &str, builds: Vec<BuildView>, last: Option<BuildResult>) -> BuilderView {
    BuilderView {
        name: name.into(),
        state: "idle".into(),
        state_class: "idle".into(),
        running: Vec::new(),
        progress: Vec::new(),
        queued: 0,
        waiting_for_lock: None,
        last: String::new(),
        last_css: String::new(),
        last_result: last,
        trend: None,
        slaves: Vec::new(),
        builds,
    }
}

/// The `data-number`s of a lane's boxes and their `top`s, in page order.
fn lane_boxes(html: &str, builder: &str) -> Vec<(i64, f64)> {
    let lane = html
        .split(&format!("data-builder=\"{builder}\""))
        .nth(1)
        .expect("the builder's lane");
    let lane = &lane[..lane.find("</td>").expect("the lane ends")];
    lane.split("class=\"wf-build ")
        .skip(1)
        .map(|part| {
            let number = part
                .split("data-number=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .and_then(|n| n.parse().ok())
                .expect("a number");
            let top = part
                .split("top: ")
                .nth(1)
                .and_then(|rest| rest.split("px").next())
                .and_then(|t| t.parse().ok())
                .expect("a top");
            (number, top)
        })
        .collect()
}

#[test]
fn the_waterfall_puts_builders_side_by_side_newest_first() {
    let builders = vec![
        builder(
            "linux",
            vec![
                build("linux", 1, 1000.0, 1100.0),
                build("linux", 3, 3000.0, 3100.0),
                build("linux", 2, 2000.0, 2100.0),
            ],
            Some(BuildResult::Success),
        ),
        builder("mac", vec![build("mac", 1, 2050.0, 2500.0)], None),
    ];
    let view = waterfall_view(&builders, (0.0, 4000.0), 4000.0, 24, true);
    let mut context = base_context(&[]);
    context.insert("waterfall", &view);
    context.insert("changes", &Vec::<views::ChangeView>::new());
    let html = templates()
        .render("waterfall.html", &context)
        .expect("waterfall renders");
    let linux_column = html.find("<th class=\"wf-builder\"><a href=\"/builders/linux\">");
    let mac_column = html.find("<th class=\"wf-builder\"><a href=\"/builders/mac\">");
    assert!(
        matches!((linux_column, mac_column), (Some(linux), Some(mac)) if linux < mac),
        "builders are columns in config order: {html}"
    );
    let linux = lane_boxes(&html, "linux");
    assert_eq!(
        linux.iter().map(|(number, _)| *number).collect::<Vec<_>>(),
        vec![3, 2, 1],
        "newest first"
    );
    assert!(
        linux.windows(2).all(|pair| pair[0].1 < pair[1].1),
        "{linux:?}"
    );
    // One time axis: mac #1 (2050–2500) sits between linux #3 and linux #2's end.
    let mac = lane_boxes(&html, "mac");
    assert_eq!(mac.len(), 1);
    assert!(
        linux[0].1 < mac[0].1 && mac[0].1 < linux[1].1,
        "{linux:?} {mac:?}"
    );
    assert_eq!(
        html.matches("class=\"wf-step ").count(),
        8,
        "each box has its steps"
    );
    assert!(html.contains("href=\"/builders/linux/builds/3\">#3</a> success <span"));
    assert!(html.contains("id=\"older\" ") || html.contains("id=\"older\">"));
    assert!(
        !html.contains("id=\"newer\""),
        "the newest page has no newer link"
    );
}

#[test]
fn the_tab_title_counts_failing_builders() {
    let failing = [
        Some(BuildResult::Failure),
        Some(BuildResult::Success),
        None,
        Some(BuildResult::Exception),
    ];
    let mut context = base_context(&failing);
    context.insert("heading", "h");
    context.insert("message", "m");
    let html = templates()
        .render("message.html", &context)
        .expect("renders");
    assert!(
        html.contains("<title>✘ 2 failing · example — h</title>"),
        "{html}"
    );
    assert!(
        html.contains("fill=&#x27;%23dd4444&#x27;") || html.contains("%23dd4444"),
        "{html}"
    );
    let good = status_light(
        "example",
        &[
            Some(BuildResult::Success),
            Some(BuildResult::Warnings),
            None,
        ],
    );
    assert_eq!(good.title, "✔ example");
    assert!(good.favicon.contains("%2388dd44"));
}

#[test]
fn the_steps_of_a_short_build_share_its_box_without_overprinting() {
    // A 3-second build of four steps: on the time axis each would be a pixel or two high.
    let mut short = build("linux", 1, 1000.0, 1003.0);
    short.steps = ["checkout", "configure", "compile", "test"]
        .iter()
        .enumerate()
        .map(|(index, name)| {
            step(
                name,
                1000.0 + index as f64 * 0.75,
                1000.75 + index as f64 * 0.75,
            )
        })
        .collect();
    let view = waterfall_view(
        &[builder("linux", vec![short], None)],
        (0.0, 4000.0),
        4000.0,
        24,
        true,
    );
    let steps = &view.columns[0].boxes[0].steps;
    let box_height: f64 = view.columns[0].boxes[0].height.parse().expect("px");
    let spans: Vec<(f64, f64)> = steps
        .iter()
        .map(|step| {
            let top: f64 = step.top.parse().expect("px");
            let height: f64 = step.height.parse().expect("px");
            (top, top + height)
        })
        .collect();
    assert!(steps.iter().all(|step| step.labelled), "{steps:?}");
    assert!(
        spans.iter().all(|(_, bottom)| *bottom <= box_height + 1.0),
        "inside the box: {spans:?} in {box_height}"
    );
    // Oldest at the bottom, and no two overlap.
    let mut by_top = spans.clone();
    by_top.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert_eq!(by_top.first(), spans.last(), "{spans:?}");
    assert!(
        by_top.windows(2).all(|pair| pair[0].1 <= pair[1].0 + 1.0),
        "{by_top:?}"
    );
}
