//! Asking a repository for its branch heads with the `git` command (`git ls-remote --heads`),
//! so any URL git understands works (https, ssh, a local path) with the master's own git
//! configuration and credentials. Used by pollers and by periodic schedulers. A poller also
//! keeps a bare mirror of the branches it watches ([`Mirror`]) to tell what a moved head
//! brought: the files and the authors of the new commits.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

/// How long one `git ls-remote` (or one git command on a mirror) may take before it is given
/// up.
const LS_REMOTE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one fetch into a mirror may take: a first fetch of a big repository is a clone.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// At most this many authors are named in a change; more are counted.
const MAX_AUTHORS: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum GitRemoteError {
    #[error("cannot run git: {0}")]
    Spawn(std::io::Error),
    #[error("git ls-remote {repo} took longer than {LS_REMOTE_TIMEOUT:?}")]
    Timeout { repo: String },
    #[error("git ls-remote {repo} failed: {message}")]
    Failed { repo: String, message: String },
    #[error("'{0}' is not a repository address (it starts with '-')")]
    BadRepo(String),
    #[error("git {what} took longer than {limit:?}")]
    MirrorTimeout { what: String, limit: Duration },
    #[error("git {what} failed: {message}")]
    Mirror { what: String, message: String },
}

/// The heads of `repo`: (branch name, commit id), as the remote lists them.
pub async fn heads(repo: &str) -> Result<Vec<(String, String)>, GitRemoteError> {
    if repo.starts_with('-') {
        return Err(GitRemoteError::BadRepo(repo.to_string()));
    }
    let run = Command::new("git")
        .args(["ls-remote", "--heads", "--", repo])
        // Never wait for a password on a terminal the master does not have.
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = match tokio::time::timeout(LS_REMOTE_TIMEOUT, run).await {
        Ok(output) => output.map_err(GitRemoteError::Spawn)?,
        Err(_) => {
            return Err(GitRemoteError::Timeout {
                repo: repo.to_string(),
            });
        }
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let message = stderr
            .lines()
            .find(|line| !line.trim().is_empty())
            .unwrap_or("no message")
            .trim()
            .to_string();
        return Err(GitRemoteError::Failed {
            repo: repo.to_string(),
            message,
        });
    }
    Ok(parse_heads(&String::from_utf8_lossy(&output.stdout)))
}

/// What the commits a head moved over brought, as a change lists it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Brought {
    /// The files that differ between the old head and the new (for a new branch: the files of
    /// its head commit), at most `change::MAX_FILES`.
    pub files: Vec<String>,
    /// "Name <mail>" of each author of the new commits, newest first, each once.
    pub authors: Vec<String>,
    /// The new head's commit message.
    pub message: String,
}

impl Brought {
    /// The authors as one `who`: "A <a@x>, B <b@x>", with "and N more" past [`MAX_AUTHORS`].
    pub fn who(&self) -> Option<String> {
        if self.authors.is_empty() {
            return None;
        }
        let mut who = self
            .authors
            .iter()
            .take(MAX_AUTHORS)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if self.authors.len() > MAX_AUTHORS {
            who.push_str(&format!(" and {} more", self.authors.len() - MAX_AUTHORS));
        }
        Some(who)
    }
}

/// A bare repository under the master directory holding the polled branches of one remote
/// repository, fetched by the `git` command like `ls-remote`.
pub struct Mirror {
    dir: PathBuf,
    repo: String,
}

impl Mirror {
    /// The mirror of `repo` under `parent` (created on the first fetch). Its directory name is
    /// the repository's address reduced to safe characters plus a hash of it, so two addresses
    /// never share a mirror.
    pub fn new(parent: &Path, repo: &str) -> Mirror {
        let safe: String = repo
            .chars()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        // FNV-1a: stable across releases, unlike std's hasher.
        let hash = repo.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
        Mirror {
            dir: parent.join(format!("{safe}-{hash:016x}.git")),
            repo: fetchable_from_elsewhere(repo),
        }
    }

