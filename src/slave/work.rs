//! What a connected slave is doing: the checkouts and commands the master started, each a task
//! with its own interrupt token, each ending with exactly one `Exit` message after its output.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::proto::{
    CheckoutRequest, CollectRequest, CommandRequest, ExitReport, Failure, MAX_OUTPUT_CHUNK,
    Message, StreamKind,
};
use crate::slave::checkout::{self, CheckoutSpec, PatchRunner};
use crate::slave::coalesce::{Coalescer, OUTPUT_FLUSH};
use crate::slave::containment::Containment;
use crate::slave::runner::{self, CommandSpec, Stream};

/// Time between SIGTERM and SIGKILL for an interrupted command (and for every command when
/// the connection to the master ends).
const KILL_GRACE: Duration = Duration::from_secs(2);

pub struct Work {
    workdir: PathBuf,
    /// Where try patches are applied: a child process in a running slave.
    patch_runner: PatchRunner,
    /// Where each step's processes are contained, so that none outlives its step.
    containment: Arc<Containment>,
    outgoing: mpsc::Sender<Message>,
    running: HashMap<u64, CancellationToken>,
    /// The fetches (`ReceiveFiles`) under way: where the connection hands their pieces.
    receiving: HashMap<u64, mpsc::UnboundedSender<crate::slave::fetch::Piece>>,
    tasks: JoinSet<u64>,
}

/// One lock per build directory, held by each checkout there. An interrupted checkout is
/// abandoned, not stopped (git cannot be interrupted midway safely), so without it the next
/// build's checkout of the same directory (a stopped speculative land test is followed at once
/// by its retest) could run beside it and have its tree overwritten by the abandoned one.
/// Process-wide, so a checkout abandoned by a connection that was replaced is waited for too.
fn checkout_lock(dir: &std::path::Path) -> Arc<std::sync::Mutex<()>> {
    static LOCKS: std::sync::LazyLock<
        std::sync::Mutex<HashMap<PathBuf, Arc<std::sync::Mutex<()>>>>,
    > = std::sync::LazyLock::new(Default::default);
    let mut locks = LOCKS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Arc::clone(locks.entry(dir.to_path_buf()).or_default())
}

impl Work {
    pub fn new(
        workdir: PathBuf,
        patch_runner: PatchRunner,
        containment: Arc<Containment>,
        outgoing: mpsc::Sender<Message>,
    ) -> Work {
        Work {
            workdir,
            patch_runner,
            containment,
            outgoing,
            running: HashMap::new(),
            receiving: HashMap::new(),
            tasks: JoinSet::new(),
        }
    }

    fn reap(&mut self) {
        while let Some(done) = self.tasks.try_join_next() {
            if let Ok(id) = done {
                self.running.remove(&id);
                self.receiving.remove(&id);
            }
        }
    }

    pub fn start_checkout(&mut self, id: u64, request: CheckoutRequest) {
        self.reap();
        let outgoing = self.outgoing.clone();
        let token = CancellationToken::new();
        self.running.insert(id, token.clone());
        let builder_dir = match builder_dir(&self.workdir, &request.builder) {
            Ok(dir) => dir,
            Err(message) => {
                self.tasks.spawn(report_failure(outgoing, id, message));
                return;
            }
        };
        let patch_runner = self.patch_runner.clone();
        let workdir = self.workdir.clone();
        self.tasks.spawn(async move {
            let started = Instant::now();
            let (lines_tx, mut lines_rx) = mpsc::unbounded_channel::<String>();
            let siblings = request
                .keep_siblings
                .map(|keep| (workdir, request.builder.clone(), keep));
            let spec = CheckoutSpec {
                repo: request.repo,
                branch: request.branch,
                revision: request.revision,
                patch: request.patch,
                patch_level: request.patch_level,
                submodules: request.submodules,
            };
            let dir_lock = checkout_lock(&builder_dir);
            let blocking = tokio::task::spawn_blocking(move || {
                let _one_at_a_time = dir_lock
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let mut log = |line: &str| {
                    let _ = lines_tx.send(format!("{line}\n"));
                };
                if let Some((workdir, dir, keep)) = siblings {
                    remove_stale_siblings(&workdir, &dir, &keep, &mut log);
                }
                checkout::checkout(&builder_dir, &spec, &patch_runner, &mut log).map_err(|err| {
                    if err.is_exception() {
                        Failure::SlaveFault(err.to_string())
                    } else {
                        Failure::Failed(err.to_string())
                    }
                })
            });
            tokio::pin!(blocking);
            let result = loop {
                tokio::select! {
                    Some(line) = lines_rx.recv() => {
                        send_output(&outgoing, id, StreamKind::Info, line.into_bytes()).await;
                    }
                    joined = &mut blocking => break joined,
                    _ = token.cancelled() => {
                        // git cannot be interrupted midway safely; the result is discarded.
                        break Ok(Err(Failure::Failed("interrupted".to_string())));
                    }
                }
            };
            while let Ok(line) = lines_rx.try_recv() {
                send_output(&outgoing, id, StreamKind::Info, line.into_bytes()).await;
            }
            let (checked_out, failure) = match result {
                Ok(Ok(done)) => (Some(done.revision), None),
                Ok(Err(failure)) => (None, Some(failure)),
                // A panic in the checkout is the slave's fault, not the build's.
                Err(join_error) => (
                    None,
                    Some(Failure::SlaveFault(format!(
                        "checkout failed: {join_error}"
                    ))),
                ),
            };
            let exit = ExitReport {
                exit_code: Some(if failure.is_none() { 0 } else { 1 }),
                signal: None,
                elapsed_ms: elapsed_ms(started),
                timed_out: false,
                interrupted: token.is_cancelled(),
                failure,
                checked_out,
            };
            let _ = outgoing.send(Message::Exit { id, exit }).await;
            id
        });
    }

