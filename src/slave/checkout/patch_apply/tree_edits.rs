//! The changes of a git diff that carry no hunk for libgit2, applied to the tree by hand:
//! submodule pointers (gitlinks, mode 160000), empty files added or deleted, pure renames and
//! copies, and mode-only changes. Their sections are taken out of the patch before libgit2 sees
//! it. Not: content changes (`git_diff`, through libgit2), nor fetching submodule contents (the
//! checkout does that only when the builder asks).
//!
//! Why by hand: libgit2's apply expects a blob at every path it patches, so a gitlink hunk
//! (`-Subproject commit A` / `+Subproject commit B`) or a renamed submodule failed as "does not
//! exist" or, for some hunks, crashed the process; its parser refuses a hunk-less empty file
//! followed by another section ("invalid patch header"); and a pure rename gets the default mode,
//! losing the executable bit or the symlink. A work tree cannot hold a submodule pointer at all:
//! like `git submodule`, the pointer lives in the index (so `git add -A`, `git status` and `git
//! submodule update` see it) and the submodule is an empty directory.
//!
//! Order, so that a type change (git writes a delete and an add of one path) works: removals
//! from the checked-out tree, then libgit2's changes, then additions.

use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use git2::build::TreeUpdateBuilder;
use git2::{FileMode, IndexEntry, IndexTime, Oid, Repository, Tree};

use super::paths::{unquote, unquote_whole};
use super::{lossy, split_lines, trim_eol};
use crate::slave::checkout::CheckoutError;

const GITLINK_MODE: i32 = 0o160000;

/// An entry of the checked-out tree: its id and mode.
pub(super) type OldEntry = Option<(Oid, i32)>;

/// One path removed, added, moved, copied or re-pointed without a hunk for libgit2.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct TreeEdit {
    /// The path before; `None` for an added one.
    pub old_path: Option<Vec<u8>>,
    /// The path after; `None` for a removed one.
    pub new_path: Option<Vec<u8>>,
    /// A copy keeps the old path.
    copy: bool,
    /// What the old entry must be: the full id of `-Subproject commit`, else the abbreviated
    /// one of the `index` line (empty when the patch does not say).
    old_id: String,
    /// The new entry's id; `None` keeps the old one (rename, copy, mode change).
    new_id: Option<Oid>,
    /// The new entry's mode; `None` keeps the old one.
    pub new_mode: Option<i32>,
}

/// Splits the sections applied by hand out of a normalized git diff (every `diff --git` line
/// in the `a/`/`b/` form `git_headers` writes). Returns the rest of the patch and the edits.
pub(super) fn split_tree_edits(
    repo: &Repository,
    patch: &[u8],
) -> Result<(Vec<u8>, Vec<TreeEdit>), CheckoutError> {
    let mut rest = Vec::with_capacity(patch.len());
    let mut edits = Vec::new();
    for (range, is_section) in sections(patch) {
        let text = &patch[range.clone()];
        if is_section && let Some(edit) = parse_section(repo, text)? {
            edits.push(edit);
            continue;
        }
        rest.extend_from_slice(text);
    }
    Ok((rest, edits))
}

/// The byte ranges of the text before the first `diff --git` line, then of each section.
fn sections(patch: &[u8]) -> Vec<(Range<usize>, bool)> {
    let starts: Vec<usize> = split_lines(patch)
        .into_iter()
        .filter(|line| patch[line.clone()].starts_with(b"diff --git "))
        .map(|line| line.start)
        .collect();
    let mut ranges = Vec::new();
    let first = starts.first().copied().unwrap_or(patch.len());
    ranges.push((0..first, false));
    for (index, &start) in starts.iter().enumerate() {
        let end = starts.get(index + 1).copied().unwrap_or(patch.len());
        ranges.push((start..end, true));
    }
    ranges
}

