"""Artifacts and secrets bench (figures, never pass/fail), issue 27.

Usage: python3 bench/artifacts.py BUILDBOT SSHD WORK   (bash bench/artifacts.sh runs it)

1. Upload: a step keeps a BENCH_ART_MB (500) MB incompressible file; the figure is the
   `NAME-artifacts` step's duration in the master's history (slave reads, hashes and streams it,
   the master hashes, writes, fsyncs and records it), next to `cat file | ssh host 'cat > file'`
   through a private OpenSSH sshd in the same run (the same bytes to the same disk). Target:
   ours at least 0.75x OpenSSH's throughput.
2. Redaction: the same log workload (BENCH_LOG_MB (300) MB of 80-byte lines) on a builder with a
   secret (every line scanned for 13 forms of it) and on one without, alternating, medians of
   BENCH_RUNS (3) step durations. Target: < 10% slower.
Every figure carries the machine's load while it was measured.
"""

import os
import sqlite3
import statistics
import subprocess
import sys
import time

from benchlib import (Load, free_port, log, private_sshd, run, spawn, stop_children,
                      wait_port)

BB, SSHD, WORK = sys.argv[1], sys.argv[2], sys.argv[3]
ART_BYTES = int(float(os.environ.get("BENCH_ART_MB", "500")) * 1_000_000)
LOG_BYTES = int(float(os.environ.get("BENCH_LOG_MB", "300")) * 1_000_000)
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
USER = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
LINE = "0123456789abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-bench!"


