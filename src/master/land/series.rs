//! A series in the work repository of its target branch (`MASTER/land/HASH.git`, a bare
//! repository of the builders' repo): take a bundle in and check it, rebase it onto the
//! target's tip without a work tree (`git merge-tree` + `git commit-tree`, authors, dates and
//! messages kept), the diff the builders test, and the compare-and-swap push.

use std::path::{Path, PathBuf};

use super::LandError;
use super::git::{GitError, LOCAL_TIMEOUT, REMOTE_TIMEOUT, Repo};

/// More commits than this in one series is refused (a mistaken base, not a change).
pub const MAX_COMMITS: usize = 1000;

/// The work repository of a target: one per builders' repository and branch.
pub fn work_dir(master_dir: &Path, repo: &str, branch: &str) -> PathBuf {
    // FNV-1a: stable across runs, only a name.
    let hash = format!("{repo}\n{branch}")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    master_dir.join("land").join(format!("{hash:016x}.git"))
}

/// One git operation at a time per work repository: fetches into it fight over its refs.
pub async fn turn(dir: &Path) -> tokio::sync::OwnedMutexGuard<()> {
    static LOCKS: std::sync::Mutex<Vec<(PathBuf, std::sync::Arc<tokio::sync::Mutex<()>>)>> =
        std::sync::Mutex::new(Vec::new());
    let lock = {
        let mut locks = LOCKS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match locks.iter().find(|(path, _)| path == dir) {
            Some((_, lock)) => std::sync::Arc::clone(lock),
            None => {
                let lock = std::sync::Arc::new(tokio::sync::Mutex::new(()));
                locks.push((dir.to_path_buf(), std::sync::Arc::clone(&lock)));
                lock
            }
        }
    };
    lock.lock_owned().await
}

/// What a checked bundle holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    pub head: String,
    pub base: String,
    pub commits: usize,
    pub summary: String,
}

/// The tip of `branch` in `repo`, fetched into the work repository as `refs/land/tip`.
pub async fn fetch_tip(work: &Repo, repo: &str, branch: &str) -> Result<String, LandError> {
    if repo.starts_with('-') {
        return Err(LandError::Git(format!("repository {repo} starts with '-'")));
    }
    let refspec = format!("+refs/heads/{branch}:refs/land/tip");
    match work
        .git(
            &["fetch", "-q", "--no-tags", "--", repo, &refspec],
            REMOTE_TIMEOUT,
        )
        .await
    {
        Ok(_) => {}
        Err(GitError::Failed { message, .. }) if message.contains("couldn't find remote ref") => {
            return Err(LandError::NoSuchBranch {
                branch: branch.to_string(),
            });
        }
        Err(err) => return Err(LandError::Git(err.to_string())),
    }
    rev_parse(work, "refs/land/tip").await
}

async fn rev_parse(work: &Repo, name: &str) -> Result<String, LandError> {
    let spec = format!("{name}^{{commit}}");
    Ok(work
        .git(&["rev-parse", "--verify", "-q", &spec], LOCAL_TIMEOUT)
        .await
        .map_err(|err| LandError::Git(err.to_string()))?
        .text())
}

/// The private ref of entry `id`'s series.
pub fn entry_ref(id: i64) -> String {
    format!("refs/land/entry/{id}")
}

/// Takes a bundle into the work repository as `into` (a private ref) and checks it: a bundle
/// with one head, whose commits sit on the target (fetched first as `refs/land/tip`), at most
/// [`MAX_COMMITS`], no merges, no path through a `.git` directory.
pub async fn import(work: &Repo, bundle: &[u8], into: &str) -> Result<Imported, LandError> {
    let file = work
        .dir
        .join(format!("incoming-{:016x}.bundle", rand::random::<u64>()));
    tokio::fs::write(&file, bundle)
        .await
        .map_err(|err| LandError::Git(format!("cannot write {}: {err}", file.display())))?;
    let imported = import_file(work, &file, into).await;
    let _ = tokio::fs::remove_file(&file).await;
    imported
}

