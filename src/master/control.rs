//! The application layer: what every action means, once, for every front end. SSH commands,
//! web handlers (and the IRC bot) parse their input, call a method here, and render the typed
//! result or [`ControlError`] their own way. Here live the checks ("no builder named X", who
//! may stop), the one stop behaviour, try submission, cancelling a job, and the status snapshot.
//!
//! [`Control`] holds the master's parts, each the one owner of its facts: the config, the
//! history, the event log, the board of running builds, the roster of slaves, the web sessions,
//! and the way into the scheduler.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncRead;
use tokio::sync::mpsc;

use crate::exec_io::ExecIo;
use crate::master::access::{self, AccessError, Action};
use crate::master::board::Board;
use crate::master::config::{BuilderConfig, Config};
use crate::master::events::{EventLog, Followed};
use crate::master::history::{self, History, HistoryError, StoredRequest};
use crate::master::lock;
use crate::master::roster::Roster;
use crate::master::scheduler::Input;
use crate::master::sessions::Sessions;
use crate::master::slaves::{self, SlaveLink, SlaveRegistry};
use crate::spool::maildir::Maildir;
use crate::spool::submit::{self, SubmitError};
use crate::spool::watcher::SpooledJob;
use crate::status::{
    BuildEvent, BuildResult, BuilderActivity, BuilderStatus, PoolSlave, RequestKind, StatusSnapshot,
};
use crate::unix::accounts::UnixAccount;

/// How long a stop waits for the build to report its end. A build ends within seconds of a
/// stop even on a dead slave (see `build::STOP_WAIT`); this only bounds the wait for the answer.
const STOP_REPORT_DEADLINE: Duration = Duration::from_secs(20);

/// Why an action was refused or failed. Front ends render these their own way.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no builder named '{name}'")]
    NoSuchBuilder { name: String, known: Vec<String> },
    #[error("{builder}{} is not running", number.map(|n| format!(" #{n}")).unwrap_or_default())]
    NotRunning {
        builder: String,
        number: Option<i64>,
    },
    #[error("{builder} is running {}; say which", numbers.iter().map(|n| format!("#{n}")).collect::<Vec<_>>().join(", "))]
    Ambiguous { builder: String, numbers: Vec<i64> },
    #[error("{builder} has no build #{number}")]
    NoSuchBuild { builder: String, number: i64 },
    #[error("{builder} has no queued request {request_id} (it may be building or done already)")]
    NotQueued { builder: String, request_id: i64 },
    #[error("{0}")]
    NotAllowed(#[from] AccessError),
    #[error("{0}")]
    Submit(#[from] SubmitError),
    #[error("{0}")]
    History(#[from] HistoryError),
}

/// A try job taken into the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The file name in the spool: the job's identity in events.
    pub job_name: String,
    pub jobid: String,
    pub builders: Vec<String>,
}

/// A request put in the queue by hand (force, rebuild).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// Names the request in events (as a try job's spool name does).
    pub job_name: String,
    pub builder: String,
    pub request_id: i64,
}

/// What a forced build should build.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForceRequest {
    /// Default: the builder's branch.
    pub branch: Option<String>,
    /// Default: the branch's head when the build starts.
    pub revision: Option<String>,
    pub reason: String,
    pub properties: BTreeMap<String, String>,
}

/// What reaches the scheduler executor: an input for the queue, or a cancellation whose
/// caller wants to know whether the request was still queued.
#[derive(Debug)]
pub enum Mail {
    Input(Input),
    CancelRequest {
        builder: String,
        request_id: i64,
        by: String,
        reply: tokio::sync::oneshot::Sender<bool>,
    },
}

/// The answer to a stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    pub builder: String,
    pub number: i64,
    /// The build's result, or none when it has not reported its end in time.
    pub result: Option<BuildResult>,
}

