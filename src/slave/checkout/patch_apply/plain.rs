//! Applying a plain unified diff (`diff -ruN`, other VCSs) with diffy, and saying which hunk
//! did not match. Not: git diffs (`git_diff`), nor the path rules (`paths`), which every path
//! passes before its file is read.
//!
//! diffy only computes new contents, so the files are staged: every hunk of every file is
//! applied in memory first, and files are written only when all of them apply. A symlink in
//! the tree is refused rather than patched, since reading or writing it would follow it.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use diffy::patch_set::{FileOperation, ParseOptions, PatchKind, PatchSet};

use super::paths::{check_path, stripped};
use super::scan::{HeaderKind, Section};
use super::{Applied, FileList, cap, lossy};
use crate::slave::checkout::CheckoutError;

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

pub(super) fn apply_plain(
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
        kind: "plain diff".into(),
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
