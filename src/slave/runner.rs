//! Running one build-step command on a slave: in a process group of its own, with output
//! streamed as it comes, a timeout, an interrupt (SIGTERM to the group, SIGKILL after a grace),
//! and a guarantee that nothing of the group outlives the step, even when the caller drops the
//! future because the master went away. The RPC and checkouts live elsewhere.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What to run.
#[derive(Debug, Clone)]
pub struct CommandSpec {
    /// Run this program with these arguments directly, when non-empty.
    pub argv: Vec<String>,
    /// Otherwise run this with `/bin/sh -c`.
    pub shell: Option<String>,
    /// Created if missing.
    pub workdir: PathBuf,
    /// Added to the slave's own environment.
    pub env: BTreeMap<String, String>,
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// A piece of output, as `read` returned it.
#[derive(Debug)]
pub struct Chunk {
    pub stream: Stream,
    pub data: Vec<u8>,
}

/// How the command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub elapsed: Duration,
    pub timed_out: bool,
    pub interrupted: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("nothing to run (empty command)")]
    Empty,
    #[error("cannot create the work directory {dir}: {source}")]
    Workdir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("waiting for {program} failed: {source}")]
    Wait {
        program: String,
        source: std::io::Error,
    },
}

/// The most one `Chunk` holds.
pub const MAX_CHUNK: usize = 64 * 1024;

/// How long output is still read after the command exited and its group was killed: a
/// grandchild that left the group may hold the pipes open forever.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);

/// Kills the whole process group when dropped, unless disarmed: the step's processes never
/// outlive the future that runs them.
struct GroupGuard {
    pgid: Option<Pid>,
}

