//! The try job codec: Buildbot's job spec, netstring versions 1 to 6
//! (`../shared/reference/buildbot-try-format.md`), decoded and encoded as pure functions.
//!
//! Decoding is stricter than Buildbot where Buildbot is sloppy, so a broken job is refused with a
//! reason instead of half-read: the version must be 1..=6 written without leading zeros, nothing
//! may follow the job (Buildbot ignores extra netstrings and chokes on a newline), and v6 base64
//! must be valid. Encoding writes v5, or v6 when the patch is not UTF-8, byte-compatible with the
//! real client (`json.dumps` defaults: `", "`/`": "` separators, non-ASCII escaped). The size limit
//! is enforced by the reader that streams the job in (`spool::submit`), not here.

use std::collections::BTreeMap;

use base64::Engine;
use serde_json::{Map, Value};

/// A try job, whatever version it came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The version it was decoded from (1..=6); `encode` chooses its own.
    pub version: u8,
    pub jobid: String,
    /// `""` in the job is `None`.
    pub branch: Option<String>,
    /// `""` in the job is `None`.
    pub baserev: Option<String>,
    pub patch_level: u32,
    /// `None`: no patch (JSON null, or empty).
    pub patch: Option<Vec<u8>>,
    pub repository: String,
    pub project: String,
    pub who: Option<String>,
    pub comment: Option<String>,
    /// Empty: all the try builders (the caller decides which those are).
    pub builders: Vec<String>,
    /// Non-string JSON scalars are kept as their JSON text.
    pub properties: BTreeMap<String, String>,
}

