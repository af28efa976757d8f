//! `DIR/master.pid`: the running master's pid, under an flock for as long as it runs, and the
//! checks that make it safe to trust. The master runs as root on many farms, so neither side
//! may be turned against another file or process by whoever else can write into the directory:
//!
//! - The master directory must be owned by the master's user (or root) and not writable by
//!   group or others unless sticky (as sshd's StrictModes asks of key directories), checked up
//!   to `/`; otherwise the master refuses to start and `reconfig` refuses to signal.
//! - The file is opened without following a symlink (`O_NOFOLLOW`), must be a regular file of
//!   ours with one link, and is emptied only once our flock is held.
//! - `buildbot reconfig` signals the pid only if that process holds the flock on this very
//!   file (`/proc/locks`) and runs a binary of our name (`/proc/PID/exe`).

use std::fs::{File, Metadata};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use nix::fcntl::{Flock, FlockArg};

/// The running master's pid, locked (flock) for as long as it runs.
pub const PID_FILE: &str = "master.pid";

/// Why the master directory or its pid file is not trusted. Each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum UnsafePidFile {
    #[error(
        "{path} is owned by uid {owner}; the master directory and those above it must belong to the master's user or root"
    )]
    DirOwner { path: PathBuf, owner: u32 },
    #[error(
        "{path} is writable by group or others (mode {mode:04o}) without the sticky bit; anyone who can write there can swap master.pid (chmod go-w)"
    )]
    DirWritable { path: PathBuf, mode: u32 },
    #[error("{0} is a symbolic link, not the master's pid file; remove it")]
    Symlink(PathBuf),
    #[error(
        "{path} is not a plain file of the master's user (owner uid {owner}, {links} links); remove it"
    )]
    NotOurs {
        path: PathBuf,
        owner: u32,
        links: u64,
    },
    #[error(
        "pid {pid} in {path} is not a buildbot master of this directory ({why}); nothing was signalled"
    )]
    NotAMaster {
        pid: i32,
        path: PathBuf,
        why: String,
    },
}

/// Checks `master_dir` and every directory above it: owned by us or root, and not writable by
/// group or others unless sticky.
pub fn check_master_dir(master_dir: &Path) -> anyhow::Result<()> {
    let real = std::fs::canonicalize(master_dir)
        .with_context(|| format!("cannot open {}", master_dir.display()))?;
    let me = nix::unistd::geteuid().as_raw();
    let mut dir = real.as_path();
    loop {
        let metadata =
            std::fs::metadata(dir).with_context(|| format!("cannot read {}", dir.display()))?;
        if metadata.uid() != me && metadata.uid() != 0 {
            return Err(UnsafePidFile::DirOwner {
                path: dir.to_path_buf(),
                owner: metadata.uid(),
            }
            .into());
        }
        let mode = metadata.mode() & 0o7777;
        if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            return Err(UnsafePidFile::DirWritable {
                path: dir.to_path_buf(),
                mode,
            }
            .into());
        }
        match dir.parent() {
            Some(up) => dir = up,
            None => return Ok(()),
        }
    }
}

/// Opens `path` without following a symlink, refusing anything but a regular file of ours
/// with one link.
fn open_ours(path: &Path, create: bool) -> anyhow::Result<Option<(File, Metadata)>> {
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .write(create)
        .create(create)
        .truncate(false)
        .mode(0o644)
        .custom_flags(
            nix::libc::O_NOFOLLOW
                | nix::libc::O_CLOEXEC
                | nix::libc::O_NONBLOCK
                | nix::libc::O_NOCTTY,
        )
        .open(path);
    let file = match opened {
        Ok(file) => file,
        Err(err) if err.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err(UnsafePidFile::Symlink(path.to_path_buf()).into());
        }
        Err(err) if !create && err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err).with_context(|| format!("cannot open {}", path.display())),
    };
    let metadata = file
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?;
    if !metadata.file_type().is_file()
        || metadata.uid() != nix::unistd::geteuid().as_raw()
        || metadata.nlink() != 1
    {
        return Err(UnsafePidFile::NotOurs {
            path: path.to_path_buf(),
            owner: metadata.uid(),
            links: metadata.nlink(),
        }
        .into());
    }
    Ok(Some((file, metadata)))
}

/// The pid file, locked while the master runs; removed when it stops.
pub struct PidFile {
    path: PathBuf,
    _lock: Flock<File>,
}

impl PidFile {
    /// Checks the directory, then creates and locks `DIR/master.pid`; fails when another
    /// master runs in `master_dir`.
    pub fn create(master_dir: &Path) -> anyhow::Result<PidFile> {
        check_master_dir(master_dir)?;
        let path = master_dir.join(PID_FILE);
        let Some((file, _)) = open_ours(&path, true)? else {
            anyhow::bail!("cannot create {}", path.display());
        };
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut other = String::new();
                let _ = (&mut file).take(64).read_to_string(&mut other);
                anyhow::bail!(
                    "another master is running in {} (pid {})",
                    master_dir.display(),
                    other.trim()
                );
            }
            Err((_, errno)) => {
                return Err(errno).with_context(|| format!("cannot lock {}", path.display()));
            }
        };
        // Emptied only now that the lock is ours: a running master's pid is never lost.
        lock.set_len(0)?;
        writeln!(&mut *lock, "{}", std::process::id())
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(PidFile { path, _lock: lock })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Still locked here: no other master can have taken the file over.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What `reconfig` finds in a master directory.
pub enum Running {
    /// No pid file, or nobody holds its lock.
    No,
    /// This pid holds the lock and is a buildbot master.
    Pid(i32),
}

