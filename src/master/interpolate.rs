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
    #[error(
        "%(prop:{0})s stands inside backticks, where a backtick in its value would end the command substitution; set a shell variable from it first (V=%(prop:{0})s) and use \"$V\""
    )]
    Backticks(String),
    #[error(
        "%(prop:{0})s stands in a here-document, where quotes are plain text and $(...) in its value would run; set a shell variable from it first (V=%(prop:{0})s) and use $V there"
    )]
    HereDocument(String),
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

/// Checks a command's interpolations without properties (at config time). A property is
/// refused where the shell would read its quoted value as code: inside quotes (inside double
/// quotes `$(...)` in its value would still run), inside backticks (a backtick in the value ends
/// the substitution, quotes or not) and in a here-document's body (where quotes are plain text
/// and `$(...)` runs).
pub fn check(command: &str) -> Result<(), InterpolationError> {
    // The command with each property as one marker character, so the scan sees the shell text
    // whole (a here-document's delimiter is found by looking ahead).
    let mut skeleton = String::with_capacity(command.len());
    let mut names = Vec::new();
    for piece in pieces(command)? {
        match piece {
            // A marker in the text itself is no property; a space scans the same for this.
            Piece::Text(text) => {
                skeleton.extend(text.chars().map(|c| if c == MARK { ' ' } else { c }))
            }
            Piece::Property { name, .. } => {
                skeleton.push(MARK);
                names.push(name);
            }
        }
    }
    let chars: Vec<char> = skeleton.chars().collect();
    let mut properties = names.into_iter();
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut backtick = false;
    // Here-documents announced on the current line, read in order after its newline.
    let mut pending: Vec<(String, bool)> = Vec::new();
    let mut index = 0;
    while index < chars.len() {
        let c = chars[index];
        if c == MARK {
            let name = properties.next().unwrap_or_default().to_string();
            if quote.is_some() {
                return Err(InterpolationError::Quoted(name));
            }
            if backtick {
                return Err(InterpolationError::Backticks(name));
            }
            index += 1;
            continue;
        }
        match (quote, c) {
            _ if escaped => escaped = false,
            (Some('\''), '\'') => quote = None,
            (Some('\''), _) => {}
            (_, '\\') => escaped = true,
            (None, '\'' | '"') => quote = Some(c),
            (Some('"'), '"') => quote = None,
            (_, '`') => backtick = !backtick,
            (None, '<')
                if chars.get(index + 1) == Some(&'<') && chars.get(index + 2) != Some(&'<') =>
            {
                let (delimiter, strip_tabs, next) = heredoc_delimiter(&chars, index + 2);
                pending.push((delimiter, strip_tabs));
                index = next;
                continue;
            }
            (None, '\n') if !pending.is_empty() => {
                index += 1;
                for (delimiter, strip_tabs) in std::mem::take(&mut pending) {
                    // The body: every line up to the delimiter's own line.
                    loop {
                        let line_end = chars[index..]
                            .iter()
                            .position(|c| *c == '\n')
                            .map_or(chars.len(), |at| index + at);
                        let line = &chars[index..line_end];
                        let marks = line.iter().filter(|c| **c == MARK).count();
                        if marks > 0 {
                            let name = properties.next().unwrap_or_default().to_string();
                            return Err(InterpolationError::HereDocument(name));
                        }
                        let text: String = line.iter().collect();
                        let text = if strip_tabs {
                            text.trim_start_matches('\t')
                        } else {
                            &text
                        };
                        index = (line_end + 1).min(chars.len());
                        if text == delimiter || line_end >= chars.len() {
                            break;
                        }
                    }
                }
                continue;
            }
            _ => {}
        }
        index += 1;
    }
    Ok(())
}

/// Stands for a property in `check`'s scan.
const MARK: char = '\u{1}';

/// The delimiter word of a here-document whose `<<` ends before `from`: (the word with its
/// quotes removed, whether `<<-` strips leading tabs, where the scan goes on).
fn heredoc_delimiter(chars: &[char], from: usize) -> (String, bool, usize) {
    let mut index = from;
    let strip_tabs = chars.get(index) == Some(&'-');
    if strip_tabs {
        index += 1;
    }
    while chars.get(index).is_some_and(|c| *c == ' ' || *c == '\t') {
        index += 1;
    }
    let mut word = String::new();
    while let Some(&c) = chars.get(index) {
        if c.is_whitespace() || matches!(c, ';' | '|' | '&' | '<' | '>' | '(' | ')') {
            break;
        }
        if !matches!(c, '\'' | '"' | '\\') {
            word.push(c);
        }
        index += 1;
    }
    (word, strip_tabs, index)
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

    #[test]
    fn properties_in_backticks_and_here_documents_are_refused() {
        // A value with a backtick ends the substitution whatever the quotes:
        // `echo 'x`rm -rf ~`'` would run rm.
        assert_eq!(
            check("echo `echo %(prop:t)s`"),
            Err(InterpolationError::Backticks("t".into()))
        );
        assert_eq!(check("echo `date` %(prop:t)s"), Ok(()));
        // In a here-document body quotes are text: '$(id)' runs id.
        assert_eq!(
            check("cat <<EOF\nticket %(prop:t)s\nEOF"),
            Err(InterpolationError::HereDocument("t".into()))
        );
        assert_eq!(
            check("cat <<-'END' > f\n\tline %(prop:u)s\n\tEND"),
            Err(InterpolationError::HereDocument("u".into()))
        );
        // Before the body, on the line of `<<`, and after the delimiter, it is a plain word.
        assert_eq!(
            check("V=%(prop:t)s; cat <<EOF > %(prop:f)s\n$V\nEOF\necho %(prop:t)s"),
            Ok(())
        );
        // A here-string is one quoted word; `<<` in quotes is text.
        assert_eq!(check("cat <<< %(prop:t)s"), Ok(()));
        assert_eq!(check("echo '<<x'\necho %(prop:t)s"), Ok(()));
        // The applied command of such a check really is safe for sh.
        let command = "cat <<EOF\n$V\nEOF\necho %(prop:t)s";
        assert_eq!(check(command), Ok(()));
        let applied = apply(command, &props(&[("t", "`id`'$(id)")])).expect("applies");
        assert!(applied.ends_with(r"echo '`id`'\''$(id)'"), "{applied}");
    }
}
