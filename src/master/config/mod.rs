//! `master.toml`: reading it, checking it, and turning it into a validated [`Config`].
//!
//! Two stages, as the style guide asks: serde reads the file into `Raw*` structs that keep the
//! source span of every value a problem may be reported against, then [`Config::from_toml`]
//! checks the combinations (slaves named by builders exist, durations parse, key files are
//! readable, paths become absolute) and reports *every* problem it finds as
//! `master.toml:LINE: message`. This module does not start anything and does not touch the
//! spool, the SSH server or the network.

pub mod database;
mod fetch;
pub mod hold;
mod irc;
pub mod land;
mod limits;
mod locks;
mod notifier;
mod repair;
mod retention;
mod schedulers;
mod secrets;
mod suggest;
mod test_results;
mod trust;
mod unknown;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use russh::keys::PublicKey;
use serde::Deserialize;
use toml::Spanned;

use crate::durations::parse_duration;

use database::RawDatabase;
pub use database::{Backend, DatabaseConfig};
use irc::RawIrc;
pub use irc::{IrcConfig, NotifyEvent};
pub use land::LandConfig;
use land::RawLand;
pub use limits::MaxStartups;
use limits::RawMaxStartups;
pub use locks::NextSlave;
use locks::{RawLock, RawLockUse};
use notifier::RawNotifier;
pub use notifier::{
    MailConfig, NotifierConfig, NotifierEvent, NotifierKind, TRY_USER, WebhookConfig,
    plain_address, read_webhook_key,
};
use retention::RawRetention;
pub use retention::RetentionConfig;
pub use schedulers::{ChangeSourceConfig, ChangesConfig, SchedulerConfig, SchedulerKind};
use schedulers::{RawChangeSource, RawChanges, RawScheduler};
use secrets::RawSecret;
pub use secrets::SecretConfig;
pub use trust::QuotaConfig;
use trust::RawQuotas;

/// At most this many values of the wrong type are replaced by stand-ins in one run (each
/// replacement costs a typed pass over the whole file).
const MAX_TYPE_REPAIRS: usize = 200;

/// The file name of the master's configuration inside the master directory.
pub const CONFIG_FILE: &str = "master.toml";

/// One problem found in `master.toml`, reported as `master.toml:LINE: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line the problem is reported against (0 when the file could not be read).
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{CONFIG_FILE}: {}", self.message)
        } else {
            write!(f, "{CONFIG_FILE}:{}: {}", self.line, self.message)
        }
    }
}

/// All the problems of one `master.toml`, in file order.
#[derive(Debug, thiserror::Error)]
#[error("{}", display_problems(.0))]
pub struct ConfigError(pub Vec<Problem>);

fn display_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The validated configuration of a master. Paths are absolute.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The master directory every relative path was resolved against.
    pub master_dir: PathBuf,
    pub name: String,
    /// Operators: members of this unix group act on every request, build and slave
    /// (`[master] operators`, or its older name `admin_group`).
    pub operators: Option<String>,
    /// Per-user quotas (`[limits]`).
    pub quotas: QuotaConfig,
    pub sshd: SshdConfig,
    pub http: HttpConfig,
    pub spool: SpoolConfig,
    pub slaves: Vec<SlaveConfig>,
    pub builders: Vec<BuilderConfig>,
    pub schedulers: Vec<SchedulerConfig>,
    pub change_sources: Vec<ChangeSourceConfig>,
    pub changes: ChangesConfig,
    pub locks: Vec<crate::master::locks::LockDef>,
    /// The IRC status bot; none when `[irc]` is absent.
    pub irc: Option<IrcConfig>,
    /// Where the store lives (`[database]`): SQLite by default, or a shared PostgreSQL.
    pub database: DatabaseConfig,
    /// The merge queues (`[[land]]`), one per target branch.
    pub lands: Vec<LandConfig>,
    /// Mail and webhook notifiers (`[[notifier]]`, issue 28).
    pub notifiers: Vec<NotifierConfig>,
    /// `[[secret]]`: names and files; the values are read by each build that gets them.
    pub secrets: Vec<SecretConfig>,
    /// `[retention]`: none keeps everything.
    pub retention: Option<RetentionConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SshdConfig {
    pub listen: SocketAddr,
    pub host_key: PathBuf,
    /// sshd-style `AuthorizedKeysFile` patterns; `%u`, `%h` and `%%` are expanded per login.
    /// Relative patterns are relative to the master directory *after* expansion.
    pub authorized_keys: Vec<String>,
    pub allow_root: bool,
    /// Whether a login name with no unix account is told so before auth fails. Helpful for a
    /// master on a trusted network; on an exposed one it tells strangers which names exist.
    pub tell_unknown_users: bool,
    /// Time a connection has to authenticate before it is dropped (sshd's LoginGraceTime).
    pub login_grace_time: Duration,
    /// Public-key attempts allowed per connection (sshd's MaxAuthTries).
    pub max_auth_tries: usize,
    /// Connections allowed to be unauthenticated at the same time, with sshd's random early
    /// drop between `start` and `full` (sshd's MaxStartups).
    pub max_startups: MaxStartups,
    /// Unauthenticated connections one source address (an IPv6 /64) may hold at once, so one
    /// host cannot take every place (sshd's PerSourceMaxStartups).
    pub max_startups_per_source: usize,
    /// Channels one connection may hold open at once (sshd's MaxSessions).
    pub max_sessions: usize,
    /// Interval of SSH-level keepalives the master sends to quiet clients.
    pub keepalive_interval: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Connections served at once; more wait in the kernel's backlog. Also lowered at start so
    /// that descriptors stay free for SSH (`daemon`).
    pub max_connections: usize,
    /// Connections one source (an IPv4 address, an IPv6 /64) may hold at once; more are closed
    /// as soon as they are accepted.
    pub max_connections_per_source: usize,
    /// Time a client has to send a request's headers, and the longest a kept-alive connection
    /// may wait idle for its next request; also the time a form's body has to arrive.
    pub header_read_timeout: Duration,
    /// Whether pages and the API are open to visitors without a session (default true); a
    /// private farm sets false.
    pub public: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    pub max_patch_bytes: u64,
    /// Time a try or tryserver upload has to arrive whole.
    pub upload_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SlaveConfig {
    pub name: String,
    pub public_key: PublicKey,
    pub max_builds: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BuilderConfig {
    pub name: String,
    /// Several names form a pool of identical slaves.
    pub slaves: Vec<String>,
    pub repo: String,
    pub branch: String,
    pub steps: Vec<StepConfig>,
    /// Run a request again when its slave is lost mid-build (default true); never after the
    /// second loss of the same request.
    pub retry_on_slave_lost: bool,
    /// A newer scheduled request for the same branch replaces the queued ones (default false;
    /// never try jobs or forced builds).
    pub collapse_requests: bool,
    /// Check out the repository's submodules at the recorded pointers (default false: a slave
    /// never fetches submodule contents unless asked).
    pub submodules: bool,
    /// Locks held for the whole build, taken all at once before it starts.
    pub locks: Vec<crate::master::locks::LockUse>,
    /// Higher is served first when builders share slaves (default 0).
    pub priority: i64,
    /// At most this many builds at once across the pool (default: no limit).
    pub max_concurrent: Option<usize>,
    pub next_slave: NextSlave,
    /// Deploys and releases: patch (try) builds never run on it, and its slaves take none
    /// unless `patch_builds_on_slaves` (default false).
    pub trusted: bool,
    /// For a trusted builder: its slaves may still run other builders' patch builds.
    pub patch_builds_on_slaves: bool,
    /// Try patches may change `.gitmodules` URLs (default false: such a job is refused).
    pub patch_submodule_urls: bool,
    /// Automatic bisection of a branch that broke (`bisect = { ... }`, issue 28); off when none.
    pub bisect: Option<BisectConfig>,
    /// Which finished builds keep their directory for a shell, and how long (issue 25).
    pub hold: hold::HoldPolicy,
    /// The `[[secret]]`s its steps get as environment variables (`$NAME`, upper-cased).
    pub secrets: Vec<String>,
    /// Builds that run a user's patch (try) get the secrets too (default false: any try user
    /// could print them).
    pub secrets_for_patches: bool,
    /// Globs of files kept after the builder's last step (`[[builder]] artifacts`).
    pub artifacts: Vec<String>,
    /// When those are kept: after a build that went well so far (default), or always.
    pub artifacts_when: ArtifactsWhen,
}

/// `[[builder]] bisect = { max_builds = 8, repeats = 1, skip_exit_code = 125 }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct BisectConfig {
    /// At most this many builds per bisection (default 8).
    #[serde(default = "default_bisect_max_builds")]
    pub max_builds: u32,
    /// The suspect and its parent are built this many more times before the suspect is named
    /// (default 1).
    #[serde(default = "default_bisect_repeats")]
    pub repeats: u32,
    /// A step ending with this exit code means the commit cannot be tested (`git bisect
    /// skip`); `exception` always does.
    #[serde(default)]
    pub skip_exit_code: Option<i32>,
}

fn default_bisect_max_builds() -> u32 {
    8
}

fn default_bisect_repeats() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq)]
pub struct StepConfig {
    pub name: String,
    pub command: String,
    pub workdir: Option<String>,
    pub env: BTreeMap<String, String>,
    pub timeout: Option<Duration>,
    pub halt_on_failure: bool,
    pub flunk_on_failure: bool,
    pub warn_on_failure: bool,
    /// Locks held for this step only, taken all at once before it runs.
    pub locks: Vec<crate::master::locks::LockUse>,
    /// Test reports the slave sends after the step (`KIND:GLOB`, validated; issue 26).
    pub test_results: Vec<(crate::master::test_results::ReportKind, String)>,
    /// Globs (relative to the builder's work tree) of the files kept after the step.
    pub artifacts: Vec<String>,
    /// When they are kept: after the step succeeded (default) or whatever its result.
    pub when: ArtifactsWhen,
    /// Artifacts put into the work tree before the step's command runs.
    pub fetch_artifacts: Vec<FetchArtifacts>,
}