async fn import_file(work: &Repo, file: &Path, into: &str) -> Result<Imported, LandError> {
    let path = file.to_string_lossy().to_string();
    let heads = work
        .git_status(&["bundle", "list-heads", &path], LOCAL_TIMEOUT)
        .await
        .map_err(|err| LandError::Git(err.to_string()))?;
    if heads.code != Some(0) {
        return Err(LandError::NotABundle);
    }
    let heads = heads.text();
    let names: Vec<&str> = heads
        .lines()
        .filter_map(|line| line.split_once(' ').map(|(_, name)| name))
        .collect();
    let [name] = names.as_slice() else {
        return Err(LandError::BadBundle(format!(
            "the bundle holds {} heads; land takes one series (git bundle create - BASE..HEAD)",
            names.len()
        )));
    };
    let plain = |c: char| c.is_ascii_graphic() && !matches!(c, ':' | '^' | '~' | '*' | '?' | '\\');
    if name.starts_with('-') || !name.chars().all(plain) {
        return Err(LandError::BadBundle(
            "the bundle's head has a strange name".into(),
        ));
    }
    let verify = work
        .git_status(&["bundle", "verify", "-q", &path], LOCAL_TIMEOUT)
        .await
        .map_err(|err| LandError::Git(err.to_string()))?;
    if verify.code != Some(0) {
        let message = super::git::first_line(&verify.stderr);
        return Err(
            if message.contains("lacks these prerequisite") || message.contains("requires") {
                LandError::NotOnTarget
            } else {
                LandError::BadBundle(message)
            },
        );
    }
    let refspec = format!("+{name}:{into}");
    work.git(
        &["fetch", "-q", "--no-tags", "--", &path, &refspec],
        LOCAL_TIMEOUT,
    )
    .await
    .map_err(|err| LandError::BadBundle(err.to_string()))?;
    let head = rev_parse(work, into).await?;
    let base = merge_base(work, "refs/land/tip", &head).await?;
    if base == head {
        return Err(LandError::NothingToLand);
    }
    let range = format!("{base}..{head}");
    let count: usize = work
        .git(&["rev-list", "--count", &range], LOCAL_TIMEOUT)
        .await
        .map_err(|err| LandError::Git(err.to_string()))?
        .text()
        .parse()
        .unwrap_or(usize::MAX);
    if count > MAX_COMMITS {
        return Err(LandError::TooManyCommits {
            count,
            max: MAX_COMMITS,
        });
    }
    let merges = work
        .git(&["rev-list", "--merges", &range], LOCAL_TIMEOUT)
        .await
        .map_err(|err| LandError::Git(err.to_string()))?
        .text();
    if let Some(merge) = merges.lines().next() {
        return Err(LandError::Merge {
            commit: short(merge).to_string(),
        });
    }
    let names = work
        .git(
            &[
                "log",
                "--format=",
                "--name-only",
                "-z",
                "--no-renames",
                &range,
            ],
            LOCAL_TIMEOUT,
        )
        .await
        .map_err(|err| LandError::Git(err.to_string()))?;
    for path in names.stdout.split(|byte| *byte == 0) {
        let path = String::from_utf8_lossy(path);
        let path = path.trim_matches('\n');
        if touches_git_dir(path) {
            return Err(LandError::GitPath {
                path: crate::untrusted::text::one_line(path),
            });
        }
    }
    let summary = work
        .git(&["log", "-1", "--format=%s", &head], LOCAL_TIMEOUT)
        .await
        .map_err(|err| LandError::Git(err.to_string()))?
        .text();
    Ok(Imported {
        head,
        base,
        commits: count,
        summary: crate::untrusted::text::one_line(&summary)
            .chars()
            .take(200)
            .collect(),
    })
}

/// Whether a path goes through a `.git` directory, as git spells it on any file system
/// (case-insensitive; trailing dots and spaces are dropped by some).
pub fn touches_git_dir(path: &str) -> bool {
    path.split(['/', '\\']).any(|part| {
        part.trim_end_matches(['.', ' '])
            .eq_ignore_ascii_case(".git")
            || part.eq_ignore_ascii_case("git~1")
    })
}

pub fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

