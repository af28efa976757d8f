//! `buildbot watch`: the master's status, then every build event as it happens (the master's
//! `watch --follow` over the user's own ssh), with the same connection defaults as `try`.

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
    let found = dotfile::find(cwd).map_err(|err| TryError(err.to_string()))?;
    let (path, defaults) = match found {
        Some((path, defaults)) => (Some(path), defaults),
        None => (None, DotBuildbot::default()),
    };
    let Some(connection) = Connection::resolve(connection_args, &defaults, path.as_deref())? else {
        return Err(TryError(
            "no master to watch: give --host (and --port, --username), or put them in a .buildbot file at the top of your checkout".into(),
        ));
    };
    let mut remote = String::from("watch");
    if !once {
        remote.push_str(" --follow");
    }
    for builder in builders {
        remote.push(' ');
        remote.push_str(
            &shlex::try_quote(builder)
                .map_err(|_| TryError(format!("bad builder name '{builder}'")))?,
        );
    }
    match connection.run_remote(&remote)? {
        0 => Ok(0),
        255 => Err(TryError(format!(
            "ssh to {} failed (see above): check the host, port and username, and that your key is in the master's authorized_keys",
            connection.host()
        ))),
        _ => Ok(2),
    }
}