pub struct Control {
    pub config: Arc<Config>,
    /// `SHA256:...` of the host key, shown to users so they can check what they connect to.
    pub host_key_fingerprint: String,
    pub history: History,
    pub events: EventLog,
    pub board: Board,
    pub roster: Roster,
    pub sessions: Sessions,
    /// The web address, for links in summaries.
    pub web_url: String,
    /// Where step logs are written: `logs/BUILDER/NUMBER/STEP-NAME.STREAM`.
    pub logs_dir: PathBuf,
    /// Requests waiting per builder, as the scheduler executor last published them.
    queued: Mutex<BTreeMap<String, usize>>,
    /// Into the scheduler executor; bounded, so a flood of inputs slows their senders.
    scheduler: mpsc::Sender<Mail>,
}

impl Control {
    pub fn new(
        config: Arc<Config>,
        host_key_fingerprint: String,
        history: History,
        web_url: String,
        scheduler: mpsc::Sender<Mail>,
    ) -> Control {
        Control {
            logs_dir: config.master_dir.join("logs"),
            config,
            host_key_fingerprint,
            history,
            events: EventLog::new(),
            board: Board::default(),
            roster: Roster::default(),
            sessions: Sessions::default(),
            web_url,
            queued: Mutex::new(BTreeMap::new()),
            scheduler,
        }
    }

    /// The builder of that name, or the one error every front end renders.
    pub fn builder(&self, name: &str) -> Result<&BuilderConfig, ControlError> {
        self.config
            .builder(name)
            .ok_or_else(|| ControlError::NoSuchBuilder {
                name: name.to_string(),
                known: self
                    .config
                    .builders
                    .iter()
                    .map(|b| b.name.clone())
                    .collect(),
            })
    }

    /// Checks every name; the first unknown one is the error.
    pub fn check_builders(&self, names: &[String]) -> Result<(), ControlError> {
        names
            .iter()
            .try_for_each(|name| self.builder(name).map(|_| ()))
    }

    pub async fn scheduler_input(&self, input: Input) {
        if self.scheduler.send(Mail::Input(input)).await.is_err() {
            tracing::debug!("scheduler gone (master stopping)");
        }
    }

    pub(crate) fn set_queued(&self, queued: BTreeMap<String, usize>) {
        *lock(&self.queued) = queued;
    }

    /// Takes a try job from `input` into the spool, for `tryserver --jobdir DIR` (classic) and
    /// `try`. Nothing is written for a refused job.
    pub async fn submit_try(
        &self,
        account: &UnixAccount,
        jobdir: Option<&str>,
        input: &mut (dyn AsyncRead + Unpin + Send),
    ) -> Result<Accepted, ControlError> {
        let config = &self.config;
        access::check(Action::Try, account, config)?;
        if let Some(jobdir) = jobdir {
            submit::check_jobdir(jobdir, &config.spool.dir, &config.master_dir, &account.home)?;
        }
        let (bytes, job) = submit::read_job(input, config.spool.max_patch_bytes).await?;
        let builders = submit::check_builders(&job, &config.try_builders())?;
        let job_name = submit::deliver(&Maildir::new(&config.spool.dir), bytes).await?;
        tracing::info!(user = %account.name, job = %job_name, jobid = %job.jobid, ?builders, "try job spooled");
        Ok(Accepted {
            job_name,
            jobid: job.jobid,
            builders,
        })
    }

    /// Records a spooled job's requests durably (after which the spool file is only an
    /// archive), queues them, and tells the followers.
    pub async fn record_spooled(&self, spooled: SpooledJob) -> Result<(), ControlError> {
        let submitted_at = history::now();
        let requests: Vec<StoredRequest> = spooled
            .builders
            .iter()
            .map(|builder| StoredRequest {
                id: 0,
                job_name: spooled.name.clone(),
                jobid: spooled.job.jobid.clone(),
                builder: builder.clone(),
                who: spooled.job.who.clone(),
                comment: spooled.job.comment.clone(),
                repository: spooled.job.repository.clone(),
                branch: spooled.job.branch.clone(),
                baserev: spooled.job.baserev.clone(),
                patch: spooled.job.patch.clone(),
                patch_level: spooled.job.patch_level,
                submitted_at,
                properties: spooled.job.properties.clone(),
                kind: RequestKind::Try,
            })
            .collect();
        self.enqueue(requests).await?;
        Ok(())
    }