/// Why a job could not be decoded. Each message is one line for the submitter.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum JobError {
    #[error("the job is empty")]
    Empty,
    #[error("truncated netstring at byte {offset}")]
    Truncated { offset: usize },
    #[error("malformed netstring at byte {offset}: {what}")]
    BadNetstring { offset: usize, what: &'static str },
    #[error("unknown job version \"{0}\" (versions 1 to 6 are understood)")]
    UnknownVersion(String),
    #[error("{count} unexpected bytes after the job")]
    TrailingBytes { count: usize },
    #[error("version {version} job has too few fields ({found})")]
    MissingFields { version: u8, found: usize },
    #[error("field {field} is not valid UTF-8")]
    NotUtf8 { field: &'static str },
    #[error("patch_level \"{0}\" is not a non-negative integer")]
    BadPatchLevel(String),
    #[error("bad JSON: {0}")]
    BadJson(String),
    #[error("the JSON job is not an object")]
    NotAnObject,
    #[error("missing field {0}")]
    MissingField(&'static str),
    #[error("field {field} should be {expected}")]
    WrongType {
        field: String,
        expected: &'static str,
    },
    #[error("patch_body_base64 is not valid base64: {0}")]
    BadBase64(String),
}

/// Netstring lengths longer than this many digits cannot describe a job we would accept.
const MAX_LENGTH_DIGITS: usize = 12;

/// Reads one netstring at `offset`; returns its payload and the offset after it.
fn netstring(bytes: &[u8], offset: usize) -> Result<(&[u8], usize), JobError> {
    let rest = &bytes[offset..];
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == rest.len() {
        return Err(JobError::Truncated { offset });
    }
    if digits == 0 {
        return Err(JobError::BadNetstring {
            offset,
            what: "expected a decimal length",
        });
    }
    if digits > MAX_LENGTH_DIGITS {
        return Err(JobError::BadNetstring {
            offset,
            what: "length too large",
        });
    }
    if digits > 1 && rest[0] == b'0' {
        return Err(JobError::BadNetstring {
            offset,
            what: "length with a leading zero",
        });
    }
    if rest[digits] != b':' {
        return Err(JobError::BadNetstring {
            offset,
            what: "expected ':' after the length",
        });
    }
    let length: usize = std::str::from_utf8(&rest[..digits])
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or(JobError::BadNetstring {
            offset,
            what: "length too large",
        })?;
    let start = digits + 1;
    let end = start
        .checked_add(length)
        .ok_or(JobError::Truncated { offset })?;
    if end >= rest.len() {
        return Err(JobError::Truncated { offset });
    }
    if rest[end] != b',' {
        return Err(JobError::BadNetstring {
            offset: offset + end,
            what: "expected ',' after the payload",
        });
    }
    Ok((&rest[start..end], offset + end + 1))
}

/// How long a job at least is, judging by its first bytes: the version netstring plus the
/// declared length of the next one (for v5/v6, the whole job). `None` until those headers have
/// arrived or when they are malformed (`decode` then says why). Lets a reader refuse an
/// oversized job before the bytes arrive.
pub fn declared_length(prefix: &[u8]) -> Option<usize> {
    let (_, offset) = netstring(prefix, 0).ok()?;
    let rest = &prefix[offset..];
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > MAX_LENGTH_DIGITS || rest.get(digits) != Some(&b':') {
        return None;
    }
    let length: usize = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    offset.checked_add(digits + 2)?.checked_add(length)
}

/// Decodes a job of any version 1..=6.
pub fn decode(bytes: &[u8]) -> Result<Job, JobError> {
    if bytes.is_empty() {
        return Err(JobError::Empty);
    }
    let (version_text, mut offset) = netstring(bytes, 0)?;
    let version = match version_text {
        [digit @ b'1'..=b'6'] => digit - b'0',
        other => {
            return Err(JobError::UnknownVersion(
                String::from_utf8_lossy(other).into_owned(),
            ));
        }
    };
    let mut fields = Vec::new();
    while offset < bytes.len() {
        let (payload, next) = netstring(bytes, offset)?;
        fields.push(payload);
        offset = next;
        if version >= 5 && fields.len() == 1 && offset < bytes.len() {
            return Err(JobError::TrailingBytes {
                count: bytes.len() - offset,
            });
        }
    }
    match version {
        1..=4 => decode_positional(version, &fields),
        _ => {
            let [json] = fields.as_slice() else {
                return Err(JobError::MissingFields {
                    version,
                    found: fields.len(),
                });
            };
            decode_json(version, json)
        }
    }
}

fn text(field: &'static str, bytes: &[u8]) -> Result<String, JobError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| JobError::NotUtf8 { field })
}

fn non_empty(value: String) -> Option<String> {
    if value.is_empty() { None } else { Some(value) }
}

fn patch_level(text: &str) -> Result<u32, JobError> {
    text.trim()
        .parse()
        .map_err(|_| JobError::BadPatchLevel(text.to_string()))
}

/// v1: jobid, branch, baserev, patch_level, patch_body; v2 adds repository, project; v3 who;
/// v4 comment; every netstring after those is a builder name.
fn decode_positional(version: u8, fields: &[&[u8]]) -> Result<Job, JobError> {
    let fixed = match version {
        1 => 5,
        2 => 7,
        3 => 8,
        _ => 9,
    };
    if fields.len() < fixed {
        return Err(JobError::MissingFields {
            version,
            found: fields.len(),
        });
    }
    let optional = |index: usize, name: &'static str| -> Result<String, JobError> {
        if index < fixed {
            text(name, fields[index])
        } else {
            Ok(String::new())
        }
    };
    let builders = fields[fixed..]
        .iter()
        .map(|name| text("builderNames", name))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Job {
        version,
        jobid: text("jobid", fields[0])?,
        branch: non_empty(text("branch", fields[1])?),
        baserev: non_empty(text("baserev", fields[2])?),
        patch_level: patch_level(&text("patch_level", fields[3])?)?,
        patch: if fields[4].is_empty() {
            None
        } else {
            Some(fields[4].to_vec())
        },
        repository: optional(5, "repository")?,
        project: optional(6, "project")?,
        who: non_empty(optional(7, "who")?),
        comment: non_empty(optional(8, "comment")?),
        builders,
        properties: BTreeMap::new(),
    })
}

