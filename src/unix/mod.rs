//! Unix facts the master decides access by: who a login name is (`accounts`) and whether that
//! account may write into a directory by its mode bits (`permission`). Bottom layer: it knows
//! nothing of SSH, the spool or builds.

pub mod accounts;
pub mod host;
pub mod permission;
pub mod regular_file;
