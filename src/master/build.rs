//! One build from start to result: ping the slave, record the build, run the checkout step
//! (with the try patch) and the builder's steps one after the other on the slave, append their
//! output to log files as it streams in, and record every result.
//!
//! A build never hangs on a dead slave: when the slave's connection ends, the step's event
//! channel closes, the step and the build end as exception ("slave lost", the rule
//! `results::CUT_SHORT`), and the request is queued again.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::master::artifact_fetch;
use crate::master::artifacts::{self, Sink};
use crate::master::board::{StopHandle, StopRequest};
use crate::master::config::ArtifactsWhen;
use crate::master::config::{BuilderConfig, StepConfig};
use crate::master::interpolate::{self, InterpolationError};
use crate::master::locks::LockUse;
pub use crate::master::logs::log_file_name;
use crate::master::logs::{LOG_CHUNK, StoreShipper};
use crate::master::results::{CUT_SHORT, FailurePolicy, expected_duration};
use crate::master::scheduler::Input;
use crate::master::secrets::{self, RedactState, Redactor, Secret};
use crate::master::slaves::{SlaveEvent, SlaveLink};
use crate::master::store::{SharedStore, StoredRequest};
use crate::proto::{
    CheckoutRequest, CollectRequest, CommandRequest, ExitReport, Failure, Message, StreamKind,
};
use crate::status::{BuildEvent, BuildResult, RequestKind, RunningBuild, unix_now};

/// A request whose slave was lost this many times while building it is not run again: a patch
/// or a build that kills its slave would otherwise take down one slave after another forever.
const MAX_SLAVE_LOSSES: i64 = 2;

/// The build's reason when a request is given up after `MAX_SLAVE_LOSSES`.
pub const SLAVE_LOST_TWICE: &str = "slave lost twice while building this request";

/// What the scheduler needs to know when a build ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BuildOutcome {
    /// Run the request again (slave lost before or during the build).
    pub retry: bool,
    /// The slave did not answer the ping: its connection is dropped.
    pub slave_unusable: bool,
}

/// One step as the slave will run it.
enum StepKind {
    Checkout(CheckoutRequest),
    Command(CommandRequest, FailurePolicy),
    /// Keep the files the previous step left (`artifacts`), or, after the last step, the
    /// builder's (`[[builder]] artifacts`), streamed into `master::artifacts`.
    Collect(CollectRequest, ArtifactsWhen, CollectScope),
    /// Put kept files into the work tree before the next step (`fetch_artifacts`): the
    /// builder's directory on the slave and what to fetch.
    Fetch(String, Vec<crate::master::config::FetchArtifacts>),
}

/// Whose `artifacts` a collection keeps, which decides what `when = "success"` looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CollectScope {
    /// A step's: kept if that step succeeded.
    Step,
    /// The builder's, after its last step: kept if the build so far is good.
    Build,
}

fn collection(builder: &str, patterns: &[String]) -> CollectRequest {
    CollectRequest {
        builder: builder.to_string(),
        patterns: patterns.to_vec(),
        max_files: artifacts::MAX_FILES,
        max_file_bytes: artifacts::MAX_FILE_BYTES,
        max_total_bytes: artifacts::MAX_TOTAL_BYTES,
    }
}

struct PlannedStep {
    name: String,
    kind: StepKind,
    /// Taken all at once before the step runs, released when it ends.
    locks: Vec<LockUse>,
    /// Test reports collected after the step (issue 26).
    test_results: Vec<(crate::master::test_results::ReportKind, String)>,
}

/// What the steps of one build may know of it: its properties (the request's, and the
/// build's own: branch, revision, buildername, buildnumber, slavename) and the `BUILDBOT_*`
/// environment.
struct BuildFacts {
    properties: BTreeMap<String, String>,
    env: Vec<(String, String)>,
}

fn build_facts(
    builder: &BuilderConfig,
    request: &StoredRequest,
    checkout: &CheckoutRequest,
    number: i64,
    slave: &str,
) -> BuildFacts {
    let revision = checkout.revision.clone().unwrap_or_default();
    let own = [
        ("branch", checkout.branch.clone()),
        ("revision", revision.clone()),
        ("buildername", builder.name.clone()),
        ("buildnumber", number.to_string()),
        ("slavename", slave.to_string()),
    ];
    let mut properties = request.properties.clone();
    properties.extend(
        own.iter()
            .map(|(name, value)| (name.to_string(), value.clone())),
    );
    let mut env = vec![
        ("BUILDBOT_BRANCH".to_string(), checkout.branch.clone()),
        ("BUILDBOT_REVISION".to_string(), revision),
        ("BUILDBOT_BUILDER".to_string(), builder.name.clone()),
        ("BUILDBOT_BUILDNUMBER".to_string(), number.to_string()),
        ("BUILDBOT_SLAVE".to_string(), slave.to_string()),
    ];
    env.extend(
        request
            .properties
            .iter()
            .filter(|(name, _)| crate::change::is_property_name(name))
            .map(|(name, value)| {
                (
                    format!("BUILDBOT_PROP_{}", name.to_uppercase()),
                    value.clone(),
                )
            }),
    );
    BuildFacts { properties, env }
}

/// What the build's checkout step asks of the slave: the request's branch (or the builder's)
/// and revision, with the try patch.
fn plan_checkout(builder: &BuilderConfig, request: &StoredRequest) -> CheckoutRequest {
    let mut checkout = CheckoutRequest {
        builder: builder.name.clone(),
        repo: builder.repo.clone(),
        branch: request
            .branch
            .clone()
            .unwrap_or_else(|| builder.branch.clone()),
        revision: request.baserev.clone(),
        patch: request.patch.clone(),
        patch_level: request.patch_level,
        submodules: builder.submodules,
        keep_siblings: None,
    };
    // A try job's branch names the developer's branch, which the builder's repository may not
    // have; the base revision is what matters, the builder's branch is the fallback. Forced and
    // scheduled builds name a branch of the builder's repository.
    if request.kind == RequestKind::Try && request.baserev.is_some() {
        checkout.branch = builder.branch.clone();
    }
    checkout
}

/// The builder's command steps with their properties put in, knowing of the source what
/// `checkout` says (planned first with the request's revision, again with the commit the
/// checkout reported). An interpolation that cannot be applied is the error.
fn plan_commands(
    builder: &BuilderConfig,
    request: &StoredRequest,
    checkout: &CheckoutRequest,
    number: i64,
    slave: &str,
    secrets: &BuildSecrets,
) -> Result<VecDeque<PlannedStep>, InterpolationError> {
    let mut facts = build_facts(builder, request, checkout, number, slave);
    facts.env.extend(secrets.env());
    let mut planned = VecDeque::new();
    for step in &builder.steps {
        if !step.fetch_artifacts.is_empty() {
            planned.push_back(PlannedStep {
                name: format!("{}-fetch", step.name),
                locks: Vec::new(),
                test_results: Vec::new(),
                kind: StepKind::Fetch(builder.name.clone(), step.fetch_artifacts.clone()),
            });
        }
        planned.push_back(command_step(builder, step, &facts)?);
        if !step.artifacts.is_empty() {
            planned.push_back(PlannedStep {
                name: format!("{}-artifacts", step.name),
                locks: Vec::new(),
                test_results: Vec::new(),
                kind: StepKind::Collect(
                    collection(&builder.name, &step.artifacts),
                    step.when,
                    CollectScope::Step,
                ),
            });
        }
    }
    if !builder.artifacts.is_empty() {
        planned.push_back(PlannedStep {
            name: "artifacts".into(),
            locks: Vec::new(),
            test_results: Vec::new(),
            kind: StepKind::Collect(
                collection(&builder.name, &builder.artifacts),
                builder.artifacts_when,
                CollectScope::Build,
            ),
        });
    }
    Ok(planned)
}

