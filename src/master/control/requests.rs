//! Requests for builds, however they come: try jobs (from SSH or the spool), forced builds,
//! rebuilds; and taking queued requests back (one by id, or a whole job whose submitter left).

use tokio::io::AsyncRead;

use crate::master::access::{self, AccessError, Action, Rights, Target};
use crate::master::control::{Accepted, Control, ControlError, ForceRequest, Queued};
use crate::master::executor::Mail;
use crate::master::scheduler::Input;
use crate::master::store::{BuildRef, NewRequest, now};
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
        access::check(account, Action::Try, Target::Master, config)?;
        if let Some(jobdir) = jobdir {
            submit::check_jobdir(jobdir, &config.spool.dir, &config.master_dir, &account.home)?;
        }
        // A client that stops sending would hold its channel, task and buffer for ever.
        let limit = config.spool.upload_timeout;
        let (_, mut job) =
            tokio::time::timeout(limit, submit::read_job(input, config.spool.max_patch_bytes))
                .await
                .map_err(|_| submit::SubmitError::UploadTimeout { limit })??;
        let builders = submit::check_builders(&job, &config.try_builders())?;
        let rights = self.may_start_try(account, &job, &builders, config)?;
        self.admit(&rights, builders.len(), config).await?;
        // The job's "who" is the authenticated user, whatever the client wrote in it.
        job.who = Some(account.name.clone());
        let bytes = crate::tryjob::encode(&job);
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
        crate::untrusted::text::check_plain("reason", &force.reason)?;
        if let Some(name) = force
            .properties
            .keys()
            .find(|name| crate::change::is_master_property(name))
        {
            return Err(AccessError::MasterProperty { name: name.clone() }.into());
        }
        let config = self.builder(builder)?;
        let rights = access::check(
            account,
            Action::Force,
            Target::Start {
                builder,
                patch: false,
                of: None,
            },
            &in_force,
        )?;
        self.admit(&rights, 1, &in_force).await?;
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
            submitted_at: now(),
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
        let in_force = self.config();
        crate::untrusted::text::check_plain("reason", reason)?;
        self.builder(builder)?;
        let name = builder.to_string();
        let detail = self
            .store
            .build_detail(&BuildRef::Number {
                builder: name,
                number,
            })
            .await?;
        let original = match detail {
            Some(detail) => self.store.request(detail.request_id).await?,
            None => None,
        }
        .ok_or_else(|| ControlError::NoSuchBuild {
            builder: builder.to_string(),
            number,
        })?;
        // A rebuild starts a build like force and try do, under the same rules: the builder
        // must be forcible, or for a patch build take try jobs, and be the rebuilder's own.
        let rights = access::check(
            account,
            Action::Rebuild,
            Target::Start {
                builder,
                patch: original.patch.is_some(),
                of: Some(original.who.as_deref()),
            },
            &in_force,
        )?;
        if let Some(patch) = &original.patch {
            let allowed = in_force
                .builder(builder)
                .is_some_and(|found| found.patch_submodule_urls);
            if !allowed && crate::tryjob::changes_gitmodules_urls(patch) {
                return Err(AccessError::SubmoduleUrls {
                    builder: builder.to_string(),
                }
                .into());
            }
        }
        self.admit(&rights, 1, &in_force).await?;
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
            submitted_at: now(),
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
        self.builder(builder)?;
        let owner = self
            .store
            .request(request_id)
            .await?
            .filter(|request| request.builder == builder)
            .map(|request| request.request.who);
        let Some(owner) = owner else {
            return Err(ControlError::NotQueued {
                builder: builder.to_string(),
                request_id,
            });
        };
        access::check(
            account,
            Action::Cancel,
            Target::Owned {
                owner: owner.as_deref(),
            },
            &self.config(),
        )?;
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

    /// Drops every queued request of `builder`, or of one user there (operators only);
    /// returns how many were waiting.
    pub async fn cancel_all(
        &self,
        account: &UnixAccount,
        builder: &str,
        user: Option<&str>,
    ) -> Result<usize, ControlError> {
        access::check(account, Action::CancelAll, Target::Master, &self.config())?;
        self.builder(builder)?;
        let (name, who) = (builder.to_string(), user.map(str::to_string));
        let waiting = self
            .store
            .pending_count(Some(&name), who.as_deref())
            .await?;
        self.scheduler_input(Input::CancelQueued {
            builder: builder.to_string(),
            who: user.map(str::to_string),
            by: account.name.clone(),
        })
        .await;
        tracing::info!(user = %account.name, %builder, of = ?user, waiting, "queued requests cancelled in bulk");
        Ok(waiting)
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
        access::check(account, Action::PauseSlave, Target::Master, &self.config())?;
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

    /// The one check for a try job's builders: the rights of the submitter now, and each
    /// builder's policy (a try builder, not trusted, submodule URLs).
    fn may_start_try(
        &self,
        account: &UnixAccount,
        job: &crate::tryjob::Job,
        builders: &[String],
        config: &crate::master::config::Config,
    ) -> Result<Rights, ControlError> {
        let rights = access::rights(account, config)?;
        for builder in builders {
            access::authorize(
                &rights,
                Action::Try,
                Target::Start {
                    builder,
                    patch: true,
                    of: None,
                },
                config,
            )?;
            start_try_policy(job, builder, config)?;
        }
        Ok(rights)
    }

    /// The per-user quota: operators are exempt; others may have so many requests waiting
    /// and submit so many per minute.
    async fn admit(
        &self,
        rights: &Rights,
        adding: usize,
        config: &crate::master::config::Config,
    ) -> Result<(), ControlError> {
        if rights.operator {
            return Ok(());
        }
        let who = rights.user.clone();
        let queued = self.store.pending_count(None, Some(&who)).await?;
        self.quotas
            .admit(
                &rights.user,
                queued,
                adding,
                &config.quotas,
                std::time::Instant::now(),
            )
            .map_err(AccessError::from)?;
        Ok(())
    }
}

/// What a builder says about a try job, whoever sent it: trusted builders take no patch builds
/// and `.gitmodules` URLs change only where allowed.
pub(crate) fn start_try_policy(
    job: &crate::tryjob::Job,
    builder: &str,
    config: &crate::master::config::Config,
) -> Result<(), AccessError> {
    if let Some(name) = job
        .properties
        .keys()
        .find(|name| crate::change::is_master_property(name))
    {
        return Err(AccessError::MasterProperty { name: name.clone() });
    }
    let Some(found) = config.builder(builder) else {
        return Ok(());
    };
    if found.trusted {
        return Err(AccessError::Trusted {
            builder: builder.to_string(),
        });
    }
    if !found.patch_submodule_urls
        && job
            .patch
            .as_deref()
            .is_some_and(crate::tryjob::changes_gitmodules_urls)
    {
        return Err(AccessError::SubmoduleUrls {
            builder: builder.to_string(),
        });
    }
    Ok(())
}
