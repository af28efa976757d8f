//! `force BUILDER [--branch B] [--revision SHA] --reason TEXT [--property K=V]... [--json]
//! [--wait]`: queues a build by hand. The arguments are `commands::ForceArgs`, the same that
//! `buildbot force` sends. With `--wait` the build's progress follows, as for `try --wait`.

use crate::commands::{Action, Answer, ForceArgs};
use crate::exec_io::ExecIo;
use crate::master::control::{ControlError, ForceRequest, Queued};
use crate::sshd::SshdContext;
use crate::status::StreamItem;
use crate::unix::accounts::UnixAccount;

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Force {
    #[command(flatten)]
    pub args: ForceArgs,
    /// Answer with one JSON object (with --wait: JSON stream items).
    #[arg(long)]
    pub json: bool,
    /// Stay connected and report the build's progress; exit 0 only if it succeeds.
    #[arg(long)]
    pub wait: bool,
}

pub(super) fn positive(value: &str) -> Result<i64, String> {
    match value.parse::<i64>() {
        Ok(number) if number > 0 => Ok(number),
        _ => Err("must be a number from 1 up".to_string()),
    }
}

impl Force {
    pub async fn apply(self, ctx: &SshdContext, user: &UnixAccount, io: &mut ExecIo<'_>) -> u32 {
        let force = ForceRequest {
            branch: self.args.branch.clone(),
            revision: self.args.revision.clone(),
            reason: self.args.reason(),
            properties: self.args.properties(),
        };
        // Follow before the request exists, so no event about it can be missed.
        let follower = ctx.control.follow();
        let queued = ctx.control.force(user, &self.args.builder, force).await;
        let text = |queued: &Queued| {
            format!(
                "{}: forced build queued as request {}",
                queued.builder, queued.request_id
            )
        };
        let asked = Asked {
            action: Action::Force,
            command: "force --wait",
            json: self.json,
            wait: self.wait,
        };
        answer_and_follow(ctx, follower, queued, asked, text, io).await
    }
}

/// What a queuing command (force, rebuild) was asked for: how to answer, and whether to wait.
pub(super) struct Asked {
    pub action: Action,
    /// Names the waiting command in the record of a cancellation.
    pub command: &'static str,
    pub json: bool,
    pub wait: bool,
}

/// Answers a queuing command, then with `--wait` follows its build to the end like
/// `try --wait`; the exit status of the one scheme.
pub(super) async fn answer_and_follow(
    ctx: &SshdContext,
    follower: crate::master::events::Follower,
    queued: Result<Queued, ControlError>,
    asked: Asked,
    text: impl Fn(&Queued) -> String,
    io: &mut ExecIo<'_>,
) -> u32 {
    let shape = Shape::of(asked.json, asked.wait);
    let Some(queued) = answer(ctx, queued, asked.action, text, shape, io).await else {
        return 1;
    };
    if !asked.wait {
        return 0;
    }
    super::wait::for_job(
        ctx,
        asked.command,
        &queued.job_name,
        follower,
        asked.json,
        crate::status::DEFAULT_TAIL_LINES,
        io,
    )
    .await
}

/// How an answer is written: a line of text, one JSON object, or (with `--wait --json`) the
/// first item of a JSON stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    Text,
    Json,
    StreamItem,
}

impl Shape {
    pub(super) fn of(json: bool, wait: bool) -> Shape {
        match (json, wait) {
            (false, _) => Shape::Text,
            (true, false) => Shape::Json,
            (true, true) => Shape::StreamItem,
        }
    }
}

/// Prints what a queued request (force, rebuild) became, or the refusal.
async fn answer(
    ctx: &SshdContext,
    queued: Result<Queued, ControlError>,
    action: Action,
    text: impl Fn(&Queued) -> String,
    shape: Shape,
    io: &mut ExecIo<'_>,
) -> Option<Queued> {
    let queued = match queued {
        Ok(queued) => queued,
        Err(err) => {
            super::refuse(&err, io).await;
            return None;
        }
    };
    let mut answer = Answer::new(action);
    answer.builder = Some(queued.builder.clone());
    answer.request_id = Some(queued.request_id);
    answer.job_name = Some(queued.job_name.clone());
    // The build has a number only if it started already (a free slave, no lock to wait for).
    answer.number = ctx.control.build_number_of_request(queued.request_id);
    answer.url = Some(match answer.number {
        Some(number) => ctx.control.build_url(&queued.builder, number),
        None => ctx.control.builder_url(&queued.builder),
    });
    match shape {
        Shape::Text => io.print(&format!("{}\n", text(&queued))).await,
        Shape::Json => io.print_json(&answer).await,
        Shape::StreamItem => {
            io.print_json(&StreamItem::Answer {
                answer,
                web_url: ctx.control.web_url().to_string(),
            })
            .await
        }
    }
    Some(queued)
}
