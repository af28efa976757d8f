//! Taking a try job in over SSH: which jobdir a classic client may name,
//! reading the job with a size limit while it streams in, checking it, and delivering it into
//! the maildir. Used by both `tryserver --jobdir DIR` and `try`.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::spool::maildir::{Maildir, Owner, SpoolError};
use crate::tryjob::{self as job, Job, JobError};

/// The patch size limit when `[spool] max_patch_bytes` is not set.
pub const DEFAULT_MAX_PATCH_BYTES: u64 = 10 * 1024 * 1024;

/// Why a submission was refused. Each message is the one line the submitter sees.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("jobdir '{given}' is not this master's spool ({spool}); use --jobdir {spool}")]
    WrongJobdir { given: String, spool: String },
    #[error("job is larger than this master's limit of {limit} bytes ([spool] max_patch_bytes)")]
    TooLarge { limit: u64 },
    /// Not a `#[source]`: the message already carries the decoder's, and a chain printer
    /// (`{:#}`) would say it twice.
    #[error("bad job: {0}")]
    BadJob(JobError),
    #[error("unknown builder '{name}' (try builders here: {allowed})")]
    UnknownBuilder { name: String, allowed: String },
    #[error("this master has no try builders (no [[scheduler]] kind = \"try\")")]
    NoTryBuilders,
    #[error("cannot read the job: {0}")]
    Read(std::io::Error),
    #[error(
        "the job did not arrive within {} ([spool] upload_timeout); is the client stuck?",
        crate::durations::format_eta(*.limit)
    )]
    UploadTimeout { limit: std::time::Duration },
    #[error("cannot write the job into the spool: {0}")]
    Spool(SpoolError),
}

impl From<JobError> for SubmitError {
    fn from(err: JobError) -> SubmitError {
        SubmitError::BadJob(err)
    }
}