impl GroupGuard {
    fn signal(&self, signal: Signal) {
        if let Some(pgid) = self.pgid {
            // ESRCH (group already gone) is the normal case at the end.
            let _ = killpg(pgid, signal);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
    }
}

/// Runs `spec`, sending its output to `output`, until it exits, times out or `interrupt` is
/// cancelled.
pub async fn run(
    spec: &CommandSpec,
    output: mpsc::Sender<Chunk>,
    interrupt: CancellationToken,
    kill_grace: Duration,
) -> Result<Finished, RunError> {
    let (program, args): (String, Vec<String>) = match (spec.argv.split_first(), &spec.shell) {
        (Some((program, args)), _) => (program.clone(), args.to_vec()),
        (None, Some(shell)) => ("/bin/sh".to_string(), vec!["-c".to_string(), shell.clone()]),
        (None, None) => return Err(RunError::Empty),
    };
    tokio::fs::create_dir_all(&spec.workdir)
        .await
        .map_err(|source| RunError::Workdir {
            dir: spec.workdir.clone(),
            source,
        })?;
    let mut command = Command::new(&program);
    command
        .args(&args)
        .current_dir(&spec.workdir)
        .envs(&spec.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let started = Instant::now();
    let mut child = command.spawn().map_err(|source| RunError::Spawn {
        program: program.clone(),
        source,
    })?;
    // With process_group(0) the child's pid is its group id.
    let guard = GroupGuard {
        pgid: child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .map(Pid::from_raw),
    };
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let exited = CancellationToken::new();
    let pump_out = pump(stdout, Stream::Stdout, output.clone(), exited.clone());
    let pump_err = pump(stderr, Stream::Stderr, output, exited.clone());
    let supervise = async {
        let deadline = async {
            match spec.timeout {
                Some(timeout) => tokio::time::sleep(timeout).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        let mut timed_out = false;
        let mut interrupted = false;
        let mut terminated_at: Option<Instant> = None;
        let status = loop {
            let kill_at = async {
                match terminated_at {
                    Some(at) => tokio::time::sleep_until((at + kill_grace).into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                status = child.wait() => break status,
                _ = &mut deadline, if terminated_at.is_none() => {
                    timed_out = true;
                    guard.signal(Signal::SIGTERM);
                    terminated_at = Some(Instant::now());
                }
                _ = interrupt.cancelled(), if terminated_at.is_none() => {
                    interrupted = true;
                    guard.signal(Signal::SIGTERM);
                    terminated_at = Some(Instant::now());
                }
                _ = kill_at => {
                    guard.signal(Signal::SIGKILL);
                }
            }
        };
        // Whatever the main process left behind in its group goes with it.
        guard.signal(Signal::SIGKILL);
        exited.cancel();
        (status, timed_out, interrupted)
    };
    let (supervised, (), ()) = tokio::join!(supervise, pump_out, pump_err);
    let (status, timed_out, interrupted) = supervised;
    let status = status.map_err(|source| RunError::Wait { program, source })?;
    drop(guard);
    Ok(Finished {
        exit_code: status.code(),
        signal: status.signal(),
        elapsed: started.elapsed(),
        timed_out,
        interrupted,
    })
}

/// Copies one pipe to `output` as chunks arrive. After `exited`, keeps reading only for a short
/// while (a process that escaped the group may hold the pipe open).
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
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    loop {
        let read = match drain_deadline {
            None => tokio::select! {
                read = pipe.read(&mut buffer) => read,
                _ = exited.cancelled() => {
                    drain_deadline = Some(tokio::time::Instant::now() + DRAIN_AFTER_EXIT);
                    continue;
                }
            },
            Some(deadline) => match tokio::time::timeout_at(deadline, pipe.read(&mut buffer)).await
            {
                Ok(read) => read,
                Err(_) => return,
            },
        };
        match read {
            Ok(0) | Err(_) => return,
            Ok(count) => {
                if receiver_gone {
                    continue;
                }
                let chunk = Chunk {
                    stream,
                    data: buffer[..count].to_vec(),
                };
                if output.send(chunk).await.is_err() {
                    // Keep draining so the command never blocks on a full pipe.
                    receiver_gone = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(command: &str, dir: &std::path::Path) -> CommandSpec {
        CommandSpec {
            argv: Vec::new(),
            shell: Some(command.to_string()),
            workdir: dir.to_path_buf(),
            env: BTreeMap::new(),
            timeout: None,
        }
    }

    /// Runs to the end, collecting (stdout, stderr).
    async fn collect(spec: &CommandSpec) -> (Finished, Vec<u8>, Vec<u8>) {
        let (tx, mut rx) = mpsc::channel(16);
        let run = run(spec, tx, CancellationToken::new(), Duration::from_secs(1));
        let gather = async {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            while let Some(chunk) = rx.recv().await {
                match chunk.stream {
                    Stream::Stdout => out.extend(chunk.data),
                    Stream::Stderr => err.extend(chunk.data),
                }
            }
            (out, err)
        };
        let (finished, (out, err)) = tokio::join!(run, gather);
        (finished.expect("runs"), out, err)
    }

    fn alive(pid: i32) -> bool {
        nix::sys::signal::kill(Pid::from_raw(pid), None).is_ok()
    }

    async fn wait_gone(pid: i32) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(pid) {
            assert!(Instant::now() < deadline, "process {pid} survived");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn read_pid(path: &std::path::Path) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(text) = std::fs::read_to_string(path)
                && let Ok(pid) = text.trim().parse()
            {
                return pid;
            }
            assert!(Instant::now() < deadline, "no pid written");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[tokio::test]
    async fn output_streams_before_the_command_ends() {
        let dir = tempfile::tempdir().expect("temp dir");
        let spec = shell("echo first; sleep 2; echo second", dir.path());
        let (tx, mut rx) = mpsc::channel(16);
        let handle = tokio::spawn(async move {
            run(&spec, tx, CancellationToken::new(), Duration::from_secs(1)).await
        });
        let first = tokio::time::timeout(Duration::from_secs(1), rx.recv())
            .await
            .expect("first chunk early")
            .expect("chunk");
        assert_eq!(first.data, b"first\n");
        let finished = handle.await.expect("joined").expect("runs");
        assert_eq!(finished.exit_code, Some(0));
    }

    #[tokio::test]
    async fn streams_exit_codes_signals_env_and_workdir() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut spec = shell(
            "echo out; echo err >&2; echo $GREETING; pwd; exit 7",
            &dir.path().join("sub"),
        );
        spec.env.insert("GREETING".into(), "hello".into());
        let (finished, out, err) = collect(&spec).await;
        assert_eq!(finished.exit_code, Some(7));
        let out = String::from_utf8(out).expect("utf-8");
        assert!(out.starts_with("out\nhello\n"), "{out}");
        assert!(out.trim_end().ends_with("/sub"), "{out}");
        assert_eq!(err, b"err\n");
        let (finished, _, _) = collect(&shell("kill -9 $$", dir.path())).await;
        assert_eq!((finished.exit_code, finished.signal), (None, Some(9)));
    }

    #[tokio::test]
    async fn large_binary_output_is_exact() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (finished, out, _) = collect(&shell(
            "head -c 50000000 /dev/urandom > ../blob && cat ../blob",
            &dir.path().join("w"),
        ))
        .await;
        assert_eq!(finished.exit_code, Some(0));
        assert_eq!(out.len(), 50_000_000);
        assert!(out == std::fs::read(dir.path().join("blob")).expect("blob"));
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut spec = shell(
            "sleep 300 & echo $! > grandchild.pid; sleep 300",
            dir.path(),
        );
        spec.timeout = Some(Duration::from_millis(500));
        let (finished, _, _) = collect(&spec).await;
        assert!(finished.timed_out);
        assert_eq!(finished.signal, Some(15));
        wait_gone(read_pid(&dir.path().join("grandchild.pid"))).await;
    }

    #[tokio::test]
    async fn an_interrupt_terminates_then_kills() {
        let dir = tempfile::tempdir().expect("temp dir");
        let spec = shell(
            "trap '' TERM; sleep 300 & echo $! > grandchild.pid; while :; do sleep 1; done",
            dir.path(),
        );
        let token = CancellationToken::new();
        let (tx, _rx) = mpsc::channel(16);
        let cancel = token.clone();
        let pid_file = dir.path().join("grandchild.pid");
        let trigger = async move {
            while !pid_file.exists() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            cancel.cancel();
        };
        let (finished, ()) =
            tokio::join!(run(&spec, tx, token, Duration::from_millis(300)), trigger);
        let finished = finished.expect("runs");
        assert!(finished.interrupted);
        assert_eq!(
            finished.signal,
            Some(9),
            "TERM was trapped, so KILL ended it"
        );
        wait_gone(read_pid(&dir.path().join("grandchild.pid"))).await;
    }

    #[tokio::test]
    async fn dropping_the_future_kills_the_group() {
        let dir = tempfile::tempdir().expect("temp dir");
        let spec = shell(
            "echo $$ > main.pid; sleep 300 & echo $! > grandchild.pid; sleep 300",
            dir.path(),
        );
        let (tx, _rx) = mpsc::channel(16);
        let running = run(&spec, tx, CancellationToken::new(), Duration::from_secs(1));
        let _ = tokio::time::timeout(Duration::from_millis(500), running).await;
        wait_gone(read_pid(&dir.path().join("main.pid"))).await;
        wait_gone(read_pid(&dir.path().join("grandchild.pid"))).await;
    }

    #[tokio::test]
    async fn a_missing_program_names_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let spec = CommandSpec {
            argv: vec!["/no/such/program".into()],
            shell: None,
            workdir: dir.path().to_path_buf(),
            env: BTreeMap::new(),
            timeout: None,
        };
        let (tx, _rx) = mpsc::channel(1);
        let err = run(&spec, tx, CancellationToken::new(), Duration::from_secs(1))
            .await
            .expect_err("fails");
        assert!(err.to_string().contains("/no/such/program"), "{err}");
    }
}
