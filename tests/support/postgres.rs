//! A private PostgreSQL server for one test binary: started on first use, reachable only on a
//! unix socket in its own temp dir, and gone when the binary exits, however it exits.
//!
//! Use it from a test binary with `#[path = "support/postgres.rs"] mod postgres;` (from
//! `tests/it/main.rs`: `#[path = "../support/postgres.rs"]`), then
//! `postgres::fresh_database().await` for the connection string of a new, empty database.
//!
//! The server runs as the `postgres` account when the tests run as root (initdb refuses root).
//! Cleanup does not rely on the test binary running destructors (statics are never dropped, a
//! panic may abort): a small supervisor shell, in a process group of its own so a Ctrl-C to the
//! tests does not reach it, holds the read end of a pipe whose write end only this process has.
//! When the process is gone, by any exit, the supervisor reads EOF, stops the server
//! (`pg_ctl stop -m immediate`) and removes the temp dir.
//!
//! Missing PostgreSQL binaries fail the test with the reason; nothing is skipped.

#![allow(dead_code)]

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A role that logs in with a password only (every other local login is trusted), for tests
/// of a refused login.
pub const PASSWORD_USER: &str = "pwuser";
pub const PASSWORD: &str = "right-horse-battery";

/// How long initdb, the start and each database creation may take on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(120);

pub struct Cluster {
    /// The directory of the server's socket: `host=` in connection strings.
    pub socket_dir: PathBuf,
    /// The whole temp dir (data, socket, logs), removed by the supervisor.
    pub dir: PathBuf,
    /// Kept only so its stdin, the supervisor's pipe, stays open while this process lives.
    _supervisor: Child,
}

impl Cluster {
    /// A connection string for `dbname` as the superuser.
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "host={} dbname={dbname} user=postgres",
            self.socket_dir.display()
        )
    }
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();

/// The binary's server, started on first use; a test that cannot have one fails with why.
pub fn cluster() -> &'static Cluster {
    match CLUSTER.get_or_init(start) {
        Ok(cluster) => cluster,
        Err(reason) => panic!("cannot start a private PostgreSQL server: {reason}"),
    }
}

/// A new, empty database on the binary's server; returns its connection string
/// (`host=<socket dir> dbname=<name> user=postgres`).
pub async fn fresh_database() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let cluster = cluster();
    let name = format!(
        "test_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let create = async {
        let (client, connection) =
            tokio_postgres::connect(&cluster.url("postgres"), tokio_postgres::NoTls).await?;
        let connection = tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        drop(client);
        let _ = connection.await;
        Ok::<_, tokio_postgres::Error>(())
    };
    match tokio::time::timeout(PATIENCE, create).await {
        Ok(Ok(())) => cluster.url(&name),
        Ok(Err(err)) => panic!("cannot create database {name}: {err:?}"),
        Err(_) => panic!("creating database {name} took longer than {PATIENCE:?}"),
    }
}

/// Runs one statement on `url` (for tests that reach under the store).
pub async fn execute(url: &str, sql: &str) {
    let work = async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        let connection = tokio::spawn(connection);
        client.batch_execute(sql).await?;
        drop(client);
        let _ = connection.await;
        Ok::<_, tokio_postgres::Error>(())
    };
    match tokio::time::timeout(PATIENCE, work).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => panic!("{sql}: {err:?}"),
        Err(_) => panic!("{sql}: no answer within {PATIENCE:?}"),
    }
}

/// The newest PostgreSQL's bin directory, as Debian installs it.
fn find_binaries() -> Result<PathBuf, String> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            ["initdb", "pg_ctl", "postgres"]
                .iter()
                .all(|tool| bin.join(tool).is_file())
                .then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).ok_or_else(|| {
        "PostgreSQL is not installed (no initdb, pg_ctl and postgres under \
         /usr/lib/postgresql/*/bin); scripts/test.sh installs it (apt-get install postgresql)"
            .to_string()
    })
}

