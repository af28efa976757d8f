//! Unix accounts on the master host: who a login name is (uid, groups, home).
//!
//! Users log in with their unix name; the account database decides whether the name exists
//! and where `%h` points. Looked up through `nix` (the maintained successor of the unmaintained
//! `users` crate). This module does not decide what an account may do.

use std::path::PathBuf;

/// A unix account, as the system's user and group databases describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixAccount {
    pub name: String,
    pub uid: u32,
    /// Primary group first, then the supplementary groups.
    pub gids: Vec<u32>,
    pub home: PathBuf,
}

impl UnixAccount {
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

/// Looks up a login name; `Ok(None)` when no such account exists.
pub fn lookup(name: &str) -> std::io::Result<Option<UnixAccount>> {
    // Names that could never be accounts are refused before asking NSS about them.
    if name.is_empty() || name.contains(['/', '\0', ':']) {
        return Ok(None);
    }
    let user = match nix::unistd::User::from_name(name) {
        Ok(Some(user)) => user,
        Ok(None) => return Ok(None),
        Err(errno) => return Err(std::io::Error::from(errno)),
    };
    let c_name = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
    let mut gids: Vec<u32> = vec![user.gid.as_raw()];
    let groups = nix::unistd::getgrouplist(&c_name, user.gid).map_err(std::io::Error::from)?;
    for gid in groups {
        if !gids.contains(&gid.as_raw()) {
            gids.push(gid.as_raw());
        }
    }
    Ok(Some(UnixAccount {
        name: user.name,
        uid: user.uid.as_raw(),
        gids,
        home: user.dir,
    }))
}

/// The login name of a uid, e.g. for the submitter of a job file.
pub fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|user| user.name)
}

/// The name of a group id, for messages ("ask an admin to add you to group GROUP").
pub fn group_name(gid: u32) -> Option<String> {
    nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|group| group.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_exists_and_is_root() {
        let root = lookup("root").expect("lookup works").expect("root exists");
        assert_eq!(root.uid, 0);
        assert!(root.is_root());
        assert_eq!(root.gids[0], 0);
    }

    #[test]
    fn impossible_and_unknown_names_are_none() {
        assert_eq!(lookup("").expect("no error"), None);
        assert_eq!(lookup("../etc").expect("no error"), None);
        assert_eq!(
            lookup("no-such-user-buildbot-test").expect("no error"),
            None
        );
    }
}
