//! What people say to the bot, parsed into a [`BotCommand`] (pure), and the help texts. In a
//! channel the bot answers only lines addressed to it (`buildbot: status`); in a private message
//! every line is a command. A line that is not a command gets a one-line pointer to `help`.

use crate::master::config::NotifyEvent;

/// A command to the bot, with its arguments checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BotCommand {
    Help {
        topic: Option<String>,
    },
    Status {
        builder: Option<String>,
    },
    Last {
        builder: String,
    },
    Watch {
        builder: String,
    },
    /// `notify` alone lists what this channel or user hears about.
    Notify {
        change: Option<(bool, Vec<NotifyEvent>)>,
    },
    Force {
        builder: String,
        branch: Option<String>,
        revision: Option<String>,
        reason: String,
    },
    Stop {
        builder: String,
        number: Option<i64>,
        reason: String,
    },
    Queue {
        builder: String,
    },
    Version,
    Link {
        code: String,
    },
    /// A known command used wrongly: the message and the command's usage.
    Usage {
        command: &'static str,
        message: String,
    },
    Unknown {
        word: String,
    },
}

/// One command's help: its usage line and what it does.
pub struct Help {
    pub name: &'static str,
    pub usage: &'static str,
    pub what: &'static str,
}

pub const HELP: &[Help] = &[
    Help {
        name: "status",
        usage: "status [BUILDER]",
        what: "what each builder (or BUILDER) is doing: idle, building #N (step) with its ETA, or offline; and its queue",
    },
    Help {
        name: "last",
        usage: "last BUILDER",
        what: "the last finished build of BUILDER: result, how long ago, its page",
    },
    Help {
        name: "watch",
        usage: "watch BUILDER",
        what: "say here when BUILDER's running build finishes",
    },
    Help {
        name: "notify",
        usage: "notify [on|off EVENT...]",
        what: "what this channel (or you, in private) hears about; events: started, finished, success, failure, exception, interrupted, fixed, broken",
    },
    Help {
        name: "force",
        usage: "force BUILDER REASON... | force BUILDER [BRANCH [REVISION]] -- REASON...",
        what: "queue a build of BUILDER (needs a linked nick with the right to force)",
    },
    Help {
        name: "stop",
        usage: "stop build BUILDER [N] REASON...",
        what: "interrupt BUILDER's running build (number N if several); who and why are recorded (needs a linked nick with the right to stop)",
    },
    Help {
        name: "queue",
        usage: "queue BUILDER",
        what: "BUILDER's waiting requests, with when each should start",
    },
    Help {
        name: "version",
        usage: "version",
        what: "the master's version",
    },
    Help {
        name: "link",
        usage: "link CODE",
        what: "in a private message: bind your nick to the unix user who ran `ssh MASTER irc-link`",
    },
    Help {
        name: "help",
        usage: "help [COMMAND]",
        what: "the commands, or one command's usage",
    },
];

/// The answer to `help` and `help CMD`.
pub fn help_lines(topic: Option<&str>) -> Vec<String> {
    match topic {
        None => vec![format!(
            "commands: {} (say help COMMAND for one)",
            HELP.iter()
                .map(|help| help.name)
                .collect::<Vec<_>>()
                .join(", ")
        )],
        Some(topic) => match HELP
            .iter()
            .find(|help| help.name.eq_ignore_ascii_case(topic))
        {
            Some(help) => vec![format!("usage: {} -- {}", help.usage, help.what)],
            None => vec![format!("no command '{topic}'; say help for the list")],
        },
    }
}

/// The text after `NICK:` or `NICK,` when a channel line is addressed to `nick` (IRC case
/// rules), else none.
pub fn addressed_to<'a>(line: &'a str, nick: &str) -> Option<&'a str> {
    let line = line.trim_start();
    let head = line.get(..nick.len())?;
    if crate::master::irc_links::fold_nick(head) != crate::master::irc_links::fold_nick(nick) {
        return None;
    }
    let rest = &line[nick.len()..];
    let rest = rest.strip_prefix([':', ','])?;
    Some(rest.trim())
}

