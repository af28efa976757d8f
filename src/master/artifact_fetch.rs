//! A step's `fetch_artifacts`: which kept files it gets (of the upstream firing that started
//! this build, or of this build's earlier steps), and streaming them down the slave's
//! connection into its work tree, paced by the slave's acknowledgements so neither end holds
//! more than [`FILE_WINDOW`] of them. The bytes come from wherever `artifacts::locate` finds
//! them: this master's disk, or the shared store's chunks (a build of another master).
//!
//! Not here: writing them on the slave (`slave::fetch`, confined like `slave::workfiles`),
//! the step's log and result (`build`).

use std::collections::BTreeMap;
use std::path::Path;

use futures_util::StreamExt as _;
use tokio::sync::mpsc;

use crate::master::artifacts::{self, Located};
use crate::master::config::{FetchArtifacts, FetchFrom};
use crate::master::slaves::{SlaveEvent, SlaveLink};
use crate::master::store::{ArtifactRow, BuildRef, SharedStore};
use crate::proto::{ExitReport, FILE_WINDOW, Failure, IncomingFile, MAX_FILE_CHUNK, Message};
use crate::status::BuildResult;

/// The build a fetch runs in.
pub struct ThisBuild<'a> {
    pub builder: &'a str,
    pub number: i64,
    pub build_id: i64,
    /// The job of the upstream firing that started it (`schedulers::engine::UPSTREAM_JOB`).
    pub upstream_job: Option<&'a str>,
}

/// One file to fetch and where it comes from.
#[derive(Debug, Clone)]
pub struct Source {
    pub builder: String,
    pub number: i64,
    pub row: ArtifactRow,
    pub located: Located,
}

impl Source {
    /// What the slave is told to expect.
    pub fn incoming(&self) -> IncomingFile {
        IncomingFile {
            path: self.row.path.clone(),
            size: self.row.size,
            sha256: self.row.sha256.clone(),
        }
    }
}

/// Like a shell's glob, as `artifacts` patterns are on the slave: `*` stays within a name.
const MATCH: glob::MatchOptions = glob::MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: true,
};

