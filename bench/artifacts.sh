#!/usr/bin/env bash
# Artifacts and secrets bench (issue 27; figures, never pass/fail): `bash bench/artifacts.sh`.
# Upload throughput of a kept artifact next to `cat file | ssh` through a private OpenSSH sshd
# in the same run, and the log path's throughput with and without a secret to redact. See
# bench/artifacts.py for the definitions; BENCH_ART_MB, BENCH_LOG_MB, BENCH_RUNS size it.
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
WORK=$(mktemp -d /tmp/buildbot-bench-artifacts.XXXXXX)
cleanup() { [ -n "${BENCH_KEEP:-}" ] || rm -rf "$WORK"; }
trap cleanup EXIT
python3 bench/artifacts.py "$BUILDBOT" "$SSHD" "$WORK"
