//! Parsing OpenSSH `authorized_keys` text into keys with their options, as sshd(8) defines the
//! format ("AUTHORIZED_KEYS FILE FORMAT").
//!
//! `ssh_key`'s own parser only splits options as raw strings and rejects valid lines (`restrict
//! KEY` with no comment, quoted values with spaces, tabs, `#` inside quotes), so the options are
//! parsed here with their semantics and only the key part is handed to
//! `PublicKey::from_openssh`. This module reads no files and decides no logins: `keystore` reads
//! and caches files, `sshd::SshdContext::authenticate` decides.

use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use russh::keys::PublicKey;

/// One usable key line.
#[derive(Debug, Clone)]
pub struct AuthorizedKey {
    pub key: PublicKey,
    pub options: KeyOptions,
    /// 1-based line number in the file.
    pub line: usize,
}

/// The options of a key line that change what the key may do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyOptions {
    /// `restrict`: no pty, no forwarding. The master grants neither anyway; kept for logs.
    pub restrict: bool,
    /// `no-pty`.
    pub no_pty: bool,
    /// `command="..."`: runs instead of whatever the client asks for.
    pub command: Option<String>,
    /// `from="pattern-list"`: where the client may connect from.
    pub from: Option<FromList>,
    /// `expiry-time="YYYYMMDD[HHMM[SS]]"`: the key stops working at this instant.
    pub expiry: Option<DateTime<Utc>>,
}

impl KeyOptions {
    /// Whether `expiry-time` has passed at `now`.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expiry.is_some_and(|expiry| now >= expiry)
    }
}

/// A line that was skipped, or an option that was ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseWarning {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Parses a whole file. Bad lines are skipped with a warning; the rest still work.
pub fn parse(text: &str) -> (Vec<AuthorizedKey>, Vec<ParseWarning>) {
    let mut keys = Vec::new();
    let mut warnings = Vec::new();
    for (index, raw_line) in text.lines().enumerate() {
        let line_number = index + 1;
        let line = raw_line
            .trim_end_matches('\r')
            .trim_start_matches([' ', '\t']);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_line(line) {
            Ok((key, options, notes)) => {
                for message in notes {
                    warnings.push(ParseWarning {
                        line: line_number,
                        message,
                    });
                }
                keys.push(AuthorizedKey {
                    key,
                    options,
                    line: line_number,
                });
            }
            Err(message) => warnings.push(ParseWarning {
                line: line_number,
                message: format!("{message}; line skipped"),
            }),
        }
    }
    (keys, warnings)
}

/// Key types this server accepts.
const KEY_TYPES: [&str; 5] = [
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
];

/// Parses one non-comment line; on success also returns notes (ignored options) to log.
fn parse_line(line: &str) -> Result<(PublicKey, KeyOptions, Vec<String>), String> {
    let first_word_end = line.find([' ', '\t']).unwrap_or(line.len());
    let first_word = &line[..first_word_end];
    // Option names never start like key types, so a line starting with one has no options.
    let looks_like_key_type = ["ssh-", "ecdsa-", "sk-"]
        .iter()
        .any(|prefix| first_word.starts_with(prefix));
    let (options, key_part) = if looks_like_key_type {
        (KeyOptions::default(), (line, Vec::new()))
    } else {
        let (options_text, rest) = split_options(line)?;
        let (options, notes) = parse_options(options_text)?;
        (options, (rest.trim_start_matches([' ', '\t']), notes))
    };
    let (key_text, notes) = key_part;
    let key = parse_key(key_text)?;
    Ok((key, options, notes))
}

fn parse_key(text: &str) -> Result<PublicKey, String> {
    let mut fields = text.split([' ', '\t']).filter(|field| !field.is_empty());
    let (Some(kind), Some(base64)) = (fields.next(), fields.next()) else {
        return Err("no key after the options".to_string());
    };
    if !KEY_TYPES.contains(&kind) {
        return Err(format!("unsupported key type \"{kind}\""));
    }
    PublicKey::from_openssh(&format!("{kind} {base64}"))
        .map_err(|err| format!("cannot parse key: {err}"))
}

/// Splits the option list (up to the first unquoted space or tab) from the rest of the line.
fn split_options(line: &str) -> Result<(&str, &str), String> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (offset, c) in line.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            ' ' | '\t' if !in_quotes => return Ok((&line[..offset], &line[offset..])),
            _ => {}
        }
    }
    if in_quotes {
        return Err("missing closing quote in the options".to_string());
    }
    Err("no key after the options".to_string())
}

