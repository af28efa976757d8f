//! Who may do what beyond logging in: trying and stopping. Watching is open to every
//! authenticated user. Decided by unix facts only: write permission on the spool directory (as
//! `spool::permission` computes it), or membership of `[master] admin_group` for stopping.

use crate::master::config::Config;
use crate::spool::permission::Principal;
use crate::spool::submit::{self, SubmitError};
use crate::sshd::accounts::UnixAccount;

/// May `account` stop builds? Those who may try may stop; so may the admin group.
pub fn may_stop(account: &UnixAccount, config: &Config) -> Result<(), String> {
    if let Some(group) = &config.admin_group
        && let Ok(Some(group)) = nix::unistd::Group::from_name(group)
        && account.gids.contains(&group.gid.as_raw())
        && (!account.is_root() || config.sshd.allow_root)
    {
        return Ok(());
    }
    may_try(account, config).map_err(|err| {
        let message = err
            .to_string()
            .replace("may not submit try jobs", "may not stop builds");
        match &config.admin_group {
            Some(group) => format!("{message} (or be in the admin group {group})"),
            None => message,
        }
    })
}

/// May `account` submit try jobs? Write permission on the spool by its mode bits.
pub fn may_try(account: &UnixAccount, config: &Config) -> Result<(), SubmitError> {
    let principal = Principal {
        uid: account.uid,
        gids: account.gids.clone(),
    };
    submit::check_permission(
        &account.name,
        &principal,
        &config.spool.dir,
        config.sshd.allow_root,
    )
}
