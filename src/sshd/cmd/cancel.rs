//! `cancel BUILDER REQUEST_ID [--json]`: drops a queued request before it is built.

use crate::commands::{Action, Answer};
use crate::exec_io::ExecIo;
use crate::sshd::SshdContext;
use crate::unix::accounts::UnixAccount;

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Cancel {
    pub builder: String,
    #[arg(value_parser = super::force::positive)]
    pub request_id: i64,
    /// Answer with one JSON object.
    #[arg(long)]
    pub json: bool,
}

impl Cancel {
    pub async fn apply(self, ctx: &SshdContext, user: &UnixAccount, io: &mut ExecIo<'_>) -> u32 {
        let (builder, request_id) = (self.builder, self.request_id);
        if let Err(err) = ctx.control.cancel_request(user, &builder, request_id).await {
            return super::refuse(&err, io).await;
        }
        let mut answer = Answer::new(Action::Cancel);
        answer.builder = Some(builder);
        answer.request_id = Some(request_id);
        if self.json {
            io.print_json(&answer).await;
        } else {
            io.print(&format!("{answer}\n")).await;
        }
        0
    }
}
