//! `[[land]]`: the merge queue of one target branch (`buildbot land`, docs/land.md). Which
//! builders must pass on the rebased tree, who may land (a unix group; by default whoever may
//! try), where the result is pushed, how many entries are tested at once and how often a
//! series is re-tested after the target moved.

use std::collections::HashMap;

use serde::Deserialize;
use toml::Spanned;

use super::{BuilderConfig, Checker};

/// Re-tests after the target moved during a test, then the entry is rejected.
pub const DEFAULT_RETRIES: u32 = 3;
/// More speculative entries than this would only queue builds behind each other.
pub const MAX_WINDOW: usize = 32;

#[derive(Debug, Clone, PartialEq)]
pub struct LandConfig {
    /// The target branch of the builders' repository.
    pub branch: String,
    /// Every one of them must pass on the rebased tree; they share one repository.
    pub builders: Vec<String>,
    /// Members of this unix group may land onto the branch; none: whoever may try.
    pub group: Option<String>,
    /// Where the tested commits are pushed (default: the builders' repository).
    pub push_url: String,
    /// The builders' repository, where the target's tip is fetched from.
    pub repo: String,
    /// Entries tested at once, each on top of those ahead of it (default 1).
    pub window: usize,
    /// Re-tests after the target moved during a test (default 3).
    pub retries: u32,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawLand {
    branch: Spanned<String>,
    builders: Spanned<Vec<String>>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    push_url: Option<String>,
    #[serde(default)]
    window: Option<Spanned<usize>>,
    #[serde(default)]
    retries: Option<u32>,
}

impl Checker<'_> {
    pub(super) fn lands(&mut self, raw: &[RawLand], builders: &[BuilderConfig]) -> Vec<LandConfig> {
        let mut seen: HashMap<&str, ()> = HashMap::new();
        let mut lands = Vec::new();
        for land in raw {
            let branch = land.branch.get_ref().trim();
            if branch.is_empty() || !is_branch_name(branch) {
                self.problem(
                    &land.branch,
                    format!("[[land]] branch = \"{branch}\" is not a branch name"),
                );
                continue;
            }
            if seen.insert(branch, ()).is_some() {
                self.problem(
                    &land.branch,
                    format!("[[land]] branch \"{branch}\" has two [[land]] sections"),
                );
                continue;
            }
            if land.builders.get_ref().is_empty() {
                self.problem(
                    &land.builders,
                    format!("[[land]] {branch}: builders must name at least one builder"),
                );
                continue;
            }
            let mut repo: Option<&str> = None;
            let mut ok = true;
            for name in land.builders.get_ref() {
                match builders.iter().find(|builder| &builder.name == name) {
                    None => {
                        self.problem(
                            &land.builders,
                            format!("[[land]] {branch}: no builder named \"{name}\""),
                        );
                        ok = false;
                    }
                    Some(builder) if builder.trusted => {
                        self.problem(
                            &land.builders,
                            format!("[[land]] {branch}: builder \"{name}\" is trusted and never builds a series (a patch build)"),
                        );
                        ok = false;
                    }
                    Some(builder) => match repo {
                        Some(first) if first != builder.repo => {
                            self.problem(
                                &land.builders,
                                format!(
                                    "[[land]] {branch}: builder \"{name}\" builds {} but the others {first}; the builders of a branch share its repository",
                                    builder.repo
                                ),
                            );
                            ok = false;
                        }
                        _ => repo = Some(&builder.repo),
                    },
                }
            }
            let window = match &land.window {
                Some(window) if *window.get_ref() == 0 || *window.get_ref() > MAX_WINDOW => {
                    self.problem(
                        window,
                        format!("[[land]] {branch}: window must be between 1 and {MAX_WINDOW}"),
                    );
                    1
                }
                Some(window) => *window.get_ref(),
                None => 1,
            };
            let (true, Some(repo)) = (ok, repo) else {
                continue;
            };
            lands.push(LandConfig {
                branch: branch.to_string(),
                builders: land.builders.get_ref().clone(),
                group: land.group.clone().filter(|group| !group.trim().is_empty()),
                push_url: land.push_url.clone().unwrap_or_else(|| repo.to_string()),
                repo: repo.to_string(),
                window,
                retries: land.retries.unwrap_or(DEFAULT_RETRIES),
            });
        }
        lands
    }
}

