//! sshd's StrictModes for authorized_keys files: before a key file may let anyone in, the file
//! and every directory above it (up to the user's home, or the master directory for files
//! under it) must be owned by an allowed uid and not writable by group or others; the file must
//! be a regular file, opened without following a final symlink, and at most 1 MiB.
//!
//! Everything here is blocking file I/O: callers run it off the async runtime (see
//! `SshdContext::authenticate`). It never opens anything that is not a regular file (a FIFO or
//! a device would hang or never end), and never reads more than the limit plus one byte. What a
//! file's text means is `sshd::authorized_keys`; which files to read is `sshd::keystore`.

use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::unix::regular_file::{self, Refused};

/// The largest key file read; sshd has no such limit, but a file this big is an attack.
pub const MAX_KEY_FILE_BYTES: u64 = 1 << 20;

/// Which uids may own a key file and its directories, and where the directory walk stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The user the file lets in, root, and (for files under the master directory) the
    /// master's own uid.
    pub allowed_owners: Vec<u32>,
    /// The walk up from the file stops after checking this directory (the user's home or the
    /// master directory); if the file is not below it, the walk goes on to `/`, as sshd's does.
    pub stop_at: PathBuf,
}

/// Why a key file was not used. Each one names the file (or directory) and says what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum UnsafeKeyFile {
    #[error("{0}: is a symbolic link; key files are not followed through symlinks")]
    Symlink(PathBuf),
    #[error("{0}: is not a regular file")]
    NotRegular(PathBuf),
    #[error("{path}: owned by uid {owner}, but only uids {allowed:?} may own it")]
    BadOwner {
        path: PathBuf,
        owner: u32,
        allowed: Vec<u32>,
    },
    #[error("{path}: writable by group or others (mode {mode:04o})")]
    Writable { path: PathBuf, mode: u32 },
    #[error("{0}: larger than {MAX_KEY_FILE_BYTES} bytes")]
    TooLarge(PathBuf),
    #[error("{path}: changed while it was being opened")]
    Changed { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// A key file that passed every check, with what was read of it.
#[derive(Debug)]
pub struct CheckedFile {
    /// fstat of the open descriptor (identifies this version of the file for the cache).
    pub metadata: Metadata,
    pub file: File,
}

/// Opens `path` if it exists and is safe to trust. `Ok(None)` when the file (or a directory
/// above it) does not exist: most users have no key file in most of the places looked at.
pub fn open_checked(path: &Path, scope: &Scope) -> Result<Option<CheckedFile>, UnsafeKeyFile> {
    let io_error = |source: io::Error| UnsafeKeyFile::Io {
        path: path.to_path_buf(),
        source,
    };
    let (file, metadata) = match regular_file::open_regular(path) {
        Ok(Some(opened)) => opened,
        Ok(None) => return Ok(None),
        Err(Refused::Symlink) => return Err(UnsafeKeyFile::Symlink(path.to_path_buf())),
        Err(Refused::NotRegular) => return Err(UnsafeKeyFile::NotRegular(path.to_path_buf())),
        Err(Refused::Changed) => {
            return Err(UnsafeKeyFile::Changed {
                path: path.to_path_buf(),
            });
        }
        Err(Refused::Io(err)) => return Err(io_error(err)),
    };
    check_owner_and_mode(path, &metadata, scope)?;
    if metadata.len() > MAX_KEY_FILE_BYTES {
        return Err(UnsafeKeyFile::TooLarge(path.to_path_buf()));
    }
    check_directories(path, scope)?;
    Ok(Some(CheckedFile { metadata, file }))
}

/// Reads a checked file, refusing it if it grew past the limit since it was checked.
pub fn read_capped(path: &Path, file: File) -> Result<Vec<u8>, UnsafeKeyFile> {
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| UnsafeKeyFile::Io {
            path: path.to_path_buf(),
            source,
        })?;
    if bytes.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(UnsafeKeyFile::TooLarge(path.to_path_buf()));
    }
    Ok(bytes)
}

