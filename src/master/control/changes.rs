//! Changes: a revision that appeared on a branch, sent over SSH (`sendchange`, the git hook) or
//! found by a poller. Recorded first, then handed to the schedulers that build them.

use crate::change::ChangeSpec;
use crate::master::access::{self, Action, Target};
use crate::master::config::SchedulerKind;
use crate::master::control::{Control, ControlError};
use crate::master::history::changes::{self, StoredChange};
use crate::status::BuildEvent;
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
        self.record_change(change, &account.name).await
    }

    /// A change a poller found in `repository`.
    pub async fn polled_change(&self, change: ChangeSpec) -> Result<StoredChange, ControlError> {
        let sent_by = format!("poller {}", change.repository);
        self.record_change(change, &sent_by).await
    }

    async fn record_change(
        &self,
        change: ChangeSpec,
        sent_by: &str,
    ) -> Result<StoredChange, ControlError> {
        let sent_by = sent_by.to_string();
        let stored = self
            .history
            .run(move |connection| changes::insert_change(connection, &change, &sent_by))
            .await?;
        tracing::info!(change = stored.id, branch = %stored.branch, revision = %stored.revision, by = %stored.sent_by, "change recorded");
        self.events.publish(BuildEvent::ChangeAdded {
            change_id: stored.id,
            repository: stored.repository.clone(),
            branch: stored.branch.clone(),
            revision: stored.revision.clone(),
            who: stored.who.clone(),
        });
        if self.changes.send(stored.clone()).await.is_err() {
            tracing::debug!("schedulers gone (master stopping)");
        }
        Ok(stored)
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
