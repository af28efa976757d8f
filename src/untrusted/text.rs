//! Text from users on its way into line-based outputs (IRC, logs, later mail and webhooks).
//! A NUL ends an IRC line early on some servers and makes the `irc` crate's connection fail; a
//! CR or LF starts a new command or log line; `\x01` makes a line a CTCP request that clients
//! answer automatically. [`one_line`] replaces all of these, and [`check_plain`] is the refusal
//! for a field (a stop reason) that has no business holding them.

/// Is `c` a character that a line-based output must not pass on: the C0 controls (tab
/// included), DEL, the C1 controls, and the Unicode line and paragraph separators.
pub fn is_control(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// `text` as one line of plain text: tabs, line breaks and separators become a space; every
/// other control character (NUL, `\x01` CTCP, colour and bold codes, ESC) becomes U+FFFD, so a
/// reader sees that something was there.
pub fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\t' | '\r' | '\n' | '\u{2028}' | '\u{2029}' => ' ',
            c if is_control(c) => '\u{fffd}',
            c => c,
        })
        .collect()
}

/// A control character where plain text was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {field} contains a control character ({}) at character {position}; use plain text on one line", escape(*.found))]
pub struct NotPlain {
    /// What the text is, for the message ("reason").
    pub field: &'static str,
    pub found: char,
    /// 1-based, in characters.
    pub position: usize,
}

fn escape(c: char) -> String {
    format!("U+{:04X}", u32::from(c))
}

/// Refuses `text` if it holds any control character (see [`is_control`]).
pub fn check_plain(field: &'static str, text: &str) -> Result<(), NotPlain> {
    match text.chars().enumerate().find(|(_, c)| is_control(*c)) {
        Some((index, found)) => Err(NotPlain {
            field,
            found,
            position: index + 1,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_replaced_and_plain_text_is_kept() {
        assert_eq!(one_line("a\r\nb\tc"), "a  b c");
        assert_eq!(
            one_line("stop\0now \u{1}ACTION x\u{1}"),
            "stop\u{fffd}now \u{fffd}ACTION x\u{fffd}"
        );
        assert_eq!(
            one_line("\u{3}4red\u{f} \u{1b}[31m"),
            "\u{fffd}4red\u{fffd} \u{fffd}[31m"
        );
        assert_eq!(one_line("a\u{85}b\u{2028}c"), "a\u{fffd}b c");
        assert_eq!(one_line("héllo wörld → ok"), "héllo wörld → ok");
        assert!(
            one_line(&"\0\u{1}\r\n\t\u{7f}".repeat(50))
                .chars()
                .all(|c| !is_control(c))
        );
    }

    #[test]
    fn check_plain_names_the_character_and_where() {
        assert_eq!(check_plain("reason", "all fine, ünïcode too"), Ok(()));
        let err = check_plain("reason", "ab\0c").expect_err("NUL refused");
        assert_eq!(
            err.to_string(),
            "the reason contains a control character (U+0000) at character 3; use plain text on one line"
        );
        assert!(check_plain("reason", "x\u{1}ACTION\u{1}").is_err());
        assert!(check_plain("reason", "two\nlines").is_err());
    }
}