fn command_step(
    builder: &BuilderConfig,
    step: &StepConfig,
    facts: &BuildFacts,
) -> Result<PlannedStep, InterpolationError> {
    let mut env = facts.env.clone();
    // The step's own settings come last, so the config has the final word.
    env.extend(step.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(PlannedStep {
        name: step.name.clone(),
        locks: step.locks.clone(),
        test_results: step.test_results.clone(),
        kind: StepKind::Command(
            CommandRequest {
                builder: builder.name.clone(),
                shell: interpolate::apply(&step.command, &facts.properties)?,
                workdir: step.workdir.clone(),
                env,
                timeout_secs: step.timeout.map(|timeout| timeout.as_secs().max(1)),
            },
            FailurePolicy {
                halt_on_failure: step.halt_on_failure,
                flunk_on_failure: step.flunk_on_failure,
                warn_on_failure: step.warn_on_failure,
            },
        ),
    })
}

/// The secrets of one build: what its steps get in their environment (none for a build that
/// runs a user's patch, unless the builder allows it) and the redactor of its logs (all the
/// builder's secrets that could be read, whether the steps get them or not).
#[derive(Default)]
struct BuildSecrets {
    given: Vec<Secret>,
    redactor: Option<Arc<Redactor>>,
}

impl BuildSecrets {
    /// Reads the builder's secret files afresh (a rotated token needs no reconfig). A file
    /// that cannot be read fails a build that was to get it, with one line naming it.
    async fn load(
        config: &crate::master::config::Config,
        builder: &BuilderConfig,
        request: &StoredRequest,
    ) -> Result<BuildSecrets, String> {
        if builder.secrets.is_empty() {
            return Ok(BuildSecrets::default());
        }
        let gets = secrets::gets_secrets(builder, request);
        let files: Vec<(String, PathBuf)> = builder
            .secrets
            .iter()
            .filter_map(|name| {
                let secret = config.secrets.iter().find(|secret| &secret.name == name)?;
                Some((name.clone(), secret.file.clone()))
            })
            .collect();
        let read = tokio::task::spawn_blocking(move || {
            files
                .into_iter()
                .map(|(name, file)| {
                    let value = secrets::read_secret_file(&file);
                    (name, value)
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|err| format!("cannot read the secrets: {err}"))?;
        let mut all = Vec::new();
        for (name, value) in read {
            match value {
                Ok(value) => all.push(Secret { name, value }),
                Err(err) if gets => return Err(format!("secret \"{name}\": {err}")),
                Err(err) => tracing::warn!("secret \"{name}\" not redacted: {err}"),
            }
        }
        let redactor = Redactor::new(&all)
            .map_err(|err| err.to_string())?
            .map(Arc::new);
        if !gets && request.kind == RequestKind::Try {
            tracing::info!(builder = %builder.name, "a build of a user's patch: the builder's secrets are not given");
        }
        Ok(BuildSecrets {
            given: if gets { all } else { Vec::new() },
            redactor,
        })
    }

    fn env(&self) -> impl Iterator<Item = (String, String)> + '_ {
        self.given.iter().map(|secret| {
            (
                secrets::env_name(&secret.name),
                String::from_utf8_lossy(&secret.value).into_owned(),
            )
        })
    }
}

/// What a build asks of the scheduler executor: its one narrow way back into the queue
/// (`executor` implements it; a build does not know the executor).
pub trait SchedulerPort: Send + Sync {
    fn input(&self, input: Input) -> futures_util::future::BoxFuture<'_, ()>;
    /// Waits until the step's locks are granted; none when the master stops.
    fn step_locks(
        &self,
        request_id: i64,
        step: String,
        slave: String,
        uses: Vec<LockUse>,
    ) -> futures_util::future::BoxFuture<'_, Option<()>>;
}

/// What one build touches: the config, the history, the board, the event log, the metrics,
/// the log directory, and the scheduler's port (step locks). Not the whole control layer.
pub struct BuildParts {
    pub(crate) config: crate::master::reconfig::ConfigView,
    pub(crate) store: SharedStore,
    pub(crate) events: Arc<crate::master::events::EventLog>,
    pub(crate) board: Arc<crate::master::board::Board>,
    pub(crate) metrics: Arc<crate::master::metrics::Metrics>,
    /// Where step logs are written: `logs/BUILDER/NUMBER/STEP-NAME.STREAM`.
    pub(crate) logs_dir: PathBuf,
    pub(crate) scheduler: Arc<dyn SchedulerPort>,
    /// This run of the master, which owns the builds it starts.
    pub(crate) owner: crate::master::store::MasterLease,
}

impl BuildParts {
    pub fn config(&self) -> Arc<crate::master::config::Config> {
        self.config.current()
    }

    pub async fn scheduler_input(&self, input: Input) {
        self.scheduler.input(input).await;
    }

    async fn step_locks(
        &self,
        request_id: i64,
        step: &str,
        slave: &str,
        uses: Vec<LockUse>,
    ) -> Option<()> {
        self.scheduler
            .step_locks(request_id, step.to_string(), slave.to_string(), uses)
            .await
    }
}

/// Runs the build of `request` on `link`'s slave.
pub async fn run(
    control: &Arc<BuildParts>,
    request: StoredRequest,
    link: Arc<SlaveLink>,
    ping_timeout: Duration,
    shutdown: CancellationToken,
) -> BuildOutcome {
    let Some(builder) = control.config().builder(&request.builder).cloned() else {
        tracing::error!(builder = %request.builder, "request for a builder no longer configured; dropped");
        return BuildOutcome::default();
    };
    if !link.ping(ping_timeout).await {
        tracing::warn!(slave = %link.name, "no pong within {ping_timeout:?}; treating the slave as lost");
        return BuildOutcome {
            retry: true,
            slave_unusable: true,
        };
    }
    // In a cluster, the builder's master locks are held across the masters: taken in the
    // store, whole or not at all, before the request is claimed.
    let cluster_locks = cluster_lock_uses(control, &builder.locks);
    // Named by this run too: two masters may both try to start one request (only one claims
    // it), and the loser must not free what the winner holds.
    let holder = format!(
        "{}#{}:build:{}",
        control.owner.name, control.owner.epoch, request.id
    );
    let holds_cluster_locks = !cluster_locks.is_empty();
    if holds_cluster_locks {
        match control
            .store
            .take_master_locks(&control.owner, &holder, cluster_locks)
            .await
        {
            Ok(true) => {
                tracing::debug!(
                    request = request.id,
                    "took the build's master locks in the store"
                );
            }
            Ok(false) | Err(_) => {
                // Held on another master: the request waits its turn again, after a pause
                // so the queue does not spin on it.
                tracing::debug!(request = request.id, builder = %builder.name, "a master lock is held on another master");
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = tokio::time::sleep(CLUSTER_LOCK_RETRY) => {}
                }
                return BuildOutcome {
                    retry: true,
                    slave_unusable: false,
                };
            }
        }
    }
    let outcome = claim_and_run(control, &builder, request, link, shutdown).await;
    if holds_cluster_locks
        && let Err(err) = control
            .store
            .release_master_locks(&control.owner, &holder)
            .await
    {
        tracing::error!("cannot release the build's master locks: {err}");
    }
    outcome
}

/// How long a build whose master lock is held on another master waits before it tries again.
const CLUSTER_LOCK_RETRY: Duration = Duration::from_secs(1);

/// The master locks among `uses`, as the store takes them across a cluster; none with a
/// store only this master uses (its own lock table decides alone).
fn cluster_lock_uses(
    control: &BuildParts,
    uses: &[LockUse],
) -> Vec<crate::master::store::MasterLockUse> {
    if !control.store.is_shared() {
        return Vec::new();
    }
    let config = control.config();
    uses.iter()
        .filter_map(|lock_use| {
            let def = config.locks.iter().find(|def| def.name == lock_use.lock)?;
            (def.kind == crate::master::locks::LockKind::Master).then(|| {
                crate::master::store::MasterLockUse {
                    lock: lock_use.lock.clone(),
                    exclusive: lock_use.access == crate::master::locks::Access::Exclusive,
                    max_count: i64::try_from(def.max_count).unwrap_or(i64::MAX),
                }
            })
        })
        .collect()
}

/// Claims the request and runs its build (the slave answered, the cluster's locks are held).
async fn claim_and_run(
    control: &Arc<BuildParts>,
    builder: &BuilderConfig,
    request: StoredRequest,
    link: Arc<SlaveLink>,
    shutdown: CancellationToken,
) -> BuildOutcome {
    let builder = builder.clone();
    let started = match begin(control, &builder, &request, &link).await {
        Ok(started) => started,
        // Another master claimed it first (or it was cancelled meanwhile): nothing to do
        // here, and nothing to retry.
        Err(crate::master::store::StoreError::AlreadyClaimed { request_id }) => {
            tracing::info!(request = request_id, builder = %builder.name, "request claimed elsewhere; the slave stays free");
            return BuildOutcome::default();
        }
        // This run was declared lost: it must not start anything (the lease task stops it).
        Err(fenced @ crate::master::store::StoreError::Fenced { .. }) => {
            tracing::error!("cannot start a build: {fenced}");
            return BuildOutcome::default();
        }
        Err(err) => {
            tracing::error!("cannot record the build: {err}");
            return BuildOutcome {
                retry: true,
                slave_unusable: false,
            };
        }
    };
    let began = std::time::Instant::now();
    let span = tracing::info_span!("build", builder = %builder.name, number = started.number, slave = %link.name);
    let mut ending = run_steps(control, &builder, &request, &link, &started, &shutdown).await;
    let mut retry = ending.slave_lost && builder.retry_on_slave_lost;
    if ending.slave_lost {
        let request_id = request.id;
        match control.store.record_slave_loss(request_id).await {
            Ok(losses) if losses >= MAX_SLAVE_LOSSES => {
                tracing::warn!(parent: &span, request = request_id, "{SLAVE_LOST_TWICE}; not retried");
                retry = false;
                ending.reason = Some(SLAVE_LOST_TWICE.into());
            }
            Ok(_) => {}
            // Without the count, retrying could loop: this request is not retried.
            Err(err) => {
                tracing::error!(parent: &span, "cannot count the slave loss: {err}");
                retry = false;
            }
        }
    }
    // A build cut short by the master stopping runs again at the next start: its request goes
    // back to pending, as a build the master could not finish at all does
    // (`Store::recover_interrupted_builds`). So does one retried after a lost slave, so a
    // restart before the retry runs does not lose it.
    let master_stopping = shutdown.is_cancelled() && ending.result == BuildResult::Exception;
    let runs_again = master_stopping || retry;
    let recorded_reason = ending.reason.clone();
    if let Err(err) = control
        .store
        .finish_build(
            &control.owner,
            started.build_id,
            ending.result,
            recorded_reason.as_deref(),
            runs_again,
        )
        .await
    {
        tracing::error!(parent: &span, "cannot record the build's end: {err}");
    }
    control
        .board
        .finish(&builder.name, started.number, ending.result);
    tracing::info!(parent: &span, result = %ending.result, "build finished");
    control
        .metrics
        .build_finished(&builder.name, ending.result, began.elapsed().as_secs_f64());
    control.events.publish(BuildEvent::BuildFinished {
        job_name: request.job_name.clone(),
        builder: builder.name.clone(),
        number: started.number,
        result: ending.result,
        reason: ending.reason,
        will_retry: retry || master_stopping,
    });
    BuildOutcome {
        retry,
        slave_unusable: ending.slave_leaving,
    }
}

/// A build recorded in the history and put on the board.
struct Started {
    build_id: i64,
    number: i64,
    stop: Arc<StopHandle>,
}

/// Claims the request and records its build, puts it on the board and announces it.
async fn begin(
    control: &Arc<BuildParts>,
    builder: &BuilderConfig,
    request: &StoredRequest,
    link: &SlaveLink,
) -> Result<Started, crate::master::store::StoreError> {
    let request_id = request.id;
    let (builder_name, slave_name) = (builder.name.clone(), link.name.clone());
    let started = control
        .store
        .start_build(&control.owner, request_id, &builder_name, &slave_name)
        .await;
    let (build_id, number) = started?;
    let eta_builder = builder.name.clone();
    let expected_secs = control
        .store
        .recent_success_durations(&eta_builder, 10)
        .await
        .ok()
        .and_then(|durations| expected_duration(&durations))
        .map(|expected| expected.as_secs_f64());
    let stop = control.board.start(
        &request.job_name,
        request.id,
        RunningBuild {
            builder: builder.name.clone(),
            number,
            slave: link.name.clone(),
            step: None,
            step_number: None,
            started_at: unix_now(),
            expected_secs,
        },
    );
    control.events.publish(BuildEvent::BuildStarted {
        job_name: request.job_name.clone(),
        builder: builder.name.clone(),
        number,
        slave: link.name.clone(),
        expected_secs,
    });
    Ok(Started {
        build_id,
        number,
        stop,
    })
}

/// How the steps ended, for the build's record.
struct Ending {
    result: BuildResult,
    reason: Option<String>,
    slave_lost: bool,
    /// The slave said it is going away: its connection must not get the retry.
    slave_leaving: bool,
}

/// Runs the planned steps one after the other, recording each; stops at the first that halts.
async fn run_steps(
    control: &Arc<BuildParts>,
    builder: &BuilderConfig,
    request: &StoredRequest,
    link: &SlaveLink,
    started: &Started,
    shutdown: &CancellationToken,
) -> Ending {
    let number = started.number;
    let log_dir = control
        .logs_dir
        .join(&builder.name)
        .join(number.to_string());
    let mut ending = Ending {
        result: BuildResult::Success,
        reason: None,
        slave_lost: false,
        slave_leaving: false,
    };
    // The builder's directory on the slave, unless a held build keeps it (`master::shell`).
    // Until the build ends (the claim is dropped), no other build gets this directory.
    let (claim, keep_siblings) =
        crate::master::shell::work_dir(&*control.store, link, &builder.name).await;
    let dir = claim.dir.clone();
    let secrets = match BuildSecrets::load(&control.config(), builder, request).await {
        Ok(secrets) => secrets,
        Err(err) => {
            tracing::error!("{err}");
            ending.result = BuildResult::Exception;
            ending.reason = Some(err);
            return ending;
        }
    };
    let mut checkout = plan_checkout(builder, request);
    checkout.builder = dir.clone();
    checkout.keep_siblings = keep_siblings;
    // Planned now so a property that cannot be put in ends the build before any work, and
    // again once the checkout has said which commit it is.
    let commands = match plan_commands(builder, request, &checkout, number, &link.name, &secrets) {
        Ok(commands) => in_dir(commands, &dir),
        Err(err) => {
            tracing::error!("cannot plan the steps: {err}");
            ending.result = BuildResult::Exception;
            ending.reason = Some(format!("cannot plan the steps: {err}"));
            return ending;
        }
    };
    let mut steps = VecDeque::from([PlannedStep {
        name: "checkout".into(),
        kind: StepKind::Checkout(checkout.clone()),
        locks: Vec::new(),
        test_results: Vec::new(),
    }]);
    let mut report_budget = crate::master::test_results::collect::Budget::default();
    steps.extend(commands);
    let mut step_number = 0;
    // Whether the step before succeeded: a collection `when = "success"` runs only then.
    let mut previous_succeeded = true;
    while let Some(step) = steps.pop_front() {
        if let StepKind::Collect(_, ArtifactsWhen::Success, scope) = &step.kind {
            let went_well = match scope {
                CollectScope::Step => previous_succeeded,
                CollectScope::Build => ending.result.is_good(),
            };
            if !went_well {
                continue;
            }
        }
        step_number += 1;
        let (step_name, build_id) = (step.name.clone(), started.build_id);
        let step_id = match control
            .store
            .start_step(&control.owner, build_id, step_number, &step_name)
            .await
        {
            Ok(id) => id,
            Err(err) => {
                tracing::error!("cannot record a step: {err}");
                ending.result = ending.result.max(BuildResult::Exception);
                ending.reason = Some("cannot record the step".into());
                break;
            }
        };
        control
            .board
            .set_step(&builder.name, number, step_number, &step.name);
        control.events.publish(BuildEvent::StepStarted {
            job_name: request.job_name.clone(),
            builder: builder.name.clone(),
            number,
            step: step_number,
            name: step.name.clone(),
        });
        let mut logs = StepLogs::new(log_dir.clone(), step_number, &step.name);
        logs.redact_with(secrets.redactor.clone());
        if control.store.is_shared() {
            logs.ship_to(StoreShipper::new(
                Arc::clone(&control.store),
                control.owner.clone(),
                build_id,
                step_number,
            ));
        }
        let locked = step.locks.is_empty()
            || take_step_locks(control, request, started, &step, &link.name, shutdown).await;
        let outcome = if started.stop.token.is_cancelled() {
            let stop = started.stop.requested();
            StepOutcome::Interrupted {
                by: stop.by,
                reason: stop.reason,
            }
        } else if !locked {
            StepOutcome::MasterStopping
        } else if let StepKind::Fetch(dir, specs) = &step.kind {
            let fetch = Fetch {
                control,
                this: artifact_fetch::ThisBuild {
                    builder: &builder.name,
                    number,
                    build_id,
                    upstream_job: request
                        .properties
                        .get(crate::master::schedulers::engine::UPSTREAM_JOB)
                        .map(String::as_str),
                },
                dir,
                specs,
            };
            run_fetch(link, fetch, logs, shutdown, &started.stop).await
        } else {
            let reports = Reports {
                control,
                build_id,
                step: step_number,
                budget: &mut report_budget,
            };
            let sink = matches!(step.kind, StepKind::Collect(..)).then(|| {
                Sink::new(
                    artifacts::build_dir(&control.config().master_dir, &builder.name, number),
                    Arc::clone(&control.store),
                    control.owner.clone(),
                    build_id,
                    step_number,
                )
            });
            run_step(
                link,
                &step,
                logs,
                sink,
                shutdown,
                &started.stop,
                &control.metrics,
                reports,
            )
            .await
        };
        if !step.locks.is_empty() {
            if control.store.is_shared()
                && let Err(err) = control
                    .store
                    .release_master_locks(
                        &control.owner,
                        &step_lock_holder(control, request.id, &step.name),
                    )
                    .await
            {
                tracing::error!("cannot release a step's master locks: {err}");
            }
            control
                .scheduler_input(Input::ReleaseStepLocks {
                    request_id: request.id,
                    step: step.name.clone(),
                })
                .await;
        }
        let verdict = judge(&step.kind, &outcome);
        ending.result = ending.result.max(verdict.contribution);
        ending.slave_lost |= matches!(
            outcome,
            StepOutcome::SlaveLost | StepOutcome::SlaveShuttingDown
        );
        ending.slave_leaving |= matches!(outcome, StepOutcome::SlaveShuttingDown);
        let (summary, step_result) = (verdict.summary.clone(), verdict.step_result);
        if let Err(err) = control
            .store
            .finish_step(&control.owner, step_id, step_result, &summary)
            .await
        {
            tracing::error!("cannot record a step's end: {err}");
        }
        control.events.publish(BuildEvent::StepFinished {
            job_name: request.job_name.clone(),
            builder: builder.name.clone(),
            number,
            step: step_number,
            name: step.name.clone(),
            result: verdict.step_result,
            summary: verdict.summary.clone(),
        });
        let slave_fault = matches!(&outcome, StepOutcome::Exited(exit) if exit.is_slave_fault());
        if slave_fault || !matches!(outcome, StepOutcome::Exited(_)) {
            ending.reason = Some(verdict.summary);
        }
        previous_succeeded = verdict.step_result == BuildResult::Success;
        if verdict.halt {
            // Files to keep whatever happened are still asked for, if the slave is there:
            // this step's, and the builder's after the last step.
            let still_there = matches!(outcome, StepOutcome::Exited(_));
            let always = |step: &PlannedStep, wanted: CollectScope| matches!(step.kind, StepKind::Collect(_, ArtifactsWhen::Always, scope) if scope == wanted);
            let mut rest = VecDeque::new();
            if still_there {
                if let Some(next) = steps.pop_front()
                    && (always(&next, CollectScope::Step) || always(&next, CollectScope::Build))
                {
                    rest.push_back(next);
                }
                if let Some(last) = steps.pop_back()
                    && always(&last, CollectScope::Build)
                {
                    rest.push_back(last);
                }
            }
            if rest.is_empty() {
                break;
            }
            steps = rest;
            previous_succeeded = true;
            continue;
        }
        if let StepOutcome::Exited(ExitReport {
            checked_out: Some(revision),
            ..
        }) = &outcome
        {
            checkout.revision = Some(revision.clone());
            let (build_id, branch, revision) =
                (started.build_id, checkout.branch.clone(), revision.clone());
            if let Err(err) = control
                .store
                .record_build_source(&control.owner, build_id, &branch, &revision)
                .await
            {
                tracing::error!("cannot record what the build checked out: {err}");
            }
            // The later steps see the commit built, not the request's (often empty) revision.
            match plan_commands(builder, request, &checkout, number, &link.name, &secrets) {
                Ok(commands) => steps = in_dir(commands, &dir),
                Err(err) => {
                    ending.result = ending.result.max(BuildResult::Exception);
                    ending.reason = Some(format!("cannot plan the steps: {err}"));
                    break;
                }
            }
        }
    }
    // Held for a shell: recorded before the build's end, so the slave's next build of this
    // builder (which may start as soon as this one ends) already sees the directory taken.
    let master_stopping = shutdown.is_cancelled();
    if !ending.slave_lost
        && !master_stopping
        && crate::master::shell::wants_hold(&builder.hold, ending.result, asked_hold(request))
    {
        let facts = build_facts(builder, request, &checkout, number, &link.name);
        let hold = crate::master::store::ShellHold {
            build_id: started.build_id,
            builder: builder.name.clone(),
            number,
            slave: link.name.clone(),
            dir,
            env: facts.env,
            owner: request.who.clone(),
            held_until: crate::status::unix_now() + builder.hold.hold_for.as_secs_f64(),
        };
        if let Err(err) = control.store.hold_build(&control.owner, hold).await {
            tracing::error!("cannot hold the build for a shell: {err}");
        }
    }
    ending
}

/// Whether the requester asked for this build to be held (`try --hold`, `force --hold`: the
/// property `hold`).
fn asked_hold(request: &StoredRequest) -> bool {
    request
        .properties
        .get("hold")
        .is_some_and(|value| matches!(value.as_str(), "1" | "true" | "yes"))
}

/// The planned command steps, run in `dir` under the slave's work directory.
fn in_dir(mut steps: VecDeque<PlannedStep>, dir: &str) -> VecDeque<PlannedStep> {
    for step in &mut steps {
        match &mut step.kind {
            StepKind::Command(command, _) => command.builder = dir.to_string(),
            StepKind::Collect(collect, ..) => collect.builder = dir.to_string(),
            StepKind::Checkout(checkout) => checkout.builder = dir.to_string(),
            StepKind::Fetch(builder, _) => *builder = dir.to_string(),
        }
    }
    steps
}

/// How long a step may wait for its locks before the wait is announced.
const LOCK_WAIT_ANNOUNCE: Duration = Duration::from_millis(200);

/// Waits for a step's locks; false when the master stops first. A stop of the build ends the
/// wait too (true: the caller sees the stop). The wait is announced once if it is not short.
async fn take_step_locks(
    control: &Arc<BuildParts>,
    request: &StoredRequest,
    started: &Started,
    step: &PlannedStep,
    slave: &str,
    shutdown: &CancellationToken,
) -> bool {
    let wait = control.step_locks(request.id, &step.name, slave, step.locks.clone());
    tokio::pin!(wait);
    let mut announced = false;
    loop {
        tokio::select! {
            granted = &mut wait => {
                if granted.is_none() {
                    return false;
                }
                return take_cluster_step_locks(control, request, started, step, shutdown).await;
            }
            _ = started.stop.token.cancelled() => return true,
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(LOCK_WAIT_ANNOUNCE), if !announced => {
                announced = true;
                let lock = step.locks.iter().map(|lock_use| lock_use.lock.as_str()).collect::<Vec<_>>().join(", ");
                control.events.publish(BuildEvent::WaitingForLock {
                    job_name: request.job_name.clone(),
                    builder: request.builder.clone(),
                    number: Some(started.number),
                    step: Some(step.name.clone()),
                    lock,
                });
            }
        }
    }
}

/// In a cluster: takes the step's master locks in the store as well (this master's table
/// granted them here), waiting while another master holds one; false when the master stops
/// first (a stop of the build ends the wait too, true: the caller sees the stop).
async fn take_cluster_step_locks(
    control: &Arc<BuildParts>,
    request: &StoredRequest,
    started: &Started,
    step: &PlannedStep,
    shutdown: &CancellationToken,
) -> bool {
    let uses = cluster_lock_uses(control, &step.locks);
    if uses.is_empty() {
        return true;
    }
    let holder = step_lock_holder(control, request.id, &step.name);
    loop {
        match control
            .store
            .take_master_locks(&control.owner, &holder, uses.clone())
            .await
        {
            Ok(true) => return true,
            Ok(false) => {}
            Err(err) => tracing::warn!("cannot take a step's master locks: {err}"),
        }
        tokio::select! {
            _ = started.stop.token.cancelled() => return true,
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(CLUSTER_LOCK_RETRY) => {}
        }
    }
}

fn step_lock_holder(control: &BuildParts, request_id: i64, step: &str) -> String {
    format!(
        "{}#{}:step:{request_id}:{step}",
        control.owner.name, control.owner.epoch
    )
}

/// What a step's outcome means: its own result, what it adds to the build's result, the
/// summary shown beside it, and whether the build stops here.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Verdict {
    step_result: BuildResult,
    contribution: BuildResult,
    summary: String,
    halt: bool,
}

/// The result policy, in one place: anything but the commands' own exit (slave lost, a stop,
/// the master stopping, an unwritable log) halts the build; a step the slave reports as its own
/// fault (`proto::Failure::SlaveFault`: the patch process crashed or hung) makes it an exception; a
/// failed checkout fails it; a failed command counts as its flags say.
fn judge(kind: &StepKind, outcome: &StepOutcome) -> Verdict {
    let verdict = |step_result, contribution, summary: String, halt| Verdict {
        step_result,
        contribution,
        summary,
        halt,
    };
    match (kind, outcome) {
        // Cut short by the loss of the slave (CUT_SHORT, the rule the start-up recovery
        // applies to steps a master restart cut short): not the command's fault, and the build
        // may run again elsewhere. A slave that terminated the command on its own is stopping
        // (a restart, a reboot).
        (_, StepOutcome::SlaveLost) => verdict(CUT_SHORT, CUT_SHORT, "slave lost".into(), true),
        (_, StepOutcome::SlaveShuttingDown) => {
            verdict(CUT_SHORT, CUT_SHORT, "slave shutting down".into(), true)
        }
        (_, StepOutcome::Interrupted { by, reason }) => verdict(
            BuildResult::Interrupted,
            BuildResult::Interrupted,
            format!("stopped by {by}: {reason}"),
            true,
        ),
        (_, StepOutcome::MasterStopping) => {
            verdict(CUT_SHORT, CUT_SHORT, "master shutting down".into(), true)
        }
        (_, StepOutcome::LogError(message)) => verdict(
            BuildResult::Exception,
            BuildResult::Exception,
            message.clone(),
            true,
        ),
        (_, StepOutcome::Exited(exit)) if exit.succeeded() => verdict(
            BuildResult::Success,
            BuildResult::Success,
            describe_exit(exit),
            false,
        ),
        (_, StepOutcome::Exited(exit)) if exit.is_slave_fault() => verdict(
            BuildResult::Exception,
            BuildResult::Exception,
            describe_exit(exit),
            true,
        ),
        (StepKind::Collect(..), StepOutcome::Exited(exit)) => verdict(
            BuildResult::Failure,
            BuildResult::Failure,
            describe_exit(exit),
            false,
        ),
        // The step after it would run without its inputs.
        (StepKind::Checkout(_) | StepKind::Fetch(..), StepOutcome::Exited(exit)) => verdict(
            BuildResult::Failure,
            BuildResult::Failure,
            describe_exit(exit),
            true,
        ),
        (StepKind::Command(_, policy), StepOutcome::Exited(exit)) => {
            let contribution = policy.contribution();
            let own = if contribution == BuildResult::Warnings {
                BuildResult::Warnings
            } else {
                BuildResult::Failure
            };
            verdict(
                own,
                contribution,
                describe_exit(exit),
                policy.halt_on_failure,
            )
        }
    }
}

fn describe_exit(exit: &ExitReport) -> String {
    let seconds = exit.elapsed_ms as f64 / 1000.0;
    if let Some(failure) = &exit.failure {
        return failure.message().to_string();
    }
    if exit.timed_out {
        return format!("timed out after {seconds:.1}s");
    }
    if exit.interrupted {
        return format!("interrupted after {seconds:.1}s");
    }
    match (exit.exit_code, exit.signal) {
        (Some(code), _) => format!("exit {code} ({seconds:.1}s)"),
        (None, Some(signal)) => format!("killed by signal {signal} ({seconds:.1}s)"),
        (None, None) => format!("ended ({seconds:.1}s)"),
    }
}

enum StepOutcome {
    Exited(ExitReport),
    Interrupted {
        by: String,
        reason: String,
    },
    SlaveLost,
    /// The slave reported the command interrupted without the master asking: only a slave
    /// that is shutting down does that (it terminates everything before it disconnects).
    SlaveShuttingDown,
    MasterStopping,
    LogError(String),
}

/// After a stop, how long the slave gets to report the interrupted command before the master
/// finishes the build anyway (a dead or frozen slave never holds a stop up for longer).
const STOP_WAIT: Duration = Duration::from_secs(3);
/// ... and a slave that sends nothing at all for this long after a stop is not waited for.
const STOP_SILENCE: Duration = Duration::from_millis(750);

/// What collecting a step's test reports needs (issue 26).
struct Reports<'a> {
    control: &'a Arc<BuildParts>,
    build_id: i64,
    /// The step's number in its build.
    step: i64,
    /// What the build may still collect, across its steps.
    budget: &'a mut crate::master::test_results::collect::Budget,
}

