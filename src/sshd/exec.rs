//! The exec commands the SSH server understands: parsing the command string a client sent into
//! an [`ExecCommand`]. Pure; what each command does lives in `sshd::commands`.
//!
//! The command string arrives as one line (OpenSSH joins the words after the host with single
//! spaces), so it is split with POSIX shell quoting rules, as a shell on a real sshd would.

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
    /// `web-login`
    WebLogin,
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

/// Parses the command string of an exec request.
pub fn parse(command: &str) -> ExecCommand {
    let Some(words) = shlex::split(command) else {
        return ExecCommand::Usage {
            message: format!("cannot split the command '{command}' (unbalanced quotes?)"),
        };
    };
    let Some(first) = words.first() else {
        return ExecCommand::Unknown {
            name: String::new(),
        };
    };
    // The classic client sends `<buildbotbin> tryserver ...` where buildbotbin may be any path.
    if first == "tryserver" {
        return parse_tryserver(&words[1..]);
    }
    if words.get(1).map(String::as_str) == Some("tryserver") {
        return parse_tryserver(&words[2..]);
    }
    let args = &words[1..];
    match first.as_str() {
        "try" => parse_try(args),
        "watch" => parse_watch(args),
        "stop" => parse_stop(args),
        "web-login" if args.is_empty() => ExecCommand::WebLogin,
        "web-login" => usage("web-login takes no arguments"),
        "slave" if args.is_empty() => ExecCommand::Slave,
        "slave" => usage("slave takes no arguments"),
        _ => ExecCommand::Unknown {
            name: first.clone(),
        },
    }
}

fn usage(message: &str) -> ExecCommand {
    ExecCommand::Usage {
        message: message.to_string(),
    }
}

fn parse_tryserver(args: &[String]) -> ExecCommand {
    let mut jobdir = None;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if arg == "--jobdir" {
            match rest.next() {
                Some(dir) => jobdir = Some(dir.clone()),
                None => return usage("tryserver: --jobdir needs a directory"),
            }
        } else if let Some(dir) = arg.strip_prefix("--jobdir=") {
            jobdir = Some(dir.to_string());
        } else {
            return ExecCommand::Usage {
                message: format!(
                    "tryserver: unexpected argument '{arg}' (usage: tryserver --jobdir DIR)"
                ),
            };
        }
    }
    match jobdir {
        Some(jobdir) if !jobdir.is_empty() => ExecCommand::TryServer { jobdir },
        _ => usage("tryserver: --jobdir DIR is required"),
    }
}

fn parse_try(args: &[String]) -> ExecCommand {
    let (mut wait, mut json) = (false, false);
    for arg in args {
        match arg.as_str() {
            "--wait" => wait = true,
            "--json" => json = true,
            _ => return usage("usage: try [--wait] [--json]  (the job is read from stdin)"),
        }
    }
    ExecCommand::Try { wait, json }
}

fn parse_watch(args: &[String]) -> ExecCommand {
    let mut builders = Vec::new();
    let (mut follow, mut json, mut since) = (false, false, None);
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "-f" | "--follow" => follow = true,
            "--json" => json = true,
            "--since" => match rest.next().and_then(|value| parse_resume(value)) {
                Some(resume) => since = Some(resume),
                None => return usage("watch: --since needs EPOCH:SEQ (from the last event seen)"),
            },
            "-b" | "--builder" => match rest.next() {
                Some(name) => builders.push(name.clone()),
                None => return usage("watch: -b needs a builder name"),
            },
            flag if flag.starts_with('-') => {
                return ExecCommand::Usage {
                    message: format!(
                        "watch: unknown option '{flag}' (usage: watch [--follow] [--json] [--since EPOCH:SEQ] [BUILDER...])"
                    ),
                };
            }
            name => builders.push(name.to_string()),
        }
    }
    ExecCommand::Watch {
        builders,
        follow,
        json,
        since,
    }
}

fn parse_resume(value: &str) -> Option<Resume> {
    let (epoch, seq) = value.split_once(':')?;
    let seq = seq.parse().ok()?;
    (!epoch.is_empty()).then(|| Resume {
        epoch: epoch.to_string(),
        seq,
    })
}

fn parse_stop(args: &[String]) -> ExecCommand {
    const USAGE: &str = "usage: stop BUILDER [BUILD_NUMBER] --reason TEXT";
    let mut positional = Vec::new();
    let mut reason = None;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if arg == "--reason" {
            match rest.next() {
                Some(text) => reason = Some(text.clone()),
                None => return usage(USAGE),
            }
        } else if let Some(text) = arg.strip_prefix("--reason=") {
            reason = Some(text.to_string());
        } else if arg.starts_with('-') {
            return usage(USAGE);
        } else {
            positional.push(arg.clone());
        }
    }
    let (builder, build) = match positional.as_slice() {
        [builder] => (builder.clone(), None),
        [builder, number] => match number.parse::<i64>() {
            Ok(number) if number > 0 => (builder.clone(), Some(number)),
            _ => {
                return ExecCommand::Usage {
                    message: format!("stop: '{number}' is not a build number ({USAGE})"),
                };
            }
        },
        _ => return usage(USAGE),
    };
    match reason {
        Some(reason) if !reason.trim().is_empty() => ExecCommand::Stop {
            builder,
            build,
            reason,
        },
        _ => usage("stop: --reason TEXT is required (it is recorded with the build)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(matches!(
            parse("watch --since 42"),
            ExecCommand::Usage { .. }
        ));
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
            parse("stop linux x --reason r"),
            ExecCommand::Usage { .. }
        ));
        assert!(matches!(
            parse("stop linux 0 --reason r"),
            ExecCommand::Usage { .. }
        ));
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
