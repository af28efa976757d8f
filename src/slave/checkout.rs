//! A builder's work tree on a slave: fetch the repository, check out the wanted revision
//! exactly (clean, nothing left over from earlier builds), and apply the try patch safely.
//! Running commands and the RPC live elsewhere.
//!
//! Why the `git` command for fetching: git2 is built here without its https/ssh transports, and
//! real repositories live behind https and ssh with the slave user's credentials, config and
//! known_hosts — exactly what the `git` command already handles. Everything after the fetch
//! (resolving the revision, checkout, applying git patches) goes through git2.
//!
//! Patches never write outside the tree: every path is checked before anything is written
//! (relative, no `..`, not under `.git/`, no symlinked directory on the way), and both kinds of
//! patch are all-or-nothing.

use std::path::{Component, Path, PathBuf};
use std::process::Command;

use git2::build::CheckoutBuilder;
use git2::{ApplyLocation, Diff, Oid, Repository, ResetType};

/// What to check out.
#[derive(Debug, Clone)]
pub struct CheckoutSpec {
    /// A local path, `file://`, `https://` or `ssh://` URL: anything `git fetch` takes.
    pub repo: String,
    pub branch: String,
    /// The exact commit to build; `None` = the tip of `branch`.
    pub revision: Option<String>,
    pub patch: Option<Vec<u8>>,
    /// `-p N`, as patch(1) takes it.
    pub patch_level: u32,
}

