//! `buildbot watch` and `buildbot stop`: the master's `watch --follow` and `stop` run over the
//! user's own ssh, with the same connection defaults as `try` (flags, then `.buildbot`).

use std::path::Path;

use crate::client::dotfile::{self, DotBuildbot};
use crate::client::try_cmd::{Connection, TryArgs, TryError};

/// Runs `buildbot watch`; returns the exit code (0, or 2 for a usage/connection problem).
pub fn run(
    builders: &[String],
    once: bool,
    connection_args: &TryArgs,
    cwd: &Path,
) -> Result<u8, TryError> {
    let mut words = vec!["watch".to_string()];
    if !once {
        words.push("--follow".into());
    }
    words.extend(builders.iter().cloned());
    run_remote(&words, connection_args, cwd)
}

/// Runs `buildbot stop BUILDER [N] --reason TEXT`; the master prints the result. Exit 0 when
/// the build was stopped, 1 when it could not be (not running, no right), 2 for trouble.
pub fn stop(
    builder: &str,
    number: Option<u64>,
    reason: &str,
    connection_args: &TryArgs,
    cwd: &Path,
) -> Result<u8, TryError> {
    let mut words = vec!["stop".to_string(), builder.to_string()];
    words.extend(number.map(|n| n.to_string()));
    words.extend(["--reason".to_string(), reason.to_string()]);
    run_remote(&words, connection_args, cwd)
}

/// Runs a master command, quoted word by word, over the user's ssh.
fn run_remote(words: &[String], connection_args: &TryArgs, cwd: &Path) -> Result<u8, TryError> {
    let found = dotfile::find(cwd).map_err(|err| TryError(err.to_string()))?;
    let (path, defaults) = match found {
        Some((path, defaults)) => (Some(path), defaults),
        None => (None, DotBuildbot::default()),
    };
    let Some(connection) = Connection::resolve(connection_args, &defaults, path.as_deref())? else {
        return Err(TryError(
            "no master: give --host (and --port, --username), or put them in a .buildbot file at the top of your checkout".into(),
        ));
    };
    let remote = shlex::try_join(words.iter().map(String::as_str))
        .map_err(|_| TryError("an argument cannot be quoted for the remote command".into()))?;
    match connection.run_remote(&remote)? {
        0 => Ok(0),
        1 => Ok(1),
        255 => Err(TryError(format!(
            "ssh to {} failed (see above): check the host, port and username, and that your key is in the master's authorized_keys",
            connection.host()
        ))),
        _ => Ok(2),
    }
}