KEY = os.path.join(WORK, "user_key")
run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", KEY])
SSH_OPTS = ["-F", "/dev/null", "-i", KEY, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR"]
REPO = os.path.join(WORK, "repo")
git = ["git", "-c", "user.name=bench", "-c", "user.email=b@example.invalid",
       "-c", "init.defaultBranch=main"]
run(git + ["init", "-q", REPO])
with open(os.path.join(REPO, "README"), "w") as f:
    f.write("bench\n")
run(git + ["-C", REPO, "add", "README"])
run(git + ["-C", REPO, "commit", "-q", "-m", "base"])

PAYLOAD = os.path.join(WORK, "payload.bin")
with open("/dev/urandom", "rb") as src, open(PAYLOAD, "wb") as dst:
    left = ART_BYTES
    while left:
        chunk = src.read(min(left, 1 << 20))
        dst.write(chunk)
        left -= len(chunk)
SECRET = os.path.join(WORK, "token")
with open(SECRET, "w") as f:
    # Random-looking, as a real token is (one whose first bytes recur on every line makes the
    # matcher verify a candidate per line: see results-issue-27.md).
    f.write("tok-Zq81xVb7Lm2Pw9Rt0Kd\n")
os.chmod(SECRET, 0o600)

# ---- the master and its slave ------------------------------------------------------------------
MDIR = os.path.join(WORK, "master")
ssh_port, http_port = free_port(), free_port()
run([BB, "create-master", MDIR, "--ssh-listen", f"127.0.0.1:{ssh_port}",
     "--http-listen", f"127.0.0.1:{http_port}"], stdout=subprocess.DEVNULL)
os.makedirs(os.path.join(MDIR, "authorized_keys.d"), exist_ok=True)
with open(KEY + ".pub") as src, open(os.path.join(MDIR, "authorized_keys.d", USER), "w") as dst:
    dst.write(src.read())
os.chmod(os.path.join(MDIR, "authorized_keys.d", USER), 0o600)
with open(os.path.join(MDIR, "host_key.pub")) as f:
    host_key = f.read().strip()
SDIR = os.path.join(WORK, "slave")
snippet = run([BB, "create-slave", SDIR, "--master", f"127.0.0.1:{ssh_port}", "--name", "s1",
               "--master-host-key", host_key], stdout=subprocess.PIPE).stdout.decode()
config_path = os.path.join(MDIR, "master.toml")
with open(config_path) as f:
    text = f.read()
text = text.replace('authorized_keys = ["%h/.ssh/authorized_keys", "authorized_keys.d/%u"]',
                    'authorized_keys = ["authorized_keys.d/%u"]')
if os.geteuid() == 0:
    text = text.replace("allow_root = false", "allow_root = true")
LOG_CMD = f"yes {LINE} | head -c {LOG_BYTES}"
text += "\n" + snippet[snippet.index("[[slave]]"):] + f"""
[[secret]]
name = "token"
file = "{SECRET}"

[[builder]]
name = "art"
slaves = ["s1"]
repo = "{REPO}"
steps = [ {{ name = "make", command = "ln -f {PAYLOAD} payload.bin || cp {PAYLOAD} payload.bin", artifacts = ["payload.bin"] }} ]

[[builder]]
name = "plain"
slaves = ["s1"]
repo = "{REPO}"
steps = [ {{ name = "log", command = "{LOG_CMD}" }} ]

[[builder]]
name = "secret"
slaves = ["s1"]
repo = "{REPO}"
secrets = ["token"]
steps = [ {{ name = "log", command = "{LOG_CMD}" }} ]
"""
with open(config_path, "w") as f:
    f.write(text)
env = dict(os.environ, RUST_LOG="warn")
master = spawn([BB, "master", MDIR], stdout=subprocess.DEVNULL,
               stderr=open(MDIR + ".log", "a"), env=env)
wait_port(ssh_port, "the master")
wait_port(http_port, "the master's web")
slave = spawn([BB, "slave", SDIR], stdout=subprocess.DEVNULL,
              stderr=open(SDIR + ".log", "a"), env=env)
time.sleep(2)


def step_seconds(builder, step):
    """Forces a build of `builder`, waits for it, returns `step`'s duration."""
    run(["ssh", *SSH_OPTS, "-p", str(ssh_port), f"{USER}@127.0.0.1",
         f"force {builder} --reason bench --wait"], stdout=subprocess.DEVNULL, timeout=3600)
    with sqlite3.connect(os.path.join(MDIR, "state.sqlite")) as db:
        started, finished, result = db.execute(
            "SELECT s.started_at, s.finished_at, s.result FROM steps s JOIN builds b "
            "ON s.build_id = b.id WHERE b.builder = ? AND s.name = ? "
            "ORDER BY b.number DESC LIMIT 1", (builder, step)).fetchone()
    if result not in ("success", 0):
        log(f"{builder} {step}: result {result}")
    return finished - started


# ---- the private OpenSSH sshd ------------------------------------------------------------------
sshd_port, _ = private_sshd(SSHD, WORK, KEY + ".pub")
RAW_TARGET = os.path.join(WORK, "raw.bin")


def openssh_upload():
    start = time.monotonic()
    with open(PAYLOAD, "rb") as src:
        run(["ssh", *SSH_OPTS, "-p", str(sshd_port), f"{USER}@127.0.0.1",
             f"cat > {RAW_TARGET} && sync {RAW_TARGET}"], stdin=src, stdout=subprocess.DEVNULL,
            timeout=3600)
    return time.monotonic() - start


try:
    results = []
    with Load() as load:
        ours = [step_seconds("art", "make-artifacts")]
        raw = [openssh_upload()]
        for _ in range(RUNS - 1):
            raw.append(openssh_upload())
            ours.append(step_seconds("art", "make-artifacts"))
    mb = ART_BYTES / 1e6
    o, r = statistics.median(ours), statistics.median(raw)
    results.append(("artifact upload", f"{mb / o:.0f} MB/s ({o:.2f} s)",
                    f"OpenSSH cat|ssh {mb / r:.0f} MB/s ({r:.2f} s): ours {r / o:.2f}x "
                    f"(target >= 0.75x)", load))
    with Load() as load:
        plain, secret = [], []
        for _ in range(RUNS):
            plain.append(step_seconds("plain", "log"))
            secret.append(step_seconds("secret", "log"))
    p, s = statistics.median(plain), statistics.median(secret)
    results.append(("log path, no secret", f"{LOG_BYTES / 1e6 / p:.0f} MB/s ({p:.2f} s)", "", load))
    results.append(("log path, 1 secret (13 forms)", f"{LOG_BYTES / 1e6 / s:.0f} MB/s ({s:.2f} s)",
                    f"overhead {100 * (s / p - 1):+.1f}% (target < 10%)", load))
    print(f"{'workload':32} {'figure':28} {'limit / target':48} load")
    for name, figure, target, load in results:
        print(f"{name:32} {figure:28} {target:48} {load.text()}")
finally:
    stop_children()
