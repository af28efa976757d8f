//! Secrets (`[[secret]]`): reading a secret's file safely, which builds may get them, and the
//! redaction of every secret's value (and its encoded forms) from the log path before anything
//! is written, shipped or shown.
//!
//! What this module does not do: decide what a step runs (`build`), or where logs go (`logs`).
//! The redactor sits in `build::StepLogs::append`, the one door through which a step's output
//! reaches the files, the store's chunks, followers, the API, the pages and the IRC bot, so
//! what passes it is clean for all of them.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use aho_corasick::{AhoCorasick, MatchKind};

use crate::unix::regular_file::{self, Refused};
use base64::Engine as _;

use crate::master::config::BuilderConfig;
use crate::master::store::model::StoredRequest;
use crate::status::RequestKind;

/// The largest secret file read: a token or a key, never a data set.
pub const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// Encoded forms shorter than this are not redacted on their own: a three-character base64
/// fragment would redact ordinary text all over a log and tell a reader which bytes matched.
const MIN_DERIVED_PATTERN: usize = 8;

/// A secret's value must be at least this long: a shorter one would be found everywhere in
/// ordinary output (over-redaction hides the log and, by where it matches, the secret).
pub const MIN_SECRET_BYTES: usize = 6;

/// Why a secret's file was not used. Each names the file and says what is wrong, in one line.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("{0}: is a symbolic link; secret files are not followed through symlinks")]
    Symlink(PathBuf),
    #[error("{0}: is not a regular file")]
    NotRegular(PathBuf),
    #[error(
        "{path}: owned by uid {owner}, but it must be owned by the master's user (uid {master})"
    )]
    BadOwner {
        path: PathBuf,
        owner: u32,
        master: u32,
    },
    #[error("{path}: readable or writable by group or others (mode {mode:04o}); chmod 600 it")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{0}: larger than {MAX_SECRET_BYTES} bytes")]
    TooLarge(PathBuf),
    #[error("{0}: holds fewer than {MIN_SECRET_BYTES} bytes (after its final newline)")]
    TooShort(PathBuf),
    #[error("{0}: is not UTF-8 text (steps get a secret as an environment variable)")]
    NotText(PathBuf),
    #[error("{path}: changed while it was being opened")]
    Changed { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Reads a secret's value: the file must be a regular file (no symlink, checked on the open
/// descriptor), owned by the master's effective uid, with no permission bits for group or
/// others, and at most [`MAX_SECRET_BYTES`]. One final newline (`\n` or `\r\n`) is not part
/// of the value, as editors and `echo` add one. Blocking: call it off the async runtime.
pub fn read_secret_file(path: &Path) -> Result<Vec<u8>, SecretFileError> {
    let io_error = |source: io::Error| SecretFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let (file, metadata) = match regular_file::open_regular(path) {
        Ok(Some(opened)) => opened,
        Ok(None) => return Err(io_error(io::ErrorKind::NotFound.into())),
        Err(Refused::Symlink) => return Err(SecretFileError::Symlink(path.to_path_buf())),
        Err(Refused::NotRegular) => return Err(SecretFileError::NotRegular(path.to_path_buf())),
        Err(Refused::Changed) => {
            return Err(SecretFileError::Changed {
                path: path.to_path_buf(),
            });
        }
        Err(Refused::Io(err)) => return Err(io_error(err)),
    };
    let master = nix::unistd::geteuid().as_raw();
    if metadata.uid() != master {
        return Err(SecretFileError::BadOwner {
            path: path.to_path_buf(),
            owner: metadata.uid(),
            master,
        });
    }
    if metadata.mode() & 0o077 != 0 {
        return Err(SecretFileError::TooOpen {
            path: path.to_path_buf(),
            mode: metadata.mode() & 0o7777,
        });
    }
    if metadata.len() > MAX_SECRET_BYTES {
        return Err(SecretFileError::TooLarge(path.to_path_buf()));
    }
    read_capped(path, file)
}

fn read_capped(path: &Path, file: File) -> Result<Vec<u8>, SecretFileError> {
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| SecretFileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    if bytes.len() as u64 > MAX_SECRET_BYTES {
        return Err(SecretFileError::TooLarge(path.to_path_buf()));
    }
    if bytes.ends_with(b"\r\n") {
        bytes.truncate(bytes.len() - 2);
    } else if bytes.ends_with(b"\n") {
        bytes.truncate(bytes.len() - 1);
    }
    if bytes.len() < MIN_SECRET_BYTES {
        return Err(SecretFileError::TooShort(path.to_path_buf()));
    }
    if std::str::from_utf8(&bytes).is_err() || bytes.contains(&0) {
        return Err(SecretFileError::NotText(path.to_path_buf()));
    }
    Ok(bytes)
}

/// Whether a request's build runs code a user sent (a try patch; a rebuild of one keeps its
/// patch): such a build never gets secrets unless its builder says `secrets_for_patches`.
/// The match names every kind, so a new kind of request must decide here.
pub fn runs_a_users_patch(request: &StoredRequest) -> bool {
    match request.kind {
        RequestKind::Try => true,
        RequestKind::Force | RequestKind::Scheduled => request.patch.is_some(),
    }
}

/// Whether this build's steps get the builder's secrets.
pub fn gets_secrets(builder: &BuilderConfig, request: &StoredRequest) -> bool {
    !builder.secrets.is_empty() && (builder.secrets_for_patches || !runs_a_users_patch(request))
}

/// The environment variable a secret is given to steps as: its name upper-cased.
pub fn env_name(secret: &str) -> String {
    secret.to_ascii_uppercase()
}

/// One secret with its value, as a build holds it (never logged: `Debug` hides the value).
#[derive(Clone)]
pub struct Secret {
    pub name: String,
    pub value: Vec<u8>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({}: [{} bytes])", self.name, self.value.len())
    }
}