/// Parses `opt,opt="value",...` into options; returns notes for ignored options.
fn parse_options(text: &str) -> Result<(KeyOptions, Vec<String>), String> {
    let mut options = KeyOptions::default();
    let mut notes = Vec::new();
    for (name, value) in split_option_list(text)? {
        let lower = name.to_ascii_lowercase();
        let needs_value = |value: Option<String>| {
            value.ok_or_else(|| format!("option \"{name}\" needs a quoted value"))
        };
        let no_value = |value: &Option<String>| match value {
            Some(_) => Err(format!("option \"{name}\" takes no value")),
            None => Ok(()),
        };
        match lower.as_str() {
            "restrict" => {
                no_value(&value)?;
                options.restrict = true;
            }
            "no-pty" => {
                no_value(&value)?;
                options.no_pty = true;
            }
            "command" => {
                if options.command.is_some() {
                    return Err("command= given twice".to_string());
                }
                options.command = Some(needs_value(value)?);
            }
            "from" => {
                if options.from.is_some() {
                    return Err("from= given twice".to_string());
                }
                options.from = Some(FromList::parse(&needs_value(value)?)?);
            }
            "expiry-time" => {
                if options.expiry.is_some() {
                    return Err("expiry-time= given twice".to_string());
                }
                options.expiry = Some(parse_expiry(&needs_value(value)?)?);
            }
            "environment" => {
                needs_value(value)?;
                notes.push("environment= is ignored by this server".to_string());
            }
            "agent-forwarding"
            | "no-agent-forwarding"
            | "port-forwarding"
            | "no-port-forwarding"
            | "x11-forwarding"
            | "no-x11-forwarding"
            | "pty"
            | "user-rc"
            | "no-user-rc"
            | "no-touch-required"
            | "verify-required" => {
                no_value(&value)?;
            }
            "permitopen" | "permitlisten" | "tunnel" => {
                needs_value(value)?;
            }
            "cert-authority" | "principals" => {
                return Err(format!("option \"{name}\" (certificates) is not supported"));
            }
            _ => return Err(format!("unknown option \"{name}\"")),
        }
    }
    Ok((options, notes))
}

/// Splits `a,b="x,y",c` into (name, unquoted value) pairs.
fn split_option_list(text: &str) -> Result<Vec<(String, Option<String>)>, String> {
    let mut list = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == ',' || c == '=' {
                break;
            }
            name.push(c);
            chars.next();
        }
        if name.is_empty() {
            return Err("empty option".to_string());
        }
        let mut value = None;
        if chars.peek() == Some(&'=') {
            chars.next();
            if chars.next() != Some('"') {
                return Err(format!("option \"{name}\" needs a quoted value"));
            }
            let mut unquoted = String::new();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' if chars.peek() == Some(&'"') => {
                        unquoted.push('"');
                        chars.next();
                    }
                    '"' => {
                        closed = true;
                        break;
                    }
                    other => unquoted.push(other),
                }
            }
            if !closed {
                return Err("missing closing quote in the options".to_string());
            }
            value = Some(unquoted);
        }
        list.push((name, value));
        match chars.next() {
            None => return Ok(list),
            Some(',') => continue,
            Some(other) => return Err(format!("unexpected '{other}' after an option value")),
        }
    }
}

/// `YYYYMMDD[HHMM[SS]]`, local time as sshd takes it, or UTC with a trailing `Z`.
fn parse_expiry(text: &str) -> Result<DateTime<Utc>, String> {
    let bad =
        || format!("bad expiry-time \"{text}\" (write YYYYMMDD[HHMM[SS]], optionally ending in Z)");
    let (digits, utc) = match text.strip_suffix(['Z', 'z']) {
        Some(digits) => (digits, true),
        None => (text, false),
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) || !matches!(digits.len(), 8 | 12 | 14) {
        return Err(bad());
    }
    let number = |range: std::ops::Range<usize>| -> Result<u32, String> {
        digits
            .get(range)
            .map_or(Ok(0), |part| part.parse::<u32>().map_err(|_| bad()))
    };
    let date = NaiveDate::from_ymd_opt(
        i32::try_from(number(0..4)?).map_err(|_| bad())?,
        number(4..6)?,
        number(6..8)?,
    )
    .ok_or_else(bad)?;
    let (hour, minute, second) = if digits.len() >= 12 {
        (
            number(8..10)?,
            number(10..12)?,
            if digits.len() == 14 {
                number(12..14)?
            } else {
                0
            },
        )
    } else {
        (0, 0, 0)
    };
    let naive: NaiveDateTime = date.and_hms_opt(hour, minute, second).ok_or_else(bad)?;
    if utc {
        return Ok(Utc.from_utc_datetime(&naive));
    }
    chrono::Local
        .from_local_datetime(&naive)
        .earliest()
        .map(|local| local.with_timezone(&Utc))
        .ok_or_else(bad)
}

