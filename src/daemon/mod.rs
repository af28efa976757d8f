//! `buildbot master` and `create-master`: composes the master core with its front ends (the
//! SSH server, the web server and the IRC bot), the spool watcher and the scheduler executor under one
//! cancellation token. Top layer beside `main`: the only module that knows all the parts.

pub mod create;
pub mod migrate_db;
pub mod pidfile;
pub mod reconfig;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::master::config::Config;
use crate::master::control::Control;
use crate::master::sessions::Sessions;
use crate::master::store::SharedStore;
use crate::master::{executor, intake, poller, schedulers};
use crate::spool::maildir::{Maildir, Owner, Spool};
use crate::sshd::{self, SshdContext};

/// How long running SSH commands get to finish when the master stops.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

/// Where a running master can be reached; printed at start for people and test harnesses.
pub struct Listening {
    pub ssh: SocketAddr,
    pub http: SocketAddr,
    pub host_key_fingerprint: String,
    /// The host key's public line, `ssh-ed25519 AAAA...` (what clients and slaves pin).
    pub host_key_line: String,
}

impl Listening {
    /// The host users reach the SSH listener at: its address, or this machine's name when it
    /// listens on every address.
    fn ssh_host(&self) -> String {
        if self.ssh.ip().is_unspecified() {
            crate::unix::host::name().unwrap_or_else(|| "MASTER_HOST".to_string())
        } else {
            self.ssh.ip().to_string()
        }
    }

    /// What this master tells the cluster about where it is.
    fn reach(&self) -> crate::master::lease::Reach {
        crate::master::lease::Reach {
            ssh: self.ssh.to_string(),
            http: self.http.to_string(),
            ssh_host: self.ssh_host(),
            ssh_port: self.ssh.port(),
            host_key: self.host_key_line.clone(),
        }
    }

    /// The lines a person pastes to reach this master: `.buildbot` for `try` and `watch`, and
    /// the pinned key for a slave. Printed once at start, apart from the log.
    pub fn first_contact(&self) -> String {
        let host = self.ssh_host();
        let port = self.ssh.port();
        let key = &self.host_key_line;
        format!(
            "\n\
             ---- to reach this master ----------------------------------------------------\n\
             Users: put this in .buildbot at the top of a checkout (or give the same as\n\
             --host, --port, --master-host-key to try, watch, stop, force, sendchange):\n\
             \n\
             \x20   host = \"{host}\"\n\
             \x20   port = {port}\n\
             \x20   # username = \"you\"    # your unix account here (default: your local name)\n\
             \x20   master_host_key = \"{key}\"\n\
             \n\
             Slaves: put this in slave.toml (create-slave writes it from --master-host-key):\n\
             \n\
             \x20   master_host_key = \"{key}\"\n\
             \n\
             \x20   buildbot create-slave DIR --master {host}:{port} --name NAME --master-host-key \"{key}\"\n\
             -------------------------------------------------------------------------------\n"
        )
    }
}

impl std::fmt::Display for Listening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "ssh: {}", self.ssh)?;
        writeln!(f, "web: http://{}/", self.http)?;
        write!(f, "host key: {}", self.host_key_fingerprint)
    }
}

