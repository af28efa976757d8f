//! Test results (issue 26): what a step's `test_results` reports say, and what it means.
//! `junit` and `tap` turn one report's bytes into [`TestCase`]s (pure: no I/O, bounded work
//! on hostile input), `classify` tells a failure new, known or flaky from the test's history.
//! Collecting the files is the slave's (`slave::runner`); keeping the cases is the store's.
//!
//! A report is user input: whatever it holds, parsing ends in cases or in one clear line for
//! the build's log, never a panic, and it never changes the build's result.

pub mod classify;
pub mod collect;
pub mod junit;
pub mod report;
pub mod tap;

pub use crate::master::store::model_tests::{TestCase, TestCounts, TestOutcome};

/// The most test cases one build keeps; the rest are counted in the log line only.
pub const MAX_CASES_PER_BUILD: usize = 500_000;
/// The most of a failure message kept per case (its first lines).
pub const MAX_MESSAGE_LINES: usize = 10;
pub const MAX_MESSAGE_BYTES: usize = 2048;
/// Suite and test names longer than this are cut (a report may say anything).
pub const MAX_NAME_BYTES: usize = 1024;

/// Which format a report is in: the prefix of a `test_results` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    Junit,
    Tap,
}

impl ReportKind {
    pub const NAMES: &'static str = "junit, tap";

    pub fn parse(prefix: &str) -> Option<ReportKind> {
        match prefix {
            "junit" => Some(ReportKind::Junit),
            "tap" => Some(ReportKind::Tap),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ReportKind::Junit => "junit",
            ReportKind::Tap => "tap",
        }
    }
}

/// Splits a step's `test_results` entry `KIND:GLOB` into its kind and pattern.
pub fn parse_entry(entry: &str) -> Result<(ReportKind, &str), String> {
    let Some((prefix, pattern)) = entry.split_once(':') else {
        return Err(format!(
            "test_results entry \"{entry}\" must be KIND:GLOB (KIND one of {})",
            ReportKind::NAMES
        ));
    };
    let Some(kind) = ReportKind::parse(prefix) else {
        return Err(format!(
            "test_results entry \"{entry}\": unknown kind \"{prefix}\" (known: {})",
            ReportKind::NAMES
        ));
    };
    if pattern.is_empty() {
        return Err(format!(
            "test_results entry \"{entry}\" has no file pattern"
        ));
    }
    Ok((kind, pattern))
}

/// Why a report gave no cases: one line for the build's log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("not well-formed XML at byte {position}: {reason}")]
    Malformed { position: u64, reason: String },
    /// DTDs can define entities (billion laughs) or pull external files: never read.
    #[error("refused: the report has a DOCTYPE (entity definitions are never expanded)")]
    Doctype,
    #[error("refused: elements nested deeper than {0}")]
    TooDeep(usize),
    #[error("not a JUnit XML report (the root element is <{0}>, not <testsuites> or <testsuite>)")]
    NotJunit(String),
    #[error("not a TAP report: no test line (\"ok …\" or \"not ok …\")")]
    NotTap,
}

/// What one report held.
#[derive(Debug, Default)]
pub struct Parsed {
    pub cases: Vec<TestCase>,
    /// Lines for the build's log about what was read but changed (cut names, bytes that are
    /// not UTF-8).
    pub warnings: Vec<String>,
}

/// Parses one report of `kind`; `file` names it (TAP reports take their suite from it).
pub fn parse(kind: ReportKind, file: &str, data: &[u8]) -> Result<Parsed, ReportError> {
    match kind {
        ReportKind::Junit => junit::parse(data),
        ReportKind::Tap => tap::parse(file, data),
    }
}

/// Text from a report as it is kept: not-UTF-8 bytes replaced (noted once in `warnings`),
/// control characters other than newline and tab dropped, cut at `max` bytes.
pub(crate) fn clean_text(raw: &[u8], max: usize, warnings: &mut Vec<String>) -> String {
    let text = match std::str::from_utf8(raw) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => {
            let warning = "some names or messages are not UTF-8; shown with U+FFFD".to_string();
            if !warnings.contains(&warning) {
                warnings.push(warning);
            }
            String::from_utf8_lossy(raw)
        }
    };
    let mut kept = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        if c.is_control() && c != '\n' && c != '\t' {
            continue;
        }
        if kept.len() + c.len_utf8() > max {
            break;
        }
        kept.push(c);
    }
    kept
}

