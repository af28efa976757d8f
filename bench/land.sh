#!/usr/bin/env bash
# What `buildbot land` adds on top of the builds, and a queue's throughput with window 1 and 4
# (figures, never pass/fail): `bash bench/land.sh` from anywhere, as root (the queue part
# creates its users). bench/land.py says how each figure is taken.
# Environment: BUILDBOT (a binary; default: cargo build --release), BENCH_COMMITS (10),
# BENCH_ROUNDS (5), BENCH_QUEUE (20), BENCH_BUILD_SECS (1), BENCH_KEEP (keep the work dir).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${BUILDBOT:-}" ]; then
  cargo build --release --quiet
  BUILDBOT=${CARGO_TARGET_DIR:-$PWD/target}/release/buildbot
fi
BUILDBOT=$(realpath "$BUILDBOT") python3 bench/land.py