    pub fn start_command(&mut self, id: u64, request: CommandRequest) {
        self.reap();
        let outgoing = self.outgoing.clone();
        let token = CancellationToken::new();
        self.running.insert(id, token.clone());
        let workdir = match builder_dir(&self.workdir, &request.builder).and_then(|dir| {
            match &request.workdir {
                Some(sub) => relative_inside(&dir, sub),
                None => Ok(dir),
            }
        }) {
            Ok(dir) => dir,
            Err(message) => {
                self.tasks.spawn(report_failure(outgoing, id, message));
                return;
            }
        };
        let containment = Arc::clone(&self.containment);
        self.tasks.spawn(async move {
            let started = Instant::now();
            let spec = CommandSpec {
                argv: Vec::new(),
                shell: Some(request.shell),
                workdir,
                env: request.env.into_iter().collect(),
                timeout: request.timeout_secs.map(Duration::from_secs),
                containment: Some(containment),
            };
            let (chunks_tx, mut chunks_rx) = mpsc::channel::<runner::Chunk>(8);
            // Output is gathered into frames (`coalesce`), sent when full, when the other
            // stream has output, or OUTPUT_FLUSH after the first byte held.
            let forward = {
                let outgoing = outgoing.clone();
                async move {
                    let mut coalescer = Coalescer::default();
                    let mut frames = Vec::new();
                    let mut flush_at: Option<tokio::time::Instant> = None;
                    loop {
                        let chunk = match flush_at {
                            None => chunks_rx.recv().await,
                            Some(at) => tokio::select! {
                                chunk = chunks_rx.recv() => chunk,
                                () = tokio::time::sleep_until(at) => {
                                    flush_at = None;
                                    if let Some((stream, data)) = coalescer.take()
                                        && !send_frame(&outgoing, id, stream, data).await
                                    {
                                        return;
                                    }
                                    continue;
                                }
                            },
                        };
                        let Some(chunk) = chunk else { break };
                        let stream = match chunk.stream {
                            Stream::Stdout => StreamKind::Stdout,
                            Stream::Stderr => StreamKind::Stderr,
                        };
                        coalescer.push(stream, chunk.data, &mut |stream, data| {
                            frames.push((stream, data));
                        });
                        for (stream, data) in frames.drain(..) {
                            if !send_frame(&outgoing, id, stream, data).await {
                                return;
                            }
                        }
                        if coalescer.is_empty() {
                            flush_at = None;
                        } else if flush_at.is_none() {
                            flush_at = Some(tokio::time::Instant::now() + OUTPUT_FLUSH);
                        }
                    }
                    if let Some((stream, data)) = coalescer.take() {
                        send_frame(&outgoing, id, stream, data).await;
                    }
                }
            };
            let (finished, ()) =
                tokio::join!(runner::run(&spec, chunks_tx, token, KILL_GRACE), forward);
            let exit = match finished {
                Ok(finished) => ExitReport {
                    exit_code: finished.exit_code,
                    signal: finished.signal,
                    elapsed_ms: u64::try_from(finished.elapsed.as_millis()).unwrap_or(u64::MAX),
                    timed_out: finished.timed_out,
                    interrupted: finished.interrupted,
                    failure: None,
                    checked_out: None,
                },
                Err(err) => ExitReport {
                    exit_code: None,
                    signal: None,
                    elapsed_ms: elapsed_ms(started),
                    timed_out: false,
                    interrupted: false,
                    failure: Some(Failure::Failed(err.to_string())),
                    checked_out: None,
                },
            };
            let _ = outgoing.send(Message::Exit { id, exit }).await;
            id
        });
    }