/// The pid of the master running in `master_dir`, checked as the module says.
pub fn running_master(master_dir: &Path) -> anyhow::Result<Running> {
    check_master_dir(master_dir)?;
    let path = master_dir.join(PID_FILE);
    let Some((file, metadata)) = open_ours(&path, false)? else {
        return Ok(Running::No);
    };
    // A shared lock we can take means no master holds the file: it is stale.
    let mut file = match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_) => return Ok(Running::No),
        Err((file, _)) => file,
    };
    let mut text = String::new();
    (&mut file)
        .take(64)
        .read_to_string(&mut text)
        .context("cannot read the pid file")?;
    let pid = text
        .trim()
        .parse::<i32>()
        .ok()
        .filter(|pid| *pid > 0)
        .ok_or_else(|| anyhow::anyhow!("{} holds no pid: {:?}", path.display(), text.trim()))?;
    let not_a_master = |why: String| UnsafePidFile::NotAMaster {
        pid,
        path: path.clone(),
        why,
    };
    let locks = std::fs::read_to_string("/proc/locks").context("cannot read /proc/locks")?;
    if !flock_holders(&locks, &metadata).contains(&pid) {
        return Err(not_a_master("it does not hold the file's lock".to_string()).into());
    }
    let ours = std::env::current_exe()
        .ok()
        .and_then(|exe| exe_name(&exe.to_string_lossy()));
    let theirs = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|exe| exe_name(&exe.to_string_lossy()));
    if theirs.is_none() || theirs != ours {
        return Err(not_a_master(format!(
            "it runs {}",
            theirs.unwrap_or_else(|| "something unreadable".to_string())
        ))
        .into());
    }
    Ok(Running::Pid(pid))
}

/// A binary's file name, without the ` (deleted)` the kernel adds once it was replaced (an
/// upgrade while the master runs).
fn exe_name(path: &str) -> Option<String> {
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    Path::new(path)
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
}

/// The pids that hold an flock on the file `metadata` describes, from `/proc/locks` lines
/// such as `1: FLOCK  ADVISORY  WRITE 2885 fe:00:10010627 0 EOF` (device in hex).
fn flock_holders(locks: &str, metadata: &Metadata) -> Vec<i32> {
    let dev = metadata.dev();
    let wanted = format!(
        "{:02x}:{:02x}:{}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev),
        metadata.ino()
    );
    locks
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // A blocked waiter's line has "->" before its type: it holds nothing.
            if fields.get(1) != Some(&"FLOCK") || fields.get(5) != Some(&wanted.as_str()) {
                return None;
            }
            fields.get(4)?.parse().ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn a_group_writable_dir_is_refused_unless_sticky() {
        let dir = tempfile::tempdir().expect("temp dir");
        chmod(dir.path(), 0o700);
        check_master_dir(dir.path()).expect("a private dir is fine");
        chmod(dir.path(), 0o770);
        let err = check_master_dir(dir.path()).expect_err("group-writable");
        assert!(err.to_string().contains("(mode 0770)"), "{err}");
        chmod(dir.path(), 0o1777);
        check_master_dir(dir.path()).expect("sticky, like /tmp");
    }

    #[test]
    fn a_symlinked_pid_file_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().expect("temp dir");
        chmod(dir.path(), 0o700);
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious\n").expect("victim");
        std::os::unix::fs::symlink(&victim, dir.path().join(PID_FILE)).expect("symlink");
        let err = PidFile::create(dir.path()).err().expect("refused");
        assert!(err.to_string().contains("is a symbolic link"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&victim).expect("victim"),
            "precious\n"
        );
    }

    #[test]
    fn the_holder_of_our_lock_is_found_in_proc_locks() {
        let dir = tempfile::tempdir().expect("temp dir");
        chmod(dir.path(), 0o700);
        let pid_file = PidFile::create(dir.path()).expect("created");
        let metadata = std::fs::metadata(dir.path().join(PID_FILE)).expect("stat");
        let locks = std::fs::read_to_string("/proc/locks").expect("/proc/locks");
        assert!(
            flock_holders(&locks, &metadata).contains(&(std::process::id() as i32)),
            "{locks}"
        );
        assert!(
            flock_holders("1: FLOCK  ADVISORY  WRITE 77 00:00:1 0 EOF\n", &metadata).is_empty()
        );
        drop(pid_file);
        assert!(!dir.path().join(PID_FILE).exists());
    }

    #[test]
    fn exe_names_ignore_a_replaced_binary() {
        assert_eq!(
            exe_name("/usr/bin/buildbot (deleted)").as_deref(),
            Some("buildbot")
        );
        assert_eq!(exe_name("/usr/bin/sleep").as_deref(), Some("sleep"));
    }
}
