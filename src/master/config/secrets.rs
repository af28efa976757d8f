//! `[[secret]]`: named files whose contents steps of the builders that list them get as
//! environment variables. The file is checked here, at load (so a badly kept one is refused
//! with one line), and read again by each build (`master::secrets`), so a rotated token needs
//! no reconfig. The value itself never enters the `Config`.

use std::collections::HashSet;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::{Checker, RawBuilder};

/// One `[[secret]]`: its name (steps see `$NAME` upper-cased) and the file holding its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretConfig {
    pub name: String,
    pub file: PathBuf,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawSecret {
    name: Spanned<String>,
    file: Spanned<String>,
}

/// A secret's name becomes an environment variable: a letter, then letters, digits and `_`.
fn is_secret_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Checker<'_> {
    pub(super) fn secrets(&mut self, raw: &[RawSecret]) -> Vec<SecretConfig> {
        let mut seen = HashSet::new();
        let mut secrets = Vec::new();
        for secret in raw {
            let name = secret.name.get_ref();
            if !is_secret_name(name) {
                self.problem(
                    &secret.name,
                    format!("secret name \"{name}\" must start with a letter and hold only letters, digits and '_' (steps get it as ${})", name.to_ascii_uppercase()),
                );
                continue;
            }
            if !seen.insert(name.to_ascii_uppercase()) {
                self.problem(&secret.name, format!("secret \"{name}\" is defined twice"));
                continue;
            }
            let file = self.resolve(secret.file.get_ref());
            if let Err(err) = crate::master::secrets::read_secret_file(&file) {
                self.problem(&secret.file, format!("secret \"{name}\": {err}"));
            }
            secrets.push(SecretConfig {
                name: name.clone(),
                file,
            });
        }
        secrets
    }

    /// Every secret a builder lists must be defined.
    pub(super) fn builder_secrets(&mut self, raw: &[RawBuilder], secrets: &[SecretConfig]) {
        for builder in raw {
            for name in &builder.secrets {
                if !secrets.iter().any(|secret| &secret.name == name.get_ref()) {
                    let message = format!(
                        "builder \"{}\" lists secret \"{}\", which no [[secret]] defines",
                        builder.name.get_ref(),
                        name.get_ref()
                    );
                    self.problem(name, message);
                }
            }
        }
    }
}