/// Collects, parses and stores the test reports of a command step that ran to its end, with
/// a line in its log for each report and each thing left out. The build's result is not
/// touched: a report that cannot be read is said, not judged.
async fn collect_reports(
    link: &SlaveLink,
    step: &PlannedStep,
    reports: Reports<'_>,
    logs: &mut StepLogs,
    shutdown: &CancellationToken,
    stop: &StopHandle,
) {
    use crate::master::test_results::collect;
    let StepKind::Command(command, _) = &step.kind else {
        return;
    };
    let gathering = collect::gather(
        link,
        &command.builder,
        command.workdir.as_deref(),
        &step.test_results,
        reports.budget,
        &stop.token,
    );
    let mut gathered = tokio::select! {
        gathered = gathering => gathered,
        _ = shutdown.cancelled() => collect::Gathered {
            cases: Vec::new(),
            lines: vec!["test results: master shutting down; none kept".into()],
        },
    };
    for case in &mut gathered.cases {
        case.step = reports.step;
    }
    if !gathered.cases.is_empty() {
        let mut counts = crate::master::store::TestCounts::default();
        for case in &gathered.cases {
            counts.add(case.result, 1);
        }
        let control = reports.control;
        match control
            .store
            .record_test_results(&control.owner, reports.build_id, gathered.cases)
            .await
        {
            Ok(()) => {
                control.metrics.test_cases(&counts);
                gathered.lines.push(format!(
                    "test results: {}",
                    crate::master::test_results::summary_line(&counts, 0, None)
                ));
            }
            Err(err) => {
                tracing::error!("cannot store test results: {err}");
                gathered
                    .lines
                    .push(format!("test results: not stored: {err}"));
            }
        }
    }
    for line in gathered.lines {
        let _ = logs
            .append(StreamKind::Info, format!("{line}\n").as_bytes())
            .await;
    }
}

