//! Is a revision on a branch of a repository? Asked before a change sent over SSH is taken,
//! so a sender cannot make a builder build an old revision (or a release-branch commit
//! labelled "main") that is not on the branch it names.
//!
//! How: a bare cache clone per repository under `MASTER/git-cache/`, fetched for the branch
//! (`git fetch` of `refs/heads/BRANCH`, incremental after the first time), then `git merge-base
//! --is-ancestor REVISION refs/heads/BRANCH`. `git ls-remote` alone would only give the branch
//! head, which proves nothing about an older revision; the cache clone answers ancestry
//! exactly, for any URL git understands, and costs one incremental fetch per change.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

/// How long the fetch and the ancestry check may take together.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevisionError {
    #[error(
        "revision {revision} is not on branch {branch} of {repo}; a change is taken only for a revision on the branch it names"
    )]
    NotOnBranch {
        repo: String,
        branch: String,
        revision: String,
    },
    #[error("cannot check that revision {revision} is on branch {branch} of {repo}: {message}")]
    Unverifiable {
        repo: String,
        branch: String,
        revision: String,
        message: String,
    },
}

/// Where the cache clone of `repo` lives.
fn cache_dir(cache_root: &Path, repo: &str) -> PathBuf {
    // FNV-1a: stable across runs and builds (std's hasher is not promised to be), and only a
    // name; a collision would just share a cache clone, whose refs are per branch anyway.
    let hash = repo.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    cache_root.join(format!("{hash:016x}.git"))
}

async fn git(args: &[&str]) -> Result<std::process::Output, String> {
    Command::new("git")
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|err| format!("cannot run git: {err}"))
}

fn first_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .find(|line| !line.trim().is_empty())
        .unwrap_or("no message")
        .trim()
        .to_string()
}

/// Checks that `revision` is `branch`'s head or one of its ancestors in `repo`.
pub async fn verify_on_branch(
    cache_root: &Path,
    repo: &str,
    branch: &str,
    revision: &str,
) -> Result<(), RevisionError> {
    // One check at a time: two fetches into one cache clone would fight over its ref locks.
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let unverifiable = |message: String| RevisionError::Unverifiable {
        repo: repo.to_string(),
        branch: branch.to_string(),
        revision: revision.to_string(),
        message,
    };
    if repo.starts_with('-') || branch.starts_with('-') || revision.starts_with('-') {
        return Err(unverifiable("a name starts with '-'".into()));
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let dir = cache_dir(cache_root, repo);
    let check = async {
        if !dir.join("HEAD").exists() {
            std::fs::create_dir_all(cache_root).map_err(|err| {
                unverifiable(format!("cannot create {}: {err}", cache_root.display()))
            })?;
            let dir_text = dir.to_string_lossy();
            let init = git(&["init", "--bare", "-q", &dir_text])
                .await
                .map_err(&unverifiable)?;
            if !init.status.success() {
                return Err(unverifiable(first_line(&init.stderr)));
            }
        }
        let git_dir = format!("--git-dir={}", dir.display());
        let refspec = format!("+refs/heads/{branch}:refs/heads/{branch}");
        let fetch = git(&[&git_dir, "fetch", "-q", "--no-tags", "--", repo, &refspec])
            .await
            .map_err(&unverifiable)?;
        if !fetch.status.success() {
            return Err(unverifiable(format!(
                "git fetch failed: {}",
                first_line(&fetch.stderr)
            )));
        }
        let head = format!("refs/heads/{branch}");
        let ancestor = git(&[&git_dir, "merge-base", "--is-ancestor", revision, &head])
            .await
            .map_err(&unverifiable)?;
        // 0: an ancestor (or the head itself); 1: not one; otherwise (128) the revision is
        // not in the repository at all, which is "not on the branch" too.
        match ancestor.status.code() {
            Some(0) => Ok(()),
            _ => Err(RevisionError::NotOnBranch {
                repo: repo.to_string(),
                branch: branch.to_string(),
                revision: revision.to_string(),
            }),
        }
    };
    tokio::time::timeout(VERIFY_TIMEOUT, check)
        .await
        .unwrap_or_else(|_| Err(unverifiable(format!("took longer than {VERIFY_TIMEOUT:?}"))))
}
