//! Automatic bisection (issue 28): which commit between a builder's last good build and its
//! first bad one broke it.
//!
//! [`plan`] is the search, pure. [`run`] (on the leading master) follows the event log: when a
//! build of a branch (forced or scheduled, not a try patch) of a builder with `bisect = {...}`
//! fails and the builder's previous build of that branch succeeded at another commit with more
//! than one commit between, it lists the commits (the builder's repository mirrored under
//! `MASTER/gitpoll`), keeps the bisection in the store, publishes `bisect_started`, and asks
//! for the plan's builds one at a time as `Scheduled` requests marked with the `bisect`
//! property, which the scheduler serves only when no other request waits
//! (`scheduler::is_bisect`). Each of those builds' results goes into the plan (`exception` or
//! a step ending with `skip_exit_code`: skipped); when the plan names the culprit, it
//! publishes `culprit_found`. A later build of the branch that succeeds (a push fixed it)
//! stops a running bisection.

pub mod plan;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::master::config::BisectConfig;
use crate::master::control::Control;
use crate::master::events::Followed;
use crate::master::git_remote::Mirror;
use crate::master::scheduler::BISECT_PROPERTY;
use crate::master::store::{BisectRow, BuildDetail, BuildRef, NewRequest, now};
use crate::status::{BuildEvent, BuildResult, RequestKind};

use plan::{Next, Outcome, Plan};

/// Where the builders' repositories are mirrored (shared with the pollers).
const MIRRORS: &str = "gitpoll";

/// A running bisection as the task keeps it.
struct Running {
    row: BisectRow,
    plan: Plan,
    /// Author and subject of each commit, for the culprit's line.
    titles: std::collections::BTreeMap<String, (String, String)>,
    skip_exit_code: Option<i32>,
}

