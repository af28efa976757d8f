//! What a notification says: the mail's subject and short plain body (what failed, the
//! failing step, what to do next, the URL), and the webhook's JSON (the event as `/api/events`
//! has it, plus the notification's word and the URL).

use std::collections::BTreeSet;

use crate::master::config::{NotifierEvent, TRY_USER, plain_address};
use crate::master::control::Control;
use crate::master::store::{BuildDetail, BuildRef};
use crate::status::{BuildEvent, BuildResult, SequencedEvent};

/// One event, ready to be told.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// Names the event in the outbox: the same on every master and after a restart.
    pub key: String,
    event: SequencedEvent,
    url: String,
    headline: String,
    lines: Vec<String>,
    authors: Vec<String>,
    culprit_author: Option<String>,
    /// Who asked for the build or the landing (the authenticated unix user, or the spool
    /// file's owner): `try_user`.
    submitter: Option<String>,
    /// A try build of a patch (not a commit of the branch).
    pub patch_build: bool,
}

/// The address in `Name <address>` or a bare address; none when it is not one.
pub fn address_in(who: &str) -> Option<String> {
    let address = match (who.rfind('<'), who.rfind('>')) {
        (Some(open), Some(close)) if open < close => &who[open + 1..close],
        _ => who.trim(),
    };
    plain_address(address).then(|| address.to_string())
}

/// One line, at most `max` characters, no control characters (a subject must not carry a
/// header of its own).
fn one_line(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or_default();
    let mut clean: String = line.chars().filter(|c| !c.is_control()).take(max).collect();
    if line.chars().count() > max {
        clean.push('…');
    }
    clean
}

/// The try user's address: a user name that is an address already, else `USER@domain` when
/// the user name can be the local part of one (a unix name: letters, digits, `._-`).
fn submitter_address(user: &str, domain: Option<&str>) -> Option<String> {
    if plain_address(user) {
        return Some(user.to_string());
    }
    let unix_name = !user.is_empty()
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    let address = format!("{user}@{}", domain?);
    (unix_name && plain_address(&address)).then_some(address)
}

fn short(revision: &str) -> &str {
    revision.get(..12).unwrap_or(revision)
}

