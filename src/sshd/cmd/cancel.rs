//! `cancel BUILDER REQUEST_ID [--json]`: drops a queued request before it is built;
//! `cancel BUILDER --all [--user U]`: every queued request of the builder (of one user), for
//! operators.

use crate::commands::{Action, Answer};
use crate::exec_io::ExecIo;
use crate::sshd::SshdContext;
use crate::unix::accounts::UnixAccount;

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Cancel {
    pub builder: String,
    #[arg(
        value_parser = super::force::positive,
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    pub request_id: Option<i64>,
    /// Every queued request of the builder (operators).
    #[arg(long)]
    pub all: bool,
    /// With --all: only this user's requests.
    #[arg(long, requires = "all")]
    pub user: Option<String>,
    /// Answer with one JSON object.
    #[arg(long)]
    pub json: bool,
}

impl Cancel {
    pub async fn apply(self, ctx: &SshdContext, user: &UnixAccount, io: &mut ExecIo<'_>) -> u32 {
        let builder = self.builder;
        let mut answer = Answer::new(Action::Cancel);
        match self.request_id {
            Some(request_id) => {
                if let Err(err) = ctx.control.cancel_request(user, &builder, request_id).await {
                    return super::refuse(&err, io).await;
                }
                answer.request_id = Some(request_id);
            }
            None => {
                match ctx
                    .control
                    .cancel_all(user, &builder, self.user.as_deref())
                    .await
                {
                    Ok(count) => answer.cancelled = Some(count),
                    Err(err) => return super::refuse(&err, io).await,
                }
            }
        }
        answer.builder = Some(builder);
        if self.json {
            io.print_json(&answer).await;
        } else {
            io.print(&format!("{answer}\n")).await;
        }
        0
    }
}
