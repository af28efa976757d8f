//! Running one build-step command on a slave: this module owns starting it in a process group
//! of its own, streaming its stdout and stderr as raw chunks while it runs, the timeout and the
//! interrupt (SIGTERM to the group, SIGKILL after a grace), and the guarantee that no process
//! of the step outlives it, even when the caller drops the future because the master went away.
//! It does not own the RPC that carries the output to the master, nor checkouts and patches.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::slave::containment::{Cell, Containment};

/// What to run, and where.
#[derive(Debug, Clone)]
pub struct CommandSpec {
    /// Program and arguments, executed directly (no shell) when non-empty.
    pub argv: Vec<String>,
    /// Run with `/bin/sh -c` when `argv` is empty.
    pub shell: Option<String>,
    /// The working directory; created (with its parents) if missing.
    pub workdir: PathBuf,
    /// Added to (and overriding) the slave's own environment.
    pub env: BTreeMap<String, String>,
    /// Wall-clock limit; when it elapses the group is terminated as for an interrupt.
    pub timeout: Option<Duration>,
    /// Where the step's processes are contained beyond its process group (a cgroup, or a tag
    /// with the slave as subreaper); `None` contains by the process group alone.
    pub containment: Option<Arc<Containment>>,
}

/// Which pipe a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Output exactly as one `read` returned it: raw bytes, at most [`MAX_CHUNK`] of them, not
/// split at lines or characters.
#[derive(Debug)]
pub struct Chunk {
    pub stream: Stream,
    pub data: Vec<u8>,
}

/// How the command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// The exit status, when the command exited normally.
    pub exit_code: Option<i32>,
    /// The signal number, when a signal killed it.
    pub signal: Option<i32>,
    /// From just before the spawn until the main process was reaped.
    pub elapsed: Duration,
    /// The timeout elapsed and the group was terminated.
    pub timed_out: bool,
    /// The interrupt token was cancelled and the group was terminated (or, if it was
    /// cancelled before `run` was called, nothing was started).
    pub interrupted: bool,
}

/// Why a command could not be run at all. A command that ran and failed is a `Finished`.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("nothing to run: neither argv nor a shell command was given")]
    Empty,
    #[error("cannot create the work directory {}: {source}", dir.display())]
    Workdir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("cannot contain {program} (cgroup): {source}")]
    Contain {
        program: String,
        source: std::io::Error,
    },
    #[error("lost track of {program} while waiting for it: {source}")]
    Wait {
        program: String,
        source: std::io::Error,
    },
}

/// The most one [`Chunk`] holds: the read buffer's size.
pub const MAX_CHUNK: usize = 64 * 1024;

/// How long the pipes are still read once the main process exited and its group was killed.
/// Everything the group wrote is already in the pipe by then; only a process that left the
/// group can keep the pipe open, and it must not keep the step running forever.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);

/// Sends SIGKILL to the step's process group when dropped, so that dropping the `run` future
/// (the slave lost its master) still ends every process of the step. Disarmed once the group
/// has been killed after the main process exited, because from then on the group id may be
/// reused by an unrelated process.
struct GroupGuard {
    pgid: Option<Pid>,
}

impl GroupGuard {
    /// Best effort: the group being gone already (ESRCH) is the normal case late in a step.
    fn signal(&self, signal: Signal) {
        let Some(pgid) = self.pgid else {
            return;
        };
        match killpg(pgid, signal) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(err) => tracing::warn!(%pgid, ?signal, "cannot signal the process group: {err}"),
        }
    }

    fn kill_and_disarm(&mut self) {
        self.signal(Signal::SIGKILL);
        self.pgid = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
    }
}

/// Holds the step's cell; `take`n when the step ends normally, dropped (killing the cell's
/// processes) when the future is.
struct CellGuard(Option<Cell>);

