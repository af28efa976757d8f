//! Integration tests: real `buildbot` processes on loopback, driven by real clients.

mod cli;
mod harness;
mod sshd;
mod try_;