/// The edit a section makes, or `None` when libgit2 applies it.
fn parse_section(repo: &Repository, text: &[u8]) -> Result<Option<TreeEdit>, CheckoutError> {
    let lines: Vec<&[u8]> = text
        .split_inclusive(|&byte| byte == b'\n')
        .map(trim_eol)
        .collect();
    let Some(first) = lines.first() else {
        return Ok(None);
    };
    let (old, new) = diff_git_paths(first)?;
    let mut edit = TreeEdit::default();
    let (mut gitlink, mut added, mut deleted, mut has_hunk) = (false, false, false, false);
    let (mut old_index, mut subproject_old) = (String::new(), None);
    for line in &lines[1..] {
        if line.starts_with(b"@@ ") || line.starts_with(b"GIT binary patch") {
            has_hunk = true;
        } else if let Some(mode) = line.strip_prefix(b"new file mode ") {
            added = true;
            edit.new_mode = Some(parse_mode(mode)?);
        } else if let Some(mode) = line.strip_prefix(b"deleted file mode ") {
            deleted = true;
            gitlink |= parse_mode(mode)? == GITLINK_MODE;
        } else if let Some(mode) = line.strip_prefix(b"new mode ") {
            edit.new_mode = Some(parse_mode(mode)?);
        } else if let Some(mode) = line.strip_prefix(b"old mode ") {
            gitlink |= parse_mode(mode)? == GITLINK_MODE;
        } else if let Some(index) = line.strip_prefix(b"index ") {
            let index = lossy(index);
            let mut parts = index.split(' ');
            let ids = parts.next().unwrap_or_default();
            gitlink |= parts.next() == Some("160000");
            old_index = ids.split("..").next().unwrap_or_default().to_string();
        } else if line.starts_with(b"copy from ") {
            edit.copy = true;
        } else if let Some(id) = line.strip_prefix(b"-Subproject commit ") {
            subproject_old = Some(parse_id(id)?);
        } else if let Some(id) = line.strip_prefix(b"+Subproject commit ") {
            edit.new_id = Some(parse_id(id)?);
        }
    }
    gitlink |= edit.new_mode == Some(GITLINK_MODE);
    if has_hunk && !gitlink {
        return Ok(None);
    }
    if added && !gitlink {
        // A new file without a hunk is empty (`Binary files differ` was refused earlier).
        edit.new_id = Some(repo.blob(&[])?);
    }
    edit.old_id = match subproject_old {
        Some(id) => id.to_string(),
        None if old_index.bytes().all(|byte| byte == b'0') => String::new(),
        None => old_index,
    };
    edit.old_path = (!added).then_some(old);
    edit.new_path = (!deleted).then_some(new);
    Ok(Some(edit))
}

fn parse_mode(text: &[u8]) -> Result<i32, CheckoutError> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|text| i32::from_str_radix(text.trim(), 8).ok())
        .ok_or_else(|| CheckoutError::BadPatch(format!("`{}` is not a file mode", lossy(text))))
}

fn file_mode(mode: i32) -> FileMode {
    match mode {
        GITLINK_MODE => FileMode::Commit,
        0o120000 => FileMode::Link,
        0o040000 => FileMode::Tree,
        _ if mode & 0o111 != 0 => FileMode::BlobExecutable,
        _ => FileMode::Blob,
    }
}

fn parse_id(text: &[u8]) -> Result<Oid, CheckoutError> {
    let text = lossy(text);
    // A dirty submodule is written `SHA-dirty`; only the commit is recorded.
    let hex = text.trim().trim_end_matches("-dirty");
    Oid::from_str(hex)
        .map_err(|_| CheckoutError::BadPatch(format!("`{text}` is not a submodule commit id")))
}

