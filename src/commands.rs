//! The master's SSH commands as both ends see them (bottom layer: `sshd` parses and answers
//! with these, `client` sends and reads them): the arguments of `force`, defined once; the
//! typed answer of `stop`, `force`, `rebuild`, `cancel` and `sendchange` with `--json`; the
//! sentences the master ends a connection with, which the client recognises; and the one
//! exit-code scheme of every client and SSH command.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::status::BuildResult;

/// Done (with `--wait`: every build succeeded or had warnings).
pub const EXIT_OK: u8 = 0;
/// Refused, not found, not finished, or (with `--wait`) a build that did not succeed.
pub const EXIT_FAILED: u8 = 1;
/// A usage mistake, or (the `buildbot` client) trouble reaching the master.
pub const EXIT_USAGE: u8 = 2;
/// (over SSH) a command the master does not know, as a shell says "not found".
pub const EXIT_UNKNOWN_COMMAND: u8 = 127;

/// What `force` builds, the same words for `buildbot force` and `ssh master force`.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct ForceArgs {
    /// The builder.
    pub builder: String,
    /// The branch to build (default: the builder's).
    #[arg(long)]
    pub branch: Option<String>,
    /// The revision to build (default: the branch's head).
    #[arg(long)]
    pub revision: Option<String>,
    /// Why: recorded with the build. The words after --reason need no quotes.
    // All the words up to the next flag: ssh joins the words of a command into one line, so
    // quotes would not survive anyway.
    #[arg(long, num_args = 1.., required = true, value_name = "TEXT", value_parser = non_empty)]
    pub reason: Vec<String>,
    /// A build property NAME=VALUE (repeatable).
    #[arg(long = "property", value_name = "NAME=VALUE", value_parser = parse_property)]
    pub properties: Vec<(String, String)>,
    /// Keep the build's directory on its slave when it ends, whatever its result, for
    /// `shell BUILDER N` (the property hold=1).
    #[arg(long)]
    pub hold: bool,
}

impl ForceArgs {
    pub fn reason(&self) -> String {
        self.reason.join(" ")
    }

    pub fn properties(&self) -> BTreeMap<String, String> {
        let mut properties: BTreeMap<String, String> = self.properties.iter().cloned().collect();
        if self.hold {
            properties.insert("hold".to_string(), "1".to_string());
        }
        properties
    }

    /// The words of `force` on the master's command line.
    pub fn to_words(&self) -> Vec<String> {
        let mut words = vec!["force".to_string(), self.builder.clone()];
        for (flag, value) in [("--branch", &self.branch), ("--revision", &self.revision)] {
            if let Some(value) = value {
                words.extend([flag.to_string(), value.clone()]);
            }
        }
        words.push("--reason".to_string());
        words.extend(self.reason.iter().cloned());
        for (name, value) in &self.properties {
            words.extend(["--property".to_string(), format!("{name}={value}")]);
        }
        if self.hold {
            words.push("--hold".to_string());
        }
        words
    }
}

pub fn parse_property(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err("a property is written NAME=VALUE".to_string()),
    }
}

pub fn non_empty(value: &str) -> Result<String, String> {
    if value.trim().is_empty() {
        return Err("must not be empty (it is recorded with the build)".to_string());
    }
    Ok(value.to_string())
}

/// Which action an [`Answer`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Force,
    Rebuild,
    Stop,
    Cancel,
    Sendchange,
}

/// The typed answer of `stop`, `force`, `rebuild`, `cancel` and `sendchange` with `--json`:
/// one JSON object on stdout. Fields that do not apply (or are not known yet) are left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builder: Option<String>,
    /// The request queued (force, rebuild) or cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<i64>,
    /// The name the request's events carry (force, rebuild): what `--wait` follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// The build, once it has a number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<i64>,
    /// The build's page, or the builder's while the build has no number yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The stopped build's result (none: it had not reported its end in time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<BuildResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_id: Option<i64>,
    /// `cancel BUILDER --all`: how many queued requests were dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled: Option<usize>,
}

impl Answer {
    pub fn new(action: Action) -> Answer {
        Answer {
            action,
            builder: None,
            request_id: None,
            job_name: None,
            number: None,
            url: None,
            result: None,
            change_id: None,
            cancelled: None,
        }
    }
}