/// What a `fetch_artifacts` step needs.
struct Fetch<'a> {
    control: &'a Arc<BuildParts>,
    this: artifact_fetch::ThisBuild<'a>,
    /// The builder's directory on the slave.
    dir: &'a str,
    specs: &'a [crate::master::config::FetchArtifacts],
}

/// Puts the artifacts a step names into its work tree on the slave (`master::artifact_fetch`),
/// a line in the log for each file and one for whatever stopped it.
async fn run_fetch(
    link: &SlaveLink,
    fetch: Fetch<'_>,
    mut logs: StepLogs,
    shutdown: &CancellationToken,
    stop: &StopHandle,
) -> StepOutcome {
    let control = fetch.control;
    let master_dir = control.config().master_dir.clone();
    let resolved =
        artifact_fetch::resolve(&control.store, &master_dir, fetch.specs, &fetch.this).await;
    let sources = match resolved {
        Ok(sources) => sources,
        Err(line) => {
            let _ = logs
                .append(StreamKind::Info, format!("{line}\n").as_bytes())
                .await;
            let _ = logs.finish().await;
            return StepOutcome::Exited(ExitReport {
                exit_code: Some(1),
                signal: None,
                elapsed_ms: 0,
                timed_out: false,
                interrupted: false,
                failure: Some(Failure::Failed(line)),
                checked_out: None,
            });
        }
    };
    for source in &sources {
        let line = format!(
            "fetching {} of {} #{} ({} bytes, sha256 {})\n",
            source.row.path, source.builder, source.number, source.row.size, source.row.sha256
        );
        let _ = logs.append(StreamKind::Info, line.as_bytes()).await;
    }
    let receive = crate::proto::ReceiveRequest {
        builder: fetch.dir.to_string(),
        files: sources
            .iter()
            .map(artifact_fetch::Source::incoming)
            .collect(),
        max_total_bytes: artifacts::MAX_TOTAL_BYTES,
    };
    let Ok((id, mut events)) = link.start(|id| Message::ReceiveFiles { id, receive }) else {
        let _ = logs.append(StreamKind::Info, b"slave lost\n").await;
        let _ = logs.finish().await;
        return StepOutcome::SlaveLost;
    };
    let began = Instant::now();
    let streaming = artifact_fetch::stream(link, id, &mut events, &control.store, &sources);
    let ended = tokio::select! {
        ended = streaming => Some(ended),
        _ = shutdown.cancelled() => None,
        _ = stop.token.cancelled() => None,
    };
    let outcome = match ended {
        Some(artifact_fetch::Ended::Exited(mut exit)) => {
            exit.elapsed_ms = u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX);
            let line = match &exit.failure {
                Some(failure) => failure.message().to_string(),
                None => format!(
                    "fetched {} file(s), {} bytes, each checked by its sha256 on the slave",
                    sources.len(),
                    sources.iter().map(|source| source.row.size).sum::<u64>()
                ),
            };
            let _ = logs
                .append(StreamKind::Info, format!("{line}\n").as_bytes())
                .await;
            StepOutcome::Exited(exit)
        }
        Some(artifact_fetch::Ended::Lost) => {
            let _ = logs.append(StreamKind::Info, b"slave lost\n").await;
            StepOutcome::SlaveLost
        }
        None if shutdown.is_cancelled() => {
            link.interrupt(id, "master shutting down");
            StepOutcome::MasterStopping
        }
        None => {
            let StopRequest { by, reason } = stop.requested();
            link.interrupt(id, &format!("stopped by {by}: {reason}"));
            let line = format!("interrupted by {by}: {reason}\n");
            let _ = logs.append(StreamKind::Info, line.as_bytes()).await;
            StepOutcome::Interrupted { by, reason }
        }
    };
    let _ = logs.finish().await;
    outcome
}

