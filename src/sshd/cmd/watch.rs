//! `watch [--follow] [--json] [--since EPOCH:SEQ] [BUILDER...]`: the status of the builders
//! asked for (all when none are named), then with `--follow` every event about them until the
//! client goes away. With `--since` of this master run, the events after it come first.

use crate::exec_io::ExecIo;
use crate::master::events::Followed;
use crate::sshd::SshdContext;
use crate::status::{StreamItem, text, unix_now};

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Watch {
    #[arg(short = 'f', long)]
    pub follow: bool,
    #[arg(long)]
    pub json: bool,
    /// Resume after the last event seen.
    #[arg(long, value_name = "EPOCH:SEQ", value_parser = parse_resume)]
    pub since: Option<Resume>,
    #[arg(short = 'b', long = "builder", value_name = "BUILDER")]
    pub builder_flags: Vec<String>,
    pub builders: Vec<String>,
}

/// Where a follower left off: the master run (epoch) and the last sequence number it saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    pub epoch: String,
    pub seq: u64,
}

fn parse_resume(value: &str) -> Result<Resume, String> {
    let bad = || "needs EPOCH:SEQ (from the last event seen)".to_string();
    let (epoch, seq) = value.split_once(':').ok_or_else(bad)?;
    let seq = seq.parse().map_err(|_| bad())?;
    if epoch.is_empty() {
        return Err(bad());
    }
    Ok(Resume {
        epoch: epoch.to_string(),
        seq,
    })
}

impl Watch {
    /// The builders named, positionally or with `-b`.
    pub fn builders(&self) -> Vec<String> {
        let mut builders = self.builders.clone();
        builders.extend(self.builder_flags.iter().cloned());
        builders
    }

    pub async fn apply(self, ctx: &SshdContext, io: &mut ExecIo<'_>) -> u32 {
        let builders = self.builders();
        let control = &ctx.control;
        // Follow before taking the status, so nothing between the two is missed.
        let mut follower = match &self.since {
            Some(resume) if resume.epoch == control.events_epoch() => {
                control.follow_since(resume.seq)
            }
            // Another run of the master: everything it kept is new to this follower.
            Some(_) => control.follow_since(0),
            None => control.follow(),
        };
        let snapshot = match control.status(&builders) {
            Ok(snapshot) => snapshot,
            Err(err) => return super::refuse(&err, io).await,
        };
        if self.json {
            io.print_json(&StreamItem::Status {
                epoch: control.events_epoch().to_string(),
                snapshot,
            })
            .await;
        } else {
            io.print(&text::status_lines(&snapshot, unix_now())).await;
        }
        if !self.follow {
            return 0;
        }
        loop {
            let followed = tokio::select! {
                followed = follower.next() => followed,
                _ = io.client_gone.cancelled() => return 0,
            };
            match followed {
                Followed::Event(sequenced) if sequenced.event.concerns_any(&builders) => {
                    if self.json {
                        io.print_json(&StreamItem::Event(sequenced)).await;
                    } else {
                        io.print(&format!("{}\n", text::describe_event(&sequenced.event)))
                            .await;
                        if let crate::status::BuildEvent::BuildFinished {
                            builder,
                            number,
                            will_retry: false,
                            ..
                        } = &sequenced.event
                            && let Some(line) = control.test_line(builder, *number).await
                        {
                            io.print(&format!("{line}\n")).await;
                        }
                    }
                }
                Followed::Event(_) => {}
                Followed::Missed(count) => {
                    if self.json {
                        io.print_json(&StreamItem::Missed { count }).await;
                    } else {
                        io.print(&format!(
                            "({count} events skipped: this watcher fell behind)\n"
                        ))
                        .await;
                    }
                }
                Followed::Closed => return 0,
            }
        }
    }
}