/// Runs the master in `master_dir` until `shutdown` is cancelled. `on_listening` is called once
/// both listeners are bound (ports given as 0 are resolved by then).
pub async fn run(
    master_dir: &Path,
    shutdown: CancellationToken,
    on_listening: impl FnOnce(&Listening),
) -> anyhow::Result<()> {
    let mut config = Config::load(master_dir)?;
    // Before the pid file says where to send it: SIGHUP's default action ends the process.
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot listen for SIGHUP")?;
    let pid_file = reconfig::PidFile::create(&config.master_dir)?;
    let spool = open_spool(&config.spool.dir)?;
    let host_key = sshd::load_host_key(&config.sshd.host_key)?;
    let host_key_fingerprint = sshd::fingerprint(host_key.public_key());
    let ssh_listener = TcpListener::bind(config.sshd.listen)
        .await
        .with_context(|| format!("cannot bind the SSH listener on {}", config.sshd.listen))?;
    let http_listener = TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("cannot bind the HTTP listener on {}", config.http.listen))?;
    let listening = Listening {
        ssh: ssh_listener.local_addr()?,
        http: http_listener.local_addr()?,
        host_key_fingerprint: host_key_fingerprint.clone(),
        host_key_line: host_key
            .public_key()
            .to_openssh()
            .context("cannot encode the host key's public half")?,
    };
    // The config in force records what was bound (a port given as 0 is known now), so a file
    // that names the bound ports is no listener change for a reconfig.
    config.sshd.listen = listening.ssh;
    config.http.listen = listening.http;
    let config = Arc::new(config);
    tracing::info!(ssh = %listening.ssh, http = %listening.http, host_key = %host_key_fingerprint, "master {} started", config.name);
    on_listening(&listening);

    let history_path = config.master_dir.join("state.sqlite");
    let store: SharedStore =
        crate::master::store::open(&config.database, &config.master_dir, &shutdown)
            .await
            .with_context(|| match &config.database.backend {
                crate::master::config::Backend::Sqlite => {
                    format!(
                        "cannot open the history database {}",
                        history_path.display()
                    )
                }
                // Its errors name the server (never the password) themselves.
                crate::master::config::Backend::Postgres { .. } => {
                    "cannot open the database".to_string()
                }
            })?;
    let store_for_lead = Arc::clone(&store);
    let sessions = Sessions::load(Arc::clone(&store)).await;
    let owner = crate::master::lease::register(
        store.as_ref(),
        &config,
        &crate::master::lease::starting_info(&config, &listening.reach()),
        &shutdown,
    )
    .await
    .context("cannot register this master in the database")?;
    tracing::info!(master = %owner.name, epoch = owner.epoch, database = %config.database.backend.shown(), "registered in the database");
    // Several masters on one store number their events there, one sequence for all.
    let (journal, journaled) = if store.is_shared() {
        let epoch = store
            .cluster_id()
            .await
            .context("cannot read the cluster's id from the database")?;
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        (Some((epoch, sender)), Some(receiver))
    } else {
        (None, None)
    };
    let (scheduler_tx, scheduler_rx) = tokio::sync::mpsc::channel(256);
    let (changes_tx, changes_rx) = tokio::sync::mpsc::channel(256);
    let control = Arc::new(Control::new(
        Arc::clone(&config),
        host_key_fingerprint,
        crate::master::control::Storage {
            store,
            sessions,
            owner: owner.clone(),
            journal,
        },
        format!("http://{}", listening.http),
        scheduler_tx,
        changes_tx,
    ));
    // Before anyone can ask: `watch` and `/api/builders` show each builder's last build across
    // a restart.
    control
        .restore_last_builds()
        .await
        .context("cannot read the builders' last builds")?;
    // One master of a cluster fires the schedulers, polls and runs the IRC bot; with the
    // embedded store this one, from the start.
    let leads_now = crate::master::lease::lead(
        store_for_lead.as_ref(),
        &owner,
        crate::master::lease::held_for(store_for_lead.as_ref(), &config),
    )
    .await;
    let (leading_tx, leading) = tokio::sync::watch::channel(leads_now);
    let lease_parts = control.lease_parts(listening.reach(), leading_tx);
    let components = TaskTracker::new();
    if let Some(published) = journaled {
        let (store, events) = control.journal_parts();
        spawn_component(&components, &shutdown, "event journal", {
            crate::master::journal::write(
                Arc::clone(&store),
                owner.name.clone(),
                published,
                shutdown.clone(),
            )
        });
        spawn_component(&components, &shutdown, "event journal tail", {
            crate::master::journal::tail(store, events, shutdown.clone())
        });
        spawn_component(&components, &shutdown, "stops asked elsewhere", {
            control.serve_remote_stops(shutdown.clone())
        });
    }
    spawn_component(&components, &shutdown, "lease", {
        crate::master::lease::run(lease_parts, owner, shutdown.clone())
    });
    // Before the SSH listener serves slaves: no upload of this run has started yet.
    match crate::master::artifacts::remove_crash_leftovers(&config.master_dir).await {
        Ok(0) => {}
        Ok(removed) => tracing::info!("removed {removed} unfinished artifact uploads"),
        Err(err) => tracing::warn!("cannot remove unfinished artifact uploads: {err}"),
    }
    let sshd_ctx = Arc::new(SshdContext::new(
        Arc::clone(&config),
        Arc::clone(&control),
        shutdown.clone(),
    ));
    spawn_component(&components, &shutdown, "sshd", {
        sshd::run(ssh_listener, host_key, sshd_ctx, SHUTDOWN_GRACE)
    });
    let web_limits = crate::web::Limits {
        max_connections: http_connection_cap(config.http.max_connections),
        max_connections_per_source: config.http.max_connections_per_source,
        header_read_timeout: config.http.header_read_timeout,
    };
    spawn_component(&components, &shutdown, "web", {
        crate::web::run(
            http_listener,
            Arc::clone(&control),
            web_limits,
            shutdown.clone(),
        )
    });
    // Before the watcher claims anything new, so nothing is taken twice.
    let intake = control.intake_handle();
    let recovered = intake::recover_claimed_jobs(&intake, &spool).await?;
    let (jobs_tx, jobs_rx) = tokio::sync::mpsc::channel(64);
    let recorded_spool = spool.clone();
    spawn_component(&components, &shutdown, "spool watcher", {
        let control = Arc::clone(&control);
        crate::spool::watcher::run(
            spool,
            move || {
                let config = control.config();
                crate::spool::watcher::Intake {
                    try_builders: config
                        .try_builders()
                        .iter()
                        .map(ToString::to_string)
                        .collect(),
                    max_patch_bytes: config.spool.max_patch_bytes,
                }
            },
            jobs_tx,
            shutdown.clone(),
        )
    });
    spawn_component(&components, &shutdown, "spool to scheduler", {
        intake::run(intake, recorded_spool, recovered, jobs_rx, shutdown.clone())
    });
    spawn_component(&components, &shutdown, "scheduler", {
        executor::run(control.executor_parts(), scheduler_rx, shutdown.clone())
    });
    spawn_component(&components, &shutdown, "schedulers", {
        schedulers::run(
            control.schedulers_handle(leading.clone()),
            changes_rx,
            shutdown.clone(),
        )
    });
    // Idle until a config (at start or from a reconfig) has an [irc] section.
    spawn_component(&components, &shutdown, "IRC bot", {
        let control = Arc::clone(&control);
        crate::master::lease::while_leading(
            leading.clone(),
            "the IRC bot",
            shutdown.clone(),
            move |token| crate::irc::run(Arc::clone(&control), token),
        )
    });
    // The merge queues: one driver in a cluster (the leader), idle without [[land]].
    spawn_component(&components, &shutdown, "land queue", {
        let control = Arc::clone(&control);
        crate::master::lease::while_leading(
            leading.clone(),
            "the land queue",
            shutdown.clone(),
            move |token| crate::master::land::driver::run(control.land_handle(), token),
        )
    });
    // Every master keeps what its notifiers want in the outbox (kept once per event, however
    // many masters see it); the leading one sends it.
    spawn_component(&components, &shutdown, "notification recorder", {
        crate::master::notify::record(Arc::clone(&control), shutdown.clone())
    });
    spawn_component(&components, &shutdown, "notification delivery", {
        let control = Arc::clone(&control);
        crate::master::lease::while_leading(
            leading.clone(),
            "notification delivery",
            shutdown.clone(),
            move |token| crate::master::notify::deliver(Arc::clone(&control), token),
        )
    });
    spawn_component(&components, &shutdown, "bisections", {
        let control = Arc::clone(&control);
        crate::master::lease::while_leading(
            leading.clone(),
            "bisections",
            shutdown.clone(),
            move |token| crate::master::bisect::run(Arc::clone(&control), token),
        )
    });
    // [retention]: old builds' logs and artifacts pruned by the master leading the cluster.
    spawn_component(&components, &shutdown, "retention", {
        let control = Arc::clone(&control);
        crate::master::lease::while_leading(
            leading.clone(),
            "retention",
            shutdown.clone(),
            move |token| crate::master::retention::run(Arc::clone(&control), token),
        )
    });
    spawn_component(&components, &shutdown, "storage measure", {
        crate::master::retention::measure_every(Arc::clone(&control), shutdown.clone())
    });
    spawn_component(&components, &shutdown, "reconfig", {
        reconfig::serve(
            config.master_dir.clone(),
            Arc::clone(&control),
            hangups,
            shutdown.clone(),
        )
    });
    for source in &config.change_sources {
        spawn_component(&components, &shutdown, "change poller", {
            let (control, source) = (Arc::clone(&control), source.clone());
            crate::master::lease::while_leading(
                leading.clone(),
                "a change poller",
                shutdown.clone(),
                move |token| poller::run(control.poller_handle(), source.clone(), token),
            )
        });
    }
    components.close();
    components.wait().await;
    drop(pid_file);
    tracing::info!("master {} stopped", config.name);
    Ok(())
}

