//! Opening a file the master will trust (a key file, a secret) so that what is checked is what
//! is read: refused if it is a symlink or not a regular file, opened once without following a
//! symlink and without blocking on a FIFO, and verified to be the very file that was looked at.
//! Who may own it and which mode bits it may have differ per kind of file, so callers check
//! those on the returned metadata.

use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Why a file was not opened.
#[derive(Debug)]
pub enum Refused {
    Symlink,
    NotRegular,
    /// Replaced between the look and the open.
    Changed,
    Io(io::Error),
}

/// Opens `path` as described in the module doc: the open file and its fstat. `Ok(None)` when
/// the file (or a directory above it) does not exist.
pub fn open_regular(path: &Path) -> Result<Option<(File, Metadata)>, Refused> {
    // lstat first, so a FIFO or device is refused without ever being opened.
    let before = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(err) if is_missing(&err) => return Ok(None),
        Err(err) => return Err(Refused::Io(err)),
    };
    if before.file_type().is_symlink() {
        return Err(Refused::Symlink);
    }
    if !before.file_type().is_file() {
        return Err(Refused::NotRegular);
    }
    // O_NOFOLLOW: a symlink swapped in after the lstat fails with ELOOP instead of being
    // followed. O_NONBLOCK: a FIFO swapped in cannot block the open.
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)
    {
        Ok(file) => file,
        Err(err) if err.raw_os_error() == Some(nix::libc::ELOOP) => return Err(Refused::Symlink),
        Err(err) if is_missing(&err) => return Ok(None),
        Err(err) => return Err(Refused::Io(err)),
    };
    let metadata = file.metadata().map_err(Refused::Io)?;
    if metadata.dev() != before.dev() || metadata.ino() != before.ino() {
        return Err(Refused::Changed);
    }
    if !metadata.file_type().is_file() {
        return Err(Refused::NotRegular);
    }
    Ok(Some((file, metadata)))
}

/// Whether an I/O error means the file is not there (also a path through a non-directory).
fn is_missing(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::NotFound || err.raw_os_error() == Some(nix::libc::ENOTDIR)
}
