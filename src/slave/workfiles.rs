//! Files a step left in its work dir that the master asked for by glob (test reports,
//! artifacts), found without ever leaving that directory. Owns: parsing the patterns, the walk,
//! the limits, and opening each file once. Not: what is done with the files (sending them is
//! the runner's, reading them the master's).
//!
//! Why every step goes through directory handles: the work dir holds whatever a build (and so,
//! for a try build, whatever a user's patch) put there, and a process the step left running
//! may still be changing it. A path joined and opened by name would follow a symlink planted
//! anywhere along it, out to `/etc/shadow` or the slave's key. So each directory is opened from
//! its parent's handle with `O_NOFOLLOW`, each file likewise, and what a file is (regular, its
//! size) is read from the open handle, never from a name that could be swapped in between.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::fcntl::{AtFlags, OFlag, open, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};

/// How much one collection may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_files: usize,
    pub max_file_bytes: u64,
    pub max_total_bytes: u64,
}

/// A regular file that matched, open for reading. `size` is from the open handle.
#[derive(Debug)]
pub struct Found {
    /// Relative to the work dir, `/`-separated, UTF-8.
    pub relative: String,
    pub file: File,
    pub size: u64,
}

/// What a collection found, and one line for the build log per thing it left out.
#[derive(Debug, Default)]
pub struct Collected {
    /// Sorted by `relative`, each file once however many patterns matched it.
    pub found: Vec<Found>,
    pub refused: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkfilesError {
    #[error("cannot open the work dir {}: {source}", path.display())]
    WorkDir { path: PathBuf, source: nix::Error },
}

/// No walk goes deeper than this, nor looks at more entries: a build can leave millions of
/// files behind (`target/`, `node_modules/`), and a `**` must not keep the slave busy for long.
const MAX_DEPTH: usize = 64;
const MAX_ENTRIES_VISITED: usize = 200_000;

/// Finds the regular files under `workdir` that match `patterns` (see the module doc).
pub fn collect(
    workdir: &Path,
    patterns: &[String],
    limits: &Limits,
) -> Result<Collected, WorkfilesError> {
    let root = open(
        workdir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|source| WorkfilesError::WorkDir {
        path: workdir.to_path_buf(),
        source,
    })?;
    let mut walk = Walk {
        limits: *limits,
        collected: Collected::default(),
        seen: BTreeSet::new(),
        total_bytes: 0,
        visited: 0,
        file_limit_told: false,
        visit_limit_told: false,
        matched: false,
    };
    for pattern in patterns {
        match parse(pattern) {
            Ok(components) => {
                walk.matched = false;
                walk.step(&root, "", &components, 0);
                if !walk.matched {
                    walk.refuse(format!("no file matches {pattern}"));
                }
            }
            Err(reason) => walk.refuse(format!("pattern {pattern:?} refused: {reason}")),
        }
    }
    let mut collected = walk.collected;
    collected.found.sort_by(|a, b| a.relative.cmp(&b.relative));
    Ok(collected)
}

#[derive(Debug)]
enum Component {
    Literal(String),
    Glob(glob::Pattern),
    AnyDepth,
}

fn parse(pattern: &str) -> Result<Vec<Component>, String> {
    if pattern.starts_with('/') {
        return Err("it is absolute; patterns are relative to the work dir".into());
    }
    if pattern.contains('\0') {
        return Err("it contains a NUL byte".into());
    }
    let mut components = Vec::new();
    for part in pattern.split('/') {
        match part {
            "" | "." => continue,
            ".." => return Err("it leaves the work dir (..)".into()),
            "**" => components.push(Component::AnyDepth),
            _ if part.contains(['*', '?', '[']) => {
                let glob = glob::Pattern::new(part).map_err(|err| err.to_string())?;
                components.push(Component::Glob(glob));
            }
            _ => components.push(Component::Literal(part.to_string())),
        }
    }
    if components.is_empty() {
        return Err("it names no file".into());
    }
    if matches!(components.last(), Some(Component::AnyDepth)) {
        return Err("it ends in **; name the files (e.g. dir/**/*.xml)".into());
    }
    Ok(components)
}

/// Like a shell: `*` does not match a leading dot.
const MATCH: glob::MatchOptions = glob::MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: true,
};

enum Kind {
    Directory,
    Regular,
    Symlink,
    Other,
}

