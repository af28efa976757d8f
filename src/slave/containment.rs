//! Everything a step starts ends with the step, even what left its process group: a try step's
//! `setsid sh -c 'while :; do ...; done' &` must not write into a later (trusted) build, and a
//! slave killed with SIGKILL must not leave its steps running for good.
//!
//! This module owns the choice of mechanism, made once at start and named in the slave's log,
//! and the per-step [`Cell`]:
//! - **cgroup** (cgroup v2 with `cgroup.kill`, Linux 5.14+, where the slave may create a child
//!   of its own cgroup, e.g. as root or with a delegated subtree): each step runs in a cgroup
//!   `buildbot-slave.HASH/step-N` below the slave's own; ending the step writes `cgroup.kill`,
//!   which reaches every descendant whatever it did (setsid, double fork, a cleared
//!   environment). The cgroups are the record of what was started: a restarted slave kills
//!   and removes every step cgroup its previous run left.
//! - **subreaper** otherwise: the slave is a child subreaper (`PR_SET_CHILD_SUBREAPER`), so
//!   daemonised descendants re-parent to it instead of init, and every process of a step
//!   carries `BUILDBOT_STEP_CELL=TAG` in its environment; ending the step kills every process
//!   whose initial environment holds the tag (and reaps those that re-parented to the slave).
//!   A restarted slave kills every process tagged by its directory. A process that both
//!   clears its environment and leaves its group escapes this mechanism: use a cgroup.
//!
//! In both, a step's main process gets the parent-death signal (SIGKILL when the slave dies),
//! and the runner still kills the step's process group. Not owned here: starting and reading
//! the command (`runner`), what the master asked for (`work`).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The environment variable that tags a step's processes (both mechanisms set it; the
/// subreaper mechanism finds processes by it).
pub const CELL_ENV: &str = "BUILDBOT_STEP_CELL";

/// How long ending a step waits for its killed processes to be gone.
const REAP_PATIENCE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Mechanism {
    /// The directory under which each step gets its cgroup.
    Cgroup(PathBuf),
    /// With the reason no cgroup is used.
    Subreaper(String),
}

/// The slave's mechanism and naming; one per slave process (per slave directory).
#[derive(Debug)]
pub struct Containment {
    mechanism: Mechanism,
    /// Names this slave directory in tags (`HASH`), so that a restart finds its own leftovers
    /// and never another slave's.
    dir_tag: String,
    next: AtomicU64,
}

impl Containment {
    /// Chooses the mechanism for the slave of `slave_dir` and kills what a previous run of it
    /// left. With `use_cgroups` false (`slave.toml` `step_cgroups = false`) the subreaper
    /// mechanism is used even where a cgroup could be made.
    pub fn start(slave_dir: &Path, use_cgroups: bool) -> Containment {
        let dir_tag = dir_tag(slave_dir);
        let chosen = if use_cgroups {
            cgroup_base(&dir_tag)
        } else {
            Err("step_cgroups = false in slave.toml".to_string())
        };
        let mechanism = match chosen {
            Ok(base) => Mechanism::Cgroup(base),
            Err(why) => {
                become_subreaper();
                Mechanism::Subreaper(why)
            }
        };
        let containment = Containment {
            mechanism,
            dir_tag,
            next: AtomicU64::new(1),
        };
        let killed = containment.kill_leftovers();
        if killed > 0 {
            tracing::warn!(
                "killed {} that a previous run of this slave left running",
                crate::status::text::count(killed, "process", "processes")
            );
        }
        containment
    }

    /// One line for the start log: which mechanism ends a step's processes.
    pub fn describe(&self) -> String {
        match &self.mechanism {
            Mechanism::Cgroup(base) => format!(
                "steps run in a cgroup each (under {}); everything a step starts is killed when it ends",
                base.display()
            ),
            Mechanism::Subreaper(why) => format!(
                "steps' processes are tracked by an environment tag with the slave as their subreaper ({why}); everything a step starts is killed when it ends, except a process that clears its environment and leaves its group (give the slave a writable cgroup v2 to close that)"
            ),
        }
    }

    pub fn uses_cgroups(&self) -> bool {
        matches!(self.mechanism, Mechanism::Cgroup(_))
    }

