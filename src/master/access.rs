//! Who may do what beyond logging in: trying, and acting on builds (stop, force, rebuild,
//! cancel). Watching is open to every authenticated user. Decided by unix facts only: write
//! permission on the spool directory (as `unix::permission` computes it), or membership of
//! `[master] admin_group` for the actions on builds.

use std::fmt;
use std::os::unix::fs::MetadataExt;

use crate::master::config::Config;
use crate::unix::accounts::{self, UnixAccount};
use crate::unix::permission::{self, Decision, Principal};

/// An action that needs a right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Try,
    Stop,
    Force,
    Rebuild,
    Cancel,
    SendChange,
    PauseSlave,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Try => "submit try jobs",
            Action::Stop => "stop builds",
            Action::Force => "force builds",
            Action::Rebuild => "rebuild builds",
            Action::Cancel => "cancel build requests",
            Action::SendChange => "send changes",
            Action::PauseSlave => "pause slaves",
        })
    }
}

/// Why an account may not do an action; each message is the one line the user sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error("{user} may not {action} (ask an admin to add you to group {group})")]
    NotInGroup {
        user: String,
        action: Action,
        group: String,
    },
    #[error("root may not {action} on this master (allow_root = false)")]
    RootRefused { action: Action },
    #[error(
        "{user} may not {action} (no write permission on the spool; {}){}",
        spool_advice(try_group.as_deref()),
        admin_group.as_ref().map(|group| format!(" (or be in the admin group {group})")).unwrap_or_default()
    )]
    NoSpoolWrite {
        user: String,
        action: Action,
        /// The group the spool is shared with, if it is shared with one (group-writable, and
        /// not root's group, which no admin means to hand out).
        try_group: Option<String>,
        /// For actions other than trying, the admin group that would also do.
        admin_group: Option<String>,
    },
}

/// May `account` do `action`? Trying needs write permission on the spool by its mode bits;
/// the other actions (stop, force, rebuild, cancel) need the same, or membership of the admin
/// group.
pub fn check(action: Action, account: &UnixAccount, config: &Config) -> Result<(), AccessError> {
    if account.is_root() && !config.sshd.allow_root {
        return Err(AccessError::RootRefused { action });
    }
    if action == Action::SendChange
        && let Some(group) = &config.changes.group
    {
        // A configured changes group is the whole rule: the pushers, not the try users.
        return match is_member(account, group) {
            true => Ok(()),
            false => Err(AccessError::NotInGroup {
                user: account.name.clone(),
                action,
                group: group.clone(),
            }),
        };
    }
    if action != Action::Try && in_admin_group(account, config) {
        return Ok(());
    }
    let principal = Principal {
        uid: account.uid,
        gids: account.gids.clone(),
    };
    match permission::may_write_path(&principal, &config.spool.dir, config.sshd.allow_root) {
        Ok(Decision::Allowed) => Ok(()),
        Ok(Decision::Denied { .. }) | Err(_) => Err(AccessError::NoSpoolWrite {
            user: account.name.clone(),
            action,
            try_group: try_group(config),
            admin_group: match action {
                Action::Try => None,
                _ => config.admin_group.clone(),
            },
        }),
    }
}

fn in_admin_group(account: &UnixAccount, config: &Config) -> bool {
    config
        .admin_group
        .as_deref()
        .is_some_and(|group| is_member(account, group))
}

fn is_member(account: &UnixAccount, group: &str) -> bool {
    matches!(
        nix::unistd::Group::from_name(group),
        Ok(Some(group)) if account.gids.contains(&group.gid.as_raw())
    )
}

/// The try group: the spool's group when the spool is writable by its group and the group is
/// not root's (a fresh `create-master` leaves the spool root:root 0755, shared with nobody).
fn try_group(config: &Config) -> Option<String> {
    let metadata = std::fs::metadata(&config.spool.dir).ok()?;
    if metadata.mode() & 0o020 == 0 || metadata.gid() == 0 {
        return None;
    }
    accounts::group_name(metadata.gid())
}

/// How to get the right to write into the spool.
fn spool_advice(try_group: Option<&str>) -> String {
    match try_group {
        Some(group) => format!("ask an admin to add you to group {group}"),
        None => "the spool is shared with no try group yet: an admin sets one up with `buildbot create-master --try-group GROUP` or as docs/admin.md shows (chgrp GROUP and chmod 3770 on spool, spool/tmp and spool/new), then adds you to GROUP".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_action_and_the_way_in() {
        let stop = AccessError::NoSpoolWrite {
            user: "bob".into(),
            action: Action::Stop,
            try_group: Some("try-users".into()),
            admin_group: Some("ci-admins".into()),
        };
        assert_eq!(
            stop.to_string(),
            "bob may not stop builds (no write permission on the spool; ask an admin to add you to group try-users) (or be in the admin group ci-admins)"
        );
        let unshared = AccessError::NoSpoolWrite {
            user: "bob".into(),
            action: Action::Try,
            try_group: None,
            admin_group: None,
        };
        let message = unshared.to_string();
        assert!(
            message.starts_with("bob may not submit try jobs (no write permission on the spool; the spool is shared with no try group yet: an admin sets one up with `buildbot create-master --try-group GROUP`"),
            "{message}"
        );
        assert!(!message.contains("group root"), "{message}");
        let root = AccessError::RootRefused {
            action: Action::Try,
        };
        assert_eq!(
            root.to_string(),
            "root may not submit try jobs on this master (allow_root = false)"
        );
    }
}