#[allow(clippy::too_many_arguments)]
async fn run_step(
    link: &SlaveLink,
    step: &PlannedStep,
    mut logs: StepLogs,
    mut sink: Option<Sink>,
    shutdown: &CancellationToken,
    stop: &StopHandle,
    metrics: &crate::master::metrics::Metrics,
    reports: Reports<'_>,
) -> StepOutcome {
    let mut reports = Some(reports);
    let started = link.start(|id| match &step.kind {
        StepKind::Checkout(checkout) => Message::Checkout {
            id,
            checkout: checkout.clone(),
        },
        StepKind::Command(command, _) => Message::StartCommand {
            id,
            command: command.clone(),
        },
        StepKind::Collect(collect, ..) => Message::CollectFiles {
            id,
            collect: collect.clone(),
        },
        // Run by `run_fetch`; nothing to start here.
        StepKind::Fetch(..) => Message::Interrupt {
            id,
            reason: "not a command".into(),
        },
    });
    let Ok((id, mut events)) = started else {
        let _ = logs.append(StreamKind::Info, b"slave lost\n").await;
        let _ = logs.finish().await;
        return StepOutcome::SlaveLost;
    };
    let began = Instant::now();
    loop {
        let wake_at = logs.wake_at();
        let event = tokio::select! {
            event = events.recv() => event,
            () = tokio::time::sleep_until(wake_at.unwrap_or_else(tokio::time::Instant::now)), if wake_at.is_some() => {
                if let Err(err) = logs.tick().await {
                    link.interrupt(id, "the master cannot write the log");
                    return StepOutcome::LogError(format!("cannot write the log: {err}"));
                }
                continue;
            }
            _ = shutdown.cancelled() => {
                link.interrupt(id, "master shutting down");
                let _ = logs.finish().await;
                return StepOutcome::MasterStopping;
            }
            _ = stop.token.cancelled() => {
                let StopRequest { by, reason } = stop.requested();
                link.interrupt(id, &format!("stopped by {by}: {reason}"));
                // Keep the output that arrives while the slave terminates the command.
                let deadline = tokio::time::sleep(STOP_WAIT);
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        event = tokio::time::timeout(STOP_SILENCE, events.recv()) => match event {
                            Ok(Some(SlaveEvent::Output { stream, data })) => {
                                metrics.log_bytes(data.len());
                                let _ = logs.append(stream, &data).await;
                            }
                            // Report pieces are not asked for yet: not ours.
                            Ok(Some(SlaveEvent::ReportChunk { .. } | SlaveEvent::ReportsDone { .. })) => {}
                            // Exit, lost, or a slave that says nothing: done waiting.
                            Ok(Some(SlaveEvent::FileStart { .. } | SlaveEvent::FileData(_) | SlaveEvent::FileEnd { .. } | SlaveEvent::FileAck(_))) => {}
                            Ok(Some(SlaveEvent::Exit(_)) | None) | Err(_) => break,
                        },
                        _ = &mut deadline => break,
                    }
                }
                let line = format!("interrupted by {by}: {reason}\n");
                let _ = logs.append(StreamKind::Info, line.as_bytes()).await;
                let _ = logs.finish().await;
                return StepOutcome::Interrupted { by, reason };
            }
        };
        match event {
            Some(SlaveEvent::Output { stream, data }) => {
                metrics.log_bytes(data.len());
                if let Err(err) = logs.append(stream, &data).await {
                    link.interrupt(id, "the master cannot write the log");
                    return StepOutcome::LogError(format!("cannot write the log: {err}"));
                }
            }
            // A stop or the master's own shutdown returned above, so nobody here asked for
            // this interrupt.
            Some(SlaveEvent::Exit(exit)) if exit.interrupted => {
                let line = format!(
                    "slave shutting down; command terminated after {:.1}s\n",
                    began.elapsed().as_secs_f64()
                );
                let _ = logs.append(StreamKind::Info, line.as_bytes()).await;
                let _ = logs.finish().await;
                return StepOutcome::SlaveShuttingDown;
            }
            Some(SlaveEvent::FileStart { path, size }) => {
                if let Some(sink) = sink.as_mut()
                    && let Err(err) = sink.start(path, size).await
                {
                    sink.errors.push(err.to_string());
                    let _ = logs
                        .append(StreamKind::Info, format!("{err}\n").as_bytes())
                        .await;
                }
            }
            Some(SlaveEvent::FileData(data)) => {
                if let Some(sink) = sink.as_mut()
                    && let Err(err) = sink.data(data).await
                {
                    sink.errors.push(err.to_string());
                    let _ = logs
                        .append(StreamKind::Info, format!("{err}\n").as_bytes())
                        .await;
                }
            }
            Some(SlaveEvent::FileEnd { sha256 }) => {
                if let Some(sink) = sink.as_mut() {
                    let line = match sink.end(sha256).await {
                        Ok(Some(kept)) => format!(
                            "kept {} ({} bytes, sha256 {})\n",
                            kept.path, kept.size, kept.sha256
                        ),
                        Ok(None) => String::new(),
                        Err(err) => {
                            sink.errors.push(err.to_string());
                            format!("{err}\n")
                        }
                    };
                    let _ = logs.append(StreamKind::Info, line.as_bytes()).await;
                }
            }
            Some(SlaveEvent::Exit(mut exit)) => {
                if let Some(sink) = sink.as_mut() {
                    sink.close().await;
                    if !sink.errors.is_empty() && exit.failure.is_none() {
                        let count = sink.errors.len();
                        exit.exit_code = Some(1);
                        exit.failure = Some(Failure::Failed(format!(
                            "{count} artifact(s) not kept: {}",
                            sink.errors.join("; ")
                        )));
                    }
                }
                if let Some(failure) = &exit.failure {
                    let line = format!("{}\n", failure.message());
                    let _ = logs.append(StreamKind::Info, line.as_bytes()).await;
                }
                if exit.failure.is_none()
                    && !step.test_results.is_empty()
                    && let Some(reports) = reports.take()
                {
                    collect_reports(link, step, reports, &mut logs, shutdown, stop).await;
                }
                let _ = logs.finish().await;
                return StepOutcome::Exited(exit);
            }
            Some(
                SlaveEvent::ReportChunk { .. }
                | SlaveEvent::ReportsDone { .. }
                | SlaveEvent::FileAck(_),
            ) => {}
            None => {
                let line = format!("slave lost after {:.1}s\n", began.elapsed().as_secs_f64());
                let _ = logs.append(StreamKind::Info, line.as_bytes()).await;
                let _ = logs.finish().await;
                return StepOutcome::SlaveLost;
            }
        }
    }
}