    /// Fetches `branches` of the remote into the mirror (as `refs/heads/NAME`).
    pub async fn fetch(&self, branches: &[String]) -> Result<(), GitRemoteError> {
        if self.repo.starts_with('-') {
            return Err(GitRemoteError::BadRepo(self.repo.clone()));
        }
        if branches.is_empty() {
            return Ok(());
        }
        if !self.dir.join("HEAD").exists() {
            tokio::fs::create_dir_all(&self.dir)
                .await
                .map_err(GitRemoteError::Spawn)?;
            self.git("init", &["init", "-q", "--bare", "."], LS_REMOTE_TIMEOUT)
                .await?;
        }
        let mut args = vec![
            "fetch".to_string(),
            "-q".into(),
            "--no-tags".into(),
            "--force".into(),
            "--".into(),
            self.repo.clone(),
        ];
        args.extend(
            branches
                .iter()
                .map(|branch| format!("+refs/heads/{branch}:refs/heads/{branch}")),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.git("fetch", &args, FETCH_TIMEOUT).await?;
        Ok(())
    }

    /// The commits after `good` up to `bad`, oldest first: (id, author `Name <address>`,
    /// subject). Both must have been fetched. For bisection (`master::bisect`).
    pub async fn commits_between(
        &self,
        good: &str,
        bad: &str,
    ) -> Result<Vec<(String, String, String)>, GitRemoteError> {
        for revision in [good, bad] {
            if revision.is_empty() || !revision.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(GitRemoteError::Mirror {
                    what: "log".into(),
                    message: format!("'{revision}' is not a commit id"),
                });
            }
        }
        let range = format!("{good}..{bad}");
        let log = self
            .git(
                "log",
                &[
                    "log",
                    "--reverse",
                    "--format=%H%x00%an <%ae>%x00%s",
                    "--max-count=10000",
                    &range,
                    "--",
                ],
                LS_REMOTE_TIMEOUT,
            )
            .await?;
        Ok(log
            .lines()
            .filter_map(|line| {
                let mut parts = line.splitn(3, '\0');
                Some((
                    parts.next()?.to_string(),
                    parts.next()?.to_string(),
                    parts.next().unwrap_or_default().to_string(),
                ))
            })
            .collect())
    }

