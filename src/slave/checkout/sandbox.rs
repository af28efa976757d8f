//! Where a try patch is parsed and applied: in a child process of the slave, under a time and a
//! memory limit, so that nothing a user sends can take the slave down. Owns: the hidden
//! `buildbot apply-patch` side (read the patch on stdin, apply it in-process, write one JSON
//! report on stdout) and the parent side (spawn it, feed it, enforce the limits, read the report,
//! and turn a crash or a timeout into `CheckoutError::PatchProcess`). Not: the patch engines
//! themselves (`patch_apply`), nor restoring the tree afterwards (the parent module).
//!
//! Why a process and not a thread: libgit2 is C, and a patch it mishandles (a gitlink hunk
//! once made it segfault) kills every thread of the process it runs in, the SSH connection
//! included. A child dies alone; the slave reports the step as an exception and stays connected.
//!
//! Fault injection: the child (and only the child) reads `BUILDBOT_APPLY_PATCH_FAULT`; `abort`
//! makes it abort (as a crash in C code would) and `hang` makes it sleep past any time limit.
//! It exists so the integration tests can prove the slave survives both; no production code path
//! sets it.

use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use git2::Repository;
use serde::{Deserialize, Serialize};

use super::CheckoutError;
use super::patch_apply::{self, Applied};

/// The hidden subcommand of the `buildbot` binary that runs the child side.
pub const SUBCOMMAND: &str = "apply-patch";

/// The environment variable the child reads for fault injection (see the module doc).
pub const FAULT_ENV: &str = "BUILDBOT_APPLY_PATCH_FAULT";

/// The most of the child's stderr kept for the step log.
const MAX_STDERR: u64 = 16 * 1024;

/// What the child may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchLimits {
    /// Wall-clock time, from spawning to the report.
    pub time: Duration,
    /// The child's address space (RLIMIT_AS), in bytes. Generous: libgit2 maps pack files.
    pub address_space: u64,
}

impl Default for PatchLimits {
    fn default() -> PatchLimits {
        PatchLimits {
            time: Duration::from_secs(300),
            address_space: 8 << 30,
        }
    }
}

/// How a checkout applies the try patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatchRunner {
    /// In the calling process: what the child itself does, and what unit tests of the engines
    /// use (the `buildbot` binary is not built for them).
    InProcess,
    /// In a child process `PROGRAM apply-patch --level N WORKDIR`, under `limits`.
    Child {
        program: PathBuf,
        limits: PatchLimits,
    },
}

impl PatchRunner {
    pub(super) fn apply(
        &self,
        repo: &Repository,
        workdir: &Path,
        patch: &[u8],
        level: u32,
    ) -> Result<Applied, CheckoutError> {
        match self {
            PatchRunner::InProcess => patch_apply::apply(repo, workdir, patch, level),
            PatchRunner::Child { program, limits } => {
                apply_in_child(program, *limits, workdir, patch, level)
            }
        }
    }
}

/// The child's one line on stdout.
#[derive(Debug, Serialize, Deserialize)]
enum Report {
    Applied {
        kind: String,
        files: Vec<String>,
    },
    Refused {
        /// The error's full text, for the step log.
        message: String,
        /// Part of the patch may be in the tree: the parent restores it.
        may_have_written: bool,
    },
}

/// The child side: reads the patch from `input`, applies it to the work tree `workdir`, and
/// writes the report to `output`. An `Err` is a failure to report at all.
pub fn run_child(
    workdir: &Path,
    level: u32,
    input: &mut dyn Read,
    output: &mut dyn Write,
) -> anyhow::Result<()> {
    match std::env::var(FAULT_ENV).as_deref() {
        Ok("abort") => std::process::abort(),
        Ok("hang") => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        _ => {}
    }
    let mut patch = Vec::new();
    input.read_to_end(&mut patch)?;
    let applied = Repository::open(workdir)
        .map_err(CheckoutError::from)
        .and_then(|repo| patch_apply::apply(&repo, workdir, &patch, level));
    let report = match applied {
        Ok(applied) => Report::Applied {
            kind: applied.kind,
            files: applied.files,
        },
        Err(err) => Report::Refused {
            may_have_written: err.may_have_written(),
            message: err.to_string(),
        },
    };
    serde_json::to_writer(&mut *output, &report)?;
    output.write_all(b"\n")?;
    output.flush()?;
    Ok(())
}

