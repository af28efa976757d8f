//! `buildbot reconfig DIR` and SIGHUP: how a running master is told to re-read `master.toml`,
//! and how the one who asked learns the master's own answer.
//!
//! ```text
//! buildbot reconfig DIR                          buildbot master DIR
//!   check master.toml (as checkconfig)             holds an flock on master.pid while it runs
//!   read master.pid, check its lock is held
//!   read reconfig.result: attempt A
//!   kill -HUP PID  ─────────────────────────────▶  re-reads master.toml
//!                                                  good: Control::reconfigure (each subsystem
//!                                                        applies its part); bad: keeps the old
//!   poll reconfig.result until attempt > A  ◀────  writes reconfig.result {attempt A+1, ...}
//!   print changes / errors; exit 0 or 1
//! ```
//!
//! A plain `kill -HUP` works the same way, without the answer. The master writes the result
//! file whole (temporary file + rename), so a reader never sees half of one. This module does
//! not decide what a new config may change (`master::reconfig`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::signal::unix::Signal;
use tokio_util::sync::CancellationToken;

use crate::master::config::Config;
use crate::master::control::Control;

pub use crate::daemon::pidfile::{PID_FILE, PidFile};
/// The master's answer to the last reconfig.
pub const RESULT_FILE: &str = "reconfig.result";
/// How long `buildbot reconfig` waits for the master's answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// What the master writes into [`RESULT_FILE`] after each attempt (and once at start).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconfigResult {
    /// The master that wrote it.
    pub pid: u32,
    /// Reconfigs asked of this master so far (0 = written at start).
    pub attempt: u64,
    /// Whether the new config is in force.
    pub ok: bool,
    /// The config generation in force after this attempt.
    pub generation: u64,
    /// `master.toml:LINE: message` lines when the file was refused.
    pub errors: Vec<String>,
    pub changes: Vec<String>,
    pub needs_restart: Vec<String>,
}

impl ReconfigResult {
    /// Nothing changed: at start (no errors), or a refused file (its error lines).
    fn unchanged(pid: u32, attempt: u64, generation: u64, errors: Vec<String>) -> ReconfigResult {
        ReconfigResult {
            pid,
            attempt,
            ok: errors.is_empty(),
            generation,
            errors,
            changes: Vec::new(),
            needs_restart: Vec::new(),
        }
    }
}

/// Writes the result atomically next to the config.
fn write_result(master_dir: &Path, result: &ReconfigResult) -> anyhow::Result<()> {
    let mut file = tempfile::NamedTempFile::new_in(master_dir)
        .with_context(|| format!("cannot write into {}", master_dir.display()))?;
    serde_json::to_writer(&mut file, result)?;
    file.write_all(b"\n")?;
    file.persist(master_dir.join(RESULT_FILE))
        .context("cannot rename the reconfig result into place")?;
    Ok(())
}

/// The master's side: answers each SIGHUP by reloading `master.toml`, until `shutdown`.
pub async fn serve(
    master_dir: PathBuf,
    control: Arc<Control>,
    mut hangups: Signal,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let pid = std::process::id();
    let mut attempt = 0;
    write_result(
        &master_dir,
        &ReconfigResult::unchanged(pid, attempt, control.config_generation(), Vec::new()),
    )?;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            hangup = hangups.recv() => if hangup.is_none() { return Ok(()) },
        }
        attempt += 1;
        tracing::info!(
            attempt,
            "reconfig: re-reading {}",
            crate::master::config::CONFIG_FILE
        );
        let dir = master_dir.clone();
        let loaded = tokio::task::spawn_blocking(move || Config::load(&dir)).await?;
        let result = match loaded {
            Ok(config) => {
                let report = control.reconfigure(config);
                ReconfigResult {
                    pid,
                    attempt,
                    ok: true,
                    generation: report.generation,
                    errors: Vec::new(),
                    changes: report.changes,
                    needs_restart: report.needs_restart,
                }
            }
            Err(err) => {
                let errors: Vec<String> = err.0.iter().map(ToString::to_string).collect();
                for line in &errors {
                    tracing::error!("reconfig refused, the old config stays: {line}");
                }
                ReconfigResult::unchanged(pid, attempt, control.config_generation(), errors)
            }
        };
        if let Err(err) = write_result(&master_dir, &result) {
            tracing::error!("reconfig: cannot write {RESULT_FILE}: {err:#}");
        }
    }
}

