//! `stop BUILDER [N] --reason TEXT [--json]`: the control layer's one stop, rendered as one
//! line, or one JSON object with `--json`. Exit 0 when the build ended, 1 when it was refused
//! or has not reported its end in time.

use crate::commands::{Action, Answer, EXIT_FAILED, EXIT_OK};
use crate::exec_io::ExecIo;
use crate::sshd::SshdContext;
use crate::unix::accounts::UnixAccount;

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Stop {
    pub builder: String,
    /// The build number (default: the builder's only running build).
    #[arg(value_parser = super::force::positive)]
    pub build: Option<i64>,
    /// Why; all the words up to the next flag (ssh joins words into one line, so quotes
    /// would not survive anyway).
    #[arg(long, num_args = 1.., required = true, value_parser = crate::commands::non_empty)]
    pub reason: Vec<String>,
    /// Answer with one JSON object.
    #[arg(long)]
    pub json: bool,
}

impl Stop {
    pub fn reason(&self) -> String {
        self.reason.join(" ")
    }

    pub async fn apply(self, ctx: &SshdContext, user: &UnixAccount, io: &mut ExecIo<'_>) -> u32 {
        let reason = self.reason();
        let stopped = match ctx
            .control
            .stop_build(user, &self.builder, self.build, &reason)
            .await
        {
            Ok(stopped) => stopped,
            Err(err) => return super::refuse(&err, io).await,
        };
        let status = if stopped.result.is_some() {
            EXIT_OK
        } else {
            EXIT_FAILED
        };
        if self.json {
            let mut answer = Answer::new(Action::Stop);
            answer.builder = Some(stopped.builder.clone());
            answer.number = Some(stopped.number);
            answer.url = Some(ctx.control.build_url(&stopped.builder, stopped.number));
            answer.result = stopped.result;
            io.print_json(&answer).await;
            return status.into();
        }
        match stopped.result {
            Some(result) => {
                io.print(&format!(
                    "{} #{}: {result} (stopped by {}: {reason})\n",
                    self.builder, stopped.number, user.name
                ))
                .await;
            }
            None => {
                io.say(&format!(
                    "buildbot: asked {} #{} to stop; it has not finished yet",
                    self.builder, stopped.number
                ))
                .await;
            }
        }
        status.into()
    }
}
