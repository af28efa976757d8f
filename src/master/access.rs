//! Who may do what beyond logging in, decided in one place for every front end.
//!
//! Two steps. [`rights`] gathers the facts about an account *now* (not at login): the account
//! must still exist with the same uid, and its current groups decide whether it may try (write
//! permission on the spool by its mode bits), whether it is an operator (`[master] operators`,
//! alias `admin_group`; root when `allow_root`) and whether it may send changes (`[changes]
//! group`). Account lookups are cached for [`RIGHTS_TTL`] at most, so a user removed from a
//! group, or an account deleted, loses its rights within seconds, whether it acts over an open
//! SSH connection, a web session or a linked IRC nick. [`authorize`] is the pure policy: those
//! rights, an [`Action`] and its [`Target`] give yes or the one line that says why not.
//!
//! Roles: an owner acts on their own requests and builds (stop, cancel, rebuild of a try build);
//! operators act on all and alone pause slaves and cancel in bulk. Every action that starts a
//! build (try, force, rebuild) goes through [`Target::Start`]: the builder must take that kind of
//! build (a try scheduler lists it and it is not trusted; a force scheduler lists it).

use std::collections::HashMap;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::master::config::Config;
use crate::unix::accounts::{self, UnixAccount};
use crate::unix::permission::{self, Decision, Principal};

/// How long a looked-up account (uid and groups) is trusted before it is looked up again.
pub const RIGHTS_TTL: Duration = Duration::from_secs(2);

/// An action that needs a right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Try,
    Stop,
    Force,
    Rebuild,
    Cancel,
    /// Cancel every queued request of a builder (or of one user there).
    CancelAll,
    SendChange,
    PauseSlave,
    /// Read a try job's patch.
    SeePatch,
    /// Put a series into a branch's merge queue, or take one's own out (`buildbot land`).
    Land,
    /// Open a shell in a held build's directory (issue 25).
    Shell,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Try => "submit try jobs",
            Action::Stop => "stop builds",
            Action::Force => "force builds",
            Action::Rebuild => "rebuild builds",
            Action::Cancel => "cancel build requests",
            Action::CancelAll => "cancel requests in bulk",
            Action::SendChange => "send changes",
            Action::PauseSlave => "pause slaves",
            Action::SeePatch => "see try patches",
            Action::Land => "land onto this branch",
            Action::Shell => "open a shell in the build",
        })
    }
}

/// What an action is aimed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// The master as a whole (pause a slave, send a change, cancel in bulk).
    Master,
    /// A request or build; `owner` is who asked for it (none for builds a scheduler started).
    Owned { owner: Option<&'a str> },
    /// A new build of `builder`. `patch`: it applies a user's patch (a try job, or a rebuild
    /// of one). `of`: for a rebuild, who owned the original request.
    Start {
        builder: &'a str,
        patch: bool,
        of: Option<Option<&'a str>>,
    },
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
        admin_group.as_ref().map(|group| format!(" (or be in the operators group {group})")).unwrap_or_default()
    )]
    NoSpoolWrite {
        user: String,
        action: Action,
        /// The group the spool is shared with, if it is shared with one (group-writable, and
        /// not root's group, which no admin means to hand out).
        try_group: Option<String>,
        /// For actions other than trying, the operators group that would also do.
        admin_group: Option<String>,
    },
    #[error("{user} may not {action} of {}: only its owner and operators may{}", owner.as_deref().map_or("a scheduled build".to_string(), |owner| format!("{owner}'s request")), operators_hint(operators.as_deref()))]
    NotOwner {
        user: String,
        action: Action,
        owner: Option<String>,
        operators: Option<String>,
    },
    #[error("{user} may not {action}: only operators may{}", operators_hint(operators.as_deref()))]
    NotOperator {
        user: String,
        action: Action,
        operators: Option<String>,
    },
    #[error(
        "{user} may not send changes: this master takes no changes over SSH until an admin names the senders' group in [changes] group"
    )]
    ChangesOff { user: String },
    #[error("{builder} may not be forced: no kind = \"force\" scheduler lists it")]
    NotForcible { builder: String },
    #[error("{builder} takes no try builds: no kind = \"try\" scheduler lists it")]
    NotTryable { builder: String },
    #[error("{builder} is a trusted builder: patch builds never run on it")]
    Trusted { builder: String },
    #[error("{0}")]
    Revision(#[from] crate::master::revisions::RevisionError),
    #[error("{0}")]
    Quota(#[from] crate::master::quotas::QuotaError),
    #[error(
        "the patch changes a submodule URL in .gitmodules, which {builder} does not allow (patch_submodule_urls = false)"
    )]
    SubmoduleUrls { builder: String },
    #[error(
        "the property '{name}' is set by the master itself; a try or forced build may not set it"
    )]
    MasterProperty { name: String },
    #[error("the account {user} no longer exists (or is another account now); its rights ended")]
    AccountGone { user: String },
}