/// `fetch_artifacts = [{ from = "upstream", path = "dist/*.tar.gz" }]`: kept files of another
/// build (or of an earlier step of this one) written at their own paths into the work tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchArtifacts {
    pub from: FetchFrom,
    /// A glob over the artifacts' recorded paths (same syntax as `artifacts`).
    pub path: String,
    /// With `from = "upstream"`: only that builder's build of the upstream firing.
    pub builder: Option<String>,
}

/// Whose artifacts a step fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FetchFrom {
    /// The builds of the firing whose success started this build (a `dependent` scheduler).
    Upstream,
    /// The earlier steps of this build.
    Build,
}

#[derive(Debug, Deserialize)]
struct RawFetch {
    from: FetchFrom,
    path: Spanned<String>,
    #[serde(default)]
    builder: Option<Spanned<String>>,
}

/// When a step's `artifacts` are collected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactsWhen {
    #[default]
    Success,
    Always,
}

// ---- the file as serde sees it -----------------------------------------------------------
//
// No `deny_unknown_fields` here: `Config::from_toml` reads through `serde_ignored`, which names
// every key these structs do not take, so all of them are reported at once (`unknown`).

#[derive(Debug, Deserialize)]
struct RawConfig {
    master: RawMaster,
    sshd: RawSshd,
    #[serde(default)]
    http: Option<RawHttp>,
    #[serde(default)]
    spool: Option<RawSpool>,
    #[serde(default, rename = "slave")]
    slaves: Vec<RawSlave>,
    #[serde(default, rename = "builder")]
    builders: Vec<RawBuilder>,
    #[serde(default, rename = "scheduler")]
    schedulers: Vec<RawScheduler>,
    #[serde(default, rename = "change_source")]
    change_sources: Vec<RawChangeSource>,
    #[serde(default, rename = "lock")]
    locks: Vec<RawLock>,
    #[serde(default)]
    changes: Option<RawChanges>,
    #[serde(default)]
    irc: Option<RawIrc>,
    #[serde(default)]
    limits: Option<RawQuotas>,
    #[serde(default)]
    database: Option<RawDatabase>,
    #[serde(default, rename = "land")]
    lands: Vec<RawLand>,
    #[serde(default, rename = "notifier")]
    notifiers: Vec<RawNotifier>,
    #[serde(default, rename = "secret")]
    secrets: Vec<RawSecret>,
    #[serde(default)]
    retention: Option<RawRetention>,
}