/// The files `specs` name, each once, in path order; the error is the one line for the log.
pub async fn resolve(
    store: &SharedStore,
    master_dir: &Path,
    specs: &[FetchArtifacts],
    this: &ThisBuild<'_>,
) -> Result<Vec<Source>, String> {
    let mut chosen: BTreeMap<String, Source> = BTreeMap::new();
    for spec in specs {
        let pattern = glob::Pattern::new(&spec.path)
            .map_err(|err| format!("fetch_artifacts path {:?}: {err}", spec.path))?;
        let builds = match spec.from {
            FetchFrom::Build => vec![(this.builder.to_string(), this.number, this.build_id)],
            FetchFrom::Upstream => upstream_builds(store, this, spec.builder.as_deref()).await?,
        };
        let mut matched = false;
        for (builder, number, build_id) in &builds {
            let rows = store.artifacts_of(*build_id).await.map_err(|err| {
                format!("cannot read the artifacts of {builder} #{number}: {err}")
            })?;
            for row in rows {
                if !pattern.matches_with(&row.path, MATCH) {
                    continue;
                }
                matched = true;
                if let Some(earlier) = chosen.get(&row.path) {
                    if earlier.builder == *builder && earlier.number == *number {
                        continue;
                    }
                    return Err(format!(
                        "{} is an artifact of both {} #{} and {builder} #{number}; name one with builder = \"…\"",
                        row.path, earlier.builder, earlier.number
                    ));
                }
                let located =
                    artifacts::locate(store, master_dir, builder, *number, *build_id, &row.path)
                        .await
                        .map_err(|err| format!("cannot find {}: {err}", row.path))?
                        .map_or(Located::Gone, |(_, located)| located);
                if located == Located::Gone {
                    return Err(format!(
                        "{} of {builder} #{number} is gone (pruned, or kept only on another master's disk)",
                        row.path
                    ));
                }
                chosen.insert(
                    row.path.clone(),
                    Source {
                        builder: builder.clone(),
                        number: *number,
                        row,
                        located,
                    },
                );
            }
        }
        if !matched {
            let whose = match spec.from {
                FetchFrom::Build => "this build's earlier steps".to_string(),
                FetchFrom::Upstream => builds
                    .iter()
                    .map(|(builder, number, _)| format!("{builder} #{number}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            };
            return Err(format!("no artifact of {whose} matches {}", spec.path));
        }
    }
    let sources: Vec<Source> = chosen.into_values().collect();
    let total: u64 = sources.iter().map(|source| source.row.size).sum();
    if sources.len() as u64 > artifacts::MAX_FILES || total > artifacts::MAX_TOTAL_BYTES {
        return Err(format!(
            "{} files of {total} bytes is over the limit of {} files or {} bytes per step",
            sources.len(),
            artifacts::MAX_FILES,
            artifacts::MAX_TOTAL_BYTES
        ));
    }
    Ok(sources)
}

/// The upstream firing's builds that succeeded (the last build of each builder: one retried
/// after a lost slave finished twice), optionally only `only`'s.
async fn upstream_builds(
    store: &SharedStore,
    this: &ThisBuild<'_>,
    only: Option<&str>,
) -> Result<Vec<(String, i64, i64)>, String> {
    let Some(job) = this.upstream_job else {
        return Err(
            "this build has no upstream build (only a dependent scheduler's builds have one)"
                .into(),
        );
    };
    let record = store
        .job_record(job)
        .await
        .map_err(|err| format!("cannot read the upstream job {job}: {err}"))?;
    let mut last: BTreeMap<String, (i64, BuildResult)> = BTreeMap::new();
    for (builder, number, result) in record.finished {
        if only.is_none_or(|only| only == builder) {
            last.insert(builder, (number, result));
        }
    }
    if let Some(only) = only
        && !last.contains_key(only)
    {
        return Err(format!("the upstream job {job} has no build of {only}"));
    }
    let mut builds = Vec::new();
    for (builder, (number, result)) in last {
        if !result.is_good() {
            continue;
        }
        let detail = store
            .build_detail(&BuildRef::Number {
                builder: builder.clone(),
                number,
            })
            .await
            .map_err(|err| format!("cannot read {builder} #{number}: {err}"))?;
        if let Some(detail) = detail {
            builds.push((builder, number, detail.build.id));
        }
    }
    Ok(builds)
}

/// How a fetch ended.
pub enum Ended {
    /// The slave's report (a refusal is its failure), or one made here when a file could not
    /// be read on this side.
    Exited(ExitReport),
    Lost,
}

/// Streams `sources` to fetch `id` (started with a `ReceiveFiles` listing them) and waits for
/// the slave's report. To stop it, drop it and interrupt `id`: it holds nothing else.
pub async fn stream(
    link: &SlaveLink,
    id: u64,
    events: &mut mpsc::Receiver<SlaveEvent>,
    store: &SharedStore,
    sources: &[Source],
) -> Ended {
    let mut window = Window {
        events,
        in_flight: 0,
    };
    for source in sources {
        if link
            .send_file_piece(Message::FileStart {
                id,
                path: source.row.path.clone(),
                size: source.row.size,
            })
            .is_err()
        {
            return Ended::Lost;
        }
        let reading = artifacts::read_range(
            std::sync::Arc::clone(store),
            source.row.clone(),
            source.located.clone(),
            0,
            source.row.size,
        );
        tokio::pin!(reading);
        loop {
            let bytes = match reading.next().await {
                None => break,
                Some(Ok(bytes)) => bytes,
                Some(Err(err)) => {
                    link.interrupt(id, "the master cannot read the artifact");
                    return Ended::Exited(failed(format!(
                        "cannot read {} of {} #{}: {err}",
                        source.row.path, source.builder, source.number
                    )));
                }
            };
            for data in bytes.chunks(MAX_FILE_CHUNK) {
                if let Some(ended) = window.room().await {
                    return ended;
                }
                window.in_flight += data.len() as u64;
                let message = Message::FileData {
                    id,
                    data: data.to_vec(),
                };
                if link.send_file_piece(message).is_err() {
                    return Ended::Lost;
                }
            }
        }
        let end = Message::FileEnd {
            id,
            sha256: source.row.sha256.clone(),
        };
        if link.send_file_piece(end).is_err() {
            return Ended::Lost;
        }
    }
    loop {
        if let Some(ended) = window.next().await {
            return ended;
        }
    }
}

/// The bytes sent and not yet written on the slave.
struct Window<'a> {
    events: &'a mut mpsc::Receiver<SlaveEvent>,
    in_flight: u64,
}

impl Window<'_> {
    /// Waits until another piece may go; `Some` when the fetch ended meanwhile.
    async fn room(&mut self) -> Option<Ended> {
        while self.in_flight + MAX_FILE_CHUNK as u64 > FILE_WINDOW {
            if let Some(ended) = self.next().await {
                return Some(ended);
            }
        }
        None
    }

    /// Takes the next event of the fetch; `Some` when it ended.
    async fn next(&mut self) -> Option<Ended> {
        match self.events.recv().await {
            Some(SlaveEvent::FileAck(bytes)) => {
                self.in_flight = self.in_flight.saturating_sub(bytes);
                None
            }
            Some(SlaveEvent::Exit(exit)) => Some(Ended::Exited(exit)),
            None => Some(Ended::Lost),
            // A fetch's slave side says nothing else; anything more is not ours.
            Some(_) => None,
        }
    }
}

fn failed(line: String) -> ExitReport {
    ExitReport {
        exit_code: Some(1),
        signal: None,
        elapsed_ms: 0,
        timed_out: false,
        interrupted: false,
        failure: Some(Failure::Failed(line)),
        checked_out: None,
    }
}
