//! `slave.toml`: what a slave needs to reach its master, and `create-slave`, which writes it
//! with a fresh key.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, PrivateKey, PublicKey};
use serde::Deserialize;

use crate::durations::parse_duration;
use crate::slave::checkout::{PatchLimits, PatchRunner};

pub const CONFIG_FILE: &str = "slave.toml";
const KEY_FILE: &str = "slave_key";

/// The validated configuration of a slave.
#[derive(Debug, Clone)]
pub struct SlaveConfig {
    pub dir: PathBuf,
    pub name: String,
    /// `HOST:PORT` of the master's SSH server.
    pub master: String,
    /// The pinned host key; `None` trusts the first key seen (refused: see `load`).
    pub master_host_key: PublicKey,
    pub key: PathBuf,
    pub workdir: PathBuf,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// How try patches are applied: a child process of this executable, with
    /// `patch_timeout` (default 5m) as its time limit.
    pub patch_runner: PatchRunner,
    /// Run each step in a cgroup of its own where one can be made (default true); false uses
    /// the subreaper mechanism (see `slave::containment`).
    pub step_cgroups: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    slave: RawSlave,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlave {
    name: String,
    master: String,
    master_host_key: String,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    workdir: Option<String>,
    #[serde(default)]
    keepalive_interval: Option<String>,
    #[serde(default)]
    keepalive_timeout: Option<String>,
    #[serde(default)]
    patch_timeout: Option<String>,
    #[serde(default)]
    step_cgroups: Option<bool>,
}

impl SlaveConfig {
    pub fn load(dir: &Path) -> anyhow::Result<SlaveConfig> {
        let dir = std::path::absolute(dir)
            .with_context(|| format!("cannot resolve {}", dir.display()))?;
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|err| {
            if err.kind() == std::io::ErrorKind::NotFound {
                anyhow::anyhow!(
                    "cannot read {}: there is no slave here; make one with `buildbot create-slave {} --master HOST:PORT --name NAME`",
                    path.display(),
                    dir.display()
                )
            } else {
                anyhow::anyhow!("cannot read {}: {err}", path.display())
            }
        })?;
        let raw: RawFile = toml::from_str(&text).map_err(|err| {
            let line = err
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1)
                .unwrap_or(0);
            anyhow::anyhow!("{CONFIG_FILE}:{line}: {}", err.message().trim())
        })?;
        let raw = raw.slave;
        let master_host_key = PublicKey::from_openssh(raw.master_host_key.trim()).with_context(|| {
            format!("{CONFIG_FILE}: master_host_key is not a public key line (copy the master's host_key.pub)")
        })?;
        let duration =
            |value: Option<&String>, default: u64, what: &str| -> anyhow::Result<Duration> {
                match value {
                    Some(text) => parse_duration(text)
                        .map_err(|err| anyhow::anyhow!("{CONFIG_FILE}: {what}: {err}")),
                    None => Ok(Duration::from_secs(default)),
                }
            };
        let keepalive_interval =
            duration(raw.keepalive_interval.as_ref(), 600, "keepalive_interval")?;
        let keepalive_timeout = duration(raw.keepalive_timeout.as_ref(), 30, "keepalive_timeout")?;
        if keepalive_timeout >= keepalive_interval {
            bail!("{CONFIG_FILE}: keepalive_timeout must be shorter than keepalive_interval");
        }
        let patch_timeout = duration(raw.patch_timeout.as_ref(), 300, "patch_timeout")?;
        let patch_runner = PatchRunner::Child {
            program: std::env::current_exe()
                .context("cannot find this executable, which applies try patches")?,
            limits: PatchLimits {
                time: patch_timeout,
                ..PatchLimits::default()
            },
        };
        Ok(SlaveConfig {
            patch_runner,
            name: raw.name,
            master: raw.master,
            master_host_key,
            key: dir.join(raw.key.as_deref().unwrap_or(KEY_FILE)),
            workdir: dir.join(raw.workdir.as_deref().unwrap_or("build")),
            keepalive_interval,
            keepalive_timeout,
            step_cgroups: raw.step_cgroups.unwrap_or(true),
            dir,
        })
    }
}

/// `buildbot create-slave`: writes slave.toml and an ed25519 key; returns the `[[slave]]` block
/// to paste into the master's master.toml.
pub fn create_slave(
    dir: &Path,
    master: &str,
    name: &str,
    master_host_key: Option<&str>,
    force: bool,
) -> anyhow::Result<String> {
    let config_path = dir.join(CONFIG_FILE);
    if config_path.exists() && !force {
        bail!(
            "{} already exists; refusing to overwrite a slave (use --force)",
            config_path.display()
        );
    }
    let host_key_line = match master_host_key {
        Some(line) => {
            PublicKey::from_openssh(line.trim()).context(
                "--master-host-key is not a public key line (copy the master's host_key.pub)",
            )?;
            line.trim().to_string()
        }
        None => bail!(
            "--master-host-key is required: copy the line from the master's host_key.pub, so the slave can tell its master from an impostor"
        ),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
        .context("cannot generate the slave key")?;
    let private = key
        .to_openssh(LineEnding::LF)
        .context("cannot encode the slave key")?;
    let key_path = dir.join(KEY_FILE);
    write_new(&key_path, private.as_bytes(), 0o600, force)?;
    let public = key
        .public_key()
        .to_openssh()
        .context("cannot encode the public key")?;
    write_new(
        &dir.join(format!("{KEY_FILE}.pub")),
        format!("{public} {name}\n").as_bytes(),
        0o644,
        force,
    )?;
    let config = format!(
        "# slave.toml, written by buildbot create-slave. See etc/slave.toml for every setting.\n\
         [slave]\n\
         name = \"{name}\"\n\
         master = \"{master}\"\n\
         master_host_key = \"{host_key_line}\"\n\
         key = \"{KEY_FILE}\"\n\
         workdir = \"build\"\n\
         keepalive_interval = \"10m\"\n\
         keepalive_timeout = \"30s\"\n"
    );
    write_new(&config_path, config.as_bytes(), 0o644, force)?;
    Ok(format!(
        "[[slave]]\nname = \"{name}\"\npublic_key = \"{public} {name}\"\n"
    ))
}

fn write_new(path: &Path, contents: &[u8], mode: u32, force: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(mode);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}
