//! Applying a git diff (any `diff --git` header) with libgit2, and saying which file and hunk
//! it rejected. Not: rewriting the headers first (`git_headers`), nor the path rules
//! (`paths`), which are applied here to every path before and after libgit2 parses the patch.
//!
//! `Diff::from_buffer`, then `Repository::apply_to_tree` on the checked-out commit, which
//! computes every file in memory and knows renames, modes, symlinks and binary literal/delta
//! hunks, then a checkout of the result into the work tree (index untouched). Not
//! `Repository::apply(.., WorkDir, ..)`: its work-tree reader follows symlinks, so a patch that
//! retargets a link does not apply, and it would read through a link to outside the tree; the
//! work tree equals the commit here anyway.

use std::collections::HashSet;
use std::path::Path;

use git2::build::CheckoutBuilder;
use git2::{ApplyOptions, Delta, Diff, ErrorClass, ErrorCode, FileMode, Repository, Tree};

use super::git_headers::normalize_git_headers;
use super::paths::check_path;
use super::scan::Section;
use super::tree_edits::{
    add_new_paths, apply_gitlinks, checkout_paths, remove_old_paths, split_tree_edits,
};
use super::{Applied, FileList, cap, lossy, trim_eol};
use crate::slave::checkout::CheckoutError;

pub(super) fn apply_git(
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
    let head_tree = repo.head()?.peel_to_tree()?;
    // What libgit2 cannot apply, or applies wrongly, is applied by hand (see `tree_edits`).
    let (normalized, edits) = split_tree_edits(repo, &normalized)?;
    let diff = Diff::from_buffer(&normalized).map_err(|err| {
        CheckoutError::BadPatch(format!("unreadable git diff: {}", err.message()))
    })?;
    let (old_entries, base_tree) = remove_old_paths(repo, &head_tree, &edits)?;
    let base_tree = repo.find_tree(base_tree)?;
    let mut new_links: HashSet<Vec<u8>> = diff
        .deltas()
        .filter(|delta| delta.new_file().mode() == FileMode::Link)
        .filter_map(|delta| delta.new_file().path_bytes().map(<[u8]>::to_vec))
        .collect();
    let mut files = FileList::default();
    for (edit, old_entry) in edits.iter().zip(&old_entries) {
        files.push(edit.old_path.as_deref());
        files.push(edit.new_path.as_deref());
        let old_mode = old_entry.map(|(_, mode)| mode);
        if let (Some(new), Some(0o120000)) = (&edit.new_path, edit.new_mode.or(old_mode)) {
            new_links.insert(new.clone());
        }
    }
    for delta in diff.deltas() {
        let old = delta.old_file().path_bytes();
        let new = delta.new_file().path_bytes();
        match delta.status() {
            Delta::Deleted => files.push(old.or(new)),
            Delta::Renamed => {
                files.push(old);
                files.push(new);
            }
            _ => files.push(new.or(old)),
        }
    }
    let delta_paths = diff
        .deltas()
        .flat_map(|delta| [delta.old_file().path_bytes(), delta.new_file().path_bytes()])
        .flatten();
    let edit_paths = edits
        .iter()
        .flat_map(|edit| [edit.old_path.as_deref(), edit.new_path.as_deref()])
        .flatten();
    for path in delta_paths.chain(edit_paths) {
        check_path(workdir, path, &new_links)?;
    }
    if files.names.is_empty() {
        return Err(CheckoutError::BadPatch(
            "the git diff changes no file".into(),
        ));
    }
    let patched_tree = if diff.deltas().len() == 0 {
        base_tree.clone()
    } else {
        apply_files(repo, &base_tree, &diff)?
    };
    let final_tree = repo.find_tree(add_new_paths(repo, &patched_tree, &edits, &old_entries)?)?;
    let mut options = CheckoutBuilder::new();
    // The index stays at HEAD, as after `git apply`: the build sees the patch as local changes.
    // Submodule pointers are the exception: only the index can hold them.
    options
        .force()
        .update_index(false)
        .disable_pathspec_match(true);
    let mut any_path = false;
    for delta in diff.deltas() {
        for path in [delta.old_file().path(), delta.new_file().path()]
            .into_iter()
            .flatten()
        {
            options.path(path);
            any_path = true;
        }
    }
    for path in checkout_paths(&head_tree, &final_tree, &edits) {
        options.path(path);
        any_path = true;
    }
    // With no path at all, a checkout would touch the whole tree.
    if any_path {
        repo.checkout_tree(final_tree.as_object(), Some(&mut options))?;
    }
    apply_gitlinks(repo, workdir, &head_tree, &final_tree, &edits)?;
    Ok(Applied {
        kind: "git diff".into(),
        files: files.names,
    })
}

/// The tree after the file changes of `diff`, in memory.
fn apply_files<'r>(
    repo: &'r Repository,
    head_tree: &Tree<'r>,
    diff: &Diff<'_>,
) -> Result<Tree<'r>, CheckoutError> {
    let mut postimage = match repo.apply_to_tree(head_tree, diff, None) {
        Ok(postimage) => postimage,
        // Anything else (a corrupt object, say) is not the patch's fault.
        Err(err) if err.code() != ErrorCode::ApplyFail && err.class() != ErrorClass::Patch => {
            return Err(CheckoutError::Git(err));
        }
        Err(err) => {
            return Err(CheckoutError::PatchDoesNotApply {
                detail: cap(describe_git_rejection(repo, head_tree, diff, &err)),
            });
        }
    };
    Ok(repo.find_tree(postimage.write_tree_to(repo)?)?)
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
