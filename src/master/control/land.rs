//! The merge queue's actions (`buildbot land`, docs/land.md): submit a series, cancel one's
//! own entry, and the queue as pages, the API and `land --wait` read it. Every action checks
//! the asker's right to land onto the branch now (`access::may_land`).

use std::sync::Arc;

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::master::access;
use crate::master::control::{Control, ControlError, LandHandle};
use crate::master::land::LandError;
use crate::master::land::git::Repo;
use crate::master::land::series;
use crate::master::store::{LandEntry, LandProgress, LandState, NewLand, now};
use crate::status::BuildEvent;
use crate::unix::accounts::UnixAccount;

/// What `land` asks for besides the series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LandRequest {
    pub branch: String,
    /// Builders to test on besides the branch's required ones.
    pub extra_builders: Vec<String>,
    pub ff_only: bool,
}

/// A series taken into the queue.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LandAccepted {
    pub id: i64,
    pub branch: String,
    pub commits: i64,
    pub head: String,
    /// 1: the queue's head.
    pub position: usize,
    /// The entry of the same user this one replaced.
    pub replaced: Option<i64>,
    pub builders: Vec<String>,
}

/// One entry as pages and the API show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LandEntryView {
    #[serde(flatten)]
    pub entry: LandEntry,
    /// In the queue: 1 is the head (none once ended).
    pub position: Option<usize>,
    /// In the queue: seconds until it should be landed, from the builders' recent durations.
    pub estimate_secs: Option<f64>,
}

/// A branch's queue and its last ended entries.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LandQueueView {
    pub branch: String,
    pub builders: Vec<String>,
    pub window: usize,
    pub queue: Vec<LandEntryView>,
    pub recent: Vec<LandEntryView>,
}

/// Ended entries a page shows per branch.
const RECENT: i64 = 20;

impl Control {
    /// The merge queue driver's handle.
    pub fn land_handle(&self) -> LandHandle {
        LandHandle {
            store: Arc::clone(&self.store),
            config: self.config_view(),
            enqueuer: self.enqueuer.clone(),
            events: Arc::clone(&self.events),
            board: Arc::clone(&self.board),
            inbox: self.inbox.clone(),
        }
    }

    /// Takes a series (a git bundle on `input`) into `request.branch`'s queue, after checking
    /// it applies; nothing is queued for a refused one.
    pub async fn land_submit(
        &self,
        account: &UnixAccount,
        request: LandRequest,
        input: &mut (dyn AsyncRead + Unpin + Send),
    ) -> Result<LandAccepted, ControlError> {
        let config = self.config();
        let land = land_of(&config, &request.branch)?.clone();
        let rights = access::may_land(account, &land, &config)?;
        let mut builders = land.builders.clone();
        for extra in &request.extra_builders {
            let found = self.builder(extra)?;
            if found.repo != land.repo {
                return Err(LandError::BadBundle(format!(
                    "builder {extra} builds another repository than {}",
                    land.branch
                ))
                .into());
            }
            if found.trusted {
                return Err(access::AccessError::Trusted {
                    builder: extra.clone(),
                }
                .into());
            }
            if !builders.contains(extra) {
                builders.push(extra.clone());
            }
        }
        let max = config.spool.max_patch_bytes;
        let limit = config.spool.upload_timeout;
        let mut bundle = Vec::new();
        let mut limited = input.take(max.saturating_add(1));
        match tokio::time::timeout(limit, limited.read_to_end(&mut bundle)).await {
            Err(_) => return Err(LandError::UploadTimeout { limit }.into()),
            Ok(Err(err)) => return Err(LandError::BadBundle(err.to_string()).into()),
            Ok(Ok(_)) if bundle.len() as u64 > max => {
                return Err(LandError::TooLarge { max }.into());
            }
            Ok(Ok(_)) => {}
        }
        let dir = series::work_dir(&config.master_dir, &land.repo, &land.branch);
        let work = Repo::open(&dir)
            .await
            .map_err(|err| LandError::Git(err.to_string()))?;
        let incoming = format!("refs/land/incoming/{:016x}", rand::random::<u64>());
        let imported = {
            let _turn = series::turn(&dir).await;
            let checked = async {
                let tip = series::fetch_tip(&work, &land.repo, &land.branch).await?;
                let imported = series::import(&work, &bundle, &incoming).await?;
                // Refused now rather than after the wait: a series that does not apply.
                series::rebase(&work, &imported.head, &tip, request.ff_only).await?;
                Ok::<_, LandError>(imported)
            };
            let checked = checked.await;
            if checked.is_err() {
                let _ = work
                    .git(&["update-ref", "-d", &incoming], series_timeout())
                    .await;
            }
            checked?
        };
        let (id, replaced) = self
            .store
            .land_enqueue(NewLand {
                branch: land.branch.clone(),
                who: rights.user.clone(),
                builders: builders.clone(),
                ff_only: request.ff_only,
                bundle,
                head: imported.head.clone(),
                base: imported.base.clone(),
                commits: imported.commits as i64,
                summary: imported.summary.clone(),
                submitted_at: now(),
            })
            .await?;
        {
            let _turn = series::turn(&dir).await;
            let _ = work
                .git(
                    &["update-ref", &series::entry_ref(id), &imported.head],
                    series_timeout(),
                )
                .await;
            let _ = work
                .git(&["update-ref", "-d", &incoming], series_timeout())
                .await;
        }
        let position = self
            .store
            .land_entries(Some(land.branch.clone()), true, 10_000)
            .await?
            .iter()
            .position(|entry| entry.id == id)
            .map_or(1, |index| index + 1);
        tracing::info!(user = %rights.user, branch = %land.branch, id, commits = imported.commits, ?replaced, "series queued to land");
        self.events.publish(BuildEvent::LandQueued {
            id,
            branch: land.branch.clone(),
            who: rights.user.clone(),
            commits: imported.commits as i64,
            position,
        });
        if let Some(old) = replaced {
            self.events.publish(BuildEvent::LandRejected {
                id: old,
                branch: land.branch.clone(),
                who: rights.user.clone(),
                reason: format!("replaced by #{id}"),
            });
        }
        Ok(LandAccepted {
            id,
            branch: land.branch,
            commits: imported.commits as i64,
            head: imported.head,
            position,
            replaced,
            builders,
        })
    }

