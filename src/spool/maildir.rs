//! The spool directory as a maildir: `tmp/` (being written), `new/` (delivered, not yet seen by
//! the master), `cur/` (claimed by the master), and `rejected/` (jobs that failed to parse or
//! named unknown builders, each beside a `NAME.why` file with the reason).
//!
//! A job becomes visible only by `rename(tmp/NAME, new/NAME)` after its bytes are fsync'd, so a
//! crash at any moment leaves either no job or a whole one. Nothing here is ever deleted except
//! a writer's own unfinished `tmp/` file. Every operation goes through the verified directory
//! handles of `spool::dirs` (`openat`, `renameat`), never through a path that a member of the
//! try group could have swapped for a symlink; job files are opened without following symlinks.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::dir::{Dir, Type};
use nix::fcntl::{AtFlags, OFlag, openat, renameat};
use nix::sys::stat::{Mode, SFlag, fstat, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use crate::spool::dirs::{self, SpoolDirs};
pub use crate::spool::dirs::{Owner, SUBDIRS, SpoolError};

/// Where a spool is: a path, cheap to pass around. [`Maildir::open`] turns it into a [`Spool`]
/// whose directories have been checked.
#[derive(Debug, Clone)]
pub struct Maildir {
    root: PathBuf,
}

impl Maildir {
    pub fn new(root: impl Into<PathBuf>) -> Maildir {
        Maildir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn new_dir(&self) -> PathBuf {
        self.root.join("new")
    }

    pub fn cur(&self) -> PathBuf {
        self.root.join("cur")
    }

    pub fn rejected(&self) -> PathBuf {
        self.root.join("rejected")
    }

    /// Creates whichever sub-directories are missing (the master does this at start; writers
    /// never create them, so a mistyped spool path fails instead of growing a new spool).
    pub fn ensure(&self) -> Result<(), SpoolError> {
        dirs::ensure(&self.root)
    }

    /// Opens and verifies the spool's directories (see `spool::dirs`).
    pub fn open(&self, owner: Owner) -> Result<Spool, SpoolError> {
        Ok(Spool {
            dirs: Arc::new(dirs::open_verified(&self.root, owner)?),
        })
    }

    /// Opens the spool as its owner's writer and delivers one job (`tryserver` run locally).
    pub fn deliver(&self, bytes: &[u8]) -> Result<String, SpoolError> {
        self.open(Owner::SpoolOwner)?.deliver(bytes)
    }
}

/// An open, verified spool. Clones share the directory handles.
#[derive(Debug, Clone)]
pub struct Spool {
    dirs: Arc<SpoolDirs>,
}

impl Spool {
    pub fn root(&self) -> &Path {
        &self.dirs.root_path
    }

    fn path_in(&self, sub: &str, name: &str) -> PathBuf {
        self.dirs.root_path.join(sub).join(name)
    }

    /// Writes `bytes` as a new job and returns its name. The file is complete and fsync'd in
    /// `tmp/` before it is renamed into `new/`.
    pub fn deliver(&self, bytes: &[u8]) -> Result<String, SpoolError> {
        let name = unique_name();
        let tmp_path = self.path_in("tmp", &name);
        let fd = openat(
            &self.dirs.tmp,
            name.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            // As before: whatever the writer's umask leaves (the master must read a job a
            // user wrote, even when the master is not in the spool's group).
            Mode::from_bits_truncate(0o666),
        )
        .map_err(|errno| SpoolError::io(&tmp_path, errno))?;
        let guard = RemoveOnDrop {
            dir: &self.dirs.tmp,
            name: Some(name.clone()),
        };
        let mut file = File::from(fd);
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(|err| SpoolError::io(&tmp_path, err))?;
        drop(file);
        renameat(&self.dirs.tmp, name.as_str(), &self.dirs.new, name.as_str())
            .map_err(|errno| SpoolError::io(&self.path_in("new", &name), errno))?;
        guard.disarm();
        sync_dir(&self.dirs.new, &self.dirs.root_path.join("new"));
        Ok(name)
    }

    /// Names of the jobs waiting in `new/`, oldest name first (names start with the time).
    pub fn list_new(&self) -> Result<Vec<String>, SpoolError> {
        list(&self.dirs.new, &self.dirs.root_path.join("new"))
    }

    /// Names of the jobs in `cur/`.
    pub fn list_cur(&self) -> Result<Vec<String>, SpoolError> {
        list(&self.dirs.cur, &self.dirs.root_path.join("cur"))
    }

    /// Deletes the claimed job `cur/NAME` once the master has recorded all of it in its
    /// history (which keeps the patch and every field): a processed job is not kept twice, so
    /// a flood of jobs cannot fill the disk with copies. A job already gone is no error.
    pub fn remove_recorded(&self, name: &str) -> Result<(), SpoolError> {
        match unlinkat(&self.dirs.cur, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(errno) => Err(SpoolError::io(&self.path_in("cur", name), errno)),
        }
    }

    /// Moves `new/NAME` to `cur/NAME`. `Ok(false)` if another process or an earlier pass
    /// claimed it already.
    pub fn claim(&self, name: &str) -> Result<bool, SpoolError> {
        match renameat(&self.dirs.new, name, &self.dirs.cur, name) {
            Ok(()) => {
                sync_dir(&self.dirs.cur, &self.dirs.root_path.join("cur"));
                Ok(true)
            }
            Err(nix::errno::Errno::ENOENT) => Ok(false),
            Err(errno) => Err(SpoolError::io(&self.path_in("new", name), errno)),
        }
    }

    /// Reads the claimed job `cur/NAME`, at most `limit` + 1 bytes (the caller decides what a
    /// longer job means). Only a regular file with one link is read: a symlink or a hard link
    /// planted in `new/` must not make the master read a file the submitter could not.
    pub fn read_claimed(&self, name: &str, limit: u64) -> Result<Vec<u8>, String> {
        self.read_claimed_with_owner(name, limit)
            .map(|(bytes, _)| bytes)
    }

    /// [`Maildir::read_claimed`], and the uid that owns the file: the master's own for a job
    /// that came over SSH, the submitter's for one written into the spool directly.
    pub fn read_claimed_with_owner(
        &self,
        name: &str,
        limit: u64,
    ) -> Result<(Vec<u8>, u32), String> {
        let fd = openat(
            &self.dirs.cur,
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| format!("cannot open the job: {errno}"))?;
        let stat = fstat(&fd).map_err(|errno| format!("cannot stat the job: {errno}"))?;
        if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            return Err("the job is not a regular file".into());
        }
        if stat.st_nlink != 1 {
            return Err(format!(
                "the job file has {} hard links; only a file of its own is read",
                stat.st_nlink
            ));
        }
        let mut bytes = Vec::new();
        File::from(fd)
            .take(limit.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|err| format!("cannot read the job: {err}"))?;
        Ok((bytes, stat.st_uid))
    }

    /// Moves `cur/NAME` to `rejected/NAME` beside `rejected/NAME.why` with the reason. The
    /// reason is written to a fresh file and renamed into place, so a file planted under that
    /// name is replaced, never written through.
    pub fn reject(&self, name: &str, why: &str) -> Result<PathBuf, SpoolError> {
        let why_name = format!("{name}.why");
        let staging = format!(".{}.why-tmp", unique_name());
        let staging_path = self.path_in("rejected", &staging);
        let fd = openat(
            &self.dirs.rejected,
            staging.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )
        .map_err(|errno| SpoolError::io(&staging_path, errno))?;
        let guard = RemoveOnDrop {
            dir: &self.dirs.rejected,
            name: Some(staging.clone()),
        };
        let mut file = File::from(fd);
        file.write_all(format!("{why}\n").as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|err| SpoolError::io(&staging_path, err))?;
        drop(file);
        renameat(
            &self.dirs.rejected,
            staging.as_str(),
            &self.dirs.rejected,
            why_name.as_str(),
        )
        .map_err(|errno| SpoolError::io(&self.path_in("rejected", &why_name), errno))?;
        guard.disarm();
        renameat(&self.dirs.cur, name, &self.dirs.rejected, name)
            .map_err(|errno| SpoolError::io(&self.path_in("cur", name), errno))?;
        sync_dir(&self.dirs.rejected, &self.dirs.root_path.join("rejected"));
        Ok(self.path_in("rejected", name))
    }
}

/// A unique file name: time, pid, a process-wide counter and randomness, so two jobs written in
/// the same microsecond (by one process or several) never collide. `create_new` in `deliver`
/// would catch a collision anyway instead of overwriting.
pub fn unique_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{}.{:06}.P{}Q{}R{:08x}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        count,
        rand::random::<u32>()
    )
}