/// Walks from the file's directory up to `scope.stop_at` (or `/`), as sshd's `safe_path`
/// does: on the real path, so a symlinked directory is judged by where it leads.
fn check_directories(path: &Path, scope: &Scope) -> Result<(), UnsafeKeyFile> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    let real = std::fs::canonicalize(parent).map_err(|source| UnsafeKeyFile::Io {
        path: parent.to_path_buf(),
        source,
    })?;
    // A stop directory that does not exist cannot match; the walk then goes on to `/`.
    let stop = std::fs::canonicalize(&scope.stop_at).ok();
    let mut dir = real.as_path();
    loop {
        let metadata = std::fs::metadata(dir).map_err(|source| UnsafeKeyFile::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        check_owner_and_mode(dir, &metadata, scope)?;
        if stop.as_deref() == Some(dir) {
            return Ok(());
        }
        match dir.parent() {
            Some(up) => dir = up,
            None => return Ok(()),
        }
    }
}

fn check_owner_and_mode(
    path: &Path,
    metadata: &Metadata,
    scope: &Scope,
) -> Result<(), UnsafeKeyFile> {
    if !scope.allowed_owners.contains(&metadata.uid()) {
        return Err(UnsafeKeyFile::BadOwner {
            path: path.to_path_buf(),
            owner: metadata.uid(),
            allowed: scope.allowed_owners.clone(),
        });
    }
    let mode = metadata.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(UnsafeKeyFile::Writable {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn scope_of(dir: &Path) -> Scope {
        Scope {
            allowed_owners: vec![nix::unistd::geteuid().as_raw()],
            stop_at: dir.to_path_buf(),
        }
    }

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn a_safe_file_opens_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().expect("temp dir");
        chmod(dir.path(), 0o755);
        let file = dir.path().join("keys");
        std::fs::write(&file, "ssh-ed25519 AAAA\n").expect("written");
        chmod(&file, 0o644);
        let opened = open_checked(&file, &scope_of(dir.path())).expect("safe");
        let opened = opened.expect("exists");
        assert_eq!(read_capped(&file, opened.file).expect("read").len(), 17);
        let missing = dir.path().join("nope/keys");
        assert!(matches!(
            open_checked(&missing, &scope_of(dir.path())),
            Ok(None)
        ));
    }

    #[test]
    fn writable_files_and_directories_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        chmod(dir.path(), 0o755);
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).expect("mkdir");
        let file = sub.join("keys");
        std::fs::write(&file, "x\n").expect("written");
        chmod(&file, 0o666);
        let refused = open_checked(&file, &scope_of(dir.path())).expect_err("refused");
        assert!(
            matches!(refused, UnsafeKeyFile::Writable { mode: 0o666, .. }),
            "{refused}"
        );
        chmod(&file, 0o600);
        chmod(&sub, 0o775);
        let refused = open_checked(&file, &scope_of(dir.path())).expect_err("refused");
        assert!(
            matches!(&refused, UnsafeKeyFile::Writable { path, .. } if path.ends_with("sub")),
            "{refused}"
        );
    }

    #[test]
    fn symlinks_fifos_and_huge_files_are_refused_without_reading() {
        let dir = tempfile::tempdir().expect("temp dir");
        chmod(dir.path(), 0o755);
        let scope = scope_of(dir.path());
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/dev/zero", &link).expect("symlink");
        assert!(matches!(
            open_checked(&link, &scope),
            Err(UnsafeKeyFile::Symlink(_))
        ));
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        assert!(matches!(
            open_checked(&fifo, &scope),
            Err(UnsafeKeyFile::NotRegular(_))
        ));
        let big = dir.path().join("big");
        let file = File::create(&big).expect("created");
        file.set_len(MAX_KEY_FILE_BYTES + 1).expect("sized");
        chmod(&big, 0o600);
        assert!(matches!(
            open_checked(&big, &scope),
            Err(UnsafeKeyFile::TooLarge(_))
        ));
    }

    #[test]
    fn a_file_owned_by_someone_else_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        chmod(dir.path(), 0o755);
        let file = dir.path().join("keys");
        std::fs::write(&file, "x\n").expect("written");
        chmod(&file, 0o600);
        let scope = Scope {
            // Nobody real: the file's owner (whoever runs the tests) is not in the list.
            allowed_owners: vec![u32::MAX - 1],
            stop_at: dir.path().to_path_buf(),
        };
        let refused = open_checked(&file, &scope).expect_err("refused");
        assert!(
            matches!(refused, UnsafeKeyFile::BadOwner { .. }),
            "{refused}"
        );
    }
}
