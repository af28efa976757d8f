//! One build from start to result: ping the slave, record the build, run the checkout step
//! (with the try patch) and the builder's steps one after the other on the slave, append their
//! output to log files as it streams in, and record every result.
//!
//! A build never hangs on a dead slave: when the slave's connection ends, the step's event
//! channel closes, the step fails with "slave lost", and the build ends as exception (and its
//! request is queued again).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::master::config::{BuilderConfig, StepConfig};
use crate::master::history::{self, StoredRequest};
use crate::master::results::{BuildResult, FailurePolicy};
use crate::master::slaves::{SlaveEvent, SlaveLink};
use crate::master::state::{BuildControl, BuildEvent, MasterState};
use crate::proto::{CheckoutRequest, CommandRequest, ExitReport, Message, StreamKind};

/// What the scheduler needs to know when a build ends.
pub struct BuildOutcome {
    /// Run this request again (slave lost before or during the build).
    pub requeue: Option<StoredRequest>,
    /// The slave did not answer the ping: drop its connection.
    pub unresponsive_slave: Option<Arc<SlaveLink>>,
}

/// One step as the slave will run it.
enum StepKind {
    Checkout(CheckoutRequest),
    Command(CommandRequest, FailurePolicy),
}

struct PlannedStep {
    name: String,
    kind: StepKind,
}

fn plan(builder: &BuilderConfig, request: &StoredRequest) -> Vec<PlannedStep> {
    let mut steps = vec![PlannedStep {
        name: "checkout".into(),
        kind: StepKind::Checkout(CheckoutRequest {
            builder: builder.name.clone(),
            repo: builder.repo.clone(),
            branch: request
                .branch
                .clone()
                .unwrap_or_else(|| builder.branch.clone()),
            revision: request.baserev.clone(),
            patch: request.patch.clone(),
            patch_level: request.patch_level,
        }),
    }];
    // A try job's branch names the developer's branch, which the builder's repository may not
    // have; the base revision is what matters, the builder's branch is the fallback.
    if let StepKind::Checkout(checkout) = &mut steps[0].kind
        && request.baserev.is_some()
    {
        checkout.branch = builder.branch.clone();
    }
    for step in &builder.steps {
        steps.push(command_step(builder, step));
    }
    steps
}

fn command_step(builder: &BuilderConfig, step: &StepConfig) -> PlannedStep {
    PlannedStep {
        name: step.name.clone(),
        kind: StepKind::Command(
            CommandRequest {
                builder: builder.name.clone(),
                shell: step.command.clone(),
                workdir: step.workdir.clone(),
                env: step
                    .env
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                timeout_secs: step.timeout.map(|timeout| timeout.as_secs().max(1)),
            },
            FailurePolicy {
                halt_on_failure: step.halt_on_failure,
                flunk_on_failure: step.flunk_on_failure,
                warn_on_failure: step.warn_on_failure,
            },
        ),
    }
}

