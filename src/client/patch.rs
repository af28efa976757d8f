//! What a try sends: the base revision and the patch of the working tree against it, computed
//! with git (through git2) in the user's checkout.
//!
//! The base is `--baserev`, else the merge-base of HEAD with its upstream branch, else with
//! `origin/HEAD`, else HEAD itself. The patch covers everything between the base and the
//! working tree: unpushed commits, staged and unstaged changes, new files that are tracked or
//! staged, deletions, renames, mode changes, and binary files in git's binary patch format.
//! Untracked files only when asked for.

use std::path::{Path, PathBuf};

use git2::{BranchType, DiffFindOptions, DiffFormat, DiffOptions, Oid, Repository};

#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error(
        "not inside a git working tree ({0}); run buildbot try from your checkout, or use --diff FILE"
    )]
    NotARepository(String),
    #[error("the repository has no commits yet; commit something first")]
    NoCommits,
    #[error("--baserev {rev}: no such revision in this repository")]
    UnknownBaserev { rev: String },
    #[error("git: {0}")]
    Git(#[from] git2::Error),
}

/// The base and the patch against it.
#[derive(Debug, Clone)]
pub struct TryPatch {
    pub baserev: String,
    /// How the base was found, for the dry-run summary ("merge-base with origin/main").
    pub base_from: String,
    /// The local branch name (None on a detached HEAD).
    pub branch: Option<String>,
    /// The upstream's URL when there is one; sent as the job's repository.
    pub repository: String,
    pub patch: Vec<u8>,
    pub files_changed: usize,
    pub insertions: usize,
    pub deletions: usize,
    /// Each file the patch touches, in patch order (the dry run's diffstat).
    pub files: Vec<FileStat>,
    /// `Name <email>` from git config, the default for the job's `who`.
    pub author: Option<String>,
    pub workdir: PathBuf,
}

/// One file of the patch: its lines added and removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStat {
    pub path: String,
    pub insertions: usize,
    pub deletions: usize,
    pub binary: bool,
}

/// ` src/main.c | 3 ++-` lines and a total, as `git diff --stat` prints them.
pub fn diffstat(files: &[FileStat]) -> String {
    let width = files.iter().map(|file| file.path.len()).max().unwrap_or(0);
    let mut out = String::new();
    for file in files {
        let changes = if file.binary {
            "Bin".to_string()
        } else if file.insertions + file.deletions == 0 {
            "0".to_string()
        } else {
            format!(
                "{} {}{}",
                file.insertions + file.deletions,
                "+".repeat(file.insertions.min(40)),
                "-".repeat(file.deletions.min(40))
            )
        };
        out.push_str(&format!(" {:width$} | {changes}\n", file.path));
    }
    out.push_str(&format!(
        " {}\n",
        crate::status::text::diffstat_summary(
            files.len(),
            files.iter().map(|file| file.insertions).sum::<usize>(),
            files.iter().map(|file| file.deletions).sum::<usize>()
        )
    ));
    out
}

/// The files of a ready patch (`try --diff`), as far as git can read it; `None` if it cannot.
pub fn stats_of(patch: &[u8]) -> Option<Vec<FileStat>> {
    let diff = git2::Diff::from_buffer(patch).ok()?;
    let mut files = Vec::new();
    for index in 0..diff.deltas().len() {
        let delta = diff.get_delta(index)?;
        let path = delta_name(&delta);
        let (insertions, deletions) = match git2::Patch::from_diff(&diff, index) {
            Ok(Some(patch)) => patch
                .line_stats()
                .map(|(_, added, removed)| (added, removed))
                .unwrap_or_default(),
            _ => (0, 0),
        };
        files.push(FileStat {
            path,
            insertions,
            deletions,
            binary: delta.flags().is_binary(),
        });
    }
    Some(files)
}

/// `path`, or `old => new` for a rename, as `git diff --stat` names it.
fn delta_name(delta: &git2::DiffDelta<'_>) -> String {
    let name = |file: git2::DiffFile<'_>| {
        file.path()
            .map(|path| path.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    match delta.status() {
        git2::Delta::Renamed => format!("{} => {}", name(delta.old_file()), name(delta.new_file())),
        git2::Delta::Deleted => name(delta.old_file()),
        _ => name(delta.new_file()),
    }
}

/// `.buildbot`, or anything under a `.buildbot` directory, at any depth.
fn is_dot_buildbot(path: Option<&Path>) -> bool {
    path.is_some_and(|path| {
        path.components()
            .any(|part| part.as_os_str() == crate::client::dotfile::FILE_NAME)
    })
}

pub struct PatchOptions<'a> {
    pub baserev: Option<&'a str>,
    pub include_untracked: bool,
}

