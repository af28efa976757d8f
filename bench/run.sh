#!/usr/bin/env bash
# Performance bench (figures, never pass/fail): `bash bench/run.sh` from anywhere.
#
# Runs the workloads of issue 14 with its definitions ("trigger" = a job file renamed into
# spool/new, "finished" = builds.finished_at) and prints one table, then the same figures as
# one JSON line (for scripts). The workloads, in order:
#   - master startup (spawn until both SSH and HTTP accept), median of 5;
#   - idle RSS of master and slave, and their CPU over 10 s;
#   - BENCH_LOG_MB (1000) MB printed as 80-byte lines (`yes LINE | head -c N`), trigger ->
#     finished, next to the same command through a private OpenSSH sshd in the same run
#     (`ssh host CMD > /dev/null`); master and slave CPU, the master's RSS growth, whether the
#     log is byte-exact;
#   - the same with base64 of random bytes (incompressible);
#   - a trivial build (`true`), trigger -> started and started -> finished, medians of
#     BENCH_RUNS (20);
#   - `buildbot try --wait` end to end through OpenSSH, median of BENCH_RUNS, next to a new
#     OpenSSH connection (`ssh host true`);
#   - BENCH_BURST (50) trivial builds queued at once on 1 and on 2 slaves, builds/s;
#   - how long a line a step prints takes to reach a `?follow=1` reader;
#   - master RSS with BENCH_SWARM (1000) slaves connected: `buildbot bench-swarm` runs that many
#     real slaves (SSH, the RPC handshake, keepalives) in one process.
# Each figure is printed with the machine's load while it was measured: figures taken on a
# shared machine move with it.
#
# Installs openssh-server (for the private sshd) when missing. Everything runs on 127.0.0.1
# in a temp dir, removed at the end (BENCH_KEEP=1 keeps it). BENCH_SKIP=log,random,... skips
# workloads (see bench/bench.py).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v sshd >/dev/null 2>&1 && [ ! -x /usr/sbin/sshd ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq openssh-server >/dev/null
fi
SSHD=$(command -v sshd || echo /usr/sbin/sshd)

if [ -z "${BUILDBOT:-}" ]; then
  cargo build --release --quiet
  BUILDBOT=${CARGO_TARGET_DIR:-$PWD/target}/release/buildbot
fi
BUILDBOT=$(realpath "$BUILDBOT")
WORK=$(mktemp -d /tmp/buildbot-bench.XXXXXX)
cleanup() { [ -n "${BENCH_KEEP:-}" ] || rm -rf "$WORK"; }
trap cleanup EXIT
python3 bench/bench.py "$BUILDBOT" "$SSHD" "$WORK"