fn apply_in_child(
    program: &Path,
    limits: PatchLimits,
    workdir: &Path,
    patch: &[u8],
    level: u32,
) -> Result<Applied, CheckoutError> {
    let mut command = Command::new(program);
    command
        .arg(SUBCOMMAND)
        .arg("--level")
        .arg(level.to_string())
        .arg("--")
        .arg(workdir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("RUST_LOG", "warn")
        // Its own group, so a timeout kills whatever it might have started too.
        .process_group(0);
    for name in super::REPOSITORY_ENV {
        command.env_remove(name);
    }
    let address_space = limits.address_space;
    // SAFETY: the closure runs between fork and exec; it only calls setrlimit(2), which is
    // async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            use nix::sys::resource::{Resource, setrlimit};
            setrlimit(Resource::RLIMIT_AS, address_space, address_space)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = command.spawn().map_err(|err| CheckoutError::PatchProcess {
        reason: format!("cannot start {}: {err}", program.display()),
    })?;
    let finished = supervise(&mut child, patch, limits.time);
    let (status, stdout, stderr) = match finished {
        Ok(finished) => finished,
        Err(reason) => return Err(CheckoutError::PatchProcess { reason }),
    };
    let stderr_tail = last_line(&stderr);
    let with_stderr = |reason: String| match &stderr_tail {
        Some(line) => format!("{reason}: {line}"),
        None => reason,
    };
    if let Some(signal) = status.signal() {
        let name = nix::sys::signal::Signal::try_from(signal)
            .map(|signal| signal.as_str().to_string())
            .unwrap_or_else(|_| format!("signal {signal}"));
        return Err(CheckoutError::PatchProcess {
            reason: with_stderr(format!("the patch process crashed ({name})")),
        });
    }
    match serde_json::from_slice::<Report>(&stdout) {
        Ok(Report::Applied { kind, files }) => Ok(Applied { kind, files }),
        Ok(Report::Refused {
            message,
            may_have_written,
        }) => Err(CheckoutError::PatchRefused {
            message,
            may_have_written,
        }),
        Err(_) => Err(CheckoutError::PatchProcess {
            reason: with_stderr(format!(
                "the patch process ended without a report ({status})"
            )),
        }),
    }
}

/// Feeds the patch, collects the output and waits for the child, killing its group when `time`
/// runs out. Err is the reason the child was not heard to the end.
fn supervise(
    child: &mut Child,
    patch: &[u8],
    time: Duration,
) -> Result<(std::process::ExitStatus, Vec<u8>, Vec<u8>), String> {
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        kill_group(child);
        return Err("the patch process has no pipes".into());
    };
    let deadline = Instant::now() + time;
    std::thread::scope(|scope| {
        // Threads, because a child that does not read its stdin would block a plain write.
        // A write error means the child is gone; its exit status says why.
        scope.spawn(move || {
            let _ = stdin.write_all(patch);
        });
        let stdout_reader = scope.spawn(move || read_capped(stdout, u64::MAX));
        let stderr_reader = scope.spawn(move || read_capped(stderr, MAX_STDERR));
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Ok(status),
                Ok(None) if Instant::now() >= deadline => {
                    kill_group(child);
                    break Err(format!(
                        "the patch process took longer than {}s and was killed",
                        time.as_secs()
                    ));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(err) => {
                    kill_group(child);
                    break Err(format!("cannot wait for the patch process: {err}"));
                }
            }
        };
        let stdout = stdout_reader.join().unwrap_or_default();
        let stderr = stderr_reader.join().unwrap_or_default();
        status.map(|status| (status, stdout, stderr))
    })
}

fn kill_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn read_capped(stream: impl Read, cap: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut limited = stream.take(cap);
    let _ = limited.read_to_end(&mut bytes);
    // Drain the rest so the child never blocks on a full pipe.
    let _ = std::io::copy(&mut limited.into_inner(), &mut std::io::sink());
    bytes
}

fn last_line(bytes: &[u8]) -> Option<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .rfind(|line| !line.trim().is_empty())
        .map(|line| line.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sh -c SCRIPT` stands in for the buildbot binary: the supervision does not care which
    /// program it runs.
    fn shell_runner(script: &str, time: Duration) -> (tempfile::TempDir, PatchRunner) {
        let dir = tempfile::tempdir().expect("temp dir");
        let program = dir.path().join("fake-buildbot");
        std::fs::write(&program, format!("#!/bin/sh\n{script}\n")).expect("write script");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let runner = PatchRunner::Child {
            program,
            limits: PatchLimits {
                time,
                address_space: PatchLimits::default().address_space,
            },
        };
        (dir, runner)
    }

    fn apply(runner: &PatchRunner) -> Result<Applied, CheckoutError> {
        let PatchRunner::Child { program, limits } = runner else {
            panic!("a child runner");
        };
        apply_in_child(program, *limits, Path::new("/nonexistent"), b"patch", 1)
    }

    #[test]
    fn a_crash_is_a_patch_process_error_with_the_signal() {
        let (_dir, runner) = shell_runner("echo dying >&2; kill -SEGV $$", Duration::from_secs(20));
        let err = apply(&runner).expect_err("crashed");
        assert!(err.is_exception(), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("SIGSEGV") && text.contains("dying"), "{text}");
    }

    #[test]
    fn a_hang_is_killed_at_the_time_limit() {
        let (_dir, runner) = shell_runner("exec sleep 60", Duration::from_millis(300));
        let started = Instant::now();
        let err = apply(&runner).expect_err("killed");
        assert!(started.elapsed() < Duration::from_secs(20));
        assert!(err.is_exception(), "{err:?}");
        assert!(err.to_string().contains("took longer"), "{err}");
    }

    #[test]
    fn a_report_is_read_back() {
        let (_dir, runner) = shell_runner(
            r#"cat >/dev/null; echo '{"Applied":{"kind":"git diff","files":["a","b c"]}}'"#,
            Duration::from_secs(20),
        );
        let applied = apply(&runner).expect("applied");
        assert_eq!(applied.files, ["a", "b c"]);
        let (_dir, runner) = shell_runner(
            r#"cat >/dev/null; echo '{"Refused":{"message":"no","may_have_written":false}}'"#,
            Duration::from_secs(20),
        );
        let err = apply(&runner).expect_err("refused");
        assert!(!err.is_exception());
        assert_eq!(err.to_string(), "no");
    }

    #[test]
    fn no_report_is_an_exception() {
        let (_dir, runner) = shell_runner(
            r#"echo "address space $(ulimit -v)" >&2; exit 3"#,
            Duration::from_secs(20),
        );
        let err = apply(&runner).expect_err("no report");
        assert!(err.is_exception(), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("without a report"), "{text}");
        // The memory limit is in force in the child (ulimit -v counts KiB).
        let kib = PatchLimits::default().address_space / 1024;
        assert!(text.contains(&format!("address space {kib}")), "{text}");
    }
}