#[derive(Debug, Deserialize)]
struct RawMaster {
    name: String,
    #[serde(default)]
    operators: Option<Spanned<String>>,
    #[serde(default)]
    admin_group: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
struct RawSshd {
    listen: Spanned<String>,
    #[serde(default)]
    host_key: Option<Spanned<String>>,
    #[serde(default)]
    authorized_keys: Option<Vec<String>>,
    #[serde(default)]
    allow_root: bool,
    #[serde(default)]
    tell_unknown_users: Option<bool>,
    #[serde(default)]
    login_grace_time: Option<Spanned<String>>,
    #[serde(default)]
    max_auth_tries: Option<usize>,
    #[serde(default)]
    max_startups: Option<Spanned<RawMaxStartups>>,
    #[serde(default)]
    max_startups_per_source: Option<Spanned<usize>>,
    #[serde(default)]
    max_sessions: Option<Spanned<usize>>,
    #[serde(default)]
    keepalive_interval: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
struct RawHttp {
    listen: Spanned<String>,
    #[serde(default)]
    max_connections: Option<Spanned<usize>>,
    #[serde(default)]
    max_connections_per_source: Option<Spanned<usize>>,
    #[serde(default)]
    header_read_timeout: Option<Spanned<String>>,
    #[serde(default)]
    public: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct RawSpool {
    #[serde(default)]
    dir: Option<String>,
    #[serde(default)]
    max_patch_bytes: Option<u64>,
    #[serde(default)]
    upload_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
struct RawSlave {
    name: Spanned<String>,
    public_key: Spanned<String>,
    #[serde(default)]
    max_builds: Option<usize>,
}

#[derive(Debug, Deserialize)]
struct RawBuilder {
    name: Spanned<String>,
    slaves: Vec<Spanned<String>>,
    repo: String,
    #[serde(default)]
    branch: Option<String>,
    #[serde(default)]
    steps: Vec<RawStep>,
    #[serde(default)]
    retry_on_slave_lost: Option<bool>,
    #[serde(default)]
    collapse_requests: Option<bool>,
    #[serde(default)]
    submodules: bool,
    #[serde(default)]
    locks: Vec<RawLockUse>,
    #[serde(default)]
    priority: Option<i64>,
    #[serde(default)]
    max_concurrent: Option<Spanned<usize>>,
    #[serde(default)]
    next_slave: Option<NextSlave>,
    #[serde(default)]
    trusted: bool,
    #[serde(default)]
    patch_builds_on_slaves: bool,
    #[serde(default)]
    patch_submodule_urls: bool,
    #[serde(default)]
    bisect: Option<BisectConfig>,
    #[serde(default)]
    hold: Option<hold::RawHold>,
    #[serde(default)]
    secrets: Vec<Spanned<String>>,
    #[serde(default)]
    secrets_for_patches: bool,
    #[serde(default)]
    artifacts: Vec<Spanned<String>>,
    #[serde(default)]
    artifacts_when: Option<ArtifactsWhen>,
}

#[derive(Debug, Deserialize)]
struct RawStep {
    name: String,
    command: Spanned<String>,
    #[serde(default)]
    locks: Vec<RawLockUse>,
    #[serde(default)]
    workdir: Option<Spanned<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    timeout: Option<Spanned<String>>,
    #[serde(default)]
    halt_on_failure: Option<bool>,
    #[serde(default)]
    flunk_on_failure: Option<bool>,
    #[serde(default)]
    warn_on_failure: Option<bool>,
    #[serde(default)]
    test_results: Vec<Spanned<String>>,
    #[serde(default)]
    artifacts: Vec<Spanned<String>>,
    #[serde(default)]
    when: Option<ArtifactsWhen>,
    #[serde(default)]
    fetch_artifacts: Vec<RawFetch>,
}

// ---- defaults ----------------------------------------------------------------------------

/// Where keys are looked up when `[sshd] authorized_keys` is not given.
pub const DEFAULT_AUTHORIZED_KEYS: [&str; 2] = ["%h/.ssh/authorized_keys", "authorized_keys.d/%u"];
const DEFAULT_HOST_KEY: &str = "host_key";
const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8010";
const DEFAULT_SPOOL_DIR: &str = "spool";
/// 10 MiB: Buildbot's 99,999 bytes is too small for real patches.
pub use crate::spool::submit::DEFAULT_MAX_PATCH_BYTES;
const DEFAULT_LOGIN_GRACE_TIME: Duration = Duration::from_secs(120);
const DEFAULT_MAX_AUTH_TRIES: usize = 6;
/// sshd's default MaxStartups, "10:30:100".
const DEFAULT_MAX_STARTUPS: MaxStartups = MaxStartups {
    start: 10,
    rate: 30,
    full: 100,
};
const DEFAULT_MAX_SESSIONS: usize = 10;
const DEFAULT_HTTP_MAX_CONNECTIONS: usize = 512;

/// A quarter of the places, as `max_startups_per_source` takes of `full`: one host cannot
/// take them all, and a browser's handful of connections never comes near.
fn default_per_source(max_connections: usize) -> usize {
    (max_connections / 4).max(1)
}
const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_UPLOAD_TIMEOUT: Duration = Duration::from_secs(5 * 60);
const DEFAULT_SSH_KEEPALIVE: Duration = Duration::from_secs(60);

impl Config {
    /// Reads and validates `DIR/master.toml`.
    pub fn load(master_dir: &Path) -> Result<Config, ConfigError> {
        let path = master_dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|err| {
            ConfigError(vec![Problem {
                line: 0,
                message: if err.kind() == std::io::ErrorKind::NotFound {
                    format!(
                        "cannot read {}: there is no master here; make one with `buildbot create-master {}`",
                        path.display(),
                        master_dir.display()
                    )
                } else {
                    format!("cannot read {}: {err}", path.display())
                },
            }])
        })?;
        let master_dir = std::path::absolute(master_dir).map_err(|err| {
            ConfigError(vec![Problem {
                line: 0,
                message: format!("cannot resolve {}: {err}", master_dir.display()),
            }])
        })?;
        Config::from_toml(&text, &master_dir)
    }

    /// Validates the text of a `master.toml` whose relative paths are relative to `master_dir`.
    /// Every syntax error, every unknown key, every value of the wrong type and every semantic
    /// problem is reported in one go.
    pub fn from_toml(text: &str, master_dir: &Path) -> Result<Config, ConfigError> {
        let lines = LineIndex::new(text);
        let (document, syntax_errors) = toml::de::DeTable::parse_recoverable(text);
        if !syntax_errors.is_empty() {
            let problems = syntax_errors
                .iter()
                .map(|err| Problem {
                    line: err.span().map_or(0, |span| lines.line_of(span.start)),
                    message: err.message().trim().to_string(),
                })
                .collect();
            return Err(ConfigError(sorted(problems)));
        }
        let mut document = document;
        let mut problems = Vec::new();
        let mut unknown_keys = Vec::new();
        // Each value of the wrong type is reported once, replaced by a stand-in, and the typed
        // pass runs again, so one run shows every mistake (`repair`).
        let mut repairs = repair::Repairs::default();
        let mut repaired_spans = Vec::new();
        let mut raw = None;
        for _ in 0..MAX_TYPE_REPAIRS {
            unknown_keys.clear();
            let typed: Result<RawConfig, toml::de::Error> = serde_ignored::deserialize(
                toml::de::Deserializer::from(document.clone()),
                |path| unknown_keys.push(unknown::segments(&path)),
            );
            let err = match typed {
                Ok(typed) => {
                    raw = Some(typed);
                    break;
                }
                Err(err) => err,
            };
            let line = err.span().map_or(0, |span| lines.line_of(span.start));
            let verdict = match err.span() {
                Some(span) => repairs.repair(&mut document, span, err.message()),
                None => repair::Repaired::GaveUp { first: true },
            };
            if matches!(
                verdict,
                repair::Repaired::First | repair::Repaired::GaveUp { first: true }
            ) {
                problems.push(Problem {
                    line,
                    message: err.message().trim().to_string(),
                });
            }
            if let Some(span) = err.span() {
                repaired_spans.push(span);
            }
            if matches!(verdict, repair::Repaired::GaveUp { .. }) {
                break;
            }
        }
        for segments in &unknown_keys {
            problems.push(unknown::problem(document.get_ref(), segments, &lines));
        }
        let Some(raw) = raw else {
            return Err(ConfigError(sorted(problems)));
        };
        let mut check = Checker {
            lines: &lines,
            problems,
            master_dir,
            stand_ins: &repaired_spans,
        };
        let config = check.config(raw);
        let problems = check.problems;
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(ConfigError(sorted(problems))),
        }
    }

    /// The builders a try job may name: those of every `kind = "try"` scheduler.
    pub fn try_builders(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for scheduler in &self.schedulers {
            if scheduler.kind.is_try() {
                for name in &scheduler.builders {
                    if !names.contains(&name.as_str()) {
                        names.push(name);
                    }
                }
            }
        }
        names
    }