/// A `from="..."` pattern list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FromList {
    patterns: Vec<HostPattern>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct HostPattern {
    negated: bool,
    matcher: Matcher,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Matcher {
    /// `*` and `?` wildcards against the address as text, case-insensitive.
    Wildcard(String),
    /// `addr/bits`.
    Cidr { network: IpAddr, bits: u8 },
}

impl FromList {
    fn parse(list: &str) -> Result<FromList, String> {
        let mut patterns = Vec::new();
        for raw in list.split(',') {
            let raw = raw.trim();
            let (negated, pattern) = match raw.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, raw),
            };
            if pattern.is_empty() {
                return Err(format!("empty pattern in from=\"{list}\""));
            }
            let matcher = match pattern.split_once('/') {
                Some((address, bits)) => {
                    let network: IpAddr = address
                        .parse()
                        .map_err(|_| format!("bad address \"{address}\" in from=\"{list}\""))?;
                    let max = if network.is_ipv4() { 32 } else { 128 };
                    let bits: u8 = bits
                        .parse()
                        .ok()
                        .filter(|&bits| bits <= max)
                        .ok_or_else(|| format!("bad mask \"/{bits}\" in from=\"{list}\""))?;
                    Matcher::Cidr { network, bits }
                }
                None => Matcher::Wildcard(pattern.to_ascii_lowercase()),
            };
            patterns.push(HostPattern { negated, matcher });
        }
        Ok(FromList { patterns })
    }

    /// sshd's rule: any matching negated pattern refuses; otherwise a positive match allows.
    pub fn allows(&self, client: IpAddr) -> bool {
        let client = client.to_canonical();
        let text = client.to_string().to_ascii_lowercase();
        let mut allowed = false;
        for pattern in &self.patterns {
            let matches = match &pattern.matcher {
                Matcher::Wildcard(wildcard) => wildcard_match(wildcard.as_bytes(), text.as_bytes()),
                Matcher::Cidr { network, bits } => in_network(client, *network, *bits),
            };
            if matches {
                if pattern.negated {
                    return false;
                }
                allowed = true;
            }
        }
        allowed
    }
}

fn in_network(client: IpAddr, network: IpAddr, bits: u8) -> bool {
    match (client, network.to_canonical()) {
        (IpAddr::V4(client), IpAddr::V4(network)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(client) & mask == u32::from(network) & mask
        }
        (IpAddr::V6(client), IpAddr::V6(network)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(client) & mask == u128::from(network) & mask
        }
        _ => false,
    }
}

