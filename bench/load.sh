#!/usr/bin/env bash
# Load benchmark (figures, not pass/fail): run from anywhere with `bash bench/load.sh`.
#
# A throwaway master (no slaves: try requests just queue) on 127.0.0.1, ports picked at run
# time, in a temp dir. Over real OpenSSH it takes:
#   1. 200 concurrent `buildbot try` submissions while 50 `watch --follow --json` clients are
#      connected;
#   2. 100 more concurrent submissions, during which the master is SIGKILLed at a random moment
#      and restarted on the same directory (and ports); the script waits until the restarted
#      master has recorded everything in its spool.
# Then it stops the master and reads DIR/state.sqlite (read-only) and reports:
#   accepted  submissions whose client exited 0 and printed "buildbot: job ... accepted as NAME"
#   recorded  distinct jobs (job_name) in the requests table
#   lost      accepted, but no request recorded for that job name after the restart (must be 0)
#   hung      submissions that hit their deadline (must be 0)
#   watchers  still connected just before the kill
# and the wall time, as a table and one JSON line. The exit status is 0 whatever the figures.
#
# Each submission has a deadline (LOAD_DEADLINE, 60 s). The run is bounded (LOAD_BUDGET, 280 s)
# and everything it started is killed and its temp dir removed on exit.
#
# Environment: BUILDBOT (binary; default: cargo build --release, in $CARGO_TARGET_DIR or
# target/), LOAD_TRIES (200), LOAD_WATCHERS (50), LOAD_CRASH_TRIES (100), LOAD_DEADLINE (60),
# LOAD_SEED (random), LOAD_MAX_STARTUPS (400: all the load comes from one address, so the
# stock "10:30:100" and its per-source share of 25 would refuse most of it by design; "stock"
# keeps the stock limits, whose refusals then show up as "refused").
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${BUILDBOT:-}" ]; then
  cargo build --release --quiet
  BUILDBOT=${CARGO_TARGET_DIR:-$PWD/target}/release/buildbot
fi
BUILDBOT=$(realpath "$BUILDBOT")
for tool in ssh ssh-keygen git python3 timeout; do
  command -v "$tool" >/dev/null || { echo "load.sh: needs $tool" >&2; exit 2; }
done

WORK=$(mktemp -d /tmp/buildbot-load.XXXXXX)
PY_PID=""
cleanup() {
  trap - EXIT INT TERM
  if [ -n "$PY_PID" ] && kill -0 "$PY_PID" 2>/dev/null; then
    kill -TERM "$PY_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$PY_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$PY_PID" 2>/dev/null || true
  fi
  # Whatever the orchestrator started (each in a process group of its own), should it have
  # died before its own cleanup.
  if [ -f "$WORK/pgids" ]; then
    while read -r pgid; do kill -KILL -- "-$pgid" 2>/dev/null || true; done < "$WORK/pgids"
  fi
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cat > "$WORK/load.py" <<'PYTHON'
import json, os, random, re, shlex, signal, sqlite3, subprocess, sys, time

BB, WORK = sys.argv[1], sys.argv[2]
TRIES = int(os.environ.get("LOAD_TRIES", 200))
WATCHERS = int(os.environ.get("LOAD_WATCHERS", 50))
CRASH_TRIES = int(os.environ.get("LOAD_CRASH_TRIES", 100))
DEADLINE = int(os.environ.get("LOAD_DEADLINE", 60))
MAX_STARTUPS = os.environ.get("LOAD_MAX_STARTUPS", "400")
SEED = int(os.environ.get("LOAD_SEED", random.randrange(1 << 30)))
rng = random.Random(SEED)
T0 = time.monotonic()
ACCEPTED = re.compile(r"^buildbot: job (\S+) accepted as (\S+) for ", re.M)
USER = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
MASTER = os.path.join(WORK, "master")
children = []  # every Popen, each the leader of its own process group


def on_term(signum, frame):
    raise SystemExit(128 + signum)


signal.signal(signal.SIGTERM, on_term)


def spawn(argv, **kw):
    kw.setdefault("stdin", subprocess.DEVNULL)
    proc = subprocess.Popen(argv, start_new_session=True, **kw)
    children.append(proc)
    with open(os.path.join(WORK, "pgids"), "a") as f:
        f.write(f"{proc.pid}\n")
    return proc


def kill_group(proc, sig=signal.SIGKILL):
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def run(argv, **kw):
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, timeout=60, **kw)


def log(msg):
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# ---- a master with one try builder (its slave never connects), a user key, a patch ------------
run([BB, "create-master", MASTER, "--ssh-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"],
    stdout=subprocess.DEVNULL)