fn operators_hint(group: Option<&str>) -> String {
    match group {
        Some(group) => format!(" (operators are the members of group {group})"),
        None => " (no operators group is configured: [master] operators)".to_string(),
    }
}

/// What an account may do now, looked up fresh (see [`rights`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rights {
    pub user: String,
    pub root: bool,
    /// Write permission on the spool.
    pub may_try: bool,
    /// Member of the operators group, or root on a master that allows root.
    pub operator: bool,
    /// Member of `[changes] group`.
    pub sends_changes: bool,
    /// The spool's group, for the advice in a refusal (only looked up when `may_try` is false).
    pub try_group: Option<String>,
}

/// The account as the system describes it now (cached for [`RIGHTS_TTL`]): none when it was
/// deleted, or when its name now belongs to another uid.
pub fn current_account(account: &UnixAccount) -> Option<UnixAccount> {
    type Looked = (Instant, Option<UnixAccount>);
    static CACHE: Mutex<Option<HashMap<String, Looked>>> = Mutex::new(None);
    let now = Instant::now();
    let cached = {
        let mut cache = CACHE
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let map = cache.get_or_insert_with(HashMap::new);
        map.retain(|_, (at, _)| now.duration_since(*at) < RIGHTS_TTL);
        map.get(&account.name).map(|(_, found)| found.clone())
    };
    let found = match cached {
        Some(found) => found,
        None => {
            // A lookup error is no proof the account is gone, but no proof it exists either.
            let found = accounts::lookup(&account.name).ok().flatten();
            let mut cache = CACHE
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            cache
                .get_or_insert_with(HashMap::new)
                .insert(account.name.clone(), (now, found.clone()));
            found
        }
    };
    found.filter(|fresh| fresh.uid == account.uid)
}

/// The rights of `account` now, from its current uid and groups and the spool's mode bits.
pub fn rights(account: &UnixAccount, config: &Config) -> Result<Rights, AccessError> {
    let fresh = current_account(account).ok_or_else(|| AccessError::AccountGone {
        user: account.name.clone(),
    })?;
    let root = fresh.is_root();
    let principal = Principal {
        uid: fresh.uid,
        gids: fresh.gids.clone(),
    };
    let may_try = (!root || config.sshd.allow_root)
        && matches!(
            permission::may_write_path(&principal, &config.spool.dir, config.sshd.allow_root),
            Ok(Decision::Allowed)
        );
    Ok(Rights {
        user: fresh.name.clone(),
        root,
        may_try,
        operator: (root && config.sshd.allow_root)
            || config
                .operators
                .as_deref()
                .is_some_and(|group| is_member(&fresh, group)),
        sends_changes: config
            .changes
            .group
            .as_deref()
            .is_some_and(|group| is_member(&fresh, group)),
        try_group: if may_try { None } else { try_group(config) },
    })
}

/// The one check every control action makes: the account's rights now, then the policy.
pub fn check(
    account: &UnixAccount,
    action: Action,
    target: Target<'_>,
    config: &Config,
) -> Result<Rights, AccessError> {
    let rights = rights(account, config)?;
    authorize(&rights, action, target, config)?;
    Ok(rights)
}