#[derive(Debug, Clone)]
pub struct CheckedOut {
    /// The full hex commit checked out.
    pub revision: String,
    pub patched_files: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("cannot fetch {repo}: {detail}")]
    Fetch { repo: String, detail: String },
    #[error("revision {revision} is not in {repo}")]
    UnknownRevision { revision: String, repo: String },
    #[error("branch {branch} is not in {repo}")]
    UnknownBranch { branch: String, repo: String },
    #[error("refusing the patch: path {path:?} {why}; nothing was written")]
    UnsafePatchPath { path: String, why: &'static str },
    #[error("the patch does not apply; the tree was left as checked out:\n{detail}")]
    PatchDoesNotApply { detail: String },
    #[error("cannot read the patch: {0}")]
    BadPatch(String),
    #[error("git: {0}")]
    Git(#[from] git2::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

/// Prepares `workdir` for a build. Blocking: run it off the async threads.
pub fn checkout(
    workdir: &Path,
    spec: &CheckoutSpec,
    log: &mut dyn FnMut(&str),
) -> Result<CheckedOut, CheckoutError> {
    let result = checkout_inner(workdir, spec, log);
    if let Err(err) = &result {
        for line in err.to_string().lines() {
            log(line);
        }
    }
    result
}

fn checkout_inner(
    workdir: &Path,
    spec: &CheckoutSpec,
    log: &mut dyn FnMut(&str),
) -> Result<CheckedOut, CheckoutError> {
    fetch(workdir, &spec.repo, log)?;
    let repo = Repository::open(workdir)?;
    let target = resolve(&repo, spec)?;
    let commit = repo.find_commit(target)?;
    repo.set_head_detached(target)?;
    repo.reset(
        commit.as_object(),
        ResetType::Hard,
        Some(CheckoutBuilder::new().force()),
    )?;
    run_git(workdir, &["clean", "-ffdxq"], log).map_err(|detail| CheckoutError::Fetch {
        repo: spec.repo.clone(),
        detail,
    })?;
    let summary = commit
        .summary()
        .ok()
        .flatten()
        .unwrap_or_default()
        .to_string();
    log(&format!(
        "checked out {} ({}): {summary}",
        short(&target.to_string()),
        spec.branch
    ));
    let patched_files = match spec.patch.as_deref() {
        Some(patch) if !patch.is_empty() => {
            let files = apply_patch(&repo, workdir, patch, spec.patch_level)?;
            log(&format!("applied the patch: {} files", files.len()));
            files
        }
        _ => Vec::new(),
    };
    Ok(CheckedOut {
        revision: target.to_string(),
        patched_files,
    })
}

fn short(revision: &str) -> &str {
    revision.get(..12).unwrap_or(revision)
}

/// Runs `git ARGS` in `dir`, never prompting, its output going to the log.
fn run_git(dir: &Path, args: &[&str], log: &mut dyn FnMut(&str)) -> Result<(), String> {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .output()
        .map_err(|err| format!("cannot run git: {err}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    for line in stderr.lines().filter(|line| !line.trim().is_empty()) {
        log(line);
    }
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("git {} failed: {}", args.join(" "), stderr.trim()))
    }
}

fn fetch(workdir: &Path, repo: &str, log: &mut dyn FnMut(&str)) -> Result<(), CheckoutError> {
    let fetch_error = |detail: String| CheckoutError::Fetch {
        repo: repo.to_string(),
        detail,
    };
    if !workdir.join(".git").exists() {
        std::fs::create_dir_all(workdir).map_err(|source| CheckoutError::Io {
            context: format!("cannot create {}", workdir.display()),
            source,
        })?;
        log(&format!("cloning {repo}"));
        run_git(workdir, &["init", "-q"], log).map_err(fetch_error)?;
    } else {
        log(&format!("fetching {repo}"));
    }
    run_git(
        workdir,
        &[
            "fetch",
            "-q",
            "--prune",
            "--no-tags",
            repo,
            "+refs/heads/*:refs/remotes/origin/*",
        ],
        log,
    )
    .map_err(fetch_error)
}

fn resolve(repo: &Repository, spec: &CheckoutSpec) -> Result<Oid, CheckoutError> {
    match &spec.revision {
        Some(revision) => repo
            .revparse_single(revision)
            .and_then(|object| object.peel_to_commit())
            .map(|commit| commit.id())
            .map_err(|_| CheckoutError::UnknownRevision {
                revision: revision.clone(),
                repo: spec.repo.clone(),
            }),
        None => repo
            .find_reference(&format!("refs/remotes/origin/{}", spec.branch))
            .and_then(|reference| reference.peel_to_commit())
            .map(|commit| commit.id())
            .map_err(|_| CheckoutError::UnknownBranch {
                branch: spec.branch.clone(),
                repo: spec.repo.clone(),
            }),
    }
}

/// Checks a path a patch touches; `Ok` only if writing it stays inside `workdir`.
fn check_path(workdir: &Path, path: &str) -> Result<(), CheckoutError> {
    let unsafe_path = |why| CheckoutError::UnsafePatchPath {
        path: path.to_string(),
        why,
    };
    if path.is_empty() {
        return Err(unsafe_path("is empty"));
    }
    let relative = Path::new(path);
    let mut inside = PathBuf::new();
    for (index, component) in relative.components().enumerate() {
        match component {
            Component::Normal(name) => {
                if index == 0 && name == ".git" {
                    return Err(unsafe_path("is inside .git"));
                }
                inside.push(name);
            }
            Component::CurDir => {}
            Component::ParentDir => return Err(unsafe_path("leaves the work tree (..)")),
            Component::RootDir | Component::Prefix(_) => return Err(unsafe_path("is absolute")),
        }
    }
    // No directory on the way may be a symlink: writing through it could land anywhere.
    let mut prefix = workdir.to_path_buf();
    let parts: Vec<_> = inside.components().collect();
    for part in parts.iter().take(parts.len().saturating_sub(1)) {
        prefix.push(part);
        if let Ok(metadata) = std::fs::symlink_metadata(&prefix)
            && metadata.file_type().is_symlink()
        {
            return Err(unsafe_path("goes through a symlink"));
        }
    }
    Ok(())
}

/// Applies the patch; returns the files it touched.
fn apply_patch(
    repo: &Repository,
    workdir: &Path,
    patch: &[u8],
    patch_level: u32,
) -> Result<Vec<String>, CheckoutError> {
    let is_git =
        patch.starts_with(b"diff --git ") || patch.windows(12).any(|w| w == b"\ndiff --git ");
    if is_git && patch_level == 1 {
        apply_git_patch(repo, workdir, patch)
    } else {
        apply_plain_patch(workdir, patch, patch_level)
    }
}

/// git-format patches through git2: renames, modes, binary; all-or-nothing.
fn apply_git_patch(
    repo: &Repository,
    workdir: &Path,
    patch: &[u8],
) -> Result<Vec<String>, CheckoutError> {
    let diff = Diff::from_buffer(patch)
        .map_err(|err| CheckoutError::BadPatch(err.message().to_string()))?;
    let mut files = Vec::new();
    for delta in diff.deltas() {
        for file in [delta.old_file(), delta.new_file()] {
            if let Some(path) = file.path() {
                let path = path.to_string_lossy().into_owned();
                check_path(workdir, &path)?;
                if !files.contains(&path) {
                    files.push(path);
                }
            }
        }
    }
    if let Err(err) = repo.apply(&diff, ApplyLocation::WorkDir, None) {
        return Err(CheckoutError::PatchDoesNotApply {
            detail: rejected_git_hunks(repo, &diff, err.message()),
        });
    }
    Ok(files)
}

/// Finds which file's patch fails (trying each against HEAD in memory) and shows its hunks.
fn rejected_git_hunks(repo: &Repository, diff: &Diff<'_>, message: &str) -> String {
    let mut detail = format!("{message}\n");
    let Ok(head_tree) = repo.head().and_then(|head| head.peel_to_tree()) else {
        return detail;
    };
    for index in 0..diff.deltas().len() {
        let mut options = git2::ApplyOptions::new();
        options.delta_callback(|delta| {
            delta.is_some_and(|delta| {
                diff.get_delta(index)
                    .is_some_and(|wanted| wanted.new_file().path() == delta.new_file().path())
            })
        });
        if repo
            .apply_to_tree(&head_tree, diff, Some(&mut options))
            .is_ok()
        {
            continue;
        }
        if let Ok(Some(mut file_patch)) = git2::Patch::from_diff(diff, index)
            && let Ok(buf) = file_patch.to_buf()
        {
            detail.push_str(&String::from_utf8_lossy(&buf));
        }
    }
    detail
}

/// Plain unified diffs through diffy: paths stripped by `patch_level`, every hunk checked in
/// memory before any file is written.
fn apply_plain_patch(
    workdir: &Path,
    patch: &[u8],
    patch_level: u32,
) -> Result<Vec<String>, CheckoutError> {
    use diffy::patch_set::{FileOperation, ParseOptions, PatchKind, PatchSet};
    let strip = usize::try_from(patch_level).unwrap_or(usize::MAX);
    let mut writes: Vec<(PathBuf, Option<Vec<u8>>, String)> = Vec::new();
    let set = PatchSet::parse_bytes(patch, ParseOptions::unidiff());
    for file_patch in set {
        let file_patch = file_patch.map_err(|err| CheckoutError::BadPatch(err.to_string()))?;
        let operation = file_patch.operation().strip_prefix(strip);
        let (old, new): (Option<String>, Option<String>) = match &operation {
            FileOperation::Delete(path) => (Some(lossy(path)), None),
            FileOperation::Create(path) => (None, Some(lossy(path))),
            FileOperation::Modify { original, modified } => {
                (Some(lossy(original)), Some(lossy(modified)))
            }
            FileOperation::Rename { from, to } => (Some(lossy(from)), Some(lossy(to))),
            FileOperation::Copy { from, to } => (Some(lossy(from)), Some(lossy(to))),
        };
        for path in old.iter().chain(new.iter()) {
            check_path(workdir, path)?;
        }
        let PatchKind::Text(text) = file_patch.patch() else {
            return Err(CheckoutError::BadPatch(
                "binary hunks need a git-format patch (git diff --binary)".into(),
            ));
        };
        let original = match &old {
            // A plain diff of a new file may name it on both sides; diffy then checks that
            // the hunks start from nothing.
            Some(path) => match std::fs::read(workdir.join(path)) {
                Ok(bytes) => bytes,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(source) => {
                    return Err(CheckoutError::Io {
                        context: format!("cannot read {path}"),
                        source,
                    });
                }
            },
            None => Vec::new(),
        };
        let patched = diffy::apply_bytes(&original, text).map_err(|err| {
            CheckoutError::PatchDoesNotApply {
                detail: format!(
                    "{}: {err}\n{}",
                    new.as_deref().or(old.as_deref()).unwrap_or("?"),
                    String::from_utf8_lossy(&text.to_bytes())
                ),
            }
        })?;
        match (&old, &new) {
            (Some(old_path), None) => writes.push((workdir.join(old_path), None, old_path.clone())),
            (old_path, Some(new_path)) => {
                if let Some(old_path) = old_path
                    && old_path != new_path
                    && matches!(operation, FileOperation::Rename { .. })
                {
                    writes.push((workdir.join(old_path), None, old_path.clone()));
                }
                writes.push((workdir.join(new_path), Some(patched), new_path.clone()));
            }
            (None, None) => {}
        }
    }
    if writes.is_empty() {
        return Err(CheckoutError::BadPatch(
            "no file changes found in the patch".into(),
        ));
    }
    let mut files = Vec::new();
    for (path, contents, name) in writes {
        let result = match contents {
            Some(bytes) => path
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(&path, bytes)),
            None => std::fs::remove_file(&path),
        };
        result.map_err(|source| CheckoutError::Io {
            context: format!("cannot write {name}"),
            source,
        })?;
        files.push(name);
    }
    Ok(files)
}