    /// Takes the asker's entry out of `branch`'s queue (one by `id`, or their only one);
    /// builds already testing it are stopped. Operators may cancel anyone's.
    pub async fn land_cancel(
        &self,
        account: &UnixAccount,
        branch: &str,
        id: Option<i64>,
    ) -> Result<i64, ControlError> {
        let config = self.config();
        let land = land_of(&config, branch)?;
        let rights = access::may_land(account, land, &config)?;
        let active = self
            .store
            .land_entries(Some(branch.to_string()), true, 10_000)
            .await?;
        let mine = |entry: &&LandEntry| rights.operator || entry.who == rights.user;
        let found = match id {
            Some(id) => active.iter().filter(mine).find(|entry| entry.id == id),
            None => active
                .iter()
                .filter(mine)
                .rfind(|entry| entry.who == rights.user),
        };
        let Some(entry) = found else {
            return Err(match id {
                Some(id) => LandError::NotQueued {
                    id,
                    branch: branch.to_string(),
                },
                None => LandError::NothingQueued {
                    branch: branch.to_string(),
                },
            }
            .into());
        };
        let reason = format!("cancelled by {}", rights.user);
        let progress = LandProgress {
            reason: Some(reason.clone()),
            finished_at: Some(now()),
            ..entry.progress.clone()
        };
        let from = entry.state;
        if from == LandState::Landing
            || !self
                .store
                .land_transition(entry.id, from, LandState::Cancelled, progress)
                .await?
        {
            // Being pushed (or just moved there): too late to take back.
            return Err(LandError::NotQueued {
                id: entry.id,
                branch: branch.to_string(),
            }
            .into());
        }
        if let (LandState::Testing, Some(job)) = (from, &entry.progress.job_name) {
            self.cancel_job(job, &rights.user, &reason).await;
        }
        tracing::info!(user = %rights.user, branch, id = entry.id, "land entry cancelled");
        self.events.publish(BuildEvent::LandRejected {
            id: entry.id,
            branch: branch.to_string(),
            who: entry.who.clone(),
            reason,
        });
        Ok(entry.id)
    }

    /// Every branch's queue with positions and estimates, and its last ended entries.
    pub async fn land_queues(&self) -> Result<Vec<LandQueueView>, ControlError> {
        let config = self.config();
        let mut views = Vec::new();
        for land in &config.lands {
            let mut per_entry = 0.0_f64;
            for builder in &land.builders {
                let recent = self.store.recent_success_durations(builder, 20).await?;
                if let Some(expected) = crate::master::results::expected_duration(&recent) {
                    per_entry = per_entry.max(expected.as_secs_f64());
                }
            }
            let active = self
                .store
                .land_entries(Some(land.branch.clone()), true, 1000)
                .await?;
            let window = land.window.max(1);
            let queue = active
                .into_iter()
                .enumerate()
                .map(|(index, entry)| LandEntryView {
                    entry,
                    position: Some(index + 1),
                    estimate_secs: (per_entry > 0.0)
                        .then(|| per_entry * ((index / window) + 1) as f64),
                })
                .collect();
            let recent = self
                .store
                .land_entries(Some(land.branch.clone()), false, RECENT)
                .await?
                .into_iter()
                .map(|entry| LandEntryView {
                    entry,
                    position: None,
                    estimate_secs: None,
                })
                .collect();
            views.push(LandQueueView {
                branch: land.branch.clone(),
                builders: land.builders.clone(),
                window,
                queue,
                recent,
            });
        }
        Ok(views)
    }

    /// One entry, for `land --wait` after missed events.
    pub async fn land_entry(&self, id: i64) -> Result<Option<LandEntry>, ControlError> {
        Ok(self.store.land_entry(id).await?)
    }
}

fn series_timeout() -> std::time::Duration {
    crate::master::land::git::LOCAL_TIMEOUT
}

fn land_of<'a>(
    config: &'a crate::master::config::Config,
    branch: &str,
) -> Result<&'a crate::master::config::LandConfig, LandError> {
    config.land(branch).ok_or_else(|| LandError::NoQueue {
        branch: branch.to_string(),
        known: if config.lands.is_empty() {
            "none".to_string()
        } else {
            config
                .lands
                .iter()
                .map(|land| land.branch.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        },
    })
}
