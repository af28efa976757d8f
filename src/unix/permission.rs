//! Who may write into a directory, decided for *another* user from the directory's metadata, as
//! the kernel's discretionary access check would decide it for that uid and its groups.
//!
//! No crate does this (`access(2)` checks the caller, and the master runs as its own user), so
//! it is computed here: every ancestor must grant search (x) to the user's class and the
//! directory itself write and search (w+x). The class is owner if the uid matches, else group if
//! the directory's gid is among the user's groups, else other; the owner class wins even when
//! the group or other bits are wider. Root passes only when the config allows root at all.
//! Not consulted: POSIX ACLs, read-only mounts, LSMs (SELinux/AppArmor). Admins who rely on ACLs
//! should grant through the group bits instead.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A unix user as the access check sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub uid: u32,
    /// Primary group and supplementary groups.
    pub gids: Vec<u32>,
}

/// Owner, group and mode of one directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirInfo {
    pub uid: u32,
    pub gid: u32,
    /// `st_mode`; only the permission bits are looked at.
    pub mode: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Denied { reason: DenyReason },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyReason {
    /// Root, and the configuration does not allow root.
    RootNotAllowed,
    /// A directory on the way lacks a bit for the user's class.
    MissingPermission {
        dir: PathBuf,
        class: Class,
        needs: &'static str,
    },
}

/// Which permission bits of a file apply to a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Owner,
    Group,
    Other,
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::RootNotAllowed => write!(f, "root is not allowed; set allow_root = true"),
            DenyReason::MissingPermission { dir, class, needs } => {
                let class = match class {
                    Class::Owner => "owner",
                    Class::Group => "group",
                    Class::Other => "other",
                };
                write!(f, "{} needs {class} {needs} permission", dir.display())
            }
        }
    }
}

fn class_of(principal: &Principal, dir: &DirInfo) -> Class {
    if principal.uid == dir.uid {
        Class::Owner
    } else if principal.gids.contains(&dir.gid) {
        Class::Group
    } else {
        Class::Other
    }
}

/// The rwx bits (0..=7) of `mode` for `class`.
fn bits_for(class: Class, mode: u32) -> u32 {
    match class {
        Class::Owner => (mode >> 6) & 0o7,
        Class::Group => (mode >> 3) & 0o7,
        Class::Other => mode & 0o7,
    }
}

/// Decides whether `principal` may create files in the last directory of `dir_chain`, which
/// lists every directory from `/` down to the target, in order.
pub fn may_write(
    principal: &Principal,
    dir_chain: &[(PathBuf, DirInfo)],
    allow_root: bool,
) -> Decision {
    if principal.uid == 0 {
        return if allow_root {
            Decision::Allowed
        } else {
            Decision::Denied {
                reason: DenyReason::RootNotAllowed,
            }
        };
    }
    let Some(((target_path, target), ancestors)) = dir_chain.split_last() else {
        return Decision::Denied {
            reason: DenyReason::MissingPermission {
                dir: PathBuf::new(),
                class: Class::Other,
                needs: "search",
            },
        };
    };
    for (path, info) in ancestors {
        let class = class_of(principal, info);
        if bits_for(class, info.mode) & 0o1 == 0 {
            return Decision::Denied {
                reason: DenyReason::MissingPermission {
                    dir: path.clone(),
                    class,
                    needs: "search (x)",
                },
            };
        }
    }
    let class = class_of(principal, target);
    if bits_for(class, target.mode) & 0o3 != 0o3 {
        return Decision::Denied {
            reason: DenyReason::MissingPermission {
                dir: target_path.clone(),
                class,
                needs: "write and search (wx)",
            },
        };
    }
    Decision::Allowed
}

