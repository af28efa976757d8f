//! `slave.toml`: what a slave needs to reach its masters, and `create-slave`, which writes it
//! with a fresh key.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, PrivateKey, PublicKey};
use serde::Deserialize;
use toml::Spanned;

use crate::durations::parse_duration;
use crate::slave::checkout::{PatchLimits, PatchRunner};

pub const CONFIG_FILE: &str = "slave.toml";
const KEY_FILE: &str = "slave_key";

/// The validated configuration of a slave.
#[derive(Debug, Clone)]
pub struct SlaveConfig {
    pub dir: PathBuf,
    pub name: String,
    /// `HOST:PORT` of each master's SSH server, in the order the slave dials them: never
    /// empty, no address twice (`master = "a:2222"` is a list of one).
    pub masters: Vec<String>,
    /// The pinned host key, one for every master of the cluster (they share one host key).
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
    master: Spanned<RawMasters>,
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

/// `master`: one address, or a list of them (each with its place in the file, for errors).
#[derive(Debug)]
enum RawMasters {
    One(String),
    List(Vec<Spanned<String>>),
}

impl<'de> Deserialize<'de> for RawMasters {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // By hand rather than `#[serde(untagged)]`: an untagged enum buffers its input, which
        // loses the spans of the list's entries.
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawMasters;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"HOST:PORT\" or a list of them, [\"a:2222\", \"b:2222\"]")
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<RawMasters, E> {
                Ok(RawMasters::One(value.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RawMasters, A::Error> {
                let mut list = Vec::new();
                while let Some(entry) = seq.next_element()? {
                    list.push(entry);
                }
                Ok(RawMasters::List(list))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

type Problem = (Option<std::ops::Range<usize>>, String);

impl RawMasters {
    /// The validated addresses, or the first problem with the span of the entry at fault
    /// (`None`: the value as a whole).
    fn check(&self) -> Result<Vec<String>, Problem> {
        let entries: Vec<(Option<std::ops::Range<usize>>, &str)> = match self {
            RawMasters::One(address) => vec![(None, address.as_str())],
            RawMasters::List(list) => list
                .iter()
                .map(|entry| (Some(entry.span()), entry.get_ref().as_str()))
                .collect(),
        };
        check_masters(entries)
    }
}

/// Each entry is `HOST:PORT` and none is named twice; at least one.
fn check_masters(
    entries: Vec<(Option<std::ops::Range<usize>>, &str)>,
) -> Result<Vec<String>, Problem> {
    if entries.is_empty() {
        return Err((
            None,
            "the list is empty; name at least one master as \"HOST:PORT\"".to_string(),
        ));
    }
    let mut masters: Vec<String> = Vec::with_capacity(entries.len());
    for (span, address) in entries {
        check_address(address).map_err(|problem| (span.clone(), problem))?;
        // Host names are case-insensitive: "CI:2222" and "ci:2222" are one master.
        if masters
            .iter()
            .any(|seen| seen.eq_ignore_ascii_case(address))
        {
            return Err((span, format!("{address:?} is listed twice")));
        }
        masters.push(address.to_string());
    }
    Ok(masters)
}

/// Checks that `address` is `HOST:PORT` (`[IPV6]:PORT` for an IPv6 address) with a port
/// from 1 to 65535. The host is a DNS name or an IP address, nothing else: create-slave writes
/// the address into slave.toml between quotes, and logs print it as it is.
pub fn check_address(address: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{address:?} is not HOST:PORT ({why})"));
    let Some((host, port)) = address.rsplit_once(':') else {
        return bad("no port");
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return bad("the port is not a number");
    }
    if !matches!(port.parse::<u16>(), Ok(1..)) {
        return bad("the port is not between 1 and 65535");
    }
    if let Some(inner) = host.strip_prefix('[') {
        let Some(ip) = inner.strip_suffix(']') else {
            return bad("an unclosed [");
        };
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return bad("not an IPv6 address between [ ]");
        }
        return Ok(());
    }
    if host.is_empty() {
        return bad("no host");
    }
    if host.contains(':') {
        return bad("write an IPv6 address between [ ], as [::1]:2222");
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return bad("the host has characters no host name has");
    }
    Ok(())
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
        SlaveConfig::from_text(dir, &text)
    }

    /// Validates the text of `DIR/slave.toml`; paths are resolved against `dir`.
    fn from_text(dir: PathBuf, text: &str) -> anyhow::Result<SlaveConfig> {
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let raw: RawFile = toml::from_str(text).map_err(|err| {
            let line = err.span().map(|span| line_of(span.start)).unwrap_or(0);
            anyhow::anyhow!("{CONFIG_FILE}:{line}: {}", err.message().trim())
        })?;
        let raw = raw.slave;
        let masters = raw.master.get_ref().check().map_err(|(span, problem)| {
            let offset = span.unwrap_or_else(|| raw.master.span()).start;
            anyhow::anyhow!("{CONFIG_FILE}:{}: master: {problem}", line_of(offset))
        })?;
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
            masters,
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
    masters: &[String],
    name: &str,
    master_host_key: Option<&str>,
    force: bool,
) -> anyhow::Result<String> {
    let masters = check_masters(masters.iter().map(|m| (None, m.as_str())).collect())
        .map_err(|(_, problem)| anyhow::anyhow!("--master: {problem}"))?;
    // Addresses are checked to be plain host names or IP addresses, so quoting is enough.
    let master_value = match masters.as_slice() {
        [one] => format!("\"{one}\""),
        several => format!(
            "[{}]",
            several
                .iter()
                .map(|m| format!("\"{m}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
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
         master = {master_value}\n\
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

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGbTAV0bmY2u/MdBdgBsGcxKCf7Bi+nMEcaJmkrpkd61 master";

    fn parse(master: &str) -> anyhow::Result<SlaveConfig> {
        let text = format!("[slave]\nname = \"s1\"\n{master}\nmaster_host_key = \"{KEY}\"\n");
        SlaveConfig::from_text(PathBuf::from("/s"), &text)
    }

    fn error(master: &str) -> String {
        match parse(master) {
            Ok(config) => panic!("accepted {master}: {:?}", config.masters),
            Err(err) => format!("{err:#}"),
        }
    }

    #[test]
    fn one_master_as_a_string_is_a_list_of_one() {
        let config = parse("master = \"ci.example.org:2222\"").expect("valid");
        assert_eq!(config.masters, ["ci.example.org:2222"]);
    }

    #[test]
    fn a_list_keeps_its_order() {
        let config = parse("master = [\"b:2222\", \"a:2222\", \"[::1]:22\", \"10.0.0.1:2222\"]")
            .expect("valid");
        assert_eq!(
            config.masters,
            ["b:2222", "a:2222", "[::1]:22", "10.0.0.1:2222"]
        );
    }

    #[test]
    fn an_empty_list_is_refused_on_its_line() {
        assert_eq!(
            error("master = []"),
            "slave.toml:3: master: the list is empty; name at least one master as \"HOST:PORT\""
        );
    }

    #[test]
    fn a_bad_entry_is_named_on_its_own_line() {
        assert_eq!(
            error("master = [\n  \"a:2222\",\n  \"b\",\n]"),
            "slave.toml:5: master: \"b\" is not HOST:PORT (no port)"
        );
        assert_eq!(
            error("master = \"a:http\""),
            "slave.toml:3: master: \"a:http\" is not HOST:PORT (the port is not a number)"
        );
    }

    #[test]
    fn a_master_named_twice_is_refused() {
        assert_eq!(
            error("master = [\"a:2222\", \"b:2222\",\n \"A:2222\"]"),
            "slave.toml:4: master: \"A:2222\" is listed twice"
        );
    }

    #[test]
    fn a_master_of_another_type_is_one_line() {
        let message = error("master = 2222");
        assert!(message.starts_with("slave.toml:3: "), "{message}");
        assert!(
            message.contains("\"HOST:PORT\" or a list of them"),
            "{message}"
        );
        let message = error("master = [\"a:1\", 2]");
        assert!(message.starts_with("slave.toml:3: "), "{message}");
        assert!(!message.contains('\n'), "{message}");
    }

    #[test]
    fn addresses() {
        for good in [
            "a:1",
            "ci.example.org:65535",
            "my_host-2:22",
            "[fe80::1]:2222",
        ] {
            assert_eq!(check_address(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("a", "no port"),
            ("a:", "the port is not a number"),
            ("a:+22", "the port is not a number"),
            ("a:0", "the port is not between 1 and 65535"),
            ("a:65536", "the port is not between 1 and 65535"),
            (":22", "no host"),
            ("::1:22", "write an IPv6 address between [ ], as [::1]:2222"),
            ("[::1:22", "an unclosed ["),
            ("[host]:22", "not an IPv6 address between [ ]"),
            ("a b:22", "the host has characters no host name has"),
            ("a\":22", "the host has characters no host name has"),
        ] {
            assert_eq!(
                check_address(bad),
                Err(format!("{bad:?} is not HOST:PORT ({why})")),
                "{bad}"
            );
        }
    }

    #[test]
    fn create_slave_writes_a_list_and_refuses_duplicates() {
        let dir = tempfile::tempdir().expect("temp dir");
        let masters = ["a:2222".to_string(), "b:2222".to_string()];
        create_slave(dir.path(), &masters, "s1", Some(KEY), false).expect("created");
        let config = SlaveConfig::load(dir.path()).expect("loads");
        assert_eq!(config.masters, masters);

        let twice = ["a:2222".to_string(), "a:2222".to_string()];
        let err = create_slave(&dir.path().join("other"), &twice, "s1", Some(KEY), false)
            .expect_err("refused");
        assert_eq!(format!("{err:#}"), "--master: \"a:2222\" is listed twice");
        assert!(!dir.path().join("other").exists());
    }
}
