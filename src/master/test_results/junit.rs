//! JUnit XML, as cargo-nextest, pytest `--junitxml`, googletest and maven surefire write it:
//! `<testsuites>` (optional) holding `<testsuite>`s (nested ones too) holding `<testcase>`s,
//! each passed unless it holds `<failure>`, `<error>` or `<skipped>` (gtest also says
//! `status="notrun"` or `result="skipped"`). Surefire's `<flakyFailure>`/`<rerunFailure>` of a
//! test that passed on a rerun leave it passed.
//!
//! Read with quick-xml, a streaming reader that never expands entities it does not know: a
//! report with a DOCTYPE is refused outright (no entity bombs, no external entities), and
//! nesting is bounded, so the work is linear in the report's size.

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

use super::{
    MAX_CASES_PER_BUILD, MAX_MESSAGE_BYTES, MAX_NAME_BYTES, Parsed, ReportError, TestCase,
    TestOutcome, clean_text, first_lines,
};

/// Deeper than any report a tool writes; bounds the stack on hostile input.
pub const MAX_DEPTH: usize = 64;
/// Raw message text gathered per case before it is cut to its first lines.
const MAX_RAW_MESSAGE: usize = 4 * MAX_MESSAGE_BYTES;

/// The case being read.
struct OpenCase {
    suite: String,
    name: String,
    duration_ms: Option<i64>,
    result: TestOutcome,
    /// The `message` attribute of its failure, error or skipped element.
    summary: String,
    /// The text inside it.
    body: Vec<u8>,
    /// The depth of the `<testcase>` element.
    depth: usize,
}

/// Where text goes while it is read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Capture {
    Nothing,
    /// Inside the failure/error/skipped element at this depth.
    Message(usize),
}

pub fn parse(data: &[u8]) -> Result<Parsed, ReportError> {
    let mut reader = Reader::from_reader(data);
    reader.config_mut().trim_text(false);
    let mut parsed = Parsed::default();
    // The innermost `<testsuite>` name at each depth it was opened.
    let mut suites: Vec<(usize, String)> = Vec::new();
    let mut open: Option<OpenCase> = None;
    let mut capture = Capture::Nothing;
    let mut depth = 0usize;
    let mut saw_root = false;
    let mut dropped = 0usize;
    loop {
        let position = reader.buffer_position();
        let event = reader.read_event().map_err(|err| ReportError::Malformed {
            position: reader.error_position().max(position),
            reason: one_line(&err.to_string()),
        })?;
        match event {
            Event::DocType(_) => return Err(ReportError::Doctype),
            Event::Start(ref element) | Event::Empty(ref element) => {
                let empty = matches!(event, Event::Empty(_));
                let name = element.local_name();
                let name = name.as_ref();
                if !saw_root {
                    saw_root = true;
                    if name != b"testsuites" && name != b"testsuite" {
                        return Err(ReportError::NotJunit(clean_text(
                            name,
                            64,
                            &mut parsed.warnings,
                        )));
                    }
                }
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(ReportError::TooDeep(MAX_DEPTH));
                }
                match name {
                    b"testsuite" => {
                        let suite = attribute(element, b"name", &mut parsed.warnings)?;
                        suites.push((depth, suite.unwrap_or_default()));
                    }
                    b"testcase" if open.is_none() => {
                        let case = open_case(element, &suites, depth, &mut parsed.warnings)?;
                        open = Some(case);
                    }
                    b"failure" | b"error" | b"skipped" if capture == Capture::Nothing => {
                        if let Some(case) = open.as_mut()
                            && depth == case.depth + 1
                        {
                            let outcome = match name {
                                b"failure" => TestOutcome::Failed,
                                b"error" => TestOutcome::Error,
                                _ => TestOutcome::Skipped,
                            };
                            // An error outranks a failure outranks a skip.
                            if outcome < case.result {
                                case.result = outcome;
                                case.summary =
                                    attribute(element, b"message", &mut parsed.warnings)?
                                        .unwrap_or_default();
                                case.body.clear();
                                capture = Capture::Message(depth);
                            }
                        }
                    }
                    _ => {}
                }
                if empty {
                    close(
                        depth,
                        &mut suites,
                        &mut open,
                        &mut capture,
                        &mut parsed,
                        &mut dropped,
                    );
                    depth -= 1;
                }
            }
            Event::End(_) => {
                close(
                    depth,
                    &mut suites,
                    &mut open,
                    &mut capture,
                    &mut parsed,
                    &mut dropped,
                );
                depth = depth.saturating_sub(1);
            }
            Event::Text(text) => capture_bytes(&mut open, capture, &text),
            Event::CData(text) => capture_bytes(&mut open, capture, &text),
            Event::GeneralRef(reference) => {
                let resolved = match reference.resolve_char_ref() {
                    Ok(Some(c)) => c.to_string(),
                    _ => {
                        let entity = String::from_utf8_lossy(&reference);
                        quick_xml::escape::resolve_predefined_entity(&entity)
                            .map_or_else(|| format!("&{entity};"), str::to_string)
                    }
                };
                capture_bytes(&mut open, capture, resolved.as_bytes());
            }
            Event::Eof => break,
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) => {}
        }
    }
    if depth > 0 || !saw_root {
        return Err(ReportError::Malformed {
            position: data.len() as u64,
            reason: if saw_root {
                "the report ends inside an element".into()
            } else {
                "no element at all".into()
            },
        });
    }
    if dropped > 0 {
        parsed.warnings.push(format!(
            "{dropped} test cases beyond the limit of {MAX_CASES_PER_BUILD} were not kept"
        ));
    }
    Ok(parsed)
}

