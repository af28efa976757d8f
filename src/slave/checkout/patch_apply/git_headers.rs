//! Rewriting the path-naming headers of a git diff (`diff --git`, `---`/`+++`, `rename` and
//! `copy` lines) into the one form libgit2 reads, and collecting every path they name for
//! checking. Not: checking those paths (`paths`), nor applying the diff (`git_diff`).
//!
//! libgit2 only reads paths with exactly one leading component (`a/`, `b/`) and ends an
//! unquoted name at its first space, so every such header is rewritten to that form, stripped
//! by the patch level and C-quoted where needed: `-p0` diffs from `git diff --no-prefix` and
//! names with spaces then work. Every other byte of the patch is kept as sent.

use std::collections::BTreeMap;
use std::ops::Range;

use super::lossy;
use super::paths::{quote, strip_components, stripped, unquote, unquote_whole};
use super::scan::{EXTENDED_HEADERS, HeaderKind, Section};
use crate::slave::checkout::CheckoutError;

/// Rewrites every path-naming header of the git sections to libgit2's form (see the module
/// doc); returns the new patch and every path it names, stripped, for checking.
pub(super) fn normalize_git_headers(
    patch: &[u8],
    sections: &[Section],
    strip: usize,
) -> Result<(Vec<u8>, Vec<Vec<u8>>), CheckoutError> {
    let mut edits: Vec<(Range<usize>, Vec<u8>)> = Vec::new();
    let mut paths = Vec::new();
    for section in sections.iter().filter(|section| section.git) {
        let mut named: BTreeMap<HeaderKind, Vec<u8>> = BTreeMap::new();
        let mut diff_git_range = None;
        for (kind, range) in &section.headers {
            let text = &patch[range.clone()];
            let (prefix, side): (&[u8], &[u8]) = match kind {
                HeaderKind::DiffGit => {
                    diff_git_range = Some(range.clone());
                    continue;
                }
                HeaderKind::Old => (b"--- ", b"a/"),
                HeaderKind::New => (b"+++ ", b"b/"),
                _ => {
                    let prefix = EXTENDED_HEADERS
                        .iter()
                        .find(|(_, candidate)| candidate == kind)
                        .map_or(&b""[..], |(prefix, _)| *prefix);
                    (prefix, b"")
                }
            };
            let value = &text[prefix.len().min(text.len())..];
            let raw = if matches!(kind, HeaderKind::Old | HeaderKind::New) {
                let path = header_file_name(value)?;
                if path == b"/dev/null" {
                    continue;
                }
                path
            } else {
                unquote_whole(value)?
            };
            // Rename and copy lines carry no a/ b/ prefix: one component fewer to strip.
            let count = if side.is_empty() {
                strip.saturating_sub(1)
            } else {
                strip
            };
            let path = stripped(&raw, count)?.to_vec();
            let mut line = prefix.to_vec();
            line.extend(quote(&[side, &path].concat()));
            edits.push((range.clone(), line));
            named.insert(*kind, path.clone());
            paths.push(path);
        }
        let Some(diff_git_range) = diff_git_range else {
            continue;
        };
        let (old, new) = diff_git_paths(&patch[diff_git_range.clone()], strip, &named)?;
        let mut line = b"diff --git ".to_vec();
        line.extend(quote(&[b"a/", old.as_slice()].concat()));
        line.push(b' ');
        line.extend(quote(&[b"b/", new.as_slice()].concat()));
        edits.push((diff_git_range, line));
        paths.push(old);
        paths.push(new);
    }
    edits.sort_by_key(|(range, _)| range.start);
    let mut normalized = Vec::with_capacity(patch.len() + edits.len() * 8);
    let mut copied_to = 0;
    for (range, line) in edits {
        normalized.extend_from_slice(&patch[copied_to..range.start]);
        normalized.extend(line);
        copied_to = range.end;
    }
    normalized.extend_from_slice(&patch[copied_to..]);
    Ok((normalized, paths))
}

