#!/usr/bin/env bash
# Several masters on one PostgreSQL, against one SQLite master (figures, never pass/fail):
# `bash bench/multimaster.sh` from anywhere. The workloads of issue 23, each next to the same
# workload on one master with its embedded SQLite file in the same run (bench/multimaster.py
# says how each figure is taken):
#   - claims/s and duplicate claims with 1, 2, 3 PostgreSQL masters and 100 swarm slaves;
#   - a log line printed on a slave of master A until a reader on master B gets it, and an
#     event on A until `watch --follow` on B prints it (p50/p99);
#   - failover after kill -9 and after SIGSTOP of the master owning a running build, split
#     into detection, re-queue and restart, with [database] lease = "2s" and "10s";
#   - builds/s of a burst of trivial builds on one PostgreSQL master and one SQLite master.
# It prints one table with the aims beside the figures, then the figures as one JSON line.
#
# Installs PostgreSQL (apt-get install postgresql) when missing, and runs a private server:
# initdb as the postgres user into a temp dir, unix socket only (no TCP), one database per
# scenario; server and temp dirs are removed at the end however the bench ends (BENCH_KEEP=1
# keeps the work dir). Everything else runs on 127.0.0.1.
#
# Environment: BUILDBOT (a binary; default: cargo build --release), BENCH_JOBS (300),
# BENCH_SWARM (100), BENCH_MASTERS (1,2,3), BENCH_LINES (50), BENCH_LEASES (2s,10s),
# BENCH_BURST (100), BENCH_SKIP (claims,live,events,failover,burst).
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null
fi
PG_BIN=$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)")

if [ -z "${BUILDBOT:-}" ]; then
  cargo build --release --quiet
  BUILDBOT=${CARGO_TARGET_DIR:-$PWD/target}/release/buildbot
fi
BUILDBOT=$(realpath "$BUILDBOT")

# The server's dir belongs to postgres (initdb refuses root); its socket dir must be reachable
# by us, so the dir is searchable by all but listable and writable only by postgres.
WORK=$(mktemp -d /tmp/buildbot-multimaster.XXXXXX)
PG_DIR=$(mktemp -d /tmp/buildbot-multimaster-pg.XXXXXX)
as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
cleanup() {
  if [ -f "$PG_DIR/data/postmaster.pid" ]; then
    as_postgres "$PG_BIN/pg_ctl" stop -D "$PG_DIR/data" -m immediate >/dev/null 2>&1 || true
  fi
  rm -rf "$PG_DIR"
  [ -n "${BENCH_KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
if [ "$(id -u)" -eq 0 ]; then
  chown postgres: "$PG_DIR"
fi
chmod 711 "$PG_DIR"
as_postgres mkdir -m 700 "$PG_DIR/data"
as_postgres mkdir -m 755 "$PG_DIR/socket"
as_postgres "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres --auth=trust -E UTF8 \
  --no-instructions >"$WORK/initdb.log" 2>&1 || { cat "$WORK/initdb.log" >&2; exit 1; }
# Settings as shipped (fsync on); more connections for three masters' pools.
as_postgres "$PG_BIN/pg_ctl" start -D "$PG_DIR/data" -w -t 120 -l "$PG_DIR/server.log" \
  -o "-k $PG_DIR/socket -c listen_addresses='' -c max_connections=300" >/dev/null \
  || { cat "$PG_DIR/server.log" >&2; exit 1; }

BUILDBOT=$BUILDBOT BENCH_WORK=$WORK BENCH_PG_SOCKET=$PG_DIR/socket BENCH_PG_BIN=$PG_BIN \
  BENCH_PG_DATA=$PG_DIR/data \
  python3 bench/multimaster.py
