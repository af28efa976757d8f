//! Applying a try patch to a work tree that was just checked out, never writing outside it.
//! Owns: telling git diffs from plain unified diffs, checking every path a patch touches,
//! applying all-or-nothing, and showing the user the hunk that was rejected. Not: fetching and
//! checking out (the parent module `checkout`), nor validating patches on the master.
//!
//! git diffs (any `diff --git` header) go through libgit2: `Diff::from_buffer`, then
//! `Repository::apply_to_tree` on the checked-out commit, which computes every file in memory
//! and knows renames, modes, symlinks and binary literal/delta hunks, then a checkout of the
//! result into the work tree (index untouched). Not `Repository::apply(.., WorkDir, ..)`: its
//! work-tree reader follows symlinks, so a patch that retargets a link does not apply, and it
//! would read through a link to outside the tree; the work tree equals the commit here anyway.
//!
//! libgit2 only reads paths with exactly one leading component (`a/`, `b/`) and ends an
//! unquoted name at its first space, so every git header that names a path is first rewritten
//! to that form, stripped by the patch level and C-quoted where needed (`-p0` diffs from
//! `git diff --no-prefix` and names with spaces then work). Plain diffs (`diff -ruN`, other
//! VCSs) go through diffy, which only computes new contents: every hunk of every file is
//! applied in memory first and files are written only when all of them apply.
//!
//! Every path is checked before anything is read or written: relative, not empty, no `..`, no
//! `.git` component, and no directory on the way that is a symlink in the tree (or that the
//! patch itself turns into one), because writing through it could land anywhere.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::io::ErrorKind;
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use diffy::patch_set::{FileOperation, ParseOptions, PatchKind, PatchSet};
use git2::build::CheckoutBuilder;
use git2::{ApplyOptions, Delta, Diff, ErrorClass, ErrorCode, FileMode, Repository, Tree};

use super::CheckoutError;

/// The most of a rejected patch an error carries: it travels in one RPC frame and the step log.
const MAX_DETAIL: usize = 64 * 1024;

/// What applying a patch did.
#[derive(Debug)]
pub(super) struct Applied {
    /// Which engine applied it ("git diff" or "plain diff"), for the step log.
    pub kind: &'static str,
    /// Every file created, changed, renamed (both names) or deleted, in patch order.
    pub files: Vec<String>,
}

/// Applies `patch` (stripping `level` leading path components, as `patch -pN`) to the work tree
/// of `repo`, which is `workdir` and holds exactly HEAD. On `UnsafePatchPath`,
/// `PatchDoesNotApply` and `BadPatch` nothing was written; on `Io` and `Git` the caller
/// restores the tree.
pub(super) fn apply(
    repo: &Repository,
    workdir: &Path,
    patch: &[u8],
    level: u32,
) -> Result<Applied, CheckoutError> {
    let lines = split_lines(patch);
    // Both engines would skip such a file silently and build something the user did not send.
    if let Some(marker) = lines
        .iter()
        .map(|range| trim_eol(&patch[range.clone()]))
        .find(|line| line.starts_with(b"Binary files ") && line.ends_with(b" differ"))
    {
        return Err(CheckoutError::BadPatch(format!(
            "`{}` carries no content; make the patch with `git diff --binary`",
            lossy(marker)
        )));
    }
    let sections = scan(patch, &lines);
    let strip = usize::try_from(level).unwrap_or(usize::MAX);
    if sections.iter().any(|section| section.git) {
        apply_git(repo, workdir, patch, &sections, strip)
    } else {
        apply_plain(workdir, patch, &sections, strip)
    }
}

// ---------------------------------------------------------------------------------------------
// Paths

