//! buildbot: an SSH-native continuous-integration system. One master, many build slaves, and
//! `buildbot try` to build uncommitted work before it is pushed. See ARCHITECTURE.md for the
//! codemap and the layers; `src/main.rs` only parses arguments and calls into the modules below.

// Bottom layer: shared vocabulary and unix facts, no knowledge of the parts above.
pub mod change;
pub mod commands;
pub mod durations;
pub mod exec_io;
pub mod proto;
pub mod status;
pub mod tryjob;
pub mod unix;
pub mod untrusted;

// The spool, then the master core.
pub mod master;
pub mod spool;

// Front ends over the master core.
pub mod irc;
pub mod sshd;
pub mod web;

// What runs elsewhere: the slave daemon and the user's commands.
pub mod client;
pub mod slave;

// Composition: the master daemon, the demo, the command line's definition.
pub mod cli;
pub mod daemon;
pub mod demo;