/// The byte strings that stand for a secret in output: the value, its standard and URL-safe
/// base64 at each of the three alignments it can have inside a longer encoded text (and
/// whole, with its padding), and its URL-encoded form (either case of hex digits). Forms equal to one already listed, or too short to be telling, are left
/// out.
pub fn forms_of(value: &[u8]) -> Vec<Vec<u8>> {
    let mut forms: Vec<Vec<u8>> = vec![value.to_vec()];
    let mut add = |form: Vec<u8>| {
        if form.len() >= MIN_DERIVED_PATTERN && !forms.contains(&form) {
            forms.push(form);
        }
    };
    for engine in [
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ] {
        for offset in 0..3usize {
            // Encode the value behind `offset` filler bytes and keep only the characters whose
            // six bits all come from the value: those appear whatever surrounds it.
            let mut padded = vec![0u8; offset];
            padded.extend_from_slice(value);
            let encoded = engine.encode(&padded).into_bytes();
            let first = (8 * offset).div_ceil(6);
            let end = (8 * (offset + value.len())) / 6;
            if end > first {
                add(encoded[first..end].to_vec());
            }
        }
    }
    // The value encoded alone ends in its last, partial character and `=` padding.
    add(base64::engine::general_purpose::STANDARD
        .encode(value)
        .into_bytes());
    add(base64::engine::general_purpose::URL_SAFE
        .encode(value)
        .into_bytes());
    let url = percent_encoding::percent_encode(value, URL_COMPONENT).to_string();
    // Encoders differ in the case of their hex digits.
    add(url.to_ascii_lowercase().into_bytes());
    add(url.into_bytes());
    forms
}

/// What a URL component keeps as it is (RFC 3986 unreserved); everything else is `%XX`.
const URL_COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Replaces every form of every secret by `[secret NAME]` in a stream that arrives in pieces.
/// A form may be split across pieces, so the last `longest - 1` bytes are held back until more
/// arrives or the stream ends ([`Redactor::finish`]); memory stays bounded by that tail.
pub struct Redactor {
    matcher: AhoCorasick,
    /// The replacement of each pattern, by pattern index.
    replacements: Vec<Vec<u8>>,
    longest: usize,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} patterns)", self.replacements.len())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the secret matcher: {0}")]
pub struct RedactorError(#[from] aho_corasick::BuildError);

impl Redactor {
    /// None when there is nothing to redact.
    pub fn new(secrets: &[Secret]) -> Result<Option<Redactor>, RedactorError> {
        let mut patterns = Vec::new();
        let mut replacements = Vec::new();
        for secret in secrets {
            for form in forms_of(&secret.value) {
                replacements.push(format!("[secret {}]", secret.name).into_bytes());
                patterns.push(form);
            }
        }
        if patterns.is_empty() {
            return Ok(None);
        }
        let longest = patterns.iter().map(Vec::len).max().unwrap_or(1);
        // Leftmost-longest: where a value and one of its forms both start, the longer wins.
        let matcher = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&patterns)?;
        Ok(Some(Redactor {
            matcher,
            replacements,
            longest,
        }))
    }

    /// A fresh per-stream state: each stream of a step is redacted on its own.
    pub fn stream(&self) -> RedactState {
        RedactState { held: Vec::new() }
    }

    /// Redacts `data` arriving after what `state` holds; returns what may be written now.
    pub fn push(&self, state: &mut RedactState, data: &[u8]) -> Vec<u8> {
        let mut buffer = std::mem::take(&mut state.held);
        buffer.extend_from_slice(data);
        let keep = self.longest - 1;
        // Every pattern that starts before `cut` ends within the buffer, so what is decided
        // before `cut` is what the whole stream would decide.
        let cut = buffer.len().saturating_sub(keep);
        let mut out = Vec::with_capacity(buffer.len());
        let mut position = 0;
        for found in self.matcher.find_iter(&buffer) {
            if found.start() >= cut {
                break;
            }
            out.extend_from_slice(&buffer[position..found.start()]);
            out.extend_from_slice(&self.replacements[found.pattern().as_usize()]);
            position = found.end();
        }
        let emit_to = cut.max(position);
        out.extend_from_slice(&buffer[position..emit_to]);
        state.held = buffer.split_off(emit_to);
        out
    }

    /// The end of a stream: what was held back, redacted.
    pub fn finish(&self, state: &mut RedactState) -> Vec<u8> {
        let buffer = std::mem::take(&mut state.held);
        let mut out = Vec::with_capacity(buffer.len());
        let mut position = 0;
        for found in self.matcher.find_iter(&buffer) {
            out.extend_from_slice(&buffer[position..found.start()]);
            out.extend_from_slice(&self.replacements[found.pattern().as_usize()]);
            position = found.end();
        }
        out.extend_from_slice(&buffer[position..]);
        out
    }
}