/// Checks one path a patch touches and returns it as a relative path in the tree. `new_links`
/// are the paths the patch itself makes symlinks.
fn check_path(
    workdir: &Path,
    path: &[u8],
    new_links: &HashSet<Vec<u8>>,
) -> Result<PathBuf, CheckoutError> {
    let refuse = |why: String| CheckoutError::UnsafePatchPath {
        path: lossy(path).into_owned(),
        why,
    };
    if path.is_empty() {
        return Err(refuse("is empty".into()));
    }
    if path.contains(&0) {
        return Err(refuse("contains a NUL byte".into()));
    }
    let mut relative = PathBuf::new();
    for component in Path::new(OsStr::from_bytes(path)).components() {
        match component {
            Component::Normal(name) if name.as_bytes().eq_ignore_ascii_case(b".git") => {
                // Any case: on macOS `.GIT/config` is `.git/config`.
                return Err(refuse("is inside a .git directory".into()));
            }
            Component::Normal(name) => relative.push(name),
            Component::CurDir => {}
            Component::ParentDir => return Err(refuse("has a `..` component".into())),
            Component::RootDir | Component::Prefix(_) => return Err(refuse("is absolute".into())),
        }
    }
    let components: Vec<Component<'_>> = relative.components().collect();
    let Some((_, parents)) = components.split_last() else {
        return Err(refuse("names no file".into()));
    };
    let mut prefix = PathBuf::new();
    for parent in parents {
        prefix.push(parent);
        if new_links.contains(prefix.as_os_str().as_bytes()) {
            return Err(refuse(format!(
                "goes through {}, which the patch makes a symlink",
                prefix.display()
            )));
        }
        // A missing directory is created inside the tree; anything but a symlink is fine.
        if std::fs::symlink_metadata(workdir.join(&prefix))
            .is_ok_and(|metadata| metadata.file_type().is_symlink())
        {
            return Err(refuse(format!(
                "goes through the symlink {}",
                prefix.display()
            )));
        }
    }
    Ok(relative)
}

/// Drops `count` leading components, as `patch -p` does (runs of `/` count as one).
fn strip_components(path: &[u8], count: usize) -> Option<&[u8]> {
    let mut rest = path;
    for _ in 0..count {
        let slash = rest.iter().position(|&byte| byte == b'/')?;
        rest = &rest[slash + 1..];
        while let Some(after) = rest.strip_prefix(b"/") {
            rest = after;
        }
    }
    Some(rest)
}

fn stripped(path: &[u8], count: usize) -> Result<&[u8], CheckoutError> {
    strip_components(path, count).ok_or_else(|| {
        CheckoutError::BadPatch(format!(
            "path {} has fewer than {count} leading directories to strip (patch level {count}); \
             a diff made with `git diff --no-prefix` or in the top directory needs -p0",
            lossy(path)
        ))
    })
}

// ---------------------------------------------------------------------------------------------
// Finding the header lines

/// A header line that names a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum HeaderKind {
    DiffGit,
    Old,
    New,
    RenameFrom,
    RenameTo,
    CopyFrom,
    CopyTo,
}

const EXTENDED_HEADERS: [(&[u8], HeaderKind); 4] = [
    (b"rename from ", HeaderKind::RenameFrom),
    (b"rename to ", HeaderKind::RenameTo),
    (b"copy from ", HeaderKind::CopyFrom),
    (b"copy to ", HeaderKind::CopyTo),
];

/// One file's header lines: a `diff --git` section, or a plain `---`/`+++` pair.
#[derive(Debug)]
struct Section {
    git: bool,
    /// Each line's kind and byte range in the patch, line ending excluded.
    headers: Vec<(HeaderKind, Range<usize>)>,
}