    /// A cell for one step. Fails only when a cgroup cannot be made (the step is not run).
    pub fn cell(&self) -> std::io::Result<Cell> {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}-{}-{seq}", self.dir_tag, std::process::id());
        let cgroup = match &self.mechanism {
            Mechanism::Subreaper(_) => None,
            Mechanism::Cgroup(base) => {
                let dir = base.join(format!("step-{}-{seq}", std::process::id()));
                std::fs::create_dir(&dir)?;
                let procs = std::fs::OpenOptions::new()
                    .write(true)
                    .open(dir.join("cgroup.procs"))?;
                Some(CellCgroup { dir, procs })
            }
        };
        Ok(Cell { tag, cgroup })
    }

    /// Kills and removes what a previous run of this slave left: step cgroups (cgroup
    /// mechanism) and processes tagged with this directory (both, since the mechanism may
    /// have changed between runs). Returns how many processes were signalled.
    fn kill_leftovers(&self) -> usize {
        let mut killed = 0;
        if let Mechanism::Cgroup(base) = &self.mechanism
            && let Ok(entries) = std::fs::read_dir(base)
        {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() && entry.file_name().to_string_lossy().starts_with("step-") {
                    killed += procs_in(&path).len();
                    kill_cgroup(&path);
                }
            }
        }
        let own = format!("{}-{}-", self.dir_tag, std::process::id());
        killed += kill_tagged(|tag| {
            tag.starts_with(&format!("{}-", self.dir_tag)) && !tag.starts_with(&own)
        });
        killed
    }
}

impl Drop for Containment {
    /// The slave is leaving: its directory of step cgroups goes too, once empty (a step still
    /// running there keeps it, and the next start kills what is in it).
    fn drop(&mut self) {
        if let Mechanism::Cgroup(base) = &self.mechanism {
            let _ = std::fs::remove_dir(base);
        }
    }
}

struct CellCgroup {
    dir: PathBuf,
    /// `cgroup.procs`, opened before the fork: the child writes "0" into it (itself) before
    /// exec, so it is inside before it can start anything.
    procs: File,
}

/// One step's container: its cgroup, or its tag. Dropping it kills whatever is still in it.
pub struct Cell {
    tag: String,
    cgroup: Option<CellCgroup>,
}

impl std::fmt::Debug for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cell")
            .field("tag", &self.tag)
            .field("cgroup", &self.cgroup.as_ref().map(|cgroup| &cgroup.dir))
            .finish()
    }
}

impl Cell {
    /// The environment entry every process of the step inherits.
    pub fn env(&self) -> (&'static str, &str) {
        (CELL_ENV, &self.tag)
    }

    /// Prepares `command` to start inside the cell, with the parent-death signal.
    pub fn prepare(&self, command: &mut tokio::process::Command) {
        let procs_fd = self.cgroup.as_ref().map(|cgroup| cgroup.procs.as_raw_fd());
        let parent = std::process::id();
        // SAFETY: the closure runs between fork and exec and makes only async-signal-safe
        // calls (write, prctl, getppid, kill); it allocates nothing.
        unsafe {
            command.pre_exec(move || {
                if let Some(fd) = procs_fd {
                    let zero = b"0";
                    if nix::libc::write(fd, zero.as_ptr().cast(), zero.len()) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // The slave's death (even SIGKILL) kills the step's main process; its
                // descendants are the cell's business.
                if nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, nix::libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The slave may have died between fork and prctl: then no signal would come.
                if nix::libc::getppid() as u32 != parent {
                    return Err(std::io::Error::from_raw_os_error(nix::libc::ESRCH));
                }
                Ok(())
            });
        }
    }

    /// Kills every process of the step and waits (blocking, at most a few seconds) until they
    /// are gone; the cgroup is removed.
    pub fn kill_all(&self) {
        match &self.cgroup {
            Some(cgroup) => kill_cgroup(&cgroup.dir),
            None => {
                let tag = self.tag.clone();
                kill_tagged(|found| found == tag);
            }
        }
    }
}

impl Drop for Cell {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// A short, stable name for a slave directory.
fn dir_tag(slave_dir: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let dir = std::fs::canonicalize(slave_dir).unwrap_or_else(|_| slave_dir.to_path_buf());
    // FNV-1a: stable across runs and Rust versions, unlike DefaultHasher's promise.
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for byte in bytes {
                self.0 ^= u64::from(*byte);
                self.0 = self.0.wrapping_mul(0x100_0000_01b3);
            }
        }
    }
    let mut hasher = Fnv(0xcbf2_9ce4_8422_2325);
    dir.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// The directory for this slave's step cgroups, created and checked; or why there is none.
fn cgroup_base(dir_tag: &str) -> Result<PathBuf, String> {
    let parent = own_cgroup2().ok_or("no cgroup v2 hierarchy holds this process")?;
    if !parent.join("cgroup.kill").exists() && !parent.join("cgroup.procs").exists() {
        return Err(format!("{} is not a cgroup v2 directory", parent.display()));
    }
    let base = parent.join(format!("buildbot-slave.{dir_tag}"));
    match std::fs::create_dir(&base) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(format!("cannot create {}: {err}", base.display())),
    }
    if !base.join("cgroup.kill").exists() {
        let _ = std::fs::remove_dir(&base);
        return Err("the kernel has no cgroup.kill (Linux 5.14+)".to_string());
    }
    // Moving a process needs write access to the common ancestor's cgroup.procs too: prove it
    // with a process of our own before relying on it.
    let probe = base.join("probe");
    let _ = std::fs::create_dir(&probe);
    let proved = (|| -> std::io::Result<()> {
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(probe.join("cgroup.procs"))?;
        let fd = procs.as_raw_fd();
        let mut command = std::process::Command::new("/bin/sh");
        command.args(["-c", "exit 0"]);
        // SAFETY: only write(2) between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                if nix::libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command.status().map(|_| ())
    })();
    wait_removed(&probe);
    proved.map_err(|err| format!("cannot move a process into {}: {err}", base.display()))?;
    Ok(base)
}

