//! Finding the header lines of every file in a patch, git or plain, without parsing the rest:
//! the dispatch in `patch_apply` needs to know whether any section is a git one, `git_headers`
//! needs the byte range of every line that names a path, and `plain` needs the `---`/`+++`
//! lines whose timestamps diffy drops. Not: reading the paths out of those lines, nor parsing
//! hunks beyond their line counts.

use std::ops::Range;

use super::trim_eol;

/// A header line that names a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum HeaderKind {
    DiffGit,
    Old,
    New,
    RenameFrom,
    RenameTo,
    CopyFrom,
    CopyTo,
}

pub(super) const EXTENDED_HEADERS: [(&[u8], HeaderKind); 4] = [
    (b"rename from ", HeaderKind::RenameFrom),
    (b"rename to ", HeaderKind::RenameTo),
    (b"copy from ", HeaderKind::CopyFrom),
    (b"copy to ", HeaderKind::CopyTo),
];

/// One file's header lines: a `diff --git` section, or a plain `---`/`+++` pair.
#[derive(Debug)]
pub(super) struct Section {
    pub git: bool,
    /// Each line's kind and byte range in the patch, line ending excluded.
    pub headers: Vec<(HeaderKind, Range<usize>)>,
}

/// Finds the header lines of every file in the patch, skipping hunk bodies by their line counts
/// (a removed line `-- x` is `--- x` in the patch and must not be taken for a header).
pub(super) fn scan(patch: &[u8], lines: &[Range<usize>]) -> Vec<Section> {
    enum State {
        Outside,
        Header,
        Body { old: u64, new: u64 },
        Binary,
    }
    let mut sections: Vec<Section> = Vec::new();
    let mut state = State::Outside;
    let mut index = 0;
    while let Some(line_range) = lines.get(index) {
        let text = trim_eol(&patch[line_range.clone()]);
        let range = line_range.start..line_range.start + text.len();
        index += 1;
        if let State::Body { old, new } = &mut state {
            match text.first() {
                Some(b' ') | None => {
                    *old = old.saturating_sub(1);
                    *new = new.saturating_sub(1);
                }
                Some(b'-') => *old = old.saturating_sub(1),
                Some(b'+') => *new = new.saturating_sub(1),
                Some(b'\\') => {}
                // A short hunk: read this line again as a header.
                _ => {
                    state = State::Outside;
                    index -= 1;
                    continue;
                }
            }
            if *old == 0 && *new == 0 {
                state = State::Outside;
            }
            continue;
        }
        let in_git_header =
            matches!(state, State::Header) && sections.last().is_some_and(|section| section.git);
        if text.starts_with(b"diff --git ") {
            sections.push(Section {
                git: true,
                headers: vec![(HeaderKind::DiffGit, range)],
            });
            state = State::Header;
        } else if text.starts_with(b"--- ") {
            let next_is_new = lines
                .get(index)
                .is_some_and(|next| patch[next.clone()].starts_with(b"+++ "));
            if in_git_header {
                push_header(&mut sections, HeaderKind::Old, range);
            } else if next_is_new {
                sections.push(Section {
                    git: false,
                    headers: vec![(HeaderKind::Old, range)],
                });
                state = State::Header;
            }
        } else if text.starts_with(b"+++ ") {
            if matches!(state, State::Header) {
                push_header(&mut sections, HeaderKind::New, range);
            }
        } else if text.starts_with(b"@@ ") && !matches!(state, State::Binary) {
            if let (false, Some((old, new))) = (sections.is_empty(), hunk_counts(text)) {
                state = State::Body { old, new };
            }
        } else if in_git_header && text.starts_with(b"GIT binary patch") {
            state = State::Binary;
        } else if in_git_header
            && let Some((_, kind)) = EXTENDED_HEADERS
                .iter()
                .find(|(prefix, _)| text.starts_with(prefix))
        {
            push_header(&mut sections, *kind, range);
        }
    }
    sections
}

fn push_header(sections: &mut [Section], kind: HeaderKind, range: Range<usize>) {
    if let Some(section) = sections.last_mut() {
        section.headers.push((kind, range));
    }
}

/// The old and new line counts of `@@ -a[,b] +c[,d] @@`.
fn hunk_counts(header: &[u8]) -> Option<(u64, u64)> {
    let rest = header.strip_prefix(b"@@ -")?;
    let end = rest.windows(3).position(|window| window == b" @@")?;
    let ranges = std::str::from_utf8(&rest[..end]).ok()?;
    let (old, new) = ranges.split_once(" +")?;
    let count = |range: &str| match range.split_once(',') {
        Some((_, len)) => len.parse().ok(),
        None => range.parse::<u64>().ok().map(|_| 1),
    };
    Some((count(old)?, count(new)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slave::checkout::patch_apply::split_lines;

    #[test]
    fn hunk_bodies_are_not_taken_for_headers() {
        let patch = b"--- a/x\n+++ b/x\n@@ -1,2 +1,2 @@\n--- removed\n+++ added\n@@ -9 +9 @@\n-a\n+b\n--- a/y\n+++ b/y\n@@ -1 +1 @@\n-c\n+d\n";
        let sections = scan(patch, &split_lines(patch));
        assert_eq!(sections.len(), 2);
    }

    #[test]
    fn hunk_counts_default_to_one() {
        assert_eq!(hunk_counts(b"@@ -1,3 +1,4 @@ fn main"), Some((3, 4)));
        assert_eq!(hunk_counts(b"@@ -1 +0,0 @@"), Some((1, 0)));
        assert_eq!(hunk_counts(b"@@ nonsense"), None);
    }
}
