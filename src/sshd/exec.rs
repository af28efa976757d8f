//! The exec commands the SSH server understands: parsing the command string a client sent into
//! an [`ExecCommand`] with clap, as the CLI parses its own arguments. Pure; what each command
//! does lives in `sshd::commands` (and, below it, `master::control`).
//!
//! The command string arrives as one line (OpenSSH joins the words after the host with single
//! spaces), so it is split with POSIX shell quoting rules, as a shell on a real sshd would.

use std::collections::BTreeMap;

use clap::Parser;

/// What a client asked the master to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecCommand {
    /// `[BINARY] tryserver --jobdir DIR`: the classic Buildbot ssh try path.
    TryServer { jobdir: String },
    /// `try [--wait] [--json]`: our own client's path. With `--json`, what follows the job is
    /// one JSON stream item per line instead of text.
    Try { wait: bool, json: bool },
    /// `watch [--follow] [--json] [--since EPOCH:SEQ] [builder...]`: the status, then (with
    /// --follow) every build event as it happens until the client goes away; `--since` resumes
    /// after the last event a client saw.
    Watch {
        builders: Vec<String>,
        follow: bool,
        json: bool,
        since: Option<Resume>,
    },
    /// `stop BUILDER [BUILD] --reason TEXT`
    Stop {
        builder: String,
        build: Option<i64>,
        reason: String,
    },
    /// `force BUILDER [--branch B] [--revision SHA] --reason TEXT [--property K=V]...`
    Force {
        builder: String,
        branch: Option<String>,
        revision: Option<String>,
        reason: String,
        properties: BTreeMap<String, String>,
    },
    /// `rebuild BUILDER N [--reason TEXT]`
    Rebuild {
        builder: String,
        build: i64,
        reason: String,
    },
    /// `cancel BUILDER REQUEST_ID`
    Cancel { builder: String, request_id: i64 },
    /// `cancel BUILDER --all [--user U]`: every queued request (of one user).
    CancelAll {
        builder: String,
        user: Option<String>,
    },
    /// `sendchange`: one change as JSON on stdin.
    SendChange,
    /// `pause-slave NAME` / `unpause-slave NAME`
    PauseSlave { name: String, paused: bool },
    /// `web-login`
    WebLogin,
    /// `irc-link [--list]`: a one-time code that binds an IRC nick to this user, or the
    /// bindings.
    IrcLink { list: bool },
    /// `slave`: the RPC channel of a build slave.
    Slave,
    /// A command we do not know; reported with exit status 127.
    Unknown { name: String },
    /// A command we know, used wrongly; reported with exit status 2.
    Usage { message: String },
}

/// Where a follower left off: the master run (epoch) and the last sequence number it saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    pub epoch: String,
    pub seq: u64,
}

/// Exit status for a command the server does not know (what a shell says for "not found").
pub const EXIT_UNKNOWN_COMMAND: u32 = 127;
/// Exit status for a known command used with bad arguments.
pub const EXIT_USAGE: u32 = 2;