/// `MOUNT/PATH` of this process's cgroup v2, from /proc.
fn own_cgroup2() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    // Fields: id parent major:minor root mountpoint options ... - fstype source superoptions
    let mount = mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
    })?;
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let own = cgroups
        .lines()
        .find_map(|line| line.strip_prefix("0::"))?
        .trim_start_matches('/');
    Some(mount.join(own))
}

fn become_subreaper() {
    // SAFETY: prctl with integer arguments only.
    let result = unsafe { nix::libc::prctl(nix::libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if result != 0 {
        tracing::warn!(
            "cannot become a child subreaper: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn procs_in(cgroup: &Path) -> Vec<i32> {
    std::fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect()
}

/// Kills everything in `cgroup` and removes it once empty.
fn kill_cgroup(cgroup: &Path) {
    if let Err(err) = std::fs::write(cgroup.join("cgroup.kill"), "1")
        && err.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("cannot kill the processes of {}: {err}", cgroup.display());
    }
    wait_removed(cgroup);
}

/// rmdir fails (EBUSY) while killed processes are still exiting: retry for a while.
fn wait_removed(cgroup: &Path) {
    let deadline = Instant::now() + REAP_PATIENCE;
    loop {
        match std::fs::remove_dir(cgroup) {
            Ok(()) => return,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return,
            Err(err) if Instant::now() >= deadline => {
                tracing::warn!("cannot remove {}: {err}", cgroup.display());
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Kills every process whose initial environment has a `BUILDBOT_STEP_CELL` accepted by
/// `wanted`, until none is left (a process may fork while the scan runs), and reaps those that
/// re-parented to this slave. Returns how many were signalled.
fn kill_tagged(wanted: impl Fn(&str) -> bool) -> usize {
    let own_pid = std::process::id() as i32;
    let mut signalled = std::collections::BTreeSet::new();
    let deadline = Instant::now() + REAP_PATIENCE;
    loop {
        let found: Vec<i32> = tagged_processes(&wanted)
            .into_iter()
            .filter(|pid| *pid != own_pid)
            .collect();
        if found.is_empty() || Instant::now() >= deadline {
            break;
        }
        for pid in &found {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            signalled.insert(*pid);
        }
        for pid in &found {
            // Only those whose parent is now this slave (orphans it adopted as subreaper);
            // tokio reaps the children it started itself, which never carry a finished
            // step's tag.
            if parent_of(*pid) == Some(own_pid) {
                let _ = nix::sys::wait::waitpid(Pid::from_raw(*pid), None);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    signalled.len()
}

fn tagged_processes(wanted: &impl Fn(&str) -> bool) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let prefix = format!("{CELL_ENV}=");
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
                return false;
            };
            environ.split(|byte| *byte == 0).any(|entry| {
                std::str::from_utf8(entry)
                    .ok()
                    .and_then(|entry| entry.strip_prefix(&prefix))
                    .is_some_and(wanted)
            })
        })
        .collect()
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(1)?.parse().ok()
}