fn kind_of(stat: &FileStat) -> Kind {
    let format = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
    if format == SFlag::S_IFDIR {
        Kind::Directory
    } else if format == SFlag::S_IFREG {
        Kind::Regular
    } else if format == SFlag::S_IFLNK {
        Kind::Symlink
    } else {
        Kind::Other
    }
}

struct Walk {
    limits: Limits,
    collected: Collected,
    seen: BTreeSet<String>,
    total_bytes: u64,
    visited: usize,
    file_limit_told: bool,
    visit_limit_told: bool,
    /// Whether the pattern being walked reached a file (taken or refused).
    matched: bool,
}

impl Walk {
    fn refuse(&mut self, line: String) {
        self.collected.refused.push(line);
    }

    /// Matches `components` below the directory `dir` (at `prefix`, "" or ending in '/').
    fn step(&mut self, dir: &OwnedFd, prefix: &str, components: &[Component], depth: usize) {
        let Some((first, rest)) = components.split_first() else {
            return;
        };
        if depth > MAX_DEPTH {
            self.refuse(format!("{prefix} is nested too deep; not searched further"));
            return;
        }
        match first {
            Component::Literal(name) => self.entry(dir, prefix, name, rest, depth),
            Component::Glob(glob) => {
                for name in self.names(dir, prefix) {
                    if glob.matches_with(&name, MATCH) {
                        self.entry(dir, prefix, &name, rest, depth);
                    }
                }
            }
            Component::AnyDepth => {
                // Zero directories, then each subdirectory with the `**` still in front.
                self.step(dir, prefix, rest, depth);
                for name in self.names(dir, prefix) {
                    if name.starts_with('.') {
                        continue;
                    }
                    let Ok(stat) = fstatat(dir, name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) else {
                        continue;
                    };
                    if let Kind::Directory = kind_of(&stat)
                        && let Some(sub) = open_dir(dir, &name)
                    {
                        self.step(&sub, &format!("{prefix}{name}/"), components, depth + 1);
                    }
                }
            }
        }
    }

    /// The UTF-8 names in `dir`, sorted so limits cut the same files every time.
    fn names(&mut self, dir: &OwnedFd, prefix: &str) -> Vec<String> {
        let Ok(mut listing) = Dir::openat(
            dir,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) else {
            self.refuse(format!("cannot list {}", shown_dir(prefix)));
            return Vec::new();
        };
        let mut names = Vec::new();
        for entry in listing.iter() {
            let Ok(entry) = entry else { break };
            self.visited += 1;
            if self.visited > MAX_ENTRIES_VISITED {
                if !self.visit_limit_told {
                    self.visit_limit_told = true;
                    self.refuse(format!(
                        "stopped searching after {MAX_ENTRIES_VISITED} directory entries"
                    ));
                }
                break;
            }
            let bytes = entry.file_name().to_bytes();
            if bytes == b"." || bytes == b".." {
                continue;
            }
            match std::str::from_utf8(bytes) {
                Ok(name) => names.push(name.to_string()),
                Err(_) => self.refuse(format!(
                    "{}{} is not a UTF-8 name; left out",
                    prefix,
                    String::from_utf8_lossy(bytes)
                )),
            }
        }
        names.sort();
        names
    }