    /// Sends the test reports a step left (issue 26): see `slave::reports`.
    pub fn collect_reports(&mut self, id: u64, request: crate::proto::CollectReportsRequest) {
        self.reap();
        let outgoing = self.outgoing.clone();
        let token = CancellationToken::new();
        self.running.insert(id, token.clone());
        let dir = match builder_dir(&self.workdir, &request.builder).and_then(|dir| match &request
            .workdir
        {
            Some(sub) => relative_inside(&dir, sub),
            None => Ok(dir),
        }) {
            Ok(dir) => dir,
            Err(message) => {
                self.tasks.spawn(async move {
                    let refused = vec![message];
                    let _ = outgoing.send(Message::ReportsDone { id, refused }).await;
                    id
                });
                return;
            }
        };
        self.tasks.spawn(async move {
            let sending = tokio::task::spawn_blocking(move || {
                crate::slave::reports::send(&dir, id, &request, &outgoing, &token);
            });
            if let Err(err) = sending.await {
                tracing::error!(id, "sending test reports failed: {err}");
            }
            id
        });
    }

    /// Sends the files of the builder's work tree that match the request's globs
    /// (`slave::sender::send_artifacts`); an `Exit` ends it.
    pub fn start_collect(&mut self, id: u64, request: CollectRequest) {
        self.reap();
        let outgoing = self.outgoing.clone();
        let token = CancellationToken::new();
        self.running.insert(id, token.clone());
        let dir = match builder_dir(&self.workdir, &request.builder) {
            Ok(dir) => dir,
            Err(message) => {
                self.tasks.spawn(report_failure(outgoing, id, message));
                return;
            }
        };
        self.tasks.spawn(async move {
            let started = Instant::now();
            let sending = {
                let (outgoing, token) = (outgoing.clone(), token.clone());
                tokio::task::spawn_blocking(move || {
                    crate::slave::sender::send_artifacts(&outgoing, id, &dir, &request, &token)
                })
            };
            let failure = sending
                .await
                .unwrap_or_else(|err| Some(format!("the file collection failed: {err}")));
            let exit = ExitReport {
                exit_code: Some(i32::from(failure.is_some())),
                signal: None,
                elapsed_ms: elapsed_ms(started),
                timed_out: false,
                interrupted: token.is_cancelled(),
                failure: failure.map(Failure::Failed),
                checked_out: None,
            };
            let _ = outgoing.send(Message::Exit { id, exit }).await;
            id
        });
    }

    /// Writes the artifacts the master sends next into the builder's work tree
    /// (`slave::fetch`); an `Exit` ends it, its failure the one line saying why.
    pub fn start_receive(&mut self, id: u64, request: crate::proto::ReceiveRequest) {
        self.reap();
        let outgoing = self.outgoing.clone();
        let dir = match builder_dir(&self.workdir, &request.builder) {
            Ok(dir) => dir,
            Err(message) => {
                self.tasks.spawn(report_failure(outgoing, id, message));
                return;
            }
        };
        let (pieces_tx, mut pieces_rx) = mpsc::unbounded_channel();
        self.receiving.insert(id, pieces_tx);
        self.running.insert(id, CancellationToken::new());
        self.tasks.spawn(async move {
            let started = Instant::now();
            let writer = {
                let outgoing = outgoing.clone();
                tokio::task::spawn_blocking(move || {
                    crate::slave::fetch::receive(&dir, id, &request, &mut pieces_rx, &outgoing)
                })
            };
            let failure = match writer.await {
                Ok(failure) => failure,
                Err(err) => Some(format!("the fetch failed: {err}")),
            };
            let exit = ExitReport {
                exit_code: Some(i32::from(failure.is_some())),
                signal: None,
                elapsed_ms: elapsed_ms(started),
                timed_out: false,
                interrupted: false,
                failure: failure.map(Failure::Failed),
                checked_out: None,
            };
            let _ = outgoing.send(Message::Exit { id, exit }).await;
            id
        });
    }

    /// A piece of a fetch; one for a fetch that ended (refused, interrupted) is dropped.
    pub fn receive_piece(&mut self, id: u64, piece: crate::slave::fetch::Piece) {
        if let Some(pieces) = self.receiving.get(&id)
            && pieces.send(piece).is_err()
        {
            self.receiving.remove(&id);
        }
    }

    pub fn interrupt(&mut self, id: u64, reason: &str) {
        // A fetch waits for its next piece: without its sender it ends at once.
        self.receiving.remove(&id);
        if let Some(token) = self.running.get(&id) {
            tracing::info!(id, "interrupting: {reason}");
            token.cancel();
        }
    }