/// Runs the build of `request` on `link`'s slave.
pub async fn run(
    state: &Arc<MasterState>,
    request: StoredRequest,
    link: Arc<SlaveLink>,
    ping_timeout: Duration,
    shutdown: CancellationToken,
) -> BuildOutcome {
    let Some(builder) = state
        .config
        .builders
        .iter()
        .find(|b| b.name == request.builder)
        .cloned()
    else {
        tracing::error!(builder = %request.builder, "request for a builder no longer configured; dropped");
        return BuildOutcome {
            requeue: None,
            unresponsive_slave: None,
        };
    };
    if !link.ping(ping_timeout).await {
        tracing::warn!(slave = %link.name, "no pong within {ping_timeout:?}; treating the slave as lost");
        return BuildOutcome {
            requeue: Some(request),
            unresponsive_slave: Some(link),
        };
    }
    let request_id = request.id;
    let builder_name = builder.name.clone();
    let slave_name = link.name.clone();
    let started = state
        .history
        .run(move |connection| {
            history::start_build(connection, request_id, &builder_name, &slave_name)
        })
        .await;
    let (build_id, number) = match started {
        Ok(started) => started,
        Err(err) => {
            tracing::error!("cannot record the build: {err}");
            return BuildOutcome {
                requeue: Some(request),
                unresponsive_slave: None,
            };
        }
    };
    let span = tracing::info_span!("build", builder = %builder.name, number, slave = %link.name);
    let control = state.register_build(&builder.name, number, &request.job_name);
    let eta_builder = builder.name.clone();
    let expected = state
        .history
        .run(move |connection| history::recent_success_durations(connection, &eta_builder, 10))
        .await
        .ok()
        .and_then(|durations| crate::master::results::expected_duration(&durations));
    state.publish(BuildEvent::BuildStarted {
        job_name: request.job_name.clone(),
        builder: builder.name.clone(),
        number,
        slave: link.name.clone(),
        expected,
    });
    let log_dir = state.logs_dir.join(&builder.name).join(number.to_string());
    let mut result = BuildResult::Success;
    let mut reason: Option<String> = None;
    let mut slave_lost = false;
    for (index, step) in plan(&builder, &request).into_iter().enumerate() {
        let step_number = index as i64 + 1;
        let step_name = step.name.clone();
        let step_id = match state
            .history
            .run(move |connection| {
                history::start_step(connection, build_id, step_number, &step_name)
            })
            .await
        {
            Ok(id) => id,
            Err(err) => {
                tracing::error!("cannot record a step: {err}");
                result = BuildResult::Exception;
                reason = Some("cannot record the step".into());
                break;
            }
        };
        state.publish(BuildEvent::StepStarted {
            job_name: request.job_name.clone(),
            builder: builder.name.clone(),
            number,
            step: step_number,
            name: step.name.clone(),
        });
        let logs = StepLogs::new(log_dir.clone(), step_number, &step.name);
        let outcome = if control.stop.is_cancelled() {
            let (by, reason) = control.stopped_by();
            StepOutcome::Interrupted { by, reason }
        } else {
            run_step(&link, &step, logs, &shutdown, &control).await
        };
        // (the step's own result, what it adds to the build's result, its summary, halt?)
        let (step_result, contribution, summary, halt) = match (&step.kind, &outcome) {
            (_, StepOutcome::SlaveLost) => {
                slave_lost = true;
                (
                    BuildResult::Failure,
                    BuildResult::Exception,
                    "slave lost".to_string(),
                    true,
                )
            }
            (_, StepOutcome::Interrupted { by, reason }) => {
                let summary = format!("stopped by {by}: {reason}");
                (
                    BuildResult::Interrupted,
                    BuildResult::Interrupted,
                    summary,
                    true,
                )
            }
            (_, StepOutcome::MasterStopping) => {
                let summary = "master shutting down".to_string();
                (
                    BuildResult::Exception,
                    BuildResult::Exception,
                    summary,
                    true,
                )
            }
            (_, StepOutcome::LogError(message)) => (
                BuildResult::Exception,
                BuildResult::Exception,
                message.clone(),
                true,
            ),
            (_, StepOutcome::Exited(exit)) if exit.succeeded() => (
                BuildResult::Success,
                BuildResult::Success,
                describe_exit(exit),
                false,
            ),
            (StepKind::Checkout(_), StepOutcome::Exited(exit)) => (
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
                (
                    own,
                    contribution,
                    describe_exit(exit),
                    policy.halt_on_failure,
                )
            }
        };
        result = result.max(contribution);
        let recorded_summary = summary.clone();
        let _ = state
            .history
            .run(move |connection| {
                history::finish_step(connection, step_id, step_result, &recorded_summary)
            })
            .await;
        state.publish(BuildEvent::StepFinished {
            job_name: request.job_name.clone(),
            builder: builder.name.clone(),
            number,
            step: step_number,
            name: step.name.clone(),
            result: step_result,
            summary: summary.clone(),
        });
        if !matches!(outcome, StepOutcome::Exited(_)) {
            reason = Some(summary);
        }
        if halt {
            break;
        }
    }
    let recorded_reason = reason.clone();
    let _ = state
        .history
        .run(move |connection| {
            history::finish_build(connection, build_id, result, recorded_reason.as_deref())
        })
        .await;
    state.unregister_build(&builder.name, number);
    tracing::info!(parent: &span, %result, "build finished");
    state.publish(BuildEvent::BuildFinished {
        job_name: request.job_name.clone(),
        builder: builder.name.clone(),
        number,
        result,
        reason,
        will_retry: slave_lost && builder.retry_on_slave_lost,
    });
    BuildOutcome {
        requeue: (slave_lost && builder.retry_on_slave_lost).then_some(request),
        unresponsive_slave: None,
    }
}

