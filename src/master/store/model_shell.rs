//! What the store keeps of held builds and the shells opened into them (issue 25).

/// A finished build whose work directory its slave keeps as the build left it, so its
/// requester (or an operator) can open a shell there until `held_until`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ShellHold {
    pub build_id: i64,
    pub builder: String,
    pub number: i64,
    pub slave: String,
    /// The directory under the slave's work directory the build ran in (`linux`, or
    /// `linux~2` when `linux` was held by another build).
    pub dir: String,
    /// The build's environment (`BUILDBOT_*` and properties; never secrets), for the shell.
    pub env: Vec<(String, String)>,
    /// Who asked for the build (try, force); none for a scheduled build.
    pub owner: Option<String>,
    /// Seconds since the unix epoch.
    pub held_until: f64,
}

/// One shell opened into a held build: who, from where, through which master, when.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ShellSession {
    pub id: i64,
    pub build_id: i64,
    pub who: String,
    pub from_addr: String,
    pub master: String,
    pub started_at: f64,
    pub ended_at: Option<f64>,
}
