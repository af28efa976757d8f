//! The git CLI for the merge queue's work repositories (git2 has no bundles): every command
//! runs without a shell, with its arguments as a vector, stdin closed unless given, a time
//! limit, and killed when dropped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Local work (a rebase, a diff) is quick; fetch and push reach other hosts.
pub const LOCAL_TIMEOUT: Duration = Duration::from_secs(60);
pub const REMOTE_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GitError {
    #[error("cannot run git: {0}")]
    Spawn(String),
    #[error("git {command} took longer than {limit:?}")]
    Timeout { command: String, limit: Duration },
    #[error("git {command} failed: {message}")]
    Failed {
        command: String,
        code: Option<i32>,
        message: String,
    },
}

/// What a git command printed, when it exited 0 (or with a status the caller accepts).
pub struct Output {
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).trim().to_string()
    }
}

/// A bare repository the master owns.
#[derive(Debug, Clone)]
pub struct Repo {
    pub dir: PathBuf,
}

impl Repo {
    /// The repository at `dir`, made (`git init --bare`) when missing.
    pub async fn open(dir: &Path) -> Result<Repo, GitError> {
        let repo = Repo {
            dir: dir.to_path_buf(),
        };
        if !dir.join("HEAD").exists() {
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|err| GitError::Spawn(format!("{}: {err}", parent.display())))?;
            }
            let text = dir.to_string_lossy().to_string();
            run(
                None,
                &["init", "--bare", "-q", &text],
                None,
                LOCAL_TIMEOUT,
                &[],
            )
            .await?;
        }
        Ok(repo)
    }

    /// Runs `git --git-dir=DIR ARGS`; a non-zero exit is an error.
    pub async fn git(&self, args: &[&str], limit: Duration) -> Result<Output, GitError> {
        run(Some(&self.dir), args, None, limit, &[]).await
    }

    /// Like [`Repo::git`], with `input` on stdin and extra environment.
    pub async fn git_with(
        &self,
        args: &[&str],
        input: Option<&[u8]>,
        env: &[(&str, String)],
        limit: Duration,
    ) -> Result<Output, GitError> {
        run(Some(&self.dir), args, input, limit, env).await
    }

    /// Runs a command whose non-zero exits mean something (merge-tree's conflicts,
    /// merge-base's "not an ancestor"): only a failure to run is an error.
    pub async fn git_status(&self, args: &[&str], limit: Duration) -> Result<Output, GitError> {
        raw(Some(&self.dir), args, None, limit, &[]).await
    }
}

async fn run(
    dir: Option<&Path>,
    args: &[&str],
    input: Option<&[u8]>,
    limit: Duration,
    env: &[(&str, String)],
) -> Result<Output, GitError> {
    let output = raw(dir, args, input, limit, env).await?;
    if output.code != Some(0) {
        return Err(GitError::Failed {
            command: args.first().copied().unwrap_or_default().to_string(),
            code: output.code,
            message: first_line(&output.stderr),
        });
    }
    Ok(output)
}

async fn raw(
    dir: Option<&Path>,
    args: &[&str],
    input: Option<&[u8]>,
    limit: Duration,
    env: &[(&str, String)],
) -> Result<Output, GitError> {
    let mut command = Command::new("git");
    if let Some(dir) = dir {
        command.arg(format!("--git-dir={}", dir.display()));
    }
    command
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
        // The user's series is hostile: objects are checked as they come in.
        .env("GIT_CONFIG_COUNT", "2")
        .env("GIT_CONFIG_KEY_0", "fetch.fsckObjects")
        .env("GIT_CONFIG_VALUE_0", "true")
        .env("GIT_CONFIG_KEY_1", "core.hooksPath")
        .env("GIT_CONFIG_VALUE_1", "/dev/null")
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    let name = args.first().copied().unwrap_or_default().to_string();
    let work = async {
        let mut child = command
            .spawn()
            .map_err(|err| GitError::Spawn(err.to_string()))?;
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            // A command that exits early closes its stdin; its status says why.
            let _ = stdin.write_all(input).await;
            drop(stdin);
        }
        let output = child
            .wait_with_output()
            .await
            .map_err(|err| GitError::Spawn(err.to_string()))?;
        Ok(Output {
            code: output.status.code(),
            stdout: output.stdout,
            stderr: output.stderr,
        })
    };
    tokio::time::timeout(limit, work)
        .await
        .map_err(|_| GitError::Timeout {
            command: name,
            limit,
        })?
}

/// The first non-empty line of git's message, as one plain line.
pub fn first_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let line = text
        .lines()
        .find(|line| !line.trim().is_empty())
        .unwrap_or("no message")
        .trim();
    crate::untrusted::text::one_line(line)
}
