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

/// Chooses the TLS crypto provider of the whole process, before any TLS connection is made.
/// The IRC bot's TLS (tokio-rustls' defaults), the mail client and the webhook client compile
/// in two providers (aws-lc-rs and ring), and with two rustls cannot choose by itself: the
/// first TLS connection would panic.
pub fn choose_tls_provider() {
    // Err: a provider is already chosen (a second call), which is as good.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