    fn entry(&mut self, dir: &OwnedFd, prefix: &str, name: &str, rest: &[Component], depth: usize) {
        let relative = format!("{prefix}{name}");
        let Ok(stat) = fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) else {
            return;
        };
        match (kind_of(&stat), rest.is_empty()) {
            (Kind::Directory, false) => {
                if let Some(sub) = open_dir(dir, name) {
                    self.step(&sub, &format!("{relative}/"), rest, depth + 1);
                }
            }
            (Kind::Directory, true) => {
                self.matched = true;
                self.refuse(format!("{relative} is a directory; name the files in it"));
            }
            (Kind::Symlink, _) => {
                self.matched = true;
                self.refuse(format!("{relative} is a symlink; not followed"));
            }
            (Kind::Regular, true) => self.take(dir, relative, name),
            (Kind::Other, true) => {
                self.matched = true;
                self.refuse(format!("{relative} is not a regular file"));
            }
            _ => {}
        }
    }

    fn take(&mut self, dir: &OwnedFd, relative: String, name: &str) {
        self.matched = true;
        if self.seen.contains(&relative) {
            return;
        }
        if self.collected.found.len() >= self.limits.max_files {
            if !self.file_limit_told {
                self.file_limit_told = true;
                self.refuse(format!(
                    "more than {} files match; {relative} and the rest left out",
                    self.limits.max_files
                ));
            }
            return;
        }
        // O_NONBLOCK: should a FIFO be swapped in after the fstatat, opening it must not wait
        // for a writer; the fstat below then refuses it.
        let opened = openat(
            dir,
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        );
        let fd = match opened {
            Ok(fd) => fd,
            Err(nix::Error::ELOOP) => {
                self.refuse(format!("{relative} is a symlink; not followed"));
                return;
            }
            Err(errno) => {
                self.refuse(format!("cannot open {relative}: {errno}"));
                return;
            }
        };
        let stat = match fstat(&fd) {
            Ok(stat) => stat,
            Err(errno) => {
                self.refuse(format!("cannot read {relative}: {errno}"));
                return;
            }
        };
        if !matches!(kind_of(&stat), Kind::Regular) {
            self.refuse(format!("{relative} is not a regular file"));
            return;
        }
        let size = u64::try_from(stat.st_size).unwrap_or(0);
        if size > self.limits.max_file_bytes {
            self.refuse(format!(
                "{relative} is {size} bytes, over the limit of {} per file; left out",
                self.limits.max_file_bytes
            ));
            return;
        }
        if self.total_bytes.saturating_add(size) > self.limits.max_total_bytes {
            self.refuse(format!(
                "{relative} ({size} bytes) would bring the total over {} bytes; left out",
                self.limits.max_total_bytes
            ));
            return;
        }
        let file = File::from(fd);
        // Reads must block as usual; O_NONBLOCK was only for the open.
        if let Err(errno) = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(OFlag::empty()))
        {
            self.refuse(format!("cannot read {relative}: {errno}"));
            return;
        }
        self.total_bytes += size;
        self.seen.insert(relative.clone());
        self.collected.found.push(Found {
            relative,
            file,
            size,
        });
    }
}

fn open_dir(dir: &OwnedFd, name: &str) -> Option<OwnedFd> {
    openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ok()
}

/// A file being written at a relative path of a work dir (a fetched artifact), through
/// directory handles only, like the walk: every directory on the way is opened from its
/// parent with `O_NOFOLLOW` (made when missing), so a symlink a step planted anywhere on the
/// path is refused, never followed. The bytes go into a fresh temporary name beside the
/// target and are renamed over it once whole and checked: a symlink at the target name is
/// replaced, not written through.
#[derive(Debug)]
pub struct Placing {
    dir: OwnedFd,
    temp: String,
    name: String,
    pub file: File,
}