fn usage(command: &'static str, message: &str) -> BotCommand {
    BotCommand::Usage {
        command,
        message: message.to_string(),
    }
}

/// Parses one command line (already stripped of the bot's nick).
pub fn parse(line: &str) -> BotCommand {
    // Control characters (colours, CTCP, NUL) are never part of a command.
    let cleaned: String = line
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let words: Vec<&str> = cleaned.split_whitespace().collect();
    let Some((first, args)) = words.split_first() else {
        return BotCommand::Help { topic: None };
    };
    let name = first.to_ascii_lowercase();
    let one_builder = |command: &'static str| match args {
        [builder] => Ok(builder.to_string()),
        [] => Err(usage(command, "which builder?")),
        _ => Err(usage(command, "one builder only")),
    };
    match name.as_str() {
        "help" | "commands" => BotCommand::Help {
            topic: args.first().map(|topic| topic.to_string()),
        },
        "status" => match args {
            [] => BotCommand::Status { builder: None },
            [builder] => BotCommand::Status {
                builder: Some(builder.to_string()),
            },
            _ => usage("status", "one builder at most"),
        },
        "last" => {
            one_builder("last").map_or_else(|err| err, |builder| BotCommand::Last { builder })
        }
        "watch" => {
            one_builder("watch").map_or_else(|err| err, |builder| BotCommand::Watch { builder })
        }
        "queue" => {
            one_builder("queue").map_or_else(|err| err, |builder| BotCommand::Queue { builder })
        }
        "version" => BotCommand::Version,
        "link" => match args {
            [code] => BotCommand::Link {
                code: code.to_string(),
            },
            _ => usage(
                "link",
                "say link CODE, with the code `ssh MASTER irc-link` printed",
            ),
        },
        "notify" => parse_notify(args),
        "force" => parse_force(args),
        "stop" => parse_stop(args),
        _ => BotCommand::Unknown {
            word: first.chars().take(40).collect(),
        },
    }
}

fn parse_notify(args: &[&str]) -> BotCommand {
    let Some((switch, events)) = args.split_first() else {
        return BotCommand::Notify { change: None };
    };
    let on = match switch.to_ascii_lowercase().as_str() {
        "on" => true,
        "off" => false,
        _ => return usage("notify", "say notify on EVENT... or notify off EVENT..."),
    };
    if events.is_empty() {
        return usage("notify", "which events?");
    }
    let mut parsed = Vec::new();
    for word in events {
        if word.eq_ignore_ascii_case("all") {
            parsed.extend(NotifyEvent::ALL);
            continue;
        }
        match NotifyEvent::parse(word) {
            Some(event) => parsed.push(event),
            None => {
                return BotCommand::Usage {
                    command: "notify",
                    message: format!(
                        "unknown event '{}'",
                        word.chars().take(40).collect::<String>()
                    ),
                };
            }
        }
    }
    BotCommand::Notify {
        change: Some((on, parsed)),
    }
}

fn parse_force(args: &[&str]) -> BotCommand {
    // `force build BUILDER ...` as in Buildbot's bot.
    let args = match args {
        [first, rest @ ..] if first.eq_ignore_ascii_case("build") && !rest.is_empty() => rest,
        _ => args,
    };
    let Some((builder, rest)) = args.split_first() else {
        return usage("force", "which builder?");
    };
    let (source, reason): (&[&str], &[&str]) = match rest.iter().position(|word| *word == "--") {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (&[], rest),
    };
    if source.len() > 2 {
        return usage("force", "at most BRANCH and REVISION before --");
    }
    if reason.is_empty() {
        return usage(
            "force",
            "a reason is required (it is recorded with the build)",
        );
    }
    BotCommand::Force {
        builder: builder.to_string(),
        branch: source.first().map(|branch| branch.to_string()),
        revision: source.get(1).map(|revision| revision.to_string()),
        reason: reason.join(" "),
    }
}