/// The element at `depth` ends.
fn close(
    depth: usize,
    suites: &mut Vec<(usize, String)>,
    open: &mut Option<OpenCase>,
    capture: &mut Capture,
    parsed: &mut Parsed,
    dropped: &mut usize,
) {
    if *capture == Capture::Message(depth) {
        *capture = Capture::Nothing;
    }
    if suites.last().is_some_and(|(at, _)| *at == depth) {
        suites.pop();
    }
    if open.as_ref().is_some_and(|case| case.depth == depth)
        && let Some(case) = open.take()
    {
        if parsed.cases.len() >= MAX_CASES_PER_BUILD {
            *dropped += 1;
            return;
        }
        let message = if case.result == TestOutcome::Passed {
            String::new()
        } else {
            let body = clean_text(&case.body, MAX_RAW_MESSAGE, &mut parsed.warnings);
            match (case.summary.trim().is_empty(), body.trim().is_empty()) {
                (true, _) => first_lines(&body),
                (false, true) => first_lines(&case.summary),
                // The summary first: it is often the assertion; the body the trace under it.
                (false, false) if body.trim_start().starts_with(case.summary.trim()) => {
                    first_lines(&body)
                }
                (false, false) => first_lines(&format!("{}\n{body}", case.summary)),
            }
        };
        parsed.cases.push(TestCase {
            suite: case.suite,
            name: case.name,
            result: case.result,
            duration_ms: case.duration_ms,
            message,
            step: 0,
        });
    }
}

fn capture_bytes(open: &mut Option<OpenCase>, capture: Capture, bytes: &[u8]) {
    if let (Capture::Message(_), Some(case)) = (capture, open.as_mut()) {
        let room = MAX_RAW_MESSAGE.saturating_sub(case.body.len());
        case.body.extend_from_slice(&bytes[..room.min(bytes.len())]);
    }
}

fn open_case(
    element: &BytesStart<'_>,
    suites: &[(usize, String)],
    depth: usize,
    warnings: &mut Vec<String>,
) -> Result<OpenCase, ReportError> {
    let name = attribute(element, b"name", warnings)?.unwrap_or_default();
    let classname = attribute(element, b"classname", warnings)?.unwrap_or_default();
    let suite = if classname.is_empty() {
        suites
            .last()
            .map(|(_, suite)| suite.clone())
            .unwrap_or_default()
    } else {
        classname
    };
    let duration_ms = attribute(element, b"time", warnings)?
        .as_deref()
        .and_then(seconds_to_ms);
    // googletest marks a disabled or skipped test on the case itself.
    let status = attribute(element, b"status", warnings)?;
    let gtest_result = attribute(element, b"result", warnings)?;
    let result = if status.as_deref() == Some("notrun")
        || matches!(gtest_result.as_deref(), Some("skipped" | "suppressed"))
    {
        TestOutcome::Skipped
    } else {
        TestOutcome::Passed
    };
    Ok(OpenCase {
        suite,
        name,
        duration_ms,
        result,
        summary: String::new(),
        body: Vec::new(),
        depth,
    })
}

/// An attribute's value, unescaped, cleaned and cut to [`MAX_NAME_BYTES`].
fn attribute(
    element: &BytesStart<'_>,
    key: &[u8],
    warnings: &mut Vec<String>,
) -> Result<Option<String>, ReportError> {
    for attribute in element.attributes() {
        let attribute = attribute.map_err(|err| ReportError::Malformed {
            position: 0,
            reason: one_line(&err.to_string()),
        })?;
        if attribute.key.local_name().as_ref() != key {
            continue;
        }
        let raw = clean_text(&attribute.value, MAX_NAME_BYTES * 2, warnings);
        let value = match quick_xml::escape::unescape(&raw) {
            Ok(value) => value.into_owned(),
            // An entity no DTD defines (and none is ever read): kept as written.
            Err(_) => raw,
        };
        return Ok(Some(clean_text(value.as_bytes(), MAX_NAME_BYTES, warnings)));
    }
    Ok(None)
}

