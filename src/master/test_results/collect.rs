//! Getting a step's test reports from its slave (issue 26): ask with
//! `Message::CollectReports`, take the files as they come (bounded here too: a slave is not
//! trusted to keep the limits it was given), parse each as soon as it is whole, and say in
//! lines for the step's log what was read and what was not. Nothing here changes the build's
//! result.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{ReportKind, TestCase, parse};
use crate::master::slaves::{SlaveEvent, SlaveLink};
use crate::proto::{CollectReportsRequest, Message};

/// At most this many report files per build.
pub const MAX_REPORT_FILES: u32 = 1000;
/// A report larger than this is refused (a 1 GB report is a mistake, not a test run).
pub const MAX_REPORT_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// All reports of one build together.
pub const MAX_REPORT_BYTES_PER_BUILD: u64 = 256 * 1024 * 1024;
/// How long collecting one step's reports may take before it is given up.
pub const COLLECT_TIMEOUT: Duration = Duration::from_secs(120);

/// What a build may still collect, across its steps.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub files: u32,
    pub bytes: u64,
}

impl Default for Budget {
    fn default() -> Budget {
        Budget {
            files: MAX_REPORT_FILES,
            bytes: MAX_REPORT_BYTES_PER_BUILD,
        }
    }
}

/// One step's reports, as read.
#[derive(Debug, Default)]
pub struct Gathered {
    pub cases: Vec<TestCase>,
    /// For the step's log, each one line.
    pub lines: Vec<String>,
}

/// The kind of the first entry whose glob matches `path`.
fn kind_of(entries: &[(ReportKind, String)], path: &str) -> ReportKind {
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    entries
        .iter()
        .find(|(_, pattern)| {
            glob::Pattern::new(pattern).is_ok_and(|glob| glob.matches_with(path, options))
        })
        .map_or_else(
            || {
                if path.ends_with(".xml") {
                    ReportKind::Junit
                } else {
                    ReportKind::Tap
                }
            },
            |(kind, _)| *kind,
        )
}

/// Collects the reports named by `entries` from the step's work tree on `link`. Gives up
/// (with a line saying so) when `cancel` fires, the slave is lost, or [`COLLECT_TIMEOUT`]
/// passes.
pub async fn gather(
    link: &SlaveLink,
    builder: &str,
    workdir: Option<&str>,
    entries: &[(ReportKind, String)],
    budget: &mut Budget,
    cancel: &CancellationToken,
) -> Gathered {
    let mut gathered = Gathered::default();
    if budget.files == 0 || budget.bytes == 0 {
        gathered
            .lines
            .push("test results: the build's report limits are used up; none collected".into());
        return gathered;
    }
    let request = CollectReportsRequest {
        builder: builder.to_string(),
        workdir: workdir.map(str::to_string),
        patterns: entries.iter().map(|(_, pattern)| pattern.clone()).collect(),
        max_files: budget.files,
        max_file_bytes: MAX_REPORT_FILE_BYTES.min(budget.bytes),
        max_total_bytes: budget.bytes,
    };
    let Ok((id, mut events)) = link.start(|id| Message::CollectReports {
        id,
        collect: request,
    }) else {
        gathered
            .lines
            .push("test results: slave lost; none collected".into());
        return gathered;
    };
    let deadline = tokio::time::sleep(COLLECT_TIMEOUT);
    tokio::pin!(deadline);
    let mut file: Option<(String, Vec<u8>)> = None;
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            () = &mut deadline => {
                link.interrupt(id, "test reports took too long");
                gathered.lines.push(format!(
                    "test results: gave up after {}s; kept what had arrived",
                    COLLECT_TIMEOUT.as_secs()
                ));
                break;
            }
            () = cancel.cancelled() => {
                link.interrupt(id, "build stopped");
                gathered.lines.push("test results: collection stopped".into());
                break;
            }
        };
        match event {
            Some(SlaveEvent::ReportChunk { path, data, last }) => {
                let (name, mut bytes) = match file.take() {
                    Some((name, bytes)) if name == path => (name, bytes),
                    Some((name, _)) => {
                        gathered.lines.push(format!(
                            "test results: {name}: cut short by the slave; not read"
                        ));
                        (path, Vec::new())
                    }
                    None => (path, Vec::new()),
                };
                let size = (bytes.len() + data.len()) as u64;
                if size > MAX_REPORT_FILE_BYTES || size > budget.bytes {
                    link.interrupt(id, "a report over the limits");
                    gathered.lines.push(format!(
                        "test results: {name}: over the limits ({size} bytes); collection stopped"
                    ));
                    budget.bytes = 0;
                    break;
                }
                bytes.extend_from_slice(&data);
                if !last {
                    file = Some((name, bytes));
                    continue;
                }
                budget.files = budget.files.saturating_sub(1);
                budget.bytes = budget.bytes.saturating_sub(bytes.len() as u64);
                let kind = kind_of(entries, &name);
                let parsed = {
                    let name = name.clone();
                    tokio::task::spawn_blocking(move || parse(kind, &name, &bytes)).await
                };
                match parsed {
                    Ok(Ok(parsed)) => {
                        gathered.lines.push(format!(
                            "test results: {name}: {} test cases ({})",
                            parsed.cases.len(),
                            kind.as_str()
                        ));
                        for warning in parsed.warnings {
                            gathered
                                .lines
                                .push(format!("test results: {name}: {warning}"));
                        }
                        gathered.cases.extend(parsed.cases);
                    }
                    Ok(Err(err)) => gathered
                        .lines
                        .push(format!("test results: {name}: not read: {err}")),
                    Err(err) => {
                        tracing::error!("parsing a test report failed: {err}");
                        gathered
                            .lines
                            .push(format!("test results: {name}: not read: the parser failed"));
                    }
                }
            }
            Some(SlaveEvent::ReportsDone { refused }) => {
                for line in refused {
                    gathered.lines.push(format!("test results: {line}"));
                }
                break;
            }
            // Exit: a slave that cannot collect (it reports a failure instead).
            Some(SlaveEvent::Exit(exit)) => {
                let why = exit
                    .failure
                    .as_ref()
                    .map_or("the slave did not send them", |failure| failure.message());
                gathered
                    .lines
                    .push(format!("test results: none collected: {why}"));
                break;
            }
            // Not part of this exchange (a file transfer is answered on its own id).
            Some(
                SlaveEvent::Output { .. }
                | SlaveEvent::FileStart { .. }
                | SlaveEvent::FileAck(_)
                | SlaveEvent::FileData(_)
                | SlaveEvent::FileEnd { .. },
            ) => {}
            None => {
                gathered
                    .lines
                    .push("test results: slave lost while sending reports".into());
                break;
            }
        }
    }
    gathered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_takes_the_kind_of_the_pattern_it_matched() {
        let entries = [
            (ReportKind::Tap, "out/*.txt".to_string()),
            (ReportKind::Junit, "target/**/junit.xml".to_string()),
        ];
        assert_eq!(kind_of(&entries, "out/a.txt"), ReportKind::Tap);
        assert_eq!(
            kind_of(&entries, "target/nextest/ci/junit.xml"),
            ReportKind::Junit
        );
        assert_eq!(kind_of(&entries, "other.xml"), ReportKind::Junit);
    }
}
