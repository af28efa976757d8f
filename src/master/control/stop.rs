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
        let mut running = self.board.stoppable(builder);
        let target = match number {
            Some(number) => running.into_iter().find(|found| found.number == number),
            None if running.len() > 1 => {
                return Err(ControlError::Ambiguous {
                    builder: builder.to_string(),
                    numbers: running.iter().map(|found| found.number).collect(),
                });
            }
            None => running.pop(),
        };
        let Some(target) = target else {
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
        let request_id = target.request_id;
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
        tracing::info!(user = %account.name, %builder, number = target.number, %reason, "stop requested");
        target.stop.request(&account.name, reason);
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
                            && finished_number == target.number
                        {
                            return Some(result);
                        }
                    }
                    // Fell behind: the board still says whether the build is running.
                    Followed::Missed(_) => {
                        self.board.running_build(builder, target.number)?;
                    }
                    Followed::Closed => return None,
                }
            }
        })
        .await;
        Ok(Stopped {
            builder: builder.to_string(),
            number: target.number,
            result: finished.ok().flatten(),
        })
    }
}