/// The two paths of a normalized `diff --git "a/OLD" "b/NEW"` line, prefixes removed.
fn diff_git_paths(line: &[u8]) -> Result<(Vec<u8>, Vec<u8>), CheckoutError> {
    let bad = || CheckoutError::BadPatch(format!("unreadable header `{}`", lossy(line)));
    let value = line.strip_prefix(b"diff --git ").ok_or_else(bad)?;
    let (old, rest) = if value.starts_with(b"\"") {
        let (old, rest) = unquote(value)?;
        (old, rest.strip_prefix(b" ").ok_or_else(bad)?)
    } else {
        let space = value
            .iter()
            .position(|&byte| byte == b' ')
            .ok_or_else(bad)?;
        (value[..space].to_vec(), &value[space + 1..])
    };
    let new = unquote_whole(rest)?;
    let old = old.strip_prefix(b"a/").ok_or_else(bad)?.to_vec();
    let new = new.strip_prefix(b"b/").ok_or_else(bad)?.to_vec();
    Ok((old, new))
}

fn os_path(path: &[u8]) -> &Path {
    Path::new(std::ffi::OsStr::from_bytes(path))
}

/// The old entries (id and mode) of the edits, checked against `head_tree`, and `head_tree`
/// without the paths the edits remove: the tree libgit2 applies the rest of the patch to.
pub(super) fn remove_old_paths(
    repo: &Repository,
    head_tree: &Tree<'_>,
    edits: &[TreeEdit],
) -> Result<(Vec<OldEntry>, Oid), CheckoutError> {
    let mut update = TreeUpdateBuilder::new();
    let mut problems = String::new();
    let mut old_entries = Vec::new();
    for edit in edits {
        let Some(old) = &edit.old_path else {
            old_entries.push(None);
            continue;
        };
        let name = lossy(old);
        match head_tree.get_path(os_path(old)) {
            Ok(entry) if entry.id().to_string().starts_with(&edit.old_id) => {
                old_entries.push(Some((entry.id(), entry.filemode())));
                if !edit.copy {
                    update.remove(os_path(old));
                }
            }
            Ok(entry) => {
                problems.push_str(&format!(
                    "{name}: is {} here, not {} as the patch expects\n",
                    entry.id(),
                    edit.old_id
                ));
                old_entries.push(None);
            }
            Err(_) => {
                problems.push_str(&format!("{name}: does not exist in the checked-out tree\n"));
                old_entries.push(None);
            }
        }
    }
    if !problems.is_empty() {
        return Err(CheckoutError::PatchDoesNotApply { detail: problems });
    }
    Ok((old_entries, update.create_updated(repo, head_tree)?))
}

/// `tree` (libgit2's result) with the new paths of the edits added.
pub(super) fn add_new_paths(
    repo: &Repository,
    tree: &Tree<'_>,
    edits: &[TreeEdit],
    old_entries: &[OldEntry],
) -> Result<Oid, CheckoutError> {
    let mut update = TreeUpdateBuilder::new();
    let mut problems = String::new();
    for (edit, old_entry) in edits.iter().zip(old_entries) {
        let Some(new) = &edit.new_path else {
            continue;
        };
        let name = lossy(new);
        let moved = edit.copy || edit.old_path.as_ref() != Some(new);
        if moved && tree.get_path(os_path(new)).is_ok() {
            problems.push_str(&format!("{name}: already exists\n"));
            continue;
        }
        let id = edit.new_id.or(old_entry.map(|(id, _)| id));
        let mode = edit.new_mode.or(old_entry.map(|(_, mode)| mode));
        match (id, mode) {
            (Some(id), Some(mode)) => {
                update.upsert(os_path(new), id, file_mode(mode));
            }
            _ => problems.push_str(&format!("{name}: the patch says too little about it\n")),
        }
    }
    if !problems.is_empty() {
        return Err(CheckoutError::PatchDoesNotApply { detail: problems });
    }
    Ok(update.create_updated(repo, tree)?)
}

/// Whether `path` is a submodule in `tree`.
fn is_gitlink(tree: &Tree<'_>, path: &[u8]) -> bool {
    tree.get_path(os_path(path))
        .is_ok_and(|entry| entry.filemode() == GITLINK_MODE)
}

