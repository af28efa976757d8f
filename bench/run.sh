#!/usr/bin/env bash
# Benchmarks (figures, not pass/fail): run from the repository root with `bash bench/run.sh`.
#
#  1. log throughput: a step printing 1 GiB through slave -> SSH -> master -> log file, in MB/s,
#     with the master's peak RSS growth during it;
#  2. the same 1 GiB through raw OpenSSH (`ssh localhost cat` against a private sshd on
#     loopback), for the ratio;
#  3. try-to-result latency of a one-step `true` build: median of 20 `buildbot try --wait`;
#  4. serving that 1 GiB log over HTTP: full download (master RSS growth) and the time to the
#     first byte of `?tail`;
#  5. 100 clients following a live log at once (`?follow=1`), each receiving all of it;
#  6. the CPU a fresh, idle master uses over 10 s (utime + stime from /proc/PID/stat): ~0.
#
# Installs openssh-server (for the private sshd) when missing. Everything runs on 127.0.0.1 in
# a temp dir that is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MB=${BENCH_SIZE_MB:-1024}
RUNS=${BENCH_RUNS:-20}

if ! command -v sshd >/dev/null 2>&1 && [ ! -x /usr/sbin/sshd ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq openssh-server >/dev/null
fi
SSHD=$(command -v sshd || echo /usr/sbin/sshd)

cargo build --release --quiet
BB=$PWD/target/release/buildbot
WORK=$(mktemp -d /tmp/buildbot-bench.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# ---- an idle master's CPU (before anything else runs) ---------------------------------------
"$BB" create-master "$WORK/idle" --ssh-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 >/dev/null
"$BB" master "$WORK/idle" >/dev/null 2>&1 &
IDLE_PID=$!; PIDS+=("$IDLE_PID")
sleep 2
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
IDLE_BEFORE=$(cpu_ticks "$IDLE_PID"); sleep 10; IDLE_AFTER=$(cpu_ticks "$IDLE_PID")
IDLE_CPU=$(python3 -c "print(round(($IDLE_AFTER - $IDLE_BEFORE) / $(getconf CLK_TCK) / 10 * 100, 2))")
kill "$IDLE_PID"

# ---- a master, a slave, a repository -------------------------------------------------------
SSH_PORT=$(free_port); HTTP_PORT=$(free_port)
"$BB" create-master "$WORK/master" --ssh-listen "127.0.0.1:$SSH_PORT" --http-listen "127.0.0.1:$HTTP_PORT" >/dev/null
git init -q -b main "$WORK/repo"
git -C "$WORK/repo" -c user.name=b -c user.email=b@example.org commit -q --allow-empty -m base
"$BB" create-slave "$WORK/slave" --master "127.0.0.1:$SSH_PORT" --name bench \
  --master-host-key "$(cat "$WORK/master/host_key.pub")" > "$WORK/snippet"
ssh-keygen -q -t ed25519 -N '' -f "$WORK/user_key"
mkdir -p "$WORK/master/authorized_keys.d"
cp "$WORK/user_key.pub" "$WORK/master/authorized_keys.d/$(id -un)"
sed -i 's|^authorized_keys = .*|authorized_keys = ["authorized_keys.d/%u"]|; s|^allow_root = false|allow_root = true|' "$WORK/master/master.toml"
{
  sed -n '/\[\[slave\]\]/,$p' "$WORK/snippet"
  cat <<EOF
[[builder]]
name = "stream"
slaves = ["bench"]
repo = "$WORK/repo"
steps = [ { name = "print", command = "head -c ${SIZE_MB}M /dev/zero" } ]

[[builder]]
name = "noop"
slaves = ["bench"]
repo = "$WORK/repo"
steps = [ { name = "true", command = "true" } ]

[[builder]]
name = "live"
slaves = ["bench"]
repo = "$WORK/repo"
steps = [ { name = "print", command = "for i in \$(seq 50); do head -c 1048576 /dev/zero; sleep 0.05; done" } ]

[[scheduler]]
kind = "try"
builders = ["stream", "noop", "live"]
EOF
} >> "$WORK/master/master.toml"

RUST_LOG=warn "$BB" master "$WORK/master" > "$WORK/master.out" 2> "$WORK/master.log" &
MASTER=$!; PIDS+=("$MASTER")
RUST_LOG=warn "$BB" slave "$WORK/slave" 2> "$WORK/slave.log" &
PIDS+=("$!")
SSH=(ssh -F /dev/null -p "$SSH_PORT" -i "$WORK/user_key" -o BatchMode=yes -o IdentitiesOnly=yes
     -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR)
for _ in $(seq 100); do
  "${SSH[@]}" "$(id -un)@127.0.0.1" watch 2>/dev/null | grep -q "bench (connected)" && break
  sleep 0.1
done

try_wait() {
  (cd "$WORK/repo" && "$BB" try --wait --diff /dev/stdin -b "$1" --host 127.0.0.1 --port "$SSH_PORT" \
     -u "$(id -un)" --ssh "${SSH[*]}" <<< "--- a/x
+++ b/x
@@ -0,0 +1 @@
+x" >/dev/null)
}

# ---- 1. the log path -----------------------------------------------------------------------
RSS_BEFORE=$(rss_kib "$MASTER")
try_wait stream
STEP_SECONDS=$(curl -s "http://127.0.0.1:$HTTP_PORT/api/builds?builder=stream" |
  python3 -c 'import json,sys; s=json.load(sys.stdin)[0]["steps"][1]; print(s["finished_at"]-s["started_at"])')
HWM=$(hwm_kib "$MASTER")
LOG_BYTES=$(stat -c %s "$WORK/master/logs/stream/1/2-print.stdout")
OURS=$(python3 -c "print(round($LOG_BYTES/1e6/$STEP_SECONDS, 1))")

# ---- 2. raw OpenSSH on loopback ------------------------------------------------------------
SSHD_PORT=$(free_port)
ssh-keygen -q -t ed25519 -N '' -f "$WORK/sshd_host_key"
cat "$WORK/user_key.pub" > "$WORK/sshd_authorized_keys"
chmod 600 "$WORK/sshd_authorized_keys"
mkdir -p /run/sshd 2>/dev/null || true
"$SSHD" -D -e -p "$SSHD_PORT" -h "$WORK/sshd_host_key" -o ListenAddress=127.0.0.1 \
  -o AuthorizedKeysFile="$WORK/sshd_authorized_keys" -o PermitRootLogin=yes -o StrictModes=no \
  -o UsePAM=no -o PidFile=none 2> "$WORK/sshd.log" &
PIDS+=("$!")
sleep 0.5
START=$(date +%s.%N)
head -c "${SIZE_MB}M" /dev/zero | ssh -F /dev/null -p "$SSHD_PORT" -i "$WORK/user_key" -o BatchMode=yes \
  -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR "$(id -un)@127.0.0.1" \
  "cat > /dev/null"
END=$(date +%s.%N)
RAW=$(python3 -c "print(round($SIZE_MB*1048576/1e6/($END-$START), 1))")

# ---- 3. try-to-result latency --------------------------------------------------------------
for _ in $(seq "$RUNS"); do
  START=$(date +%s.%N); try_wait noop; END=$(date +%s.%N)
  python3 -c "print(round(($END-$START)*1000))"
done > "$WORK/latencies"
LATENCY=$(median < "$WORK/latencies")

# ---- 4. serving the big log ---------------------------------------------------------------
LOG_URL="http://127.0.0.1:$HTTP_PORT/builders/stream/builds/1/steps/2/logs/stdout"
RSS_BEFORE_WEB=$(rss_kib "$MASTER")
curl -s -o /dev/null -w '%{size_download} %{time_total}' "$LOG_URL/raw" > "$WORK/download" &
CURL=$!
PEAK_WEB=$RSS_BEFORE_WEB
while kill -0 "$CURL" 2>/dev/null; do
  NOW=$(rss_kib "$MASTER"); [ "$NOW" -gt "$PEAK_WEB" ] && PEAK_WEB=$NOW
  sleep 0.02
done
DOWNLOAD=$(cat "$WORK/download")
TAIL_TTFB=$(curl -s -o /dev/null -w '%{time_starttransfer}' "$LOG_URL?tail=65536")

# ---- 5. 100 live followers -----------------------------------------------------------------
(cd "$WORK/repo" && "$BB" try --diff /dev/stdin -b live --host 127.0.0.1 --port "$SSH_PORT" \
   -u "$(id -un)" --ssh "${SSH[*]}" <<< "--- a/y
+++ b/y
@@ -0,0 +1 @@
+y" >/dev/null)
LIVE_URL="http://127.0.0.1:$HTTP_PORT/builders/live/builds/1/steps/2/logs/stdout/raw?follow=1"
for _ in $(seq 100); do
  curl -s "http://127.0.0.1:$HTTP_PORT/api/builds?builder=live" | grep -q '"name":"print"' && break
  sleep 0.05
done
FOLLOW_PIDS=()
for i in $(seq 100); do
  curl -s -N "$LIVE_URL" -o "$WORK/follow.$i" &
  FOLLOW_PIDS+=("$!")
done
START=$(date +%s.%N)
for pid in "${FOLLOW_PIDS[@]}"; do wait "$pid"; done
END=$(date +%s.%N)
COMPLETE=0
for i in $(seq 100); do [ "$(stat -c %s "$WORK/follow.$i")" -eq 52428800 ] && COMPLETE=$((COMPLETE+1)); done
HWM_FOLLOW=$(hwm_kib "$MASTER")

echo "log path (slave -> ssh -> master -> file): $OURS MB/s for $SIZE_MB MiB"
echo "raw OpenSSH (ssh localhost cat):           $RAW MB/s"
echo "ratio:                                      $(python3 -c "print(f'{$OURS/$RAW*100:.0f} %')")"
echo "master RSS: $((RSS_BEFORE/1024)) MiB before, peak $((HWM/1024)) MiB (growth $(((HWM-RSS_BEFORE)/1024)) MiB)"
echo "try -> result latency, one-step 'true' build: median ${LATENCY} ms of $RUNS"
echo "web: full download of the $SIZE_MB MiB log: $DOWNLOAD (bytes, seconds); master RSS $((RSS_BEFORE_WEB/1024)) MiB before, sampled peak growth $(((PEAK_WEB-RSS_BEFORE_WEB)/1024)) MiB"
echo "web: ?tail time to first byte: $(python3 -c "print(round($TAIL_TTFB*1000, 1))") ms"
echo "web: 100 live followers of a 50 MiB step: $COMPLETE received it all, in $(python3 -c "print(round($END-$START, 1))") s; master peak RSS $((HWM_FOLLOW/1024)) MiB"
echo "idle master CPU over 10 s: $IDLE_CPU % of one core ($((IDLE_AFTER - IDLE_BEFORE)) ticks)"
