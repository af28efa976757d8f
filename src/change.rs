//! A change as it is sent to the master (`ssh master sendchange`, one JSON object on stdin):
//! the codec and its checks, shared by the master that reads it and the `buildbot sendchange`
//! client and git hook that write it. Bottom layer: pure, no I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The largest change accepted, in bytes of JSON.
pub const MAX_CHANGE_BYTES: usize = 1024 * 1024;
/// The most files one change may list.
pub const MAX_FILES: usize = 10_000;

/// One change: a revision that appeared on a branch of a repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeSpec {
    pub repository: String,
    pub branch: String,
    pub revision: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub who: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comments: Option<String>,
    #[serde(default)]
    pub files: Vec<String>,
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// Why a change was refused; each message is the one line the sender sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    #[error("the change is larger than {MAX_CHANGE_BYTES} bytes")]
    TooLarge,
    #[error("the change is not valid JSON of the expected shape: {}", one_line(.0))]
    BadJson(String),
    #[error("the change has no {0}")]
    Missing(&'static str),
    #[error(
        "the revision '{}' is not a commit id (40 or 64 hex digits, or a shorter prefix of at least 7)",
        one_line(.0)
    )]
    BadRevision(String),
    #[error("the branch name '{}' is not one git allows", one_line(.0))]
    BadBranch(String),
    #[error("the change lists more than {MAX_FILES} files")]
    TooManyFiles,
    #[error("the property name '{}' is not made of letters, digits and _", one_line(.0))]
    BadPropertyName(String),
    #[error("the property '{0}' is set by the master itself; name yours otherwise")]
    MasterProperty(String),
}

/// A value from the sender, fit to quote in a one-line message: control characters (a newline
/// in a revision, an escape sequence in a field name) are shown escaped, never sent raw.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Reads and checks one change.
pub fn decode(bytes: &[u8]) -> Result<ChangeSpec, ChangeError> {
    if bytes.len() > MAX_CHANGE_BYTES {
        return Err(ChangeError::TooLarge);
    }
    let change: ChangeSpec = serde_json::from_slice(bytes).map_err(|err| {
        // serde_json's message names the line and column; one line is enough.
        ChangeError::BadJson(err.to_string())
    })?;
    check(&change)?;
    Ok(change)
}

/// The checks a change must pass, for senders that build one too.
pub fn check(change: &ChangeSpec) -> Result<(), ChangeError> {
    if change.repository.trim().is_empty() {
        return Err(ChangeError::Missing("repository"));
    }
    if change.branch.trim().is_empty() {
        return Err(ChangeError::Missing("branch"));
    }
    if change.revision.trim().is_empty() {
        return Err(ChangeError::Missing("revision"));
    }
    if !is_commit_id(&change.revision) {
        return Err(ChangeError::BadRevision(change.revision.clone()));
    }
    if !is_branch_name(&change.branch) {
        return Err(ChangeError::BadBranch(change.branch.clone()));
    }
    if change.files.len() > MAX_FILES {
        return Err(ChangeError::TooManyFiles);
    }
    if let Some(name) = change
        .properties
        .keys()
        .find(|name| !is_property_name(name))
    {
        return Err(ChangeError::BadPropertyName(name.clone()));
    }
    if let Some(name) = change
        .properties
        .keys()
        .find(|name| is_master_property(name))
    {
        return Err(ChangeError::MasterProperty(name.clone()));
    }
    Ok(())
}