pub async fn render(
    control: &Control,
    sequenced: &SequencedEvent,
    previous: Option<BuildResult>,
) -> anyhow::Result<Rendered> {
    let event = &sequenced.event;
    let kind = super::event_type(event);
    let value = serde_json::to_value(event)?;
    let field = |name: &str| {
        value
            .get(name)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    match event {
        BuildEvent::BuildFinished {
            builder,
            number,
            result,
            reason,
            ..
        } => {
            let detail = control
                .store()
                .build(BuildRef::Number {
                    builder: builder.clone(),
                    number: *number,
                })
                .await?;
            let url = control.build_url(builder, *number);
            let mut lines = Vec::new();
            let mut headline = format!("{builder} build {number}: {result}");
            let mut authors = Vec::new();
            let patch_build = detail.as_ref().is_some_and(|detail| detail.has_patch);
            if let Some(detail) = &detail {
                describe_build(detail, &mut headline, &mut lines);
                authors = authors_of(detail);
            }
            if let Some(reason) = reason {
                lines.push(format!("Reason: {}", one_line(reason, 200)));
            }
            if let Some(previous) = previous {
                lines.push(format!("The build before it: {previous}."));
            }
            Ok(Rendered {
                key: crate::master::store::build_event_key(builder, *number),
                event: sequenced.clone(),
                url,
                headline,
                lines,
                authors,
                culprit_author: None,
                submitter: detail.as_ref().and_then(|detail| detail.who.clone()),
                patch_build,
            })
        }
        _ => {
            let builder = field("builder");
            let url = if builder.is_empty() {
                control.web_url().to_string()
            } else {
                control.builder_url(&builder)
            };
            let key_part = ["bisect", "id", "number", "culprit", "revision"]
                .iter()
                .find_map(|name| match value.get(*name) {
                    Some(serde_json::Value::String(s)) => Some(s.clone()),
                    Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                    _ => None,
                });
            let key = match key_part {
                Some(part) => format!("{kind}:{builder}:{part}"),
                // No stable name of its own: its place in the log (shared by a cluster).
                None => format!("{kind}:{}:{}", control.events_epoch(), sequenced.seq),
            };
            let text = crate::status::text::describe_event(event);
            let author = field("author");
            Ok(Rendered {
                key,
                event: sequenced.clone(),
                url,
                headline: if builder.is_empty() {
                    one_line(&text, 200)
                } else {
                    one_line(&format!("{builder}: {text}"), 200)
                },
                lines: Vec::new(),
                authors: Vec::new(),
                culprit_author: address_in(&author),
                // A landing's user; a bisection's culprit has none (the master asked for it).
                submitter: matches!(event, BuildEvent::Landed { .. }).then(|| field("who")),
                patch_build: false,
            })
        }
    }
}

fn describe_build(detail: &BuildDetail, headline: &mut String, lines: &mut Vec<String>) {
    let failed = detail.steps.iter().find(|step| {
        matches!(
            step.result,
            Some(BuildResult::Failure | BuildResult::Exception)
        )
    });
    if let Some(step) = failed {
        headline.push_str(&format!(" in step {}", one_line(&step.name, 60)));
        let summary = step.summary.as_deref().unwrap_or_default();
        lines.push(format!(
            "Failing step: {} ({}){}",
            one_line(&step.name, 80),
            step.result.map_or("", BuildResult::as_str),
            if summary.is_empty() {
                String::new()
            } else {
                format!(": {}", one_line(summary, 200))
            }
        ));
    }
    if let Some(branch) = &detail.branch {
        lines.push(format!("Branch: {}", one_line(branch, 120)));
    }
    if let Some(revision) = detail.revision.as_deref().or(detail.baserev.as_deref()) {
        lines.push(format!("Revision: {}", short(revision)));
    }
    if detail.has_patch {
        lines.push(format!(
            "A try build of a patch by {}.",
            one_line(detail.who.as_deref().unwrap_or("someone"), 80)
        ));
    }
    for change in detail.changes.iter().take(10) {
        lines.push(format!(
            "Change {} by {}: {}",
            short(&change.revision),
            one_line(change.who.as_deref().unwrap_or("unknown"), 80),
            one_line(change.comments.as_deref().unwrap_or_default(), 100)
        ));
    }
    if detail.changes.len() > 10 {
        lines.push(format!("… and {} more changes", detail.changes.len() - 10));
    }
}

fn authors_of(detail: &BuildDetail) -> Vec<String> {
    let mut seen = BTreeSet::new();
    detail
        .changes
        .iter()
        .filter_map(|change| address_in(change.who.as_deref()?))
        .filter(|address| seen.insert(address.clone()))
        .collect()
}

impl Rendered {
    /// The addresses `to` names: addresses as they are, `author` as the changes' authors,
    /// `culprit` as the culprit's author, `try_user` as who asked for it (a user name that is
    /// an address as it is, else `USER@user_domain`); each once.
    pub fn recipients(&self, to: &[String], user_domain: Option<&str>) -> Vec<String> {
        let mut seen = BTreeSet::new();
        let mut all = Vec::new();
        for entry in to {
            let found: Vec<String> = match entry.as_str() {
                "author" => self.authors.clone(),
                "culprit" => self.culprit_author.iter().cloned().collect(),
                TRY_USER => self
                    .submitter
                    .as_deref()
                    .and_then(|user| submitter_address(user, user_domain))
                    .into_iter()
                    .collect(),
                address => vec![address.to_string()],
            };
            for address in found {
                if seen.insert(address.to_ascii_lowercase()) {
                    all.push(address);
                }
            }
        }
        all
    }

    pub fn subject(&self, word: NotifierEvent) -> String {
        one_line(
            &format!("[buildbot] {} ({})", self.headline, word.as_str()),
            200,
        )
    }

    pub fn body(&self, word: NotifierEvent) -> String {
        let opening = match word {
            NotifierEvent::Broken => "A builder that was green is failing now.",
            NotifierEvent::Failure => "A build failed.",
            NotifierEvent::Fixed => "A builder that was failing is green again.",
            NotifierEvent::Landed => "A series was landed.",
            NotifierEvent::Culprit => "A bisection named the commit that broke a builder.",
        };
        let next = match word {
            NotifierEvent::Broken | NotifierEvent::Failure => {
                "What to do next: read the failing step's log on the build page below. If one of \
                 the changes above broke it, push a fix or a revert (check it first with \
                 `buildbot try`); if it failed for another reason, rebuild it from the page."
            }
            NotifierEvent::Fixed => "Nothing to do: this is to say it is over.",
            NotifierEvent::Landed => "Nothing to do: the target branch has the series.",
            NotifierEvent::Culprit => {
                "What to do next: look at that commit; revert it or push a fix (check it first \
                 with `buildbot try`)."
            }
        };
        let mut body = format!("{opening}\n\n{}\n", self.headline);
        for line in &self.lines {
            body.push_str(line);
            body.push('\n');
        }
        body.push('\n');
        body.push_str(next);
        body.push_str(&format!("\n\n{}\n", self.url));
        body
    }

    /// The webhook's body: the event as `/api/events` has it, with the notification's word and
    /// the URL.
    pub fn webhook_body(&self, word: NotifierEvent) -> String {
        let mut value = serde_json::to_value(&self.event).unwrap_or_default();
        if let Some(object) = value.as_object_mut() {
            object.insert("notification".into(), word.as_str().into());
            object.insert("url".into(), self.url.clone().into());
            object.insert("summary".into(), self.headline.clone().into());
        }
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_found_in_a_name_or_alone_or_not_at_all() {
        assert_eq!(
            address_in("Alice Liddell <alice@example.org>").as_deref(),
            Some("alice@example.org")
        );
        assert_eq!(
            address_in("bob@example.org").as_deref(),
            Some("bob@example.org")
        );
        assert_eq!(address_in("alice"), None);
        assert_eq!(address_in("x <a@b\r\nBcc: evil@example.org>"), None);
    }

    fn rendered() -> Rendered {
        Rendered {
            key: "build:linux:2".into(),
            event: SequencedEvent {
                seq: 7,
                at: 1.5,
                event: BuildEvent::BuildFinished {
                    job_name: "j".into(),
                    builder: "linux".into(),
                    number: 2,
                    result: BuildResult::Failure,
                    reason: None,
                    will_retry: false,
                },
            },
            url: "http://ci/builders/linux/builds/2".into(),
            headline: "linux build 2: failure in step test".into(),
            lines: vec!["Failing step: test (failure): exit 1".into()],
            authors: vec!["alice@example.org".into(), "bob@example.org".into()],
            culprit_author: None,
            submitter: Some("carol".into()),
            patch_build: false,
        }
    }

    #[test]
    fn recipients_are_the_list_the_authors_and_each_once() {
        let to = ["ci@example.org", "author", "ALICE@example.org", "culprit"].map(String::from);
        assert_eq!(
            rendered().recipients(&to, None),
            ["ci@example.org", "alice@example.org", "bob@example.org"]
        );
    }

    #[test]
    fn the_try_user_is_mailed_at_the_user_domain() {
        let to = ["try_user", "carol@example.org"].map(String::from);
        assert_eq!(
            rendered().recipients(&to, Some("example.org")),
            ["carol@example.org"]
        );
        let mut rendered = rendered();
        rendered.submitter = Some("dave@elsewhere.org".into());
        assert_eq!(
            rendered.recipients(&to, Some("example.org")),
            ["dave@elsewhere.org", "carol@example.org"]
        );
        // Not a name an address can be made of, or no submitter (a bisection's build).
        rendered.submitter = Some("uid 1234".into());
        assert_eq!(
            rendered.recipients(&to, Some("example.org")),
            ["carol@example.org"]
        );
        rendered.submitter = None;
        assert_eq!(
            rendered.recipients(&to, Some("example.org")),
            ["carol@example.org"]
        );
    }

    #[test]
    fn the_mail_says_what_failed_what_to_do_and_where() {
        let rendered = rendered();
        assert_eq!(
            rendered.subject(NotifierEvent::Broken),
            "[buildbot] linux build 2: failure in step test (broken)"
        );
        let body = rendered.body(NotifierEvent::Broken);
        assert!(
            body.starts_with("A builder that was green is failing now.\n"),
            "{body}"
        );
        assert!(
            body.contains("Failing step: test (failure): exit 1\n"),
            "{body}"
        );
        assert!(body.contains("What to do next:"), "{body}");
        assert!(
            body.ends_with("http://ci/builders/linux/builds/2\n"),
            "{body}"
        );
        let hook: serde_json::Value =
            serde_json::from_str(&rendered.webhook_body(NotifierEvent::Broken)).expect("JSON");
        assert_eq!(hook["type"], "build_finished");
        assert_eq!(hook["seq"], 7);
        assert_eq!(hook["notification"], "broken");
        assert_eq!(hook["url"], "http://ci/builders/linux/builds/2");
    }

    #[test]
    fn a_subject_is_one_clean_line() {
        assert_eq!(one_line("fix\r\nBcc: x@y", 100), "fix");
        assert_eq!(one_line("a\u{7}b", 100), "ab");
        assert_eq!(one_line("abcdef", 3), "abc…");
    }
}
