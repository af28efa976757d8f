//! `buildbot stop`, `force` and `sendchange`: one master command each, run word by word over
//! the user's own ssh with the same connection defaults as `try` (flags, then `.buildbot`). The
//! master prints the answer (`force` reads it as JSON and renders it, and follows the build with
//! `--wait`); the exit code says how it went.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal};
use std::path::Path;
use std::process::Stdio;

use crate::change::ChangeSpec;
use crate::client::dotfile::{self, DotBuildbot};
use crate::client::try_cmd::{Connection, SshExit, TryArgs, TryError};
use crate::commands::{Answer, EXIT_FAILED, EXIT_OK, EXIT_USAGE, ForceArgs};

/// Runs `buildbot force`: the master answers with one JSON object (`commands::Answer`), shown
/// as "forced build queued as request 6 → linux, http://…"; with `wait` the build's progress
/// follows and the exit code says how it ended, as for `try --wait`.
pub fn force(
    args: &ForceArgs,
    wait: bool,
    connection_args: &TryArgs,
    cwd: &Path,
) -> Result<u8, TryError> {
    let mut words = args.to_words();
    words.push("--json".to_string());
    if wait {
        words.push("--wait".to_string());
    }
    let connection = resolve(connection_args, cwd)?;
    let remote = shlex::try_join(words.iter().map(String::as_str))
        .map_err(|_| TryError("an argument cannot be quoted for the remote command".into()))?;
    let mut run = connection.spawn(&remote, Stdio::null(), true)?;
    let interrupted = if wait {
        crate::client::interrupt::catch()
    } else {
        None
    };
    if let Some(answer) = run.child.stdout.take() {
        let answer = std::io::BufReader::new(answer);
        if wait {
            crate::client::progress::follow(
                answer,
                &mut std::io::stdout(),
                std::io::stdout().is_terminal(),
            );
        } else {
            for line in answer.lines().map_while(Result::ok) {
                // Not an answer this client knows (an older master?): shown as it came.
                match serde_json::from_str::<Answer>(&line) {
                    Ok(answer) => println!("{answer}"),
                    Err(_) => println!("{line}"),
                }
            }
        }
    }
    let exit = run.wait()?;
    if interrupted.is_some_and(|caught| caught.happened()) {
        return Err(TryError(
            "interrupted: the master stops the forced build when `force --wait` goes away (force without --wait to leave it running, and follow it with `buildbot watch`)".into(),
        ));
    }
    exit_code(exit, &connection)
}

/// `NAME=VALUE` pairs into properties; the first that is not one is the error.
pub fn parse_properties(pairs: &[String]) -> Result<BTreeMap<String, String>, TryError> {
    pairs
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
            _ => Err(TryError(format!("--property {pair}: write it NAME=VALUE"))),
        })
        .collect()
}

/// The one exit-code scheme (`commands`): 0 done; 1 refused, not found (no such builder, build
/// or request, not running, no right) or a build that did not succeed (`--wait`); 2 a usage
/// error. ssh's own failure (255) becomes an error naming its cause, which the CLI reports
/// with exit code 2.
pub(crate) fn exit_code(exit: SshExit, connection: &Connection) -> Result<u8, TryError> {
    match exit.code {
        Some(0) => Ok(EXIT_OK),
        Some(1) => Ok(EXIT_FAILED),
        Some(255) => Err(connection.failure(exit.trouble, false)),
        _ if exit.trouble.shutting_down => Err(connection.failure(exit.trouble, false)),
        _ => Ok(EXIT_USAGE),
    }
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
    run_command(&words, connection_args, cwd)
}

/// Runs `buildbot shell`: `ssh -t master shell BUILDER N` on the user's terminal (without -t
/// when a command is given or stdin is not a terminal), or `--release`. The exit code is the
/// shell's own.
pub fn shell(
    builder: &str,
    number: u64,
    release: bool,
    command: &[String],
    connection_args: &TryArgs,
    cwd: &Path,
) -> Result<u8, TryError> {
    let mut words = vec!["shell".to_string(), builder.to_string(), number.to_string()];
    if release {
        words.push("--release".to_string());
        return run_command(&words, connection_args, cwd);
    }
    let terminal = command.is_empty() && std::io::stdin().is_terminal();
    if !command.is_empty() {
        words.push("--".to_string());
        words.extend(command.iter().cloned());
    }
    let connection = resolve(connection_args, cwd)?;
    let connection = match shell_place(connection, builder, number)? {
        Ok(connection) => connection,
        Err(refused) => return Ok(refused),
    };
    let remote = shlex::try_join(words.iter().map(String::as_str))
        .map_err(|_| TryError("an argument cannot be quoted for the remote command".into()))?;
    let exit = connection.run_remote_terminal(&remote, terminal)?;
    match exit.code {
        // The shell's own status, whatever it is.
        Some(code) if code != 255 => Ok(u8::try_from(code).unwrap_or(EXIT_FAILED)),
        _ => exit_code(exit, &connection),
    }
}

/// The master's answer to `shell B N --where`.
#[derive(serde::Deserialize)]
struct ShellPlace {
    here: bool,
    #[serde(default)]
    master: String,
    #[serde(default)]
    host: String,
    #[serde(default)]
    port: u16,
    #[serde(default)]
    host_key: String,
}