/// File descriptors kept out of the web server's reach: SSH connections (slaves, users and
/// `max_startups` unauthenticated ones), log files, the database, the spool and inotify.
const RESERVED_DESCRIPTORS: u64 = 256;
/// The web server gets at least this many connections, whatever the limit says.
const MIN_HTTP_CONNECTIONS: u64 = 16;
/// The kernel's default `fs.nr_open`: the most a soft limit can be raised to when the hard
/// limit is "unlimited".
const NR_OPEN_DEFAULT: u64 = 1 << 20;

/// Raises the soft RLIMIT_NOFILE to the hard one, then lowers `configured` so that HTTP
/// connections can never use the descriptors SSH needs: a flood of idle HTTP connections must
/// not make SSH accepts fail (issue #13).
fn http_connection_cap(configured: usize) -> usize {
    use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit, setrlimit};
    let (mut soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(err) => {
            tracing::warn!(
                "cannot read RLIMIT_NOFILE ({err}); [http] max_connections = {configured} unchecked"
            );
            return configured;
        }
    };
    let target = if hard == RLIM_INFINITY {
        NR_OPEN_DEFAULT
    } else {
        hard
    };
    if soft < target {
        match setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
            Ok(()) => {
                tracing::info!("raised the open-file limit from {soft} to {target}");
                soft = target;
            }
            Err(err) => {
                tracing::warn!("cannot raise the open-file limit from {soft} to {target}: {err}")
            }
        }
    }
    let room = soft
        .saturating_sub(RESERVED_DESCRIPTORS)
        .max(MIN_HTTP_CONNECTIONS);
    let cap = (configured as u64).min(room) as usize;
    if cap < configured {
        tracing::warn!(
            "[http] max_connections lowered from {configured} to {cap}: the open-file limit is {soft} and {RESERVED_DESCRIPTORS} stay free for SSH (raise LimitNOFILE)"
        );
    }
    cap
}

/// Creates the spool's missing sub-directories and opens them, verified, once for the whole run.
/// A spool whose sub-directory is a symlink or belongs to someone else stops the master here,
/// with the one line that says which and what to do.
fn open_spool(dir: &Path) -> anyhow::Result<Spool> {
    let maildir = Maildir::new(dir);
    maildir
        .ensure()
        .with_context(|| format!("cannot prepare the spool {}", dir.display()))?;
    Ok(maildir.open(Owner::Master)?)
}

/// Runs one long-lived part of the master; if it ends on its own (error or not) while the
/// master is meant to run, the others are told to stop too.
fn spawn_component(
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
    name: &'static str,
    component: impl Future<Output = anyhow::Result<()>> + Send + 'static,
) {
    let shutdown = shutdown.clone();
    tracker.spawn(async move {
        let result = component.await;
        if !shutdown.is_cancelled() {
            match &result {
                Ok(()) => tracing::error!("{name} stopped unexpectedly; stopping the master"),
                Err(err) => tracing::error!("{name} failed: {err:#}; stopping the master"),
            }
            shutdown.cancel();
        }
    });
}