/// `time="1.5"` (seconds; surefire may write "1,234.5") in milliseconds.
fn seconds_to_ms(text: &str) -> Option<i64> {
    let seconds: f64 = text.trim().replace(',', "").parse().ok()?;
    if !seconds.is_finite() || seconds < 0.0 {
        return None;
    }
    // Capped at ~3 years: a report may say anything.
    Some((seconds * 1000.0).round().min(1e11) as i64)
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cases(xml: &str) -> Vec<TestCase> {
        parse(xml.as_bytes()).expect("parses").cases
    }

    #[test]
    fn nextest_reports_name_the_binary_as_suite() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="nextest-run" tests="3" failures="1" errors="0" uuid="x" timestamp="2024-01-01T00:00:00Z" time="0.1">
    <testsuite name="demo" tests="3" disabled="0" errors="0" failures="1">
        <testcase name="tests::adds" classname="demo" timestamp="2024" time="0.002">
        </testcase>
        <testcase name="tests::fails" classname="demo" timestamp="2024" time="0.013">
            <failure type="test failure with exit code 101">thread &apos;tests::fails&apos; panicked at src/lib.rs:10:9:
assertion `left == right` failed
  left: 1
 right: 2</failure>
            <system-out>running 1 test</system-out>
        </testcase>
        <testcase name="tests::flaky" classname="demo" time="0.004">
            <flakyFailure message="first try" type="x">boom</flakyFailure>
        </testcase>
    </testsuite>
</testsuites>"#;
        let cases = cases(xml);
        assert_eq!(cases.len(), 3);
        assert_eq!(cases[0].suite, "demo");
        assert_eq!(cases[0].result, TestOutcome::Passed);
        assert_eq!(cases[0].duration_ms, Some(2));
        assert_eq!(cases[1].result, TestOutcome::Failed);
        assert!(
            cases[1]
                .message
                .starts_with("thread 'tests::fails' panicked at src/lib.rs:10:9:\nassertion"),
            "{:?}",
            cases[1].message
        );
        assert_eq!(cases[2].result, TestOutcome::Passed);
    }

    #[test]
    fn pytest_reports_skips_errors_and_messages() {
        let xml = r#"<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="1" failures="1" skipped="1" tests="4" time="0.05"><testcase classname="test_demo" name="test_ok" time="0.001" /><testcase classname="test_demo" name="test_bad" time="0.002"><failure message="assert 1 == 2">def test_bad():
&gt;       assert 1 == 2
E       assert 1 == 2</failure></testcase><testcase classname="test_demo" name="test_skip" time="0.000"><skipped type="pytest.skip" message="not today">test_demo.py:9: not today</skipped></testcase><testcase classname="test_demo" name="test_fixture" time="0.001"><error message="failed on setup with &quot;RuntimeError&quot;">boom</error></testcase></testsuite></testsuites>"#;
        let cases = cases(xml);
        let results: Vec<_> = cases.iter().map(|c| (c.name.as_str(), c.result)).collect();
        assert_eq!(
            results,
            [
                ("test_ok", TestOutcome::Passed),
                ("test_bad", TestOutcome::Failed),
                ("test_skip", TestOutcome::Skipped),
                ("test_fixture", TestOutcome::Error),
            ]
        );
        assert_eq!(
            cases[1].message,
            "assert 1 == 2\ndef test_bad():\n>       assert 1 == 2\nE       assert 1 == 2"
        );
        assert_eq!(cases[2].message, "not today\ntest_demo.py:9: not today");
        assert_eq!(
            cases[3].message,
            "failed on setup with \"RuntimeError\"\nboom"
        );
    }

    #[test]
    fn gtest_reports_mark_skips_on_the_case() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="3" failures="1" disabled="1" errors="0" time="0.01" name="AllTests">
  <testsuite name="MathTest" tests="3" failures="1" disabled="1" skipped="0" errors="0" time="0.01">
    <testcase name="Adds" status="run" result="completed" time="0." timestamp="x" classname="MathTest" />
    <testcase name="Fails" status="run" result="completed" time="0.001" classname="MathTest">
      <failure message="math_test.cc:12&#x0A;Expected equality" type=""><![CDATA[math_test.cc:12
Expected equality of these values:
  1
  2]]></failure>
    </testcase>
    <testcase name="DISABLED_Later" status="notrun" result="suppressed" time="0" classname="MathTest" />
  </testsuite>
