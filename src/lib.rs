//! buildbot: an SSH-native continuous-integration system. One master, many build slaves, and
//! `buildbot try` to build uncommitted work before it is pushed. See ARCHITECTURE.md for the
//! codemap; `src/main.rs` only parses arguments and calls into the modules below.

pub mod client;
pub mod demo;
pub mod master;
pub mod proto;
pub mod slave;
pub mod spool;
pub mod sshd;
pub mod web;
