//! Bisections as the store keeps them (issue 28).

/// One bisection: where it stands and its search (`plan`, JSON of `master::bisect::plan::Plan`).
#[derive(Debug, Clone, PartialEq)]
pub struct BisectRow {
    /// 0 for one not kept yet.
    pub id: i64,
    pub builder: String,
    pub branch: String,
    pub good: String,
    pub bad: String,
    /// `running`, `found`, `inconclusive` or `stopped`.
    pub state: String,
    pub culprit: Option<String>,
    /// Builds it asked for so far.
    pub builds: i64,
    /// What the page shows: progress, or the result in a line.
    pub summary: String,
    pub plan: String,
    pub started_at: f64,
}