/// Finds the header lines of every file in the patch, skipping hunk bodies by their line counts
/// (a removed line `-- x` is `--- x` in the patch and must not be taken for a header).
fn scan(patch: &[u8], lines: &[Range<usize>]) -> Vec<Section> {
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

// ---------------------------------------------------------------------------------------------
// git diffs

fn apply_git(
    repo: &Repository,
    workdir: &Path,
    patch: &[u8],
    sections: &[Section],
    strip: usize,
) -> Result<Applied, CheckoutError> {
    let (normalized, header_paths) = normalize_git_headers(patch, sections, strip)?;
    // Checked before libgit2 sees the patch, so a bad path is named as such even where
    // libgit2 would refuse to parse it.
    let no_links = HashSet::new();
    for path in &header_paths {
        check_path(workdir, path, &no_links)?;
    }
    let diff = Diff::from_buffer(&normalized).map_err(|err| {
        CheckoutError::BadPatch(format!("unreadable git diff: {}", err.message()))
    })?;
    let new_links: HashSet<Vec<u8>> = diff
        .deltas()
        .filter(|delta| delta.new_file().mode() == FileMode::Link)
        .filter_map(|delta| delta.new_file().path_bytes().map(<[u8]>::to_vec))
        .collect();
    let mut files = FileList::default();
    for delta in diff.deltas() {
        let old = delta.old_file().path_bytes();
        let new = delta.new_file().path_bytes();
        for path in [old, new].into_iter().flatten() {
            check_path(workdir, path, &new_links)?;
        }
        match delta.status() {
            Delta::Deleted => files.push(old.or(new)),
            Delta::Renamed => {
                files.push(old);
                files.push(new);
            }
            _ => files.push(new.or(old)),
        }
    }
    if files.names.is_empty() {
        return Err(CheckoutError::BadPatch(
            "the git diff changes no file".into(),
        ));
    }
    let head_tree = repo.head()?.peel_to_tree()?;
    let mut postimage = match repo.apply_to_tree(&head_tree, &diff, None) {
        Ok(postimage) => postimage,
        // Anything else (a corrupt object, say) is not the patch's fault.
        Err(err) if err.code() != ErrorCode::ApplyFail && err.class() != ErrorClass::Patch => {
            return Err(CheckoutError::Git(err));
        }
        Err(err) => {
            return Err(CheckoutError::PatchDoesNotApply {
                detail: cap(describe_git_rejection(repo, &head_tree, &diff, &err)),
            });
        }
    };
    let patched_tree = repo.find_tree(postimage.write_tree_to(repo)?)?;
    let mut options = CheckoutBuilder::new();
    // The index stays at HEAD, as after `git apply`: the build sees the patch as local changes.
    options
        .force()
        .update_index(false)
        .disable_pathspec_match(true);
    for delta in diff.deltas() {
        for path in [delta.old_file().path(), delta.new_file().path()]
            .into_iter()
            .flatten()
        {
            options.path(path);
        }
    }
    repo.checkout_tree(patched_tree.as_object(), Some(&mut options))?;
    Ok(Applied {
        kind: "git diff",
        files: files.names,
    })
}

/// Rewrites every path-naming header of the git sections to libgit2's form (see the module
/// doc); returns the new patch and every path it names, stripped, for checking.
fn normalize_git_headers(
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

/// A whole value, C-quoted or not.
fn unquote_whole(value: &[u8]) -> Result<Vec<u8>, CheckoutError> {
    if !value.starts_with(b"\"") {
        return Ok(value.to_vec());
    }
    match unquote(value)? {
        (path, b"") => Ok(path),
        _ => Err(CheckoutError::BadPatch(format!(
            "text after the quoted path {}",
            lossy(value)
        ))),
    }
}

/// Decodes a C-quoted path as git writes it; returns the path and what follows the quote.
fn unquote(value: &[u8]) -> Result<(Vec<u8>, &[u8]), CheckoutError> {
    let bad = || CheckoutError::BadPatch(format!("badly quoted path {}", lossy(value)));
    let mut path = Vec::new();
    let mut index = 1;
    while let Some(&byte) = value.get(index) {
        index += 1;
        match byte {
            b'"' => return Ok((path, &value[index..])),
            b'\\' => {
                let escaped = *value.get(index).ok_or_else(bad)?;
                index += 1;
                path.push(match escaped {
                    b'a' => 0x07,
                    b'b' => 0x08,
                    b'f' => 0x0c,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'v' => 0x0b,
                    b'"' | b'\\' => escaped,
                    b'0'..=b'3' => {
                        let digits = value.get(index..index + 2).ok_or_else(bad)?;
                        index += 2;
                        let mut code = escaped - b'0';
                        for &digit in digits {
                            if !(b'0'..=b'7').contains(&digit) {
                                return Err(bad());
                            }
                            code = code * 8 + (digit - b'0');
                        }
                        code
                    }
                    _ => return Err(bad()),
                });
            }
            _ => path.push(byte),
        }
    }
    Err(bad())
}

/// Quotes a path the way libgit2 reads it back: needed for spaces, which libgit2 otherwise
/// takes for the end of the name.
fn quote(path: &[u8]) -> Vec<u8> {
    let needs_quotes = path
        .iter()
        .any(|&byte| matches!(byte, b'"' | b'\\' | b' ' | 0x7f) || byte < 0x20);
    if !needs_quotes {
        return path.to_vec();
    }
    let mut quoted = vec![b'"'];
    for &byte in path {
        match byte {
            b'"' | b'\\' => quoted.extend([b'\\', byte]),
            b'\n' => quoted.extend(b"\\n"),
            b'\t' => quoted.extend(b"\\t"),
            b'\r' => quoted.extend(b"\\r"),
            _ if byte < 0x20 || byte == 0x7f => {
                quoted.extend(format!("\\{byte:03o}").into_bytes());
            }
            _ => quoted.push(byte),
        }
    }
    quoted.push(b'"');
    quoted
}

/// Says which file and hunk libgit2 rejected: each file is tried alone against the checked-out
/// tree, and a failing file's hunks are compared with the lines they expect.
fn describe_git_rejection(
    repo: &Repository,
    head_tree: &Tree<'_>,
    diff: &Diff<'_>,
    err: &git2::Error,
) -> String {
    let mut detail = format!("{}\n", err.message());
    for index in 0..diff.deltas().len() {
        let Some(delta) = diff.get_delta(index) else {
            continue;
        };
        let wanted = delta.new_file().path_bytes().map(<[u8]>::to_vec);
        let mut options = ApplyOptions::new();
        options.delta_callback(|candidate| {
            candidate.and_then(|candidate| candidate.new_file().path_bytes().map(<[u8]>::to_vec))
                == wanted
        });
        if repo
            .apply_to_tree(head_tree, diff, Some(&mut options))
            .is_ok()
        {
            continue;
        }
        let name = lossy(wanted.as_deref().unwrap_or_default()).into_owned();
        let old_content = delta.old_file().path().and_then(|path| {
            let entry = head_tree.get_path(path).ok()?;
            let blob = entry.to_object(repo).ok()?.peel_to_blob().ok()?;
            Some(blob.content().to_vec())
        });
        detail.push_str(&describe_git_file(
            diff,
            index,
            &name,
            delta.status(),
            old_content,
        ));
    }
    detail
}

fn describe_git_file(
    diff: &Diff<'_>,
    index: usize,
    name: &str,
    status: Delta,
    old_content: Option<Vec<u8>>,
) -> String {
    match (status, &old_content) {
        (Delta::Added, Some(_)) => return format!("{name}: already exists\n"),
        (Delta::Added, None) => {}
        (_, None) => return format!("{name}: does not exist in the checked-out tree\n"),
        _ => {}
    }
    let Ok(Some(mut file_patch)) = git2::Patch::from_diff(diff, index) else {
        return format!("{name}: does not apply\n");
    };
    if file_patch.num_hunks() == 0 {
        return format!(
            "{name}: the binary change does not apply (the file is not the one the patch was \
             made against)\n"
        );
    }
    let old_lines: Vec<&[u8]> = old_content
        .as_deref()
        .map(|content| content.split_inclusive(|&byte| byte == b'\n').collect())
        .unwrap_or_default();
    let mut detail = String::new();
    for hunk_index in 0..file_patch.num_hunks() {
        let Ok((hunk, line_count)) = file_patch.hunk(hunk_index) else {
            continue;
        };
        let mut text = lossy(hunk.header()).into_owned();
        let mut expected = Vec::new();
        for line_index in 0..line_count {
            let Ok(line) = file_patch.line_in_hunk(hunk_index, line_index) else {
                continue;
            };
            match line.origin() {
                origin @ (' ' | '-' | '+') => {
                    text.push(origin);
                    text.push_str(&lossy(line.content()));
                    if origin != '+' {
                        expected.push(trim_eol(line.content()));
                    }
                }
                _ => text.push_str("\\ No newline at end of file\n"),
            }
        }
        // libgit2 looks for a hunk exactly where its header says, in old-file line numbers.
        let start = usize::try_from(hunk.old_start()).unwrap_or(usize::MAX);
        let start = if hunk.old_lines() == 0 {
            start
        } else {
            start.saturating_sub(1)
        };
        let found = old_lines.get(start..start.saturating_add(expected.len()));
        let matches = found.is_some_and(|found| {
            found
                .iter()
                .zip(&expected)
                .all(|(have, want)| trim_eol(have) == *want)
        });
        if !matches {
            detail.push_str(&format!(
                "{name}: hunk {} of {} does not match the file at line {}:\n{text}",
                hunk_index + 1,
                file_patch.num_hunks(),
                hunk.old_start()
            ));
        }
    }
    if detail.is_empty() {
        let text = file_patch
            .to_buf()
            .map(|buf| lossy(&buf).into_owned())
            .unwrap_or_default();
        detail = format!("{name}: does not apply\n{text}");
    }
    detail
}

// ---------------------------------------------------------------------------------------------
// Plain unified diffs

/// One file of a plain diff, its paths checked.
struct PlainFile<'p> {
    old: Option<PathBuf>,
    new: Option<PathBuf>,
    /// The old file must not exist (`--- /dev/null`, or `diff -N`'s epoch timestamp).
    creates: bool,
    /// The new file must not exist afterwards (`+++ /dev/null`, or an epoch timestamp).
    deletes: bool,
    renames: bool,
    hunks: &'p diffy::Patch<'p, [u8]>,
}

fn apply_plain(
    workdir: &Path,
    patch: &[u8],
    sections: &[Section],
    strip: usize,
) -> Result<Applied, CheckoutError> {
    let mut parsed = Vec::new();
    for file_patch in PatchSet::parse_bytes(patch, ParseOptions::unidiff()) {
        parsed.push(file_patch.map_err(|err| CheckoutError::BadPatch(err.to_string()))?);
    }
    // diffy drops the timestamps; `diff -N` marks created and deleted files with the epoch.
    let epochs: Vec<(bool, bool)> = sections
        .iter()
        .map(|section| {
            let epoch_of = |kind| {
                section.headers.iter().any(|(candidate, range)| {
                    *candidate == kind && is_epoch_header(&patch[range.clone()])
                })
            };
            (epoch_of(HeaderKind::Old), epoch_of(HeaderKind::New))
        })
        .collect();
    let trust_epochs = epochs.len() == parsed.len();
    let no_links = HashSet::new();
    let check = |raw: &Cow<'_, [u8]>| check_path(workdir, stripped(raw, strip)?, &no_links);
    let mut files = Vec::new();
    for (index, file_patch) in parsed.iter().enumerate() {
        let (old_epoch, new_epoch) = match epochs.get(index) {
            Some(&epochs) if trust_epochs => epochs,
            _ => (false, false),
        };
        let PatchKind::Text(hunks) = file_patch.patch() else {
            return Err(CheckoutError::BadPatch(
                "binary changes need a git diff (git diff --binary)".into(),
            ));
        };
        let file = match file_patch.operation() {
            FileOperation::Create(path) => PlainFile {
                old: None,
                new: Some(check(path)?),
                creates: true,
                deletes: false,
                renames: false,
                hunks,
            },
            FileOperation::Delete(path) => PlainFile {
                old: Some(check(path)?),
                new: None,
                creates: false,
                deletes: true,
                renames: false,
                hunks,
            },
            FileOperation::Modify { original, modified } => PlainFile {
                old: Some(check(original)?),
                new: Some(check(modified)?),
                creates: old_epoch,
                deletes: new_epoch,
                renames: false,
                hunks,
            },
            FileOperation::Rename { from, to } | FileOperation::Copy { from, to } => PlainFile {
                old: Some(check(from)?),
                new: Some(check(to)?),
                creates: false,
                deletes: false,
                renames: file_patch.operation().is_rename(),
                hunks,
            },
        };
        files.push(file);
    }
    let mut staged = Staged {
        workdir,
        contents: BTreeMap::new(),
    };
    let mut names = FileList::default();
    for file in &files {
        apply_plain_file(&mut staged, file, &mut names)?;
    }
    staged.write()?;
    Ok(Applied {
        kind: "plain diff",
        files: names.names,
    })
}

/// Applies one file's hunks to the staged contents, in memory.
fn apply_plain_file(
    staged: &mut Staged<'_>,
    file: &PlainFile<'_>,
    names: &mut FileList,
) -> Result<(), CheckoutError> {
    // With two different names, patch the one that exists (the old one first, as POSIX patch
    // does); with neither, the file is new and takes the new name.
    let mut target = None;
    for path in [&file.old, &file.new].into_iter().flatten() {
        if target.is_none() && staged.read(path)?.is_some() {
            target = Some(path);
        }
    }
    let Some(source) = target.or(file.new.as_ref()).or(file.old.as_ref()) else {
        return Ok(());
    };
    let destination = match (&file.new, file.renames) {
        (Some(new), true) => new,
        _ => source,
    };
    let name = source.display().to_string();
    let base = staged.read(source)?;
    if file.creates && base.as_ref().is_some_and(|content| !content.is_empty()) {
        return Err(CheckoutError::PatchDoesNotApply {
            detail: format!("{name}: the patch creates it, but it already exists"),
        });
    }
    let missing = base.is_none();
    let result =
        diffy::apply_bytes(base.as_deref().unwrap_or_default(), file.hunks).map_err(|err| {
            CheckoutError::PatchDoesNotApply {
                detail: cap(describe_plain_rejection(&name, missing, file.hunks, &err)),
            }
        })?;
    if file.deletes {
        if !result.is_empty() {
            return Err(CheckoutError::PatchDoesNotApply {
                detail: format!("{name}: the patch deletes it, but it has more lines than that"),
            });
        }
        staged.contents.insert(source.clone(), None);
        names.push_path(source);
        return Ok(());
    }
    if destination != source {
        staged.contents.insert(source.clone(), None);
        names.push_path(source);
    }
    staged.contents.insert(destination.clone(), Some(result));
    names.push_path(destination);
    Ok(())
}

fn describe_plain_rejection(
    name: &str,
    missing: bool,
    hunks: &diffy::Patch<'_, [u8]>,
    err: &diffy::ApplyError,
) -> String {
    let mut detail = if missing {
        format!("{name}: does not exist, and the patch does not create it\n")
    } else {
        String::new()
    };
    // ApplyError only says "error applying hunk #N"; its number is all it carries.
    let number = err
        .to_string()
        .rsplit('#')
        .next()
        .and_then(|number| number.trim().parse::<usize>().ok());
    match number.and_then(|number| Some((number, hunks.hunks().get(number.checked_sub(1)?)?))) {
        Some((number, hunk)) => {
            detail.push_str(&format!(
                "{name}: hunk {number} of {} does not match the file:\n",
                hunks.hunks().len()
            ));
            detail.push_str(&format_hunk(hunk));
        }
        None => detail.push_str(&format!("{name}: {err}\n")),
    }
    detail
}

fn format_hunk(hunk: &diffy::Hunk<'_, [u8]>) -> String {
    let mut text = format!("@@ -{} +{} @@", hunk.old_range(), hunk.new_range());
    if let Some(context) = hunk.function_context() {
        text.push(' ');
        text.push_str(&lossy(context));
    }
    text.push('\n');
    for line in hunk.lines() {
        let (sign, content) = match line {
            diffy::Line::Context(content) => (' ', content),
            diffy::Line::Delete(content) => ('-', content),
            diffy::Line::Insert(content) => ('+', content),
        };
        text.push(sign);
        text.push_str(&lossy(content));
        if !content.ends_with(b"\n") {
            text.push_str("\n\\ No newline at end of file\n");
        }
    }
    text
}

/// `diff -N` dates a missing side at the epoch, printed in local time; a day either side is
/// no real file's date.
fn is_epoch_header(line: &[u8]) -> bool {
    let Some(tab) = line.iter().position(|&byte| byte == b'\t') else {
        return false;
    };
    let stamp = lossy(&line[tab + 1..]);
    let stamp = stamp.trim();
    stamp.starts_with("1970-01-01")
        || stamp.starts_with("1969-12-31")
        || (stamp.ends_with(" 1970") && stamp.contains("Jan  1"))
        || (stamp.ends_with(" 1969") && stamp.contains("Dec 31"))
}

/// The new contents of the files a plain diff touches (`None` = deleted), read lazily from the
/// tree and written only once every file has applied.
struct Staged<'w> {
    workdir: &'w Path,
    contents: BTreeMap<PathBuf, Option<Vec<u8>>>,
}