fn decode_json(version: u8, json: &[u8]) -> Result<Job, JobError> {
    let value: Value =
        serde_json::from_slice(json).map_err(|err| JobError::BadJson(err.to_string()))?;
    let Value::Object(object) = value else {
        return Err(JobError::NotAnObject);
    };
    let jobid = match object.get("jobid") {
        Some(Value::String(jobid)) => jobid.clone(),
        Some(_) => return Err(wrong("jobid", "a string")),
        None => return Err(JobError::MissingField("jobid")),
    };
    let patch = if version == 5 {
        match required(&object, "patch_body")? {
            Value::String(body) => Some(body.as_bytes().to_vec()),
            Value::Null => None,
            _ => return Err(wrong("patch_body", "a string or null")),
        }
    } else {
        match required(&object, "patch_body_base64")? {
            Value::String(encoded) => Some(
                base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .map_err(|err| JobError::BadBase64(err.to_string()))?,
            ),
            Value::Null => None,
            _ => return Err(wrong("patch_body_base64", "a string or null")),
        }
    };
    let builders = match required(&object, "builderNames")? {
        Value::Null => Vec::new(),
        Value::Array(names) => names
            .iter()
            .map(|name| match name {
                Value::String(name) => Ok(name.clone()),
                _ => Err(wrong("builderNames", "a list of strings")),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(wrong("builderNames", "a list of strings or null")),
    };
    let patch_level = match required(&object, "patch_level")? {
        Value::Number(number) => number
            .as_u64()
            .and_then(|level| u32::try_from(level).ok())
            .ok_or_else(|| JobError::BadPatchLevel(number.to_string()))?,
        Value::String(level) => self::patch_level(level)?,
        _ => return Err(wrong("patch_level", "an integer")),
    };
    let properties = match object.get("properties") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(properties)) => properties
            .iter()
            .map(|(key, value)| match value {
                Value::String(text) => Ok((key.clone(), text.clone())),
                Value::Number(_) | Value::Bool(_) | Value::Null => {
                    Ok((key.clone(), value.to_string()))
                }
                _ => Err(wrong(
                    &format!("properties.{key}"),
                    "a string, number or boolean",
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(wrong("properties", "an object")),
    };
    Ok(Job {
        version,
        jobid,
        branch: optional_string(&object, "branch", true)?.and_then(non_empty),
        baserev: optional_string(&object, "baserev", true)?.and_then(non_empty),
        patch_level,
        patch: patch.filter(|bytes| !bytes.is_empty()),
        repository: optional_string(&object, "repository", false)?.unwrap_or_default(),
        project: optional_string(&object, "project", false)?.unwrap_or_default(),
        who: optional_string(&object, "who", false)?,
        comment: optional_string(&object, "comment", false)?,
        builders,
        properties,
    })
}

fn wrong(field: &str, expected: &'static str) -> JobError {
    JobError::WrongType {
        field: field.to_string(),
        expected,
    }
}

fn required<'a>(
    object: &'a Map<String, Value>,
    field: &'static str,
) -> Result<&'a Value, JobError> {
    object.get(field).ok_or(JobError::MissingField(field))
}

/// A string-or-null field; `is_required` fields must be present.
fn optional_string(
    object: &Map<String, Value>,
    field: &'static str,
    is_required: bool,
) -> Result<Option<String>, JobError> {
    match object.get(field) {
        None if is_required => Err(JobError::MissingField(field)),
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(wrong(field, "a string or null")),
    }
}

/// Encodes a job as the real client does: v5, or v6 when the patch is not UTF-8.
pub fn encode(job: &Job) -> Vec<u8> {
    let patch_text = match &job.patch {
        None => Some(None),
        Some(bytes) => std::str::from_utf8(bytes).ok().map(Some),
    };
    let version = if patch_text.is_some() { 5 } else { 6 };
    let mut json = String::from("{");
    push_key(&mut json, "jobid", true);
    push_string(&mut json, &job.jobid);
    push_key(&mut json, "branch", false);
    push_string(&mut json, job.branch.as_deref().unwrap_or(""));
    push_key(&mut json, "baserev", false);
    push_string(&mut json, job.baserev.as_deref().unwrap_or(""));
    push_key(&mut json, "patch_level", false);
    json.push_str(&job.patch_level.to_string());
    push_key(&mut json, "repository", false);
    push_string(&mut json, &job.repository);
    push_key(&mut json, "project", false);
    push_string(&mut json, &job.project);
    push_key(&mut json, "who", false);
    push_optional(&mut json, job.who.as_deref());
    push_key(&mut json, "comment", false);
    push_optional(&mut json, job.comment.as_deref());
    push_key(&mut json, "builderNames", false);
    if job.builders.is_empty() {
        json.push_str("null");
    } else {
        json.push('[');
        for (index, name) in job.builders.iter().enumerate() {
            if index > 0 {
                json.push_str(", ");
            }
            push_string(&mut json, name);
        }
        json.push(']');
    }
    push_key(&mut json, "properties", false);
    json.push('{');
    for (index, (key, value)) in job.properties.iter().enumerate() {
        if index > 0 {
            json.push_str(", ");
        }
        push_string(&mut json, key);
        json.push_str(": ");
        push_string(&mut json, value);
    }
    json.push('}');
    match patch_text {
        Some(text) => {
            push_key(&mut json, "patch_body", false);
            push_optional(&mut json, text);
        }
        None => {
            push_key(&mut json, "patch_body_base64", false);
            let bytes = job.patch.as_deref().unwrap_or_default();
            push_string(
                &mut json,
                &base64::engine::general_purpose::STANDARD.encode(bytes),
            );
        }
    }
    json.push('}');
    let version = version.to_string();
    let mut out = Vec::with_capacity(json.len() + 16);
    for payload in [version.as_str(), json.as_str()] {
        out.extend_from_slice(format!("{}:", payload.len()).as_bytes());
        out.extend_from_slice(payload.as_bytes());
        out.push(b',');
    }
    out
}

fn push_key(json: &mut String, key: &str, first: bool) {
    if !first {
        json.push_str(", ");
    }
    push_string(json, key);
    json.push_str(": ");
}

fn push_optional(json: &mut String, value: Option<&str>) {
    match value {
        Some(text) => push_string(json, text),
        None => json.push_str("null"),
    }
}

/// A JSON string as Python's `json.dumps(ensure_ascii=True)` writes it.
fn push_string(json: &mut String, text: &str) {
    json.push('"');
    for c in text.chars() {
        match c {
            '"' => json.push_str("\\\""),
            '\\' => json.push_str("\\\\"),
            '\n' => json.push_str("\\n"),
            '\r' => json.push_str("\\r"),
            '\t' => json.push_str("\\t"),
            '\u{8}' => json.push_str("\\b"),
            '\u{c}' => json.push_str("\\f"),
            ' '..='~' => json.push(c),
            other => {
                let mut units = [0u16; 2];
                for unit in other.encode_utf16(&mut units) {
                    json.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    json.push('"');
}

/// The patch level a patch was most likely written for, when `level` looks wrong: a git diff
/// (`--- a/X`, `+++ b/X`, or `diff --git a/X b/X`) sent with `-p 0` strips nothing, so every
/// path starts with `a/` or `b/` and no file is found. `Some(1)` then; `None` when `level` fits.
pub fn patch_level_hint(patch: &[u8], level: u32) -> Option<u32> {
    if level != 0 {
        return None;
    }
    let text = String::from_utf8_lossy(patch);
    let mut pairs = 0;
    for line in text.lines() {
        let (prefix, path) = if let Some(rest) = line.strip_prefix("--- ") {
            ("a/", rest)
        } else if let Some(rest) = line.strip_prefix("+++ ") {
            ("b/", rest)
        } else if let Some(rest) = line.strip_prefix("diff --git ") {
            match rest.split_once(' ') {
                Some((old, new)) if old.starts_with("a/") && new.starts_with("b/") => {
                    pairs += 1;
                    continue;
                }
                _ => return None,
            }
        } else {
            continue;
        };
        let path = path
            .split('\t')
            .next()
            .unwrap_or_default()
            .trim_matches('"');
        if path == "/dev/null" {
            continue;
        }
        if !path.starts_with(prefix) {
            return None;
        }
        pairs += 1;
    }
    (pairs > 0).then_some(1)
}

/// Whether a patch changes a submodule URL: it adds or removes a `url` line of a `.gitmodules`
/// file (at any depth), or renames, copies or binary-patches a file into one, whose content
/// this cannot see. A changed URL makes a `submodules = true` builder clone whatever the
/// submitter names, so the master refuses such jobs unless the builder allows them.
/// Conservative: any header naming `.gitmodules` counts as entering such a file.
pub fn changes_gitmodules_urls(patch: &[u8]) -> bool {
    fn names_gitmodules(line: &str) -> bool {
        line.split_whitespace().any(|token| {
            let token = token.trim_matches('"');
            token.rsplit('/').next() == Some(".gitmodules")
        })
    }
    let text = String::from_utf8_lossy(patch);
    let mut in_gitmodules = false;
    for line in text.lines() {
        if line.starts_with("diff ") || line.starts_with("Index: ") {
            in_gitmodules = names_gitmodules(line);
            continue;
        }
        if line.starts_with("--- ") || line.starts_with("+++ ") {
            in_gitmodules |= names_gitmodules(line);
            continue;
        }
        if (line.starts_with("rename to ") || line.starts_with("copy to "))
            && names_gitmodules(line)
        {
            return true;
        }
        if !in_gitmodules {
            continue;
        }
        if line.starts_with("GIT binary patch") {
            return true;
        }
        if let Some(content) = line.strip_prefix('+').or_else(|| line.strip_prefix('-'))
            && content.trim_start().to_ascii_lowercase().starts_with("url")
        {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submodule_url_changes_are_found_and_other_edits_are_not() {
        let url_change = b"diff --git a/.gitmodules b/.gitmodules\n--- a/.gitmodules\n+++ b/.gitmodules\n@@ -1,3 +1,3 @@\n [submodule \"lib\"]\n \tpath = lib\n-\turl = https://example.org/lib.git\n+\turl = https://evil.example/lib.git\n";
        assert!(changes_gitmodules_urls(url_change));
        let nested = b"--- a/vendor/.gitmodules\n+++ b/vendor/.gitmodules\n@@ -1 +1,2 @@\n [submodule \"x\"]\n+  URL=git@evil:x\n";
        assert!(changes_gitmodules_urls(nested));
        let renamed = b"diff --git a/notes b/.gitmodules\nsimilarity index 100%\nrename from notes\nrename to .gitmodules\n";
        assert!(changes_gitmodules_urls(renamed));
        let path_only = b"diff --git a/.gitmodules b/.gitmodules\n--- a/.gitmodules\n+++ b/.gitmodules\n@@ -1,2 +1,2 @@\n-\tpath = lib\n+\tpath = lib2\n";
        assert!(!changes_gitmodules_urls(path_only));
        let elsewhere = b"diff --git a/README b/README\n--- a/README\n+++ b/README\n@@ -1 +1 @@\n-url = a\n+url = b\n";
        assert!(!changes_gitmodules_urls(elsewhere));
    }

    #[test]
    fn a_git_diff_at_level_zero_is_told_to_use_one() {
        let git =
            b"diff --git a/src/x.c b/src/x.c\n--- a/src/x.c\n+++ b/src/x.c\n@@ -1 +1 @@\n-a\n+b\n";
        assert_eq!(patch_level_hint(git, 0), Some(1));
        assert_eq!(patch_level_hint(git, 1), None);
        let plain_git = b"--- a/x.c\t2024-01-01\n+++ b/x.c\n@@ -1 +1 @@\n-a\n+b\n";
        assert_eq!(patch_level_hint(plain_git, 0), Some(1));
        let new_file = b"--- /dev/null\n+++ b/new.c\n@@ -0,0 +1 @@\n+b\n";
        assert_eq!(patch_level_hint(new_file, 0), Some(1));
        let plain = b"--- x.c.orig\n+++ x.c\n@@ -1 +1 @@\n-a\n+b\n";
        assert_eq!(patch_level_hint(plain, 0), None);
        let src_dirs = b"--- src/x.c\n+++ src/x.c\n@@ -1 +1 @@\n-a\n+b\n";
        assert_eq!(patch_level_hint(src_dirs, 0), None);
    }

    const SAMPLE_V5_GIT: &[u8] = include_bytes!("../tests/data/try-samples/job-v5-git.bin");
    const SAMPLE_V5_EMPTY: &[u8] =
        include_bytes!("../tests/data/try-samples/job-v5-empty-diff.bin");
    const SAMPLE_V6_BINARY: &[u8] =
        include_bytes!("../tests/data/try-samples/job-v6-binary-diff.bin");

    /// The reference's 267-byte vector (Buildbot's test_createJobfile_v5).
    const VECTOR_V5: &str = r#"1:5,258:{"jobid": "123-456", "branch": "branch", "baserev": "baserev", "patch_level": 0, "repository": "repo", "project": "proj", "who": "someuser", "comment": "insightful comment", "builderNames": ["runtests"], "properties": {"foo": "bar"}, "patch_body": "diff..."},"#;
    const VECTOR_V6: &str = r#"1:6,270:{"jobid": "123-456", "branch": "branch", "baserev": "baserev", "patch_level": 0, "repository": "repo", "project": "proj", "who": "someuser", "comment": "insightful comment", "builderNames": ["runtests"], "properties": {"foo": "bar"}, "patch_body_base64": "ZGlmZi4uLv8="},"#;

    fn ns(payload: &[u8]) -> Vec<u8> {
        let mut out = format!("{}:", payload.len()).into_bytes();
        out.extend_from_slice(payload);
        out.push(b',');
        out
    }

    fn positional(fields: &[&[u8]]) -> Vec<u8> {
        fields.iter().flat_map(|field| ns(field)).collect()
    }

    #[test]
    fn the_reference_vectors_round_trip_byte_for_byte() {
        assert_eq!(VECTOR_V5.len(), 267);
        let job = decode(VECTOR_V5.as_bytes()).expect("v5 vector");
        assert_eq!(job.jobid, "123-456");
        assert_eq!(job.patch.as_deref(), Some(&b"diff..."[..]));
        assert_eq!(job.properties.get("foo").map(String::as_str), Some("bar"));
        assert_eq!(encode(&job), VECTOR_V5.as_bytes());
        let job = decode(VECTOR_V6.as_bytes()).expect("v6 vector");
        assert_eq!(job.patch.as_deref(), Some(&b"diff...\xff"[..]));
        assert_eq!(encode(&job), VECTOR_V6.as_bytes());
    }

    #[test]
    fn the_real_clients_samples() {
        let job = decode(SAMPLE_V5_GIT).expect("v5 git sample");
        assert_eq!(job.version, 5);
        assert_eq!(job.jobid, "1795464251.701242-859904");
        assert_eq!(job.branch.as_deref(), Some("master"));
        assert_eq!(
            job.baserev.as_deref(),
            Some("dd9128c51762eff2aef60e24ea97418d93437a70")
        );
        assert_eq!(job.patch_level, 1);
        assert_eq!(job.repository, "/home/alice/src/hello");
        assert_eq!(job.who.as_deref(), Some("Alice <alice@example.org>"));
        assert_eq!(job.comment.as_deref(), Some("fix exit code"));
        assert_eq!(
            job.builders,
            vec!["linux".to_string(), "mac os".to_string()]
        );
        assert_eq!(job.properties.len(), 3);
        let patch = String::from_utf8(job.patch.clone().expect("patch")).expect("utf-8");
        assert!(
            patch.contains("+caf\u{e9} \t\"quoted\" \\ backslash\n"),
            "{patch}"
        );
        assert_eq!(decode(&encode(&job)).expect("re-encoded"), job);

        let job = decode(SAMPLE_V5_EMPTY).expect("empty sample");
        assert_eq!((job.patch, job.builders, job.who), (None, vec![], None));

        let job = decode(SAMPLE_V6_BINARY).expect("v6 sample");
        assert_eq!(job.version, 6);
        let patch = job.patch.clone().expect("patch");
        assert!(std::str::from_utf8(&patch).is_err());
        assert!(patch.starts_with(b"diff --git a/logo.bin b/logo.bin\n"));
        assert_eq!(decode(&encode(&job)).expect("re-encoded"), job);
    }

    #[test]
    fn declared_length_is_known_from_the_headers() {
        assert_eq!(declared_length(VECTOR_V5.as_bytes()), Some(267));
        assert_eq!(declared_length(&VECTOR_V5.as_bytes()[..8]), Some(267));
        assert_eq!(declared_length(&VECTOR_V5.as_bytes()[..6]), None);
        assert_eq!(declared_length(b"1:5,99999999999999999999:"), None);
        assert_eq!(declared_length(b"garbage"), None);
    }

    #[test]
    fn versions_one_to_four() {
        let v1 = positional(&[b"1", b"id", b"", b"abc", b"1", b"--- a\n", b"linux", b"mac"]);
        let job = decode(&v1).expect("v1");
        assert_eq!(
            (job.version, job.branch.clone(), job.baserev.as_deref()),
            (1, None, Some("abc"))
        );
        assert_eq!(job.builders, vec!["linux".to_string(), "mac".to_string()]);
        let v2 = positional(&[
            b"2", b"id", b"main", b"abc", b"0", b"p", b"repo", b"proj", b"linux",
        ]);
        let job = decode(&v2).expect("v2");
        assert_eq!(
            (job.repository.as_str(), job.project.as_str()),
            ("repo", "proj")
        );
        let v3 = positional(&[
            b"3", b"id", b"main", b"abc", b"0", b"p", b"repo", b"proj", b"alice",
        ]);
        let job = decode(&v3).expect("v3");
        assert_eq!((job.who.as_deref(), job.builders.len()), (Some("alice"), 0));
        let v4 = positional(&[
            b"4",
            b"id",
            b"main",
            b"abc",
            b"2",
            b"\xff\xfe",
            b"r",
            b"p",
            b"bob",
            b"hi",
            b"linux",
        ]);
        let job = decode(&v4).expect("v4 with a binary patch");
        assert_eq!(job.patch.as_deref(), Some(&b"\xff\xfe"[..]));
        assert_eq!((job.comment.as_deref(), job.patch_level), (Some("hi"), 2));
        let short = positional(&[b"4", b"id", b"main"]);
        assert_eq!(
            decode(&short),
            Err(JobError::MissingFields {
                version: 4,
                found: 2
            })
        );
        let bad_level = positional(&[b"1", b"id", b"", b"", b"one", b"p"]);
        assert_eq!(
            decode(&bad_level),
            Err(JobError::BadPatchLevel("one".into()))
        );
        let bad_utf8 = positional(&[b"1", b"\xff", b"", b"", b"1", b"p"]);
        assert_eq!(decode(&bad_utf8), Err(JobError::NotUtf8 { field: "jobid" }));
    }

    #[test]
    fn malformed_shapes() {
        let json = |body: &str| [ns(b"5"), ns(body.as_bytes())].concat();
        let cases: Vec<(Vec<u8>, JobError)> = vec![
            (b"".to_vec(), JobError::Empty),
            (b"1".to_vec(), JobError::Truncated { offset: 0 }),
            (b"1:5".to_vec(), JobError::Truncated { offset: 0 }),
            (b"1:5,10:{}".to_vec(), JobError::Truncated { offset: 4 }),
            (
                b"1:5x".to_vec(),
                JobError::BadNetstring {
                    offset: 3,
                    what: "expected ',' after the payload",
                },
            ),
            (
                b"x:5,".to_vec(),
                JobError::BadNetstring {
                    offset: 0,
                    what: "expected a decimal length",
                },
            ),
            (
                b"1;5,".to_vec(),
                JobError::BadNetstring {
                    offset: 0,
                    what: "expected ':' after the length",
                },
            ),
            (
                b"01:5,".to_vec(),
                JobError::BadNetstring {
                    offset: 0,
                    what: "length with a leading zero",
                },
            ),
            (
                b"99999999999999999999:5,".to_vec(),
                JobError::BadNetstring {
                    offset: 0,
                    what: "length too large",
                },
            ),
            (
                b"18446744073:5,".to_vec(),
                JobError::Truncated { offset: 0 },
            ),
            (ns(b"7"), JobError::UnknownVersion("7".into())),
            (ns(b"0"), JobError::UnknownVersion("0".into())),
            (ns(b"10"), JobError::UnknownVersion("10".into())),
            (ns(b"05"), JobError::UnknownVersion("05".into())),
            (json("{nope"), JobError::BadJson(String::new())),
            (json("[]"), JobError::NotAnObject),
            (json(r#"{"branch": ""}"#), JobError::MissingField("jobid")),
            (
                json(r#"{"jobid": 7}"#),
                JobError::WrongType {
                    field: "jobid".into(),
                    expected: "a string",
                },
            ),
        ];
        for (input, expected) in cases {
            let got = decode(&input);
            match (&got, &expected) {
                (Err(JobError::BadJson(_)), JobError::BadJson(_)) => {}
                _ => assert_eq!(got, Err(expected), "{}", String::from_utf8_lossy(&input)),
            }
        }
    }

    #[test]
    fn wrong_types_bad_base64_and_trailing_bytes() {
        let job = decode(VECTOR_V5.as_bytes()).expect("vector");
        let mut value: Value =
            serde_json::from_str(&VECTOR_V5[8..VECTOR_V5.len() - 1]).expect("json");
        let with = |value: &Value, version: &[u8]| {
            [ns(version), ns(value.to_string().as_bytes())].concat()
        };
        for (field, bad, expected_field) in [
            ("builderNames", serde_json::json!("linux"), "builderNames"),
            ("builderNames", serde_json::json!([1]), "builderNames"),
            (
                "properties",
                serde_json::json!({"nested": {"a": 1}}),
                "properties.nested",
            ),
            ("branch", serde_json::json!(3), "branch"),
            ("who", serde_json::json!(["x"]), "who"),
        ] {
            let mut broken = value.clone();
            broken[field] = bad;
            match decode(&with(&broken, b"5")) {
                Err(JobError::WrongType { field, .. }) => assert_eq!(field, expected_field),
                other => panic!("{expected_field}: {other:?}"),
            }
        }
        value["patch_level"] = serde_json::json!("2");
        assert_eq!(
            decode(&with(&value, b"5"))
                .expect("string level")
                .patch_level,
            2
        );
        value["patch_level"] = serde_json::json!(-1);
        assert!(matches!(
            decode(&with(&value, b"5")),
            Err(JobError::BadPatchLevel(_))
        ));
        value["patch_level"] = serde_json::json!(0);
        value["properties"] = serde_json::json!({"n": 3, "b": true});
        let decoded = decode(&with(&value, b"5")).expect("scalar properties");
        assert_eq!(decoded.properties.get("n").map(String::as_str), Some("3"));
        let mut v6: Value = value.clone();
        v6.as_object_mut().expect("object").remove("patch_body");
        v6["patch_body_base64"] = serde_json::json!("not base64!");
        assert!(matches!(
            decode(&with(&v6, b"6")),
            Err(JobError::BadBase64(_))
        ));
        v6.as_object_mut()
            .expect("object")
            .remove("patch_body_base64");
        assert_eq!(
            decode(&with(&v6, b"6")),
            Err(JobError::MissingField("patch_body_base64"))
        );

        let mut trailing = encode(&job);
        trailing.push(b'\n');
        assert_eq!(decode(&trailing), Err(JobError::TrailingBytes { count: 1 }));
        let mut extra = encode(&job);
        extra.extend_from_slice(b"3:abc,");
        assert_eq!(decode(&extra), Err(JobError::TrailingBytes { count: 6 }));
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn decode_never_panics_on_netstring_shapes(text in "[0-9:,{}\"a-z]{0,80}") {
            let _ = decode(text.as_bytes());
        }

        #[test]
        fn encode_then_decode_round_trips(
            jobid in "\\PC{0,20}",
            branch in proptest::option::of("\\PC{1,20}"),
            baserev in proptest::option::of("[0-9a-f]{1,40}"),
            patch_level in 0u32..5,
            patch in proptest::option::of(proptest::collection::vec(proptest::num::u8::ANY, 1..200)),
            who in proptest::option::of("\\PC{0,20}"),
            builders in proptest::collection::vec("\\PC{1,10}", 0..4),
            properties in proptest::collection::btree_map("\\PC{0,8}", "\\PC{0,8}", 0..4),
        ) {
            let job = Job {
                version: 0,
                jobid,
                branch,
                baserev,
                patch_level,
                patch,
                repository: "r\u{e9}po \u{1F600}".into(),
                project: String::new(),
                who,
                comment: Some("c\n\"x\"".into()),
                builders,
                properties,
            };
            let decoded = decode(&encode(&job)).expect("own encoding decodes");
            let expected_version = if job.patch.as_ref().is_some_and(|p| std::str::from_utf8(p).is_err()) { 6 } else { 5 };
            proptest::prop_assert_eq!(decoded, Job { version: expected_version, ..job });
        }
    }
}
