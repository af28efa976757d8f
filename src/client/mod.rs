//! User-side commands that talk to a master: `buildbot try` and `buildbot watch`.
//! They run the user's own `ssh`; nothing here speaks SSH itself.

pub mod dotfile;
pub mod interrupt;
pub mod land;
pub mod patch;
pub mod progress;
pub mod remote;
pub mod ssh_stderr;
pub mod try_cmd;
pub mod watch;