/// Computes the try patch for the repository containing `start`.
pub fn compute(start: &Path, options: &PatchOptions<'_>) -> Result<TryPatch, PatchError> {
    let repo = Repository::discover(start)
        .map_err(|_| PatchError::NotARepository(start.display().to_string()))?;
    let workdir = repo
        .workdir()
        .ok_or_else(|| {
            PatchError::NotARepository(format!("{} is a bare repository", start.display()))
        })?
        .to_path_buf();
    let head = repo.head().map_err(|_| PatchError::NoCommits)?;
    let head_commit = head.peel_to_commit().map_err(|_| PatchError::NoCommits)?;
    let branch = if head.is_branch() {
        head.shorthand().ok().map(str::to_string)
    } else {
        None
    };

    let (base, base_from, upstream_remote) =
        find_base(&repo, options.baserev, head_commit.id(), branch.as_deref())?;
    let base_tree = repo.find_commit(base)?.tree()?;

    let mut diff_options = DiffOptions::new();
    diff_options
        .show_binary(true)
        .include_typechange(true)
        .context_lines(3);
    if options.include_untracked {
        diff_options
            .include_untracked(true)
            .recurse_untracked_dirs(true)
            .show_untracked_content(true);
    }
    let mut diff =
        repo.diff_tree_to_workdir_with_index(Some(&base_tree), Some(&mut diff_options))?;
    let mut find = DiffFindOptions::new();
    find.renames(true)
        .copies(false)
        .for_untracked(options.include_untracked);
    diff.find_similar(Some(&mut find))?;
    let mut patch = Vec::new();
    let mut files: Vec<FileStat> = Vec::new();
    diff.print(DiffFormat::Patch, |delta, _hunk, line| {
        // `.buildbot` (the file, or classic Buildbot's directory) holds the user's own
        // connection settings: an untracked one is never part of what is tried.
        if delta.status() == git2::Delta::Untracked && is_dot_buildbot(delta.new_file().path()) {
            return true;
        }
        let path = delta_name(&delta);
        if files.last().is_none_or(|last| last.path != path) {
            files.push(FileStat {
                path,
                insertions: 0,
                deletions: 0,
                binary: delta.flags().is_binary(),
            });
        }
        if let Some(file) = files.last_mut() {
            match line.origin() {
                '+' => file.insertions += 1,
                '-' => file.deletions += 1,
                'B' => file.binary = true,
                _ => {}
            }
        }
        // Content and context lines come without their marker; headers carry their own text.
        if matches!(line.origin(), '+' | '-' | ' ') {
            patch.push(line.origin() as u8);
        }
        patch.extend_from_slice(line.content());
        true
    })?;

    let repository = upstream_remote
        .or_else(|| Some("origin".to_string()))
        .and_then(|name| repo.find_remote(&name).ok())
        .and_then(|remote| remote.url().ok().map(str::to_string))
        .unwrap_or_default();
    let author =
        repo.signature()
            .ok()
            .and_then(|signature| match (signature.name(), signature.email()) {
                (Ok(name), Ok(email)) => Some(format!("{name} <{email}>")),
                (Ok(name), Err(_)) => Some(name.to_string()),
                _ => None,
            });
    Ok(TryPatch {
        baserev: base.to_string(),
        base_from,
        branch,
        repository,
        patch,
        files_changed: files.len(),
        insertions: files.iter().map(|file| file.insertions).sum(),
        deletions: files.iter().map(|file| file.deletions).sum(),
        files,
        author,
        workdir,
    })
}