/// [`may_write`] for a real directory: stats every ancestor of its canonical path.
pub fn may_write_path(
    principal: &Principal,
    dir: &Path,
    allow_root: bool,
) -> std::io::Result<Decision> {
    let canonical = std::fs::canonicalize(dir)?;
    let mut chain = Vec::new();
    let mut ancestors: Vec<&Path> = canonical.ancestors().collect();
    ancestors.reverse();
    for path in ancestors {
        let metadata = std::fs::metadata(path)?;
        chain.push((
            path.to_path_buf(),
            DirInfo {
                uid: metadata.uid(),
                gid: metadata.gid(),
                mode: metadata.mode(),
            },
        ));
    }
    Ok(may_write(principal, &chain, allow_root))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: u32 = 1000;
    const BOB: u32 = 1001;
    const TRY_USERS: u32 = 500;
    const STAFF: u32 = 50;

    fn dir(uid: u32, gid: u32, mode: u32) -> DirInfo {
        DirInfo { uid, gid, mode }
    }

    fn chain(target: DirInfo) -> Vec<(PathBuf, DirInfo)> {
        vec![
            (PathBuf::from("/"), dir(0, 0, 0o755)),
            (PathBuf::from("/srv"), dir(0, 0, 0o755)),
            (PathBuf::from("/srv/spool"), target),
        ]
    }

    fn alice() -> Principal {
        Principal {
            uid: ALICE,
            gids: vec![ALICE, STAFF, TRY_USERS],
        }
    }

    #[test]
    fn the_table() {
        let root = Principal {
            uid: 0,
            gids: vec![0],
        };
        let bob = Principal {
            uid: BOB,
            gids: vec![BOB],
        };
        let alice = alice();
        let cases: Vec<(&str, &Principal, DirInfo, bool, bool)> = vec![
            ("owner rwx", &alice, dir(ALICE, 0, 0o700), false, true),
            ("owner r-x only", &alice, dir(ALICE, 0, 0o577), false, false),
            (
                "owner class wins over wider group/other",
                &alice,
                dir(ALICE, TRY_USERS, 0o077),
                false,
                false,
            ),
            (
                "group via supplementary group",
                &alice,
                dir(0, TRY_USERS, 0o770),
                false,
                true,
            ),
            (
                "setgid group dir 2770",
                &alice,
                dir(0, TRY_USERS, 0o2770),
                false,
                true,
            ),
            (
                "group without w",
                &alice,
                dir(0, TRY_USERS, 0o750),
                false,
                false,
            ),
            (
                "group w without x",
                &alice,
                dir(0, TRY_USERS, 0o720),
                false,
                false,
            ),
            (
                "other denied on 2770",
                &bob,
                dir(0, TRY_USERS, 0o2770),
                false,
                false,
            ),
            (
                "other allowed on 0777",
                &bob,
                dir(0, TRY_USERS, 0o777),
                false,
                true,
            ),
            (
                "sticky 1777 is irrelevant for creating",
                &bob,
                dir(0, 0, 0o1777),
                false,
                true,
            ),
            ("mode 0", &alice, dir(ALICE, ALICE, 0), false, false),
            (
                "root refused without allow_root",
                &root,
                dir(0, 0, 0o777),
                false,
                false,
            ),
            (
                "root allowed with allow_root even on 0",
                &root,
                dir(ALICE, ALICE, 0),
                true,
                true,
            ),
        ];
        for (name, principal, target, allow_root, expected) in cases {
            let decision = may_write(principal, &chain(target), allow_root);
            assert_eq!(
                decision == Decision::Allowed,
                expected,
                "{name}: {decision:?}"
            );
        }
    }

    #[test]
    fn every_ancestor_needs_search_permission() {
        let mut dirs = chain(dir(0, TRY_USERS, 0o2770));
        dirs[1].1 = dir(0, 0, 0o750);
        let decision = may_write(&alice(), &dirs, false);
        match decision {
            Decision::Denied { reason } => {
                assert_eq!(reason.to_string(), "/srv needs other search (x) permission")
            }
            Decision::Allowed => panic!("allowed through a closed ancestor"),
        }
    }

    #[test]
    fn real_directories_are_checked_by_their_metadata() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let me = Principal {
            uid: nix::unistd::getuid().as_raw(),
            gids: vec![nix::unistd::getgid().as_raw()],
        };
        let decision = may_write_path(&me, tmp.path(), true).expect("stat works");
        assert_eq!(decision, Decision::Allowed);
        assert!(may_write_path(&me, &tmp.path().join("missing"), true).is_err());
    }
}
