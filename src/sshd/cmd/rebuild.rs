//! `rebuild BUILDER N [--reason TEXT] [--json] [--wait]`: queues build N again, with the same
//! source, patch and properties.

use crate::commands::Action;
use crate::exec_io::ExecIo;
use crate::master::control::Queued;
use crate::sshd::SshdContext;
use crate::unix::accounts::UnixAccount;

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Rebuild {
    pub builder: String,
    #[arg(value_parser = super::force::positive)]
    pub build: i64,
    #[arg(long, num_args = 1.., default_value = "rebuild requested")]
    pub reason: Vec<String>,
    /// Answer with one JSON object (with --wait: JSON stream items).
    #[arg(long)]
    pub json: bool,
    /// Stay connected and report the build's progress; exit 0 only if it succeeds.
    #[arg(long)]
    pub wait: bool,
}

impl Rebuild {
    pub fn reason(&self) -> String {
        self.reason.join(" ")
    }

    pub async fn apply(self, ctx: &SshdContext, user: &UnixAccount, io: &mut ExecIo<'_>) -> u32 {
        let follower = ctx.control.follow();
        let queued = ctx
            .control
            .rebuild(user, &self.builder, self.build, &self.reason())
            .await;
        let build = self.build;
        let text = |queued: &Queued| {
            format!(
                "{}: rebuild of #{build} queued as request {}",
                queued.builder, queued.request_id
            )
        };
        let asked = super::force::Asked {
            action: Action::Rebuild,
            command: "rebuild --wait",
            json: self.json,
            wait: self.wait,
        };
        super::force::answer_and_follow(ctx, follower, queued, asked, text, io).await
    }
}
