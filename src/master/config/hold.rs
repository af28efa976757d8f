//! `[[builder]] hold = { on = "failure", for = "10m" }`: which finished builds keep their work
//! directory on the slave for a shell (issue 25), and for how long.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

/// Which builds are held when they end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HoldOn {
    /// Failed builds (failure, exception): what one wants to look into.
    #[default]
    Failure,
    Always,
    Never,
}

/// A builder's hold policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldPolicy {
    pub on: HoldOn,
    /// How long a build is held after it ends, and after each shell connects.
    pub hold_for: Duration,
}

impl Default for HoldPolicy {
    fn default() -> HoldPolicy {
        HoldPolicy {
            on: HoldOn::Failure,
            hold_for: DEFAULT_HOLD_FOR,
        }
    }
}

pub const DEFAULT_HOLD_FOR: Duration = Duration::from_secs(600);

#[derive(Debug, Deserialize)]
pub(super) struct RawHold {
    #[serde(default)]
    pub on: Option<HoldOn>,
    #[serde(default, rename = "for")]
    pub hold_for: Option<Spanned<String>>,
}
