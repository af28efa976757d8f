//! Stopping a running build: the one stop behaviour for every front end. The stop is recorded
//! with who and why, the build interrupts its step, and the caller learns the result from the
//! event log.

use std::time::Duration;

use crate::master::access::{self, Action, Target};
use crate::master::control::{Control, ControlError, Stopped};
use crate::master::events::Followed;
use crate::master::store::BuildRef;
use crate::status::BuildEvent;
use crate::unix::accounts::UnixAccount;

/// How long a stop waits for the build to report its end. A build ends within seconds of a
/// stop even on a dead slave (see `build::STOP_WAIT`); this only bounds the wait for the answer.
const STOP_REPORT_DEADLINE: Duration = Duration::from_secs(20);

impl Control {
    /// Stops a running build of `builder` (number `number`, or its only one), recording who
    /// and why, and waits for the build to report its end. The same for every front end.
    pub async fn stop_build(
        &self,
        account: &UnixAccount,
        builder: &str,
        number: Option<i64>,
        reason: &str,
    ) -> Result<Stopped, ControlError> {
        crate::untrusted::text::check_plain("reason", reason)?;
        self.builder(builder)?;
        let mut running: Vec<(
            i64,
            i64,
            Option<std::sync::Arc<crate::master::board::StopHandle>>,
        )> = self
            .board
            .stoppable(builder)
            .into_iter()
            .map(|found| (found.number, found.request_id, Some(found.stop)))
            .collect();
        if self.store.is_shared() {
            // Builds of this builder running on the other masters of the cluster.
            let here: Vec<i64> = running.iter().map(|(number, ..)| *number).collect();
            for build in self.store.newest_builds(builder, 50).await? {
                if build.finished_at.is_none() && !here.contains(&build.number) {
                    let detail = self.store.build_detail(&BuildRef::Id(build.id)).await?;
                    if let Some(detail) = detail {
                        running.push((build.number, detail.request_id, None));
                    }
                }
            }
            running.sort_by_key(|(number, ..)| *number);
        }
        let target = match number {
            Some(number) => running.into_iter().find(|(found, ..)| *found == number),
            None if running.len() > 1 => {
                return Err(ControlError::Ambiguous {
                    builder: builder.to_string(),
                    numbers: running.iter().map(|(number, ..)| *number).collect(),
                });
            }
            None => running.pop(),
        };
        let Some((target_number, request_id, stop_here)) = target else {
            // A number that never was a build is not "not running".
            if let Some(number) = number {
                let key = BuildRef::Number {
                    builder: builder.to_string(),
                    number,
                };
                if self.store().build(key).await?.is_none() {
                    return Err(ControlError::NoSuchBuild {
                        builder: builder.to_string(),
                        number,
                    });
                }
            }
            return Err(ControlError::NotRunning {
                builder: builder.to_string(),
                number,
            });
        };
        let owner = self
            .store
            .request(request_id)
            .await?
            .and_then(|request| request.request.who);
        access::check(
            account,
            Action::Stop,
            Target::Owned {
                owner: owner.as_deref(),
            },
            &self.config(),
        )?;
        // Follow before stopping, so the end cannot slip by.
        let mut follower = self.events.follow();
        tracing::info!(user = %account.name, %builder, number = target_number, %reason, "stop requested");
        match stop_here {
            Some(stop) => stop.request(&account.name, reason),
            // Running on another master: it stops the build when the event reaches it.
            None => self.events.publish(BuildEvent::StopRequested {
                builder: builder.to_string(),
                number: target_number,
                by: account.name.clone(),
                reason: reason.to_string(),
            }),
        }
        let finished = tokio::time::timeout(STOP_REPORT_DEADLINE, async {
            loop {
                match follower.next().await {
                    Followed::Event(sequenced) => {
                        if let BuildEvent::BuildFinished {
                            builder: finished_builder,
                            number: finished_number,
                            result,
                            ..
                        } = sequenced.event
                            && finished_builder == builder
                            && finished_number == target_number
                        {
                            return Some(result);
                        }
                    }
                    // Fell behind: the board (or the store) still says whether it runs.
                    Followed::Missed(_) => {
                        let key = BuildRef::Number {
                            builder: builder.to_string(),
                            number: target_number,
                        };
                        let running_here =
                            self.board.running_build(builder, target_number).is_some();
                        let running_elsewhere = matches!(
                            self.store.build(key).await,
                            Ok(Some(detail)) if detail.build.finished_at.is_none()
                        );
                        if !running_here && !running_elsewhere {
                            return None;
                        }
                    }
                    Followed::Closed => return None,
                }
            }
        })
        .await;
        Ok(Stopped {
            builder: builder.to_string(),
            number: target_number,
            result: finished.ok().flatten(),
        })
    }
}

/// Acts on what other masters of the cluster ask through the shared event log, until
/// `shutdown`: stops this master's builds asked to stop elsewhere
/// ([`BuildEvent::StopRequested`]), and closes a slave's connection here when a newer one
/// reached another master ([`BuildEvent::SlaveConnected`]).
pub async fn serve_remote_stops(
    board: std::sync::Arc<crate::master::board::Board>,
    roster: std::sync::Arc<crate::master::roster::Roster>,
    this_master: String,
    mut follower: crate::master::events::Follower,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let followed = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            followed = follower.next() => followed,
        };
        match followed {
            Followed::Event(sequenced) => {
                if let BuildEvent::SlaveConnected { slave, master } = &sequenced.event
                    && *master != this_master
                {
                    let at = std::time::UNIX_EPOCH + Duration::from_secs_f64(sequenced.at.max(0.0));
                    if roster.close_older(slave, at) {
                        tracing::warn!(%slave, %master, "slave connected to another master; dropping its older connection here");
                    }
                }
                if let BuildEvent::StopRequested {
                    builder,
                    number,
                    by,
                    reason,
                } = sequenced.event
                    && let Some(found) = board
                        .stoppable(&builder)
                        .into_iter()
                        .find(|found| found.number == number)
                {
                    tracing::info!(%builder, number, %by, %reason, "stop asked on another master");
                    found.stop.request(&by, &reason);
                }
            }
            Followed::Missed(count) => {
                tracing::warn!(
                    missed = count,
                    "fell behind the cluster's events; a stop asked elsewhere may be missed"
                );
            }
            Followed::Closed => return Ok(()),
        }
    }
}
