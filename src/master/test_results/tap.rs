//! TAP (the Test Anything Protocol, version 13 and the older plain form): `ok N - name`,
//! `not ok N - name`, the `# SKIP` and `# TODO` directives, a YAML diagnostics block under a
//! test (`  ---` … `  ...`), `Bail out!`. A TODO test that fails is not a failure (that is
//! what TODO means), so it counts as skipped. Indented lines other than diagnostics (TAP 14
//! subtests) are left to their summary line. The suite of every case is the report's file.

use super::{
    MAX_CASES_PER_BUILD, MAX_NAME_BYTES, Parsed, ReportError, TestCase, TestOutcome, clean_text,
    first_lines,
};

pub fn parse(file: &str, data: &[u8]) -> Result<Parsed, ReportError> {
    let mut parsed = Parsed::default();
    let suite = file.to_string();
    let mut in_yaml = false;
    let mut yaml = String::new();
    let mut dropped = 0usize;
    for raw in data.split(|&byte| byte == b'\n') {
        let line = clean_text(raw, 64 * 1024, &mut parsed.warnings);
        let line = line.trim_end_matches('\r');
        if in_yaml {
            if line.trim() == "..." {
                in_yaml = false;
                attach_diagnostics(&mut parsed.cases, &yaml);
                yaml.clear();
            } else if yaml.len() < 8 * 1024 {
                yaml.push_str(line.trim_start());
                yaml.push('\n');
            }
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            if line.trim() == "---" && !parsed.cases.is_empty() {
                in_yaml = true;
            }
            continue;
        }
        let case = if let Some(rest) = line.strip_prefix("not ok") {
            test_line(&suite, rest, false, parsed.cases.len())
        } else if let Some(rest) = line.strip_prefix("ok") {
            test_line(&suite, rest, true, parsed.cases.len())
        } else {
            line.strip_prefix("Bail out!").map(|reason| TestCase {
                suite: suite.clone(),
                name: "Bail out!".into(),
                result: TestOutcome::Error,
                duration_ms: None,
                message: first_lines(reason.trim()),
                step: 0,
            })
        };
        if let Some(case) = case {
            if parsed.cases.len() >= MAX_CASES_PER_BUILD {
                dropped += 1;
            } else {
                parsed.cases.push(case);
            }
        }
    }
    if in_yaml {
        attach_diagnostics(&mut parsed.cases, &yaml);
    }
    if parsed.cases.is_empty() {
        return Err(ReportError::NotTap);
    }
    if dropped > 0 {
        parsed.warnings.push(format!(
            "{dropped} test cases beyond the limit of {MAX_CASES_PER_BUILD} were not kept"
        ));
    }
    Ok(parsed)
}

/// The rest of a test line after `ok`/`not ok`: ` 3 - name # SKIP why`.
fn test_line(suite: &str, rest: &str, ok: bool, seen: usize) -> Option<TestCase> {
    // "okay" or "ok2" are not test lines.
    if !(rest.is_empty() || rest.starts_with(' ')) {
        return None;
    }
    let rest = rest.trim_start();
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    let (description, directive) = match rest.split_once(" # ").or_else(|| {
        rest.strip_prefix("# ")
            .map(|directive| ("", directive))
            .or_else(|| rest.split_once("\t# "))
    }) {
        Some((description, directive)) => (description, Some(directive.trim())),
        None => (rest, None),
    };
    let description = description.trim().trim_start_matches('-').trim();
    let name = if description.is_empty() {
        format!("test {}", seen + 1)
    } else {
        cut(description)
    };
    let (result, message) = match directive {
        Some(directive) if starts_with_word(directive, "SKIP") => (
            TestOutcome::Skipped,
            directive[4..]
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .trim(),
        ),
        Some(directive) if starts_with_word(directive, "TODO") => {
            let why = directive[4..].trim();
            (
                if ok {
                    TestOutcome::Passed
                } else {
                    TestOutcome::Skipped
                },
                why,
            )
        }
        _ if ok => (TestOutcome::Passed, ""),
        _ => (TestOutcome::Failed, ""),
    };
    Some(TestCase {
        suite: suite.to_string(),
        name,
        result,
        duration_ms: None,
        message: first_lines(message),
        step: 0,
    })
}