    /// The builders that may be forced: those of the `kind = "force"` schedulers, or every
    /// builder when there is none.
    pub fn may_force(&self, builder: &str) -> bool {
        let mut force = self
            .schedulers
            .iter()
            .filter(|scheduler| matches!(scheduler.kind, SchedulerKind::Force))
            .peekable();
        if force.peek().is_none() {
            return self.builder(builder).is_some();
        }
        force.any(|scheduler| scheduler.builders.iter().any(|name| name == builder))
    }

    pub fn builder(&self, name: &str) -> Option<&BuilderConfig> {
        self.builders.iter().find(|builder| builder.name == name)
    }

    pub fn slave(&self, name: &str) -> Option<&SlaveConfig> {
        self.slaves.iter().find(|slave| slave.name == name)
    }
}

/// Problems in file order (a stable sort: one line's problems keep the order they were found).
fn sorted(mut problems: Vec<Problem>) -> Vec<Problem> {
    problems.sort_by_key(|problem| problem.line);
    problems
}

/// Byte offset → 1-based line number.
struct LineIndex {
    newline_offsets: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> LineIndex {
        LineIndex {
            newline_offsets: text.match_indices('\n').map(|(offset, _)| offset).collect(),
        }
    }

    fn line_of(&self, offset: usize) -> usize {
        self.newline_offsets
            .partition_point(|&newline| newline < offset)
            + 1
    }
}

struct Checker<'a> {
    lines: &'a LineIndex,
    problems: Vec<Problem>,
    master_dir: &'a Path,
    /// Where values of the wrong type were replaced by stand-ins (`repair`): what the checks
    /// say about a stand-in is noise, its value already has its problem.
    stand_ins: &'a [std::ops::Range<usize>],
}

impl Checker<'_> {
    /// `artifacts` globs of a step or builder (`whose`: `step "test"`): relative, no `..`.
    fn artifact_patterns(&mut self, whose: &str, patterns: &[Spanned<String>]) -> Vec<String> {
        patterns
            .iter()
            .map(|pattern| {
                if !is_inside_glob(pattern.get_ref()) {
                    let message = format!(
                        "{whose}: artifact pattern \"{}\" must be relative to the work tree (no .., not absolute)",
                        pattern.get_ref()
                    );
                    self.problem(pattern, message);
                }
                pattern.get_ref().clone()
            })
            .collect()
    }

    fn problem<T>(&mut self, spanned: &Spanned<T>, message: String) {
        self.problem_at(spanned.span(), message);
    }

    fn problem_at(&mut self, span: std::ops::Range<usize>, message: String) {
        let about_a_stand_in = self.stand_ins.iter().any(|stand_in| {
            span.start < stand_in.end.max(stand_in.start + 1)
                && stand_in.start < span.end.max(span.start + 1)
        });
        if about_a_stand_in {
            return;
        }
        self.problems.push(Problem {
            line: self.lines.line_of(span.start),
            message,
        });
    }

    fn resolve(&self, path: &str) -> PathBuf {
        self.master_dir.join(path)
    }

