//! `try [--wait] [--json] [--tail N]`: our own client's try path. The job comes on stdin; with
//! `--wait` the builds' progress streams back (as JSON stream items with `--json`), and the last
//! N lines of each failed step's log follow its build's end.

use crate::exec_io::ExecIo;
use crate::master::control::Accepted;
use crate::sshd::SshdContext;
use crate::status::{StreamItem, text};
use crate::unix::accounts::UnixAccount;

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Try {
    /// Stay connected and report the builds' progress; exit 0 only if all succeed.
    #[arg(long)]
    pub wait: bool,
    /// One JSON stream item per line instead of text.
    #[arg(long)]
    pub json: bool,
    /// With --wait: the last N lines of a failed build's failing step (0: none).
    #[arg(long, value_name = "N", default_value_t = crate::status::DEFAULT_TAIL_LINES)]
    pub tail: usize,
}

impl Try {
    pub async fn apply(self, ctx: &SshdContext, user: &UnixAccount, io: &mut ExecIo<'_>) -> u32 {
        // Follow before the job exists, so no event about it can be missed.
        let follower = ctx.control.follow();
        let accepted = match ctx.control.submit_try(user, None, io.stdin).await {
            Ok(accepted) => accepted,
            Err(err) => return super::refuse(&err, io).await,
        };
        if self.json {
            io.print_json(&StreamItem::Accepted {
                job_name: accepted.job_name.clone(),
                jobid: accepted.jobid.clone(),
                builders: accepted.builders.clone(),
                web_url: ctx.control.web_url().to_string(),
            })
            .await;
        } else {
            io.print(&format!("{}\n", accepted_line(&accepted))).await;
        }
        if !self.wait {
            return 0;
        }
        super::wait::for_job(
            ctx,
            "try --wait",
            &accepted.job_name,
            follower,
            self.json,
            self.tail,
            io,
        )
        .await
    }
}

pub(super) fn accepted_line(accepted: &Accepted) -> String {
    text::describe_accepted(&accepted.jobid, &accepted.job_name, &accepted.builders)
}
