//! Changes: a revision that appeared on a branch, sent over SSH (`sendchange`, the git hook) or
//! found by a poller (`parts::PollerHandle`). Recorded first, then handed to the schedulers that
//! build them (`parts::ChangeRecorder`).

use crate::change::ChangeSpec;
use crate::master::access::{self, Action};
use crate::master::control::{Control, ControlError};
use crate::master::history::changes::StoredChange;
use crate::unix::accounts::UnixAccount;

impl Control {
    /// A change sent by `account` (`ssh master sendchange`); returns it with its id.
    pub async fn send_change(
        &self,
        account: &UnixAccount,
        change: ChangeSpec,
    ) -> Result<StoredChange, ControlError> {
        access::check(Action::SendChange, account, &self.config())?;
        crate::change::check(&change)?;
        self.changes.record(change, &account.name).await
    }
}