/// `*` matches any run, `?` one character (OpenSSH's match_pattern).
fn wildcard_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
    const ECDSA256: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBM9aVTDCqjFh1pbrQnK/S5W75dif0dCmXsyhFms+X3EWH24nwRJv5Ce/f3FgoN8yqaY1ODzALk8ELRC6sVh4AyI=";

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    #[test]
    fn plain_keys_comments_blank_lines_and_tabs() {
        let text = format!(
            "# a comment\n\n{ED25519} alice@laptop\n  {ECDSA256}\n{}\tcomment\r\n",
            ED25519.replace(' ', "\t")
        );
        let (keys, warnings) = parse(&text);
        assert_eq!(warnings, vec![]);
        assert_eq!(
            keys.iter().map(|k| k.line).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        assert_eq!(keys[0].options, KeyOptions::default());
    }

    #[test]
    fn restrict_with_no_comment_and_quoted_command() {
        let text = format!(
            "restrict {ED25519}\nno-pty,command=\"watch -b \\\"my builder\\\" # not a comment, really\" {ED25519} c\n"
        );
        let (keys, warnings) = parse(&text);
        assert_eq!(warnings, vec![]);
        assert!(keys[0].options.restrict);
        assert!(keys[1].options.no_pty);
        assert_eq!(
            keys[1].options.command.as_deref(),
            Some("watch -b \"my builder\" # not a comment, really")
        );
    }

    #[test]
    fn bad_lines_are_skipped_with_a_warning_and_the_rest_work() {
        let text = format!(
            "frobnicate {ED25519}\nssh-ed25519 AAAA!!!\nssh-dss AAAAB3NzaC1kc3M=\ncommand=\"unterminated {ED25519}\ncert-authority {ED25519}\ncommand=\"a\",command=\"b\" {ED25519}\n{ED25519} good\nenvironment=\"A=b\" {ED25519}\n"
        );
        let (keys, warnings) = parse(&text);
        assert_eq!(keys.iter().map(|k| k.line).collect::<Vec<_>>(), vec![7, 8]);
        let lines: Vec<usize> = warnings.iter().map(|w| w.line).collect();
        assert_eq!(lines, vec![1, 2, 3, 4, 5, 6, 8]);
        assert!(
            warnings[0]
                .message
                .contains("unknown option \"frobnicate\""),
            "{}",
            warnings[0]
        );
        assert!(
            warnings[1].message.contains("cannot parse key"),
            "{}",
            warnings[1]
        );
        assert!(
            warnings[2].message.contains("unsupported key type"),
            "{}",
            warnings[2]
        );
        assert!(
            warnings[3].message.contains("missing closing quote"),
            "{}",
            warnings[3]
        );
        assert!(
            warnings[4].message.contains("not supported"),
            "{}",
            warnings[4]
        );
        assert!(
            warnings[5].message.contains("given twice"),
            "{}",
            warnings[5]
        );
        assert!(
            warnings[6].message.contains("environment= is ignored"),
            "{}",
            warnings[6]
        );
    }

    #[test]
    fn from_patterns_follow_sshd() {
        let list = |text: &str| FromList::parse(text).expect("valid list");
        assert!(list("127.0.0.1").allows(ip("127.0.0.1")));
        assert!(list("127.0.0.?").allows(ip("127.0.0.1")));
        assert!(!list("127.0.0.?").allows(ip("127.0.0.10")));
        assert!(list("10.*,127.*").allows(ip("127.0.0.1")));
        assert!(!list("*,!127.0.0.1").allows(ip("127.0.0.1")));
        assert!(list("!10.*,127.0.0.1").allows(ip("127.0.0.1")));
        assert!(
            !list("!127.*").allows(ip("127.0.0.1")),
            "only negations never allow"
        );
        assert!(list("10.1.0.0/16").allows(ip("10.1.200.3")));
        assert!(!list("10.1.0.0/16").allows(ip("10.2.0.1")));
        assert!(list("::1/128").allows(ip("::1")));
        assert!(list("0.0.0.0/0").allows(ip("192.0.2.1")));
        assert!(
            list("127.0.0.1").allows(ip("::ffff:127.0.0.1")),
            "mapped IPv4"
        );
        assert!(list("FE80::*").allows(ip("fe80::1")));
        assert!(FromList::parse("10.0.0.0/33").is_err());
        assert!(FromList::parse("nonsense/8").is_err());
        assert!(FromList::parse("a,,b").is_err());
    }

    #[test]
    fn expiry_time_forms() {
        let utc = |text: &str| parse_expiry(text).expect("valid");
        assert_eq!(utc("20300102Z").to_rfc3339(), "2030-01-02T00:00:00+00:00");
        assert_eq!(
            utc("203001020304Z").to_rfc3339(),
            "2030-01-02T03:04:00+00:00"
        );
        assert_eq!(
            utc("20300102030405Z").to_rfc3339(),
            "2030-01-02T03:04:05+00:00"
        );
        assert!(parse_expiry("20300102").is_ok(), "local time");
        for bad in [
            "2030",
            "2030010",
            "20301302",
            "20300230",
            "203001022500",
            "2030010203x4",
            "",
        ] {
            assert!(parse_expiry(bad).is_err(), "{bad}");
        }
        let options = KeyOptions {
            expiry: Some(utc("20200101Z")),
            ..KeyOptions::default()
        };
        assert!(options.is_expired(Utc::now()));
        let (keys, warnings) = parse(&format!("expiry-time=\"2020\" {ED25519}\n"));
        assert!(keys.is_empty());
        assert!(
            warnings[0].message.contains("bad expiry-time"),
            "{}",
            warnings[0]
        );
    }

    #[test]
    fn options_are_case_insensitive_and_permissive_ones_accepted() {
        let text =
            format!("No-PTY,no-port-forwarding,permitopen=\"h:1\",FROM=\"127.0.0.1\" {ED25519}\n");
        let (keys, warnings) = parse(&text);
        assert_eq!(warnings, vec![]);
        assert!(keys[0].options.no_pty);
        assert!(keys[0].options.from.is_some());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(text in "\\PC{0,300}") {
            let _ = parse(&text);
        }

        #[test]
        fn never_panics_with_options(options in "[a-z=\",!*?./0-9 \\\\-]{0,60}") {
            let _ = parse(&format!("{options} {ED25519}\n"));
        }
    }
}
