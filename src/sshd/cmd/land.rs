//! `land [--onto BRANCH] [-b BUILDER]... [--ff-only] [--wait] [--cancel [ID]]`: a series (a git
//! bundle) on stdin into the branch's merge queue (docs/land.md). With `--wait` the entry's
//! progress follows (its builds, then landed or rejected) and the exit status says how it
//! ended: 0 landed, 1 rejected or refused. Leaving a `--wait` does not take the entry out:
//! `land --cancel` does.

use crate::commands::{EXIT_FAILED, EXIT_OK};
use crate::exec_io::ExecIo;
use crate::master::control::LandRequest;
use crate::master::events::Followed;
use crate::master::store::LandState;
use crate::sshd::SshdContext;
use crate::status::{BuildEvent, text};
use crate::unix::accounts::UnixAccount;

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Land {
    /// The target branch (a [[land]] section of the master).
    #[arg(long, value_name = "BRANCH", default_value = "main")]
    pub onto: String,
    /// Test on this builder too, besides the branch's required ones (repeatable).
    #[arg(short = 'b', long = "builder", value_name = "BUILDER")]
    pub builders: Vec<String>,
    /// Refuse instead of rebasing when the series does not sit on the branch's tip.
    #[arg(long)]
    pub ff_only: bool,
    /// Stay connected until the series landed or was rejected.
    #[arg(long)]
    pub wait: bool,
    /// Take your entry (or entry ID) out of the queue instead of submitting.
    #[arg(long, value_name = "ID", num_args = 0..=1, default_missing_value = "0")]
    pub cancel: Option<i64>,
}

impl Land {
    pub async fn apply(self, ctx: &SshdContext, user: &UnixAccount, io: &mut ExecIo<'_>) -> u32 {
        if let Some(id) = self.cancel {
            let id = (id > 0).then_some(id);
            return match ctx.control.land_cancel(user, &self.onto, id).await {
                Ok(id) => {
                    io.print(&format!("land #{id} on {} cancelled\n", self.onto))
                        .await;
                    EXIT_OK.into()
                }
                Err(err) => super::refuse(&err, io).await,
            };
        }
        // Follow before the entry exists, so no event about it can be missed.
        let mut follower = ctx.control.follow();
        let request = LandRequest {
            branch: self.onto.clone(),
            extra_builders: self.builders.clone(),
            ff_only: self.ff_only,
        };
        let accepted = match ctx.control.land_submit(user, request, io.stdin).await {
            Ok(accepted) => accepted,
            Err(err) => return super::refuse(&err, io).await,
        };
        let replaced = accepted
            .replaced
            .map(|old| format!(", replacing #{old}"))
            .unwrap_or_default();
        io.print(&format!(
            "land #{}: {} queued for {} (position {}, builders {}){replaced}\n",
            accepted.id,
            text::count(
                usize::try_from(accepted.commits).unwrap_or(0),
                "commit",
                "commits"
            ),
            accepted.branch,
            accepted.position,
            accepted.builders.join(", "),
        ))
        .await;
        if !self.wait {
            return EXIT_OK.into();
        }
        let id = accepted.id;
        let prefix = format!("land-{id}-");
        loop {
            let followed = tokio::select! {
                followed = follower.next() => followed,
                () = io.client_gone.cancelled() => return EXIT_FAILED.into(),
            };
            match followed {
                Followed::Event(sequenced) => {
                    let event = &sequenced.event;
                    let ours = match event {
                        BuildEvent::Landed { id: of, .. }
                        | BuildEvent::LandRejected { id: of, .. }
                        | BuildEvent::LandQueued { id: of, .. } => *of == id,
                        _ => event.job_name().starts_with(&prefix),
                    };
                    if !ours {
                        continue;
                    }
                    io.print(&format!("{}\n", text::describe_event(event)))
                        .await;
                    match event {
                        BuildEvent::Landed { .. } => return EXIT_OK.into(),
                        BuildEvent::LandRejected { .. } => return EXIT_FAILED.into(),
                        _ => {}
                    }
                }
                Followed::Missed(_) => {
                    // The end may be among the missed events: the store says where it stands.
                    if let Some(code) = ended(ctx, id, io).await {
                        return code;
                    }
                }
                Followed::Closed => {
                    io.say("buildbot: the master is stopping; the entry stays queued")
                        .await;
                    return EXIT_FAILED.into();
                }
            }
        }
    }
}

/// The exit status of an entry that ended, after saying how; none while it is queued.
async fn ended(ctx: &SshdContext, id: i64, io: &mut ExecIo<'_>) -> Option<u32> {
    let entry = ctx.control.land_entry(id).await.ok().flatten()?;
    match entry.state {
        LandState::Landed => {
            let sha = entry.progress.landed_sha.unwrap_or_default();
            io.print(&format!("landed on {}: {sha}\n", entry.branch))
                .await;
            Some(EXIT_OK.into())
        }
        LandState::Rejected | LandState::Cancelled => {
            let reason = entry.progress.reason.unwrap_or_default();
            io.print(&format!("land #{id} rejected: {reason}\n")).await;
            Some(EXIT_FAILED.into())
        }
        _ => None,
    }
}