impl std::fmt::Display for Answer {
    /// The one line a person reads: `queued as request 6 → linux #9, http://…`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let builder = self.builder.as_deref().unwrap_or("?");
        let build = match self.number {
            Some(number) => format!("{builder} #{number}"),
            None => builder.to_string(),
        };
        let url = self
            .url
            .as_ref()
            .map(|url| format!(", {url}"))
            .unwrap_or_default();
        match self.action {
            Action::Force | Action::Rebuild => {
                let what = if self.action == Action::Force {
                    "forced build"
                } else {
                    "rebuild"
                };
                let request = self.request_id.unwrap_or_default();
                write!(f, "{what} queued as request {request} → {build}{url}")
            }
            Action::Stop => match self.result {
                Some(result) => write!(f, "{build}: {result}{url}"),
                None => write!(f, "asked {build} to stop; it has not finished yet{url}"),
            },
            Action::Cancel => match self.cancelled {
                Some(1) => write!(f, "{builder}: 1 queued request cancelled"),
                Some(count) => write!(f, "{builder}: {count} queued requests cancelled"),
                None => write!(
                    f,
                    "{builder}: request {} cancelled",
                    self.request_id.unwrap_or_default()
                ),
            },
            Action::Sendchange => {
                write!(f, "change {} accepted", self.change_id.unwrap_or_default())
            }
        }
    }
}

/// The sentences the master ends a connection or a command with when the cause is its own,
/// so the client can name the cause of a failed ssh (whose exit status is 255 for all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Farewell {
    /// The master is stopping (disconnect reason, or a command's last line).
    ShuttingDown,
    /// A login the master refused, with its reason (the disconnect reason).
    LoginRefused(String),
}

const PREFIX: &str = "buildbot: ";
const SHUTTING_DOWN: &str = "the master is shutting down";

impl std::fmt::Display for Farewell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Farewell::ShuttingDown => write!(f, "{PREFIX}{SHUTTING_DOWN}"),
            Farewell::LoginRefused(reason) => write!(f, "{PREFIX}{reason}"),
        }
    }
}

/// What kind of [`Farewell`] a line of ssh's stderr carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FarewellKind {
    ShuttingDown,
    LoginRefused,
}

impl Farewell {
    /// Recognises a farewell in one line of ssh's stderr: as a disconnect reason
    /// (`Received disconnect from HOST port P:11: buildbot: ...`) or as a command's last line.
    pub fn recognise(line: &str) -> Option<FarewellKind> {
        if line.contains(&format!("{PREFIX}{SHUTTING_DOWN}")) {
            return Some(FarewellKind::ShuttingDown);
        }
        if line.contains("Received disconnect") && line.contains(PREFIX) {
            return Some(FarewellKind::LoginRefused);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn farewells_are_recognised_as_sent() {
        let shutting = Farewell::ShuttingDown.to_string();
        assert_eq!(
            Farewell::recognise(&shutting),
            Some(FarewellKind::ShuttingDown)
        );
        let disconnect = format!("Received disconnect from 127.0.0.1 port 2222:11: {shutting}");
        assert_eq!(
            Farewell::recognise(&disconnect),
            Some(FarewellKind::ShuttingDown)
        );
        let refused = Farewell::LoginRefused("no unix account bob on this master".into());
        let line = format!("Received disconnect from 127.0.0.1 port 2222:14: {refused}");
        assert_eq!(Farewell::recognise(&line), Some(FarewellKind::LoginRefused));
        assert_eq!(Farewell::recognise("Permission denied (publickey)."), None);
    }

    #[test]
    fn answers_read_as_one_line_and_round_trip() {
        let mut answer = Answer::new(Action::Force);
        answer.builder = Some("linux".into());
        answer.request_id = Some(6);
        answer.number = Some(9);
        answer.url = Some("http://ci:8010/builders/linux/builds/9".into());
        assert_eq!(
            answer.to_string(),
            "forced build queued as request 6 → linux #9, http://ci:8010/builders/linux/builds/9"
        );
        let json = serde_json::to_string(&answer).expect("encodes");
        assert!(!json.contains("change_id"), "{json}");
        let back: Answer = serde_json::from_str(&json).expect("decodes");
        assert_eq!(back, answer);
    }

    #[test]
    fn force_words_parse_back_into_the_same_arguments() {
        #[derive(clap::Parser)]
        #[command(no_binary_name = true)]
        enum Top {
            Force(ForceArgs),
        }
        use clap::Parser;
        let args = ForceArgs {
            builder: "linux".into(),
            branch: Some("main".into()),
            revision: None,
            reason: vec!["nightly".into(), "rerun".into()],
            properties: vec![("a".into(), "1=2".into())],
            hold: false,
        };
        let Top::Force(parsed) = Top::try_parse_from(args.to_words()).expect("parses");
        assert_eq!(parsed, args);
        assert_eq!(parsed.reason(), "nightly rerun");
    }
}
