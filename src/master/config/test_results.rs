//! A step's `test_results = ["junit:target/junit/*.xml", "tap:out.tap"]` (issue 26): each
//! entry a report kind and a glob relative to the step's work tree, checked here so a typo is
//! a config error, not a silent build without results.

use toml::Spanned;

use super::Checker;
use crate::master::test_results::{ReportKind, parse_entry};

impl Checker<'_> {
    pub(super) fn test_results(
        &mut self,
        step: &str,
        entries: &[Spanned<String>],
    ) -> Vec<(ReportKind, String)> {
        let mut kept = Vec::new();
        for entry in entries {
            match parse_entry(entry.get_ref()) {
                Ok((kind, pattern)) => {
                    if let Some(problem) = pattern_problem(pattern) {
                        self.problem(entry, format!("step \"{step}\": {problem}"));
                    } else {
                        kept.push((kind, pattern.to_string()));
                    }
                }
                Err(problem) => self.problem(entry, format!("step \"{step}\": {problem}")),
            }
        }
        kept
    }
}

/// What is wrong with a report glob, if anything: it must stay inside the work tree.
fn pattern_problem(pattern: &str) -> Option<String> {
    if pattern.starts_with('/') {
        return Some(format!(
            "test_results pattern \"{pattern}\" must be relative to the step's work tree"
        ));
    }
    if pattern.split('/').any(|part| part == "..") {
        return Some(format!(
            "test_results pattern \"{pattern}\" must not climb out of the work tree (..)"
        ));
    }
    if let Err(err) = glob::Pattern::new(pattern) {
        return Some(format!(
            "test_results pattern \"{pattern}\" is not a glob: {err}"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::master::config::{Config, ConfigError};
    use crate::master::test_results::ReportKind;

    fn with_step(test_results: &str) -> Result<Config, ConfigError> {
        let text = format!(
            r#"[master]
name = "t"
[sshd]
listen = "127.0.0.1:0"
[[slave]]
name = "s1"
public_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test"
[[builder]]
name = "linux"
slaves = ["s1"]
repo = "/srv/git/p.git"
steps = [ {{ name = "test", command = "make test", test_results = {test_results} }} ]
"#
        );
        Config::from_toml(&text, Path::new("/m"))
    }

    #[test]
    fn entries_are_kept_by_kind() {
        let config = with_step(r#"["junit:target/junit/*.xml", "tap:out.tap"]"#).expect("valid");
        assert_eq!(
            config.builders[0].steps[0].test_results,
            [
                (ReportKind::Junit, "target/junit/*.xml".to_string()),
                (ReportKind::Tap, "out.tap".to_string())
            ]
        );
    }

    #[test]
    fn bad_entries_are_config_errors() {
        for (entry, expected) in [
            ("xunit:a.xml", "unknown kind \"xunit\""),
            ("a.xml", "KIND:GLOB"),
            ("junit:/etc/passwd", "must be relative"),
            ("junit:../x.xml", "must not climb out"),
            ("junit:a/[.xml", "is not a glob"),
        ] {
            let Err(ConfigError(problems)) = with_step(&format!("[\"{entry}\"]")) else {
                panic!("{entry} should be refused");
            };
            let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
            assert!(
                text.iter()
                    .any(|p| p.contains(expected) && p.contains("step \"test\"")),
                "{entry}: {text:?}"
            );
        }
    }
}
