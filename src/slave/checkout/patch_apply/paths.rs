//! Every path a patch names, made safe and readable: checked against the work tree before
//! anything is read or written, stripped by the patch level, and C-quoted or unquoted the way
//! git writes names. Not: finding the paths in the patch (`scan`, `git_headers`, diffy), nor
//! deciding which paths a patch touches.
//!
//! A path is refused unless it is relative, not empty, without `..` and without a `.git`
//! component, and no directory on its way is a symlink in the tree (or one the patch itself
//! makes), because writing through such a link could land anywhere.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use super::lossy;
use crate::slave::checkout::CheckoutError;

/// Checks one path a patch touches and returns it as a relative path in the tree. `new_links`
/// are the paths the patch itself makes symlinks.
pub(super) fn check_path(
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
pub(super) fn strip_components(path: &[u8], count: usize) -> Option<&[u8]> {
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

pub(super) fn stripped(path: &[u8], count: usize) -> Result<&[u8], CheckoutError> {
    strip_components(path, count).ok_or_else(|| {
        CheckoutError::BadPatch(format!(
            "path {} has fewer than {count} leading directories to strip (patch level {count}); \
             a diff made with `git diff --no-prefix` or in the top directory needs -p0",
            lossy(path)
        ))
    })
}

/// A whole value, C-quoted or not.
pub(super) fn unquote_whole(value: &[u8]) -> Result<Vec<u8>, CheckoutError> {
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
pub(super) fn unquote(value: &[u8]) -> Result<(Vec<u8>, &[u8]), CheckoutError> {
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
pub(super) fn quote(path: &[u8]) -> Vec<u8> {
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
}