/// How much of a log is gathered before it is written: output frames are up to 64 KiB, and a
/// write per frame costs a trip to a blocking thread.
const LOG_BUFFER: usize = 256 * 1024;
/// How long output may stay in the buffer before it is written, so `?follow=1` readers and the
/// log pages see a live step's output promptly.
const LOG_FLUSH: Duration = Duration::from_millis(10);

/// The log files of one step, one per stream, created when the stream first has output and
/// appended as it arrives through a buffer of [`LOG_BUFFER`] that is written out at most
/// [`LOG_FLUSH`] after its first byte (the owner calls [`StepLogs::tick`] when `wake_at`
/// passes) and at the end of the step: `logs/BUILDER/NUMBER/STEP-NAME.STREAM`. With a shared
/// store the files are also shipped into it (`master::logs::StoreShipper`), so every master
/// can serve the log.
struct StepLogs {
    dir: PathBuf,
    step: i64,
    name: String,
    /// Each stream's file and how many bytes were written to it (buffered ones included).
    files: Vec<(StreamKind, tokio::io::BufWriter<tokio::fs::File>, u64)>,
    /// Replaces the build's secrets before anything is written; each stream holds back what
    /// may be the start of one until more arrives or the step ends.
    redactor: Option<Arc<Redactor>>,
    redacting: Vec<(StreamKind, RedactState)>,
    /// When buffered output must be written; none when nothing is buffered.
    flush_at: Option<tokio::time::Instant>,
    shipper: Option<StoreShipper>,
}