</testsuites>"#;
        let cases = cases(xml);
        assert_eq!(cases[0].result, TestOutcome::Passed);
        assert_eq!(cases[1].result, TestOutcome::Failed);
        assert_eq!(
            cases[1].message,
            "math_test.cc:12\nExpected equality of these values:\n  1\n  2"
        );
        assert_eq!(cases[2].result, TestOutcome::Skipped);
    }

    #[test]
    fn surefire_single_suite_roots_and_nested_suites() {
        let xml = r#"<testsuite name="com.example.AppTest" tests="2" time="1,234.5">
  <properties><property name="java.version" value="17"/></properties>
  <testsuite name="inner">
    <testcase name="nested" time="1,234.5"/>
  </testsuite>
  <testcase name="shouldAnswer" classname="com.example.AppTest" time="0.01">
    <error message="NPE" type="java.lang.NullPointerException">java.lang.NullPointerException
	at com.example.AppTest.shouldAnswer(AppTest.java:12)</error>
  </testcase>
</testsuite>"#;
        let cases = cases(xml);
        assert_eq!(cases[0].suite, "inner");
        assert_eq!(cases[0].duration_ms, Some(1_234_500));
        assert_eq!(cases[1].suite, "com.example.AppTest");
        assert_eq!(cases[1].result, TestOutcome::Error);
        assert!(
            cases[1]
                .message
                .starts_with("NPE\njava.lang.NullPointerException")
        );
    }

    #[test]
    fn a_doctype_is_refused_and_never_expanded() {
        let bomb = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<testsuite name="x"><testcase name="&lol2;"/></testsuite>"#;
        assert_eq!(parse(bomb.as_bytes()).unwrap_err(), ReportError::Doctype);
        let external = r#"<!DOCTYPE t [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><testsuite><testcase name="&xxe;"/></testsuite>"#;
        assert_eq!(
            parse(external.as_bytes()).unwrap_err(),
            ReportError::Doctype
        );
    }

    #[test]
    fn undefined_entities_stay_as_written() {
        let cases = cases(
            r#"<testsuite><testcase name="a&xxe;b"><failure>x &xxe; y</failure></testcase></testsuite>"#,
        );
        assert_eq!(cases[0].name, "a&xxe;b");
        assert_eq!(cases[0].message, "x &xxe; y");
    }

    #[test]
    fn malformed_reports_are_one_line_errors() {
        for bad in [
            "<testsuite><testcase name=\"a\"></testsuite>",
            "<testsuite><testcase name=\"a\">",
            "<testsuite",
            "",
            "not xml at all",
            "<testsuite><testcase name='a' name='b'/></testsuite>",
        ] {
            let err = parse(bad.as_bytes()).expect_err(bad).to_string();
            assert!(!err.contains('\n'), "{err}");
        }
        assert_eq!(
            parse(b"<html><body/></html>").unwrap_err(),
            ReportError::NotJunit("html".into())
        );
    }

    #[test]
    fn deep_nesting_is_refused() {
        let deep = format!(
            "<testsuites>{}{}</testsuites>",
            "<testsuite>".repeat(200),
            "</testsuite>".repeat(200)
        );
        assert_eq!(
            parse(deep.as_bytes()).unwrap_err(),
            ReportError::TooDeep(MAX_DEPTH)
        );
    }

    #[test]
    fn names_that_are_not_utf8_are_kept_with_a_warning() {
        let parsed = parse(b"<testsuite><testcase name=\"caf\xe9\"/></testsuite>").expect("parses");
        assert_eq!(parsed.cases[0].name, "caf\u{fffd}");
        assert_eq!(parsed.warnings.len(), 1);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        use proptest::prelude::*;
        proptest!(ProptestConfig::with_cases(512), |(bytes in proptest::collection::vec(any::<u8>(), 0..512))| {
            let _ = parse(&bytes);
        });
        let seed = br#"<testsuites><testsuite name="s"><testcase name="a" time="1"><failure message="m">t</failure></testcase></testsuite></testsuites>"#;
        proptest!(ProptestConfig::with_cases(512), |(cut in 0..seed.len(), flip in 0..seed.len(), byte in any::<u8>())| {
            let mut mutated = seed[..].to_vec();
            mutated[flip] = byte;
            let _ = parse(&mutated[..cut]);
            let _ = parse(&mutated);
        });
    }
}