    /// The master is gone: terminate everything (SIGTERM, then SIGKILL after the grace), and
    /// wait for it, so nothing of a build outlives the connection it belonged to.
    pub async fn stop_all(&mut self) {
        self.receiving.clear();
        for token in self.running.values() {
            token.cancel();
        }
        let all_done = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(KILL_GRACE + Duration::from_secs(2), all_done)
            .await
            .is_err()
        {
            // Dropping the runner futures kills their process groups outright.
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
        self.running.clear();
    }
}

async fn send_output(outgoing: &mpsc::Sender<Message>, id: u64, stream: StreamKind, data: Vec<u8>) {
    for piece in data.chunks(MAX_OUTPUT_CHUNK) {
        let message = Message::Output {
            id,
            stream,
            data: piece.to_vec(),
        };
        if outgoing.send(message).await.is_err() {
            return;
        }
    }
}

/// Sends one output frame (at most MAX_OUTPUT_CHUNK); false when the connection is gone.
async fn send_frame(
    outgoing: &mpsc::Sender<Message>,
    id: u64,
    stream: StreamKind,
    data: Vec<u8>,
) -> bool {
    outgoing
        .send(Message::Output { id, stream, data })
        .await
        .is_ok()
}

async fn report_failure(outgoing: mpsc::Sender<Message>, id: u64, message: String) -> u64 {
    let exit = ExitReport {
        exit_code: None,
        signal: None,
        elapsed_ms: 0,
        timed_out: false,
        interrupted: false,
        failure: Some(Failure::Failed(message)),
        checked_out: None,
    };
    let _ = outgoing.send(Message::Exit { id, exit }).await;
    id
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Removes the builder's other directories beside `dir` (`BUILDER~N`, made while `BUILDER` was
/// held for a shell) that the master does not list in `keep` (held, or a running build's) and
/// no checkout is writing, each named in the checkout's log. A failure is logged, not fatal:
/// the build does not need them gone.
fn remove_stale_siblings(workdir: &Path, dir: &str, keep: &[String], log: &mut dyn FnMut(&str)) {
    let base = match dir.rsplit_once('~') {
        Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => dir,
    };
    if base.is_empty() || base.contains('/') {
        return;
    }
    let Ok(entries) = std::fs::read_dir(workdir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let sibling = name
            .strip_prefix(base)
            .and_then(|rest| rest.strip_prefix('~'));
        let numbered =
            sibling.is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !numbered || name == dir || keep.contains(&name) {
            continue;
        }
        // Not a symlink's target: only a directory of the work directory itself.
        if !entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            continue;
        }
        let path = entry.path();
        let lock = checkout_lock(&path);
        let Ok(_no_checkout) = lock.try_lock() else {
            continue;
        };
        match std::fs::remove_dir_all(&path) {
            Ok(()) => log(&format!(
                "removed {name}: no hold or build uses it any more"
            )),
            Err(err) => log(&format!("cannot remove {name}: {err}")),
        }
    }
}

fn builder_dir(workdir: &Path, builder: &str) -> Result<PathBuf, String> {
    relative_inside(workdir, builder)
}

/// `base/sub`, refusing anything that would leave `base`.
pub(crate) fn relative_inside(base: &Path, sub: &str) -> Result<PathBuf, String> {
    let path = Path::new(sub);
    let safe = !sub.is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !safe {
        return Err(format!(
            "refusing directory '{sub}': it must stay inside {}",
            base.display()
        ));
    }
    Ok(base.join(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_builders_unused_numbered_directories_are_removed() {
        let work = tempfile::tempdir().expect("temp dir");
        let names = [
            "linux", "linux~2", "linux~3", "linux~4", "linux~x", "linux2~2", "mac~2",
        ];
        for name in names {
            std::fs::create_dir(work.path().join(name)).expect("dir");
        }
        std::fs::write(work.path().join("linux~5"), "a file").expect("file");
        let mut lines = Vec::new();
        remove_stale_siblings(work.path(), "linux", &["linux~3".into()], &mut |line| {
            lines.push(line.to_string());
        });
        let left = |name: &str| work.path().join(name).exists();
        assert!(!left("linux~2") && !left("linux~4"), "{lines:?}");
        for name in [
            "linux", "linux~3", "linux~x", "linux2~2", "mac~2", "linux~5",
        ] {
            assert!(left(name), "{name} stays");
        }
        assert_eq!(lines.len(), 2, "{lines:?}");
        // From a numbered directory the base builder's own one stays too.
        remove_stale_siblings(work.path(), "linux~3", &[], &mut |_| {});
        assert!(left("linux") && left("linux~3"));
    }

    #[test]
    fn directories_stay_inside() {
        let base = Path::new("/w");
        assert_eq!(
            relative_inside(base, "linux"),
            Ok(PathBuf::from("/w/linux"))
        );
        assert_eq!(
            relative_inside(base, "a/./b"),
            Ok(PathBuf::from("/w/a/./b"))
        );
        for bad in ["", "..", "a/../../x", "/etc"] {
            assert!(relative_inside(base, bad).is_err(), "{bad}");
        }
    }
}