/// What one stream holds back between pieces (at most the longest pattern less one byte).
#[derive(Debug, Default)]
pub struct RedactState {
    held: Vec<u8>,
}

impl RedactState {
    pub fn holds_anything(&self) -> bool {
        !self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor(values: &[(&str, &str)]) -> Redactor {
        let secrets: Vec<Secret> = values
            .iter()
            .map(|(name, value)| Secret {
                name: name.to_string(),
                value: value.as_bytes().to_vec(),
            })
            .collect();
        Redactor::new(&secrets)
            .expect("builds")
            .expect("has patterns")
    }

    fn whole(redactor: &Redactor, pieces: &[&[u8]]) -> String {
        let mut state = redactor.stream();
        let mut out = Vec::new();
        for piece in pieces {
            out.extend(redactor.push(&mut state, piece));
        }
        out.extend(redactor.finish(&mut state));
        String::from_utf8(out).expect("utf-8")
    }

    const TOKEN: &str = "s3cr3t-t0ken/with+odd=chars";

    #[test]
    fn the_value_is_replaced_plainly_and_split_anywhere() {
        let redactor = redactor(&[("deploy_token", TOKEN)]);
        let text = format!("token is {TOKEN} and again {TOKEN}.\n");
        let expected = "token is [secret deploy_token] and again [secret deploy_token].\n";
        assert_eq!(whole(&redactor, &[text.as_bytes()]), expected);
        for split in 0..=text.len() {
            let (a, b) = text.as_bytes().split_at(split);
            assert_eq!(whole(&redactor, &[a, b]), expected, "split at {split}");
        }
        let bytes: Vec<&[u8]> = text.as_bytes().chunks(1).collect();
        assert_eq!(whole(&redactor, &bytes), expected);
    }

    #[test]
    fn base64_at_every_alignment_and_url_encoding_are_replaced() {
        let redactor = redactor(&[("deploy_token", TOKEN)]);
        for prefix in ["", "a", "ab", "abc"] {
            for engine in [
                &base64::engine::general_purpose::STANDARD,
                &base64::engine::general_purpose::URL_SAFE,
            ] {
                let encoded = engine.encode(format!("{prefix}{TOKEN}xyz"));
                let out = whole(&redactor, &[encoded.as_bytes()]);
                assert!(out.contains("[secret deploy_token]"), "{prefix:?}: {out}");
                let inner = &encoded[4..encoded.len() - 4];
                assert!(!out.contains(inner), "{prefix:?}: {out}");
            }
        }
        let url = percent_encoding::percent_encode(TOKEN.as_bytes(), URL_COMPONENT).to_string();
        assert_ne!(url, TOKEN);
        for url in [url.clone(), url.to_ascii_lowercase()] {
            assert_eq!(
                whole(&redactor, &[format!("?t={url}&x").as_bytes()]),
                "?t=[secret deploy_token]&x"
            );
        }
        let alone = base64::engine::general_purpose::STANDARD.encode(TOKEN);
        assert_eq!(
            whole(&redactor, &[alone.as_bytes()]),
            "[secret deploy_token]"
        );
    }

    #[test]
    fn ordinary_output_passes_unchanged_and_whole() {
        let redactor = redactor(&[("a", "hunter22-long-enough")]);
        let text: Vec<u8> = (0..200_000u32)
            .map(|i| b"abcdefgh \n"[i as usize % 10])
            .collect();
        let pieces: Vec<&[u8]> = text.chunks(4093).collect();
        assert_eq!(whole(&redactor, &pieces).as_bytes(), text.as_slice());
    }

    #[test]
    fn several_secrets_each_named() {
        let redactor = redactor(&[("one", "first-value-1"), ("two", "second-value-2")]);
        assert_eq!(
            whole(&redactor, &[b"first-value-1 second-", b"value-2"]),
            "[secret one] [secret two]"
        );
    }

    #[test]
    fn secret_files_are_checked_like_key_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "value-of-it\n").expect("written");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(read_secret_file(&path).expect("fine"), b"value-of-it");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let err = read_secret_file(&path).expect_err("group-readable");
        assert!(err.to_string().contains("mode 0640"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).expect("chmod");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).expect("symlink");
        assert!(matches!(
            read_secret_file(&link),
            Err(SecretFileError::Symlink(_))
        ));
        assert!(matches!(
            read_secret_file(dir.path()),
            Err(SecretFileError::NotRegular(_))
        ));
        let short = dir.path().join("short");
        std::fs::write(&short, "abc\n").expect("written");
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(matches!(
            read_secret_file(&short),
            Err(SecretFileError::TooShort(_))
        ));
    }
}
