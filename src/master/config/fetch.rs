//! A step's `fetch_artifacts = [{ from = "upstream" | "build", path = GLOB, builder = NAME }]`:
//! checked here so a typo is a config error, not a build that fails later.

use super::{Checker, FetchArtifacts, FetchFrom, RawFetch};

impl Checker<'_> {
    pub(super) fn fetch_artifacts(
        &mut self,
        step: &str,
        entries: &[RawFetch],
    ) -> Vec<FetchArtifacts> {
        let mut kept = Vec::new();
        for entry in entries {
            let path = entry.path.get_ref();
            if !super::is_inside_glob(path) {
                let message = format!(
                    "step \"{step}\": fetch_artifacts path \"{path}\" must be relative (no .., not absolute)"
                );
                self.problem(&entry.path, message);
                continue;
            }
            if let Err(err) = glob::Pattern::new(path) {
                let message = format!("step \"{step}\": fetch_artifacts path \"{path}\": {err}");
                self.problem(&entry.path, message);
                continue;
            }
            if let Some(builder) = &entry.builder
                && entry.from == FetchFrom::Build
            {
                let message = format!(
                    "step \"{step}\": fetch_artifacts builder is only for from = \"upstream\" (from = \"build\" is this build)"
                );
                self.problem(builder, message);
                continue;
            }
            kept.push(FetchArtifacts {
                from: entry.from,
                path: path.clone(),
                builder: entry
                    .builder
                    .as_ref()
                    .map(|builder| builder.get_ref().clone()),
            });
        }
        kept
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{Config, ConfigError};
    use super::*;

    fn with_fetch(entries: &str) -> String {
        let base = super::super::tests::base();
        base.replace(
            r#"timeout = "20m" }"#,
            &format!(r#"timeout = "20m", fetch_artifacts = [{entries}] }}"#),
        )
    }

    #[test]
    fn fetch_artifacts_are_read_and_checked() {
        let text = with_fetch(
            r#"{ from = "upstream", path = "dist/*.tar.gz", builder = "linux" }, { from = "build", path = "out/**/*.bin" }"#,
        );
        let config = Config::from_toml(&text, Path::new("/m")).expect("valid");
        assert_eq!(
            config.builders[0].steps[0].fetch_artifacts,
            [
                FetchArtifacts {
                    from: FetchFrom::Upstream,
                    path: "dist/*.tar.gz".into(),
                    builder: Some("linux".into()),
                },
                FetchArtifacts {
                    from: FetchFrom::Build,
                    path: "out/**/*.bin".into(),
                    builder: None,
                },
            ]
        );
        let bad = with_fetch(
            r#"{ from = "upstream", path = "../x" }, { from = "build", path = "a", builder = "linux" }"#,
        );
        let Err(ConfigError(problems)) = Config::from_toml(&bad, Path::new("/m")) else {
            panic!("accepted: {bad}");
        };
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].contains("path \"../x\" must be relative"),
            "{lines:?}"
        );
        assert!(
            lines[1].contains("builder is only for from = \"upstream\""),
            "{lines:?}"
        );
    }
}