/// Why `buildbot reconfig` did not get the new config in force.
#[derive(Debug, thiserror::Error)]
pub enum ReconfigError {
    /// The file has problems (`master.toml:LINE: message`, one per line); nothing was sent.
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
    /// The master read the file and refused it; it keeps the old config.
    #[error("{}", .0.join("\n"))]
    Refused(Vec<String>),
    #[error("no master is running in {0}")]
    NotRunning(PathBuf),
    #[error("the master (pid {pid}) did not answer within {}s; see its log", timeout.as_secs())]
    NoAnswer { pid: i32, timeout: Duration },
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

/// `buildbot reconfig DIR`: asks, prints the answer, and gives the exit status (0 in force,
/// 1 refused or no answer). What it prints is output for the admin, not logging.
pub fn command(master_dir: &Path) -> u8 {
    match request(master_dir, ANSWER_TIMEOUT) {
        Ok(result) => {
            println!(
                "reconfig: the master applied {} (generation {})",
                crate::master::config::CONFIG_FILE,
                result.generation
            );
            for change in &result.changes {
                println!("  {change}");
            }
            if result.changes.is_empty() {
                println!("  nothing changed");
            }
            for note in &result.needs_restart {
                eprintln!("{}: {note}", crate::master::config::CONFIG_FILE);
            }
            0
        }
        Err(ReconfigError::Invalid(lines)) => {
            for line in lines {
                eprintln!("{line}");
            }
            eprintln!("reconfig: not sent; the master keeps its config");
            1
        }
        Err(ReconfigError::Refused(lines)) => {
            for line in lines {
                eprintln!("{line}");
            }
            eprintln!("reconfig: refused by the master; it keeps its config");
            1
        }
        Err(err) => {
            eprintln!("reconfig: {err}");
            1
        }
    }
}

/// The asking side (`buildbot reconfig DIR`): checks the file, signals the master, and waits
/// for its answer.
pub fn request(master_dir: &Path, timeout: Duration) -> Result<ReconfigResult, ReconfigError> {
    if let Err(err) = Config::load(master_dir) {
        return Err(ReconfigError::Invalid(
            err.0.iter().map(ToString::to_string).collect(),
        ));
    }
    let pid = running_master(master_dir)?;
    let before = read_result(master_dir)
        .filter(|result| result.pid as i32 == pid)
        .map_or(0, |result| result.attempt);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .with_context(|| format!("cannot signal the master (pid {pid})"))?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(result) = read_result(master_dir)
            && result.pid as i32 == pid
            && result.attempt > before
        {
            if result.ok {
                return Ok(result);
            }
            return Err(ReconfigError::Refused(result.errors));
        }
        if Instant::now() >= deadline {
            return Err(ReconfigError::NoAnswer { pid, timeout });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The pid of the master running in `master_dir` (see `daemon::pidfile` for the checks).
fn running_master(master_dir: &Path) -> Result<i32, ReconfigError> {
    match crate::daemon::pidfile::running_master(master_dir)? {
        crate::daemon::pidfile::Running::Pid(pid) => Ok(pid),
        crate::daemon::pidfile::Running::No => {
            Err(ReconfigError::NotRunning(master_dir.to_path_buf()))
        }
    }
}

fn read_result(master_dir: &Path) -> Option<ReconfigResult> {
    let text = std::fs::read_to_string(master_dir.join(RESULT_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}