/// The commands as clap reads them; turned into [`ExecCommand`] after.
#[derive(Debug, Parser)]
#[command(
    name = "ssh MASTER",
    no_binary_name = true,
    disable_help_subcommand = true,
    disable_help_flag = true,
    disable_version_flag = true
)]
enum Remote {
    /// The classic Buildbot ssh try path: a job on stdin into the spool.
    Tryserver {
        #[arg(long, value_name = "DIR")]
        jobdir: String,
    },
    Try {
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
    },
    Watch {
        #[arg(short = 'f', long)]
        follow: bool,
        #[arg(long)]
        json: bool,
        #[arg(long, value_name = "EPOCH:SEQ", value_parser = parse_resume)]
        since: Option<Resume>,
        #[arg(short = 'b', long = "builder", value_name = "BUILDER")]
        builder_flags: Vec<String>,
        builders: Vec<String>,
    },
    // A reason is all the words after --reason up to the next flag: `ssh master stop B 4
    // --reason wrong branch` arrives as one line, so quotes would not survive anyway.
    Stop {
        builder: String,
        #[arg(value_parser = positive)]
        build: Option<i64>,
        #[arg(long, num_args = 1.., required = true, value_parser = non_empty)]
        reason: Vec<String>,
    },
    Force {
        builder: String,
        #[arg(long)]
        branch: Option<String>,
        #[arg(long)]
        revision: Option<String>,
        #[arg(long, num_args = 1.., required = true, value_parser = non_empty)]
        reason: Vec<String>,
        #[arg(long = "property", value_name = "K=V", value_parser = parse_property)]
        properties: Vec<(String, String)>,
    },
    Rebuild {
        builder: String,
        #[arg(value_parser = positive)]
        build: i64,
        #[arg(long, num_args = 1.., default_value = "rebuild requested")]
        reason: Vec<String>,
    },
    Cancel {
        builder: String,
        #[arg(value_parser = positive, required_unless_present = "all", conflicts_with = "all")]
        request_id: Option<i64>,
        /// Every queued request of the builder (operators).
        #[arg(long)]
        all: bool,
        /// With --all: only this user's requests.
        #[arg(long, requires = "all")]
        user: Option<String>,
    },
    Sendchange,
    PauseSlave {
        name: String,
    },
    UnpauseSlave {
        name: String,
    },
    WebLogin,
    IrcLink {
        #[arg(long)]
        list: bool,
    },
    Slave,
}

fn parse_resume(value: &str) -> Result<Resume, String> {
    let bad = || "needs EPOCH:SEQ (from the last event seen)".to_string();
    let (epoch, seq) = value.split_once(':').ok_or_else(bad)?;
    let seq = seq.parse().map_err(|_| bad())?;
    if epoch.is_empty() {
        return Err(bad());
    }
    Ok(Resume {
        epoch: epoch.to_string(),
        seq,
    })
}

fn parse_property(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err("a property is written NAME=VALUE".to_string()),
    }
}

fn positive(value: &str) -> Result<i64, String> {
    match value.parse::<i64>() {
        Ok(number) if number > 0 => Ok(number),
        _ => Err("must be a number from 1 up".to_string()),
    }
}

fn non_empty(value: &str) -> Result<String, String> {
    if value.trim().is_empty() {
        return Err("must not be empty (it is recorded with the build)".to_string());
    }
    Ok(value.to_string())
}

/// Parses the command string of an exec request.
pub fn parse(command: &str) -> ExecCommand {
    let Some(mut words) = shlex::split(command) else {
        return usage(format!(
            "cannot split the command '{command}' (unbalanced quotes?)"
        ));
    };
    let Some(first) = words.first().cloned() else {
        return ExecCommand::Unknown {
            name: String::new(),
        };
    };
    // The classic client sends `<buildbotbin> tryserver ...` where buildbotbin may be any path.
    if first != "tryserver" && words.get(1).map(String::as_str) == Some("tryserver") {
        words.remove(0);
    }
    match Remote::try_parse_from(&words) {
        Ok(remote) => from_remote(remote),
        Err(err) if err.kind() == clap::error::ErrorKind::InvalidSubcommand => {
            ExecCommand::Unknown { name: first }
        }
        Err(err) => usage(one_line(&err, &words[0])),
    }
}

/// clap's message, cut to its first line, with the command's usage line.
fn one_line(err: &clap::Error, command: &str) -> String {
    let rendered = err.render().to_string();
    let mut lines = rendered.lines();
    let mut message = lines
        .next()
        .unwrap_or("bad arguments")
        .trim_start_matches("error: ")
        .to_string();
    // "the following required arguments were not provided:" lists them on the lines below.
    if message.ends_with(':') {
        let missing: Vec<&str> = lines
            .take_while(|line| !line.trim().is_empty())
            .map(str::trim)
            .collect();
        message = format!("{} {}", message, missing.join(", "));
    }
    let usage = rendered
        .lines()
        .find_map(|line| line.trim().strip_prefix("Usage: "))
        .map(|usage| format!(" (usage: {})", usage.trim_start_matches("ssh MASTER ")))
        .unwrap_or_default();
    format!("{command}: {message}{usage}")
}