async fn merge_base(work: &Repo, a: &str, b: &str) -> Result<String, LandError> {
    let output = work
        .git_status(&["merge-base", a, b], LOCAL_TIMEOUT)
        .await
        .map_err(|err| LandError::Git(err.to_string()))?;
    if output.code != Some(0) {
        return Err(LandError::NotOnTarget);
    }
    Ok(output.text())
}

/// The series `head` rebased onto `onto`: its last commit, and whether its ids were kept
/// (it sat on `onto` already).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebased {
    pub sha: String,
    pub kept: bool,
}

/// Rebases the commits of `head` that `onto` lacks onto `onto`, one by one, each with its
/// author, author date and message; refuses with the conflicting files.
pub async fn rebase(
    work: &Repo,
    head: &str,
    onto: &str,
    ff_only: bool,
) -> Result<Rebased, LandError> {
    let base = merge_base(work, onto, head).await?;
    if base == onto {
        return Ok(Rebased {
            sha: head.to_string(),
            kept: true,
        });
    }
    if ff_only {
        return Err(LandError::NotFastForward {
            tip: short(onto).to_string(),
        });
    }
    let range = format!("{base}..{head}");
    let list = work
        .git(
            &["rev-list", "--reverse", "--topo-order", &range],
            LOCAL_TIMEOUT,
        )
        .await
        .map_err(|err| LandError::Git(err.to_string()))?
        .text();
    let mut new = onto.to_string();
    for commit in list.lines() {
        new = pick(work, commit, &new).await?;
    }
    Ok(Rebased {
        sha: new,
        kept: false,
    })
}

/// `commit` replayed on `onto`: returns the new commit.
async fn pick(work: &Repo, commit: &str, onto: &str) -> Result<String, LandError> {
    let parent = format!("--merge-base={commit}^");
    let merged = work
        .git_status(
            &[
                "merge-tree",
                "--write-tree",
                "--name-only",
                "--no-messages",
                &parent,
                onto,
                commit,
            ],
            LOCAL_TIMEOUT,
        )
        .await
        .map_err(|err| LandError::Git(err.to_string()))?;
    let text = String::from_utf8_lossy(&merged.stdout).to_string();
    let mut lines = text.lines();
    let tree = lines.next().unwrap_or_default().trim().to_string();
    match merged.code {
        Some(0) => {}
        Some(1) => {
            let mut files: Vec<String> = lines
                .take_while(|line| !line.is_empty())
                .map(crate::untrusted::text::one_line)
                .collect();
            files.dedup();
            return Err(LandError::Conflict {
                commit: short(commit).to_string(),
                files,
            });
        }
        // What the series holds decides these failures, not the master: a refusal, so a
        // hostile series cannot hold the queue up by failing again at every look.
        _ => {
            return Err(LandError::BadBundle(format!(
                "commit {} cannot be rebased: {}",
                short(commit),
                super::git::first_line(&merged.stderr)
            )));
        }
    }
    let raw = work
        .git(&["cat-file", "commit", commit], LOCAL_TIMEOUT)
        .await
        .map_err(|err| LandError::Git(err.to_string()))?;
    let (author, message) = split_commit(&raw.stdout);
    let (name, email, date) = parse_person(&author).ok_or_else(|| {
        LandError::BadBundle(format!("commit {} has no readable author", short(commit)))
    })?;
    let env = [
        ("GIT_AUTHOR_NAME", name),
        ("GIT_AUTHOR_EMAIL", email),
        ("GIT_AUTHOR_DATE", date),
        ("GIT_COMMITTER_NAME", "buildbot land".to_string()),
        ("GIT_COMMITTER_EMAIL", "buildbot@localhost".to_string()),
    ];
    let created = work
        .git_with(
            &["commit-tree", &tree, "-p", onto],
            Some(&message),
            &env,
            LOCAL_TIMEOUT,
        )
        .await
        .map_err(|err| match err {
            GitError::Failed { message, .. } => LandError::BadBundle(format!(
                "commit {} cannot be rewritten: {message}",
                short(commit)
            )),
            other => LandError::Git(other.to_string()),
        })?;
    Ok(created.text())
}

