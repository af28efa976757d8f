//! Parsing the command string a client sent into an [`ExecCommand`] with clap, as the CLI
//! parses its own arguments. Pure; each command's arguments and what it does live in its own
//! file beside this one (and, below them, `master::control`).
//!
//! The command string arrives as one line (OpenSSH joins the words after the host with single
//! spaces), so it is split with POSIX shell quoting rules, as a shell on a real sshd would.

use clap::Parser;

use crate::sshd::cmd::Command;

/// What a client asked the master to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecCommand {
    Run(Command),
    /// A command we do not know; reported with exit status 127.
    Unknown {
        name: String,
    },
    /// A command we know, used wrongly; reported with exit status 2.
    Usage {
        message: String,
    },
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
    match Command::try_parse_from(&words) {
        Ok(command) => ExecCommand::Run(command),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::ForceArgs;
    use crate::sshd::cmd::{
        Cancel, Force, Help, IrcLink, PauseSlave, Rebuild, Resume, Sendchange, Stop, Try,
        Tryserver, Watch,
    };

    fn run(command: Command) -> ExecCommand {
        ExecCommand::Run(command)
    }

    fn stop(builder: &str, build: Option<i64>, reason: &[&str]) -> ExecCommand {
        run(Command::Stop(Stop {
            builder: builder.into(),
            build,
            reason: reason.iter().map(ToString::to_string).collect(),
            json: false,
        }))
    }

    fn is_usage(parsed: ExecCommand) -> bool {
        matches!(parsed, ExecCommand::Usage { .. })
    }

    /// Regression (issue 15): `ssh master stop B 4 --reason wrong branch`, as docs/try.md shows
    /// it, was a usage error; ssh joins the words into one line, so quotes cannot be required.
    #[test]
    fn a_reason_of_unquoted_words() {
        assert_eq!(
            parse("stop linux 4 --reason wrong branch"),
            stop("linux", Some(4), &["wrong", "branch"])
        );
        assert_eq!(
            parse("stop linux --reason wrong branch"),
            stop("linux", None, &["wrong", "branch"])
        );
        let ExecCommand::Run(Command::Force(force)) =
            parse("force linux --reason nightly re-run please --property a=1")
        else {
            panic!("force parses");
        };
        assert_eq!(force.args.reason(), "nightly re-run please");
        assert_eq!(
            force.args.properties().get("a").map(String::as_str),
            Some("1")
        );
        let ExecCommand::Run(Command::Rebuild(rebuild)) =
            parse("rebuild linux 3 --reason flaky test")
        else {
            panic!("rebuild parses");
        };
        assert_eq!(rebuild.reason(), "flaky test");
        let ExecCommand::Run(Command::Rebuild(rebuild)) = parse("rebuild linux 3") else {
            panic!("rebuild parses");
        };
        assert_eq!(rebuild.reason(), "rebuild requested");
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
                run(Command::Tryserver(Tryserver {
                    jobdir: "jobdir".into()
                })),
                "{line}"
            );
        }
        assert!(is_usage(parse("buildbot tryserver")));
        assert!(is_usage(parse("buildbot tryserver --jobdir")));
        assert!(is_usage(parse("buildbot tryserver --jobdir=")));
        assert!(is_usage(parse("buildbot tryserver --x")));
    }

    #[test]
    fn our_commands() {
        assert_eq!(
            parse("try"),
            run(Command::Try(Try {
                wait: false,
                json: false,
                tail: crate::status::DEFAULT_TAIL_LINES,
            }))
        );
        assert_eq!(
            parse("try --wait --json --tail 0"),
            run(Command::Try(Try {
                wait: true,
                json: true,
                tail: 0,
            }))
        );
        let ExecCommand::Run(Command::Watch(watch)) = parse("watch") else {
            panic!("watch parses");
        };
        assert!(watch.builders().is_empty() && !watch.follow && !watch.json);
        assert_eq!(watch.since, None);
        let ExecCommand::Run(Command::Watch(watch)) =
            parse("watch --follow --json --since 3fa:42 linux")
        else {
            panic!("watch parses");
        };
        assert_eq!(watch.builders(), ["linux"]);
        assert!(watch.follow && watch.json);
        assert_eq!(
            watch.since,
            Some(Resume {
                epoch: "3fa".into(),
                seq: 42
            })
        );
        match parse("watch --since 42") {
            ExecCommand::Usage { message } => {
                assert!(message.contains("needs EPOCH:SEQ"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        let ExecCommand::Run(Command::Watch(watch)) = parse("watch linux -b mac") else {
            panic!("watch parses");
        };
        assert_eq!(watch.builders(), ["linux", "mac"]);
        let _: Option<Watch> = None;
        assert_eq!(parse("web-login"), run(Command::WebLogin));
        assert_eq!(
            parse("irc-link"),
            run(Command::IrcLink(IrcLink { list: false }))
        );
        assert_eq!(
            parse("irc-link --list"),
            run(Command::IrcLink(IrcLink { list: true }))
        );
        assert_eq!(
            parse("sendchange"),
            run(Command::Sendchange(Sendchange { json: false }))
        );
        assert_eq!(
            parse("unpause-slave s1"),
            run(Command::UnpauseSlave(PauseSlave { name: "s1".into() }))
        );
        assert_eq!(parse("slave"), run(Command::Slave));
        assert_eq!(parse("help"), run(Command::Help(Help { command: None })));
        assert_eq!(
            parse("help stop"),
            run(Command::Help(Help {
                command: Some("stop".into())
            }))
        );
        assert_eq!(
            parse("stop linux 7 --reason 'wrong branch'"),
            stop("linux", Some(7), &["wrong branch"])
        );
        assert!(is_usage(parse("stop linux")));
        assert!(is_usage(parse("stop linux 7 --reason")));
        assert!(is_usage(parse("stop linux x --reason r")));
        assert!(is_usage(parse("stop linux 0 --reason r")));
    }

    #[test]
    fn force_rebuild_and_cancel() {
        assert_eq!(
            parse(
                "force linux --branch release --revision abc123 --reason 'nightly check' --property a=1 --property b=x=y --json"
            ),
            run(Command::Force(Force {
                args: ForceArgs {
                    builder: "linux".into(),
                    branch: Some("release".into()),
                    revision: Some("abc123".into()),
                    reason: vec!["nightly check".into()],
                    properties: vec![("a".into(), "1".into()), ("b".into(), "x=y".into())],
                    hold: false,
                },
                json: true,
                wait: false,
            }))
        );
        assert_eq!(
            parse("rebuild linux 7"),
            run(Command::Rebuild(Rebuild {
                builder: "linux".into(),
                build: 7,
                reason: vec!["rebuild requested".into()],
                json: false,
                wait: false,
            }))
        );
        assert_eq!(
            parse("cancel linux 12 --json"),
            run(Command::Cancel(Cancel {
                builder: "linux".into(),
                request_id: Some(12),
                all: false,
                user: None,
                json: true,
            }))
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
    fn land() {
        use crate::sshd::cmd::Land;
        assert_eq!(
            parse("land"),
            run(Command::Land(Land {
                onto: "main".into(),
                builders: Vec::new(),
                ff_only: false,
                wait: false,
                cancel: None,
            }))
        );
        assert_eq!(
            parse("land --onto release/2 -b linux -b docs --ff-only --wait"),
            run(Command::Land(Land {
                onto: "release/2".into(),
                builders: vec!["linux".into(), "docs".into()],
                ff_only: true,
                wait: true,
                cancel: None,
            }))
        );
        let ExecCommand::Run(Command::Land(land)) = parse("land --onto main --cancel") else {
            panic!("land --cancel parses");
        };
        assert_eq!(land.cancel, Some(0));
        let ExecCommand::Run(Command::Land(land)) = parse("land --cancel 7") else {
            panic!("land --cancel ID parses");
        };
        assert_eq!(land.cancel, Some(7));
        assert!(is_usage(parse("land --onto")));
        assert!(is_usage(parse("land --cancel x")));
    }

    #[test]
    fn unknown_and_broken_commands() {
        assert_eq!(
            parse("rm -rf /"),
            ExecCommand::Unknown { name: "rm".into() }
        );
        assert_eq!(parse(""), ExecCommand::Unknown { name: "".into() });
        assert!(is_usage(parse("watch 'unterminated")));
    }
}