    fn socket_addr(&mut self, value: &Spanned<String>, what: &str) -> Option<SocketAddr> {
        match value.get_ref().parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                let message = format!(
                    "{what} = \"{}\" is not an address with a port (write it like 127.0.0.1:2222)",
                    value.get_ref()
                );
                self.problem(value, message);
                None
            }
        }
    }

    fn duration(&mut self, value: Option<&Spanned<String>>, default: Duration) -> Duration {
        let Some(value) = value else {
            return default;
        };
        match parse_duration(value.get_ref()) {
            Ok(duration) => duration,
            Err(message) => {
                self.problem(value, message);
                default
            }
        }
    }

    fn config(&mut self, raw: RawConfig) -> Option<Config> {
        let sshd = self.sshd(&raw.sshd);
        let http = self.http(raw.http.as_ref());
        let spool = raw.spool.unwrap_or(RawSpool {
            dir: None,
            max_patch_bytes: None,
            upload_timeout: None,
        });
        let upload_timeout = self.duration(spool.upload_timeout.as_ref(), DEFAULT_UPLOAD_TIMEOUT);
        let slaves = self.slaves(&raw.slaves);
        let slave_names: HashSet<&str> = raw
            .slaves
            .iter()
            .map(|s| s.name.get_ref().as_str())
            .collect();
        let locks = self.lock_defs(&raw.locks, &slave_names);
        let builders = self.builders(&raw.builders, &raw.slaves, &locks);
        let builder_names: HashSet<&str> = raw
            .builders
            .iter()
            .map(|builder| builder.name.get_ref().as_str())
            .collect();
        let schedulers = self.schedulers(&raw.schedulers, &builder_names);
        let change_sources = self.change_sources(&raw.change_sources);
        let changes = self.changes(raw.changes.as_ref());
        let irc = self.irc(raw.irc.as_ref());
        let operators = self.operators(&raw.master);
        let quotas = self.quotas(raw.limits.as_ref());
        let database = self.database(raw.database.as_ref());
        let lands = self.lands(&raw.lands, &builders);
        let notifiers = self.notifiers(&raw.notifiers, &builder_names);
        let secrets = self.secrets(&raw.secrets);
        self.builder_secrets(&raw.builders, &secrets);
        let retention = self.retention(raw.retention.as_ref());
        Some(Config {
            master_dir: self.master_dir.to_path_buf(),
            name: raw.master.name,
            operators,
            quotas,
            sshd: sshd?,
            http: http?,
            spool: SpoolConfig {
                dir: self.resolve(spool.dir.as_deref().unwrap_or(DEFAULT_SPOOL_DIR)),
                max_patch_bytes: spool.max_patch_bytes.unwrap_or(DEFAULT_MAX_PATCH_BYTES),
                upload_timeout,
            },
            slaves,
            builders,
            schedulers,
            change_sources,
            changes,
            locks,
            irc,
            database,
            lands,
            notifiers,
            secrets,
            retention,
        })
    }

    fn http(&mut self, raw: Option<&RawHttp>) -> Option<HttpConfig> {
        let Some(raw) = raw else {
            return Some(HttpConfig {
                listen: DEFAULT_HTTP_LISTEN.parse().ok()?,
                max_connections: DEFAULT_HTTP_MAX_CONNECTIONS,
                max_connections_per_source: default_per_source(DEFAULT_HTTP_MAX_CONNECTIONS),
                header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
                public: true,
            });
        };
        let listen = self.socket_addr(&raw.listen, "[http] listen");
        let max_connections = self.at_least_one(
            raw.max_connections.as_ref(),
            DEFAULT_HTTP_MAX_CONNECTIONS,
            "[http] max_connections",
        );
        let max_connections_per_source = self.at_least_one(
            raw.max_connections_per_source.as_ref(),
            default_per_source(max_connections),
            "[http] max_connections_per_source",
        );
        let header_read_timeout = self.duration(
            raw.header_read_timeout.as_ref(),
            DEFAULT_HEADER_READ_TIMEOUT,
        );
        Some(HttpConfig {
            listen: listen?,
            max_connections,
            max_connections_per_source,
            header_read_timeout,
            public: raw.public.unwrap_or(true),
        })
    }

    /// A count that must be at least 1: 0 would lock everyone out, so it is reported.
    fn at_least_one(
        &mut self,
        value: Option<&Spanned<usize>>,
        default: usize,
        what: &str,
    ) -> usize {
        match value {
            None => default,
            Some(value) if *value.get_ref() == 0 => {
                self.problem(value, format!("{what} must be at least 1"));
                default
            }
            Some(value) => *value.get_ref(),
        }
    }

    fn sshd(&mut self, raw: &RawSshd) -> Option<SshdConfig> {
        let listen = self.socket_addr(&raw.listen, "[sshd] listen");
        let host_key = match &raw.host_key {
            Some(path) => {
                let resolved = self.resolve(path.get_ref());
                if let Err(err) = std::fs::File::open(&resolved) {
                    let message = format!("cannot read host key {}: {err}", resolved.display());
                    self.problem(path, message);
                }
                resolved
            }
            None => self.resolve(DEFAULT_HOST_KEY),
        };
        let login_grace_time =
            self.duration(raw.login_grace_time.as_ref(), DEFAULT_LOGIN_GRACE_TIME);
        let keepalive_interval =
            self.duration(raw.keepalive_interval.as_ref(), DEFAULT_SSH_KEEPALIVE);
        let authorized_keys = raw.authorized_keys.clone().unwrap_or_else(|| {
            DEFAULT_AUTHORIZED_KEYS
                .iter()
                .map(ToString::to_string)
                .collect()
        });
        let max_startups = match &raw.max_startups {
            None => DEFAULT_MAX_STARTUPS,
            Some(value) => match value.get_ref().parse() {
                Ok(limits) => limits,
                Err(message) => {
                    self.problem(value, message);
                    DEFAULT_MAX_STARTUPS
                }
            },
        };
        let max_startups_per_source = self.at_least_one(
            raw.max_startups_per_source.as_ref(),
            max_startups.default_per_source(),
            "[sshd] max_startups_per_source",
        );
        let max_sessions = self.at_least_one(
            raw.max_sessions.as_ref(),
            DEFAULT_MAX_SESSIONS,
            "[sshd] max_sessions",
        );
        Some(SshdConfig {
            listen: listen?,
            host_key,
            authorized_keys,
            allow_root: raw.allow_root,
            tell_unknown_users: raw.tell_unknown_users.unwrap_or(true),
            login_grace_time,
            max_auth_tries: raw.max_auth_tries.unwrap_or(DEFAULT_MAX_AUTH_TRIES).max(1),
            max_startups,
            max_startups_per_source,
            max_sessions,
            keepalive_interval,
        })
    }

    fn slaves(&mut self, raw: &[RawSlave]) -> Vec<SlaveConfig> {
        let mut seen = HashSet::new();
        let mut slaves = Vec::new();
        for slave in raw {
            let name = slave.name.get_ref();
            if !seen.insert(name.clone()) {
                self.problem(&slave.name, format!("slave \"{name}\" is defined twice"));
                continue;
            }
            if !is_valid_login_name(name) {
                self.problem(
                    &slave.name,
                    format!("slave name \"{name}\" is not usable as an SSH login name (use letters, digits, '.', '_' and '-')"),
                );
                continue;
            }
            let Some(public_key) = self.public_key(&slave.public_key) else {
                continue;
            };
            slaves.push(SlaveConfig {
                name: name.clone(),
                public_key,
                max_builds: slave.max_builds.unwrap_or(1).max(1),
            });
        }
        slaves
    }

    /// A slave's key is either the key line itself or the path of a `.pub` file holding it.
    fn public_key(&mut self, value: &Spanned<String>) -> Option<PublicKey> {
        let text = value.get_ref().trim();
        let looks_inline = text.starts_with("ssh-") || text.starts_with("ecdsa-");
        let key_line = if looks_inline {
            text.to_string()
        } else {
            let path = self.resolve(text);
            match std::fs::read_to_string(&path) {
                Ok(contents) => contents.trim().to_string(),
                Err(err) => {
                    let message = format!("cannot read key file {}: {err}", path.display());
                    self.problem(value, message);
                    return None;
                }
            }
        };
        match PublicKey::from_openssh(&key_line) {
            Ok(key) => Some(key),
            Err(err) => {
                self.problem(value, format!("cannot parse public key: {err}"));
                None
            }
        }
    }

    fn builders(
        &mut self,
        raw: &[RawBuilder],
        raw_slaves: &[RawSlave],
        lock_defs: &[crate::master::locks::LockDef],
    ) -> Vec<BuilderConfig> {
        let mut lock_levels = HashMap::new();
        let slave_names: HashSet<&str> = raw_slaves
            .iter()
            .map(|slave| slave.name.get_ref().as_str())
            .collect();
        let mut seen = HashSet::new();
        let mut builders = Vec::new();
        for builder in raw {
            let name = builder.name.get_ref();
            if !seen.insert(name.clone()) {
                self.problem(
                    &builder.name,
                    format!("builder \"{name}\" is defined twice"),
                );
            }
            // The name is a directory on the master (logs/BUILDER) and on slaves.
            // No '~' either: `NAME~2` is where a build of NAME goes while NAME's directory is
            // held for a shell (`master::shell`).
            if name.is_empty()
                || name.contains('/')
                || name.contains('~')
                || name == "."
                || name == ".."
            {
                self.problem(
                    &builder.name,
                    format!(
                        "builder name \"{name}\" must be non-empty, not . or .., and contain no '/' or '~'"
                    ),
                );
            }
            if builder.slaves.is_empty() {
                self.problem(&builder.name, format!("builder \"{name}\" names no slaves"));
            }
            for slave in &builder.slaves {
                if !slave_names.contains(slave.get_ref().as_str()) {
                    let message = format!(
                        "builder \"{name}\" names slave \"{}\", which is not defined by any [[slave]]{}",
                        slave.get_ref(),
                        suggest::hint(slave.get_ref(), slave_names.iter().copied())
                    );
                    self.problem(slave, message);
                }
            }
            let steps = builder
                .steps
                .iter()
                .map(|step| StepConfig {
                    name: step.name.clone(),
                    command: {
                        if let Err(err) = crate::master::interpolate::check(step.command.get_ref())
                        {
                            let message = format!("step \"{}\": {err}", step.name);
                            self.problem(&step.command, message);
                        }
                        step.command.get_ref().clone()
                    },
                    workdir: {
                        if let Some(workdir) = &step.workdir
                            && !is_inside_relative(workdir.get_ref())
                        {
                            let message = format!(
                                "step \"{}\": workdir \"{}\" must be a relative path that stays inside the checkout (no .., not absolute)",
                                step.name,
                                workdir.get_ref()
                            );
                            self.problem(workdir, message);
                        }
                        step.workdir.as_ref().map(|workdir| workdir.get_ref().clone())
                    },
                    env: step.env.clone(),
                    timeout: step
                        .timeout
                        .as_ref()
                        .map(|timeout| self.duration(Some(timeout), Duration::ZERO)),
                    halt_on_failure: step.halt_on_failure.unwrap_or(true),
                    flunk_on_failure: step.flunk_on_failure.unwrap_or(true),
                    warn_on_failure: step.warn_on_failure.unwrap_or(false),
                    locks: self.lock_uses(&step.locks, lock_defs, "step", &mut lock_levels),
                    test_results: self.test_results(&step.name, &step.test_results),
                    artifacts: self
                        .artifact_patterns(&format!("step \"{}\"", step.name), &step.artifacts),
                    when: step.when.unwrap_or_default(),
                    fetch_artifacts: self.fetch_artifacts(&step.name, &step.fetch_artifacts),
                })
                .collect();
            builders.push(BuilderConfig {
                name: name.clone(),
                slaves: builder.slaves.iter().map(|s| s.get_ref().clone()).collect(),
                repo: builder.repo.clone(),
                branch: builder.branch.clone().unwrap_or_else(|| "main".to_string()),
                steps,
                retry_on_slave_lost: builder.retry_on_slave_lost.unwrap_or(true),
                collapse_requests: builder.collapse_requests.unwrap_or(false),
                submodules: builder.submodules,
                locks: self.lock_uses(&builder.locks, lock_defs, "build", &mut lock_levels),
                priority: builder.priority.unwrap_or(0),
                max_concurrent: match &builder.max_concurrent {
                    Some(count) if *count.get_ref() == 0 => {
                        self.problem(count, "max_concurrent must be at least 1".into());
                        None
                    }
                    Some(count) => Some(*count.get_ref()),
                    None => None,
                },
                next_slave: builder.next_slave.unwrap_or_default(),
                trusted: builder.trusted,
                patch_builds_on_slaves: builder.patch_builds_on_slaves,
                patch_submodule_urls: builder.patch_submodule_urls,
                bisect: builder.bisect,
                hold: match &builder.hold {
                    Some(raw) => hold::HoldPolicy {
                        on: raw.on.unwrap_or_default(),
                        hold_for: self.duration(raw.hold_for.as_ref(), hold::DEFAULT_HOLD_FOR),
                    },
                    None => hold::HoldPolicy::default(),
                },
                secrets: builder
                    .secrets
                    .iter()
                    .map(|s| s.get_ref().clone())
                    .collect(),
                secrets_for_patches: builder.secrets_for_patches,
                artifacts: self
                    .artifact_patterns(&format!("builder \"{name}\""), &builder.artifacts),
                artifacts_when: builder.artifacts_when.unwrap_or_default(),
            });
        }
        builders
    }
}

