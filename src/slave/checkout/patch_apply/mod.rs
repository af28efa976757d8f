//! Applying a try patch to a work tree that was just checked out, never writing outside it.
//! Owns: the one entry point the checkout calls, telling git diffs from plain unified diffs,
//! refusing patches that carry no content for a binary file, and the byte helpers the engines
//! share. Not: fetching and checking out (the parent module `checkout`), validating patches on
//! the master, nor the work of either engine, which lives in the child modules: `scan` finds the
//! header lines, `paths` checks and quotes every path, `git_headers` rewrites git headers for
//! libgit2, `git_diff` applies git diffs with libgit2 (`tree_edits` the hunk-less changes and the
//! submodule pointers in them) and `plain` applies plain diffs with diffy.
//!
//! Two engines because neither does both: libgit2 knows renames, modes, symlinks and binary
//! hunks but only reads git diffs; diffy reads what `diff -ruN` and other VCSs write. Both
//! apply all-or-nothing, and every path is checked before anything is read or written, so a
//! refused or rejected patch leaves the tree as checked out.

mod git_diff;
mod git_headers;
mod paths;
mod plain;
mod scan;
mod tree_edits;

#[cfg(test)]
mod fuzz_tests;

use std::borrow::Cow;
use std::collections::HashSet;
use std::ops::Range;
use std::path::Path;

use git2::Repository;

use super::CheckoutError;

/// The most of a rejected patch an error carries: it travels in one RPC frame and the step log.
const MAX_DETAIL: usize = 64 * 1024;

/// What applying a patch did.
#[derive(Debug)]
pub(in crate::slave::checkout) struct Applied {
    /// Which engine applied it ("git diff" or "plain diff"), for the step log.
    pub kind: String,
    /// Every file created, changed, renamed (both names) or deleted, in patch order.
    pub files: Vec<String>,
}

/// Applies `patch` (stripping `level` leading path components, as `patch -pN`) to the work tree
/// of `repo`, which is `workdir` and holds exactly HEAD. On `UnsafePatchPath`,
/// `PatchDoesNotApply` and `BadPatch` nothing was written; on `Io` and `Git` the caller
/// restores the tree.
pub(in crate::slave::checkout) fn apply(
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
    let sections = scan::scan(patch, &lines);
    let strip = usize::try_from(level).unwrap_or(usize::MAX);
    let applied = if sections.iter().any(|section| section.git) {
        git_diff::apply_git(repo, workdir, patch, &sections, strip)
    } else {
        plain::apply_plain(workdir, patch, &sections, strip)
    };
    match applied {
        Err(CheckoutError::PatchDoesNotApply { mut detail }) => {
            if let Some(hint) = crate::tryjob::patch_level_hint(patch, level) {
                detail = format!(
                    "{}\nthe patch's paths start with a/ and b/, as git writes them, but the job's patch level is {level}: try -p {hint}",
                    detail.trim_end()
                );
            }
            Err(CheckoutError::PatchDoesNotApply { detail })
        }
        other => other,
    }
}

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
