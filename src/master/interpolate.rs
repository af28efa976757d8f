//! Properties in step commands: `%(prop:NAME)s` (empty when the build has no such property)
//! and `%(prop:NAME:-DEFAULT)s`. Values are shell-quoted as they are put in, so a property can
//! never run a command of its own; `%%` is a literal `%`. Pure; checked when the config is read
//! and applied when a build plans its steps.

use std::collections::BTreeMap;

/// One piece of a command: literal text, or a property to put in.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a str),
    Property {
        name: &'a str,
        default: Option<&'a str>,
    },
}

/// Why a command's interpolation is malformed; the config reports it on the step's line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterpolationError {
    #[error("unfinished %(...)s at byte {0} (write %% for a literal %)")]
    Unfinished(usize),
    #[error("unknown interpolation '%({0})s' (only %(prop:NAME)s and %(prop:NAME:-DEFAULT)s)")]
    Unknown(String),
    #[error("'{0}' is not a property name (letters, digits and _)")]
    BadName(String),
    #[error(
        "%(prop:{0})s stands inside quotes; write it bare: its value is quoted for the shell already"
    )]
    Quoted(String),
}

fn pieces(command: &str) -> Result<Vec<Piece<'_>>, InterpolationError> {
    let mut pieces = Vec::new();
    let mut rest = command;
    let mut offset = 0;
    while let Some(at) = rest.find('%') {
        pieces.push(Piece::Text(&rest[..at]));
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('%') {
            pieces.push(Piece::Text("%"));
            offset += at + 2;
            rest = tail;
            continue;
        }
        let Some(inner_and_tail) = after.strip_prefix('(') else {
            // A lone % (as in `date +%s`) stays as it is.
            pieces.push(Piece::Text("%"));
            offset += at + 1;
            rest = after;
            continue;
        };
        let Some(close) = inner_and_tail.find(")s") else {
            return Err(InterpolationError::Unfinished(offset + at));
        };
        let inner = &inner_and_tail[..close];
        let Some(spec) = inner.strip_prefix("prop:") else {
            return Err(InterpolationError::Unknown(inner.to_string()));
        };
        let (name, default) = match spec.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (spec, None),
        };
        if !crate::change::is_property_name(name) {
            return Err(InterpolationError::BadName(name.to_string()));
        }
        pieces.push(Piece::Property { name, default });
        let consumed = 1 + 1 + close + 2;
        offset += at + consumed;
        rest = &rest[at + consumed..];
    }
    pieces.push(Piece::Text(rest));
    Ok(pieces)
}

/// Checks a command's interpolations without properties (at config time). A property inside
/// quotes is refused: inside double quotes `$(...)` in its value would still run.
pub fn check(command: &str) -> Result<(), InterpolationError> {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for piece in pieces(command)? {
        match piece {
            Piece::Text(part) => {
                for c in part.chars() {
                    match (quote, c) {
                        _ if escaped => escaped = false,
                        (Some('\''), '\'') => quote = None,
                        (Some('\''), _) => {}
                        (_, '\\') => escaped = true,
                        (None, '\'' | '"') => quote = Some(c),
                        (Some('"'), '"') => quote = None,
                        _ => {}
                    }
                }
            }
            Piece::Property { name, .. } if quote.is_some() => {
                return Err(InterpolationError::Quoted(name.to_string()));
            }
            Piece::Property { .. } => {}
        }
    }
    Ok(())
}

/// The command with its properties put in, each value quoted for `/bin/sh`.
pub fn apply(
    command: &str,
    properties: &BTreeMap<String, String>,
) -> Result<String, InterpolationError> {
    let mut out = String::with_capacity(command.len());
    for piece in pieces(command)? {
        match piece {
            Piece::Text(text) => out.push_str(text),
            Piece::Property { name, default } => {
                let value = properties
                    .get(name)
                    .map(String::as_str)
                    .or(default)
                    .unwrap_or("");
                out.push_str(&quote(value));
            }
        }
    }
    Ok(out)
}

/// Single quotes for `/bin/sh`: nothing inside is special but the quote itself.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn properties_are_put_in_quoted() {
        let properties = props(&[("ticket", "42"), ("evil", "x'; rm -rf / #$(id)")]);
        assert_eq!(
            apply("make ticket=%(prop:ticket)s", &properties).expect("ok"),
            "make ticket='42'"
        );
        let evil = apply("echo %(prop:evil)s", &properties).expect("ok");
        assert_eq!(evil, r"echo 'x'\''; rm -rf / #$(id)'");
        let output = std::process::Command::new("sh")
            .args(["-c", &evil])
            .output()
            .expect("sh runs");
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            "x'; rm -rf / #$(id)\n"
        );
        assert_eq!(
            apply(
                "%(prop:missing)s %(prop:level:-3)s 100%% date +%s",
                &properties
            )
            .expect("ok"),
            "'' '3' 100% date +%s"
        );
    }

    #[test]
    fn malformed_interpolations_are_errors() {
        assert_eq!(
            check("echo %(prop:x"),
            Err(InterpolationError::Unfinished(5))
        );
        assert!(matches!(
            check("echo %(src:x)s"),
            Err(InterpolationError::Unknown(_))
        ));
        assert!(matches!(
            check("echo %(prop:a b)s"),
            Err(InterpolationError::BadName(_))
        ));
        assert_eq!(check("plain % and %% and %(prop:ok)s"), Ok(()));
        assert_eq!(
            check(r#"echo "ticket %(prop:t)s""#),
            Err(InterpolationError::Quoted("t".into()))
        );
        assert!(matches!(
            check("echo 'x %(prop:t)s'"),
            Err(InterpolationError::Quoted(_))
        ));
        assert_eq!(check(r#"echo "a" %(prop:t)s 'b' \"%(prop:u)s"#), Ok(()));
    }
}