/// The first [`MAX_MESSAGE_LINES`] non-blank lines of a message, at most
/// [`MAX_MESSAGE_BYTES`].
pub(crate) fn first_lines(text: &str) -> String {
    let mut kept = String::new();
    for line in text
        .lines()
        .map(str::trim_end)
        .skip_while(|line| line.trim().is_empty())
        .take(MAX_MESSAGE_LINES)
    {
        if kept.len() + line.len() + 1 > MAX_MESSAGE_BYTES {
            let room = MAX_MESSAGE_BYTES.saturating_sub(kept.len());
            let mut cut = room.min(line.len());
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            kept.push_str(&line[..cut]);
            break;
        }
        if !kept.is_empty() {
            kept.push('\n');
        }
        kept.push_str(line);
    }
    kept.trim_end().to_string()
}

/// The one summary line: "412 passed · 3 failed (2 new, 1 known since #40) · 5 skipped".
pub fn summary_line(counts: &TestCounts, new: usize, known_since: Option<(usize, i64)>) -> String {
    let mut parts = vec![format!("{} passed", counts.passed)];
    let failures = counts.failures();
    if failures > 0 {
        let mut detail = Vec::new();
        if new > 0 {
            detail.push(format!("{new} new"));
        }
        if let Some((known, since)) = known_since
            && known > 0
        {
            detail.push(format!("{known} known since #{since}"));
        }
        if detail.is_empty() {
            parts.push(format!("{failures} failed"));
        } else {
            parts.push(format!("{failures} failed ({})", detail.join(", ")));
        }
    }
    if counts.skipped > 0 {
        parts.push(format!("{} skipped", counts.skipped));
    }
    parts.join(" · ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_name_a_known_kind_and_a_pattern() {
        assert_eq!(
            parse_entry("junit:target/*.xml"),
            Ok((ReportKind::Junit, "target/*.xml"))
        );
        assert_eq!(parse_entry("tap:out.tap"), Ok((ReportKind::Tap, "out.tap")));
        assert!(
            parse_entry("xunit:a.xml")
                .unwrap_err()
                .contains("unknown kind \"xunit\"")
        );
        assert!(parse_entry("a.xml").unwrap_err().contains("KIND:GLOB"));
        assert!(parse_entry("tap:").unwrap_err().contains("no file pattern"));
    }

    #[test]
    fn the_summary_line_reads_as_the_issue_says() {
        let counts = TestCounts {
            passed: 412,
            failed: 2,
            error: 1,
            skipped: 5,
        };
        assert_eq!(
            summary_line(&counts, 2, Some((1, 40))),
            "412 passed · 3 failed (2 new, 1 known since #40) · 5 skipped"
        );
        let green = TestCounts {
            passed: 3,
            ..TestCounts::default()
        };
        assert_eq!(summary_line(&green, 0, None), "3 passed");
    }

    #[test]
    fn messages_keep_their_first_lines_within_bounds() {
        let long: String = (0..50).map(|i| format!("line {i}\n")).collect();
        let kept = first_lines(&format!("\n\n{long}"));
        assert_eq!(kept.lines().count(), MAX_MESSAGE_LINES);
        assert!(kept.starts_with("line 0"));
        let wide = "é".repeat(MAX_MESSAGE_BYTES);
        assert!(first_lines(&wide).len() <= MAX_MESSAGE_BYTES);
    }

    #[test]
    fn text_that_is_not_utf8_is_kept_with_a_warning() {
        let mut warnings = Vec::new();
        let text = clean_text(b"test_\xff\x01name", 100, &mut warnings);
        assert_eq!(text, "test_\u{fffd}name");
        assert_eq!(warnings.len(), 1);
    }
}