impl Staged<'_> {
    fn read(&mut self, path: &Path) -> Result<Option<Vec<u8>>, CheckoutError> {
        if let Some(content) = self.contents.get(path) {
            return Ok(content.clone());
        }
        let full = self.workdir.join(path);
        let name = path.display();
        let metadata = match std::fs::symlink_metadata(&full) {
            Ok(metadata) => metadata,
            Err(err) if err.kind() == ErrorKind::NotFound => return Ok(None),
            Err(err) if err.kind() == ErrorKind::NotADirectory => {
                return Err(CheckoutError::PatchDoesNotApply {
                    detail: format!("{name}: a directory on its way is a file"),
                });
            }
            Err(source) => {
                return Err(CheckoutError::Io {
                    context: format!("cannot read {name}"),
                    source,
                });
            }
        };
        if metadata.file_type().is_symlink() {
            // Reading or writing it would follow the link, perhaps out of the tree.
            return Err(CheckoutError::UnsafePatchPath {
                path: name.to_string(),
                why: "is a symlink; only a git diff can change one".into(),
            });
        }
        if metadata.is_dir() {
            return Err(CheckoutError::PatchDoesNotApply {
                detail: format!("{name}: is a directory"),
            });
        }
        let content = std::fs::read(&full).map_err(|source| CheckoutError::Io {
            context: format!("cannot read {name}"),
            source,
        })?;
        self.contents
            .insert(path.to_path_buf(), Some(content.clone()));
        Ok(Some(content))
    }

    /// Deletions first, so that a file can become a directory of the same name.
    fn write(self) -> Result<(), CheckoutError> {
        let io = |path: &Path| {
            let context = format!("cannot write {}", path.display());
            move |source| CheckoutError::Io { context, source }
        };
        for (path, content) in &self.contents {
            if content.is_some() {
                continue;
            }
            match std::fs::remove_file(self.workdir.join(path)) {
                Err(err) if err.kind() != ErrorKind::NotFound => return Err(io(path)(err)),
                _ => {}
            }
            // git keeps no empty directories; neither does the tree it checked out.
            for parent in path.ancestors().skip(1) {
                if parent.as_os_str().is_empty()
                    || std::fs::remove_dir(self.workdir.join(parent)).is_err()
                {
                    break;
                }
            }
        }
        for (path, content) in &self.contents {
            let Some(content) = content else {
                continue;
            };
            let full = self.workdir.join(path);
            if let Some(parent) = full.parent() {
                std::fs::create_dir_all(parent).map_err(io(path))?;
            }
            std::fs::write(&full, content).map_err(io(path))?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers

/// File names in first-seen order, each once.
#[derive(Default)]
struct FileList {
    names: Vec<String>,
    seen: HashSet<String>,
}

impl FileList {
    fn push(&mut self, path: Option<&[u8]>) {
        if let Some(path) = path {
            self.push_name(lossy(path).into_owned());
        }
    }

    fn push_path(&mut self, path: &Path) {
        self.push_name(path.display().to_string());
    }

    fn push_name(&mut self, name: String) {
        if self.seen.insert(name.clone()) {
            self.names.push(name);
        }
    }
}

/// Byte ranges of the lines, each with its line ending.
fn split_lines(bytes: &[u8]) -> Vec<Range<usize>> {
    let mut lines = Vec::new();
    let mut start = 0;
    for line in bytes.split_inclusive(|&byte| byte == b'\n') {
        lines.push(start..start + line.len());
        start += line.len();
    }
    lines
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn lossy(bytes: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

fn cap(mut detail: String) -> String {
    if detail.len() > MAX_DETAIL {
        let mut end = MAX_DETAIL;
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        let dropped = detail.len() - end;
        detail.truncate(end);
        detail.push_str(&format!("\n... ({dropped} more bytes)\n"));
    }
    detail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(path: &str) -> bool {
        let dir = tempfile::tempdir().expect("temp dir");
        matches!(
            check_path(dir.path(), path.as_bytes(), &HashSet::new()),
            Err(CheckoutError::UnsafePatchPath { .. })
        )
    }

    #[test]
    fn paths_that_leave_the_tree_or_touch_git_are_refused() {
        for path in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/..",
            ".git/config",
            ".GIT/hooks/x",
            "sub/.git/config",
            ".",
            "./",
            "a\0b",
        ] {
            assert!(refused(path), "{path:?} was accepted");
        }
        for path in [
            "a.txt",
            "src/lib.rs",
            "./a.txt",
            "dir with space/x",
            ".gitignore",
        ] {
            assert!(!refused(path), "{path:?} was refused");
        }
    }

    #[test]
    fn a_symlink_the_patch_creates_counts_as_one_on_the_way() {
        let dir = tempfile::tempdir().expect("temp dir");
        let links: HashSet<Vec<u8>> = [b"link".to_vec()].into();
        assert!(check_path(dir.path(), b"link", &links).is_ok());
        assert!(check_path(dir.path(), b"link/x", &links).is_err());
    }

    #[test]
    fn strip_components_is_patch_p() {
        assert_eq!(strip_components(b"a/b/c", 0), Some(&b"a/b/c"[..]));
        assert_eq!(strip_components(b"a/b/c", 1), Some(&b"b/c"[..]));
        assert_eq!(strip_components(b"a//b/c", 2), Some(&b"c"[..]));
        assert_eq!(strip_components(b"/tmp/x", 1), Some(&b"tmp/x"[..]));
        assert_eq!(strip_components(b"c", 1), None);
    }

    #[test]
    fn quoting_round_trips() {
        for path in [
            &b"plain"[..],
            b"with space",
            b"tab\there",
            b"q\"uote\\",
            b"\x01\x7f\xc3\xa9",
        ] {
            let quoted = quote(path);
            let decoded = unquote_whole(&quoted).expect("quoted");
            assert_eq!(decoded, path, "{}", lossy(&quoted));
        }
        assert!(unquote(b"\"open").is_err());
        assert!(unquote(b"\"bad \\q\"").is_err());
    }

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

    #[test]
    fn hunk_bodies_are_not_taken_for_headers() {
        let patch = b"--- a/x\n+++ b/x\n@@ -1,2 +1,2 @@\n--- removed\n+++ added\n@@ -9 +9 @@\n-a\n+b\n--- a/y\n+++ b/y\n@@ -1 +1 @@\n-c\n+d\n";
        let sections = scan(patch, &split_lines(patch));
        assert_eq!(sections.len(), 2);
    }

    #[test]
    fn epoch_timestamps_mark_created_and_deleted_files() {
        assert!(is_epoch_header(
            b"--- a/x\t1970-01-01 00:00:00.000000000 +0000"
        ));
        assert!(is_epoch_header(
            b"+++ b/x\t1969-12-31 19:00:00.000000000 -0500"
        ));
        assert!(is_epoch_header(b"--- x\tThu Jan  1 00:00:00 1970"));
        assert!(!is_epoch_header(
            b"--- a/x\t2024-05-01 10:00:00.000000000 +0200"
        ));
        assert!(!is_epoch_header(b"--- a/x"));
    }

    #[test]
    fn hunk_counts_default_to_one() {
        assert_eq!(hunk_counts(b"@@ -1,3 +1,4 @@ fn main"), Some((3, 4)));
        assert_eq!(hunk_counts(b"@@ -1 +0,0 @@"), Some((1, 0)));
        assert_eq!(hunk_counts(b"@@ nonsense"), None);
    }
}