/// A name git accepts for a branch and no option: what `git check-ref-format --branch` allows,
/// minus anything starting with `-` (it would be read as an option), checked without git.
pub fn is_branch_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with(['-', '/', '.'])
        && !name.ends_with(['/', '.'])
        && !name.ends_with(".lock")
        && !name.contains("..")
        && !name.contains("//")
        && !name.contains("@{")
        && !name.contains("/.")
        && name
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '~' | '^' | ':' | '?' | '*' | '[' | '\\'))
}

impl super::Config {
    /// The merge queue of `branch`, if it has one.
    pub fn land(&self, branch: &str) -> Option<&LandConfig> {
        self.lands.iter().find(|land| land.branch == branch)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::master::config::{Config, ConfigError};

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

    fn with_lands(lands: &str) -> Result<Config, Vec<String>> {
        let text = format!(
            r#"[master]
name = "t"
[sshd]
listen = "127.0.0.1:0"
[[slave]]
name = "s1"
public_key = "{KEY}"
[[builder]]
name = "linux"
slaves = ["s1"]
repo = "/srv/git/p.git"
steps = [ {{ name = "test", command = "make test" }} ]
[[builder]]
name = "other"
slaves = ["s1"]
repo = "/srv/git/q.git"
[[builder]]
name = "deploy"
slaves = ["s1"]
repo = "/srv/git/p.git"
trusted = true
{lands}"#
        );
        Config::from_toml(&text, Path::new("/m"))
            .map_err(|ConfigError(problems)| problems.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn defaults_and_every_key() {
        let config =
            with_lands("[[land]]\nbranch = \"main\"\nbuilders = [\"linux\"]\n").expect("valid");
        let land = config.land("main").expect("main has a queue");
        assert_eq!(land.push_url, "/srv/git/p.git");
        assert_eq!(
            (land.window, land.retries, land.group.as_deref()),
            (1, 3, None)
        );
        let config = with_lands(
            "[[land]]\nbranch = \"release/2\"\nbuilders = [\"linux\"]\ngroup = \"landers\"\n\
             push_url = \"ssh://git@h/p.git\"\nwindow = 3\nretries = 0\n",
        )
        .expect("valid");
        let land = config.land("release/2").expect("queue");
        assert_eq!(land.push_url, "ssh://git@h/p.git");
        assert_eq!(land.repo, "/srv/git/p.git");
        assert_eq!((land.window, land.retries), (3, 0));
        assert_eq!(land.group.as_deref(), Some("landers"));
        assert!(config.land("main").is_none());
    }

    #[test]
    fn problems_name_their_line() {
        let problems = with_lands(
            "[[land]]\nbranch = \"main\"\nbuilders = [\"nope\"]\n\
             [[land]]\nbranch = \"dev\"\nbuilders = [\"linux\"]\n\
             [[land]]\nbranch = \"dev\"\nbuilders = [\"linux\"]\n\
             [[land]]\nbranch = \"-x\"\nbuilders = [\"linux\"]\n\
             [[land]]\nbranch = \"mixed\"\nbuilders = [\"linux\", \"other\"]\n\
             [[land]]\nbranch = \"trusted\"\nbuilders = [\"deploy\"]\n\
             [[land]]\nbranch = \"w\"\nbuilders = [\"linux\"]\nwindow = 0\n\
             [[land]]\nbranch = \"none\"\nbuilders = []\n",
        )
        .expect_err("refused");
        let expected = [
            "no builder named \"nope\"",
            "branch \"dev\" has two [[land]] sections",
            "\"-x\" is not a branch name",
            "the builders of a branch share its repository",
            "is trusted",
            "window must be between 1 and 32",
            "builders must name at least one builder",
        ];
        assert_eq!(problems.len(), expected.len(), "{problems:?}");
        for (problem, expected) in problems.iter().zip(expected) {
            assert!(problem.starts_with("master.toml:"), "{problem}");
            assert!(problem.contains(expected), "{problem} lacks {expected}");
        }
    }

    #[test]
    fn branch_names() {
        for good in ["main", "release/2.0", "feature-x", "a_b"] {
            assert!(super::is_branch_name(good), "{good}");
        }
        for bad in [
            "", "-x", "a..b", "a b", "a:b", "a/", "x.lock", "@{u}", "a\\b", "/a",
        ] {
            assert!(!super::is_branch_name(bad), "{bad}");
        }
    }
}
