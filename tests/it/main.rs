//! Integration tests: real `buildbot` processes on loopback, driven by real clients.

mod artifacts;
mod browser;
mod builds;
mod changes;
mod cli;
mod cluster;
mod demo;
mod events;
mod faults;
mod first_contact;
mod force;
mod harness;
mod irc;
mod lock_levels;
mod locks;
mod multimaster;
mod ops_web;
mod patches;
#[path = "../support/postgres.rs"]
mod postgres;
mod reconfig;
mod repo;
mod retention;
mod secrets;
mod security;
mod slave_failover;
mod slave_processes;
mod sshd;
mod stop;
mod trust;
mod try_;
mod watch;
mod web;