/// The paths the edits touch that a checkout writes (files and links, not submodules).
pub(super) fn checkout_paths<'e>(
    head_tree: &Tree<'_>,
    final_tree: &Tree<'_>,
    edits: &'e [TreeEdit],
) -> Vec<&'e [u8]> {
    let mut paths = Vec::new();
    for edit in edits {
        if let Some(old) = &edit.old_path
            && !is_gitlink(head_tree, old)
        {
            paths.push(old.as_slice());
        }
        if let Some(new) = &edit.new_path
            && !is_gitlink(final_tree, new)
        {
            paths.push(new.as_slice());
        }
    }
    paths
}

/// Records the submodule pointers the edits change in the index, and makes the work tree
/// match: an empty directory for each submodule, none for a removed one (unless something is
/// in it).
pub(super) fn apply_gitlinks(
    repo: &Repository,
    workdir: &Path,
    head_tree: &Tree<'_>,
    final_tree: &Tree<'_>,
    edits: &[TreeEdit],
) -> Result<(), CheckoutError> {
    let removed: Vec<&[u8]> = edits
        .iter()
        .filter(|edit| !edit.copy)
        .filter_map(|edit| edit.old_path.as_deref())
        .filter(|old| is_gitlink(head_tree, old) && !is_gitlink(final_tree, old))
        .collect();
    let added: Vec<&[u8]> = edits
        .iter()
        .filter_map(|edit| edit.new_path.as_deref())
        .filter(|new| is_gitlink(final_tree, new))
        .collect();
    if removed.is_empty() && added.is_empty() {
        return Ok(());
    }
    let mut index = repo.index()?;
    for old in removed {
        index.remove_path(os_path(old))?;
        // Only an empty directory: a populated submodule is the build's to clean.
        let _ = std::fs::remove_dir(workdir.join(os_path(old)));
    }
    for new in added {
        let entry = final_tree.get_path(os_path(new))?;
        index.add(&IndexEntry {
            ctime: IndexTime::new(0, 0),
            mtime: IndexTime::new(0, 0),
            dev: 0,
            ino: 0,
            mode: GITLINK_MODE as u32,
            uid: 0,
            gid: 0,
            file_size: 0,
            id: entry.id(),
            flags: u16::try_from(new.len().min(0xfff)).unwrap_or(0xfff),
            flags_extended: 0,
            path: new.to_vec(),
        })?;
        let dir = workdir.join(os_path(new));
        std::fs::create_dir_all(&dir).map_err(|source| CheckoutError::Io {
            context: format!("cannot create {}", dir.display()),
            source,
        })?;
    }
    index.write()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_and_plain_header_paths() {
        assert_eq!(
            diff_git_paths(b"diff --git a/sub/x b/sub/y").expect("parses"),
            (b"sub/x".to_vec(), b"sub/y".to_vec())
        );
        assert_eq!(
            diff_git_paths(br#"diff --git "a/assets/x/Old name" b/assets/x/New_name"#)
                .expect("parses"),
            (b"assets/x/Old name".to_vec(), b"assets/x/New_name".to_vec())
        );
        assert!(diff_git_paths(b"diff --git x y").is_err());
    }

    #[test]
    fn dirty_ids_are_read_and_garbage_refused() {
        let id = "87ecbca000000000000000000000000000000000";
        assert_eq!(
            parse_id(format!("{id}-dirty").as_bytes()).expect("id"),
            Oid::from_str(id).expect("oid")
        );
        assert!(matches!(
            parse_id(b"not an id"),
            Err(CheckoutError::BadPatch(_))
        ));
    }

    #[test]
    fn sections_keep_the_preamble_apart() {
        let patch = b"From x\n\ndiff --git a/a b/a\n-x\ndiff --git a/b b/b\n+y\n";
        let ranges: Vec<(&[u8], bool)> = sections(patch)
            .into_iter()
            .map(|(range, section)| (&patch[range], section))
            .collect();
        assert_eq!(ranges.len(), 3);
        assert_eq!(ranges[0], (&b"From x\n\n"[..], false));
        assert_eq!(ranges[2], (&b"diff --git a/b b/b\n+y\n"[..], true));
    }
}