/// The two paths of a `diff --git` line, stripped. Unquoted names with spaces are ambiguous;
/// like git, take the split whose two halves name the same file, else the rename/copy or
/// `---`/`+++` names of the same section.
fn diff_git_paths(
    line: &[u8],
    strip: usize,
    named: &BTreeMap<HeaderKind, Vec<u8>>,
) -> Result<(Vec<u8>, Vec<u8>), CheckoutError> {
    let value = line.strip_prefix(b"diff --git ").unwrap_or(line);
    let bad = || {
        CheckoutError::BadPatch(format!(
            "cannot tell the two paths apart in `{}`",
            lossy(line)
        ))
    };
    let pair = |old: &[u8], new: &[u8]| -> Result<(Vec<u8>, Vec<u8>), CheckoutError> {
        Ok((
            stripped(old, strip)?.to_vec(),
            stripped(new, strip)?.to_vec(),
        ))
    };
    if value.starts_with(b"\"") {
        let (old, rest) = unquote(value)?;
        let rest = rest.strip_prefix(b" ").ok_or_else(bad)?;
        return pair(&old, &unquote_whole(rest)?);
    }
    let spaces: Vec<usize> = (0..value.len()).filter(|&i| value[i] == b' ').collect();
    if value.ends_with(b"\"") {
        for &space in &spaces {
            if let Ok(new) = unquote_whole(&value[space + 1..]) {
                return pair(&value[..space], &new);
            }
        }
        return Err(bad());
    }
    for &space in &spaces {
        let (old, new) = (&value[..space], &value[space + 1..]);
        if let (Some(a), Some(b)) = (strip_components(old, strip), strip_components(new, strip))
            && a == b
            && !a.is_empty()
        {
            return pair(old, new);
        }
    }
    for (from, to) in [
        (HeaderKind::RenameFrom, HeaderKind::RenameTo),
        (HeaderKind::CopyFrom, HeaderKind::CopyTo),
        (HeaderKind::Old, HeaderKind::New),
    ] {
        if let (Some(old), Some(new)) = (named.get(&from), named.get(&to)) {
            return Ok((old.clone(), new.clone()));
        }
    }
    match spaces.as_slice() {
        [space] => pair(&value[..*space], &value[*space + 1..]),
        _ => Err(bad()),
    }
}

/// The file name of a `---`/`+++` value: quoted, or up to a tab (git ends a name that has
/// spaces with one; plain diffs put the timestamp after it).
fn header_file_name(value: &[u8]) -> Result<Vec<u8>, CheckoutError> {
    if value.starts_with(b"\"") {
        return unquote(value).map(|(path, _)| path);
    }
    let end = value
        .iter()
        .position(|&byte| byte == b'\t')
        .unwrap_or(value.len());
    Ok(value[..end].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slave::checkout::patch_apply::{scan::scan, split_lines};

    fn normalized(patch: &[u8], level: usize) -> (String, Vec<Vec<u8>>) {
        let sections = scan(patch, &split_lines(patch));
        let (patch, paths) = normalize_git_headers(patch, &sections, level).expect("normalized");
        (lossy(&patch).into_owned(), paths)
    }

    #[test]
    fn git_headers_are_normalized_to_one_prefix_level() {
        let patch = b"diff --git src/a b.c src/a b.c\n--- src/a b.c\t\n+++ src/a b.c\t\n@@ -1,2 +1,2 @@\n--- x\n+++ y\ndiff --git old name new\nsimilarity index 90%\nrename from old name\nrename to new\n";
        let (text, paths) = normalized(patch, 0);
        assert_eq!(
            text,
            "diff --git \"a/src/a b.c\" \"b/src/a b.c\"\n--- \"a/src/a b.c\"\n+++ \"b/src/a b.c\"\n@@ -1,2 +1,2 @@\n--- x\n+++ y\ndiff --git \"a/old name\" b/new\nsimilarity index 90%\nrename from \"old name\"\nrename to new\n"
        );
        assert!(paths.contains(&b"old name".to_vec()) && paths.contains(&b"new".to_vec()));
        let (text, paths) = normalized(b"diff --git a/x/y b/x/y\nrename from x/y\n", 2);
        assert_eq!(text, "diff --git a/y b/y\nrename from y\n");
        assert_eq!(paths, [b"y".to_vec(), b"y".to_vec(), b"y".to_vec()]);
    }
}
