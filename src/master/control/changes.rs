//! Changes: a revision that appeared on a branch, sent over SSH (`sendchange`, the git hook) or
//! found by a poller (`parts::PollerHandle`). Recorded first, then handed to the schedulers that
//! build them (`parts::ChangeRecorder`).

use crate::change::ChangeSpec;
use crate::master::access::{self, Action, Target};
use crate::master::config::SchedulerKind;
use crate::master::control::{Control, ControlError};
use crate::master::store::StoredChange;
use crate::unix::accounts::UnixAccount;

impl Control {
    /// A change sent by `account` (`ssh master sendchange`); returns it with its id.
    pub async fn send_change(
        &self,
        account: &UnixAccount,
        change: ChangeSpec,
    ) -> Result<StoredChange, ControlError> {
        access::check(account, Action::SendChange, Target::Master, &self.config())?;
        crate::change::check(&change)?;
        self.verify_change_on_branch(&change).await?;
        self.changes.record(change, &account.name).await
    }

    /// A sent change builds only if its revision is on the branch it names, in the repository
    /// of every builder a branch scheduler would build it on (`master::revisions`).
    async fn verify_change_on_branch(&self, change: &ChangeSpec) -> Result<(), ControlError> {
        let config = self.config();
        let mut repos: Vec<String> = Vec::new();
        for scheduler in &config.schedulers {
            let SchedulerKind::Branch { branches, .. } = &scheduler.kind else {
                continue;
            };
            if !branches
                .iter()
                .any(|pattern| pattern.matches(&change.branch))
            {
                continue;
            }
            for builder in scheduler
                .builders
                .iter()
                .filter_map(|name| config.builder(name))
            {
                if !repos.contains(&builder.repo) {
                    repos.push(builder.repo.clone());
                }
            }
        }
        let cache = config.master_dir.join("git-cache");
        for repo in repos {
            crate::master::revisions::verify_on_branch(
                &cache,
                &repo,
                &change.branch,
                &change.revision,
            )
            .await
            .map_err(crate::master::access::AccessError::from)?;
        }
        Ok(())
    }
}
