//! Requests for builds, however they come: try jobs (from SSH or the spool), forced builds,
//! rebuilds; and taking queued requests back (one by id, or a whole job whose submitter left).

use tokio::io::AsyncRead;

use crate::master::access::{self, Action};
use crate::master::control::{Accepted, Control, ControlError, ForceRequest, Queued};
use crate::master::executor::Mail;
use crate::master::history::{self, NewRequest};
use crate::master::scheduler::Input;
use crate::spool::maildir::Maildir;
use crate::spool::submit;
use crate::status::RequestKind;
use crate::unix::accounts::UnixAccount;

impl Control {
    /// Takes a try job from `input` into the spool, for `tryserver --jobdir DIR` (classic) and
    /// `try`. Nothing is written for a refused job.
    pub async fn submit_try(
        &self,
        account: &UnixAccount,
        jobdir: Option<&str>,
        input: &mut (dyn AsyncRead + Unpin + Send),
    ) -> Result<Accepted, ControlError> {
        let config = &self.config();
        access::check(Action::Try, account, config)?;
        if let Some(jobdir) = jobdir {
            submit::check_jobdir(jobdir, &config.spool.dir, &config.master_dir, &account.home)?;
        }
        // A client that stops sending would hold its channel, task and buffer for ever.
        let limit = config.spool.upload_timeout;
        let (bytes, job) =
            tokio::time::timeout(limit, submit::read_job(input, config.spool.max_patch_bytes))
                .await
                .map_err(|_| submit::SubmitError::UploadTimeout { limit })??;
        let builders = submit::check_builders(&job, &config.try_builders())?;
        let job_name = submit::deliver(&Maildir::new(&config.spool.dir), bytes).await?;
        tracing::info!(user = %account.name, job = %job_name, jobid = %job.jobid, ?builders, "try job spooled");
        Ok(Accepted {
            job_name,
            jobid: job.jobid,
            builders,
        })
    }

    /// Queues a build of `builder` by hand, of a branch and revision of its repository.
    pub async fn force(
        &self,
        account: &UnixAccount,
        builder: &str,
        force: ForceRequest,
    ) -> Result<Queued, ControlError> {
        let in_force = self.config();
        access::check(Action::Force, account, &in_force)?;
        crate::untrusted::text::check_plain("reason", &force.reason)?;
        let config = self.builder(builder)?;
        if !in_force.may_force(builder) {
            return Err(ControlError::NotForcible {
                builder: builder.to_string(),
            });
        }
        let job_name = format!("force-{:016x}", rand::random::<u64>());
        let request = NewRequest {
            job_name: job_name.clone(),
            jobid: String::new(),
            builder: config.name.clone(),
            who: Some(account.name.clone()),
            reason: Some(format!("forced by {}: {}", account.name, force.reason)),
            comment: Some(force.reason),
            repository: config.repo.clone(),
            branch: force.branch,
            baserev: force.revision,
            patch: None,
            patch_level: 1,
            submitted_at: history::now(),
            properties: force.properties,
            kind: RequestKind::Force,
            change_ids: Vec::new(),
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
        access::check(Action::Rebuild, account, &self.config())?;
        crate::untrusted::text::check_plain("reason", reason)?;
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
        let original = original.renew();
        let request = NewRequest {
            job_name: job_name.clone(),
            who: Some(account.name.clone()),
            comment: Some(format!("rebuild of {builder} #{number}: {reason}")),
            reason: Some(format!(
                "rebuild of {builder} #{number} by {}: {reason}",
                account.name
            )),
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
        access::check(Action::Cancel, account, &self.config())?;
        self.builder(builder)?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let mail = Mail::CancelRequest {
            builder: builder.to_string(),
            request_id,
            by: account.name.clone(),
            reply,
        };
        let cancelled = self.inbox.send(mail).await.is_ok() && answer.await.unwrap_or(false);
        if !cancelled {
            return Err(ControlError::NotQueued {
                builder: builder.to_string(),
                request_id,
            });
        }
        tracing::info!(user = %account.name, %builder, request_id, "request cancelled");
        Ok(())
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

    /// Pauses a slave (it finishes its builds and takes no new ones) or lets it work again.
    pub async fn pause_slave(
        &self,
        account: &UnixAccount,
        slave: &str,
        paused: bool,
    ) -> Result<(), ControlError> {
        access::check(Action::PauseSlave, account, &self.config())?;
        if self.config().slave(slave).is_none() {
            return Err(ControlError::NoSuchSlave {
                name: slave.to_string(),
            });
        }
        self.scheduler_input(Input::PauseSlave {
            name: slave.to_string(),
            paused,
        })
        .await;
        tracing::info!(user = %account.name, %slave, paused, "slave pause changed");
        Ok(())
    }
}