fn usage(message: String) -> ExecCommand {
    ExecCommand::Usage { message }
}

fn from_remote(remote: Remote) -> ExecCommand {
    match remote {
        Remote::Tryserver { jobdir } if jobdir.is_empty() => {
            usage("tryserver: --jobdir DIR is required".to_string())
        }
        Remote::Tryserver { jobdir } => ExecCommand::TryServer { jobdir },
        Remote::Try { wait, json } => ExecCommand::Try { wait, json },
        Remote::Watch {
            follow,
            json,
            since,
            builder_flags,
            mut builders,
        } => {
            builders.extend(builder_flags);
            ExecCommand::Watch {
                builders,
                follow,
                json,
                since,
            }
        }
        Remote::Stop {
            builder,
            build,
            reason,
        } => ExecCommand::Stop {
            builder,
            build,
            reason: reason.join(" "),
        },
        Remote::Force {
            builder,
            branch,
            revision,
            reason,
            properties,
        } => ExecCommand::Force {
            builder,
            branch,
            revision,
            reason: reason.join(" "),
            properties: properties.into_iter().collect(),
        },
        Remote::Rebuild {
            builder,
            build,
            reason,
        } => ExecCommand::Rebuild {
            builder,
            build,
            reason: reason.join(" "),
        },
        Remote::Cancel {
            builder,
            request_id: Some(request_id),
            ..
        } => ExecCommand::Cancel {
            builder,
            request_id,
        },
        Remote::Cancel {
            builder,
            request_id: None,
            user,
            ..
        } => ExecCommand::CancelAll { builder, user },
        Remote::Sendchange => ExecCommand::SendChange,
        Remote::PauseSlave { name } => ExecCommand::PauseSlave { name, paused: true },
        Remote::UnpauseSlave { name } => ExecCommand::PauseSlave {
            name,
            paused: false,
        },
        Remote::WebLogin => ExecCommand::WebLogin,
        Remote::IrcLink { list } => ExecCommand::IrcLink { list },
        Remote::Slave => ExecCommand::Slave,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue 15): `ssh master stop B 4 --reason wrong branch`, as docs/try.md shows
    /// it, was a usage error; ssh joins the words into one line, so quotes cannot be required.
    #[test]
    fn a_reason_of_unquoted_words() {
        assert_eq!(
            parse("stop linux 4 --reason wrong branch"),
            ExecCommand::Stop {
                builder: "linux".into(),
                build: Some(4),
                reason: "wrong branch".into()
            }
        );
        assert_eq!(
            parse("stop linux --reason wrong branch"),
            ExecCommand::Stop {
                builder: "linux".into(),
                build: None,
                reason: "wrong branch".into()
            }
        );
        let ExecCommand::Force {
            reason, properties, ..
        } = parse("force linux --reason nightly re-run please --property a=1")
        else {
            panic!("force parses");
        };
        assert_eq!(reason, "nightly re-run please");
        assert_eq!(properties.get("a").map(String::as_str), Some("1"));
        let ExecCommand::Rebuild { reason, .. } = parse("rebuild linux 3 --reason flaky test")
        else {
            panic!("rebuild parses");
        };
        assert_eq!(reason, "flaky test");
        let ExecCommand::Rebuild { reason, .. } = parse("rebuild linux 3") else {
            panic!("rebuild parses");
        };
        assert_eq!(reason, "rebuild requested");
    }

    #[test]
    fn classic_tryserver_with_any_binary_path() {
        for line in [
            "buildbot tryserver --jobdir jobdir",
            "/usr/local/bin/buildbot tryserver --jobdir=jobdir",
            "tryserver --jobdir jobdir",
        ] {
            assert_eq!(
                parse(line),
                ExecCommand::TryServer {
                    jobdir: "jobdir".into()
                },
                "{line}"
            );
        }
        assert!(matches!(
            parse("buildbot tryserver"),
            ExecCommand::Usage { .. }
        ));
        assert!(matches!(
            parse("buildbot tryserver --jobdir"),
            ExecCommand::Usage { .. }
        ));
        assert!(matches!(
            parse("buildbot tryserver --x"),
            ExecCommand::Usage { .. }
        ));
    }

    #[test]
    fn our_commands() {
        assert_eq!(
            parse("try"),
            ExecCommand::Try {
                wait: false,
                json: false
            }
        );
        assert_eq!(
            parse("try --wait --json"),
            ExecCommand::Try {
                wait: true,
                json: true
            }
        );
        assert_eq!(
            parse("watch"),
            ExecCommand::Watch {
                builders: vec![],
                follow: false,
                json: false,
                since: None
            }
        );
        assert_eq!(
            parse("watch --follow --json --since 3fa:42 linux"),
            ExecCommand::Watch {
                builders: vec!["linux".into()],
                follow: true,
                json: true,
                since: Some(Resume {
                    epoch: "3fa".into(),
                    seq: 42
                })
            }
        );
        match parse("watch --since 42") {
            ExecCommand::Usage { message } => {
                assert!(message.contains("needs EPOCH:SEQ"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse("watch linux -b mac"),
            ExecCommand::Watch {
                builders: vec!["linux".into(), "mac".into()],
                follow: false,
                json: false,
                since: None
            }
        );
        assert_eq!(parse("web-login"), ExecCommand::WebLogin);
        assert_eq!(parse("irc-link"), ExecCommand::IrcLink { list: false });
        assert_eq!(
            parse("irc-link --list"),
            ExecCommand::IrcLink { list: true }
        );
        assert_eq!(parse("sendchange"), ExecCommand::SendChange);
        assert_eq!(
            parse("unpause-slave s1"),
            ExecCommand::PauseSlave {
                name: "s1".into(),
                paused: false
            }
        );
        assert_eq!(parse("slave"), ExecCommand::Slave);
        assert_eq!(
            parse("stop linux 7 --reason 'wrong branch'"),
            ExecCommand::Stop {
                builder: "linux".into(),
                build: Some(7),
                reason: "wrong branch".into()
            }
        );
        assert!(matches!(parse("stop linux"), ExecCommand::Usage { .. }));
        assert!(matches!(
            parse("stop linux 7 --reason"),
            ExecCommand::Usage { .. }
        ));
        assert!(matches!(
            parse("stop linux x --reason r"),
            ExecCommand::Usage { .. }
        ));
        assert!(matches!(
            parse("stop linux 0 --reason r"),
            ExecCommand::Usage { .. }
        ));
    }

    #[test]
    fn force_rebuild_and_cancel() {
        assert_eq!(
            parse(
                "force linux --branch release --revision abc123 --reason 'nightly check' --property a=1 --property b=x=y"
            ),
            ExecCommand::Force {
                builder: "linux".into(),
                branch: Some("release".into()),
                revision: Some("abc123".into()),
                reason: "nightly check".into(),
                properties: BTreeMap::from([
                    ("a".to_string(), "1".to_string()),
                    ("b".to_string(), "x=y".to_string())
                ]),
            }
        );
        assert_eq!(
            parse("rebuild linux 7"),
            ExecCommand::Rebuild {
                builder: "linux".into(),
                build: 7,
                reason: "rebuild requested".into()
            }
        );
        assert_eq!(
            parse("cancel linux 12"),
            ExecCommand::Cancel {
                builder: "linux".into(),
                request_id: 12
            }
        );
        for broken in [
            "force linux",
            "force linux --reason ''",
            "force linux --reason r --property novalue",
            "rebuild linux",
            "rebuild linux -1",
            "cancel linux x",
        ] {
            match parse(broken) {
                ExecCommand::Usage { message } => {
                    assert!(!message.contains('\n'), "one line: {message:?}");
                    assert!(
                        message.starts_with(broken.split(' ').next().unwrap_or_default()),
                        "{message}"
                    );
                }
                other => panic!("{broken}: {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_and_broken_commands() {
        assert_eq!(
            parse("rm -rf /"),
            ExecCommand::Unknown { name: "rm".into() }
        );
        assert_eq!(parse(""), ExecCommand::Unknown { name: "".into() });
        assert!(matches!(
            parse("watch 'unterminated"),
            ExecCommand::Usage { .. }
        ));
    }
}
