//! The spool's directory handles, opened once and verified: the spool directory and its
//! `tmp/`, `new/`, `cur/` and `rejected/`, each a real directory (never followed through a
//! symlink) owned by the expected uid. Every later file operation is relative to these handles
//! (`openat`, `renameat`), so a member of the try group who swaps `new/` for a symlink after
//! the check cannot make the master write, move or replace anything outside the spool.
//!
//! The spool directory itself may be reached through symlinks an admin set up (its path comes
//! from master.toml), but it must be owned by the expected uid too. What the spool's files
//! mean is `spool::maildir`; who may write into it is `master::access`.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, open, openat};
use nix::sys::stat::{Mode, SFlag, fstat, fstatat, mkdirat};

/// The sub-directories of a maildir, in the order a job passes through them.
pub const SUBDIRS: [&str; 4] = ["tmp", "new", "cur", "rejected"];

/// Who must own the spool and its sub-directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// The master's own uid: the master never operates on a spool someone else controls.
    Master,
    /// Whoever owns the spool directory: a user's `tryserver` writes as that user, so only
    /// the sub-directories' consistency with the spool's owner is checked.
    SpoolOwner,
}

/// Why the spool cannot be used. Each message is one line an admin can act on.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error(
        "spool directory {path} {problem}; it must be a real directory owned by uid {owner} \
         (see docs/try.md: chmod 3770)"
    )]
    Unsafe {
        path: PathBuf,
        problem: String,
        owner: u32,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl SpoolError {
    pub(crate) fn io(path: &Path, errno: impl Into<std::io::Error>) -> SpoolError {
        SpoolError::Io {
            path: path.to_path_buf(),
            source: errno.into(),
        }
    }
}

/// The verified handles. Dropping them closes the directories.
#[derive(Debug)]
pub struct SpoolDirs {
    pub root_path: PathBuf,
    pub root: OwnedFd,
    pub tmp: OwnedFd,
    pub new: OwnedFd,
    pub cur: OwnedFd,
    pub rejected: OwnedFd,
}

/// Creates whichever sub-directories are missing, relative to the opened spool directory (the
/// master does this at start; writers never do, so a mistyped spool path fails instead of
/// growing a new spool).
pub fn ensure(root_path: &Path) -> Result<(), SpoolError> {
    let root = open(
        root_path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| SpoolError::io(root_path, errno))?;
    for sub in SUBDIRS {
        match mkdirat(&root, sub, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(errno) => return Err(SpoolError::io(&root_path.join(sub), errno)),
        }
    }
    Ok(())
}

/// Opens the spool at `root_path` and its sub-directories, and checks each.
pub fn open_verified(root_path: &Path, owner: Owner) -> Result<SpoolDirs, SpoolError> {
    let root = open(
        root_path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| SpoolError::io(root_path, errno))?;
    let root_stat = fstat(&root).map_err(|errno| SpoolError::io(root_path, errno))?;
    let expected = match owner {
        Owner::Master => nix::unistd::geteuid().as_raw(),
        Owner::SpoolOwner => root_stat.st_uid,
    };
    let unsafe_dir = |path: PathBuf, problem: String| SpoolError::Unsafe {
        path,
        problem,
        owner: expected,
    };
    if root_stat.st_uid != expected {
        return Err(unsafe_dir(
            root_path.to_path_buf(),
            format!("is owned by uid {}", root_stat.st_uid),
        ));
    }
    let open_sub = |sub: &str| -> Result<OwnedFd, SpoolError> {
        let path = root_path.join(sub);
        let fd = openat(
            &root,
            sub,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        );
        let fd = match fd {
            Ok(fd) => fd,
            // Linux answers ENOTDIR for a symlink too (O_DIRECTORY is checked first); lstat
            // tells the admin which it is.
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                let is_link = fstatat(&root, sub, AtFlags::AT_SYMLINK_NOFOLLOW).is_ok_and(|stat| {
                    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK
                });
                let problem = if is_link {
                    "is a symbolic link"
                } else {
                    "is not a directory"
                };
                return Err(unsafe_dir(path, problem.into()));
            }
            Err(errno) => return Err(SpoolError::io(&path, errno)),
        };
        let stat = fstat(&fd).map_err(|errno| SpoolError::io(&path, errno))?;
        if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFDIR {
            return Err(unsafe_dir(path, "is not a directory".into()));
        }
        if stat.st_uid != expected {
            return Err(unsafe_dir(path, format!("is owned by uid {}", stat.st_uid)));
        }
        Ok(fd)
    };
    let dirs = SpoolDirs {
        tmp: open_sub("tmp")?,
        new: open_sub("new")?,
        cur: open_sub("cur")?,
        rejected: open_sub("rejected")?,
        root_path: root_path.to_path_buf(),
        root,
    };
    if owner == Owner::Master {
        warn_without_sticky_bit(root_path, root_stat.st_mode);
    }
    Ok(dirs)
}

/// A spool others may write into but without the sticky bit lets any of them rename or remove
/// `new/` itself. The handles protect the master either way; the warning is for the admin.
fn warn_without_sticky_bit(root_path: &Path, mode: u32) {
    let shared = mode & 0o022 != 0;
    let sticky = mode & 0o1000 != 0;
    if shared && !sticky {
        tracing::warn!(
            spool = %root_path.display(),
            "the spool is writable by others but has no sticky bit (mode {:04o}): a group member can replace its sub-directories; use chmod 3770 (create-master --try-group does this)",
            mode & 0o7777
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spool() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        ensure(dir.path()).expect("created");
        dir
    }

    #[test]
    fn a_fresh_spool_opens() {
        let dir = spool();
        let dirs = open_verified(dir.path(), Owner::Master).expect("opens");
        assert_eq!(dirs.root_path, dir.path());
    }

    #[test]
    fn a_symlinked_sub_directory_is_refused_with_its_name() {
        let dir = spool();
        let elsewhere = tempfile::tempdir().expect("temp dir");
        std::fs::remove_dir(dir.path().join("new")).expect("rmdir");
        std::os::unix::fs::symlink(elsewhere.path(), dir.path().join("new")).expect("symlink");
        let refused = open_verified(dir.path(), Owner::Master).expect_err("refused");
        let message = refused.to_string();
        assert!(message.contains("/new is a symbolic link"), "{message}");
        assert!(matches!(refused, SpoolError::Unsafe { .. }));
    }

    #[test]
    fn a_file_in_place_of_a_sub_directory_is_refused() {
        let dir = spool();
        std::fs::remove_dir(dir.path().join("rejected")).expect("rmdir");
        std::fs::write(dir.path().join("rejected"), "x").expect("file");
        let refused = open_verified(dir.path(), Owner::Master).expect_err("refused");
        assert!(
            refused.to_string().contains("is not a directory"),
            "{refused}"
        );
    }

    #[test]
    fn a_sub_directory_owned_by_someone_else_is_refused() {
        let dir = spool();
        nix::unistd::chown(
            &dir.path().join("cur"),
            Some(nix::unistd::Uid::from_raw(65534)),
            None,
        )
        .expect("chown (the tests run as root, as CI does)");
        let refused = open_verified(dir.path(), Owner::Master).expect_err("refused");
        assert!(
            refused.to_string().contains("is owned by uid 65534"),
            "{refused}"
        );
    }
}