/// Follows the event log and runs the bisections, until `shutdown` (while leading).
pub async fn run(control: Arc<Control>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut follower = control.follow();
    let mut running: Vec<Running> = Vec::new();
    // Bisections a previous leader left running go on here.
    for row in control.store().bisects(50).await? {
        if row.state == "running"
            && let Ok(saved) = serde_json::from_str::<Saved>(&row.plan)
        {
            running.push(Running {
                row,
                plan: saved.plan,
                titles: saved.titles,
                skip_exit_code: saved.skip_exit_code,
            });
        }
    }
    loop {
        let followed = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            followed = follower.next() => followed,
        };
        match followed {
            Followed::Event(event) => {
                if let BuildEvent::BuildFinished {
                    builder,
                    number,
                    result,
                    will_retry: false,
                    ..
                } = &event.event
                    && let Err(err) =
                        on_finished(&control, &mut running, builder, *number, *result).await
                {
                    tracing::warn!("bisection after {builder} #{number}: {err:#}");
                }
            }
            Followed::Missed(count) => {
                tracing::warn!("bisections fell {count} events behind");
            }
            Followed::Closed => return Ok(()),
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    plan: Plan,
    titles: std::collections::BTreeMap<String, (String, String)>,
    skip_exit_code: Option<i32>,
}

async fn on_finished(
    control: &Control,
    running: &mut Vec<Running>,
    builder: &str,
    number: i64,
    result: BuildResult,
) -> anyhow::Result<()> {
    let config = control.config();
    let Some(settings) = config.builder(builder).and_then(|b| b.bisect) else {
        return Ok(());
    };
    let Some(detail) = control
        .store()
        .build(BuildRef::Number {
            builder: builder.to_string(),
            number,
        })
        .await?
    else {
        return Ok(());
    };
    if let Some(id) = detail.properties.get(BISECT_PROPERTY) {
        // Only this task's own requests count: anyone may force a build with a `bisect`
        // property, nobody else names a job `bisect-ID-N`.
        let ours = !detail.has_patch && detail.job_name.starts_with(&format!("bisect-{id}-"));
        let Some(at) = running
            .iter()
            .position(|r| ours && r.row.id.to_string() == *id)
        else {
            return Ok(());
        };
        let Some(commit) = detail.baserev.clone() else {
            return Ok(());
        };
        let outcome = outcome_of(&detail, result, running[at].skip_exit_code);
        running[at].plan.record(&commit, outcome);
        return advance(control, running, at).await;
    }
    if detail.has_patch {
        return Ok(());
    }
    let (Some(branch), Some(bad)) = (detail.branch.clone(), detail.revision.clone()) else {
        return Ok(());
    };
    if matches!(result, BuildResult::Success | BuildResult::Warnings) {
        // A push fixed the branch: a bisection of it has nothing left to find.
        for r in running
            .iter_mut()
            .filter(|r| r.row.builder == builder && r.row.branch == branch)
        {
            let reason = format!("build {number} of {branch} succeeded");
            r.row.state = "stopped".into();
            r.row.summary = format!("stopped: {reason}");
            control.store().save_bisect(r.row.clone()).await?;
            control.publish(BuildEvent::BisectEnded {
                bisect: r.row.id,
                builder: r.row.builder.clone(),
                state: r.row.state.clone(),
                reason,
            });
            tracing::info!(
                "bisection {} of {builder} stopped: the branch is fixed",
                r.row.id
            );
        }
        running.retain(|r| r.row.state == "running");
        return Ok(());
    }
    if result != BuildResult::Failure
        || running
            .iter()
            .any(|r| r.row.builder == builder && r.row.branch == branch)
    {
        return Ok(());
    }
    let Some(good) = previous_good(control, builder, number, &branch).await? else {
        return Ok(());
    };
    if good == bad {
        return Ok(());
    }
    let mirror = Mirror::new(&config.master_dir.join(MIRRORS), &detail.repository);
    mirror.fetch(std::slice::from_ref(&branch)).await?;
    let commits = mirror.commits_between(&good, &bad).await?;
    if commits.len() < 2 {
        return Ok(());
    }
    let plan = Plan::new(
        good.clone(),
        commits.iter().map(|(id, _, _)| id.clone()).collect(),
        settings.repeats,
        settings.max_builds,
    );
    let titles = commits
        .iter()
        .map(|(id, author, title)| (id.clone(), (author.clone(), title.clone())))
        .collect();
    let mut row = BisectRow {
        id: 0,
        builder: builder.to_string(),
        branch,
        good: good.clone(),
        bad: bad.clone(),
        state: "running".into(),
        culprit: None,
        builds: 0,
        summary: format!("bisecting {} commits", commits.len()),
        plan: String::new(),
        started_at: now(),
    };
    row.plan = saved_plan(&plan, &titles, &settings);
    row.id = control.store().save_bisect(row.clone()).await?;
    tracing::info!(
        "bisection {} of {builder}: {} commits from {good} to {bad}",
        row.id,
        commits.len()
    );
    control.publish(BuildEvent::BisectStarted {
        bisect: row.id,
        builder: builder.to_string(),
        good,
        bad,
        commits: commits.len(),
    });
    running.push(Running {
        row,
        plan,
        titles,
        skip_exit_code: settings.skip_exit_code,
    });
    let at = running.len() - 1;
    advance(control, running, at).await
}

fn saved_plan(
    plan: &Plan,
    titles: &std::collections::BTreeMap<String, (String, String)>,
    settings: &BisectConfig,
) -> String {
    serde_json::to_string(&Saved {
        plan: plan.clone(),
        titles: titles.clone(),
        skip_exit_code: settings.skip_exit_code,
    })
    .unwrap_or_default()
}

/// How a bisection's build counts: skipped when it could not test the commit.
fn outcome_of(detail: &BuildDetail, result: BuildResult, skip_exit_code: Option<i32>) -> Outcome {
    let skip_summary = skip_exit_code.map(|code| format!("exit {code} "));
    let skipped_by_code = skip_summary.as_ref().is_some_and(|prefix| {
        detail.steps.iter().any(|step| {
            step.result == Some(BuildResult::Failure)
                && step
                    .summary
                    .as_deref()
                    .is_some_and(|summary| summary.starts_with(prefix.as_str()))
        })
    });
    match result {
        BuildResult::Success | BuildResult::Warnings => Outcome::Good,
        BuildResult::Failure if !skipped_by_code => Outcome::Bad,
        _ => Outcome::Skip,
    }
}

/// The revision of the builder's newest build of `branch` before `number`, when it succeeded
/// (a bisection's own builds and try builds do not count).
async fn previous_good(
    control: &Control,
    builder: &str,
    number: i64,
    branch: &str,
) -> anyhow::Result<Option<String>> {
    for row in control.store().newest_builds(builder, 50).await? {
        if row.number >= number || row.finished_at.is_none() {
            continue;
        }
        let Some(detail) = control.store().build(BuildRef::Id(row.id)).await? else {
            continue;
        };
        if detail.has_patch
            || detail.properties.contains_key(BISECT_PROPERTY)
            || detail.branch.as_deref() != Some(branch)
        {
            continue;
        }
        return Ok(match row.result {
            Some(BuildResult::Success | BuildResult::Warnings) => detail.revision,
            _ => None,
        });
    }
    Ok(None)
}

async fn advance(control: &Control, running: &mut Vec<Running>, at: usize) -> anyhow::Result<()> {
    let next = running[at].plan.next();
    let r = &mut running[at];
    r.row.builds = i64::from(r.plan.builds());
    match next {
        Next::Build(commit) => {
            let progress = r.plan.progress();
            r.row.summary = format!(
                "bisecting {}..{}: {} of ≤{} builds, {} commits left",
                short(&r.row.good),
                short(&r.row.bad),
                progress.builds,
                progress.at_most,
                progress.left
            );
            let request = NewRequest {
                job_name: format!("bisect-{}-{}", r.row.id, r.row.builds + 1),
                jobid: String::new(),
                builder: r.row.builder.clone(),
                who: None,
                comment: Some(format!("bisection {} of {}", r.row.id, r.row.branch)),
                repository: control
                    .config()
                    .builder(&r.row.builder)
                    .map(|b| b.repo.clone())
                    .unwrap_or_default(),
                branch: Some(r.row.branch.clone()),
                baserev: Some(commit.clone()),
                patch: None,
                patch_level: 1,
                submitted_at: now(),
                properties: [(BISECT_PROPERTY.to_string(), r.row.id.to_string())].into(),
                kind: RequestKind::Scheduled,
                reason: Some(format!(
                    "bisection {} of {}: is {} good?",
                    r.row.id,
                    r.row.builder,
                    short(&commit)
                )),
                change_ids: Vec::new(),
            };
            control.intake_handle().enqueue(vec![request]).await?;
        }
        Next::Culprit(commit) => {
            let (author, title) = r.titles.get(&commit).cloned().unwrap_or_default();
            r.row.state = "found".into();
            r.row.culprit = Some(commit.clone());
            r.row.summary = format!(
                "first bad: {} by {} '{}' — {} builds",
                short(&commit),
                crate::untrusted::text::one_line(&author),
                crate::untrusted::text::one_line(&title),
                r.row.builds
            );
            tracing::info!(
                "bisection {} of {}: {}",
                r.row.id,
                r.row.builder,
                r.row.summary
            );
            control.publish(BuildEvent::CulpritFound {
                bisect: r.row.id,
                builder: r.row.builder.clone(),
                culprit: commit,
                author,
                title,
                builds: r.plan.builds(),
            });
        }
        Next::Inconclusive(why) => {
            r.row.state = "inconclusive".into();
            r.row.summary = format!("no culprit named: {why}");
            tracing::info!(
                "bisection {} of {}: {}",
                r.row.id,
                r.row.builder,
                r.row.summary
            );
            control.publish(BuildEvent::BisectEnded {
                bisect: r.row.id,
                builder: r.row.builder.clone(),
                state: r.row.state.clone(),
                reason: why,
            });
        }
    }
    let saved = Saved {
        plan: r.plan.clone(),
        titles: r.titles.clone(),
        skip_exit_code: r.skip_exit_code,
    };
    r.row.plan = serde_json::to_string(&saved).unwrap_or_default();
    control.store().save_bisect(r.row.clone()).await?;
    running.retain(|r| r.row.state == "running");
    Ok(())
}

fn short(commit: &str) -> &str {
    commit.get(..7).unwrap_or(commit)
}
