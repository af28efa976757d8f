//! Held builds (issue 25): which finished builds keep their work directory on the slave, which
//! directory the next build of the builder uses meanwhile, and the time limits of a hold.
//!
//! A held directory is never moved: tools bake absolute paths into what they leave (CMake
//! caches, virtualenvs, rpaths, compile_commands.json), and the shell must see the tree exactly
//! where the build ran. Instead the next build of that builder on that slave goes into
//! `BUILDER~2` (or `~3`, ...: the first one no hold keeps), and `BUILDER` is used again once its
//! hold has ended. A held build holds no build slot: the slave's `max_builds` counts running
//! builds only.

use std::time::Duration;

use crate::master::config::hold::{HoldOn, HoldPolicy};
use crate::master::slaves::SlaveLink;
use crate::master::store::Store;
use crate::status::BuildResult;

/// A directory is reused only this long after its hold ended: the shells in it are killed at
/// the end of the hold, and this covers their last seconds.
pub const DIR_GRACE: Duration = Duration::from_secs(10);

/// After the last shell of a held build logs out, the hold ends this much later (unless it
/// ends sooner anyway), so a dropped connection can come back.
pub const LOGOUT_GRACE: Duration = Duration::from_secs(60);

/// Whether a build that ended with `result` is held under `policy` (`asked`: the requester
/// asked for it with `--hold`).
pub fn wants_hold(policy: &HoldPolicy, result: BuildResult, asked: bool) -> bool {
    if asked {
        return true;
    }
    match policy.on {
        HoldOn::Always => true,
        HoldOn::Never => false,
        HoldOn::Failure => matches!(result, BuildResult::Failure | BuildResult::Exception),
    }
}

/// The directory a new build of `builder` uses: its own name unless a hold keeps it, else the
/// first `BUILDER~N` none keeps.
pub fn pick_dir(builder: &str, held: &[String]) -> String {
    if !held.iter().any(|dir| dir == builder) {
        return builder.to_string();
    }
    (2..)
        .map(|n| format!("{builder}~{n}"))
        .find(|dir| !held.contains(dir))
        .unwrap_or_else(|| builder.to_string())
}

/// Claims the directory for a new build of `builder` on `link`'s slave: the first that no hold
/// (as the store says) and no running build keeps, taken under one lock so two builds never
/// get the same one. Also the builder's directories there that must stay (held, or in use);
/// none when the holds cannot be read.
pub async fn work_dir<'a>(
    store: &dyn Store,
    link: &'a SlaveLink,
    builder: &str,
) -> (DirInUse<'a>, Option<Vec<String>>) {
    let after = crate::status::unix_now() - DIR_GRACE.as_secs_f64();
    let held = store.held_dirs(&link.name, builder, after).await;
    let mut in_use = link
        .dirs_in_use
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (dir, keep) = match held {
        Ok(mut kept) => {
            kept.extend(in_use.iter().cloned());
            kept.sort();
            kept.dedup();
            let dir = pick_dir(builder, &kept);
            (dir, Some(kept))
        }
        Err(err) => {
            // Without the holds, a fresh directory rather than one a shell may be using.
            tracing::error!(
                "cannot read the held directories of {builder} on {}: {err}",
                link.name
            );
            (format!("{builder}~{}", std::process::id()), None)
        }
    };
    in_use.push(dir.clone());
    (DirInUse { link, dir }, keep)
}

/// A running build's directory on its slave, kept from other builds and from the clean-up of
/// other checkouts until dropped (when the build ends, however it ends).
pub struct DirInUse<'a> {
    link: &'a SlaveLink,
    pub dir: String,
}

impl Drop for DirInUse<'_> {
    fn drop(&mut self) {
        let mut in_use = self
            .link
            .dirs_in_use
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(at) = in_use.iter().position(|dir| *dir == self.dir) {
            in_use.swap_remove(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_directory_is_left_alone() {
        assert_eq!(pick_dir("linux", &[]), "linux");
        assert_eq!(pick_dir("linux", &["linux~2".into()]), "linux");
        assert_eq!(pick_dir("linux", &["linux".into()]), "linux~2");
        assert_eq!(
            pick_dir("linux", &["linux".into(), "linux~2".into()]),
            "linux~3"
        );
    }

    #[test]
    fn failures_are_held_by_default() {
        let policy = HoldPolicy::default();
        assert!(wants_hold(&policy, BuildResult::Failure, false));
        assert!(wants_hold(&policy, BuildResult::Exception, false));
        assert!(!wants_hold(&policy, BuildResult::Success, false));
        assert!(!wants_hold(&policy, BuildResult::Interrupted, false));
        assert!(wants_hold(&policy, BuildResult::Success, true));
        let never = HoldPolicy {
            on: HoldOn::Never,
            ..policy
        };
        assert!(!wants_hold(&never, BuildResult::Failure, false));
        assert!(wants_hold(&never, BuildResult::Failure, true));
    }
}