/// The regular files in a directory, by name, without dot files. Each listing opens the
/// directory afresh (relative to the verified handle) so it starts from the beginning.
fn list(dir: &OwnedFd, path: &Path) -> Result<Vec<String>, SpoolError> {
    let mut listing = Dir::openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| SpoolError::io(path, errno))?;
    let mut names = Vec::new();
    for entry in listing.iter() {
        let entry = entry.map_err(|errno| SpoolError::io(path, errno))?;
        let Ok(name) = entry.file_name().to_str() else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let is_file = match entry.file_type() {
            Some(file_type) => file_type == Type::File,
            // Some filesystems do not fill in d_type: ask, without following a symlink.
            None => fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).is_ok_and(|stat| {
                SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG
            }),
        };
        if is_file {
            names.push(name.to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// Makes a rename durable. Failure only weakens crash safety, so it is logged, not returned.
fn sync_dir(dir: &OwnedFd, path: &Path) {
    if let Err(errno) = nix::unistd::fsync(dir.as_fd()) {
        tracing::warn!(dir = %path.display(), "cannot fsync directory: {errno}");
    }
}

/// Removes a writer's own unfinished file (by name, relative to its directory handle) unless
/// the write got as far as the rename.
struct RemoveOnDrop<'a> {
    dir: &'a OwnedFd,
    name: Option<String>,
}

impl RemoveOnDrop<'_> {
    fn disarm(mut self) {
        self.name = None;
    }
}

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(name) = self.name.take() {
            let _ = unlinkat(self.dir, name.as_str(), UnlinkatFlags::NoRemoveDir);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn deliver_claim_reject_keep_every_byte() {
        let dir = tempfile::tempdir().expect("temp dir");
        let maildir = Maildir::new(dir.path());
        maildir.ensure().expect("created");
        let spool = maildir.open(Owner::Master).expect("opened");
        let maildir_paths = maildir;
        let maildir = spool;
        let first = maildir.deliver(b"one").expect("delivered");
        let second = maildir.deliver(b"two").expect("delivered");
        assert_ne!(first, second);
        assert_eq!(
            maildir.list_new().expect("list"),
            vec![first.clone(), second.clone()]
        );
        assert!(
            fs::read_dir(maildir_paths.tmp())
                .expect("tmp")
                .next()
                .is_none()
        );

        assert!(maildir.claim(&first).expect("claim"), "was there");
        assert_eq!(maildir.read_claimed(&first, 100).expect("read"), b"one");
        assert!(!maildir.claim(&first).expect("claim again"));

        maildir.claim(&second).expect("claim");
        let rejected = maildir.reject(&second, "bad job").expect("rejected");
        assert_eq!(fs::read(rejected).expect("read"), b"two");
        let why = fs::read_to_string(maildir_paths.rejected().join(format!("{second}.why")));
        assert_eq!(why.expect("why"), "bad job\n");
        assert_eq!(maildir.list_cur().expect("list"), vec![first]);
    }

    #[test]
    fn names_are_unique_even_in_the_same_microsecond() {
        let names: std::collections::HashSet<String> = (0..10_000).map(|_| unique_name()).collect();
        assert_eq!(names.len(), 10_000);
    }

    #[test]
    fn a_missing_spool_is_an_error_not_a_new_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let maildir = Maildir::new(dir.path().join("typo"));
        assert!(maildir.deliver(b"x").is_err());
        assert!(!dir.path().join("typo").exists());
    }

    #[test]
    fn a_symlink_or_hard_link_planted_in_new_is_not_read() {
        let dir = tempfile::tempdir().expect("temp dir");
        let maildir = Maildir::new(dir.path());
        maildir.ensure().expect("created");
        let spool = maildir.open(Owner::Master).expect("opened");
        let secret = dir.path().join("secret");
        fs::write(&secret, "root only").expect("written");
        std::os::unix::fs::symlink(&secret, maildir.new_dir().join("1.link")).expect("symlink");
        fs::hard_link(&secret, maildir.new_dir().join("2.hard")).expect("hard link");
        // A symlink is not even listed; a hard link is claimed but never read.
        assert_eq!(spool.list_new().expect("list"), vec!["2.hard".to_string()]);
        assert!(spool.claim("2.hard").expect("claimed"));
        let refused = spool.read_claimed("2.hard", 100).expect_err("refused");
        assert!(refused.contains("hard links"), "{refused}");
    }

    #[test]
    fn a_planted_why_file_is_replaced_not_written_through() {
        let dir = tempfile::tempdir().expect("temp dir");
        let maildir = Maildir::new(dir.path());
        maildir.ensure().expect("created");
        let spool = maildir.open(Owner::Master).expect("opened");
        let name = spool.deliver(b"job").expect("delivered");
        assert!(spool.claim(&name).expect("claimed"));
        let victim = dir.path().join("victim");
        fs::write(&victim, "precious").expect("written");
        std::os::unix::fs::symlink(&victim, maildir.rejected().join(format!("{name}.why")))
            .expect("symlink");
        spool.reject(&name, "bad").expect("rejected");
        assert_eq!(fs::read_to_string(&victim).expect("victim"), "precious");
        let why = maildir.rejected().join(format!("{name}.why"));
        assert_eq!(fs::read_to_string(why).expect("why"), "bad\n");
    }
}