    /// What moving a head from `old` (none: a new branch) to `new` brought. `new` must have
    /// been fetched; an `old` the mirror does not have (a force push over history it never
    /// saw) counts as a new branch.
    pub async fn brought(&self, old: Option<&str>, new: &str) -> Result<Brought, GitRemoteError> {
        for revision in old.into_iter().chain([new]) {
            if !revision.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(GitRemoteError::Mirror {
                    what: "log".into(),
                    message: format!("'{revision}' is not a commit id"),
                });
            }
        }
        let old = match old {
            Some(old) if self.has_commit(old).await => Some(old),
            _ => None,
        };
        let range = match old {
            Some(old) => format!("{old}..{new}"),
            None => format!("{new}^!"),
        };
        // Authors of the new commits; for a new branch, of its head commit alone.
        let log = self
            .git(
                "log",
                &[
                    "log",
                    "--format=%an <%ae>",
                    "--max-count=10000",
                    &range,
                    "--",
                ],
                LS_REMOTE_TIMEOUT,
            )
            .await?;
        let mut authors: Vec<String> = Vec::new();
        for author in log.lines().map(str::trim).filter(|line| !line.is_empty()) {
            if !authors.iter().any(|known| known == author) {
                authors.push(author.to_string());
            }
        }
        // The files as the tree moved (a force push: what differs from the old head), the
        // same rule as the shipped post-receive hook.
        let files = match old {
            Some(old) => {
                self.git(
                    "diff",
                    &["diff", "--name-only", "-z", "--no-renames", old, new, "--"],
                    LS_REMOTE_TIMEOUT,
                )
                .await?
            }
            None => {
                self.git(
                    "diff-tree",
                    &[
                        "diff-tree",
                        "--no-commit-id",
                        "--name-only",
                        "-z",
                        "-r",
                        "--root",
                        new,
                        "--",
                    ],
                    LS_REMOTE_TIMEOUT,
                )
                .await?
            }
        };
        let files = files
            .split('\0')
            .filter(|name| !name.is_empty())
            .take(crate::change::MAX_FILES)
            .map(str::to_string)
            .collect();
        let message = self
            .git(
                "log",
                &["log", "-1", "--format=%B", new, "--"],
                LS_REMOTE_TIMEOUT,
            )
            .await?
            .trim_end()
            .to_string();
        Ok(Brought {
            files,
            authors,
            message,
        })
    }

    async fn has_commit(&self, revision: &str) -> bool {
        let commit = format!("{revision}^{{commit}}");
        self.git("cat-file", &["cat-file", "-e", &commit], LS_REMOTE_TIMEOUT)
            .await
            .is_ok()
    }

    /// Runs git in the mirror; its standard output (lossy UTF-8) or why it failed.
    async fn git(
        &self,
        what: &str,
        args: &[&str],
        limit: Duration,
    ) -> Result<String, GitRemoteError> {
        let run = Command::new("git")
            .arg("-C")
            .arg(&self.dir)
            .args(["-c", "core.quotePath=false"])
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = match tokio::time::timeout(limit, run).await {
            Ok(output) => output.map_err(GitRemoteError::Spawn)?,
            Err(_) => {
                return Err(GitRemoteError::MirrorTimeout {
                    what: what.to_string(),
                    limit,
                });
            }
        };
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(GitRemoteError::Mirror {
                what: what.to_string(),
                message: stderr
                    .lines()
                    .find(|line| !line.trim().is_empty())
                    .unwrap_or("no message")
                    .trim()
                    .to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

/// `repo` as git run in another directory (the mirror) finds it: a relative local path is
/// made absolute against the master's working directory, where `ls-remote` resolves it.
fn fetchable_from_elsewhere(repo: &str) -> String {
    let is_url = repo.contains("://");
    // scp-like `host:path`: a colon before any slash.
    let is_scp = repo
        .find(':')
        .is_some_and(|colon| repo.find('/').is_none_or(|slash| colon < slash));
    if is_url || is_scp || Path::new(repo).is_absolute() {
        return repo.to_string();
    }
    match std::env::current_dir() {
        Ok(cwd) => cwd.join(repo).to_string_lossy().into_owned(),
        Err(_) => repo.to_string(),
    }
}

/// `SHA<TAB>refs/heads/NAME` lines into (NAME, SHA).
fn parse_heads(listing: &str) -> Vec<(String, String)> {
    listing
        .lines()
        .filter_map(|line| {
            let (revision, reference) = line.split_once('\t')?;
            let branch = reference.trim().strip_prefix("refs/heads/")?;
            Some((branch.to_string(), revision.trim().to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_read_from_the_listing() {
        let listing = "0123\trefs/heads/main\nabcd\trefs/heads/release/1.0\nffff\trefs/tags/v1\n";
        assert_eq!(
            parse_heads(listing),
            vec![
                ("main".to_string(), "0123".to_string()),
                ("release/1.0".to_string(), "abcd".to_string())
            ]
        );
    }

    #[test]
    fn mirrors_find_the_repository_from_their_own_directory() {
        for remote in [
            "https://h/p.git",
            "git@h:p.git",
            "/srv/p.git",
            "file:///srv/p.git",
        ] {
            assert_eq!(fetchable_from_elsewhere(remote), remote);
        }
        let relative = fetchable_from_elsewhere("repos/p.git");
        assert!(Path::new(&relative).is_absolute(), "{relative}");
        assert!(relative.ends_with("repos/p.git"), "{relative}");
        // Distinct addresses never share a mirror, however alike their safe names are.
        let parent = Path::new("/m/gitpoll");
        assert_ne!(
            Mirror::new(parent, "/a/b.git").dir,
            Mirror::new(parent, "/a_b.git").dir
        );
    }

    #[test]
    fn the_authors_read_as_one_who() {
        let brought = Brought {
            authors: (1..=12).map(|n| format!("A{n} <a{n}@x>")).collect(),
            ..Brought::default()
        };
        let who = brought.who().expect("authors");
        assert!(who.starts_with("A1 <a1@x>, A2 <a2@x>"), "{who}");
        assert!(who.ends_with("A10 <a10@x> and 2 more"), "{who}");
        assert_eq!(Brought::default().who(), None);
    }

    #[tokio::test]
    async fn a_missing_repository_is_an_error_with_gits_reason() {
        let err = heads("/nonexistent/repo.git")
            .await
            .expect_err("no such repo");
        assert!(matches!(err, GitRemoteError::Failed { .. }), "{err}");
        assert!(matches!(
            heads("--upload-pack=x").await,
            Err(GitRemoteError::BadRepo(_))
        ));
    }
}
