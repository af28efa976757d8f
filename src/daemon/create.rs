//! `buildbot create-master DIR`: lays out a new master directory (config from the example,
//! an ed25519 host key, the authorized_keys.d/ directory and the spool maildir).

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

pub struct CreateMaster {
    pub dir: PathBuf,
    pub ssh_listen: Option<SocketAddr>,
    pub http_listen: Option<SocketAddr>,
    /// Replace an existing master.toml and host key.
    pub force: bool,
}

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
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;

    let mut config = EXAMPLE_CONFIG.to_string();
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
    for sub in ["tmp", "new", "cur"] {
        let path = dir.join("spool").join(sub);
        fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
    }
    Ok(Created {
        config: config_path,
        host_key_fingerprint: crate::sshd::fingerprint(host_key.public_key()),
    })
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