impl StepLogs {
    fn new(dir: PathBuf, step: i64, name: &str) -> StepLogs {
        StepLogs {
            dir,
            step,
            name: name.to_string(),
            files: Vec::new(),
            redactor: None,
            redacting: Vec::new(),
            flush_at: None,
            shipper: None,
        }
    }

    fn redact_with(&mut self, redactor: Option<Arc<Redactor>>) {
        self.redactor = redactor;
    }

    /// Appends a stream's output, its secrets replaced.
    async fn append(&mut self, stream: StreamKind, data: &[u8]) -> std::io::Result<()> {
        let Some(redactor) = &self.redactor else {
            return self.write(stream, data).await;
        };
        let position = match self.redacting.iter().position(|(kind, _)| *kind == stream) {
            Some(position) => position,
            None => {
                self.redacting.push((stream, redactor.stream()));
                self.redacting.len() - 1
            }
        };
        let clean = redactor.push(&mut self.redacting[position].1, data);
        if clean.is_empty() {
            return Ok(());
        }
        self.write(stream, &clean).await
    }

    /// What the redactor still holds at the step's end, written out.
    async fn end_redaction(&mut self) -> std::io::Result<()> {
        let Some(redactor) = self.redactor.clone() else {
            return Ok(());
        };
        let mut rest = Vec::new();
        for (stream, state) in &mut self.redacting {
            if state.holds_anything() {
                rest.push((*stream, redactor.finish(state)));
            }
        }
        for (stream, data) in rest {
            self.write(stream, &data).await?;
        }
        Ok(())
    }

    /// Ships the files into a shared store as they grow.
    fn ship_to(&mut self, shipper: StoreShipper) {
        self.shipper = Some(shipper);
    }

    async fn write(&mut self, stream: StreamKind, data: &[u8]) -> std::io::Result<()> {
        let position = match self.files.iter().position(|(kind, _, _)| *kind == stream) {
            Some(position) => position,
            None => {
                tokio::fs::create_dir_all(&self.dir).await?;
                // Truncate, not append: one writer owns a step's log for the step's whole
                // life, and a file already there can only be left by a build whose record a
                // power loss rolled back (its progress marks are not fsynced), whose number
                // this build now has.
                let file = tokio::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(true)
                    .open(self.dir.join(log_file_name(self.step, &self.name, stream)))
                    .await?;
                self.files.push((
                    stream,
                    tokio::io::BufWriter::with_capacity(LOG_BUFFER, file),
                    0,
                ));
                self.files.len() - 1
            }
        };
        let (_, file, written) = &mut self.files[position];
        file.write_all(data).await?;
        *written += data.len() as u64;
        let written = *written;
        if self.flush_at.is_none() {
            self.flush_at = Some(tokio::time::Instant::now() + LOG_FLUSH);
        }
        if let Some(shipper) = &mut self.shipper {
            let path = self.dir.join(log_file_name(self.step, &self.name, stream));
            shipper.grew(stream, &path);
            // A full chunk goes now rather than waiting for the timer.
            if shipper.unshipped(stream, written) >= LOG_CHUNK as u64 {
                self.flush().await?;
                self.ship(true).await;
            }
        }
        Ok(())
    }

    /// When [`StepLogs::tick`] has work: buffered output to write or to ship.
    fn wake_at(&self) -> Option<tokio::time::Instant> {
        let ship_at = self.shipper.as_ref().and_then(|shipper| shipper.ship_at);
        match (self.flush_at, ship_at) {
            (Some(flush), Some(ship)) => Some(flush.min(ship)),
            (flush, ship) => flush.or(ship),
        }
    }

    /// Writes out what is due, and ships to the store what is due there.
    async fn tick(&mut self) -> std::io::Result<()> {
        let now = tokio::time::Instant::now();
        if self.flush_at.is_some_and(|at| at <= now) {
            self.flush().await?;
        }
        let ship_due = self
            .shipper
            .as_ref()
            .and_then(|shipper| shipper.ship_at)
            .is_some_and(|at| at <= now);
        if ship_due {
            self.flush().await?;
            self.ship(false).await;
        }
        Ok(())
    }