    /// Records requests and queues them; tells the followers under `job_name`.
    async fn enqueue(&self, requests: Vec<StoredRequest>) -> Result<Vec<i64>, ControlError> {
        let to_store = requests.clone();
        let ids = self
            .history
            .run(move |connection| history::insert_requests(connection, &to_store))
            .await?;
        let Some(job_name) = requests.first().map(|request| request.job_name.clone()) else {
            return Ok(ids);
        };
        let builders = requests
            .iter()
            .map(|request| request.builder.clone())
            .collect();
        let stored = requests
            .into_iter()
            .zip(ids.iter())
            .map(|(request, id)| StoredRequest { id: *id, ..request })
            .collect();
        self.scheduler_input(Input::Requests(stored)).await;
        self.events
            .publish(BuildEvent::RequestsQueued { job_name, builders });
        Ok(ids)
    }

    /// Queues a build of `builder` by hand, of a branch and revision of its repository.
    pub async fn force(
        &self,
        account: &UnixAccount,
        builder: &str,
        force: ForceRequest,
    ) -> Result<Queued, ControlError> {
        access::check(Action::Force, account, &self.config)?;
        let config = self.builder(builder)?;
        let job_name = format!("force-{:016x}", rand::random::<u64>());
        let request = StoredRequest {
            id: 0,
            job_name: job_name.clone(),
            jobid: String::new(),
            builder: config.name.clone(),
            who: Some(account.name.clone()),
            comment: Some(force.reason),
            repository: config.repo.clone(),
            branch: force.branch,
            baserev: force.revision,
            patch: None,
            patch_level: 1,
            submitted_at: history::now(),
            properties: force.properties,
            kind: RequestKind::Force,
        };
        let ids = self.enqueue(vec![request]).await?;
        tracing::info!(user = %account.name, %builder, %job_name, "build forced");
        Ok(Queued {
            job_name,
            builder: builder.to_string(),
            request_id: ids.first().copied().unwrap_or_default(),
        })
    }

    /// Queues build `number` of `builder` again: the same source, patch and properties.
    pub async fn rebuild(
        &self,
        account: &UnixAccount,
        builder: &str,
        number: i64,
        reason: &str,
    ) -> Result<Queued, ControlError> {
        access::check(Action::Rebuild, account, &self.config)?;
        self.builder(builder)?;
        let name = builder.to_string();
        let original = self
            .history
            .run(move |connection| {
                let key = history::BuildKey::Number {
                    builder: &name,
                    number,
                };
                match history::build_detail(connection, key)? {
                    Some(detail) => history::request_by_id(connection, detail.request_id),
                    None => Ok(None),
                }
            })
            .await?
            .ok_or_else(|| ControlError::NoSuchBuild {
                builder: builder.to_string(),
                number,
            })?;
        let job_name = format!("rebuild-{:016x}", rand::random::<u64>());
        let request = StoredRequest {
            id: 0,
            job_name: job_name.clone(),
            who: Some(account.name.clone()),
            comment: Some(format!("rebuild of {builder} #{number}: {reason}")),
            submitted_at: history::now(),
            ..original
        };
        let ids = self.enqueue(vec![request]).await?;
        tracing::info!(user = %account.name, %builder, number, %job_name, "rebuild queued");
        Ok(Queued {
            job_name,
            builder: builder.to_string(),
            request_id: ids.first().copied().unwrap_or_default(),
        })
    }

    /// Drops a queued request of `builder` before it is built.
    pub async fn cancel_request(
        &self,
        account: &UnixAccount,
        builder: &str,
        request_id: i64,
    ) -> Result<(), ControlError> {
        access::check(Action::Cancel, account, &self.config)?;
        self.builder(builder)?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let mail = Mail::CancelRequest {
            builder: builder.to_string(),
            request_id,
            by: account.name.clone(),
            reply,
        };
        let cancelled = self.scheduler.send(mail).await.is_ok() && answer.await.unwrap_or(false);
        if !cancelled {
            return Err(ControlError::NotQueued {
                builder: builder.to_string(),
                request_id,
            });
        }
        tracing::info!(user = %account.name, %builder, request_id, "request cancelled");
        Ok(())
    }