/// Slave names are SSH login names: keep them to what every client passes through untouched.
/// A step's workdir: relative, and never climbing out (`a/./b` is fine, `a/../..` is not).
fn is_inside_relative(workdir: &str) -> bool {
    let path = Path::new(workdir);
    !workdir.is_empty()
        && path.components().all(|component| {
            matches!(
                component,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        })
}

/// An artifact glob: relative, never climbing out (the slave checks again as it walks).
fn is_inside_glob(pattern: &str) -> bool {
    !pattern.is_empty() && !pattern.starts_with('/') && pattern.split('/').all(|part| part != "..")
}

fn is_valid_login_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test";

    pub(super) fn base() -> String {
        format!(
            r#"[master]
name = "t"
[sshd]
listen = "127.0.0.1:0"
authorized_keys = ["authorized_keys.d/%u"]
[[slave]]
name = "s1"
public_key = "{KEY}"
[[builder]]
name = "linux"
slaves = ["s1"]
repo = "/srv/git/p.git"
steps = [ {{ name = "test", command = "make test", timeout = "20m" }} ]
[[scheduler]]
kind = "try"
builders = ["linux"]
"#
        )
    }

    fn problems(text: &str) -> Vec<String> {
        match Config::from_toml(text, Path::new("/m")) {
            Ok(_) => Vec::new(),
            Err(ConfigError(problems)) => problems.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_good_config_validates_with_defaults_filled_in() {
        let config = Config::from_toml(&base(), Path::new("/m")).expect("valid");
        assert_eq!(config.spool.dir, Path::new("/m/spool"));
        assert_eq!(config.spool.max_patch_bytes, DEFAULT_MAX_PATCH_BYTES);
        assert_eq!(config.sshd.host_key, Path::new("/m/host_key"));
        assert_eq!(
            config.builders[0].steps[0].timeout,
            Some(Duration::from_secs(1200))
        );
        assert_eq!(config.try_builders(), vec!["linux"]);
        assert!(!config.sshd.allow_root);
    }

    #[test]
    fn limits_have_defaults_and_are_checked_with_their_lines() {
        let config = Config::from_toml(&base(), Path::new("/m")).expect("valid");
        assert_eq!(config.sshd.max_startups, DEFAULT_MAX_STARTUPS);
        assert_eq!(config.sshd.max_startups_per_source, 25);
        assert_eq!(config.sshd.max_sessions, 10);
        assert_eq!(config.http.max_connections, 512);
        assert_eq!(config.http.max_connections_per_source, 128);
        assert_eq!(config.http.header_read_timeout, Duration::from_secs(30));
        assert_eq!(config.spool.upload_timeout, Duration::from_secs(300));

        let text = base().replace(
            "authorized_keys = [",
            "max_startups = 8\nmax_sessions = 3\nauthorized_keys = [",
        ) + "[http]\nlisten = \"127.0.0.1:0\"\nmax_connections = 64\nheader_read_timeout = \"5s\"\n\
               [spool]\nupload_timeout = \"1m\"\n";
        let config = Config::from_toml(&text, Path::new("/m")).expect("valid");
        assert_eq!(config.sshd.max_startups, MaxStartups::plain(8));
        assert_eq!(config.sshd.max_startups_per_source, 2);
        assert_eq!(config.sshd.max_sessions, 3);
        assert_eq!(config.http.max_connections, 64);
        assert_eq!(config.http.max_connections_per_source, 16);
        assert_eq!(config.http.header_read_timeout, Duration::from_secs(5));
        assert_eq!(config.spool.upload_timeout, Duration::from_secs(60));

        let bad = base().replace(
            "authorized_keys = [",
            "max_startups = \"30:10\"\nmax_sessions = 0\nauthorized_keys = [",
        );
        let found = problems(&bad);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].starts_with("master.toml:5: max_startups = \"30:10\""),
            "{found:?}"
        );
        assert!(
            found[1].starts_with("master.toml:6: [sshd] max_sessions must be at least 1"),
            "{found:?}"
        );
    }

    #[test]
    fn unknown_key_is_reported_with_its_line() {
        let text = base().replace("allow_root", "x").replace(
            "listen = \"127.0.0.1:0\"\n",
            "listen = \"127.0.0.1:0\"\nlisen = 3\n",
        );
        let found = problems(&text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("master.toml:5: unknown field `lisen`"),
            "{found:?}"
        );
    }

    #[test]
    fn every_unknown_key_is_reported_at_once_with_the_other_problems() {
        let text = base()
            .replace("name = \"t\"", "name = \"t\"\nnmae = \"x\"")
            .replace(
                "listen = \"127.0.0.1:0\"\n",
                "listen = \"127.0.0.1:0\"\nalow_root = true\n",
            )
            .replace("timeout = \"20m\"", "timeuot = \"20m\"")
            .replace("slaves = [\"s1\"]", "slaves = [\"ghost\"]")
            + "[extra]\nx = 1\n";
        let found = problems(&text);
        assert_eq!(
            found,
            vec![
                "master.toml:3: unknown field `nmae` in [master] (did you mean `name`?)",
                "master.toml:6: unknown field `alow_root` in [sshd] (did you mean `allow_root`?)",
                "master.toml:13: builder \"linux\" names slave \"ghost\", which is not defined by any [[slave]]",
                "master.toml:15: unknown field `timeuot` in steps 1 of [[builder]] 1 (did you mean `timeout`?)",
                "master.toml:19: unknown field `extra` (not a section of master.toml)",
            ]
        );
    }

    #[test]
    fn every_syntax_error_is_reported() {
        let text = base().replace("name = \"t\"", "name = \"t\nx = = 1");
        let found = problems(&text);
        assert!(found.len() >= 2, "{found:#?}");
        assert!(found[0].starts_with("master.toml:2: "), "{found:#?}");
    }

    #[test]
    fn every_semantic_problem_is_reported_with_its_line() {
        let text = base()
            .replace("slaves = [\"s1\"]", "slaves = [\"s1\", \"ghost\"]")
            .replace("timeout = \"20m\"", "timeout = \"20 parsecs\"")
            .replace("listen = \"127.0.0.1:0\"", "listen = \"localhost\"");
        let found = problems(&text);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(
            found[0].starts_with("master.toml:4: [sshd] listen"),
            "{found:?}"
        );
        assert!(found[1].starts_with("master.toml:11: builder \"linux\" names slave \"ghost\""));
        assert!(found[2].starts_with("master.toml:13: bad duration \"20 parsecs\""));
    }

    #[test]
    fn type_errors_misspellings_and_unsafe_names_are_all_reported_in_one_run_with_suggestions() {
        let text = format!(
            r#"[master]
name = "t"
[sshd]
listen = "127.0.0.1:0"
alow_root = true
authorized_keys = ["authorized_keys.d/%u"]
[[slave]]
name = "s1"
public_key = "{KEY}"
[[lock]]
name = "disk"
kind = "master"
[[lock]]
name = "net"
kind = "mastr"
[[builder]]
name = "linux"
slaves = ["s2"]
repo = "/srv/git/p.git"
max_concurrent = "two"
steps = [
  {{ name = "a", command = "make", env = {{ A = 1 }}, timeout = 5 }},
  {{ name = "b", command = "cat <<EOF\n%(prop:x)s\nEOF", workdir = "../..", locks = [ {{ lock = "dsik" }} ] }},
  {{ name = "c", command = "echo `echo %(prop:x)s`", comand = "x" }},
]
[[builder]]
name = ".."
slaves = ["s1"]
repo = "/srv/git/p.git"
steps = []
[[scheduler]]
kind = "brnach"
builders = ["linx"]
"#
        );
        let found = problems(&text);
        let expected = [
            "master.toml:5: unknown field `alow_root` in [sshd] (did you mean `allow_root`?)",
            "master.toml:15: unknown lock kind \"mastr\" (kinds: master, slave) (did you mean `master`?)",
            "master.toml:18: builder \"linux\" names slave \"s2\", which is not defined by any [[slave]] (did you mean `s1`?)",
            "master.toml:20: invalid type: string \"two\", expected usize",
            "master.toml:22: invalid type: integer `1`, expected a string",
            "master.toml:22: invalid type: integer `5`, expected a string",
            "master.toml:23: step \"b\": %(prop:x)s stands in a here-document",
            "master.toml:23: step \"b\": workdir \"../..\" must be a relative path that stays inside the checkout",
            "master.toml:23: lock \"dsik\" is not defined by any [[lock]] (did you mean `disk`?)",
            "master.toml:24: step \"c\": %(prop:x)s stands inside backticks",
            "master.toml:24: unknown field `comand` in steps 3 of [[builder]] 1 (did you mean `command`?)",
            "master.toml:27: builder name \"..\" must be non-empty, not . or .., and contain no '/'",
            "master.toml:32: unknown scheduler kind \"brnach\"",
            "master.toml:33: scheduler names builder \"linx\", which is not defined by any [[builder]] (did you mean `linux`?)",
        ];
        for want in expected {
            assert!(
                found.iter().any(|problem| problem.starts_with(want)),
                "missing {want:?} in {found:#?}"
            );
        }
        assert!(
            found.iter().any(|problem| problem.contains("\"brnach\"")
                && problem.contains("did you mean `branch`")),
            "{found:#?}"
        );
    }

    /// An unknown variant has no stand-in of its own type: its key is taken out after the
    /// stand-ins of other types, reported once, and the mistakes after it still show.
    #[test]
    fn an_unknown_variant_is_reported_once_and_later_mistakes_still_are() {
        let text = base().replace(
            "steps = [",
            "hold = { on = \"fail\", for = \"10m\" }\nsteps = [",
        ) + "[retention]\nlog = \"30d\"\n";
        let found = problems(&text);
        let hold: Vec<_> = found.iter().filter(|p| p.contains(":13:")).collect();
        assert_eq!(
            hold,
            [
                "master.toml:13: unknown variant `fail`, expected one of `failure`, `always`, `never`"
            ],
            "{found:#?}"
        );
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("master.toml:19: unknown field `log` in [retention]")),
            "{found:#?}"
        );
        // A required key with an unknown variant stays present (no "missing field"), and the
        // checks after it still run.
        let text = base().replace(
            "steps = [",
            "artifacts = [\"../x\"]\nsteps = [ { name = \"f\", command = \"true\", fetch_artifacts = [ { from = \"above\", path = \"dist/*\" } ] },",
        );
        let found = problems(&text);
        let line_14: Vec<_> = found.iter().filter(|p| p.contains(":14:")).collect();
        assert_eq!(
            line_14,
            ["master.toml:14: unknown variant `above`, expected `upstream` or `build`"],
            "{found:#?}"
        );
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("master.toml:13:") && p.contains("../x")),
            "{found:#?}"
        );
    }

    #[test]
    fn unreadable_key_file_and_bad_key_are_reported() {
        let text = base().replace(KEY, "keys/missing.pub");
        let found = problems(&text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("master.toml:8: cannot read key file /m/keys/missing.pub"));
        let text = base().replace(KEY, "ssh-ed25519 AAAAnotbase64");
        let found = problems(&text);
        assert!(
            found[0].starts_with("master.toml:8: cannot parse public key"),
            "{found:?}"
        );
    }

    #[test]
    fn scheduler_naming_an_unknown_builder_is_reported() {
        let text = base().replace("builders = [\"linux\"]", "builders = [\"linux\", \"mac\"]");
        let found = problems(&text);
        assert_eq!(found.len(), 1);
        assert!(
            found[0].contains("builder \"mac\", which is not defined"),
            "{found:?}"
        );
    }

    #[test]
    fn the_admin_group_must_exist() {
        let text = base().replace(
            "name = \"t\"",
            "name = \"t\"\nadmin_group = \"no-such-group-xyz\"",
        );
        let found = problems(&text);
        assert_eq!(
            found,
            vec![
                "master.toml:3: admin_group \"no-such-group-xyz\" is not a unix group on this host"
                    .to_string()
            ]
        );
        let text = base().replace("name = \"t\"", "name = \"t\"\nadmin_group = \"root\"");
        let config = Config::from_toml(&text, Path::new("/m")).expect("valid");
        assert_eq!(config.operators.as_deref(), Some("root"));
    }

    #[test]
    fn the_irc_section_reads_with_defaults_and_reports_mistakes_on_their_lines() {
        let config = Config::from_toml(&base(), Path::new("/m")).expect("valid");
        assert!(config.irc.is_none(), "no [irc]: no bot");
        let text = base()
            + r##"
[irc]
server = "irc.example.org:6697"
tls = true
nick = "ci-bot"
channels = ["#ci"]
link_ttl = "1h"
line_interval = "500ms"
"##;
        let irc = Config::from_toml(&text, Path::new("/m"))
            .expect("valid")
            .irc
            .expect("[irc] read");
        assert_eq!(
            (irc.host.as_str(), irc.port, irc.tls),
            ("irc.example.org", 6697, true)
        );
        assert_eq!(irc.nick, "ci-bot");
        assert_eq!(irc.alt_nicks[0], "ci-bot_");
        assert_eq!(irc.link_ttl, Duration::from_secs(3600));
        assert_eq!(irc.line_interval, Duration::from_millis(500));
        assert_eq!(irc.notify, irc::DEFAULT_NOTIFY.to_vec());
        assert_eq!(irc.max_lines, 8);
        let text = base()
            + r##"
[irc]
server = "irc.example.org"
nick = "9lives"
channels = ["ci"]
notify = ["failure", "sometimes"]
"##;
        assert_eq!(
            problems(&text),
            vec![
                "master.toml:19: [irc] server = \"irc.example.org\" is not HOST:PORT (write it like \"irc.example.org:6697\")",
                "master.toml:20: [irc] nick \"9lives\" is not a valid IRC nick",
                "master.toml:21: [irc] channel \"ci\" is not a channel name (write it like \"#ci\")",
                "master.toml:22: [irc] notify: unknown event \"sometimes\" (one of: started, finished, success, failure, exception, interrupted, fixed, broken)",
            ]
        );
    }

    #[test]
    fn line_index_counts_from_one() {
        let index = LineIndex::new("a\nb\nc");
        assert_eq!(index.line_of(0), 1);
        assert_eq!(index.line_of(2), 2);
        assert_eq!(index.line_of(4), 3);
    }

    #[test]
    fn every_scheduler_kind_reads_with_its_settings() {
        let text = base()
            + r#"
[[scheduler]]
kind = "branch"
name = "main"
builders = ["linux"]
branches = ["main", "release/*"]
tree_stable_timer = "2s"
files = ["src/**"]
[[scheduler]]
kind = "periodic"
name = "hourly"
builders = ["linux"]
interval = "1h"
only_if_changed = true
[[scheduler]]
kind = "nightly"
name = "night"
builders = ["linux"]
cron = "0 3 * * *"
branch = "main"
[[scheduler]]
kind = "dependent"
name = "after"
builders = ["linux"]
upstream = "main"
[[change_source]]
kind = "git-poll"
repo = "https://example.org/p.git"
branches = ["main"]
interval = "30s"
"#;
        let config = Config::from_toml(&text, Path::new("/m")).expect("valid");
        assert_eq!(config.schedulers.len(), 5);
        assert!(matches!(
            &config.schedulers[1].kind,
            SchedulerKind::Branch { tree_stable_timer, files, .. }
                if *tree_stable_timer == Duration::from_secs(2) && files.len() == 1
        ));
        assert_eq!(config.change_sources[0].interval, Duration::from_secs(30));
        assert!(
            config.may_force("linux"),
            "no force scheduler: every builder"
        );
    }

    #[test]
    fn scheduler_mistakes_are_reported_on_their_lines() {
        let text = base()
            + r#"
[[scheduler]]
kind = "branch"
name = "main"
builders = ["linux"]
branches = ["main"]
cron = "0 3 * * *"
[[scheduler]]
kind = "nightly"
name = "night"
builders = ["linux"]
cron = "every night"
[[scheduler]]
kind = "dependent"
name = "after"
builders = ["linux"]
upstream = "nothing"
[[scheduler]]
kind = "hourly"
builders = ["linux"]
[[scheduler]]
kind = "periodic"
builders = ["linux"]
interval = "1h"
"#;
        let found = problems(&text);
        assert_eq!(found.len(), 5, "{found:#?}");
        assert!(
            found[0].starts_with("master.toml:23: `cron` is not a setting of a branch scheduler"),
            "{found:#?}"
        );
        assert!(
            found[1].starts_with("master.toml:28: cron = \"every night\" is not a cron expression"),
            "{found:#?}"
        );
        assert!(
            found[2].starts_with("master.toml:33: upstream = \"nothing\" names no other"),
            "{found:#?}"
        );
        assert!(
            found[3].starts_with("master.toml:35: unknown scheduler kind \"hourly\""),
            "{found:#?}"
        );
        assert!(
            found[4].starts_with("master.toml:38: a periodic scheduler needs a name"),
            "{found:#?}"
        );
    }

    #[test]
    fn locks_and_pool_settings_read_and_mixed_levels_are_refused() {
        let text = base().replace(
            "steps = [ { name = \"test\", command = \"make test\", timeout = \"20m\" } ]",
            "steps = [ { name = \"test\", command = \"make test\", locks = [ { lock = \"disk\" } ] } ]\nlocks = [ { lock = \"db\", access = \"counting\" } ]\npriority = 5\nmax_concurrent = 2\nnext_slave = \"round_robin\"",
        ) + r#"
[[lock]]
name = "db"
kind = "master"
max_count = 2
[[lock]]
name = "disk"
kind = "slave"
max_count_for_slave = { "s1" = 3 }
"#;
        let config = Config::from_toml(&text, Path::new("/m")).expect("valid");
        let builder = &config.builders[0];
        assert_eq!(
            builder.locks[0].access,
            crate::master::locks::Access::Counting
        );
        assert_eq!(builder.steps[0].locks[0].lock, "disk");
        assert_eq!((builder.priority, builder.max_concurrent), (5, Some(2)));
        assert_eq!(builder.next_slave, NextSlave::RoundRobin);
        assert_eq!(config.locks.len(), 2);

        let mixed = text.replace("lock = \"disk\" } ] } ]", "lock = \"db\" } ] } ]");
        let found = problems(&mixed);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(
            found[0].contains("taken for whole builds and for single steps"),
            "{found:#?}"
        );
        let unknown = text.replace("lock = \"disk\" } ]", "lock = \"nope\" } ]");
        assert!(
            problems(&unknown)[0].contains("lock \"nope\" is not defined"),
            "{:?}",
            problems(&unknown)
        );
    }
}
