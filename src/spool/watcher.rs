//! The master's side of the spool: notices jobs arriving in `new/` (inotify through `notify`,
//! with a slow poll as a fallback), claims each into `cur/`, parses and checks it, and hands it
//! on as a [`SpooledJob`]. A job that fails is moved to `rejected/` beside a `.why` file. Jobs
//! that arrived while the master was down are found by the first scan at start.

use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::spool::maildir::{Spool, SpoolError};
use crate::spool::submit;
use crate::tryjob::{self as job, Job};

/// How often `new/` is scanned even without a notification (inotify can be unavailable, e.g.
/// on some network filesystems, or overflow).
const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// A job claimed from the spool and checked: the master turns it into build requests.
#[derive(Debug, Clone)]
pub struct SpooledJob {
    /// The file name in `cur/`; the job's identity in the spool.
    pub name: String,
    pub job: Job,
    /// The builders it runs on (all try builders when the job named none).
    pub builders: Vec<String>,
    /// Who wrote the file: the master's own uid for a job taken over SSH (whose `who` the
    /// master set), the submitter's for a job written into the spool directly.
    pub owner_uid: u32,
}

/// What a claimed job is checked against, as configured now.
pub struct Intake {
    /// The builders a try job may name.
    pub try_builders: Vec<String>,
    pub max_patch_bytes: u64,
}

/// Watches the (already opened and verified) spool until `shutdown` is cancelled, sending each
/// good job to `jobs`. `intake` gives the rules in force at each scan.
pub async fn run(
    maildir: Spool,
    intake: impl Fn() -> Intake + Send + 'static,
    jobs: mpsc::Sender<SpooledJob>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (wake_tx, mut wake_rx) = mpsc::channel::<()>(1);
    // Kept alive for the whole loop; dropping it stops the inotify thread.
    let _watcher = match start_notify(&maildir, wake_tx) {
        Ok(watcher) => Some(watcher),
        Err(err) => {
            tracing::warn!(spool = %maildir.root().display(), "no file notifications ({err}); polling every {POLL_INTERVAL:?}");
            None
        }
    };
    loop {
        let scanned = {
            let maildir = maildir.clone();
            // Read per scan: a reconfig changes them while the watcher runs.
            let Intake {
                try_builders,
                max_patch_bytes,
            } = intake();
            tokio::task::spawn_blocking(move || scan(&maildir, &try_builders, max_patch_bytes))
                .await
        };
        match scanned {
            Ok(Ok(found)) => {
                for spooled in found {
                    tracing::info!(job = %spooled.name, builders = ?spooled.builders, who = ?spooled.job.who, "try job accepted from the spool");
                    if jobs.send(spooled).await.is_err() {
                        return Ok(());
                    }
                }
            }
            Ok(Err(err)) => {
                tracing::error!(spool = %maildir.root().display(), "cannot scan the spool: {err}")
            }
            Err(err) => tracing::error!("spool scan panicked: {err}"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = wake_rx.recv() => {}
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
        }
    }
}

fn start_notify(
    maildir: &Spool,
    wake: mpsc::Sender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // One pending wake-up is enough: a scan reads the whole directory.
        if event.as_ref().map_or(true, means_a_job_may_have_arrived) {
            let _ = wake.try_send(());
        }
    })?;
    // inotify watches by path; a swapped new/ would only cost a wake-up, since every
    // operation goes through the verified handles.
    watcher.watch(&maildir.root().join("new"), RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// Whether an inotify event on `new/` is worth a scan. notify watches with a wide mask (open,
/// close-nowrite, moved-from, attrib ...), and a scan itself opens `new/` and renames jobs out
/// of it: waking on those made an idle master rescan forever, a core busy. Only a file created,
/// moved in or closed after writing can be a new job; an overflow (rescan flag) might hide one.
/// An error from the watcher wakes the loop too: one extra scan is cheap, a missed job is not.
fn means_a_job_may_have_arrived(event: &notify::Event) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
    if event.need_rescan() {
        return true;
    }
    matches!(
        event.kind,
        EventKind::Create(_)
            | EventKind::Modify(ModifyKind::Name(
                RenameMode::To | RenameMode::Both | RenameMode::Any
            ))
            | EventKind::Access(AccessKind::Close(AccessMode::Write))
    )
}

/// Claims and checks every job in `new/`. Bad jobs are moved aside with their reason.
fn scan(
    maildir: &Spool,
    try_builders: &[String],
    max_patch_bytes: u64,
) -> Result<Vec<SpooledJob>, SpoolError> {
    let mut found = Vec::new();
    for name in maildir.list_new()? {
        if !maildir.claim(&name)? {
            continue;
        }
        if let Some(spooled) = check_claimed(maildir, &name, try_builders, max_patch_bytes)? {
            found.push(spooled);
        }
    }
    Ok(found)
}

/// Reads and checks the claimed job `cur/NAME`: the job, or `None` after moving it to
/// `rejected/` with its reason. Also used at start for jobs claimed by a master that stopped
/// before recording them.
pub fn check_claimed(
    maildir: &Spool,
    name: &str,
    try_builders: &[String],
    max_patch_bytes: u64,
) -> Result<Option<SpooledJob>, SpoolError> {
    let try_builders: Vec<&str> = try_builders.iter().map(String::as_str).collect();
    let limit = submit::job_size_limit(max_patch_bytes);
    let mut owner_uid = u32::MAX;
    let checked = maildir
        .read_claimed_with_owner(name, limit)
        .and_then(|(bytes, owner)| {
            owner_uid = owner;
            if bytes.len() as u64 > limit {
                return Err(format!(
                    "job is larger than this master's limit of {max_patch_bytes} bytes"
                ));
            }
            job::decode(&bytes).map_err(|err| format!("bad job: {err}"))
        })
        .and_then(|job| {
            let builders =
                submit::check_builders(&job, &try_builders).map_err(|err| err.to_string())?;
            Ok((job, builders))
        });
    match checked {
        Ok((job, builders)) => Ok(Some(SpooledJob {
            name: name.to_string(),
            job,
            builders,
            owner_uid,
        })),
        Err(why) => {
            tracing::warn!(job = %name, "rejected try job: {why}");
            maildir.reject(name, &why)?;
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use notify::event::{
        AccessKind, AccessMode, CreateKind, EventKind, Flag, MetadataKind, ModifyKind, RenameMode,
    };

    use super::*;

    #[test]
    fn only_events_that_can_bring_a_job_wake_the_watcher() {
        let cases = [
            (EventKind::Create(CreateKind::File), true),
            (EventKind::Modify(ModifyKind::Name(RenameMode::To)), true),
            (EventKind::Modify(ModifyKind::Name(RenameMode::Both)), true),
            (
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                true,
            ),
            // What a scan itself causes: opening new/, reading it, moving jobs out.
            (EventKind::Access(AccessKind::Open(AccessMode::Any)), false),
            (
                EventKind::Access(AccessKind::Close(AccessMode::Read)),
                false,
            ),
            (EventKind::Modify(ModifyKind::Name(RenameMode::From)), false),
            (
                EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
                false,
            ),
            (EventKind::Remove(notify::event::RemoveKind::File), false),
        ];
        for (kind, wakes) in cases {
            let event = notify::Event::new(kind);
            assert_eq!(means_a_job_may_have_arrived(&event), wakes, "{kind:?}");
        }
        let overflow = notify::Event::new(EventKind::Other).set_flag(Flag::Rescan);
        assert!(means_a_job_may_have_arrived(&overflow));
    }
}