/// The master a shell into build `number` of `builder` opens on: the one asked, or the master
/// of its cluster that the build's slave is connected to (whose host key the one asked
/// vouches for). `Err(exit code)` when the master refused (it said why on stderr).
fn shell_place(
    connection: Connection,
    builder: &str,
    number: u64,
) -> Result<Result<Connection, u8>, TryError> {
    use std::io::Read;
    let words = ["shell", builder, &number.to_string(), "--where"].map(str::to_string);
    let remote = shlex::try_join(words.iter().map(String::as_str))
        .map_err(|_| TryError("an argument cannot be quoted for the remote command".into()))?;
    let mut run = connection.spawn(&remote, Stdio::null(), true)?;
    let mut answer = String::new();
    if let Some(mut stdout) = run.child.stdout.take() {
        // A cut connection leaves the answer short; the exit code says so below.
        let _ = stdout.read_to_string(&mut answer);
    }
    let exit = run.wait()?;
    if exit.code != Some(0) {
        return Ok(Err(exit_code(exit, &connection)?));
    }
    let place: ShellPlace = serde_json::from_str(answer.trim()).map_err(|err| {
        TryError(format!(
            "the master's answer to 'shell --where' is not understood ({err}): {}",
            answer.trim()
        ))
    })?;
    if place.here {
        return Ok(Ok(connection));
    }
    eprintln!(
        "buildbot: the slave of {builder} #{number} is connected to master {}; opening the shell there ({}:{})",
        place.master, place.host, place.port
    );
    let host_key = Some(place.host_key).filter(|key| !key.trim().is_empty());
    Ok(Ok(connection.redirected(place.host, place.port, host_key)))
}

/// Runs one master command (`stop`, `force`, ...) word by word over the user's ssh; the master
/// prints the answer. Exit 0 done, 1 refused, 2 usage or connection trouble.
pub fn run_command(
    words: &[String],
    connection_args: &TryArgs,
    cwd: &Path,
) -> Result<u8, TryError> {
    let connection = resolve(connection_args, cwd)?;
    let remote = shlex::try_join(words.iter().map(String::as_str))
        .map_err(|_| TryError("an argument cannot be quoted for the remote command".into()))?;
    exit_code(connection.run_remote(&remote)?, &connection)
}

/// Runs `buildbot sendchange`: the change as JSON to the master's `sendchange`, which prints
/// `change N accepted`. Exit 0 accepted, 1 refused, 2 usage or connection trouble.
pub fn send_change(
    change: &ChangeSpec,
    connection_args: &TryArgs,
    cwd: &Path,
) -> Result<u8, TryError> {
    crate::change::check(change).map_err(|err| TryError(err.to_string()))?;
    let json = serde_json::to_vec(change)
        .map_err(|err| TryError(format!("cannot encode the change: {err}")))?;
    let connection = resolve(connection_args, cwd)?;
    exit_code(
        connection.run_remote_with_input("sendchange", &json)?,
        &connection,
    )
}

/// Runs `buildbot fetch BUILDER N PATH [-o FILE]`: the master's `fetch` streams the artifact;
/// without `output` it goes to stdout, with it into a file beside `output` that is renamed
/// into place only when the whole artifact arrived (a failed fetch leaves no half file).
pub fn fetch(
    builder: &str,
    number: u64,
    path: &str,
    output: Option<&Path>,
    connection_args: &TryArgs,
    cwd: &Path,
) -> Result<u8, TryError> {
    let words = [
        "fetch".to_string(),
        builder.to_string(),
        number.to_string(),
        path.to_string(),
    ];
    let Some(output) = output else {
        return run_command(&words, connection_args, cwd);
    };
    let connection = resolve(connection_args, cwd)?;
    let remote = shlex::try_join(words.iter().map(String::as_str))
        .map_err(|_| TryError("an argument cannot be quoted for the remote command".into()))?;
    let output = cwd.join(output);
    let dir = output
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(cwd);
    let mut partial = tempfile::Builder::new()
        .prefix(".buildbot-fetch-")
        .tempfile_in(dir)
        .map_err(|err| TryError(format!("cannot write into {}: {err}", dir.display())))?;
    let mut run = connection.spawn(&remote, Stdio::null(), true)?;
    let copied = match run.child.stdout.take() {
        Some(mut stdout) => std::io::copy(&mut stdout, partial.as_file_mut()),
        None => Ok(0),
    };
    let code = exit_code(run.wait()?, &connection)?;
    if code != EXIT_OK {
        return Ok(code);
    }
    copied.map_err(|err| TryError(format!("cannot write {}: {err}", output.display())))?;
    partial
        .persist(&output)
        .map_err(|err| TryError(format!("cannot write {}: {}", output.display(), err.error)))?;
    Ok(EXIT_OK)
}

/// The connection from the flags and `.buildbot`.
pub(crate) fn resolve(connection_args: &TryArgs, cwd: &Path) -> Result<Connection, TryError> {
    let found = dotfile::find(cwd).map_err(|err| TryError(err.to_string()))?;
    let (path, defaults) = match found {
        Some((path, defaults)) => (Some(path), defaults),
        None => (None, DotBuildbot::default()),
    };
    Connection::resolve(connection_args, &defaults, path.as_deref())?.ok_or_else(|| {
        TryError(
            "no master: give --host (and --port, --username), or put them in a .buildbot file at the top of your checkout".into(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_are_name_value_pairs() {
        let parsed = parse_properties(&["a=1".into(), "b=x=y".into()]).expect("good");
        assert_eq!(parsed.get("b").map(String::as_str), Some("x=y"));
        let err = parse_properties(&["novalue".into()]).expect_err("bad");
        assert_eq!(err.to_string(), "--property novalue: write it NAME=VALUE");
        assert!(parse_properties(&["=x".into()]).is_err());
    }
}
