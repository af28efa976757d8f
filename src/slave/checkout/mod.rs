//! The work tree of one builder on a slave: fetch the repository into it, check out the wanted
//! revision exactly (nothing left over from earlier builds, untracked and ignored files
//! included), and apply the try patch safely (in `patch_apply`, a child module). Not: the RPC
//! that asks for a checkout, nor running the build's commands.
//!
//! Why the `git` command for fetching: git2 is built here without its https and ssh transports,
//! and real repositories live behind https and ssh with the slave user's credentials, config,
//! agent and known_hosts, which the `git` command already honours. It runs with
//! `GIT_TERMINAL_PROMPT=0` and stdin closed, so a missing credential fails instead of waiting
//! for a password, and its messages go into the step log. Everything after the fetch (resolving
//! the revision, the checkout, applying patches) goes through git2; `git clean -ffdx` also goes
//! through the command because it removes nested repositories, which libgit2's checkout leaves.
//!
//! A checkout reuses the clone already in the work tree (a fetch, not a new clone). It blocks:
//! callers run it on a blocking thread, one at a time per work tree.

mod patch_apply;
#[cfg(test)]
mod replay_tests;
mod sandbox;

use std::path::Path;
use std::process::{Command, Stdio};

use git2::build::CheckoutBuilder;
use git2::{ObjectType, Oid, Repository, ResetType};

pub use sandbox::{FAULT_ENV, PatchLimits, PatchRunner, run_child as run_apply_patch_child};

/// What to check out, as the master asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutSpec {
    /// A local path, `file://`, `https://` or `ssh://` URL: anything `git fetch` takes.
    pub repo: String,
    /// The branch whose tip is built when `revision` is `None`.
    pub branch: String,
    /// The exact commit to build (a full or abbreviated id, or a branch or tag name); `None`
    /// or blank = the tip of `branch`.
    pub revision: Option<String>,
    /// A try patch: a git diff (`git diff --binary`, format-patch) or a plain unified diff
    /// (`diff -ruN`). Empty = none.
    pub patch: Option<Vec<u8>>,
    /// How many leading path components to strip from the patch's paths, as `patch -pN`.
    pub patch_level: u32,
    /// Check out the submodules (recursively) at the pointers the patched tree records.
    pub submodules: bool,
}

/// What a successful checkout produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedOut {
    /// The full hex id of the commit checked out.
    pub revision: String,
    /// The files the patch created, changed, renamed (both names) or deleted, in patch order.
    pub patched_files: Vec<String>,
}

/// Why a checkout failed. Its `Display` is the full detail for the step log.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    /// `git init` or `git fetch` failed; `detail` holds git's own message.
    #[error("cannot fetch {repo}: {detail}")]
    Fetch { repo: String, detail: String },
    /// The revision asked for is not in the repository, even after fetching it by id.
    #[error("revision {revision} is not in {repo}")]
    UnknownRevision { revision: String, repo: String },
    /// No revision was asked for and the branch is not in the repository.
    #[error("branch {branch} is not in {repo}")]
    UnknownBranch { branch: String, repo: String },
    /// The patch would write outside the work tree, into `.git`, or through a symlink.
    #[error("refusing the patch: {path} {why}; nothing was written")]
    UnsafePatchPath { path: String, why: String },
    /// A hunk does not match the checked-out files; `detail` names the file and shows the
    /// rejected hunk. Nothing was written.
    #[error("the patch does not apply; the tree is left as checked out:\n{detail}")]
    PatchDoesNotApply { detail: String },
    /// The patch cannot be read, or has something this slave cannot apply.
    #[error("cannot use the patch: {0}")]
    BadPatch(String),
    /// The patch step (in its child process) refused the patch or failed; `message` is its
    /// full detail, and `may_have_written` says whether the tree must be restored.
    #[error("{message}")]
    PatchRefused {
        message: String,
        may_have_written: bool,
    },
    /// The patch step's child process crashed, ran out of time or memory, or could not be
    /// started. Not a verdict on the patch: the build ends as an exception.
    #[error("the patch step failed: {reason}")]
    PatchProcess { reason: String },
    /// `git submodule update` failed; `detail` holds git's own message.
    #[error("cannot check out the submodules: {detail}")]
    Submodules { detail: String },
    /// `git clean` could not remove what an earlier build left.
    #[error("cannot clean the work tree: {detail}")]
    Clean { detail: String },
    /// libgit2 failed on the clone itself (a corrupt object, a full disk, a permission).
    #[error("git: {0}")]
    Git(#[from] git2::Error),
    /// A file or directory of the work tree could not be created, read or removed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl CheckoutError {
    /// Whether part of the patch may already be in the tree (the tree is then restored).
    pub fn may_have_written(&self) -> bool {
        match self {
            CheckoutError::Io { .. }
            | CheckoutError::Git(_)
            | CheckoutError::PatchProcess { .. } => true,
            CheckoutError::PatchRefused {
                may_have_written, ..
            } => *may_have_written,
            _ => false,
        }
    }

    /// Whether the failure is the slave's, not the input's: the build ends as an exception
    /// rather than a failure.
    pub fn is_exception(&self) -> bool {
        matches!(self, CheckoutError::PatchProcess { .. })
    }
}

/// Prepares `workdir` for a build: fetches `spec.repo` into it (cloning the first time),
/// checks out the wanted commit with a detached HEAD, removes everything else, and applies the
/// patch with `patch_runner`. Progress lines and, on failure, the error's full detail go to
/// `log`. Blocking.
pub fn checkout(
    workdir: &Path,
    spec: &CheckoutSpec,
    patch_runner: &PatchRunner,
    log: &mut dyn FnMut(&str),
) -> Result<CheckedOut, CheckoutError> {
    let result = checkout_logged(workdir, spec, patch_runner, log);
    match &result {
        Ok(done) => {
            tracing::info!(workdir = %workdir.display(), revision = %done.revision, "checked out")
        }
        Err(err) => {
            tracing::warn!(workdir = %workdir.display(), "checkout failed: {err}");
            for line in err.to_string().lines() {
                log(line);
            }
        }
    }
    result
}