KEY = os.path.join(WORK, "user_key")
run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "load", "-f", KEY])
run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "slave", "-f", KEY + "-slave"])
os.makedirs(os.path.join(MASTER, "authorized_keys.d"), exist_ok=True)
keys_file = os.path.join(MASTER, "authorized_keys.d", USER)
with open(KEY + ".pub") as src, open(keys_file, "w") as dst:
    dst.write(src.read())
os.chmod(keys_file, 0o600)
REPO = os.path.join(WORK, "repo")
git = ["git", "-c", "user.name=load", "-c", "user.email=load@example.invalid",
       "-c", "init.defaultBranch=main"]
run(git + ["init", "-q", REPO])
run(git + ["-C", REPO, "commit", "-q", "--allow-empty", "-m", "base"])
BASEREV = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True,
                         text=True, check=True).stdout.strip()
PATCH = os.path.join(WORK, "change.patch")
with open(PATCH, "w") as f:
    f.write("--- a/load.txt\n+++ b/load.txt\n@@ -0,0 +1 @@\n+load\n")

config_path = os.path.join(MASTER, "master.toml")
with open(config_path) as f:
    config = f.read()
config = config.replace('authorized_keys = ["%h/.ssh/authorized_keys", "authorized_keys.d/%u"]',
                        'authorized_keys = ["authorized_keys.d/%u"]')
if os.geteuid() == 0:
    config = config.replace("allow_root = false", "allow_root = true")
if MAX_STARTUPS != "stock":
    config = config.replace('max_startups = "10:30:100"', f'max_startups = "{MAX_STARTUPS}"')
    config = config.replace("# max_startups_per_source = 25",
                            f"max_startups_per_source = {MAX_STARTUPS.split(':')[-1]}")
with open(KEY + "-slave.pub") as f:
    slave_key = f.read().strip()
config += f"""
[[slave]]
name = "absent"
public_key = "{slave_key}"

[[builder]]
name = "load"
slaves = ["absent"]
repo = "{REPO}"
steps = [ {{ name = "test", command = "true" }} ]

[[scheduler]]
kind = "try"
builders = ["load"]
"""
with open(config_path, "w") as f:
    f.write(config)

master = None
ports = {}


def start_master(label):
    """Starts the master and reads its ports from stdout; pins them in master.toml so that a
    restart comes back on the same ones."""
    global master
    out = open(os.path.join(WORK, f"master-{label}.out"), "w+")
    err = open(os.path.join(WORK, f"master-{label}.log"), "w")
    master = spawn([BB, "master", MASTER], stdout=out, stderr=err,
                   env=dict(os.environ, RUST_LOG="info,russh=warn"))
    found = {}
    deadline = time.monotonic() + 30
    while "host key" not in found:
        if time.monotonic() > deadline or master.poll() is not None:
            raise SystemExit(f"the master did not start; see {err.name}")
        time.sleep(0.05)
        out.seek(0)
        for line in out.read().splitlines():
            for key in ("ssh", "web", "host key"):
                if line.startswith(key + ": "):
                    found[key] = line[len(key) + 2:]
    ssh_port = int(found["ssh"].rsplit(":", 1)[1])
    http_port = int(found["web"].rstrip("/").rsplit(":", 1)[1])
    if ports and (ports["ssh"], ports["http"]) != (ssh_port, http_port):
        raise SystemExit(f"the restarted master moved to {ssh_port}/{http_port}")
    ports.update(ssh=ssh_port, http=http_port)
    with open(config_path) as f:
        text = f.read()
    text = text.replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{ssh_port}"', 1)
    text = text.replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{http_port}"', 1)
    with open(config_path, "w") as f:
        f.write(text)


SSH = (f"ssh -F /dev/null -i {shlex.quote(KEY)} -o IdentitiesOnly=yes -o BatchMode=yes "
       "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR "
       "-o ConnectTimeout=20")


def submit(phase, index):
    """One `buildbot try` under a deadline; its output goes to files read at the end."""
    base = os.path.join(WORK, f"try-{phase}-{index}")
    argv = ["timeout", "-k", "5", str(DEADLINE), BB, "try", "--diff", PATCH,
            "--baserev", BASEREV, "-b", "load", "--host", "127.0.0.1",
            "--port", str(ports["ssh"]), "--username", USER, "--ssh", SSH,
            "--comment", f"load {phase} {index}"]
    proc = spawn(argv, cwd=WORK, stdout=open(base + ".out", "w"), stderr=open(base + ".err", "w"))
    return {"phase": phase, "index": index, "proc": proc, "base": base, "started": time.monotonic()}


