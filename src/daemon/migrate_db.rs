//! `buildbot migrate-db DIR --to URL`: the history of the master in DIR (its SQLite file) is
//! copied into an empty PostgreSQL database, so a single master becomes the first of a cluster
//! without losing its builds, changes or web sessions. The master must be stopped: a history
//! that changes while it is copied would be copied half.

use std::path::Path;

use anyhow::Context;

use crate::daemon::pidfile::{Running, running_master};
use crate::master::config::database::redact_password;
use crate::master::store::postgres::PgStore;

/// Copies and prints what was copied, one line per table.
pub async fn run(master_dir: &Path, url: &str) -> anyhow::Result<()> {
    if let Running::Pid(pid) = running_master(master_dir)? {
        anyhow::bail!(
            "the master in {} is running (pid {pid}); stop it first: a history that changes while it is copied would be copied half",
            master_dir.display()
        );
    }
    let sqlite = master_dir.join("state.sqlite");
    if !sqlite.is_file() {
        anyhow::bail!(
            "there is no history to copy: {} does not exist",
            sqlite.display()
        );
    }
    let shown = redact_password(url);
    let store = PgStore::connect(url)
        .await
        // Its errors name the server (never the password) themselves.
        .context("cannot open the database")?;
    let copied = store
        .copy_from_sqlite(&sqlite)
        .await
        .with_context(|| format!("cannot copy {} into {shown}", sqlite.display()))?;
    for (table, rows) in &copied.tables {
        println!("{table}: {rows} rows");
    }
    println!(
        "copied {} into {shown}; set [database] url in master.toml to use it",
        sqlite.display()
    );
    Ok(())
}