fn checkout_logged(
    workdir: &Path,
    spec: &CheckoutSpec,
    patch_runner: &PatchRunner,
    log: &mut dyn FnMut(&str),
) -> Result<CheckedOut, CheckoutError> {
    let remote = Remote::new(&spec.repo);
    let revision = spec
        .revision
        .as_deref()
        .map(str::trim)
        .filter(|revision| !revision.is_empty());
    // A commit named by its full id is the same commit wherever it came from: when the clone
    // has it already, there is nothing to fetch.
    let present = revision.and_then(|revision| clone_having(workdir, &remote, revision));
    let repo = match present {
        Some(repo) => {
            log(&format!(
                "fetching {}: not needed, the commit is here",
                remote.shown
            ));
            repo
        }
        None => fetch(workdir, &remote, log)?,
    };
    let target = match revision {
        Some(revision) => resolve_revision(&repo, workdir, &remote, revision, log)?,
        None => repo
            .find_reference(&format!("refs/remotes/origin/{}", spec.branch))
            .and_then(|reference| reference.peel_to_commit())
            .map(|commit| commit.id())
            .map_err(|_| CheckoutError::UnknownBranch {
                branch: spec.branch.clone(),
                repo: remote.shown.clone(),
            })?,
    };
    if !spec.submodules && is_clean_at(&repo, workdir, target) {
        log("the work tree is already clean at that commit");
    } else {
        reset_tree(&repo, workdir, target, log)?;
    }
    let summary = repo
        .find_commit(target)
        .ok()
        .and_then(|commit| commit.summary().ok().flatten().map(str::to_string))
        .unwrap_or_default();
    let what = match revision {
        Some(revision) => format!("revision {revision}"),
        None => spec.branch.clone(),
    };
    log(&format!(
        "checked out {} ({what}): {summary}",
        short_id(&target)
    ));
    let patched_files = match spec.patch.as_deref() {
        Some(patch) if !patch.is_empty() => {
            apply_patch(&repo, workdir, target, spec, patch, patch_runner, log)?
        }
        _ => Vec::new(),
    };
    if spec.submodules {
        update_submodules(workdir, &remote, log)?;
    }
    Ok(CheckedOut {
        revision: target.to_string(),
        patched_files,
    })
}

/// Applies the try patch to the checked-out `target`; on a failure that may have written part
/// of it, puts `target` back. Returns the files it touched.
fn apply_patch(
    repo: &Repository,
    workdir: &Path,
    target: Oid,
    spec: &CheckoutSpec,
    patch: &[u8],
    patch_runner: &PatchRunner,
    log: &mut dyn FnMut(&str),
) -> Result<Vec<String>, CheckoutError> {
    let applied = match patch_runner.apply(repo, workdir, patch, spec.patch_level) {
        Ok(applied) => applied,
        Err(err) => {
            // Only these can come after part of the patch was written; put the commit back.
            if err.may_have_written()
                && let Err(restore) = reset_tree(repo, workdir, target, log)
            {
                log(&format!("cannot restore the checked-out tree: {restore}"));
            }
            return Err(err);
        }
    };
    log(&format!(
        "applied patch: {} ({}, -p{})",
        crate::status::text::count(applied.files.len(), "file", "files"),
        applied.kind,
        spec.patch_level
    ));
    for file in &applied.files {
        log(&format!("  {file}"));
    }
    Ok(applied.files)
}

/// Checks out every submodule, recursively, at the pointer the index records (the patch step
/// records changed pointers there). With the `git` command, for the same reasons as the fetch;
/// file URLs are allowed because the builder's admin chose the repository and asked for its
/// submodules, and a build runs the patch's code anyway.
fn update_submodules(
    workdir: &Path,
    remote: &Remote<'_>,
    log: &mut dyn FnMut(&str),
) -> Result<(), CheckoutError> {
    log("checking out submodules");
    run_git(
        workdir,
        &[
            "-c",
            "protocol.file.allow=always",
            "submodule",
            "update",
            "--init",
            "--recursive",
            "--force",
        ],
        remote,
        log,
    )
    .map_err(|detail| CheckoutError::Submodules { detail })
}

fn short_id(id: &Oid) -> String {
    let mut text = id.to_string();
    text.truncate(12);
    text
}

/// The repository as given, and as shown in logs and errors: a password in an URL is replaced
/// by `***`, because step logs are public on the web page.
struct Remote<'s> {
    given: &'s str,
    shown: String,
    password: Option<&'s str>,
}