def finish(subs, limit):
    """Waits (at most `limit` s) for the submissions and classifies each."""
    end = time.monotonic() + limit
    for sub in subs:
        try:
            sub["rc"] = sub["proc"].wait(timeout=max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            kill_group(sub["proc"])
            sub["rc"] = sub["proc"].wait()
            sub["rc"] = 124  # our own bound hit: counts as hung
        with open(sub["base"] + ".out") as f:
            found = ACCEPTED.search(f.read())
        sub["job"] = found.group(2) if (found and sub["rc"] == 0) else None
        sub["hung"] = sub["rc"] in (124, 137)


def spool_state():
    names = {}
    for sub in ("new", "cur", "rejected", "tmp"):
        try:
            names[sub] = [n for n in os.listdir(os.path.join(MASTER, "spool", sub))
                          if not n.startswith(".") and not n.endswith(".why")]
        except FileNotFoundError:
            names[sub] = []
    return names


def recorded_jobs():
    db = os.path.join(MASTER, "state.sqlite")
    if not os.path.exists(db):
        return set()
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return {row[0] for row in connection.execute("SELECT DISTINCT job_name FROM requests")}
    except sqlite3.OperationalError:
        return set()  # not created yet
    finally:
        connection.close()


def wait_recovered(limit):
    """Until new/ is empty and every job in cur/ is recorded; the seconds it took, or None."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        spool = spool_state()
        if not spool["new"] and set(spool["cur"]) <= recorded_jobs():
            return time.monotonic() - start
        time.sleep(0.2)
    return None


results = {"seed": SEED}
try:
    start_master("first")
    log(f"master on ssh {ports['ssh']}, web {ports['http']} (seed {SEED})")

    # ---- phase 1: watchers, then 200 concurrent submissions --------------------------------
    watchers = []
    for i in range(WATCHERS):
        base = os.path.join(WORK, f"watch-{i}")
        watchers.append(spawn(shlex.split(SSH) + ["-p", str(ports["ssh"]), f"{USER}@127.0.0.1",
                                                  "watch --follow --json"],
                              stdout=open(base + ".out", "w"), stderr=open(base + ".err", "w")))
    time.sleep(1)
    p1_start = time.monotonic()
    phase1 = [submit(1, i) for i in range(TRIES)]
    finish(phase1, DEADLINE + 15)
    p1_time = time.monotonic() - p1_start
    log(f"phase 1: {sum(1 for s in phase1 if s['job'])}/{TRIES} accepted in {p1_time:.1f}s")
    p1_recorded = wait_recovered(30)

    # ---- phase 2: 100 more, SIGKILL of the master during them, restart ---------------------
    # The kill falls anywhere in the time phase 1 needed for as many submissions.
    window = max(0.5, 0.7 * p1_time * CRASH_TRIES / max(TRIES, 1))
    kill_after = rng.uniform(0.05, window)
    p2_start = time.monotonic()
    phase2 = [submit(2, i) for i in range(CRASH_TRIES)]
    time.sleep(max(0.0, kill_after - (time.monotonic() - p2_start)))
    watchers_alive = sum(1 for w in watchers if w.poll() is None)
    done_before_kill = sum(1 for s in phase2 if s["proc"].poll() is not None)
    spool_at_kill = {k: len(v) for k, v in spool_state().items()}
    master.kill()
    master.wait()
    killed_at = time.monotonic() - p2_start
    log(f"phase 2: master SIGKILLed {killed_at:.2f}s in ({done_before_kill}/{CRASH_TRIES} clients "
        f"done; spool {spool_at_kill})")
    restart = time.monotonic()
    start_master("restarted")
    restart_time = time.monotonic() - restart
    finish(phase2, DEADLINE + 15)
    recovery = wait_recovered(60)
    log(f"restarted in {restart_time:.2f}s; spool recovered "
        + ("in %.1fs" % recovery if recovery is not None else "NOT within 60s"))

    # ---- stop and count ----------------------------------------------------------------------
    master.send_signal(signal.SIGTERM)
    try:
        master.wait(timeout=20)
    except subprocess.TimeoutExpired:
        master.kill()
        master.wait()
    for w in watchers:
        kill_group(w)
    recorded = recorded_jobs()
    spool = spool_state()
    subs = phase1 + phase2
    accepted = {s["job"] for s in subs if s["job"]}
    lost = sorted(accepted - recorded)
    per_phase = {}
    for phase, group in ((1, phase1), (2, phase2)):
        jobs = {s["job"] for s in group if s["job"]}
        per_phase[phase] = {
            "submitted": len(group),
            "accepted": len(jobs),
            "failed": sum(1 for s in group if not s["job"] and not s["hung"]),
            "hung": sum(1 for s in group if s["hung"]),
            "lost": len(jobs - recorded),
        }
    results.update({
        "submitted": len(subs),
        "accepted": len(accepted),
        "recorded": len(recorded),
        "recorded_not_acked": len(recorded - accepted),
        "lost": len(lost),
        "hung": sum(1 for s in subs if s["hung"]),
        "failed": sum(1 for s in subs if not s["job"] and not s["hung"]),
        "phase1": per_phase[1],
        "phase2": per_phase[2],
        "phase1_seconds": round(p1_time, 2),
        "phase1_recorded_seconds": None if p1_recorded is None else round(p1_recorded, 2),
        "watchers": WATCHERS,
        "watchers_connected_before_kill": watchers_alive,
        "kill_after_seconds": round(killed_at, 2),
        "clients_done_before_kill": done_before_kill,
        "spool_at_kill": spool_at_kill,
        "restart_seconds": round(restart_time, 2),
        "recovery_seconds": None if recovery is None else round(recovery, 2),
        "spool_after": {k: len(v) for k, v in spool.items()},
        "max_startups": MAX_STARTUPS,
        "wall_seconds": round(time.monotonic() - T0, 1),
    })
    if lost:
        results["lost_jobs"] = lost[:20]
    exit_codes = {}
    for s in subs:
        if not s["job"]:
            exit_codes[str(s["rc"])] = exit_codes.get(str(s["rc"]), 0) + 1
    results["failed_exit_codes"] = exit_codes
    failed_example = next((s for s in subs if not s["job"]), None)
    if failed_example:
        with open(failed_example["base"] + ".err") as f:
            results["failed_example"] = f.read().strip()[-300:]
finally:
    for proc in children:
        if proc.poll() is None:
            kill_group(proc)
    for proc in children:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

r = results
rows = [
    ("submitted (phase 1 + phase 2)", f"{r['submitted']} ({r['phase1']['submitted']} + {r['phase2']['submitted']})"),
    ("accepted (exit 0 + accepted line)", f"{r['accepted']} ({r['phase1']['accepted']} + {r['phase2']['accepted']})"),
    ("failed (refused / cut by the kill)", f"{r['failed']} ({r['phase1']['failed']} + {r['phase2']['failed']})  exit codes {r['failed_exit_codes']}"),
    ("recorded (distinct jobs in requests)", f"{r['recorded']} ({r['recorded_not_acked']} spooled but not acknowledged)"),
    ("LOST (accepted, not recorded)", f"{r['lost']}   (must be 0)"),
    ("HUNG (hit the {}s deadline)".format(DEADLINE), f"{r['hung']}   (must be 0)"),
    ("phase 1: 200 tries, wall", f"{r['phase1_seconds']} s (all recorded {r['phase1_recorded_seconds']} s later)"),
    ("watchers connected before the kill", f"{r['watchers_connected_before_kill']} of {r['watchers']}"),
    ("kill -9 after / clients done by then", f"{r['kill_after_seconds']} s / {r['clients_done_before_kill']} of {r['phase2']['submitted']}"),
    ("spool at the kill", str(r["spool_at_kill"])),
    ("restart / spool recovered in", f"{r['restart_seconds']} s / {r['recovery_seconds']} s"),
    ("spool after", str(r["spool_after"])),
    ("wall time", f"{r['wall_seconds']} s (seed {r['seed']}, max_startups {r['max_startups']})"),
]
width = max(len(k) for k, _ in rows)
print("buildbot load benchmark")
for key, value in rows:
    print(f"  {key:<{width}}  {value}")
if "lost_jobs" in r:
    print(f"  lost jobs: {' '.join(r['lost_jobs'])}")
if r["failed"] and "failed_example" in r:
    print(f"  a failed client said: {r['failed_example']!r}")
print(json.dumps(r, sort_keys=True))
PYTHON

timeout -s TERM "${LOAD_BUDGET:-280}" python3 "$WORK/load.py" "$BUILDBOT" "$WORK" &
PY_PID=$!
status=0
wait "$PY_PID" || status=$?
PY_PID=""
if [ "$status" -ne 0 ]; then
  echo "load.sh: the benchmark did not complete (status $status)" >&2
  [ -n "${LOAD_KEEP_LOGS:-}" ] && cp -r "$WORK" "$LOAD_KEEP_LOGS" 2>/dev/null
  exit "$status"
fi
exit 0