    /// Writes out everything buffered, and waits until the files have it (tokio's `File`
    /// finishes its blocking write on flush), so readers of the files see it.
    async fn flush(&mut self) -> std::io::Result<()> {
        self.flush_at = None;
        for (_, file, _) in &mut self.files {
            file.flush().await?;
        }
        Ok(())
    }

    /// Ships what the (flushed) files have beyond the store's copy (with `whole_chunks`, full
    /// chunks only).
    async fn ship(&mut self, whole_chunks: bool) {
        let written: Vec<(StreamKind, u64)> = self
            .files
            .iter()
            .map(|(stream, _, written)| (*stream, *written))
            .collect();
        if let Some(shipper) = &mut self.shipper {
            shipper.ship(&written, whole_chunks).await;
        }
    }

    /// Writes out and ships everything: the step's record may end once this returns.
    async fn finish(&mut self) -> std::io::Result<()> {
        self.end_redaction().await?;
        self.flush().await?;
        self.ship(false).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(code: i32) -> StepOutcome {
        StepOutcome::Exited(ExitReport {
            exit_code: Some(code),
            signal: None,
            elapsed_ms: 1500,
            timed_out: false,
            interrupted: false,
            failure: None,
            checked_out: None,
        })
    }

    fn command(halt: bool, flunk: bool, warn: bool) -> StepKind {
        StepKind::Command(
            CommandRequest {
                builder: "linux".into(),
                shell: "make".into(),
                workdir: None,
                env: Vec::new(),
                timeout_secs: None,
            },
            FailurePolicy {
                halt_on_failure: halt,
                flunk_on_failure: flunk,
                warn_on_failure: warn,
            },
        )
    }

    fn checkout() -> StepKind {
        StepKind::Checkout(CheckoutRequest {
            builder: "linux".into(),
            repo: "/repo".into(),
            branch: "main".into(),
            revision: None,
            patch: None,
            patch_level: 1,
            submodules: false,
            keep_siblings: None,
        })
    }

    #[test]
    fn a_failed_command_counts_as_its_flags_say() {
        let flunk = judge(&command(true, true, false), &exit(2));
        assert_eq!(
            (flunk.step_result, flunk.contribution, flunk.halt),
            (BuildResult::Failure, BuildResult::Failure, true)
        );
        assert_eq!(flunk.summary, "exit 2 (1.5s)");
        let warn = judge(&command(false, false, true), &exit(1));
        assert_eq!(
            (warn.step_result, warn.contribution, warn.halt),
            (BuildResult::Warnings, BuildResult::Warnings, false)
        );
        let ignored = judge(&command(false, false, false), &exit(1));
        assert_eq!(
            (ignored.step_result, ignored.contribution),
            (BuildResult::Failure, BuildResult::Success)
        );
        let passed = judge(&command(true, true, false), &exit(0));
        assert_eq!(
            (passed.contribution, passed.halt),
            (BuildResult::Success, false)
        );
    }

    #[test]
    fn a_failed_checkout_fails_and_halts_the_build() {
        let verdict = judge(&checkout(), &exit(1));
        assert_eq!(
            (verdict.contribution, verdict.halt),
            (BuildResult::Failure, true)
        );
    }

    #[test]
    fn a_checkout_the_slave_reports_as_its_own_fault_is_an_exception() {
        let crashed = StepOutcome::Exited(ExitReport {
            exit_code: Some(1),
            signal: None,
            elapsed_ms: 10,
            timed_out: false,
            interrupted: false,
            failure: Some(crate::proto::Failure::SlaveFault(
                "the patch step failed: the patch process crashed (SIGSEGV)".into(),
            )),
            checked_out: None,
        });
        let verdict = judge(&checkout(), &crashed);
        assert_eq!(
            (verdict.step_result, verdict.contribution, verdict.halt),
            (BuildResult::Exception, BuildResult::Exception, true)
        );
        assert!(verdict.summary.contains("SIGSEGV"), "{}", verdict.summary);
    }

    #[test]
    fn what_is_not_the_commands_fault_halts_with_its_own_result() {
        let lost = judge(&command(false, false, false), &StepOutcome::SlaveLost);
        assert_eq!(
            (
                lost.step_result,
                lost.contribution,
                lost.halt,
                lost.summary.as_str()
            ),
            (
                BuildResult::Exception,
                BuildResult::Exception,
                true,
                "slave lost"
            )
        );
        let stopped = judge(
            &checkout(),
            &StepOutcome::Interrupted {
                by: "alice".into(),
                reason: "wrong branch".into(),
            },
        );
        assert_eq!(stopped.contribution, BuildResult::Interrupted);
        assert_eq!(stopped.summary, "stopped by alice: wrong branch");
        let stopping = judge(&checkout(), &StepOutcome::MasterStopping);
        assert_eq!(
            (stopping.contribution, stopping.halt),
            (BuildResult::Exception, true)
        );
        let log = judge(&checkout(), &StepOutcome::LogError("disk full".into()));
        assert_eq!(log.summary, "disk full");
    }

    #[test]
    fn a_slave_shutting_down_is_an_exception_not_the_commands_failure() {
        for kind in [command(true, true, false), checkout()] {
            let verdict = judge(&kind, &StepOutcome::SlaveShuttingDown);
            assert_eq!(
                (
                    verdict.step_result,
                    verdict.contribution,
                    verdict.halt,
                    verdict.summary.as_str()
                ),
                (
                    BuildResult::Exception,
                    BuildResult::Exception,
                    true,
                    "slave shutting down"
                )
            );
        }
    }

    /// With a shared store a step's output reaches it while the step runs, in a few big
    /// chunks however small the pieces it arrives in, and the store ends up with the file.
    #[tokio::test]
    async fn a_shared_stores_copy_of_a_log_is_live_batched_and_whole() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, sqlite, owner, build_id, _) =
            crate::master::logs::testing::running_build(dir.path()).await;
        let logs_dir = dir.path().join("logs");
        let mut logs = StepLogs::new(logs_dir.clone(), 1, "make test");
        logs.ship_to(StoreShipper::new(Arc::clone(&store), owner, build_id, 1));
        logs.append(StreamKind::Stdout, b"first line\n")
            .await
            .expect("written");
        // Live: the timers put the line in the store before the step ends.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while store
            .log_size(build_id, 1, StreamKind::Stdout)
            .await
            .expect("size")
            == 0
        {
            assert!(tokio::time::Instant::now() < deadline, "never shipped");
            let wake_at = logs.wake_at().expect("something is due");
            tokio::time::sleep_until(wake_at).await;
            logs.tick().await.expect("ticked");
        }
        // 2000 lines one by one: a few chunks, not a row per line.
        let line = [b'x'; 99];
        for _ in 0..2000 {
            logs.append(StreamKind::Stdout, &line)
                .await
                .expect("written");
            logs.append(StreamKind::Stdout, b"\n")
                .await
                .expect("written");
        }
        logs.append(StreamKind::Stderr, b"warning\n")
            .await
            .expect("written");
        logs.finish().await.expect("finished");
        let chunks: i64 = sqlite
            .with(|c| {
                Ok(c.query_row(
                    "SELECT COUNT(*) FROM log_chunks WHERE build_id = ?1",
                    [build_id],
                    |row| row.get(0),
                )?)
            })
            .expect("counted");
        // 200 KB: three full chunks and the rest, one for stderr, one for the first line.
        assert!(chunks <= 6, "{chunks} chunks");
        let file = std::fs::read(logs_dir.join(log_file_name(1, "make test", StreamKind::Stdout)))
            .expect("the file");
        assert_eq!(file.len(), 11 + 2000 * 100);
        let (stored, size) = store
            .read_log(build_id, 1, StreamKind::Stdout, 0, 1 << 20)
            .await
            .expect("read");
        assert_eq!(size, file.len() as u64);
        assert!(stored == file, "the store's copy differs from the file");
        assert_eq!(
            store
                .read_log(build_id, 1, StreamKind::Stderr, 0, 100)
                .await
                .expect("read"),
            (b"warning\n".to_vec(), 8)
        );
    }
}
