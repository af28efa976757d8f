//! The `.buildbot` file: connection defaults for `buildbot try` and `buildbot watch`, found in
//! the current directory or the nearest parent (so one file at the top of a checkout serves the
//! whole tree). TOML; command-line flags override it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const FILE_NAME: &str = ".buildbot";

/// What a `.buildbot` file may say. Every field is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DotBuildbot {
    /// The master's host name or address.
    pub host: Option<String>,
    /// The master's SSH port (default: ssh's own default, usually 22).
    pub port: Option<u16>,
    /// The unix account on the master (default: ssh's own default).
    pub username: Option<String>,
    /// Builders to try on when no -b is given (default: all try builders).
    #[serde(default)]
    pub builders: Vec<String>,
    /// The ssh command to run, e.g. "ssh -i ~/.ssh/ci_key" (default: "ssh").
    pub ssh: Option<String>,
    /// Pin the master's host key ("ssh-ed25519 AAAA..."), instead of trusting known_hosts.
    pub master_host_key: Option<String>,
    /// Who the job says it is from (default: git's user.name <user.email>).
    pub who: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DotfileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
}

/// Finds and reads the nearest `.buildbot` file at or above `start`. A `.buildbot` directory
/// (classic Buildbot's `.buildbot/options`) is not ours and is passed over.
pub fn find(start: &Path) -> Result<Option<(PathBuf, DotBuildbot)>, DotfileError> {
    for dir in start.ancestors() {
        let path = dir.join(FILE_NAME);
        if !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|source| DotfileError::Read {
            path: path.clone(),
            source,
        })?;
        let parsed = parse(&text).map_err(|message| DotfileError::Parse {
            path: path.clone(),
            message,
        })?;
        return Ok(Some((path, parsed)));
    }
    Ok(None)
}

/// Parses the text of a `.buildbot` file; errors name the line.
pub fn parse(text: &str) -> Result<DotBuildbot, String> {
    toml::from_str(text).map_err(|err| {
        let line = err
            .span()
            .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
        match line {
            Some(line) => format!("line {line}: {}", err.message().trim()),
            None => err.message().trim().to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn found_in_the_nearest_parent() {
        let top = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            top.path().join(FILE_NAME),
            "host = \"ci.example.org\"\nport = 2222\nbuilders = [\"linux\"]\n",
        )
        .expect("write");
        let deep = top.path().join("src/deep");
        std::fs::create_dir_all(&deep).expect("dirs");
        let (path, found) = find(&deep).expect("readable").expect("found");
        assert_eq!(path, top.path().join(FILE_NAME));
        assert_eq!(found.host.as_deref(), Some("ci.example.org"));
        assert_eq!(found.port, Some(2222));
        assert_eq!(found.builders, vec!["linux".to_string()]);
    }

    #[test]
    fn unknown_keys_name_their_line() {
        let err = parse("host = \"h\"\nprot = 22\n").expect_err("unknown key");
        assert!(err.starts_with("line 2: unknown field `prot`"), "{err}");
    }
}