fn is_commit_id(revision: &str) -> bool {
    (7..=64).contains(&revision.len()) && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What `git check-ref-format --branch` would take, for the names that matter here: no
/// spaces, control characters, `..`, `~^:?*[\`, leading `-` or `/`, trailing `/` or `.lock`.
fn is_branch_name(branch: &str) -> bool {
    !branch.starts_with(['-', '/'])
        && !branch.ends_with(['/', '.'])
        && !branch.ends_with(".lock")
        && !branch.contains("..")
        && !branch.contains("//")
        && !branch.contains("@{")
        && branch.len() <= 255
        && branch.chars().all(|c| {
            !c.is_control() && !matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\')
        })
}

/// The property the master gives a dependent scheduler's build: the upstream firing's job, whose
/// artifacts `fetch_artifacts = [{ from = "upstream" }]` puts into the build.
pub const UPSTREAM_JOB_PROPERTY: &str = "upstream_job";
/// The property that marks a bisection's build (its value: the bisection's id).
pub const BISECT_PROPERTY: &str = "bisect";

/// Whether only the master may set `name`: a user's try, force or change that sets one would
/// make its build fetch another job's artifacts or report into a bisection.
pub fn is_master_property(name: &str) -> bool {
    name == UPSTREAM_JOB_PROPERTY || name == BISECT_PROPERTY
}

/// Property names become environment variable names (`BUILDBOT_PROP_<NAME>`).
pub fn is_property_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"repository": "/srv/git/p.git", "branch": "main",
        "revision": "0123456789abcdef0123456789abcdef01234567", "who": "Alice <a@example.org>",
        "comments": "fix", "files": ["src/a.rs"], "properties": {"ticket": "42"}}"#;

    #[test]
    fn a_good_change_reads_back() {
        let change = decode(GOOD.as_bytes()).expect("good");
        assert_eq!(change.branch, "main");
        assert_eq!(change.files, vec!["src/a.rs".to_string()]);
        let again = decode(&serde_json::to_vec(&change).expect("encodes")).expect("round trip");
        assert_eq!(again, change);
    }

    #[test]
    fn bad_changes_are_refused_with_the_reason() {
        let with = |field: &str, value: &str| {
            let mut json: serde_json::Value = serde_json::from_str(GOOD).expect("json");
            json[field] = serde_json::from_str(value).expect("value");
            decode(json.to_string().as_bytes())
        };
        assert_eq!(
            with("revision", "\"\""),
            Err(ChangeError::Missing("revision"))
        );
        assert!(matches!(
            with("revision", "\"HEAD~1\""),
            Err(ChangeError::BadRevision(_))
        ));
        assert!(matches!(
            with("branch", "\"a..b\""),
            Err(ChangeError::BadBranch(_))
        ));
        assert!(matches!(
            with("branch", "\"-rf\""),
            Err(ChangeError::BadBranch(_))
        ));
        assert!(matches!(
            with("properties", r#"{"a b": "x"}"#),
            Err(ChangeError::BadPropertyName(_))
        ));
        assert_eq!(
            with("properties", r#"{"upstream_job": "try-1"}"#),
            Err(ChangeError::MasterProperty("upstream_job".into()))
        );
        assert!(matches!(
            with("surprise", "1"),
            Err(ChangeError::BadJson(_))
        ));
        assert!(matches!(decode(b"not json"), Err(ChangeError::BadJson(_))));
        assert!(
            matches!(decode(b"{}"), Err(ChangeError::BadJson(_))),
            "revision is required"
        );
        assert_eq!(
            decode(&vec![b' '; MAX_CHANGE_BYTES + 1]),
            Err(ChangeError::TooLarge)
        );
        assert!(matches!(
            decode(b"{\"repository\": 1}"),
            Err(ChangeError::BadJson(_))
        ));
    }

    #[test]
    fn refusals_stay_on_one_line_whatever_the_sender_put_in_them() {
        let revision =
            r#"{"repository": "/r", "branch": "main", "revision": "HEAD\nsecond\u001b[2J"}"#;
        let branch = r#"{"repository": "/r", "branch": "a\nb", "revision": "0123456"}"#;
        let field = r#"{"repository": "/r", "branch": "main", "revision": "0123456", "x\ny": 1}"#;
        let property = r#"{"repository": "/r", "branch": "main", "revision": "0123456", "properties": {"a\nb": ""}}"#;
        for json in [revision, branch, field, property] {
            let message = decode(json.as_bytes()).expect_err(json).to_string();
            assert!(
                !message.chars().any(char::is_control),
                "{json}: {message:?}"
            );
        }
        let message = decode(revision.as_bytes()).expect_err("bad").to_string();
        assert!(message.contains(r"'HEAD\nsecond\u{1b}[2J'"), "{message}");
    }
}