    /// Stops a running build of `builder` (number `number`, or its only one), recording who
    /// and why, and waits for the build to report its end. The same for every front end.
    pub async fn stop_build(
        &self,
        account: &UnixAccount,
        builder: &str,
        number: Option<i64>,
        reason: &str,
    ) -> Result<Stopped, ControlError> {
        access::check(Action::Stop, account, &self.config)?;
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
            return Err(ControlError::NotRunning {
                builder: builder.to_string(),
                number,
            });
        };
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

    /// The submitter of a try job went away: its running builds are stopped and its queued
    /// requests dropped.
    pub async fn cancel_job(&self, job_name: &str, by: &str, reason: &str) {
        let stopped = self.board.stop_job(job_name, by, reason);
        self.scheduler_input(Input::CancelJob {
            job_name: job_name.to_string(),
            by: by.to_string(),
        })
        .await;
        tracing::info!(job = %job_name, stopped, %by, "job cancelled");
    }

    /// What each builder (all, or those named) is doing now.
    pub fn status(&self, only: &[String]) -> Result<StatusSnapshot, ControlError> {
        self.check_builders(only)?;
        let connected = self.roster.snapshot();
        let queued = lock(&self.queued).clone();
        let builders = self
            .config
            .builders
            .iter()
            .filter(|builder| only.is_empty() || only.contains(&builder.name))
            .map(|builder| {
                let slaves: Vec<PoolSlave> = builder
                    .slaves
                    .iter()
                    .map(|name| PoolSlave {
                        name: name.clone(),
                        connected: connected.contains_key(name),
                    })
                    .collect();
                let running = self.board.running(&builder.name);
                let activity = if !running.is_empty() {
                    BuilderActivity::Building
                } else if slaves.iter().any(|slave| slave.connected) {
                    BuilderActivity::Idle
                } else {
                    BuilderActivity::Offline
                };
                BuilderStatus {
                    name: builder.name.clone(),
                    activity,
                    running,
                    queued: queued.get(&builder.name).copied().unwrap_or(0),
                    last: self.board.last(&builder.name),
                    slaves,
                }
            })
            .collect();
        Ok(StatusSnapshot {
            master: self.config.name.clone(),
            slaves_connected: connected.len(),
            slaves_configured: self.config.slaves.len(),
            builders,
        })
    }

    /// A one-time URL that logs a browser in as `account`.
    pub fn web_login(&self, account: &UnixAccount) -> String {
        let token = self.sessions.new_login_token(account.clone());
        format!("{}/login?token={token}", self.web_url)
    }

    /// Runs the RPC of slave `name` (authenticated by its key) on an exec channel.
    pub async fn serve_slave(
        &self,
        name: &str,
        peer: std::net::SocketAddr,
        io: &mut ExecIo<'_>,
    ) -> u32 {
        slaves::serve(self, &self.config.name, name, peer, io).await
    }
}

impl SlaveRegistry for Control {
    /// A slave finished its handshake: it joins the roster (replacing an older connection) and
    /// the scheduler may use it.
    async fn connected(&self, link: Arc<SlaveLink>) {
        tracing::info!(slave = %link.name, peer = %link.peer, os = %link.hello.os, arch = %link.hello.arch, cpus = link.hello.cpus, version = %link.hello.buildbot_version, "slave connected");
        let capacity = self
            .config
            .slave(&link.name)
            .map_or(1, |slave| slave.max_builds);
        let input = Input::SlaveConnected {
            name: link.name.clone(),
            conn_id: link.conn_id,
            capacity,
        };
        self.roster.connect(link);
        self.scheduler_input(input).await;
    }

    async fn disconnected(&self, link: &SlaveLink) {
        self.roster.disconnect(&link.name, link.conn_id);
        self.scheduler_input(Input::SlaveLost {
            name: link.name.clone(),
            conn_id: link.conn_id,
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_as_one_line() {
        let ambiguous = ControlError::Ambiguous {
            builder: "linux".into(),
            numbers: vec![3, 4],
        };
        assert_eq!(ambiguous.to_string(), "linux is running #3, #4; say which");
        let not_running = ControlError::NotRunning {
            builder: "linux".into(),
            number: Some(7),
        };
        assert_eq!(not_running.to_string(), "linux #7 is not running");
    }
}