/// Where the supervisor is in ending the command.
#[derive(Clone, Copy)]
enum Ending {
    Running,
    /// SIGTERM was sent; SIGKILL follows at this instant.
    Terminating {
        kill_at: Instant,
    },
    Killed,
}

/// Runs `spec` to its end, sending its output to `output` as it comes.
///
/// `output` gives backpressure: a full channel stops the reading, so the command blocks on
/// its pipe (its timeout still runs). If the receiver is dropped the output is read and
/// discarded, so the command never blocks on a full pipe. When the timeout elapses or
/// `interrupt` is cancelled, the whole process group gets SIGTERM, then SIGKILL after
/// `kill_grace`. When the main process exits, whatever is left of its group is killed.
/// Dropping the returned future kills the group at once. A token cancelled before the call
/// starts nothing and reports `interrupted`.
pub async fn run(
    spec: &CommandSpec,
    output: mpsc::Sender<Chunk>,
    interrupt: CancellationToken,
    kill_grace: Duration,
) -> Result<Finished, RunError> {
    let (program, args): (&str, Vec<&str>) = match (spec.argv.split_first(), &spec.shell) {
        (Some((program, args)), _) => (program, args.iter().map(String::as_str).collect()),
        (None, Some(shell)) => ("/bin/sh", vec!["-c", shell]),
        (None, None) => return Err(RunError::Empty),
    };
    if interrupt.is_cancelled() {
        return Ok(Finished {
            exit_code: None,
            signal: None,
            elapsed: Duration::ZERO,
            timed_out: false,
            interrupted: true,
        });
    }
    tokio::fs::create_dir_all(&spec.workdir)
        .await
        .map_err(|source| RunError::Workdir {
            dir: spec.workdir.clone(),
            source,
        })?;
    let cell = match &spec.containment {
        Some(containment) => Some(containment.cell().map_err(|source| RunError::Contain {
            program: program.to_string(),
            source,
        })?),
        None => None,
    };
    // Dropped last (declared first): whatever the step started is killed even when this
    // future is dropped, after the group guard has done its part.
    let mut cell = CellGuard(cell);
    let mut command = Command::new(program);
    if let Some(cell) = &cell.0 {
        let (name, value) = cell.env();
        command.env(name, value);
        cell.prepare(&mut command);
    }
    command
        .args(&args)
        .current_dir(&spec.workdir)
        .envs(&spec.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        // Redundant with the guard; kept so the main process dies even if the group id were
        // unknown.
        .kill_on_drop(true);
    let started = Instant::now();
    let mut child = command.spawn().map_err(|source| RunError::Spawn {
        program: program.to_string(),
        source,
    })?;
    // With process_group(0) the child's pid is also its group id. Declared after `child` so
    // it drops first, while the main process is not yet reaped and the group id still ours.
    let mut guard = GroupGuard {
        pgid: child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .map(Pid::from_raw),
    };
    tracing::debug!(program, pgid = ?guard.pgid, "command started");
    let exited = CancellationToken::new();
    let pump_stdout = pump(
        child.stdout.take(),
        Stream::Stdout,
        output.clone(),
        exited.clone(),
    );
    let pump_stderr = pump(child.stderr.take(), Stream::Stderr, output, exited.clone());
    let supervise = async {
        let deadline = spec.timeout.map(|timeout| started + timeout);
        let mut ending = Ending::Running;
        let mut timed_out = false;
        let mut interrupted = false;
        let status = loop {
            // Disabled branches still build their futures; any instant will do for them.
            let kill_at = match ending {
                Ending::Terminating { kill_at } => Some(kill_at),
                Ending::Running | Ending::Killed => None,
            };
            let running = matches!(ending, Ending::Running);
            tokio::select! {
                status = child.wait() => break status,
                () = tokio::time::sleep_until(deadline.unwrap_or(started)),
                    if running && deadline.is_some() =>
                {
                    tracing::debug!(program, "timed out; terminating the process group");
                    timed_out = true;
                    guard.signal(Signal::SIGTERM);
                    ending = Ending::Terminating { kill_at: Instant::now() + kill_grace };
                }
                () = interrupt.cancelled(), if running => {
                    tracing::debug!(program, "interrupted; terminating the process group");
                    interrupted = true;
                    guard.signal(Signal::SIGTERM);
                    ending = Ending::Terminating { kill_at: Instant::now() + kill_grace };
                }
                () = tokio::time::sleep_until(kill_at.unwrap_or(started)), if kill_at.is_some() => {
                    tracing::debug!(program, "still running after the grace; killing the group");
                    guard.signal(Signal::SIGKILL);
                    ending = Ending::Killed;
                }
            }
        };
        let elapsed = started.elapsed();
        // Whatever the main process left in its group goes with it. The main process is
        // already reaped here, but Linux does not hand out a pid while a group of that id
        // still has members, so this reaches exactly the leftovers (or nobody).
        guard.kill_and_disarm();
        // And whatever left the group (setsid, double fork) goes too, in the cell. Blocking
        // (it waits until they are gone), so off the runtime's threads.
        if let Some(cell) = cell.0.take() {
            let _ = tokio::task::spawn_blocking(move || drop(cell)).await;
        }
        exited.cancel();
        (status, elapsed, timed_out, interrupted)
    };
    let ((status, elapsed, timed_out, interrupted), (), ()) =
        tokio::join!(supervise, pump_stdout, pump_stderr);
    let status = status.map_err(|source| RunError::Wait {
        program: program.to_string(),
        source,
    })?;
    Ok(Finished {
        exit_code: status.code(),
        signal: status.signal(),
        elapsed,
        timed_out,
        interrupted,
    })
}

/// Copies one pipe to `output`, one chunk per `read`, until end of file. Once `exited` is
/// cancelled it reads for at most [`DRAIN_AFTER_EXIT`] more, not counting time spent waiting
/// for the receiver (a slow receiver must not cost output the group already wrote).
async fn pump(
    pipe: Option<impl AsyncRead + Unpin>,
    stream: Stream,
    output: mpsc::Sender<Chunk>,
    exited: CancellationToken,
) {
    let Some(mut pipe) = pipe else {
        return;
    };
    let mut buffer = vec![0u8; MAX_CHUNK];
    let mut receiver_gone = false;
    let mut stop_at: Option<Instant> = None;
    loop {
        // Both checks are explicit, before each read: a process that left the group and
        // writes without pause keeps the read always ready, and `select!` and `timeout_at`
        // would then notice the exit or the deadline only thanks to tokio's cooperative budget.
        if stop_at.is_none() && exited.is_cancelled() {
            stop_at = Some(Instant::now() + DRAIN_AFTER_EXIT);
        }
        let read = match stop_at {
            None => tokio::select! {
                read = pipe.read(&mut buffer) => read,
                () = exited.cancelled() => continue,
            },
            Some(stop_at) => {
                if Instant::now() >= stop_at {
                    tracing::debug!(?stream, "pipe still open after the group was killed");
                    return;
                }
                match tokio::time::timeout_at(stop_at, pipe.read(&mut buffer)).await {
                    Ok(read) => read,
                    Err(_) => {
                        tracing::debug!(?stream, "pipe still open after the group was killed");
                        return;
                    }
                }
            }
        };
        let count = match read {
            Ok(0) => return,
            Ok(count) => count,
            Err(err) => {
                tracing::warn!(?stream, "cannot read the command's output: {err}");
                return;
            }
        };
        if receiver_gone {
            continue;
        }
        let sending = Instant::now();
        let chunk = Chunk {
            stream,
            data: buffer[..count].to_vec(),
        };
        if output.send(chunk).await.is_err() {
            // Nobody wants the output any more, but the command must not block on a full pipe.
            receiver_gone = true;
        }
        if let Some(stop_at) = stop_at.as_mut() {
            *stop_at += sending.elapsed();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const GRACE: Duration = Duration::from_secs(1);

    fn shell(command: &str, workdir: &Path) -> CommandSpec {
        CommandSpec {
            argv: Vec::new(),
            shell: Some(command.to_string()),
            workdir: workdir.to_path_buf(),
            env: BTreeMap::new(),
            timeout: None,
            containment: None,
        }
    }

    /// Runs `spec` to the end and returns how it finished with its stdout and stderr.
    async fn run_collecting(spec: &CommandSpec) -> (Finished, Vec<u8>, Vec<u8>) {
        let (output_tx, mut output_rx) = mpsc::channel(16);
        let running = run(spec, output_tx, CancellationToken::new(), GRACE);
        let gather = async {
            let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
            while let Some(chunk) = output_rx.recv().await {
                assert!(!chunk.data.is_empty() && chunk.data.len() <= MAX_CHUNK);
                match chunk.stream {
                    Stream::Stdout => stdout.extend(chunk.data),
                    Stream::Stderr => stderr.extend(chunk.data),
                }
            }
            (stdout, stderr)
        };
        let (finished, (stdout, stderr)) =
            within_a_minute(async { tokio::join!(running, gather) }).await;
        (finished.expect("the command runs"), stdout, stderr)
    }

    /// A runner that never returns fails the test instead of hanging it.
    async fn within_a_minute<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(60), future)
            .await
            .expect("run returned within a minute")
    }

    /// Polls `condition` every few milliseconds; fails the test after ten seconds.
    async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A zombie counts as dead: it was killed, and reaping it is its new parent's business
    /// (PID 1 in a container may be slow at it).
    fn alive(pid: i32) -> bool {
        if nix::sys::signal::kill(Pid::from_raw(pid), None).is_err() {
            return false;
        }
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // The state follows the parenthesised command name.
            Ok(stat) => !stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
            Err(_) => true,
        }
    }

    fn read_pid(path: &Path) -> Option<i32> {
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    async fn wait_for_pid(path: &Path) -> i32 {
        let mut pid = None;
        wait_until(&format!("{} is written", path.display()), || {
            pid = read_pid(path);
            pid.is_some()
        })
        .await;
        pid.unwrap_or_default()
    }

    async fn wait_gone(pid: i32) {
        wait_until(&format!("process {pid} is gone"), || !alive(pid)).await;
    }

    /// Kills a process the test let escape from the step's group, even if the test fails.
    struct KillOnDrop(i32);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(Pid::from_raw(self.0), Signal::SIGKILL);
        }
    }

    #[tokio::test]
    async fn output_streams_before_the_command_exits() {
        let dir = tempfile::tempdir().expect("temp dir");
        let spec = shell("echo first; sleep 2; echo second", dir.path());
        let (output_tx, mut output_rx) = mpsc::channel(16);
        let running =
            tokio::spawn(
                async move { run(&spec, output_tx, CancellationToken::new(), GRACE).await },
            );
        let first = tokio::time::timeout(Duration::from_secs(1), output_rx.recv())
            .await
            .expect("the first chunk arrives while the command still sleeps")
            .expect("a chunk");
        assert_eq!(
            (first.stream, first.data.as_slice()),
            (Stream::Stdout, &b"first\n"[..])
        );
        let second = output_rx.recv().await.expect("a second chunk");
        assert_eq!(second.data, b"second\n");
        let finished = running.await.expect("joined").expect("runs");
        assert_eq!(finished.exit_code, Some(0));
        assert!(finished.elapsed >= Duration::from_secs(2));
    }

    #[tokio::test]
    async fn stdout_and_stderr_are_kept_apart() {
        let dir = tempfile::tempdir().expect("temp dir");
        let spec = shell(
            "echo out; echo err >&2; echo more; echo again >&2",
            dir.path(),
        );
        let (finished, stdout, stderr) = run_collecting(&spec).await;
        assert_eq!(finished.exit_code, Some(0));
        assert_eq!(stdout, b"out\nmore\n");
        assert_eq!(stderr, b"err\nagain\n");
    }

    #[tokio::test]
    async fn binary_output_is_byte_exact() {
        let dir = tempfile::tempdir().expect("temp dir");
        let spec = shell("head -c 1000000 /dev/urandom > blob; cat blob", dir.path());
        let (finished, stdout, _) = run_collecting(&spec).await;
        assert_eq!(finished.exit_code, Some(0));
        let blob = std::fs::read(dir.path().join("blob")).expect("the blob");
        assert_eq!(blob.len(), 1_000_000);
        assert!(stdout == blob, "the output differs from the file");
    }

    #[tokio::test]
    async fn large_output_arrives_whole() {
        let dir = tempfile::tempdir().expect("temp dir");
        let spec = shell("head -c 50000000 /dev/zero", dir.path());
        let (output_tx, mut output_rx) = mpsc::channel(16);
        let running = run(&spec, output_tx, CancellationToken::new(), GRACE);
        let count = async {
            let mut total = 0;
            while let Some(chunk) = output_rx.recv().await {
                assert!(chunk.data.len() <= MAX_CHUNK);
                total += chunk.data.len();
            }
            total
        };
        let (finished, total) = within_a_minute(async { tokio::join!(running, count) }).await;
        assert_eq!(finished.expect("runs").exit_code, Some(0));
        assert_eq!(total, 50_000_000);
    }

    #[tokio::test]
    async fn output_nobody_receives_is_drained() {
        let dir = tempfile::tempdir().expect("temp dir");
        // `&&`: a head killed by SIGPIPE (or stuck) never writes `done`.
        let spec = shell("head -c 10000000 /dev/zero && echo done > done", dir.path());
        let (output_tx, output_rx) = mpsc::channel(1);
        drop(output_rx);
        let finished = within_a_minute(run(&spec, output_tx, CancellationToken::new(), GRACE))
            .await
            .expect("runs");
        assert_eq!(finished.exit_code, Some(0), "no SIGPIPE");
        assert!(dir.path().join("done").exists());
    }

    #[tokio::test]
    async fn the_exit_code_is_reported() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (finished, _, _) = run_collecting(&shell("exit 7", dir.path())).await;
        assert_eq!((finished.exit_code, finished.signal), (Some(7), None));
        assert!(!finished.timed_out && !finished.interrupted);
    }

    #[tokio::test]
    async fn death_by_signal_is_reported() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (finished, _, _) = run_collecting(&shell("kill -9 $$", dir.path())).await;
        assert_eq!((finished.exit_code, finished.signal), (None, Some(9)));
    }

    #[tokio::test]
    async fn argv_runs_without_a_shell() {
        let dir = tempfile::tempdir().expect("temp dir");
        let spec = CommandSpec {
            argv: vec!["printf".into(), "%s|".into(), "a b".into(), "$HOME".into()],
            shell: None,
            ..shell("", dir.path())
        };
        let (finished, stdout, _) = run_collecting(&spec).await;
        assert_eq!(finished.exit_code, Some(0));
        assert_eq!(stdout, b"a b|$HOME|");
    }

    #[tokio::test]
    async fn env_and_workdir_are_honoured() {
        let dir = tempfile::tempdir().expect("temp dir");
        let workdir = dir.path().join("build").join("step");
        let mut spec = shell("echo \"$GREETING\"; pwd -P; test -n \"$PATH\"", &workdir);
        spec.env.insert("GREETING".into(), "hello there".into());
        let (finished, stdout, _) = run_collecting(&spec).await;
        assert_eq!(finished.exit_code, Some(0), "PATH is inherited");
        let expected = format!(
            "hello there\n{}\n",
            workdir.canonicalize().expect("created").display()
        );
        assert_eq!(String::from_utf8_lossy(&stdout), expected);
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut spec = shell(
            "sleep 300 & echo $! > grandchild.pid; sleep 300",
            dir.path(),
        );
        spec.timeout = Some(Duration::from_secs(1));
        let (finished, _, _) = run_collecting(&spec).await;
        assert!(finished.timed_out && !finished.interrupted);
        assert_eq!(finished.signal, Some(15), "SIGTERM was enough");
        assert!(finished.elapsed < Duration::from_secs(10));
        let grandchild = read_pid(&dir.path().join("grandchild.pid")).expect("pid written");
        wait_gone(grandchild).await;
    }

    #[tokio::test]
    async fn an_interrupt_kills_the_whole_group_even_if_it_ignores_sigterm() {
        let dir = tempfile::tempdir().expect("temp dir");
        let spec = shell(
            "trap '' TERM; sleep 300 & echo $! > grandchild.pid; while :; do sleep 1; done",
            dir.path(),
        );
        let interrupt = CancellationToken::new();
        let (output_tx, _output_rx) = mpsc::channel(16);
        let pid_file = dir.path().join("grandchild.pid");
        let trigger = async {
            let grandchild = wait_for_pid(&pid_file).await;
            interrupt.cancel();
            grandchild
        };
        let interrupted = run(
            &spec,
            output_tx,
            interrupt.clone(),
            Duration::from_millis(300),
        );
        let (finished, grandchild) =
            within_a_minute(async { tokio::join!(interrupted, trigger) }).await;
        let finished = finished.expect("runs");
        assert!(finished.interrupted && !finished.timed_out);
        assert_eq!(
            finished.signal,
            Some(9),
            "SIGTERM was ignored, SIGKILL was not"
        );
        wait_gone(grandchild).await;
    }

    #[tokio::test]
    async fn an_interrupt_before_the_start_runs_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let spec = shell("touch ran", dir.path());
        let interrupt = CancellationToken::new();
        interrupt.cancel();
        let (output_tx, _output_rx) = mpsc::channel(1);
        let finished = run(&spec, output_tx, interrupt, GRACE).await.expect("runs");
        assert!(finished.interrupted);
        assert_eq!((finished.exit_code, finished.signal), (None, None));
        assert!(!dir.path().join("ran").exists());
    }

    #[tokio::test]
    async fn dropping_the_future_kills_the_group() {
        let dir = tempfile::tempdir().expect("temp dir");
        let spec = shell(
            "echo $$ > main.pid; sleep 300 & echo $! > grandchild.pid; sleep 300",
            dir.path(),
        );
        let (output_tx, _output_rx) = mpsc::channel(16);
        let main_file = dir.path().join("main.pid");
        let grandchild_file = dir.path().join("grandchild.pid");
        let started = async {
            (
                wait_for_pid(&main_file).await,
                wait_for_pid(&grandchild_file).await,
            )
        };
        // Leaving the select drops the losing `run` future, as a lost connection would.
        let (main, grandchild) = tokio::select! {
            finished = run(&spec, output_tx, CancellationToken::new(), GRACE) => {
                panic!("the command ended by itself: {finished:?}")
            }
            pids = started => pids,
        };
        wait_gone(main).await;
        wait_gone(grandchild).await;
    }

    #[tokio::test]
    async fn leftovers_in_the_group_die_when_the_command_exits() {
        let dir = tempfile::tempdir().expect("temp dir");
        // The background sleep keeps both pipes open. One chunk on each stream and room for
        // one in the channel: `run` cannot return (and drop its guard) before the test
        // receives, so the grandchild must die because the main process exited.
        let spec = shell(
            "sleep 300 & echo $! > grandchild.pid; echo out; echo err >&2",
            dir.path(),
        );
        let (output_tx, mut output_rx) = mpsc::channel::<Chunk>(1);
        let pid_file = dir.path().join("grandchild.pid");
        let check = async {
            wait_gone(wait_for_pid(&pid_file).await).await;
            let mut received = 0;
            while let Some(chunk) = output_rx.recv().await {
                received += chunk.data.len();
            }
            received
        };
        let running = run(&spec, output_tx, CancellationToken::new(), GRACE);
        let (finished, received) = within_a_minute(async { tokio::join!(running, check) }).await;
        assert_eq!(finished.expect("runs").exit_code, Some(0));
        assert_eq!(received, "out\nerr\n".len());
    }

    /// Runs a command that leaves `escapee` running in a session of its own, holding the
    /// pipes open, and checks that `run` still returns. The script waits until the escapee
    /// wrote its pid, which it does only after `setsid` succeeded, so the group kill cannot
    /// catch it first. Returns the escapee, to be killed when dropped.
    async fn run_leaving_an_escapee(escapee: &str, receive: bool) -> KillOnDrop {
        let dir = tempfile::tempdir().expect("temp dir");
        let spec = shell(
            &format!(
                "setsid sh -c 'echo $$ > tmp.pid; mv tmp.pid escaped.pid; exec {escapee}' & \
                 while [ ! -e escaped.pid ]; do sleep 0.01; done; echo bye"
            ),
            dir.path(),
        );
        let (output_tx, mut output_rx) = mpsc::channel::<Chunk>(16);
        if !receive {
            output_rx.close();
        }
        let gather = async {
            let mut stdout = Vec::new();
            while let Some(chunk) = output_rx.recv().await {
                stdout.extend(chunk.data);
            }
            stdout
        };
        let running = run(&spec, output_tx, CancellationToken::new(), GRACE);
        let (finished, stdout) = within_a_minute(async { tokio::join!(running, gather) }).await;
        let escaped = KillOnDrop(read_pid(&dir.path().join("escaped.pid")).expect("pid written"));
        assert_eq!(finished.expect("runs").exit_code, Some(0));
        if receive {
            assert!(stdout.starts_with(b"bye\n"), "{stdout:?}");
        }
        escaped
    }

    #[tokio::test]
    async fn a_process_that_left_the_group_does_not_hold_the_step() {
        let escaped = run_leaving_an_escapee("sleep 300", true).await;
        assert!(
            alive(escaped.0),
            "it left the group, so it survives the step"
        );
    }

    #[tokio::test]
    async fn a_process_that_left_the_group_and_writes_forever_does_not_hold_the_step() {
        // Nobody receives, so no send ever waits and a read is nearly always ready: only the
        // drain deadline ends the step. (`yes` dies of EPIPE once `run` closed the pipes.)
        run_leaving_an_escapee("yes", false).await;
    }

    #[tokio::test]
    async fn a_missing_program_is_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let spec = CommandSpec {
            argv: vec!["/no/such/program".into(), "--flag".into()],
            shell: None,
            workdir: dir.path().to_path_buf(),
            env: BTreeMap::new(),
            timeout: None,
            containment: None,
        };
        let (output_tx, _output_rx) = mpsc::channel(1);
        let err = run(&spec, output_tx, CancellationToken::new(), GRACE)
            .await
            .expect_err("cannot start");
        assert!(matches!(err, RunError::Spawn { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("/no/such/program"), "{message}");
        assert!(message.contains("No such file or directory"), "{message}");
    }

    #[tokio::test]
    async fn an_unusable_workdir_or_empty_command_is_an_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("file"), "").expect("a file");
        let (output_tx, _output_rx) = mpsc::channel(1);
        let spec = shell("true", &dir.path().join("file").join("sub"));
        let err = run(&spec, output_tx.clone(), CancellationToken::new(), GRACE)
            .await
            .expect_err("a file is in the way");
        assert!(matches!(err, RunError::Workdir { .. }), "{err:?}");
        let spec = CommandSpec {
            shell: None,
            ..shell("", dir.path())
        };
        let err = run(&spec, output_tx, CancellationToken::new(), GRACE)
            .await
            .expect_err("nothing to run");
        assert!(matches!(err, RunError::Empty), "{err:?}");
    }
}
