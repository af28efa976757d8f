//! `sendchange [--json]`: one change as JSON on stdin (what the git hook sends), read with a
//! size cap and a deadline.

use tokio::io::AsyncReadExt;

use crate::commands::{Action, Answer};
use crate::exec_io::ExecIo;
use crate::sshd::SshdContext;
use crate::unix::accounts::UnixAccount;

/// How long a sender has to deliver its change.
const CHANGE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Sendchange {
    /// Answer with one JSON object.
    #[arg(long)]
    pub json: bool,
}

impl Sendchange {
    pub async fn apply(self, ctx: &SshdContext, user: &UnixAccount, io: &mut ExecIo<'_>) -> u32 {
        let mut bytes = Vec::new();
        let limit = crate::change::MAX_CHANGE_BYTES as u64 + 1;
        let read = tokio::time::timeout(
            CHANGE_DEADLINE,
            (&mut *io.stdin).take(limit).read_to_end(&mut bytes),
        )
        .await;
        match read {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                io.say(&format!("buildbot: cannot read the change: {err}"))
                    .await;
                return 1;
            }
            Err(_) => {
                io.say(&format!(
                    "buildbot: no complete change within {}s (send one JSON object on stdin, then close it)",
                    CHANGE_DEADLINE.as_secs()
                ))
                .await;
                return 1;
            }
        }
        let change = match crate::change::decode(&bytes) {
            Ok(change) => change,
            Err(err) => {
                tracing::info!(user = %user.name, "change refused: {err}");
                io.say(&format!("buildbot: {err}")).await;
                return 1;
            }
        };
        let stored = match ctx.control.send_change(user, change).await {
            Ok(stored) => stored,
            Err(err) => return super::refuse(&err, io).await,
        };
        let mut answer = Answer::new(Action::Sendchange);
        answer.change_id = Some(stored.id);
        if self.json {
            io.print_json(&answer).await;
        } else {
            io.print(&format!("{answer}\n")).await;
        }
        0
    }
}