/// May `account` land onto the branch of `land` now: a member of its `group` (or an operator),
/// or, without a group, whoever may try. Asked at every land action.
pub fn may_land(
    account: &UnixAccount,
    land: &crate::master::config::LandConfig,
    config: &Config,
) -> Result<Rights, AccessError> {
    let rights = rights(account, config)?;
    if rights.root && !config.sshd.allow_root {
        return Err(AccessError::RootRefused {
            action: Action::Land,
        });
    }
    let allowed = match &land.group {
        Some(group) => {
            rights.operator
                || current_account(account).is_some_and(|fresh| is_member(&fresh, group))
        }
        None => rights.may_try || rights.operator,
    };
    if allowed {
        return Ok(rights);
    }
    Err(match &land.group {
        Some(group) => AccessError::NotInGroup {
            user: rights.user.clone(),
            action: Action::Land,
            group: group.clone(),
        },
        None => AccessError::NoSpoolWrite {
            user: rights.user.clone(),
            action: Action::Land,
            try_group: rights.try_group.clone(),
            admin_group: config.operators.clone(),
        },
    })
}

/// The policy (pure): may someone with `rights` do `action` to `target` under `config`?
pub fn authorize(
    rights: &Rights,
    action: Action,
    target: Target<'_>,
    config: &Config,
) -> Result<(), AccessError> {
    if rights.root && !config.sshd.allow_root {
        return Err(AccessError::RootRefused { action });
    }
    let user = || rights.user.clone();
    let no_spool = |action| AccessError::NoSpoolWrite {
        user: user(),
        action,
        try_group: rights.try_group.clone(),
        admin_group: match action {
            Action::Try => None,
            _ => config.operators.clone(),
        },
    };
    let operators_only = || AccessError::NotOperator {
        user: user(),
        action,
        operators: config.operators.clone(),
    };
    match (action, target) {
        (Action::SendChange, _) => match &config.changes.group {
            None => Err(AccessError::ChangesOff { user: user() }),
            Some(_) if rights.sends_changes => Ok(()),
            Some(group) => Err(AccessError::NotInGroup {
                user: user(),
                action,
                group: group.clone(),
            }),
        },
        (Action::PauseSlave | Action::CancelAll, _) => match rights.operator {
            true => Ok(()),
            false => Err(operators_only()),
        },
        (_, Target::Start { builder, patch, of }) => {
            // A try job without a patch still builds what its submitter chose.
            let patch = patch || action == Action::Try;
            if let Some(owner) = of
                && !rights.operator
                && owner != Some(rights.user.as_str())
                && patch
            {
                // Rebuilding someone else's try build would run their patch under your name.
                return Err(AccessError::NotOwner {
                    user: user(),
                    action,
                    owner: owner.map(str::to_string),
                    operators: config.operators.clone(),
                });
            }
            if patch {
                let operator_may = rights.operator && action != Action::Try;
                if !rights.may_try && !operator_may {
                    return Err(no_spool(action));
                }
                if config.builder(builder).is_some_and(|found| found.trusted) {
                    return Err(AccessError::Trusted {
                        builder: builder.to_string(),
                    });
                }
                if !config.try_builders().contains(&builder) {
                    return Err(AccessError::NotTryable {
                        builder: builder.to_string(),
                    });
                }
                return Ok(());
            }
            if !rights.may_try && !rights.operator {
                return Err(no_spool(action));
            }
            match action == Action::Try || config.may_force(builder) {
                true => Ok(()),
                false => Err(AccessError::NotForcible {
                    builder: builder.to_string(),
                }),
            }
        }
        (_, Target::Owned { owner }) => {
            if rights.operator {
                return Ok(());
            }
            if owner != Some(rights.user.as_str()) {
                return Err(AccessError::NotOwner {
                    user: user(),
                    action,
                    owner: owner.map(str::to_string),
                    operators: config.operators.clone(),
                });
            }
            // An owner who lost the right to try also lost the right to act on their builds.
            match action == Action::SeePatch || rights.may_try {
                true => Ok(()),
                false => Err(no_spool(action)),
            }
        }
        (_, Target::Master) => match rights.may_try || (rights.operator && action != Action::Try) {
            true => Ok(()),
            false => Err(no_spool(action)),
        },
    }
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

    fn config(extra: &str) -> Config {
        let text = format!(
            r#"[master]
name = "t"
[sshd]
listen = "127.0.0.1:0"
[[slave]]
name = "s1"
public_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl t"
[[builder]]
name = "linux"
slaves = ["s1"]
repo = "/r.git"
[[builder]]
name = "deploy"
slaves = ["s1"]
repo = "/r.git"
trusted = true
[[scheduler]]
kind = "try"
builders = ["linux", "deploy"]
[[scheduler]]
kind = "force"
builders = ["linux"]
{extra}"#
        );
        Config::from_toml(&text, std::path::Path::new("/m")).expect("config")
    }

    fn user(name: &str, may_try: bool, operator: bool) -> Rights {
        Rights {
            user: name.into(),
            root: false,
            may_try,
            operator,
            sends_changes: false,
            try_group: Some("try-users".into()),
        }
    }

    #[test]
    fn owners_act_on_their_own_and_operators_on_all() {
        let config = config("");
        let alice = user("alice", true, false);
        let oscar = user("oscar", false, true);
        let mine = Target::Owned {
            owner: Some("alice"),
        };
        let theirs = Target::Owned { owner: Some("bob") };
        let scheduled = Target::Owned { owner: None };
        for action in [Action::Stop, Action::Cancel] {
            assert_eq!(authorize(&alice, action, mine, &config), Ok(()));
            assert!(matches!(
                authorize(&alice, action, theirs, &config),
                Err(AccessError::NotOwner { .. })
            ));
            assert!(authorize(&alice, action, scheduled, &config).is_err());
            assert_eq!(authorize(&oscar, action, theirs, &config), Ok(()));
        }
        // An owner who left the try group acts on nothing any more.
        let gone = user("alice", false, false);
        assert!(authorize(&gone, Action::Stop, mine, &config).is_err());
        for action in [Action::PauseSlave, Action::CancelAll] {
            let refused = authorize(&alice, action, Target::Master, &config).expect_err("op");
            assert_eq!(
                refused.to_string(),
                format!(
                    "alice may not {action}: only operators may (no operators group is configured: [master] operators)"
                )
            );
            assert_eq!(authorize(&oscar, action, Target::Master, &config), Ok(()));
        }
    }

    #[test]
    fn every_start_of_a_build_obeys_the_builders_rules() {
        let config = config("");
        let alice = user("alice", true, false);
        let oscar = user("oscar", false, true);
        let start = |builder, patch, of| Target::Start { builder, patch, of };
        // Force and a rebuild without a patch: only builders a force scheduler lists.
        assert_eq!(
            authorize(&alice, Action::Force, start("linux", false, None), &config),
            Ok(())
        );
        for action in [Action::Force, Action::Rebuild] {
            let of = (action == Action::Rebuild).then_some(None);
            for who in [&alice, &oscar] {
                assert_eq!(
                    authorize(who, action, start("deploy", false, of), &config),
                    Err(AccessError::NotForcible {
                        builder: "deploy".into()
                    })
                );
            }
        }
        // Patch builds: never on a trusted builder; a try rebuild only by its owner.
        assert!(matches!(
            authorize(&alice, Action::Try, start("deploy", true, None), &config),
            Err(AccessError::Trusted { .. })
        ));
        assert_eq!(
            authorize(&alice, Action::Try, start("linux", false, None), &config),
            Ok(())
        );
        assert_eq!(
            authorize(
                &alice,
                Action::Rebuild,
                start("linux", true, Some(Some("alice"))),
                &config
            ),
            Ok(())
        );
        assert!(matches!(
            authorize(
                &alice,
                Action::Rebuild,
                start("linux", true, Some(Some("bob"))),
                &config
            ),
            Err(AccessError::NotOwner { .. })
        ));
        assert_eq!(
            authorize(
                &oscar,
                Action::Rebuild,
                start("linux", true, Some(Some("bob"))),
                &config
            ),
            Ok(())
        );
        // Operators may not try without the right to (a try job is theirs to run).
        assert!(authorize(&oscar, Action::Try, start("linux", true, None), &config).is_err());
    }

    #[test]
    fn sending_changes_is_off_unless_a_group_is_named() {
        let off = config("");
        let mut alice = user("alice", true, true);
        assert!(matches!(
            authorize(&alice, Action::SendChange, Target::Master, &off),
            Err(AccessError::ChangesOff { .. })
        ));
        let on = config("[changes]\ngroup = \"root\"\n");
        assert!(matches!(
            authorize(&alice, Action::SendChange, Target::Master, &on),
            Err(AccessError::NotInGroup { .. })
        ));
        alice.sends_changes = true;
        assert_eq!(
            authorize(&alice, Action::SendChange, Target::Master, &on),
            Ok(())
        );
    }

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
            "bob may not stop builds (no write permission on the spool; ask an admin to add you to group try-users) (or be in the operators group ci-admins)"
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
