//! Asking a repository for its branch heads with the `git` command (`git ls-remote --heads`),
//! so any URL git understands works (https, ssh, a local path) with the master's own git
//! configuration and credentials. Used by pollers and by periodic schedulers.

use std::time::Duration;

use tokio::process::Command;

/// How long one `git ls-remote` may take before it is given up.
const LS_REMOTE_TIMEOUT: Duration = Duration::from_secs(120);

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