/// The command `program args…` as the account that owns the cluster: `postgres` when we are
/// root, else ourselves.
fn as_owner(program: &Path) -> Command {
    if nix::unistd::geteuid().is_root() {
        let mut command = Command::new(runuser());
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn runuser() -> &'static str {
    ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"]
        .into_iter()
        .find(|path| Path::new(path).is_file())
        .unwrap_or("runuser")
}

/// Runs `command` to its end within `limit`, its output to `log`; on failure, says what and
/// the log's last lines.
fn run(mut command: Command, what: &str, log: &Path, limit: Duration) -> Result<(), String> {
    let output = File::create(log).map_err(|err| format!("{}: {err}", log.display()))?;
    let errors = output
        .try_clone()
        .map_err(|err| format!("{}: {err}", log.display()))?;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(output)
        .stderr(errors)
        .spawn()
        .map_err(|err| format!("cannot run {what}: {err}"))?;
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => {
                return Err(format!("{what} failed ({status}): {}", tail(log)));
            }
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what} took longer than {limit:?}: {}", tail(log)));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(err) => return Err(format!("{what}: {err}")),
        }
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Stops the server and removes the temp dir once stdin reaches EOF (this process is gone).
const SUPERVISOR: &str = r#"
trap '' INT HUP
cat >/dev/null
data="$1/data"
if [ -f "$data/postmaster.pid" ]; then
  pid=$(head -n 1 "$data/postmaster.pid")
  if [ "$(id -u)" = 0 ]; then
    "$3" -u postgres -- "$2" -D "$data" stop -m immediate -w -t 30 >/dev/null 2>&1
  else
    "$2" -D "$data" stop -m immediate -w -t 30 >/dev/null 2>&1
  fi
  kill -9 "$pid" 2>/dev/null
fi
rm -rf "$1"
"#;

fn start() -> Result<Cluster, String> {
    let bin = find_binaries()?;
    let root = nix::unistd::geteuid().is_root();
    let owner = if root {
        Some(
            nix::unistd::User::from_name("postgres")
                .map_err(|err| format!("cannot look up the postgres account: {err}"))?
                .ok_or("there is no postgres account to run the server as (we are root)")?,
        )
    } else {
        None
    };
    // Short: a unix socket's path has to fit in about 100 bytes.
    let dir = tempfile::Builder::new()
        .prefix("bbpg")
        .tempdir_in("/tmp")
        .map_err(|err| format!("cannot make a temp dir: {err}"))?
        .keep();
    // The supervisor first, so that whatever happens from here on is cleaned up.
    let supervisor = Command::new("/bin/sh")
        .arg("-c")
        .arg(SUPERVISOR)
        .arg("supervisor")
        .arg(&dir)
        .arg(bin.join("pg_ctl"))
        .arg(runuser())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|err| format!("cannot start the cleanup supervisor: {err}"))?;
    let data = dir.join("data");
    let socket_dir = dir.join("sock");
    std::fs::create_dir(&socket_dir).map_err(|err| format!("{}: {err}", socket_dir.display()))?;
    if let Some(owner) = &owner {
        for path in [&dir, &socket_dir] {
            nix::unistd::chown(path.as_path(), Some(owner.uid), Some(owner.gid))
                .map_err(|err| format!("cannot give {} to postgres: {err}", path.display()))?;
        }
    }
    let mut initdb = as_owner(&bin.join("initdb"));
    initdb.arg("-D").arg(&data).args([
        "-U",
        "postgres",
        "-A",
        "trust",
        "-E",
        "UTF8",
        "--no-locale",
        "-N",
    ]);
    run(initdb, "initdb", &dir.join("initdb.log"), PATIENCE)?;
    // Trusted local logins, except one role that must give its password.
    std::fs::write(
        data.join("pg_hba.conf"),
        format!("local all {PASSWORD_USER} scram-sha-256\nlocal all all trust\n"),
    )
    .map_err(|err| format!("cannot write pg_hba.conf: {err}"))?;
    let mut pg_ctl = as_owner(&bin.join("pg_ctl"));
    pg_ctl
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(dir.join("server.log"))
        .args(["-w", "-t", &PATIENCE.as_secs().to_string(), "-o"])
        .arg(format!(
            "-k {} -c listen_addresses='' -c max_connections=300 -c shared_buffers=16MB \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            socket_dir.display()
        ))
        .arg("start");
    run(
        pg_ctl,
        "pg_ctl start",
        &dir.join("pg_ctl.log"),
        PATIENCE + Duration::from_secs(10),
    )
    .map_err(|err| format!("{err}\n{}", tail(&dir.join("server.log"))))?;
    let psql = bin.join("psql");
    if psql.is_file() {
        let mut create_role = as_owner(&psql);
        create_role
            .arg("-h")
            .arg(&socket_dir)
            .args([
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
            ])
            .arg(format!(
                "CREATE ROLE {PASSWORD_USER} LOGIN PASSWORD '{PASSWORD}'"
            ));
        run(create_role, "psql", &dir.join("psql.log"), PATIENCE)?;
    } else {
        return Err(format!("{} is missing", psql.display()));
    }
    Ok(Cluster {
        socket_dir,
        dir,
        _supervisor: supervisor,
    })
}