fn lossy(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(dir: &Path, args: &[&str]) -> String {
        let output = Command::new("git")
            .args([
                "-c",
                "user.name=T",
                "-c",
                "user.email=t@example.org",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(dir)
            .output()
            .expect("git runs");
        assert!(
            output.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    struct Fixture {
        tmp: tempfile::TempDir,
        upstream: PathBuf,
    }

    impl Fixture {
        fn new() -> Fixture {
            let tmp = tempfile::tempdir().expect("temp dir");
            let upstream = tmp.path().join("upstream");
            std::fs::create_dir(&upstream).expect("dir");
            git(&upstream, &["init", "-q"]);
            std::fs::write(upstream.join("a.txt"), "one\ntwo\nthree\n").expect("write");
            std::fs::write(upstream.join("old.txt"), "renamed\nfile\nwith lines\n").expect("write");
            std::fs::write(upstream.join("doomed.txt"), "bye\n").expect("write");
            std::fs::write(upstream.join(".gitignore"), "*.o\n").expect("write");
            git(&upstream, &["add", "."]);
            git(&upstream, &["commit", "-q", "-m", "base"]);
            Fixture { tmp, upstream }
        }

        fn spec(&self) -> CheckoutSpec {
            CheckoutSpec {
                repo: self.upstream.display().to_string(),
                branch: "main".into(),
                revision: None,
                patch: None,
                patch_level: 1,
            }
        }

        fn workdir(&self) -> PathBuf {
            self.tmp.path().join("work")
        }

        /// A patch made with `git diff --binary` in a clone.
        fn git_patch(&self, change: impl FnOnce(&Path)) -> Vec<u8> {
            let clone = self.tmp.path().join("patch-clone");
            let _ = std::fs::remove_dir_all(&clone);
            git(
                self.tmp.path(),
                &[
                    "clone",
                    "-q",
                    self.upstream.to_str().expect("utf-8"),
                    "patch-clone",
                ],
            );
            change(&clone);
            git(&clone, &["add", "-A"]);
            git(&clone, &["diff", "--cached", "--binary", "-M"]).into_bytes()
        }
    }

    fn run(workdir: &Path, spec: &CheckoutSpec) -> (Result<CheckedOut, CheckoutError>, String) {
        let mut lines = String::new();
        let result = checkout(workdir, spec, &mut |line| {
            lines.push_str(line);
            lines.push('\n');
        });
        (result, lines)
    }

    #[test]
    fn clones_reuses_and_follows_the_branch() {
        let fixture = Fixture::new();
        let (result, log) = run(&fixture.workdir(), &fixture.spec());
        let first = result.expect("checkout").revision;
        assert!(log.contains("cloning"), "{log}");
        std::fs::write(fixture.upstream.join("a.txt"), "changed\n").expect("write");
        git(&fixture.upstream, &["commit", "-q", "-am", "second"]);
        std::fs::write(fixture.workdir().join("junk.o"), "ignored junk").expect("write");
        std::fs::write(fixture.workdir().join("untracked"), "junk").expect("write");
        let (result, log) = run(&fixture.workdir(), &fixture.spec());
        let second = result.expect("checkout").revision;
        assert!(log.contains("fetching"), "{log}");
        assert_ne!(first, second);
        assert_eq!(
            std::fs::read_to_string(fixture.workdir().join("a.txt")).expect("read"),
            "changed\n"
        );
        assert!(!fixture.workdir().join("junk.o").exists());
        assert!(!fixture.workdir().join("untracked").exists());
        // An exact earlier revision, through a file:// URL.
        let mut spec = fixture.spec();
        spec.repo = format!("file://{}", fixture.upstream.display());
        spec.revision = Some(first.clone());
        let (result, _) = run(&fixture.tmp.path().join("other"), &spec);
        assert_eq!(result.expect("checkout").revision, first);
        spec.revision = Some("0123456789abcdef0123456789abcdef01234567".into());
        let (result, _) = run(&fixture.tmp.path().join("other"), &spec);
        assert!(matches!(result, Err(CheckoutError::UnknownRevision { .. })));
    }

    #[test]
    fn a_git_patch_with_every_kind_of_change() {
        let fixture = Fixture::new();
        let patch = fixture.git_patch(|clone| {
            std::fs::write(clone.join("a.txt"), "one\nTWO\nthree\n").expect("write");
            std::fs::remove_file(clone.join("doomed.txt")).expect("rm");
            std::fs::rename(clone.join("old.txt"), clone.join("new.txt")).expect("mv");
            std::fs::write(clone.join("logo.bin"), [0u8, 159, 146, 150, 255, 0]).expect("write");
            std::fs::write(clone.join("run.sh"), "#!/bin/sh\n").expect("write");
            std::fs::set_permissions(
                clone.join("run.sh"),
                std::os::unix::fs::PermissionsExt::from_mode(0o755),
            )
            .expect("chmod");
        });
        let mut spec = fixture.spec();
        spec.patch = Some(patch);
        let (result, log) = run(&fixture.workdir(), &spec);
        let done = result.unwrap_or_else(|err| panic!("{err}\n{log}"));
        let work = fixture.workdir();
        assert_eq!(
            std::fs::read_to_string(work.join("a.txt")).expect("read"),
            "one\nTWO\nthree\n"
        );
        assert!(!work.join("doomed.txt").exists());
        assert!(!work.join("old.txt").exists());
        assert_eq!(
            std::fs::read_to_string(work.join("new.txt")).expect("read"),
            "renamed\nfile\nwith lines\n"
        );
        assert_eq!(
            std::fs::read(work.join("logo.bin")).expect("read"),
            [0u8, 159, 146, 150, 255, 0]
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(work.join("run.sh"))
                .expect("meta")
                .permissions(),
        );
        assert_eq!(mode & 0o111, 0o111);
        assert!(done.patched_files.contains(&"logo.bin".to_string()));
    }

    #[test]
    fn plain_diffs_with_their_patch_level() {
        let fixture = Fixture::new();
        let mut spec = fixture.spec();
        spec.patch =
            Some(b"--- a.txt\n+++ a.txt\n@@ -1,3 +1,3 @@\n one\n-two\n+2\n three\n".to_vec());
        spec.patch_level = 0;
        let (result, log) = run(&fixture.workdir(), &spec);
        result.unwrap_or_else(|err| panic!("{err}\n{log}"));
        assert_eq!(
            std::fs::read_to_string(fixture.workdir().join("a.txt")).expect("read"),
            "one\n2\nthree\n"
        );
        spec.patch =
            Some(b"--- old/src/new.c\n+++ new/src/new.c\n@@ -0,0 +1 @@\n+int x;\n".to_vec());
        spec.patch_level = 1;
        let (result, log) = run(&fixture.workdir(), &spec);
        result.unwrap_or_else(|err| panic!("{err}\n{log}"));
        assert_eq!(
            std::fs::read_to_string(fixture.workdir().join("src/new.c")).expect("read"),
            "int x;\n"
        );
    }

    #[test]
    fn patches_that_leave_the_tree_are_refused_before_writing() {
        let fixture = Fixture::new();
        let outside = fixture.tmp.path().join("outside");
        std::fs::create_dir(&outside).expect("dir");
        // The repository itself holds a symlink that points out of the tree.
        std::os::unix::fs::symlink(&outside, fixture.upstream.join("link")).expect("symlink");
        git(&fixture.upstream, &["add", "link"]);
        git(&fixture.upstream, &["commit", "-q", "-m", "link"]);
        let cases: Vec<(&[u8], u32)> = vec![
            (b"--- a/../escaped.txt\n+++ b/../escaped.txt\n@@ -0,0 +1 @@\n+x\n", 1),
            (b"--- /tmp/abs.txt\n+++ /tmp/abs.txt\n@@ -0,0 +1 @@\n+x\n", 0),
            (b"--- a/link/evil.txt\n+++ b/link/evil.txt\n@@ -0,0 +1 @@\n+x\n", 1),
            (b"diff --git a/../escaped b/../escaped\nnew file mode 100644\n--- /dev/null\n+++ b/../escaped\n@@ -0,0 +1 @@\n+x\n", 1),
            (b"--- a/.git/config\n+++ b/.git/config\n@@ -0,0 +1 @@\n+x\n", 1),
        ];
        for (patch, level) in cases {
            let mut spec = fixture.spec();
            spec.patch = Some(patch.to_vec());
            spec.patch_level = level;
            let (result, log) = run(&fixture.workdir(), &spec);
            match result {
                Err(CheckoutError::UnsafePatchPath { .. }) | Err(CheckoutError::BadPatch(_)) => {}
                other => panic!("{}: {other:?}\n{log}", String::from_utf8_lossy(patch)),
            }
            assert!(!fixture.tmp.path().join("escaped.txt").exists());
            assert!(!outside.join("evil.txt").exists());
        }
    }

    #[test]
    fn a_patch_that_does_not_apply_shows_the_hunk_and_changes_nothing() {
        let fixture = Fixture::new();
        let mut patch = fixture.git_patch(|clone| {
            std::fs::write(clone.join("a.txt"), "one\nTWO\nthree\n").expect("write");
            std::fs::write(clone.join("fresh.txt"), "new\n").expect("write");
        });
        patch = String::from_utf8(patch)
            .expect("utf-8")
            .replace(" one\n-two", " one\n-zwei")
            .into_bytes();
        let mut spec = fixture.spec();
        spec.patch = Some(patch);
        let (result, log) = run(&fixture.workdir(), &spec);
        match result {
            Err(CheckoutError::PatchDoesNotApply { detail }) => {
                assert!(detail.contains("-zwei"), "{detail}")
            }
            other => panic!("{other:?}"),
        }
        assert!(log.contains("-zwei"), "{log}");
        assert_eq!(git(&fixture.workdir(), &["status", "--porcelain"]), "");
        let mut spec = fixture.spec();
        spec.patch =
            Some(b"--- a.txt\n+++ a.txt\n@@ -1,3 +1,3 @@\n one\n-nope\n+2\n three\n".to_vec());
        spec.patch_level = 0;
        let (result, _) = run(&fixture.workdir(), &spec);
        assert!(
            matches!(result, Err(CheckoutError::PatchDoesNotApply { .. })),
            "{result:?}"
        );
        assert_eq!(git(&fixture.workdir(), &["status", "--porcelain"]), "");
        spec.patch = Some(b"this is not a patch at all\n".to_vec());
        let (result, _) = run(&fixture.workdir(), &spec);
        assert!(
            matches!(result, Err(CheckoutError::BadPatch(_))),
            "{result:?}"
        );
    }
}
