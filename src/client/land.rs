//! `buildbot land`: the commits of the checkout's HEAD that the target branch lacks (from the
//! merge-base with the remote's copy of it), as a git bundle over the user's own ssh to the
//! master's `land` (docs/land.md). The master answers in text; with `--wait` it streams the
//! entry's progress and the exit code says how it ended (0 landed, 1 rejected or refused).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::client::remote::{exit_code, resolve};
use crate::client::try_cmd::{TryArgs, TryError};

/// What `buildbot land` was asked.
#[derive(Debug, Clone, Default)]
pub struct LandArgs {
    /// The target branch; default: the current branch's upstream's name, else `main`.
    pub onto: Option<String>,
    pub builders: Vec<String>,
    pub wait: bool,
    pub ff_only: bool,
    pub cancel: bool,
}

pub fn run(args: &LandArgs, connection_args: &TryArgs, cwd: &Path) -> Result<u8, TryError> {
    let inside = git(cwd, &["rev-parse", "--is-inside-work-tree"])?;
    if !inside.status.success() {
        return Err(TryError(format!(
            "{} is not in a git checkout: run it in the repository whose commits you want to land",
            cwd.display()
        )));
    }
    let onto = match &args.onto {
        Some(onto) => onto.clone(),
        None => upstream(cwd).map_or_else(|| "main".to_string(), |(_, branch)| branch),
    };
    let mut words = vec!["land".to_string(), "--onto".to_string(), onto.clone()];
    if args.cancel {
        words.push("--cancel".to_string());
        return crate::client::remote::run_command(&words, connection_args, cwd);
    }
    for builder in &args.builders {
        words.extend(["-b".to_string(), builder.clone()]);
    }
    if args.ff_only {
        words.push("--ff-only".to_string());
    }
    if args.wait {
        words.push("--wait".to_string());
    }
    let bundle = bundle(cwd, &onto)?;
    let connection = resolve(connection_args, cwd)?;
    let remote = shlex::try_join(words.iter().map(String::as_str))
        .map_err(|_| TryError("an argument cannot be quoted for the remote command".into()))?;
    let _ = std::io::stdout().flush();
    exit_code(
        connection.run_remote_with_input(&remote, &bundle)?,
        &connection,
    )
}

fn git(cwd: &Path, args: &[&str]) -> Result<std::process::Output, TryError> {
    Command::new("git")
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .map_err(|err| TryError(format!("cannot run git: {err}")))
}

fn text(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// The current branch's upstream as (remote, branch): `origin/main` → (`origin`, `main`).
fn upstream(cwd: &Path) -> Option<(String, String)> {
    let output = git(
        cwd,
        &[
            "rev-parse",
            "--abbrev-ref",
            "--symbolic-full-name",
            "@{upstream}",
        ],
    )
    .ok()?;
    if !output.status.success() {
        return None;
    }
    let upstream = text(&output);
    upstream
        .split_once('/')
        .map(|(remote, branch)| (remote.to_string(), branch.to_string()))
}

/// `git bundle create - BASE..HEAD`, BASE the merge-base of HEAD and the remote's `onto`.
fn bundle(cwd: &Path, onto: &str) -> Result<Vec<u8>, TryError> {
    let remote = upstream(cwd).map_or_else(|| "origin".to_string(), |(remote, _)| remote);
    let target = format!("refs/remotes/{remote}/{onto}");
    let known = git(cwd, &["rev-parse", "--verify", "--quiet", &target])?;
    if !known.status.success() {
        return Err(TryError(format!(
            "there is no {remote}/{onto} here: git fetch {remote}, or name the target with --onto BRANCH"
        )));
    }
    let base = git(cwd, &["merge-base", "HEAD", &target])?;
    if !base.status.success() {
        return Err(TryError(format!(
            "no common commit of HEAD and {remote}/{onto}: is {onto} the branch? (git fetch {remote})"
        )));
    }
    let base = text(&base);
    let head = git(cwd, &["rev-parse", "HEAD"])?;
    if text(&head) == base {
        return Err(TryError(format!(
            "nothing to land: HEAD is on {remote}/{onto} already"
        )));
    }
    let range = format!("{base}..HEAD");
    let created = git(cwd, &["bundle", "create", "-q", "-", &range])?;
    if !created.status.success() {
        return Err(TryError(format!(
            "git bundle create failed: {}",
            String::from_utf8_lossy(&created.stderr).trim()
        )));
    }
    Ok(created.stdout)
}