/// Opens `relative` under `workdir` for writing (see [`Placing`]); the error is one line.
pub fn create_inside(workdir: &Path, relative: &str) -> Result<Placing, String> {
    let parts: Vec<&str> = relative.split('/').collect();
    if relative.contains('\0') || parts.iter().any(|part| matches!(*part, "" | "." | "..")) {
        return Err(format!(
            "refused {relative:?}: not a relative path inside the work tree"
        ));
    }
    let Some((name, dirs)) = parts.split_last() else {
        return Err(format!("refused {relative:?}: it names no file"));
    };
    let mut dir = open(
        workdir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| format!("cannot open the work dir {}: {errno}", workdir.display()))?;
    let mut shown = String::new();
    for part in dirs {
        shown.push_str(part);
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let opened = match openat(&dir, *part, flags, Mode::empty()) {
            Err(nix::Error::ENOENT) => {
                match nix::sys::stat::mkdirat(&dir, *part, Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(nix::Error::EEXIST) => {}
                    Err(errno) => return Err(format!("cannot make {shown}: {errno}")),
                }
                openat(&dir, *part, flags, Mode::empty())
            }
            other => other,
        };
        dir = match opened {
            Ok(fd) => fd,
            Err(errno) => {
                let symlink = fstatat(&dir, *part, AtFlags::AT_SYMLINK_NOFOLLOW)
                    .is_ok_and(|stat| matches!(kind_of(&stat), Kind::Symlink));
                return Err(if symlink {
                    format!("refused {relative}: {shown} is a symlink; not followed")
                } else {
                    format!("refused {relative}: cannot open the directory {shown}: {errno}")
                });
            }
        };
        shown.push('/');
    }
    let temp = format!(".{name}.buildbot-fetch-{}", std::process::id());
    let create = || {
        openat(
            &dir,
            temp.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )
    };
    let fd = match create() {
        // Left by a fetch this process did not finish (its slave was killed).
        Err(nix::Error::EEXIST) => {
            let _ =
                nix::unistd::unlinkat(&dir, temp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
            create()
        }
        other => other,
    }
    .map_err(|errno| format!("cannot write {relative}: {errno}"))?;
    Ok(Placing {
        dir,
        temp,
        name: (*name).to_string(),
        file: File::from(fd),
    })
}

impl Placing {
    /// The file is whole and checked: it takes its name (replacing what had it, unfollowed).
    pub fn place(self) -> Result<(), String> {
        self.file
            .sync_data()
            .map_err(|err| format!("cannot write {}: {err}", self.name))?;
        nix::fcntl::renameat(&self.dir, self.temp.as_str(), &self.dir, self.name.as_str())
            .map_err(|errno| format!("cannot put {} in place: {errno}", self.name))
    }

    /// The file did not arrive whole: nothing of it stays.
    pub fn abandon(self) {
        let _ = nix::unistd::unlinkat(
            &self.dir,
            self.temp.as_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
    }
}

fn shown_dir(prefix: &str) -> &str {
    if prefix.is_empty() {
        "the work dir"
    } else {
        prefix
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::symlink;

    const ROOMY: Limits = Limits {
        max_files: 100,
        max_file_bytes: 1 << 20,
        max_total_bytes: 1 << 22,
    };

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        for (path, text) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        }
        dir
    }

    fn relatives(collected: &Collected) -> Vec<&str> {
        collected
            .found
            .iter()
            .map(|found| found.relative.as_str())
            .collect()
    }

    fn patterns(list: &[&str]) -> Vec<String> {
        list.iter().map(|pattern| pattern.to_string()).collect()
    }

    #[test]
    fn globs_match_like_a_shell() {
        let dir = tree(&[
            ("out.tap", "ok 1"),
            ("target/junit/a.xml", "<a/>"),
            ("target/junit/b.xml", "<b/>"),
            ("target/junit/.hidden.xml", "<h/>"),
            ("target/junit/c.txt", "c"),
            ("deep/x/y/report.xml", "<r/>"),
        ]);
        let collected = collect(
            dir.path(),
            &patterns(&[
                "target/junit/*.xml",
                "out.tap",
                "**/report.xml",
                "./out.tap",
            ]),
            &ROOMY,
        )
        .expect("collect");
        assert_eq!(
            relatives(&collected),
            [
                "deep/x/y/report.xml",
                "out.tap",
                "target/junit/a.xml",
                "target/junit/b.xml"
            ]
        );
        assert!(collected.refused.is_empty(), "{:?}", collected.refused);
        let mut text = String::new();
        let mut file = &collected.found[1].file;
        file.read_to_string(&mut text).expect("read");
        assert_eq!(text, "ok 1");
        assert_eq!(collected.found[1].size, 4);
    }

    #[test]
    fn escapes_are_refused_with_a_line() {
        let outside = tree(&[("secret", "s3cret")]);
        let dir = tree(&[("ok.xml", "<ok/>")]);
        symlink(outside.path().join("secret"), dir.path().join("link.xml")).expect("symlink");
        symlink(outside.path(), dir.path().join("out")).expect("symlink");
        let collected = collect(
            dir.path(),
            &patterns(&[
                "*.xml",
                "out/secret",
                "../secret",
                "/etc/passwd",
                "**/secret",
            ]),
            &ROOMY,
        )
        .expect("collect");
        assert_eq!(relatives(&collected), ["ok.xml"]);
        let refused = collected.refused.join("\n");
        assert!(refused.contains("link.xml is a symlink"), "{refused}");
        assert!(refused.contains("out is a symlink"), "{refused}");
        assert!(refused.contains("leaves the work dir"), "{refused}");
        assert!(refused.contains("is absolute"), "{refused}");
        assert!(refused.contains("no file matches **/secret"), "{refused}");
    }

    #[test]
    fn limits_leave_files_out_with_a_line() {
        let dir = tree(&[
            ("a.xml", "aaaa"),
            ("b.xml", "bbbbbbbbbbbb"),
            ("c.xml", "cccc"),
            ("d.xml", "dddd"),
        ]);
        let limits = Limits {
            max_files: 2,
            max_file_bytes: 8,
            max_total_bytes: 100,
        };
        let collected = collect(dir.path(), &patterns(&["*.xml"]), &limits).expect("collect");
        assert_eq!(relatives(&collected), ["a.xml", "c.xml"]);
        let refused = collected.refused.join("\n");
        assert!(
            refused.contains("b.xml is 12 bytes, over the limit"),
            "{refused}"
        );
        assert!(
            refused.contains("more than 2 files match; d.xml"),
            "{refused}"
        );

        let total = Limits {
            max_files: 10,
            max_file_bytes: 100,
            max_total_bytes: 10,
        };
        let collected = collect(dir.path(), &patterns(&["*.xml"]), &total).expect("collect");
        assert_eq!(relatives(&collected), ["a.xml", "c.xml"]);
        assert!(collected.refused[0].contains("would bring the total over 10"));
    }

    #[test]
    fn fifos_directories_and_odd_names_are_left_out() {
        let dir = tree(&[("reports/x.xml", "<x/>")]);
        nix::unistd::mkfifo(&dir.path().join("pipe.xml"), Mode::S_IRWXU).expect("mkfifo");
        std::fs::create_dir(dir.path().join("dir.xml")).expect("mkdir");
        let odd = std::ffi::OsStr::from_bytes(b"bad\xff.xml");
        std::fs::write(dir.path().join(odd), "x").expect("write");
        let collected = collect(
            dir.path(),
            &patterns(&["*.xml", "reports", "reports/*.xml"]),
            &ROOMY,
        )
        .expect("collect");
        assert_eq!(relatives(&collected), ["reports/x.xml"]);
        let refused = collected.refused.join("\n");
        assert!(
            refused.contains("pipe.xml is not a regular file"),
            "{refused}"
        );
        assert!(refused.contains("dir.xml is a directory"), "{refused}");
        assert!(refused.contains("reports is a directory"), "{refused}");
        assert!(refused.contains("is not a UTF-8 name"), "{refused}");
    }

    #[test]
    fn a_missing_work_dir_is_an_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("gone");
        let err = collect(&missing, &patterns(&["*"]), &ROOMY).expect_err("no dir");
        assert!(err.to_string().contains("gone"), "{err}");
    }

    #[test]
    fn a_fetched_file_never_goes_through_a_symlink() {
        use std::io::Write as _;
        let dir = tree(&[("keep.txt", "x")]);
        let outside = tempfile::tempdir().expect("temp dir");
        symlink(outside.path(), dir.path().join("dist")).expect("symlink");
        let err = create_inside(dir.path(), "dist/app.bin").expect_err("through a symlink");
        assert_eq!(err, "refused dist/app.bin: dist is a symlink; not followed");
        for bad in ["../x", "a/../../x", "/etc/x", "a//b", "./a", ""] {
            assert!(create_inside(dir.path(), bad).is_err(), "{bad:?}");
        }
        // A symlink at the name itself is replaced, not written through.
        let target = outside.path().join("victim");
        std::fs::write(&target, "untouched").expect("victim");
        symlink(&target, dir.path().join("app.bin")).expect("symlink");
        let mut placing = create_inside(dir.path(), "app.bin").expect("create");
        placing.file.write_all(b"fetched").expect("write");
        placing.place().expect("place");
        assert_eq!(
            std::fs::read_to_string(&target).expect("victim"),
            "untouched"
        );
        let placed = dir.path().join("app.bin");
        assert!(
            std::fs::symlink_metadata(&placed)
                .expect("placed")
                .is_file()
        );
        assert_eq!(std::fs::read_to_string(&placed).expect("placed"), "fetched");
        // Missing directories are made; an abandoned file leaves nothing behind.
        let placing = create_inside(dir.path(), "new/deep/file").expect("create");
        placing.abandon();
        let left: Vec<_> = std::fs::read_dir(dir.path().join("new/deep"))
            .expect("made")
            .collect();
        assert!(left.is_empty(), "{left:?}");
        assert_eq!(
            std::fs::read_dir(outside.path()).expect("outside").count(),
            1
        );
    }
}