impl<'s> Remote<'s> {
    fn new(given: &'s str) -> Remote<'s> {
        let password = given.split_once("://").and_then(|(_, rest)| {
            let authority = rest.split('/').next().unwrap_or(rest);
            let (userinfo, _) = authority.rsplit_once('@')?;
            let (_, password) = userinfo.split_once(':')?;
            Some(password).filter(|password| !password.is_empty())
        });
        let shown = match password {
            Some(password) => given.replacen(&format!(":{password}@"), ":***@", 1),
            None => given.to_string(),
        };
        Remote {
            given,
            shown,
            password,
        }
    }

    fn redact(&self, line: &str) -> String {
        match self.password {
            Some(password) => line.replace(password, "***"),
            None => line.to_string(),
        }
    }

    fn fetch_error(&self, detail: String) -> CheckoutError {
        CheckoutError::Fetch {
            repo: self.shown.clone(),
            detail: self.redact(&detail),
        }
    }
}

/// Environment variables that would point git at another repository than the work tree's.
const REPOSITORY_ENV: [&str; 7] = [
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
];

/// Runs `git ARGS` in `dir`, never prompting, its messages going to the log.
fn run_git(
    dir: &Path,
    args: &[&str],
    remote: &Remote<'_>,
    log: &mut dyn FnMut(&str),
) -> Result<(), String> {
    let mut command = Command::new("git");
    command
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C");
    for name in REPOSITORY_ENV {
        command.env_remove(name);
    }
    let output = command
        .output()
        .map_err(|err| format!("cannot run git: {err}"))?;
    let messages = [&output.stdout, &output.stderr]
        .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
        .join("");
    for line in messages.lines().filter(|line| !line.trim().is_empty()) {
        log(&remote.redact(line));
    }
    if output.status.success() {
        return Ok(());
    }
    let last = messages
        .lines()
        .rfind(|line| !line.trim().is_empty())
        .unwrap_or("no message");
    // The subcommand: the first word that is neither an option nor the value of a `-c`.
    let command = args
        .iter()
        .enumerate()
        .find(|&(index, arg)| {
            !arg.starts_with('-') && (index == 0 || args.get(index - 1) != Some(&"-c"))
        })
        .map_or("", |(_, arg)| *arg);
    Err(format!(
        "git {command} failed ({}): {}",
        output.status,
        remote.redact(last)
    ))
}

/// Brings the clone in `workdir` up to date with every branch and tag of the remote, cloning
/// into it the first time.
fn fetch(
    workdir: &Path,
    remote: &Remote<'_>,
    log: &mut dyn FnMut(&str),
) -> Result<Repository, CheckoutError> {
    if remote.given.trim().is_empty() {
        return Err(remote.fetch_error("no repository given".into()));
    }
    // It would be read as an option, even after other arguments.
    if remote.given.starts_with('-') {
        return Err(remote.fetch_error("a repository cannot start with '-'".into()));
    }
    let git_dir = workdir.join(".git");
    if git_dir.exists()
        && let Err(err) = Repository::open(workdir)
    {
        log(&format!(
            "the clone in {} is unusable ({}); starting afresh",
            workdir.display(),
            err.message()
        ));
        std::fs::remove_dir_all(&git_dir).map_err(|source| CheckoutError::Io {
            context: format!("cannot remove {}", git_dir.display()),
            source,
        })?;
    }
    if git_dir.exists() {
        log(&format!("fetching {}", remote.shown));
    } else {
        std::fs::create_dir_all(workdir).map_err(|source| CheckoutError::Io {
            context: format!("cannot create {}", workdir.display()),
            source,
        })?;
        log(&format!(
            "cloning {} into {}",
            remote.shown,
            workdir.display()
        ));
        run_git(
            workdir,
            &["-c", "init.defaultBranch=buildbot", "init", "-q"],
            remote,
            log,
        )
        .map_err(|detail| remote.fetch_error(detail))?;
    }
    run_git(
        workdir,
        &[
            "fetch",
            "--prune",
            "--no-tags",
            "--",
            remote.given,
            "+refs/heads/*:refs/remotes/origin/*",
            "+refs/tags/*:refs/tags/*",
        ],
        remote,
        log,
    )
    .map_err(|detail| remote.fetch_error(detail))?;
    let repo = Repository::open(workdir)?;
    if repo.is_bare() {
        return Err(remote.fetch_error(format!(
            "{} is a bare repository, not a work tree",
            workdir.display()
        )));
    }
    Ok(repo)
}

/// The clone in `workdir`, when it already holds the commit whose full id is `revision`.
fn clone_having(workdir: &Path, remote: &Remote<'_>, revision: &str) -> Option<Repository> {
    let full_id =
        matches!(revision.len(), 40 | 64) && revision.bytes().all(|byte| byte.is_ascii_hexdigit());
    // Such a remote is refused by `fetch`, which says why.
    if !full_id || remote.given.trim().is_empty() || remote.given.starts_with('-') {
        return None;
    }
    let repo = Repository::open(workdir).ok()?;
    if repo.is_bare() {
        return None;
    }
    let id = Oid::from_str(revision).ok()?;
    repo.find_object(id, None).ok()?.peel_to_commit().ok()?;
    Some(repo)
}

/// Whether the work tree already is exactly `target`, as a fresh checkout would leave it: HEAD
/// detached at it, nothing modified, staged, untracked or ignored, and no empty directory
/// (which git's status does not show, but `git clean -d` would remove). Anything unsure is
/// "no", and the tree is reset.
fn is_clean_at(repo: &Repository, workdir: &Path, target: Oid) -> bool {
    let at_target = repo.head_detached().unwrap_or(false)
        && repo.head().ok().and_then(|head| head.target()) == Some(target);
    if !at_target {
        return false;
    }
    let mut options = git2::StatusOptions::new();
    options
        .include_untracked(true)
        .include_ignored(true)
        .include_unmodified(false)
        .recurse_untracked_dirs(false)
        .recurse_ignored_dirs(false)
        .exclude_submodules(false);
    let clean = repo
        .statuses(Some(&mut options))
        .is_ok_and(|statuses| statuses.is_empty());
    clean && !has_empty_dir(workdir, true)
}

/// Whether `dir` holds an empty directory (itself included, unless it is the top; `.git` at
/// the top is not looked into). An unreadable directory counts as one.
fn has_empty_dir(dir: &Path, top: bool) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return true;
    };
    let mut empty = true;
    for entry in entries {
        let Ok(entry) = entry else {
            return true;
        };
        empty = false;
        if top && entry.file_name() == ".git" {
            continue;
        }
        match entry.file_type() {
            Ok(kind) if kind.is_dir() => {
                if has_empty_dir(&entry.path(), false) {
                    return true;
                }
            }
            Ok(_) => {}
            Err(_) => return true,
        }
    }
    empty && !top
}

/// Finds `revision` after the fetch; a commit that no branch or tag reaches any more (a
/// force-pushed branch, a pull request) is fetched by its id, which most servers allow.
fn resolve_revision(
    repo: &Repository,
    workdir: &Path,
    remote: &Remote<'_>,
    revision: &str,
    log: &mut dyn FnMut(&str),
) -> Result<Oid, CheckoutError> {
    if let Some(id) = find_revision(repo, revision) {
        return Ok(id);
    }
    let full_id =
        matches!(revision.len(), 40 | 64) && revision.bytes().all(|byte| byte.is_ascii_hexdigit());
    if full_id {
        log(&format!("{revision} is on no branch; fetching it by id"));
        // A refusal is reported as the unknown revision below; git's message is in the log.
        let _ = run_git(
            workdir,
            &["fetch", "--no-tags", "--", remote.given, revision],
            remote,
            log,
        );
        if let Some(id) = find_revision(repo, revision) {
            return Ok(id);
        }
    }
    Err(CheckoutError::UnknownRevision {
        revision: revision.to_string(),
        repo: remote.shown.clone(),
    })
}

