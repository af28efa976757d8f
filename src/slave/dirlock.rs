//! One slave per directory: `DIR/slave.pid`, held with an flock for as long as the slave runs
//! (as the master holds `master.pid`). Two slaves on one directory would take turns knocking
//! each other off the master and kill each other's leftovers; the second is refused instead,
//! with one line naming the holder's pid. The lock is the kernel's: it goes with the process,
//! however it ends, so a stale file never refuses a start.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use nix::fcntl::{Flock, FlockArg};

pub const PID_FILE: &str = "slave.pid";

/// The slave directory's lock; dropping it removes the pid file and releases the lock.
pub struct DirLock {
    path: PathBuf,
    _lock: Flock<File>,
}

impl DirLock {
    /// Takes `DIR/slave.pid`, or fails naming the slave that holds it.
    pub fn acquire(slave_dir: &Path) -> anyhow::Result<DirLock> {
        let path = slave_dir.join(PID_FILE);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            // Never write through a link someone planted in the slave directory.
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = holder.trim();
                anyhow::bail!(
                    "another slave is running in {} (pid {})",
                    slave_dir.display(),
                    if holder.is_empty() { "unknown" } else { holder }
                );
            }
            Err((_, errno)) => {
                return Err(errno).with_context(|| format!("cannot lock {}", path.display()));
            }
        };
        lock.set_len(0)
            .with_context(|| format!("cannot write {}", path.display()))?;
        writeln!(&mut *lock, "{}", std::process::id())
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(DirLock { path, _lock: lock })
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Still locked here: no other slave can have taken the file over.
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_directory_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = DirLock::acquire(dir.path()).expect("first lock");
        // flock locks belong to the open file description: a second open in this process
        // conflicts exactly as a second process would.
        let err = DirLock::acquire(dir.path())
            .err()
            .expect("second lock refused");
        assert_eq!(
            err.to_string(),
            format!(
                "another slave is running in {} (pid {})",
                dir.path().display(),
                std::process::id()
            )
        );
        drop(first);
        assert!(!dir.path().join(PID_FILE).exists());
        DirLock::acquire(dir.path()).expect("free again once the first is dropped");
    }
}
