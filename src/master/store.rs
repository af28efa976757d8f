//! The read side of the store, as pages, the API and the bot need it: domain questions ("the
//! newest builds of a builder with their steps", "a build by number"), not SQL. Front ends read
//! the history only through [`Store`]; today it answers from the SQLite `History`, and it is the
//! seam where a shared store (several masters on PostgreSQL) will answer the same questions.

use crate::master::history::changes::{self, StoredChange};
use crate::master::history::{
    self, BuildDetail, BuildKey, BuildRow, History, HistoryError, StepRow, StoredRequest,
};
use crate::status::BuildResult;

/// A build with its steps.
#[derive(Debug, Clone)]
pub struct BuildWithSteps {
    pub build: BuildRow,
    pub steps: Vec<StepRow>,
}

/// One builder's recent history: its newest builds, the first of them with their steps.
#[derive(Debug, Clone)]
pub struct RecentBuilds {
    /// Newest first.
    pub rows: Vec<BuildRow>,
    /// The steps of the first `with_steps` rows, in the same order.
    pub steps: Vec<Vec<StepRow>>,
}

/// One builder's builds in a time window, and its last result whatever the window.
#[derive(Debug, Clone)]
pub struct WindowBuilds {
    pub builds: Vec<BuildWithSteps>,
    pub last_result: Option<BuildResult>,
}

/// A build named the way a front end names it.
#[derive(Debug, Clone)]
pub enum BuildRef {
    Number { builder: String, number: i64 },
    Id(i64),
}

/// The read interface of the store.
#[derive(Clone)]
pub struct Store {
    history: History,
}

impl Store {
    pub fn new(history: History) -> Store {
        Store { history }
    }

    /// For each of `builders`: its newest `rows` builds, the first `with_steps` with steps.
    pub async fn recent_builds(
        &self,
        builders: Vec<String>,
        rows: i64,
        with_steps: usize,
    ) -> Result<Vec<RecentBuilds>, HistoryError> {
        self.history
            .run(move |connection| {
                let mut all = Vec::new();
                for name in builders {
                    let rows = history::recent_builds(connection, &name, rows)?;
                    let mut steps = Vec::new();
                    for build in rows.iter().take(with_steps) {
                        steps.push(history::steps_of(connection, build.id)?);
                    }
                    all.push(RecentBuilds { rows, steps });
                }
                Ok(all)
            })
            .await
    }

    /// For each of `builders`: its builds started between `from` and `to` (at most `max`),
    /// with steps.
    pub async fn builds_in_window(
        &self,
        builders: Vec<String>,
        from: f64,
        to: f64,
        max: i64,
    ) -> Result<Vec<WindowBuilds>, HistoryError> {
        self.history
            .run(move |connection| {
                let mut all = Vec::new();
                for name in builders {
                    let mut builds = Vec::new();
                    for build in history::builds_in_window(connection, &name, from, to, max)? {
                        let steps = history::steps_of(connection, build.id)?;
                        builds.push(BuildWithSteps { build, steps });
                    }
                    let last_result = history::recent_builds(connection, &name, 5)?
                        .into_iter()
                        .find(|row| row.finished_at.is_some())
                        .and_then(|row| row.result);
                    all.push(WindowBuilds {
                        builds,
                        last_result,
                    });
                }
                Ok(all)
            })
            .await
    }

    /// One build with its steps, request and changes.
    pub async fn build(&self, key: BuildRef) -> Result<Option<BuildDetail>, HistoryError> {
        self.history
            .run(move |connection| {
                let key = match &key {
                    BuildRef::Number { builder, number } => BuildKey::Number {
                        builder,
                        number: *number,
                    },
                    BuildRef::Id(id) => BuildKey::Id(*id),
                };
                history::build_detail(connection, key)
            })
            .await
    }

    /// Whether step `step` of build `build_id` is still running.
    pub async fn step_running(&self, build_id: i64, step: i64) -> Result<bool, HistoryError> {
        self.history
            .run(move |connection| {
                Ok(history::steps_of(connection, build_id)?
                    .iter()
                    .any(|row| row.number == step && row.finished_at.is_none()))
            })
            .await
    }

    /// The requests of these ids that exist, in the order given.
    pub async fn requests(&self, ids: Vec<i64>) -> Result<Vec<StoredRequest>, HistoryError> {
        self.history
            .run(move |connection| {
                let mut found = Vec::new();
                for id in ids {
                    found.extend(history::request_by_id(connection, id)?);
                }
                Ok(found)
            })
            .await
    }

    /// The patch a request built, if it had one.
    pub async fn patch(&self, request_id: i64) -> Result<Option<Vec<u8>>, HistoryError> {
        self.history
            .run(move |connection| history::request_patch(connection, request_id))
            .await
    }

    /// The newest `limit` changes, each with the builds (builder, number) that built it.
    pub async fn recent_changes(
        &self,
        limit: i64,
    ) -> Result<Vec<(StoredChange, Vec<(String, i64)>)>, HistoryError> {
        self.history
            .run(move |connection| {
                let mut all = Vec::new();
                for change in changes::recent_changes(connection, limit)? {
                    let builds = changes::builds_of_change(connection, change.id)?;
                    all.push((change, builds));
                }
                Ok(all)
            })
            .await
    }
}
