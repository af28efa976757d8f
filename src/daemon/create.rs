//! `buildbot create-master DIR`: lays out a new master directory (config from the example,
//! an ed25519 host key, the authorized_keys.d/ directory and the spool maildir, given to the
//! try group with `--try-group`).

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, PrivateKey};

use crate::master::config::CONFIG_FILE;

/// The example configuration shipped in etc/; create-master starts every master from it.
pub const EXAMPLE_CONFIG: &str = include_str!("../../etc/master.toml");
const EXAMPLE_SSH_LISTEN: &str = "listen = \"127.0.0.1:2222\"";
const EXAMPLE_HTTP_LISTEN: &str = "listen = \"127.0.0.1:8010\"";
const EXAMPLE_NAME: &str = "name = \"example\"";

pub struct CreateMaster {
    pub dir: PathBuf,
    /// `[master] name`; the example's when `None`.
    pub name: Option<String>,
    pub ssh_listen: Option<SocketAddr>,
    pub http_listen: Option<SocketAddr>,
    /// Replace an existing master.toml and host key.
    pub force: bool,
    /// The unix group whose members may submit try jobs: the spool is given to it (see
    /// [`SPOOL_MODES`]).
    pub try_group: Option<String>,
}

/// The spool's modes when it is shared with a try group. setgid keeps every file in the group;
/// the sticky bit stops a member from renaming or removing what is not theirs, above all the
/// sub-directories themselves (the master's), so none can be swapped for a symlink. Writers
/// need `tmp/` and `new/`; only the master writes `cur/` and `rejected/`.
pub const SPOOL_MODES: [(&str, u32); 5] = [
    ("", 0o3770),
    ("tmp", 0o3770),
    ("new", 0o3770),
    ("cur", 0o2750),
    ("rejected", 0o2750),
];

/// What was created, for the caller to print.
pub struct Created {
    pub config: PathBuf,
    pub host_key_fingerprint: String,
}

pub fn create_master(request: &CreateMaster) -> anyhow::Result<Created> {
    let dir = &request.dir;
    let config_path = dir.join(CONFIG_FILE);
    let host_key_path = dir.join("host_key");
    if !request.force {
        for existing in [&config_path, &host_key_path] {
            if existing.exists() {
                bail!(
                    "{} already exists; refusing to overwrite a master (use --force to replace its config and host key)",
                    existing.display()
                );
            }
        }
    }
    // A directory that holds something else is not made into a master by accident.
    if !request.force && !config_path.exists() && has_entries(dir) {
        bail!(
            "{} is not empty and holds no master; refusing to create a master in it (pick a new or empty directory, or use --force)",
            dir.display()
        );
    }
    if let Some(name) = &request.name
        && (name.trim().is_empty() || name.chars().any(char::is_control))
    {
        bail!("--name must be a non-empty name without control characters");
    }
    // Before anything is written: a typo in the group name must not leave half a master.
    let try_group = match &request.try_group {
        Some(name) => Some(
            nix::unistd::Group::from_name(name)
                .with_context(|| format!("cannot look up group {name}"))?
                .with_context(|| format!("no such group: {name} (--try-group)"))?,
        ),
        None => None,
    };
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;

    let mut config = EXAMPLE_CONFIG.to_string();
    if let Some(name) = &request.name {
        // A TOML string, quoted and escaped by the toml crate.
        let quoted = toml::Value::String(name.clone()).to_string();
        config = config.replacen(EXAMPLE_NAME, &format!("name = {quoted}"), 1);
    }
    if let Some(addr) = request.ssh_listen {
        config = config.replacen(EXAMPLE_SSH_LISTEN, &format!("listen = \"{addr}\""), 1);
    }
    if let Some(addr) = request.http_listen {
        config = config.replacen(EXAMPLE_HTTP_LISTEN, &format!("listen = \"{addr}\""), 1);
    }
    write_file(&config_path, config.as_bytes(), 0o644)?;

    let host_key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
        .context("cannot generate the host key")?;
    let private = host_key
        .to_openssh(LineEnding::LF)
        .context("cannot encode the host key")?;
    write_file(&host_key_path, private.as_bytes(), 0o600)?;
    let public = host_key
        .public_key()
        .to_openssh()
        .context("cannot encode the host public key")?;
    write_file(
        &dir.join("host_key.pub"),
        format!("{public}\n").as_bytes(),
        0o644,
    )?;

    let keys_dir = dir.join("authorized_keys.d");
    fs::create_dir_all(&keys_dir)
        .with_context(|| format!("cannot create {}", keys_dir.display()))?;
    let spool = dir.join("spool");
    for sub in crate::spool::maildir::SUBDIRS {
        let path = spool.join(sub);
        fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
    }
    if let Some(group) = try_group {
        share_spool(&spool, &group)?;
    }
    Ok(Created {
        config: config_path,
        host_key_fingerprint: crate::sshd::fingerprint(host_key.public_key()),
    })
}

/// Whether `dir` exists and has anything in it.
fn has_entries(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some())
}

/// Gives the spool to the try group with [`SPOOL_MODES`]. The master's uid keeps owning every
/// directory (the master refuses a spool whose sub-directories belong to anyone else).
fn share_spool(spool: &Path, group: &nix::unistd::Group) -> anyhow::Result<()> {
    for (sub, mode) in SPOOL_MODES {
        let path = if sub.is_empty() {
            spool.to_path_buf()
        } else {
            spool.join(sub)
        };
        nix::unistd::chown(&path, None, Some(group.gid))
            .with_context(|| format!("cannot give {} to group {}", path.display(), group.name))?;
        // After chown, which clears setgid on some systems.
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    }
    Ok(())
}

/// Writes a file with the given mode from the start (a key is never briefly world-readable).
fn write_file(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    // An existing file keeps its old mode through open(); set it explicitly.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}