fn describe_exit(exit: &ExitReport) -> String {
    let seconds = exit.elapsed_ms as f64 / 1000.0;
    if let Some(error) = &exit.error {
        return error.clone();
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
    Interrupted { by: String, reason: String },
    SlaveLost,
    MasterStopping,
    LogError(String),
}

/// After a stop, how long the slave gets to report the interrupted command before the master
/// finishes the build anyway (a dead or frozen slave never holds a stop up for longer).
const STOP_WAIT: Duration = Duration::from_secs(3);
/// ... and a slave that sends nothing at all for this long after a stop is not waited for.
const STOP_SILENCE: Duration = Duration::from_millis(750);

async fn run_step(
    link: &SlaveLink,
    step: &PlannedStep,
    mut logs: StepLogs,
    shutdown: &CancellationToken,
    control: &BuildControl,
) -> StepOutcome {
    let started = link.start(|id| match &step.kind {
        StepKind::Checkout(checkout) => Message::Checkout {
            id,
            checkout: checkout.clone(),
        },
        StepKind::Command(command, _) => Message::StartCommand {
            id,
            command: command.clone(),
        },
    });
    let Ok((id, mut events)) = started else {
        let _ = logs.append(StreamKind::Info, b"slave lost\n").await;
        return StepOutcome::SlaveLost;
    };
    let began = Instant::now();
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = shutdown.cancelled() => {
                link.interrupt(id, "master shutting down");
                return StepOutcome::MasterStopping;
            }
            _ = control.stop.cancelled() => {
                let (by, reason) = control.stopped_by();
                link.interrupt(id, &format!("stopped by {by}: {reason}"));
                // Keep the output that arrives while the slave terminates the command.
                let deadline = tokio::time::sleep(STOP_WAIT);
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        event = tokio::time::timeout(STOP_SILENCE, events.recv()) => match event {
                            Ok(Some(SlaveEvent::Output { stream, data })) => {
                                let _ = logs.append(stream, &data).await;
                            }
                            // Exit, lost, or a slave that says nothing: done waiting.
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
                if let Err(err) = logs.append(stream, &data).await {
                    link.interrupt(id, "the master cannot write the log");
                    return StepOutcome::LogError(format!("cannot write the log: {err}"));
                }
            }
            Some(SlaveEvent::Exit(exit)) => {
                if let Some(error) = &exit.error {
                    let _ = logs
                        .append(StreamKind::Info, format!("{error}\n").as_bytes())
                        .await;
                }
                let _ = logs.finish().await;
                return StepOutcome::Exited(exit);
            }
            None => {
                let line = format!("slave lost after {:.1}s\n", began.elapsed().as_secs_f64());
                let _ = logs.append(StreamKind::Info, line.as_bytes()).await;
                let _ = logs.finish().await;
                return StepOutcome::SlaveLost;
            }
        }
    }
}

/// The file name of a step's log: `STEP-NAME.STREAM`, the name reduced to characters that are
/// safe in a path (the web server finds logs by this same function).
pub fn log_file_name(step: i64, name: &str, stream: StreamKind) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{step}-{safe}.{}", stream.file_extension())
}

/// The log files of one step, one per stream, created when the stream first has output and
/// appended as it arrives (never held in memory): `logs/BUILDER/NUMBER/STEP-NAME.STREAM`.
struct StepLogs {
    dir: PathBuf,
    step: i64,
    name: String,
    files: Vec<(StreamKind, tokio::fs::File)>,
}

impl StepLogs {
    fn new(dir: PathBuf, step: i64, name: &str) -> StepLogs {
        StepLogs {
            dir,
            step,
            name: name.to_string(),
            files: Vec::new(),
        }
    }

    async fn append(&mut self, stream: StreamKind, data: &[u8]) -> std::io::Result<()> {
        let position = match self.files.iter().position(|(kind, _)| *kind == stream) {
            Some(position) => position,
            None => {
                tokio::fs::create_dir_all(&self.dir).await?;
                let file = tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.join(log_file_name(self.step, &self.name, stream)))
                    .await?;
                self.files.push((stream, file));
                self.files.len() - 1
            }
        };
        // tokio's File hands each write to a blocking thread and finishes it before the next,
        // so followers see the data promptly without a flush per chunk.
        self.files[position].1.write_all(data).await
    }

    async fn finish(&mut self) -> std::io::Result<()> {
        for (_, file) in &mut self.files {
            file.flush().await?;
        }
        Ok(())
    }
}
