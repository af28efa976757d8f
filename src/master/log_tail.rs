//! The last lines of a step's log, made safe to print in a terminal: what `try --wait` shows
//! of a failed step. Reads at most [`TAIL_BYTES`] from the end of the log, never the whole log
//! (a file here; `master::logs` hands it the end of a log kept in a shared store).

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// How much of the end of a log is read for its tail.
pub const TAIL_BYTES: u64 = 256 * 1024;
/// The most lines a tail may ask for.
pub const MAX_TAIL_LINES: usize = 1000;
/// Longer lines are cut (a minified file, a progress bar without newlines).
const MAX_LINE_CHARS: usize = 400;

/// The last `lines` lines of the file at `path` and whether it has more before them; none when
/// the file does not exist or is empty. Blocking.
pub fn tail(path: &Path, lines: usize) -> std::io::Result<Option<(Vec<String>, bool)>> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    let size = file.metadata()?.len();
    if size == 0 || lines == 0 {
        return Ok(None);
    }
    let start = size.saturating_sub(TAIL_BYTES);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.take(TAIL_BYTES).read_to_end(&mut bytes)?;
    Ok(tail_of(&bytes, start > 0, lines))
}

/// The same for the end of a log read elsewhere (a shared store): `bytes` are its last bytes,
/// at most [`TAIL_BYTES`], from the middle of the log when `partial_start`.
pub fn tail_of(bytes: &[u8], partial_start: bool, lines: usize) -> Option<(Vec<String>, bool)> {
    if bytes.is_empty() || lines == 0 {
        return None;
    }
    Some(last_lines(bytes, partial_start, lines.min(MAX_TAIL_LINES)))
}

/// The last `wanted` lines of `bytes` (whose first line is partial when `partial_start`), and
/// whether there are more before them.
fn last_lines(bytes: &[u8], partial_start: bool, wanted: usize) -> (Vec<String>, bool) {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let mut all: Vec<&[u8]> = bytes.split(|byte| *byte == b'\n').collect();
    let mut cut = false;
    if partial_start && all.len() > 1 {
        all.remove(0);
        cut = true;
    }
    if all.len() > wanted {
        all.drain(..all.len() - wanted);
        cut = true;
    }
    (all.into_iter().map(terminal_safe).collect(), cut)
}

/// One line as a terminal should show it: what follows its last carriage return (a progress
/// bar's final state), lossy UTF-8, tabs kept, every other control character (escape sequences
/// included) replaced, at most [`MAX_LINE_CHARS`].
fn terminal_safe(line: &[u8]) -> String {
    let line = match line.iter().rposition(|byte| *byte == b'\r') {
        Some(at) if at + 1 < line.len() => &line[at + 1..],
        Some(_) => line.strip_suffix(b"\r").unwrap_or(line),
        None => line,
    };
    let mut safe: String = String::from_utf8_lossy(line)
        .chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                '\u{fffd}'
            } else {
                c
            }
        })
        .take(MAX_LINE_CHARS + 1)
        .collect();
    if safe.chars().count() > MAX_LINE_CHARS {
        safe = safe.chars().take(MAX_LINE_CHARS).collect();
        safe.push('…');
    }
    safe
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_lines_and_whether_more_came_before() {
        assert_eq!(
            last_lines(b"a\nb\nc\n", false, 2),
            (vec!["b".to_string(), "c".to_string()], true)
        );
        assert_eq!(
            last_lines(b"a\nb", false, 5),
            (vec!["a".to_string(), "b".to_string()], false)
        );
        // Read from the middle of a file: the first, partial line is dropped.
        assert_eq!(
            last_lines(b"rtial\nwhole\n", true, 5),
            (vec!["whole".to_string()], true)
        );
    }

    #[test]
    fn lines_are_safe_for_a_terminal() {
        assert_eq!(
            terminal_safe(b"\x1b[31mred\x1b[0m\tok"),
            "\u{fffd}[31mred\u{fffd}[0m\tok"
        );
        assert_eq!(terminal_safe(b" 10%\r 50%\r100%"), "100%");
        assert_eq!(terminal_safe(b"crlf\r"), "crlf");
        assert_eq!(terminal_safe(&[0xff, b'x']), "\u{fffd}x");
        let long = vec![b'x'; 1000];
        assert_eq!(terminal_safe(&long).chars().count(), MAX_LINE_CHARS + 1);
    }

    #[test]
    fn a_missing_or_empty_log_has_no_tail() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(tail(&dir.path().join("none"), 5).expect("no error"), None);
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "").expect("write");
        assert_eq!(tail(&empty, 5).expect("no error"), None);
        let big = dir.path().join("big");
        let text: String = (0..100_000).map(|n| format!("line {n}\n")).collect();
        std::fs::write(&big, text).expect("write");
        assert_eq!(
            tail(&big, 2).expect("read"),
            Some((
                vec!["line 99998".to_string(), "line 99999".to_string()],
                true
            ))
        );
    }
}