fn parse_stop(args: &[&str]) -> BotCommand {
    let args = match args {
        [first, rest @ ..] if first.eq_ignore_ascii_case("build") => rest,
        _ => args,
    };
    let Some((builder, rest)) = args.split_first() else {
        return usage("stop", "which builder?");
    };
    let (number, reason) = match rest.split_first() {
        Some((word, reason)) if word.chars().all(|c| c.is_ascii_digit()) => {
            match word.parse::<i64>() {
                Ok(number) if number > 0 => (Some(number), reason),
                _ => return usage("stop", "a build number counts from 1"),
            }
        }
        _ => (None, rest),
    };
    if reason.is_empty() {
        return usage(
            "stop",
            "a reason is required (it is recorded with the build)",
        );
    }
    BotCommand::Stop {
        builder: builder.to_string(),
        number,
        reason: reason.join(" "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addressing_in_a_channel() {
        assert_eq!(addressed_to("buildbot: status", "buildbot"), Some("status"));
        assert_eq!(
            addressed_to("BuildBot,  last linux", "buildbot"),
            Some("last linux")
        );
        assert_eq!(addressed_to("buildbotx: status", "buildbot"), None);
        assert_eq!(addressed_to("hello buildbot", "buildbot"), None);
        assert_eq!(addressed_to("bu", "buildbot"), None);
        assert_eq!(addressed_to("é", "buildbot"), None);
    }

    #[test]
    fn commands_and_their_arguments() {
        assert_eq!(parse("status"), BotCommand::Status { builder: None });
        assert_eq!(
            parse("STATUS linux"),
            BotCommand::Status {
                builder: Some("linux".into())
            }
        );
        assert_eq!(
            parse("force linux the tests are flaky"),
            BotCommand::Force {
                builder: "linux".into(),
                branch: None,
                revision: None,
                reason: "the tests are flaky".into()
            }
        );
        assert_eq!(
            parse("force build linux release abc123 -- check the release"),
            BotCommand::Force {
                builder: "linux".into(),
                branch: Some("release".into()),
                revision: Some("abc123".into()),
                reason: "check the release".into()
            }
        );
        assert_eq!(
            parse("stop build linux 7 wrong branch"),
            BotCommand::Stop {
                builder: "linux".into(),
                number: Some(7),
                reason: "wrong branch".into()
            }
        );
        assert_eq!(
            parse("stop linux oops"),
            BotCommand::Stop {
                builder: "linux".into(),
                number: None,
                reason: "oops".into()
            }
        );
        assert_eq!(
            parse("notify on failure FIXED"),
            BotCommand::Notify {
                change: Some((true, vec![NotifyEvent::Failure, NotifyEvent::Fixed]))
            }
        );
    }

    #[test]
    fn broken_lines_are_usage_or_unknown_never_a_panic() {
        for line in [
            "force",
            "force linux",
            "force linux a b c -- r",
            "force linux main --",
            "stop build",
            "stop linux 7",
            "stop linux 0 r",
            "stop linux 99999999999999999999999 r",
            "last",
            "last a b",
            "notify maybe",
            "notify on",
            "notify on sometimes",
            "link",
        ] {
            assert!(
                matches!(parse(line), BotCommand::Usage { .. }),
                "{line}: {:?}",
                parse(line)
            );
        }
        assert_eq!(
            parse("\u{1}VERSION\u{1}"),
            BotCommand::Version,
            "control characters are spaces"
        );
        assert!(matches!(
            parse("frobnicate now"),
            BotCommand::Unknown { .. }
        ));
        assert_eq!(parse("   "), BotCommand::Help { topic: None });
    }

    #[test]
    fn every_command_has_help() {
        for name in [
            "status", "last", "watch", "notify", "force", "stop", "queue", "version", "link",
            "help",
        ] {
            let lines = help_lines(Some(name));
            assert!(lines[0].starts_with("usage: "), "{name}: {lines:?}");
        }
        assert!(help_lines(None)[0].contains("status, last, watch"));
    }
}
