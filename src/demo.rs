//! `buildbot demo`: the one-command way to see it work. In a temp dir it creates a master on
//! free loopback ports, one slave, an example builder over a small generated git repository,
//! then submits a try of a sample change through the real SSH path (`buildbot try` with the
//! OpenSSH client), prints the web URL and the build's result, and keeps running until Ctrl-C,
//! when it stops everything and removes the temp dir.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, PrivateKey};
use tokio_util::sync::CancellationToken;

use crate::client::try_cmd::{self, TryArgs};
use crate::daemon::create::{CreateMaster, create_master};
use crate::slave::{SlaveConfig, create_slave};

const SLAVE_NAME: &str = "demo-slave";

/// Runs the demo until `shutdown` is cancelled.
pub async fn run(shutdown: CancellationToken) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("buildbot-demo-")
        .tempdir()
        .context("cannot create a temp dir")?;
    let root = tmp.path().to_path_buf();
    println!(
        "demo directory: {} (removed when the demo stops)",
        root.display()
    );
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .context("cannot find the current user's account")?
        .name;

    let master_dir = root.join("master");
    create_master(&CreateMaster {
        dir: master_dir.clone(),
        name: Some("demo".to_string()),
        ssh_listen: "127.0.0.1:0".parse().ok(),
        http_listen: "127.0.0.1:0".parse().ok(),
        force: false,
        // The demo submits over SSH, where the master itself writes the spool.
        try_group: None,
    })?;
    let project = root.join("project");
    make_project(&project)?;
    let user_key = write_user_key(&root, &master_dir, &user)?;
    let host_key = std::fs::read_to_string(master_dir.join("host_key.pub"))?;
    let slave_dir = root.join("slave");
    // The slave's master address is known once the master listens; fixed up below.
    let slave_block = create_slave(
        &slave_dir,
        &["127.0.0.1:1".to_string()],
        SLAVE_NAME,
        Some(host_key.trim()),
        false,
    )?;
    configure_master(&master_dir, &project, &slave_block)?;

    let (listening_tx, listening_rx) = tokio::sync::oneshot::channel();
    let master = {
        let shutdown = shutdown.clone();
        let master_dir = master_dir.clone();
        tokio::spawn(async move {
            crate::daemon::run(&master_dir, shutdown, move |listening| {
                let _ = listening_tx.send((
                    listening.ssh,
                    listening.http,
                    listening.host_key_fingerprint.clone(),
                ));
            })
            .await
        })
    };
    let Ok((ssh, http, fingerprint)) = listening_rx.await else {
        return match master.await {
            Ok(Err(err)) => Err(err),
            _ => Err(anyhow::anyhow!("the demo master did not start")),
        };
    };
    println!("master: ssh {ssh}, web http://{http}/, host key {fingerprint}");

    let slave_toml = slave_dir.join(crate::slave::config::CONFIG_FILE);
    let config = std::fs::read_to_string(&slave_toml)?.replace("127.0.0.1:1", &ssh.to_string());
    std::fs::write(&slave_toml, config)?;
    let slave_config = SlaveConfig::load(&slave_dir)?;
    let slave = tokio::spawn(crate::slave::run(slave_config, shutdown.clone()));

    let work = root.join("work");
    git(
        &root,
        &["clone", "-q", project.to_str().unwrap_or_default(), "work"],
    )?;
    git(&work, &["config", "user.name", "Demo Developer"])?;
    git(&work, &["config", "user.email", "developer@example.org"])?;
    std::fs::write(
        work.join("greet.sh"),
        "#!/bin/sh\n# The sample change: a friendlier greeting.\necho \"Hello from buildbot, $1!\"\n",
    )?;
    println!("\nsubmitting a try of a sample change (buildbot try --wait over ssh):\n");
    let args = TryArgs {
        wait: true,
        host: Some("127.0.0.1".into()),
        port: Some(ssh.port()),
        username: Some(user),
        ssh: Some(format!(
            "ssh -F /dev/null -i {} -o BatchMode=yes -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
            user_key.display()
        )),
        comment: Some("the demo's sample change".into()),
        ..TryArgs::default()
    };
    let outcome = tokio::task::spawn_blocking(move || try_cmd::run(&args, &work)).await?;
    match outcome {
        Ok(try_cmd::EXIT_OK) => println!("\nresult: success"),
        Ok(code) => println!("\nresult: the build failed (try exited {code})"),
        Err(err) => println!("\nresult: the try did not go through: {err}"),
    }
    println!("web page: http://{http}/builders/demo/builds/1");
    println!("the demo keeps running; press Ctrl-C to stop it");
    shutdown.cancelled().await;
    let _ = master.await;
    let _ = slave.await;
    drop(tmp);
    println!("demo stopped; its directory is removed");
    Ok(())
}

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("git")
        .args([
            "-c",
            "user.name=Demo",
            "-c",
            "user.email=demo@example.org",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .context("cannot run git (the demo needs it)")?;
    if !output.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// A tiny project with a test, committed on main.
fn make_project(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    git(dir, &["init", "-q"])?;
    std::fs::write(dir.join("greet.sh"), "#!/bin/sh\necho \"Hello, $1!\"\n")?;
    std::fs::write(
        dir.join("test.sh"),
        "#!/bin/sh\nset -e\nout=$(sh greet.sh world)\necho \"greet.sh says: $out\"\ncase \"$out\" in *world*) echo PASS ;; *) echo FAIL; exit 1 ;; esac\n",
    )?;
    git(dir, &["add", "."])?;
    git(dir, &["commit", "-q", "-m", "A tiny project"])
}

/// A key for the current user, authorized on the demo master only.
fn write_user_key(root: &Path, master_dir: &Path, user: &str) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let key =
        PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).context("cannot make a key")?;
    let path = root.join("user_key");
    std::fs::write(&path, key.to_openssh(LineEnding::LF)?.as_bytes())?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let public = key.public_key().to_openssh()?;
    std::fs::write(
        master_dir.join("authorized_keys.d").join(user),
        format!("{public} demo\n"),
    )?;
    Ok(path)
}

fn configure_master(master_dir: &Path, project: &Path, slave_block: &str) -> anyhow::Result<()> {
    let path = master_dir.join(crate::master::config::CONFIG_FILE);
    let mut config = std::fs::read_to_string(&path)?;
    config = config
        .replace("name = \"example\"", "name = \"demo\"")
        .replace(
            "authorized_keys = [\"%h/.ssh/authorized_keys\", \"authorized_keys.d/%u\"]",
            "authorized_keys = [\"authorized_keys.d/%u\"]",
        )
        // The demo runs as whoever starts it, root included.
        .replace("allow_root = false", "allow_root = true");
    config.push('\n');
    config.push_str(slave_block);
    config.push_str(&format!(
        "\n[[builder]]\nname = \"demo\"\nslaves = [\"{SLAVE_NAME}\"]\nrepo = \"{}\"\nbranch = \"main\"\n\
         steps = [\n  {{ name = \"test\", command = \"sh test.sh\", timeout = \"1m\" }},\n]\n\
         \n[[scheduler]]\nkind = \"try\"\nbuilders = [\"demo\"]\n",
        project.display()
    ));
    std::fs::write(&path, config)?;
    Ok(())
}