/// Checks the `--jobdir` a classic client named: a job may only go into the configured spool.
/// A relative DIR is taken relative to the master directory or the user's home (where a real
/// sshd would run `buildbot tryserver`).
pub fn check_jobdir(
    given: &str,
    spool: &Path,
    master_dir: &Path,
    home: &Path,
) -> Result<(), SubmitError> {
    let wanted = canonical(spool);
    let given_path = Path::new(given);
    let candidates: Vec<PathBuf> = if given_path.is_absolute() {
        vec![given_path.to_path_buf()]
    } else if let Some(rest) = given.strip_prefix("~/") {
        vec![home.join(rest)]
    } else {
        vec![master_dir.join(given_path), home.join(given_path)]
    };
    if candidates
        .iter()
        .any(|candidate| canonical(candidate) == wanted)
    {
        return Ok(());
    }
    Err(SubmitError::WrongJobdir {
        given: given.to_string(),
        spool: spool.display().to_string(),
    })
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The largest job file accepted for a patch limit: base64 (v6) makes a patch 4/3 larger, and
/// the other fields get 64 KiB.
pub fn job_size_limit(max_patch_bytes: u64) -> u64 {
    max_patch_bytes
        .saturating_mul(4)
        .div_ceil(3)
        .saturating_add(64 * 1024)
}

/// Reads a job from `input` until EOF, refusing it as soon as it grows past the limit (it is
/// never read whole first), then decodes it and checks the patch size.
pub async fn read_job(
    input: &mut (dyn AsyncRead + Unpin + Send),
    max_patch_bytes: u64,
) -> Result<(Vec<u8>, Job), SubmitError> {
    let limit = job_size_limit(max_patch_bytes);
    let too_large = || SubmitError::TooLarge {
        limit: max_patch_bytes,
    };
    let mut bytes = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut declared_checked = false;
    loop {
        let read = input.read(&mut chunk).await.map_err(SubmitError::Read)?;
        if read == 0 {
            break;
        }
        if bytes.len() as u64 + read as u64 > limit {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk[..read]);
        // The headers say how long the job will be: refuse it before the bytes arrive, and
        // size the buffer once instead of doubling it.
        if !declared_checked && let Some(declared) = job::declared_length(&bytes) {
            declared_checked = true;
            if declared as u64 > limit {
                return Err(too_large());
            }
            bytes.reserve(declared.saturating_sub(bytes.len()));
        }
    }
    let job = job::decode(&bytes)?;
    let patch_len = job.patch.as_ref().map_or(0, Vec::len) as u64;
    if patch_len > max_patch_bytes {
        return Err(SubmitError::TooLarge {
            limit: max_patch_bytes,
        });
    }
    Ok((bytes, job))
}

/// Checks the builders a job names against the try builders. None named = all of them.
/// Returns the builders the job will run on.
pub fn check_builders(job: &Job, try_builders: &[&str]) -> Result<Vec<String>, SubmitError> {
    if try_builders.is_empty() {
        return Err(SubmitError::NoTryBuilders);
    }
    if job.builders.is_empty() {
        return Ok(try_builders.iter().map(ToString::to_string).collect());
    }
    for name in &job.builders {
        if !try_builders.contains(&name.as_str()) {
            return Err(SubmitError::UnknownBuilder {
                name: name.clone(),
                allowed: try_builders.join(", "),
            });
        }
    }
    Ok(job.builders.clone())
}

/// Writes an accepted job into the maildir as the master (blocking I/O, run off the async
/// threads). The spool's directories are opened and verified for each delivery, so one that
/// was swapped for a symlink since the master started refuses the job instead of being written
/// through.
pub async fn deliver(maildir: &Maildir, bytes: Vec<u8>) -> Result<String, SubmitError> {
    let maildir = maildir.clone();
    tokio::task::spawn_blocking(move || maildir.open(Owner::Master)?.deliver(&bytes))
        .await
        .map_err(|err| {
            SubmitError::Spool(SpoolError::Io {
                path: PathBuf::new(),
                source: std::io::Error::other(err),
            })
        })?
        .map_err(SubmitError::Spool)
}

/// `buildbot tryserver --jobdir DIR` run locally (through a real sshd): reads the job from
/// `input` with the default limit, checks that it decodes, and delivers it into `jobdir`.
/// Builder names are checked later, by the master that owns the spool.
pub fn tryserver_local(jobdir: &Path, input: &mut dyn std::io::Read) -> anyhow::Result<String> {
    use anyhow::Context;
    use std::io::Read;
    let limit = job_size_limit(DEFAULT_MAX_PATCH_BYTES);
    let mut bytes = Vec::new();
    input
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .context("cannot read the job from stdin")?;
    if bytes.len() as u64 > limit {
        anyhow::bail!(SubmitError::TooLarge {
            limit: DEFAULT_MAX_PATCH_BYTES
        });
    }
    job::decode(&bytes).map_err(SubmitError::BadJob)?;
    Maildir::new(jobdir)
        .deliver(&bytes)
        .with_context(|| format!("cannot write the job into {}", jobdir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobdir_must_be_the_configured_spool() {
        let master = tempfile::tempdir().expect("temp dir");
        let home = tempfile::tempdir().expect("temp dir");
        let spool = master.path().join("spool");
        std::fs::create_dir_all(&spool).expect("spool");
        let ok = |given: &str| check_jobdir(given, &spool, master.path(), home.path());
        assert!(ok("spool").is_ok());
        assert!(ok(spool.to_str().expect("utf-8")).is_ok());
        assert!(ok(&format!("{}/./spool/", master.path().display())).is_ok());
        assert!(matches!(ok("jobdir"), Err(SubmitError::WrongJobdir { .. })));
        assert!(matches!(ok("/tmp"), Err(SubmitError::WrongJobdir { .. })));
        assert!(matches!(
            ok("spool/../.."),
            Err(SubmitError::WrongJobdir { .. })
        ));
    }

    #[test]
    fn builders_default_to_all_try_builders_and_unknown_ones_reject_the_job() {
        let mut job = Job {
            version: 5,
            jobid: "1".into(),
            branch: None,
            baserev: None,
            patch_level: 1,
            patch: None,
            repository: String::new(),
            project: String::new(),
            who: None,
            comment: None,
            builders: vec![],
            properties: Default::default(),
        };
        assert_eq!(
            check_builders(&job, &["linux", "mac"]).expect("all"),
            vec!["linux".to_string(), "mac".to_string()]
        );
        job.builders = vec!["linux".into(), "windows".into()];
        let err = check_builders(&job, &["linux", "mac"]).expect_err("unknown");
        assert_eq!(
            err.to_string(),
            "unknown builder 'windows' (try builders here: linux, mac)"
        );
        assert!(matches!(
            check_builders(&job, &[]),
            Err(SubmitError::NoTryBuilders)
        ));
    }

    #[tokio::test]
    async fn a_job_over_the_limit_is_refused_while_it_streams() {
        // An endless reader: a limit that buffered first would never return.
        let mut endless = tokio::io::repeat(b'x');
        let err = read_job(&mut endless, 1024).await.expect_err("too large");
        assert!(matches!(err, SubmitError::TooLarge { limit: 1024 }));
    }
}