/// A commit id (full or abbreviated), a branch or a tag of the remote. Not general revision
/// syntax: `HEAD` or `@{1}` would name whatever the previous build left in this clone.
fn find_revision(repo: &Repository, revision: &str) -> Option<Oid> {
    let hex = revision.len() >= 4 && revision.bytes().all(|byte| byte.is_ascii_hexdigit());
    if hex
        && let Ok(commit) = repo
            .find_object_by_prefix(revision, Some(ObjectType::Any))
            .and_then(|object| object.peel_to_commit())
    {
        return Some(commit.id());
    }
    [
        format!("refs/remotes/origin/{revision}"),
        format!("refs/tags/{revision}"),
    ]
    .iter()
    .find_map(|name| {
        repo.find_reference(name)
            .and_then(|reference| reference.peel_to_commit())
            .ok()
            .map(|commit| commit.id())
    })
}

/// Makes the work tree exactly `target`: detached HEAD, forced checkout, hard reset, then
/// everything untracked or ignored removed.
fn reset_tree(
    repo: &Repository,
    workdir: &Path,
    target: Oid,
    log: &mut dyn FnMut(&str),
) -> Result<(), CheckoutError> {
    let commit = repo.find_commit(target)?;
    // Detached first: a reset with HEAD on a branch would move that branch.
    repo.set_head_detached(target)?;
    let mut options = CheckoutBuilder::new();
    options.force().remove_untracked(true).remove_ignored(true);
    repo.reset(commit.as_object(), ResetType::Hard, Some(&mut options))?;
    run_git(workdir, &["clean", "-ffdxq"], &Remote::new(""), log)
        .map_err(|detail| CheckoutError::Clean { detail })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    use super::*;

    use super::replay_tests::git;

    fn write(path: &Path, content: impl AsRef<[u8]>) {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(path, content).expect("write");
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).expect("read")
    }

    /// Bytes git sees as binary and deltas well.
    fn binary(seed: u32, len: usize) -> Vec<u8> {
        let mut state = seed;
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (state >> 16) as u8
            })
            .chain([0])
            .collect()
    }

    struct Fixture {
        tmp: tempfile::TempDir,
        upstream: PathBuf,
    }

    impl Fixture {
        fn new() -> Fixture {
            let tmp = tempfile::tempdir().expect("temp dir");
            let upstream = tmp.path().join("upstream");
            std::fs::create_dir(&upstream).expect("mkdir");
            git(&upstream, &["init", "-q"]);
            write(&upstream.join("a.txt"), "one\ntwo\nthree\n");
            write(
                &upstream.join("old.txt"),
                "a file\nthat is renamed\nwith enough lines\nto be seen as a rename\n",
            );
            write(&upstream.join("doomed.txt"), "bye\n");
            write(&upstream.join("run.sh"), "#!/bin/sh\necho hi\n");
            write(&upstream.join("blob.bin"), binary(7, 8192));
            write(&upstream.join("src/lib.c"), "int lib;\n");
            write(&upstream.join(".gitignore"), "*.o\n/build/\n");
            std::os::unix::fs::symlink("a.txt", upstream.join("current")).expect("symlink");
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
                submodules: false,
            }
        }

        fn work(&self) -> PathBuf {
            self.tmp.path().join("work")
        }

        fn head(&self) -> String {
            git(&self.upstream, &["rev-parse", "HEAD"])
                .trim()
                .to_string()
        }

        fn commit(&self, file: &str, content: &str) -> String {
            write(&self.upstream.join(file), content);
            git(&self.upstream, &["add", "-A"]);
            git(&self.upstream, &["commit", "-q", "-m", file]);
            self.head()
        }

        /// A fresh clone of upstream named `name`, for making patches.
        fn clone(&self, name: &str) -> PathBuf {
            let upstream = self.upstream.to_str().expect("utf-8 temp path");
            git(self.tmp.path(), &["clone", "-q", upstream, name]);
            self.tmp.path().join(name)
        }

        /// The changes of every kind a git patch can carry, made in `clone`.
        fn edit_everything(clone: &Path) {
            write(&clone.join("a.txt"), "one\nTWO\nthree\n");
            write(&clone.join("src/new.c"), "int fresh;\n");
            std::fs::remove_file(clone.join("doomed.txt")).expect("rm");
            let renamed = read(&clone.join("old.txt")).replace("a file", "a moved file");
            std::fs::remove_file(clone.join("old.txt")).expect("rm");
            write(&clone.join("moved/renamed.txt"), renamed);
            std::fs::set_permissions(clone.join("run.sh"), PermissionsExt::from_mode(0o755))
                .expect("chmod");
            let mut blob = binary(7, 8192);
            blob[4000..4010].copy_from_slice(b"0123456789");
            write(&clone.join("blob.bin"), blob);
            write(&clone.join("logo.png"), binary(99, 300));
            write(&clone.join("dir with space/file name.txt"), "spaced\n");
            std::fs::remove_file(clone.join("current")).expect("rm");
            std::os::unix::fs::symlink("run.sh", clone.join("current")).expect("symlink");
        }

        fn git_patch(clone: &Path, extra: &[&str]) -> Vec<u8> {
            git(clone, &["add", "-A"]);
            let mut args = vec!["diff", "--cached", "--binary", "-M"];
            args.extend(extra);
            git(clone, &args).into_bytes()
        }
    }

    fn run(workdir: &Path, spec: &CheckoutSpec) -> (Result<CheckedOut, CheckoutError>, String) {
        let mut lines = String::new();
        let result = checkout(workdir, spec, &PatchRunner::InProcess, &mut |line| {
            lines.push_str(line);
            lines.push('\n');
        });
        (result, lines)
    }

    fn run_ok(workdir: &Path, spec: &CheckoutSpec) -> (CheckedOut, String) {
        let (result, log) = run(workdir, spec);
        match result {
            Ok(done) => (done, log),
            Err(err) => panic!("checkout failed: {err}\nlog:\n{log}"),
        }
    }

    /// Every file, symlink and directory under `dir` except `.git`: contents, link targets,
    /// executable bits.
    fn snapshot(dir: &Path) -> BTreeMap<String, String> {
        fn walk(root: &Path, dir: &Path, into: &mut BTreeMap<String, String>) {
            for entry in std::fs::read_dir(dir).expect("read dir") {
                let path = entry.expect("entry").path();
                let name = path
                    .strip_prefix(root)
                    .expect("inside")
                    .display()
                    .to_string();
                if name == ".git" {
                    continue;
                }
                let metadata = std::fs::symlink_metadata(&path).expect("metadata");
                if metadata.file_type().is_symlink() {
                    let target = std::fs::read_link(&path).expect("link");
                    into.insert(name, format!("link -> {}", target.display()));
                } else if metadata.is_dir() {
                    into.insert(format!("{name}/"), String::new());
                    walk(root, &path, into);
                } else {
                    let executable = metadata.permissions().mode() & 0o111 != 0;
                    let content = std::fs::read(&path).expect("read");
                    into.insert(
                        name,
                        format!("x={executable} {}", String::from_utf8_lossy(&content)),
                    );
                }
            }
        }
        let mut files = BTreeMap::new();
        walk(dir, dir, &mut files);
        files
    }

    fn assert_clean(work: &Path) {
        assert_eq!(
            git(
                work,
                &[
                    "status",
                    "--porcelain",
                    "--ignored",
                    "--untracked-files=all"
                ]
            ),
            ""
        );
    }

    #[test]
    fn clones_from_a_local_path() {
        let fixture = Fixture::new();
        let (done, log) = run_ok(&fixture.work(), &fixture.spec());
        assert_eq!(done.revision, fixture.head());
        assert!(done.patched_files.is_empty());
        assert_eq!(snapshot(&fixture.work()), snapshot(&fixture.upstream));
        assert!(log.contains("cloning"), "{log}");
        let checked_out = format!("checked out {} (main): base", &done.revision[..12]);
        assert!(log.contains(&checked_out), "{log}");
        assert_clean(&fixture.work());
    }

    #[test]
    fn clones_from_a_file_url() {
        let fixture = Fixture::new();
        let mut spec = fixture.spec();
        spec.repo = format!("file://{}", fixture.upstream.display());
        let (done, _) = run_ok(&fixture.work(), &spec);
        assert_eq!(done.revision, fixture.head());
        assert_eq!(snapshot(&fixture.work()), snapshot(&fixture.upstream));
    }

    #[test]
    fn a_second_checkout_fetches_new_commits_into_the_same_clone() {
        let fixture = Fixture::new();
        run_ok(&fixture.work(), &fixture.spec());
        write(&fixture.work().join(".git/kept-by-a-fetch"), "");
        let second = fixture.commit("a.txt", "changed upstream\n");
        let (done, log) = run_ok(&fixture.work(), &fixture.spec());
        assert_eq!(done.revision, second);
        assert_eq!(read(&fixture.work().join("a.txt")), "changed upstream\n");
        assert!(fixture.work().join(".git/kept-by-a-fetch").exists());
        assert!(
            log.contains("fetching") && !log.contains("cloning"),
            "{log}"
        );
    }

    #[test]
    fn an_exact_revision_or_the_tip_of_a_branch() {
        let fixture = Fixture::new();
        let first = fixture.head();
        let second = fixture.commit("a.txt", "second\n");
        let mut spec = fixture.spec();
        spec.revision = Some(first.clone());
        let (done, log) = run_ok(&fixture.work(), &spec);
        assert_eq!(done.revision, first);
        assert_eq!(read(&fixture.work().join("a.txt")), "one\ntwo\nthree\n");
        assert!(log.contains(&format!("(revision {first})")), "{log}");
        spec.revision = Some(first[..10].to_string());
        assert_eq!(run_ok(&fixture.work(), &spec).0.revision, first);
        spec.revision = Some("  ".into());
        assert_eq!(run_ok(&fixture.work(), &spec).0.revision, second);
        spec.revision = None;
        assert_eq!(run_ok(&fixture.work(), &spec).0.revision, second);
        assert_eq!(read(&fixture.work().join("a.txt")), "second\n");
        git(
            &fixture.upstream,
            &["checkout", "-q", "-b", "feature", &first],
        );
        let feature = fixture.commit("f.txt", "feature\n");
        git(&fixture.upstream, &["tag", "v1", &first]);
        spec.branch = "feature".into();
        assert_eq!(run_ok(&fixture.work(), &spec).0.revision, feature);
        spec.revision = Some("v1".into());
        assert_eq!(run_ok(&fixture.work(), &spec).0.revision, first);
    }

    #[test]
    fn a_commit_on_no_branch_is_fetched_by_id() {
        let fixture = Fixture::new();
        run_ok(&fixture.work(), &fixture.spec());
        git(&fixture.upstream, &["checkout", "-q", "-b", "gone"]);
        let orphan = fixture.commit("a.txt", "on a deleted branch\n");
        git(&fixture.upstream, &["checkout", "-q", "main"]);
        git(&fixture.upstream, &["branch", "-q", "-D", "gone"]);
        let mut spec = fixture.spec();
        spec.revision = Some(orphan.clone());
        let (done, log) = run_ok(&fixture.work(), &spec);
        assert_eq!(done.revision, orphan);
        assert!(log.contains("fetching it by id"), "{log}");
    }

    #[test]
    fn an_unknown_revision_or_branch_is_named() {
        let fixture = Fixture::new();
        let missing = "0123456789abcdef0123456789abcdef01234567";
        let mut spec = fixture.spec();
        for revision in [missing, "no-such-tag", "HEAD"] {
            spec.revision = Some(revision.into());
            let (result, log) = run(&fixture.work(), &spec);
            match result {
                Err(err @ CheckoutError::UnknownRevision { .. }) => {
                    assert!(err.to_string().contains(revision), "{err}");
                    assert!(log.contains(&err.to_string()), "{log}");
                }
                other => panic!("{revision}: {other:?}"),
            }
        }
        spec.revision = None;
        spec.branch = "no-such-branch".into();
        let (result, _) = run(&fixture.work(), &spec);
        assert!(
            matches!(&result, Err(CheckoutError::UnknownBranch { branch, .. }) if branch == "no-such-branch"),
            "{result:?}"
        );
    }

    #[test]
    fn leftovers_of_earlier_builds_are_removed() {
        let fixture = Fixture::new();
        let work = fixture.work();
        run_ok(&work, &fixture.spec());
        write(&work.join("untracked.txt"), "junk");
        write(&work.join("junk/dir/file"), "junk");
        write(&work.join("main.o"), "ignored");
        write(&work.join("build/out/x"), "ignored");
        write(&work.join("a.txt"), "modified by a build");
        std::fs::remove_file(work.join("doomed.txt")).expect("rm");
        std::fs::remove_dir_all(work.join("src")).expect("rm");
        write(&work.join("src"), "a file where a directory was");
        std::fs::set_permissions(work.join("run.sh"), PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let nested = work.join("nested");
        std::fs::create_dir(&nested).expect("mkdir");
        git(&nested, &["init", "-q"]);
        git(&nested, &["commit", "-q", "--allow-empty", "-m", "nested"]);
        run_ok(&work, &fixture.spec());
        assert_clean(&work);
        assert_eq!(snapshot(&work), snapshot(&fixture.upstream));
    }

    #[test]
    fn a_present_commit_is_not_fetched_and_a_reused_tree_equals_a_fresh_one() {
        let fixture = Fixture::new();
        let work = fixture.work();
        let mut spec = fixture.spec();
        spec.revision = Some(fixture.head());
        run_ok(&work, &spec);
        let fresh = snapshot(&work);
        // The remote is gone: only a checkout that does not fetch can succeed.
        std::fs::rename(&fixture.upstream, fixture.tmp.path().join("gone")).expect("mv");
        let (_, log) = run_ok(&work, &spec);
        assert!(log.contains("not needed, the commit is here"), "{log}");
        assert!(log.contains("already clean at that commit"), "{log}");
        let leftovers: [fn(&Path); 7] = [
            |work| write(&work.join("untracked.txt"), "junk"),
            |work| write(&work.join("main.o"), "ignored"),
            |work| std::fs::create_dir_all(work.join("empty/dir")).expect("mkdir"),
            |work| write(&work.join("a.txt"), "modified by a build"),
            |work| {
                std::fs::set_permissions(work.join("run.sh"), PermissionsExt::from_mode(0o755))
                    .expect("chmod")
            },
            |work| {
                write(&work.join("staged.txt"), "staged");
                git(work, &["add", "staged.txt"]);
            },
            |work| {
                git(work, &["checkout", "-q", "-b", "elsewhere"]);
            },
        ];
        for (index, leftover) in leftovers.iter().enumerate() {
            leftover(&work);
            let (_, log) = run_ok(&work, &spec);
            assert!(!log.contains("already clean"), "leftover {index}: {log}");
            assert_clean(&work);
            assert_eq!(snapshot(&work), fresh, "leftover {index}");
            assert_eq!(
                git(&work, &["rev-parse", "HEAD"]).trim(),
                spec.revision.as_deref().unwrap_or_default()
            );
        }
    }

    #[test]
    fn a_git_patch_with_every_kind_of_change() {
        let fixture = Fixture::new();
        let clone = fixture.clone("edited");
        Fixture::edit_everything(&clone);
        let patch = Fixture::git_patch(&clone, &[]);
        let text = String::from_utf8_lossy(&patch);
        for kind in [
            "rename from old.txt",
            "new mode 100755",
            "deleted file mode",
            "new file mode",
            "GIT binary patch\ndelta",
            "GIT binary patch\nliteral",
        ] {
            assert!(text.contains(kind), "the patch lacks {kind:?}:\n{text}");
        }
        let mut spec = fixture.spec();
        spec.patch = Some(patch);
        let (done, log) = run_ok(&fixture.work(), &spec);
        assert_eq!(snapshot(&fixture.work()), snapshot(&clone));
        for file in [
            "a.txt",
            "doomed.txt",
            "old.txt",
            "moved/renamed.txt",
            "run.sh",
            "current",
            "dir with space/file name.txt",
        ] {
            assert!(done.patched_files.contains(&file.to_string()), "{file}");
        }
        assert_eq!(done.patched_files.len(), 10, "{:?}", done.patched_files);
        assert!(
            log.contains("applied patch: 10 files (git diff, -p1)"),
            "{log}"
        );
        // Like `git apply`: the build sees the patch as changes to the checked-out commit.
        assert_eq!(git(&fixture.work(), &["diff", "--cached", "--stat"]), "");
        assert_ne!(git(&fixture.work(), &["diff", "--stat"]), "");
    }

    #[test]
    fn a_git_patch_without_prefixes_applies_with_p0_and_a_format_patch_with_p1() {
        let fixture = Fixture::new();
        let clone = fixture.clone("edited");
        Fixture::edit_everything(&clone);
        let mut spec = fixture.spec();
        spec.patch = Some(Fixture::git_patch(&clone, &["--no-prefix"]));
        spec.patch_level = 0;
        run_ok(&fixture.work(), &spec);
        assert_eq!(snapshot(&fixture.work()), snapshot(&clone));
        git(&clone, &["commit", "-q", "-m", "everything"]);
        let mail = git(
            &clone,
            &["format-patch", "--binary", "-M", "--stdout", "HEAD~1"],
        );
        spec.patch = Some(mail.into_bytes());
        spec.patch_level = 1;
        let work = fixture.tmp.path().join("work2");
        run_ok(&work, &spec);
        assert_eq!(snapshot(&work), snapshot(&clone));
    }

    /// Two exports of the tree, `old/` and `new/`, for `diff -ruN`.
    fn exports(fixture: &Fixture) -> (PathBuf, PathBuf) {
        let old = fixture.clone("old");
        let new = fixture.clone("new");
        std::fs::remove_dir_all(old.join(".git")).expect("rm");
        std::fs::remove_dir_all(new.join(".git")).expect("rm");
        (old, new)
    }

    fn diff(dir: &Path, args: &[&str]) -> Vec<u8> {
        let output = Command::new("diff")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("diff runs");
        assert_eq!(
            output.status.code(),
            Some(1),
            "diff {args:?} found no change"
        );
        output.stdout
    }

    #[test]
    fn a_plain_recursive_diff_applies_with_p1() {
        let fixture = Fixture::new();
        let (_, new) = exports(&fixture);
        write(&new.join("a.txt"), "zero\none\ntwo\nthree and a half\n");
        write(&new.join("src/deep/new.c"), "int deep;\n");
        std::fs::remove_file(new.join("doomed.txt")).expect("rm");
        std::fs::remove_file(new.join("src/lib.c")).expect("rm");
        let patch = diff(
            fixture.tmp.path(),
            &["-ruN", "--no-dereference", "old", "new"],
        );
        let mut spec = fixture.spec();
        spec.patch = Some(patch);
        let (done, log) = run_ok(&fixture.work(), &spec);
        assert_eq!(snapshot(&fixture.work()), snapshot(&new));
        assert_eq!(done.patched_files.len(), 4, "{:?}", done.patched_files);
        assert!(log.contains("(plain diff, -p1)"), "{log}");
    }

    #[test]
    fn a_plain_diff_applies_with_p0() {
        let fixture = Fixture::new();
        let (_, new) = exports(&fixture);
        write(&new.join("a.txt"), "one\n2\nthree\n");
        write(&new.join("src/new.c"), "int x;\n");
        let label = |name| ["--label", name, "--label", name];
        let mut patch = diff(
            fixture.tmp.path(),
            &[&["-u"][..], &label("a.txt"), &["old/a.txt", "new/a.txt"]].concat(),
        );
        patch.extend(diff(
            fixture.tmp.path(),
            &[
                &["-uN"][..],
                &label("src/new.c"),
                &["old/src/new.c", "new/src/new.c"],
            ]
            .concat(),
        ));
        let mut spec = fixture.spec();
        spec.patch = Some(patch);
        spec.patch_level = 0;
        let (done, _) = run_ok(&fixture.work(), &spec);
        assert_eq!(done.patched_files, ["a.txt", "src/new.c"]);
        assert_eq!(read(&fixture.work().join("a.txt")), "one\n2\nthree\n");
        assert_eq!(read(&fixture.work().join("src/new.c")), "int x;\n");
    }

    /// Runs a checkout with `patch` at `level`, expects it refused with nothing written inside
    /// or `outside` the tree, and returns the path it names.
    fn assert_refused(fixture: &Fixture, patch: &str, level: u32, outside: &Path) -> String {
        let mut spec = fixture.spec();
        spec.patch = Some(patch.as_bytes().to_vec());
        spec.patch_level = level;
        let before = snapshot(outside);
        let (result, log) = run(&fixture.work(), &spec);
        let path = match result {
            Err(CheckoutError::UnsafePatchPath { path, .. }) => path,
            other => panic!("{patch}: {other:?}\n{log}"),
        };
        assert!(log.contains("refusing the patch"), "{log}");
        assert_clean(&fixture.work());
        assert_eq!(snapshot(outside), before, "{patch}");
        assert!(!fixture.tmp.path().join("escaped.txt").exists());
        path
    }

    /// A first file that would apply, so a refusal shows that nothing at all was written.
    const GOOD_FIRST: &str = "--- a/a.txt\n+++ b/a.txt\n@@ -1,3 +1,3 @@\n one\n-two\n+2\n three\n";

    #[test]
    fn dot_dot_paths_are_refused_before_anything_is_written() {
        let fixture = Fixture::new();
        let outside = fixture.tmp.path().join("outside");
        write(&outside.join("kept.txt"), "kept\n");
        let plain =
            format!("{GOOD_FIRST}--- a/../escaped.txt\n+++ b/../escaped.txt\n@@ -0,0 +1 @@\n+x\n");
        assert_eq!(
            assert_refused(&fixture, &plain, 1, &outside),
            "../escaped.txt"
        );
        let deep = format!(
            "{GOOD_FIRST}--- a/src/../../outside/kept.txt\n+++ b/src/../../outside/kept.txt\n@@ -1 +1 @@\n-kept\n+overwritten\n"
        );
        assert_refused(&fixture, &deep, 1, &outside);
        let git = "diff --git a/a.txt b/a.txt\n--- a/a.txt\n+++ b/a.txt\n@@ -1,3 +1,3 @@\n one\n-two\n+2\n three\ndiff --git a/../escaped.txt b/../escaped.txt\nnew file mode 100644\n--- /dev/null\n+++ b/../escaped.txt\n@@ -0,0 +1 @@\n+x\n";
        assert_eq!(assert_refused(&fixture, git, 1, &outside), "../escaped.txt");
        let rename = "diff --git a/a.txt b/../escaped.txt\nsimilarity index 100%\nrename from a.txt\nrename to ../escaped.txt\n";
        assert_refused(&fixture, rename, 1, &outside);
        for dot_git in [
            "--- a/.git/config\n+++ b/.git/config\n@@ -0,0 +1 @@\n+x\n",
            "diff --git a/.git/hooks/pre-commit b/.git/hooks/pre-commit\nnew file mode 100755\n--- /dev/null\n+++ b/.git/hooks/pre-commit\n@@ -0,0 +1 @@\n+x\n",
        ] {
            assert_refused(&fixture, dot_git, 1, &outside);
        }
    }

    #[test]
    fn absolute_paths_are_refused() {
        let fixture = Fixture::new();
        let outside = fixture.tmp.path().join("outside");
        write(&outside.join("kept.txt"), "kept\n");
        let target = outside.join("abs.txt").display().to_string();
        let plain = format!("{GOOD_FIRST}--- {target}\n+++ {target}\n@@ -0,0 +1 @@\n+x\n");
        assert_eq!(assert_refused(&fixture, &plain, 0, &outside), target);
        let git = format!(
            "diff --git {target} {target}\nnew file mode 100644\n--- /dev/null\n+++ {target}\n@@ -0,0 +1 @@\n+x\n"
        );
        assert_refused(&fixture, &git, 0, &outside);
    }

    #[test]
    fn writing_through_a_symlink_is_refused() {
        let fixture = Fixture::new();
        let outside = fixture.tmp.path().join("outside");
        write(&outside.join("secret.txt"), "secret\n");
        std::os::unix::fs::symlink(&outside, fixture.upstream.join("link")).expect("symlink");
        std::os::unix::fs::symlink(
            outside.join("secret.txt"),
            fixture.upstream.join("file-link"),
        )
        .expect("symlink");
        fixture.commit("src/lib.c", "int lib2;\n");
        let through_dir =
            format!("{GOOD_FIRST}--- a/link/evil.txt\n+++ b/link/evil.txt\n@@ -0,0 +1 @@\n+x\n");
        let named = assert_refused(&fixture, &through_dir, 1, &outside);
        assert_eq!(named, "link/evil.txt");
        let git = "diff --git a/link/secret.txt b/link/secret.txt\n--- a/link/secret.txt\n+++ b/link/secret.txt\n@@ -1 +1 @@\n-secret\n+overwritten\n";
        assert_refused(&fixture, git, 1, &outside);
        let file_link = "--- a/file-link\n+++ b/file-link\n@@ -1 +1 @@\n-secret\n+overwritten\n";
        assert_refused(&fixture, file_link, 1, &outside);
        let new_link = format!(
            "diff --git a/new-link b/new-link\nnew file mode 120000\n--- /dev/null\n+++ b/new-link\n@@ -0,0 +1 @@\n+{}\n\\ No newline at end of file\ndiff --git a/new-link/evil.txt b/new-link/evil.txt\nnew file mode 100644\n--- /dev/null\n+++ b/new-link/evil.txt\n@@ -0,0 +1 @@\n+x\n",
            outside.display()
        );
        assert_refused(&fixture, &new_link, 1, &outside);
    }

    #[test]
    fn a_patch_that_does_not_apply_shows_the_hunk_and_changes_nothing() {
        let fixture = Fixture::new();
        let clone = fixture.clone("edited");
        write(&clone.join("fresh.txt"), "new\n");
        write(&clone.join("src/lib.c"), "int lib;\nint more;\n");
        write(&clone.join("a.txt"), "one\nTWO\nthree\n");
        let patch = String::from_utf8(Fixture::git_patch(&clone, &[]))
            .expect("utf-8")
            .replace(" one\n-two", " one\n-zwei");
        let mut spec = fixture.spec();
        spec.patch = Some(patch.into_bytes());
        let (result, log) = run(&fixture.work(), &spec);
        match result {
            Err(CheckoutError::PatchDoesNotApply { detail }) => {
                assert!(detail.contains("a.txt: hunk 1 of 1"), "{detail}");
                let hunk = "@@ -1,3 +1,3 @@\n one\n-zwei\n+TWO\n three";
                assert!(detail.contains(hunk), "{detail}");
                assert!(!detail.contains("lib.c"), "{detail}");
            }
            other => panic!("{other:?}\n{log}"),
        }
        assert!(log.contains("-zwei"), "{log}");
        assert_clean(&fixture.work());
        let plain = "--- a/src/lib.c\n+++ b/src/lib.c\n@@ -1 +1,2 @@\n int lib;\n+int more;\n--- a/a.txt\n+++ b/a.txt\n@@ -1,3 +1,3 @@\n one\n-nope\n+2\n three\n";
        spec.patch = Some(plain.as_bytes().to_vec());
        let (result, log) = run(&fixture.work(), &spec);
        match result {
            Err(CheckoutError::PatchDoesNotApply { detail }) => {
                assert!(detail.contains("a.txt: hunk 1 of 1"), "{detail}");
                let hunk = "@@ -1,3 +1,3 @@\n one\n-nope\n+2\n three";
                assert!(detail.contains(hunk), "{detail}");
            }
            other => panic!("{other:?}\n{log}"),
        }
        assert!(log.contains("-nope"), "{log}");
        assert_clean(&fixture.work());
    }

    #[test]
    fn garbage_is_a_bad_patch() {
        let fixture = Fixture::new();
        let mut spec = fixture.spec();
        for garbage in [
            "this is not a patch at all\n",
            "diff --git a/x\nnonsense\n",
            "diff --git a/blob.bin b/blob.bin\nindex 1234567..89abcde 100644\nBinary files a/blob.bin and b/blob.bin differ\n",
            "--- a.txt\n+++ a.txt\n@@ -1,3 +1,3 @@\n one\n",
        ] {
            spec.patch = Some(garbage.as_bytes().to_vec());
            let (result, log) = run(&fixture.work(), &spec);
            assert!(
                matches!(result, Err(CheckoutError::BadPatch(_))),
                "{garbage}: {result:?}\n{log}"
            );
            assert_clean(&fixture.work());
        }
    }

    #[test]
    fn a_password_in_the_url_stays_out_of_the_log() {
        let remote = Remote::new("https://ci:s3cret@git.example.org/project.git");
        assert_eq!(remote.shown, "https://ci:***@git.example.org/project.git");
        assert_eq!(
            remote.redact("fatal: unable to access 'https://ci:s3cret@git.example.org/'"),
            "fatal: unable to access 'https://ci:***@git.example.org/'"
        );
        assert_eq!(Remote::new("git@host:path.git").shown, "git@host:path.git");
        let fixture = Fixture::new();
        let mut spec = fixture.spec();
        spec.repo = "--upload-pack=touch /tmp/pwned".into();
        let (result, _) = run(&fixture.work(), &spec);
        assert!(
            matches!(result, Err(CheckoutError::Fetch { .. })),
            "{result:?}"
        );
    }
}