fn starts_with_word(text: &str, word: &str) -> bool {
    text.get(..word.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(word))
}

fn cut(text: &str) -> String {
    let mut end = text.len().min(MAX_NAME_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// A YAML block under a failed test: its `message:` line first, then the rest; `duration_ms:`
/// gives the duration.
fn attach_diagnostics(cases: &mut [TestCase], yaml: &str) {
    let Some(case) = cases.last_mut() else {
        return;
    };
    for line in yaml.lines() {
        if let Some(ms) = line.strip_prefix("duration_ms:")
            && let Ok(ms) = ms.trim().parse::<f64>()
            && ms.is_finite()
            && ms >= 0.0
        {
            case.duration_ms = Some(ms.round().min(1e11) as i64);
        }
    }
    if !case.result.is_failure() {
        return;
    }
    let message = yaml
        .lines()
        .find_map(|line| line.strip_prefix("message:"))
        .map(|message| message.trim().trim_matches(|c| c == '\'' || c == '"'));
    let rest: Vec<&str> = yaml
        .lines()
        .filter(|line| !line.starts_with("message:") && !line.starts_with("duration_ms:"))
        .collect();
    let text = match message {
        Some(message) => format!("{message}\n{}", rest.join("\n")),
        None => rest.join("\n"),
    };
    if case.message.is_empty() {
        case.message = first_lines(&text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap13_with_directives_and_diagnostics() {
        let tap = "TAP version 13
1..6
ok 1 - adds
not ok 2 - subtracts
  ---
  message: 'expected 1, got 2'
  severity: fail
  data:
    got: 2
  duration_ms: 12.5
  ...
ok 3 - later # SKIP not on this platform
not ok 4 - someday # TODO write it
ok 5 # skip
ok 6 - leaves # todo done early
# a comment
okay this is not a test
";
        let parsed = parse("t/out.tap", tap.as_bytes()).expect("parses");
        let cases: Vec<_> = parsed
            .cases
            .iter()
            .map(|c| (c.name.as_str(), c.result))
            .collect();
        assert_eq!(
            cases,
            [
                ("adds", TestOutcome::Passed),
                ("subtracts", TestOutcome::Failed),
                ("later", TestOutcome::Skipped),
                ("someday", TestOutcome::Skipped),
                ("test 5", TestOutcome::Skipped),
                ("leaves", TestOutcome::Passed),
            ]
        );
        assert_eq!(parsed.cases[0].suite, "t/out.tap");
        assert_eq!(
            parsed.cases[1].message,
            "expected 1, got 2\nseverity: fail\ndata:\ngot: 2"
        );
        assert_eq!(parsed.cases[1].duration_ms, Some(13));
        assert_eq!(parsed.cases[2].message, "not on this platform");
    }

    #[test]
    fn bail_out_is_an_error_and_no_tests_is_not_tap() {
        let parsed = parse("x.tap", b"1..3\nok 1\nBail out! database gone\n").expect("parses");
        assert_eq!(parsed.cases[1].result, TestOutcome::Error);
        assert_eq!(parsed.cases[1].message, "database gone");
        assert_eq!(
            parse("x.tap", b"<testsuite/>").unwrap_err(),
            ReportError::NotTap
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        use proptest::prelude::*;
        proptest!(ProptestConfig::with_cases(512), |(bytes in proptest::collection::vec(any::<u8>(), 0..512))| {
            let _ = parse("f", &bytes);
        });
        proptest!(ProptestConfig::with_cases(256), |(line in "(not )?ok [0-9]* ?-? ?[a-zé ]*( # (SKIP|TODO|skip)[a-z ]*)?")| {
            let _ = parse("f", line.as_bytes());
        });
    }
}