/// Returns the base commit, a description of where it came from, and the upstream's remote.
fn find_base(
    repo: &Repository,
    baserev: Option<&str>,
    head: Oid,
    branch: Option<&str>,
) -> Result<(Oid, String, Option<String>), PatchError> {
    if let Some(rev) = baserev {
        let object = repo
            .revparse_single(rev)
            .map_err(|_| PatchError::UnknownBaserev {
                rev: rev.to_string(),
            })?;
        let commit = object
            .peel_to_commit()
            .map_err(|_| PatchError::UnknownBaserev {
                rev: rev.to_string(),
            })?;
        return Ok((commit.id(), format!("--baserev {rev}"), None));
    }
    if let Some(branch_name) = branch
        && let Ok(local) = repo.find_branch(branch_name, BranchType::Local)
        && let Ok(upstream) = local.upstream()
        && let Some(upstream_oid) = upstream.get().target()
    {
        let upstream_name = upstream
            .name()
            .ok()
            .flatten()
            .unwrap_or("upstream")
            .to_string();
        let remote = upstream_name.split('/').next().map(str::to_string);
        let base = repo.merge_base(head, upstream_oid)?;
        return Ok((base, format!("merge-base with {upstream_name}"), remote));
    }
    if let Ok(origin_head) = repo.revparse_single("refs/remotes/origin/HEAD")
        && let Ok(commit) = origin_head.peel_to_commit()
    {
        let base = repo.merge_base(head, commit.id())?;
        return Ok((
            base,
            "merge-base with origin/HEAD".to_string(),
            Some("origin".into()),
        ));
    }
    Ok((head, "HEAD (no upstream branch)".to_string(), None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn git(dir: &Path, args: &[&str]) {
        let status = Command::new("git")
            .args([
                "-c",
                "user.name=Tester",
                "-c",
                "user.email=t@example.org",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(dir)
            .status()
            .expect("git runs");
        assert!(status.success(), "git {args:?}");
    }

    fn options() -> PatchOptions<'static> {
        PatchOptions {
            baserev: None,
            include_untracked: false,
        }
    }

    /// An upstream repo, a clone of it with one unpushed commit, and a dirty working tree.
    fn clone_with_work() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().expect("temp dir");
        let upstream = tmp.path().join("upstream");
        std::fs::create_dir(&upstream).expect("dir");
        git(&upstream, &["init", "-q"]);
        std::fs::write(upstream.join("a.txt"), "one\ntwo\nthree\n").expect("write");
        std::fs::write(upstream.join("gone.txt"), "bye\n").expect("write");
        std::fs::write(
            upstream.join("moved.txt"),
            "a file that will be renamed\nwith enough lines\nto be similar\n",
        )
        .expect("write");
        git(&upstream, &["add", "."]);
        git(&upstream, &["commit", "-q", "-m", "base"]);
        let work = tmp.path().join("work");
        git(tmp.path(), &["clone", "-q", "upstream", "work"]);
        std::fs::write(work.join("a.txt"), "one\nTWO\nthree\n").expect("write");
        git(&work, &["commit", "-q", "-am", "unpushed"]);
        std::fs::write(work.join("a.txt"), "one\nTWO\nthree\nfour\n").expect("write");
        std::fs::remove_file(work.join("gone.txt")).expect("rm");
        git(&work, &["mv", "moved.txt", "renamed.txt"]);
        std::fs::write(work.join("logo.bin"), [0u8, 159, 146, 150, 255, 0, 1]).expect("write");
        git(&work, &["add", "logo.bin"]);
        std::fs::write(work.join("untracked.txt"), "not mine yet\n").expect("write");
        (tmp, work)
    }

    #[test]
    fn the_patch_covers_unpushed_staged_unstaged_deleted_renamed_and_binary() {
        let (_tmp, work) = clone_with_work();
        let patch = compute(&work, &options()).expect("patch");
        let text = String::from_utf8_lossy(&patch.patch);
        assert!(
            patch.base_from.contains("origin/main"),
            "{}",
            patch.base_from
        );
        assert_eq!(patch.branch.as_deref(), Some("main"));
        assert!(text.contains("-two\n+TWO\n"), "{text}");
        assert!(text.contains("+four\n"), "{text}");
        assert!(text.contains("deleted file mode 100644"), "{text}");
        assert!(
            text.contains("rename from moved.txt\nrename to renamed.txt"),
            "{text}"
        );
        assert!(text.contains("GIT binary patch"), "{text}");
        assert!(!text.contains("untracked.txt"), "{text}");
        assert!(
            patch.repository.ends_with("upstream"),
            "{}",
            patch.repository
        );

        let with_untracked = compute(
            &work,
            &PatchOptions {
                baserev: None,
                include_untracked: true,
            },
        )
        .expect("patch");
        assert!(String::from_utf8_lossy(&with_untracked.patch).contains("+not mine yet"));
    }

    #[test]
    fn baserev_and_errors() {
        let (_tmp, work) = clone_with_work();
        let head = compute(
            &work,
            &PatchOptions {
                baserev: Some("HEAD"),
                include_untracked: false,
            },
        )
        .expect("patch");
        assert!(!String::from_utf8_lossy(&head.patch).contains("-two"));
        let err = compute(
            &work,
            &PatchOptions {
                baserev: Some("no-such-rev"),
                include_untracked: false,
            },
        )
        .expect_err("unknown rev");
        assert!(matches!(err, PatchError::UnknownBaserev { .. }));
        let outside = tempfile::tempdir().expect("temp dir");
        let err = compute(outside.path(), &options()).expect_err("not a repo");
        assert!(
            err.to_string().contains("not inside a git working tree"),
            "{err}"
        );
    }
}
