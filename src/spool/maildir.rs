//! The spool directory as a maildir: `tmp/` (being written), `new/` (delivered, not yet seen by
//! the master), `cur/` (claimed by the master), and `rejected/` (jobs that failed to parse or
//! named unknown builders, each beside a `NAME.why` file with the reason).
//!
//! A job becomes visible only by `rename(tmp/NAME, new/NAME)` after its bytes are fsync'd, so a
//! crash at any moment leaves either no job or a whole one. Nothing here is ever deleted except
//! a writer's own unfinished `tmp/` file.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The sub-directories of a maildir, in the order a job passes through them.
pub const SUBDIRS: [&str; 4] = ["tmp", "new", "cur", "rejected"];

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
    pub fn ensure(&self) -> io::Result<()> {
        for sub in SUBDIRS {
            fs::create_dir_all(self.root.join(sub))?;
        }
        Ok(())
    }

    /// Writes `bytes` as a new job and returns its name. The file is complete and fsync'd in
    /// `tmp/` before it is renamed into `new/`.
    pub fn deliver(&self, bytes: &[u8]) -> io::Result<String> {
        let name = unique_name();
        let tmp_path = self.tmp().join(&name);
        let mut guard = RemoveOnDrop(Some(tmp_path.clone()));
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp_path)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp_path, self.new_dir().join(&name))?;
        guard.0 = None;
        sync_dir(&self.new_dir());
        Ok(name)
    }

    /// Names of the jobs waiting in `new/`, oldest name first (names start with the time).
    pub fn list_new(&self) -> io::Result<Vec<String>> {
        list(&self.new_dir())
    }

    /// Names of the jobs in `cur/`.
    pub fn list_cur(&self) -> io::Result<Vec<String>> {
        list(&self.cur())
    }

    /// Moves `new/NAME` to `cur/NAME` and returns its path there. `Ok(None)` if another
    /// process or an earlier pass claimed it already.
    pub fn claim(&self, name: &str) -> io::Result<Option<PathBuf>> {
        let to = self.cur().join(name);
        match fs::rename(self.new_dir().join(name), &to) {
            Ok(()) => {
                sync_dir(&self.cur());
                Ok(Some(to))
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Moves `cur/NAME` to `rejected/NAME` and writes `rejected/NAME.why` with the reason.
    pub fn reject(&self, name: &str, why: &str) -> io::Result<PathBuf> {
        let why_path = self.rejected().join(format!("{name}.why"));
        let mut file = File::create(&why_path)?;
        file.write_all(format!("{why}\n").as_bytes())?;
        file.sync_all()?;
        let to = self.rejected().join(name);
        fs::rename(self.cur().join(name), &to)?;
        sync_dir(&self.rejected());
        Ok(to)
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

fn list(dir: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        if let Some(name) = entry.file_name().to_str()
            && !name.starts_with('.')
        {
            names.push(name.to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// Makes a rename durable. Failure only weakens crash safety, so it is logged, not returned.
fn sync_dir(dir: &Path) {
    if let Err(err) = File::open(dir).and_then(|dir| dir.sync_all()) {
        tracing::warn!(dir = %dir.display(), "cannot fsync directory: {err}");
    }
}

struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliver_claim_reject_keep_every_byte() {
        let dir = tempfile::tempdir().expect("temp dir");
        let maildir = Maildir::new(dir.path());
        maildir.ensure().expect("created");
        let first = maildir.deliver(b"one").expect("delivered");
        let second = maildir.deliver(b"two").expect("delivered");
        assert_ne!(first, second);
        assert_eq!(
            maildir.list_new().expect("list"),
            vec![first.clone(), second.clone()]
        );
        assert!(fs::read_dir(maildir.tmp()).expect("tmp").next().is_none());

        let claimed = maildir.claim(&first).expect("claim").expect("was there");
        assert_eq!(fs::read(&claimed).expect("read"), b"one");
        assert_eq!(maildir.claim(&first).expect("claim again"), None);

        maildir.claim(&second).expect("claim");
        let rejected = maildir.reject(&second, "bad job").expect("rejected");
        assert_eq!(fs::read(rejected).expect("read"), b"two");
        let why = fs::read_to_string(maildir.rejected().join(format!("{second}.why")));
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
}