/// The `author` header and the message of a raw commit object.
fn split_commit(raw: &[u8]) -> (String, Vec<u8>) {
    let split = raw
        .windows(2)
        .position(|pair| pair == b"\n\n")
        .map_or(raw.len(), |at| at + 2);
    let (headers, message) = raw.split_at(split.min(raw.len()));
    let author = String::from_utf8_lossy(headers)
        .lines()
        .find_map(|line| line.strip_prefix("author ").map(str::to_string))
        .unwrap_or_default();
    (author, message.to_vec())
}

/// `Name <email> 1700000000 +0100` → (name, email, `@1700000000 +0100`).
fn parse_person(line: &str) -> Option<(String, String, String)> {
    let open = line.find('<')?;
    let close = line[open..].find('>')? + open;
    let name = line[..open].trim().to_string();
    let email = line[open + 1..close].to_string();
    let date = line[close + 1..].trim();
    Some((name, email, format!("@{date}")))
}

/// The patch the builders apply on `base` to get `head`'s tree.
pub async fn diff(work: &Repo, base: &str, head: &str) -> Result<Vec<u8>, LandError> {
    Ok(work
        .git(
            &[
                "diff",
                "--binary",
                "--full-index",
                "--no-renames",
                base,
                head,
            ],
            LOCAL_TIMEOUT,
        )
        .await
        .map_err(|err| LandError::Git(err.to_string()))?
        .stdout)
}

/// How a push ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    Done,
    /// The target no longer pointed at the expected tip.
    Moved,
}

/// Pushes `sha` to `branch` of `url` only if it still points at `expected`.
pub async fn push(
    work: &Repo,
    url: &str,
    branch: &str,
    sha: &str,
    expected: &str,
) -> Result<Pushed, LandError> {
    if url.starts_with('-') {
        return Err(LandError::Git(format!("push URL {url} starts with '-'")));
    }
    let lease = format!("--force-with-lease=refs/heads/{branch}:{expected}");
    let refspec = format!("{sha}:refs/heads/{branch}");
    let output = work
        .git_status(
            &["push", "-q", "--porcelain", &lease, "--", url, &refspec],
            REMOTE_TIMEOUT,
        )
        .await
        .map_err(|err| LandError::Git(err.to_string()))?;
    if output.code == Some(0) {
        return Ok(Pushed::Done);
    }
    let said = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if said.contains("stale info")
        || said.contains("non-fast-forward")
        || said.contains("fetch first")
    {
        return Ok(Pushed::Moved);
    }
    Err(LandError::Git(format!(
        "git push to {url} failed: {}",
        super::git::first_line(&output.stderr)
    )))
}

/// Where `branch` of `url` points now (none: no such branch).
pub async fn remote_tip(work: &Repo, url: &str, branch: &str) -> Result<Option<String>, LandError> {
    let name = format!("refs/heads/{branch}");
    let output = work
        .git(&["ls-remote", "--", url, &name], REMOTE_TIMEOUT)
        .await
        .map_err(|err| LandError::Git(err.to_string()))?;
    Ok(output
        .text()
        .lines()
        .find_map(|line| line.split_whitespace().next().map(str::to_string)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_dir_paths_in_any_spelling() {
        for bad in [
            ".git/config",
            "a/.git/hooks/x",
            ".GIT/x",
            "sub/.git./x",
            ".git ",
            "git~1/x",
        ] {
            assert!(touches_git_dir(bad), "{bad}");
        }
        for good in [
            ".gitignore",
            ".github/workflows/x",
            "a/git/x",
            "src/.gitkeep",
        ] {
            assert!(!touches_git_dir(good), "{good}");
        }
    }

    #[test]
    fn authors_as_git_writes_them() {
        assert_eq!(
            parse_person("Alice Example <alice@example.org> 1700000000 +0100"),
            Some((
                "Alice Example".into(),
                "alice@example.org".into(),
                "@1700000000 +0100".into()
            ))
        );
        let (author, message) =
            split_commit(b"tree t\nparent p\nauthor A <a@x> 1 +0000\ncommitter C <c@x> 2 +0000\n\nsubject\n\nbody\n");
        assert_eq!(author, "A <a@x> 1 +0000");
        assert_eq!(message, b"subject\n\nbody\n");
    }
}
