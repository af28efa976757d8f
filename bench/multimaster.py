"""The several-masters bench behind `bash bench/multimaster.sh` (figures, never pass/fail).

Usage: python3 bench/multimaster.py   (environment below; multimaster.sh sets it up)

Several masters on one PostgreSQL, each figure next to the same workload on one master with
its embedded SQLite file, in the same run. Everything runs on 127.0.0.1 under BENCH_WORK;
PostgreSQL is the private server multimaster.sh started (unix socket only, in BENCH_PG_SOCKET),
one fresh database per scenario. Times come from the store (builds.started_at, finished_at;
the masters write them) and this script's clock (the trigger: a job file renamed into a
master's spool/new), one machine's clock for both. Every figure carries the machine's load.

The workloads (BENCH_SKIP=claims,live,events,failover,burst skips some):
  claims    BENCH_JOBS (300) trivial try jobs dropped into the masters' spools in turn, with
            BENCH_SWARM (100) slaves (`buildbot bench-swarm`: real slave code, one process)
            spread over the masters; for one SQLite master and for 1, 2, 3 (BENCH_MASTERS)
            PostgreSQL masters. claims/s = jobs / (last builds.started_at - first trigger);
            duplicates = requests with more than one build that did not end as `exception`
            (a build ended as `exception` is one a lost master or slave gave back, retried).
  live      a step on a slave of master A prints its clock every 0.1 s (BENCH_LINES, 50
            lines); readers of the step's log (`?follow=1`) on master B and on A time each line
            (p50/p99), and a third joins A one second into the step (a reader that comes
            before A's log file exists is served from the store). Next to it: the same on one
            SQLite master.
  events    `ssh B watch --follow --json` (real OpenSSH) while trivial builds run on a slave of
            A: each event's publication (`at`, set by A) until B's watch prints it.
  failover  two PostgreSQL masters, one slave each (each slave lists both masters); a build
            runs; the master owning it gets `kill -9` or SIGSTOP; with [database] lease = 2s
            and 10s (BENCH_LEASES). detection = the other master's /api/masters shows the
            owner "lost"; re-queue = the build ended as exception and its request waits again
            (builds.finished_at of the ended build, same transaction); restart = the retried
            build's builds.started_at. All from the kill.
  burst     BENCH_BURST (100) trivial builds queued at once on one master with 2 slaves,
            builds/s = builds / (last finished_at - first trigger), SQLite and PostgreSQL;
            on PostgreSQL also the transactions and rows written per build.
CPU per build (claims, burst) is the user+system CPU of the masters, the swarm and the
PostgreSQL server (postmaster and backends) over the measurement, divided by the builds.
"""

import http.client
import json
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time

import benchlib
from benchlib import Load, free_port, spawn

BB = os.environ["BUILDBOT"]
WORK = os.environ["BENCH_WORK"]
PG_SOCKET = os.environ.get("BENCH_PG_SOCKET", "")
PG_BIN = os.environ.get("BENCH_PG_BIN", "")
PG_DATA = os.environ.get("BENCH_PG_DATA", "")
JOBS = int(os.environ.get("BENCH_JOBS", "300"))
SWARM = int(os.environ.get("BENCH_SWARM", "100"))
BURST = int(os.environ.get("BENCH_BURST", "100"))
LINES = int(os.environ.get("BENCH_LINES", "50"))
MASTER_COUNTS = [int(n) for n in os.environ.get("BENCH_MASTERS", "1,2,3").split(",") if n]
LEASES = [lease for lease in os.environ.get("BENCH_LEASES", "2s,10s").split(",") if lease]
SKIP = set(filter(None, os.environ.get("BENCH_SKIP", "").split(",")))
USER = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()


def log(message):
    print(f"multimaster: {message}", file=sys.stderr, flush=True)


class Failed(Exception):
    """A workload could not be measured; its row says why instead of a figure."""


def run(argv, **kw):
    return benchlib.run(argv, failed=Failed, **kw)


def wait_for(condition, limit, what, poll=0.05):
    deadline = time.monotonic() + limit
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Failed(f"timed out after {limit}s waiting for {what}")
        time.sleep(poll)


def end_process(proc, how=signal.SIGTERM, limit=20):
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGCONT)
        proc.send_signal(how)
        proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


# ---- machine load ------------------------------------------------------------------------------
CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid):
    """User + system CPU seconds of a process (all its threads), None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def pg_pids():
    """The PostgreSQL server's processes: the postmaster and its children (the backends)."""
    try:
        with open(os.path.join(PG_DATA, "postmaster.pid")) as f:
            postmaster = int(f.readline())
    except (OSError, ValueError):
        return []
    pids = [postmaster]
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == postmaster:
                    pids.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return pids


class Cpu:
    """CPU seconds spent by groups of processes over a measurement: {group: lambda: pids}.
    A process that ends within the window (a short psql of this script) is not counted."""

    def __init__(self, groups):
        self.groups = groups

    def __enter__(self):
        self.start = {name: {pid: proc_cpu(pid) for pid in pids()}
                      for name, pids in self.groups.items()}
        return self

    def __exit__(self, *exc):
        self.spent = {}
        for name, pids in self.groups.items():
            total = 0.0
            for pid in pids():
                now = proc_cpu(pid)
                if now is not None:
                    total += now - (self.start[name].get(pid) or 0.0)
            self.spent[name] = total
        return False

    def per(self, count):
        """Milliseconds per item, per group."""
        return {name: round(spent * 1000 / count, 2) for name, spent in self.spent.items()}


def cpu_text(per_build):
    return ", ".join(f"{name} {ms:.1f}" for name, ms in per_build.items())


# ---- the stores ----------------------------------------------------------------------------------
class SqliteDb:
    kind = "SQLite"

    def __init__(self, master):
        self.path = os.path.join(master.dir, "state.sqlite")

    def rows(self, sql):
        connection = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
        try:
            return [tuple("" if v is None else v for v in row) for row in connection.execute(sql)]
        finally:
            connection.close()


class PgDb:
    kind = "PostgreSQL"
    count = 0

    def __init__(self, label):
        PgDb.count += 1
        self.name = f"mm_{label}_{PgDb.count}"
        run([os.path.join(PG_BIN, "createdb"), "-h", PG_SOCKET, "-U", "postgres", self.name])

    def url(self):
        return f"host={PG_SOCKET} dbname={self.name} user=postgres"

    def stats(self):
        """(transactions committed in this database, rows inserted, updated, deleted), not
        counting this script's own queries (each one transaction)."""
        time.sleep(1.5)  # backends publish their statistics when idle, within a second
        commits, = self.rows("SELECT xact_commit FROM pg_stat_database "
                             f"WHERE datname = '{self.name}'")[0]
        ins, upd, dele = self.rows("SELECT COALESCE(SUM(n_tup_ins), 0), COALESCE(SUM(n_tup_upd), 0), "
                                   "COALESCE(SUM(n_tup_del), 0) FROM pg_stat_user_tables")[0]
        return (int(commits) - self.queries, int(ins), int(upd), int(dele))

    def rows(self, sql):
        self.queries = getattr(self, "queries", 0) + 1
        out = run([os.path.join(PG_BIN, "psql"), "-X", "-q", "-At", "-F", "\t", "-h", PG_SOCKET,
                   "-U", "postgres", "-d", self.name, "-v", "ON_ERROR_STOP=1", "-c", sql],
                  capture_output=True, text=True).stdout
        return [tuple(line.split("\t")) for line in out.splitlines() if line]


def num(value):
    return float(value) if value not in ("", None) else None


# ---- set-up shared by every scenario -----------------------------------------------------------
KEY = os.path.join(WORK, "user_key")
run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", KEY])
REPO = os.path.join(WORK, "repo")
git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid",
       "-c", "init.defaultBranch=main"]
run(git + ["init", "-q", REPO])
with open(os.path.join(REPO, "README"), "w") as f:
    f.write("bench\n")
run(git + ["-C", REPO, "add", "README"])
run(git + ["-C", REPO, "commit", "-q", "-m", "base"])
BASEREV = run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True,
              text=True).stdout.strip()
SSH_OPTS = ["-F", "/dev/null", "-i", KEY, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", "GSSAPIAuthentication=no", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]
LIVE_CMD = f"for i in $(seq {LINES + 10}); do date +%%s.%%N; sleep 0.1; done"
counter = iter(range(1, 1 << 30))


def job_name(tag, builder):
    return f"{int(time.time() * 1000)}.mm{tag}-{next(counter)}.{builder}"


def builder_block(name, slaves, command):
    return (f'\n[[builder]]\nname = "{name}"\nslaves = {json.dumps(slaves)}\nrepo = "{REPO}"\n'
            f'steps = [ {{ name = "{name}", command = {json.dumps(command)} }} ]\n')


class Master:
    def __init__(self, label, name, db, lease=None, host_key_from=None):
        self.label, self.name, self.db = label, name, db
        self.dir = os.path.join(WORK, label)
        self.ssh_port, self.http_port = free_port(), free_port()
        self.ssh, self.http = f"127.0.0.1:{self.ssh_port}", f"127.0.0.1:{self.http_port}"
        run([BB, "create-master", self.dir, "--ssh-listen", self.ssh,
             "--http-listen", self.http], stdout=subprocess.DEVNULL)
        os.makedirs(os.path.join(self.dir, "authorized_keys.d"), exist_ok=True)
        keys = os.path.join(self.dir, "authorized_keys.d", USER)
        with open(KEY + ".pub") as src, open(keys, "w") as dst:
            dst.write(src.read())
        os.chmod(keys, 0o600)
        path = os.path.join(self.dir, "master.toml")
        with open(path) as f:
            text = f.read()
        text = text.replace('name = "example"', f'name = "{name}"', 1)
        text = text.replace('authorized_keys = ["%h/.ssh/authorized_keys", "authorized_keys.d/%u"]',
                            'authorized_keys = ["authorized_keys.d/%u"]')
        if os.geteuid() == 0:
            text = text.replace("allow_root = false", "allow_root = true")
        # Up to a few hundred slaves dial at once: no random early drop on loopback.
        text = text.replace('max_startups = "10:30:100"', 'max_startups = "400"')
        text = text.replace("# max_startups_per_source = 25", "max_startups_per_source = 400")
        if isinstance(db, PgDb):
            text += f'\n[database]\nurl = "{db.url()}"\n'
            if lease:
                text += f'lease = "{lease}"\n'
        with open(path, "w") as f:
            f.write(text)
        if host_key_from:
            # One host key for the cluster (docs/multimaster.md): copy the first master's.
            for name_ in ("host_key", "host_key.pub"):
                with open(os.path.join(host_key_from.dir, name_), "rb") as src, \
                        open(os.path.join(self.dir, name_), "wb") as dst:
                    dst.write(src.read())
            os.chmod(os.path.join(self.dir, "host_key"), 0o600)
        with open(os.path.join(self.dir, "host_key.pub")) as f:
            self.host_key = f.read().strip()
        self.proc = None

    def configure(self, text):
        with open(os.path.join(self.dir, "master.toml"), "a") as f:
            f.write(text)

    def start(self, limit=120):
        self.proc = spawn([BB, "master", self.dir], stdout=subprocess.DEVNULL,
                          stderr=open(self.dir + ".log", "a"),
                          env=dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn")))
        self.proc.log = self.dir + ".log"
        deadline = time.monotonic() + limit
        for port in (self.ssh_port, self.http_port):
            while True:
                if self.proc.poll() is not None:
                    raise Failed(f"master {self.name} did not start: {self.log_tail()}")
                if time.monotonic() > deadline:
                    raise Failed(f"master {self.name} not listening after {limit}s: "
                                 f"{self.log_tail()}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.01)

    def log_tail(self, lines=5):
        try:
            with open(self.dir + ".log", errors="replace") as f:
                return " | ".join(line.strip() for line in f.readlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self):
        end_process(self.proc)

    def api(self, path, timeout=30):
        connection = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=timeout)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            if response.status != 200:
                raise Failed(f"GET {path} on {self.name}: {response.status} "
                             f"{body[:200].decode(errors='replace')}")
            return json.loads(body)
        finally:
            connection.close()

    def submit(self, job, builder):
        """A try job as a tryserver delivers it: spool/tmp, then a rename into spool/new.
        Returns the trigger time (just after the rename)."""
        body = json.dumps({
            "jobid": job, "branch": "main", "baserev": BASEREV, "patch_level": 1,
            "repository": "", "project": "", "who": USER, "comment": "bench",
            "builderNames": [builder], "patch_body": None,
        })
        data = b"1:5," + f"{len(body)}:{body},".encode()
        tmp = os.path.join(self.dir, "spool", "tmp", job)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, os.path.join(self.dir, "spool", "new", job))
        return time.time()

    def slaves_connected(self):
        try:
            return sum(1 for slave in self.api("/api/slaves", timeout=5) if slave.get("connected"))
        except (OSError, ValueError, Failed):
            return -1


def cluster(label, count, db, lease=None):
    masters = [Master(f"{label}-{chr(ord('a') + i)}", f"ci-{chr(ord('a') + i)}", db, lease)
               for i in range(1)]
    for i in range(1, count):
        masters.append(Master(f"{label}-{chr(ord('a') + i)}", f"ci-{chr(ord('a') + i)}", db,
                              lease, host_key_from=masters[0]))
    return masters


def set_slave_masters(slave_dir, addresses):
    path = os.path.join(slave_dir, "slave.toml")
    with open(path) as f:
        lines = f.read().splitlines()
    lines = [f"master = {json.dumps(addresses)}" if line.startswith("master = ") else line
             for line in lines]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def make_slave(directory, name, masters):
    """A real slave that dials `masters` in this order; returns its [[slave]] block."""
    out = run([BB, "create-slave", directory, "--master", masters[0].ssh, "--name", name,
               "--master-host-key", masters[0].host_key], capture_output=True, text=True).stdout
    set_slave_masters(directory, [m.ssh for m in masters])
    return out[out.index("[[slave]]"):] + "\n"


def start_slave(directory):
    proc = spawn([BB, "slave", directory], stdout=subprocess.DEVNULL,
                 stderr=open(directory + ".log", "a"),
                 env=dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn")))
    proc.log = directory + ".log"
    return proc


def alive(procs, condition):
    """`condition`, failing at once with its log's end when one of `procs` has exited."""
    def check():
        for proc in procs:
            if proc.poll() is not None:
                tail = "(no log)"
                if getattr(proc, "log", None) and os.path.exists(proc.log):
                    with open(proc.log, errors="replace") as f:
                        tail = " | ".join(line.strip() for line in f.readlines()[-3:])
                raise Failed(f"{' '.join(os.path.basename(a) for a in proc.args[:2])} exited "
                             f"{proc.returncode}: {tail}")
        return condition()
    return check


def connected_total(masters):
    return sum(max(m.slaves_connected(), 0) for m in masters)


def finished_builds(db, tag):
    """{job_name: (request_id, started, finished, master)} of the jobs tagged `tag` that have
    a build that did not end as exception."""
    rows = db.rows(
        "SELECT r.job_name, r.id, b.started_at, b.finished_at, b.master FROM builds b "
        "JOIN requests r ON b.request_id = r.id "
        f"WHERE r.job_name LIKE '%.mm{tag}-%' AND b.finished_at IS NOT NULL "
        "AND (b.result IS NULL OR b.result <> 'exception')")
    return {row[0]: (row[1], float(row[2]), float(row[3]), row[4]) for row in rows}


def wait_jobs(db, tag, count, limit):
    deadline = time.monotonic() + limit
    while True:
        done = finished_builds(db, tag)
        if len(done) >= count or time.monotonic() > deadline:
            return done
        time.sleep(0.25)


def duplicates(db):
    """Requests with more than one build not explained by a retry (result not exception)."""
    rows = db.rows("SELECT request_id, COUNT(*) FROM builds "
                   "WHERE result IS NULL OR result <> 'exception' "
                   "GROUP BY request_id HAVING COUNT(*) > 1")
    return len(rows)


def percentile(values, p):
    ordered = sorted(values)
    if not ordered:
        return None
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


rows = []  # (section, workload, figure, aim, load)
results = {}


def row(section, name, figure, aim, load):
    rows.append((section, name, figure, aim, load.text() if load else ""))
    log(f"{name}: {figure}")


def stop_all(procs):
    for proc in procs:
        end_process(proc)


# ---- claims ------------------------------------------------------------------------------------
def claims(kind, count):
    label = f"claims-{kind.lower()}-{count}"
    db_pg = PgDb("claims") if kind == "PostgreSQL" else None
    masters = cluster(label, count, db_pg)
    db = db_pg or SqliteDb(masters[0])
    swarm_dir = os.path.join(WORK, label + "-swarm")
    blocks = run([BB, "bench-swarm", swarm_dir, "--count", str(SWARM), "--master",
                  masters[0].ssh, "--master-host-key", masters[0].host_key],
                 capture_output=True, text=True, timeout=1800).stdout
    names = [f"swarm-{i}" for i in range(SWARM)]
    for i in range(SWARM):
        order = [masters[(i + k) % count].ssh for k in range(count)]
        set_slave_masters(os.path.join(swarm_dir, f"swarm-{i}"), order)
    config = "\n" + blocks + builder_block("claim", names, "true")
    config += '\n[[scheduler]]\nkind = "try"\nbuilders = ["claim"]\n'
    for master in masters:
        master.configure(config)
    procs = []
    try:
        for master in masters:
            master.start()
            procs.append(master.proc)
        swarm = spawn([BB, "bench-swarm", swarm_dir, "--count", str(SWARM)],
                      stdout=subprocess.DEVNULL, stderr=open(swarm_dir + ".log", "w"),
                      env=dict(os.environ, RUST_LOG="error"))
        swarm.log = swarm_dir + ".log"
        procs.insert(0, swarm)
        wait_for(alive(procs, lambda: connected_total(masters) >= SWARM), 300,
                 f"{SWARM} swarm slaves to connect", poll=0.5)
        # Warm-up: about one build per slave (the first checkout clones).
        warm = [job_name(f"{label}-warm", "claim") for _ in range(SWARM)]
        for i, name in enumerate(warm):
            masters[i % count].submit(name, "claim")
        done = wait_jobs(db, f"{label}-warm", SWARM, 600)
        if len(done) < SWARM:
            raise Failed(f"warm-up: {len(done)} of {SWARM} builds finished in 600 s; "
                         f"{masters[0].log_tail()}")
        tag = f"{label}-run"
        names = [job_name(tag, "claim") for _ in range(JOBS)]
        groups = {"masters": lambda: [m.proc.pid for m in masters],
                  "swarm": lambda: [swarm.pid]}
        if db_pg:
            groups["PostgreSQL"] = pg_pids
        with Load() as load, Cpu(groups) as cpu:
            first = None
            for i, name in enumerate(names):
                at = masters[i % count].submit(name, "claim")
                first = first or at
            done = wait_jobs(db, tag, JOBS, max(600, JOBS))
        starts = [started for (_, started, _, _) in done.values()]
        finishes = [finished for (_, _, finished, _) in done.values()]
        per_master = {}
        for (_, _, _, master) in done.values():
            per_master[master or "?"] = per_master.get(master or "?", 0) + 1
        dup = duplicates(db)
        figure = {
            "masters": count, "backend": kind, "jobs": JOBS, "built": len(done),
            "claims_per_s": round(len(done) / (max(starts) - first), 1) if starts else None,
            "builds_per_s": round(len(done) / (max(finishes) - first), 1) if finishes else None,
            "duplicates": dup, "per_master": per_master, "load": load.text(),
            "cpu_ms_per_build": cpu.per(max(len(done), 1)),
        }
        return figure, load
    finally:
        stop_all(procs)


def claims_section():
    base = None
    configs = [("SQLite", 1)] + [("PostgreSQL", n) for n in MASTER_COUNTS]
    for kind, count in configs:
        what = (f"claims: {JOBS} try jobs, {SWARM} slaves, {count} {kind} "
                f"master{'s' if count > 1 else ''}")
        try:
            fig, load = claims(kind, count)
        except Failed as err:
            row("claims", what, f"not measured: {err}", "", None)
            continue
        results[f"claims_{kind.lower()}_{count}"] = fig
        if kind == "PostgreSQL" and count == 1:
            base = fig["claims_per_s"]
        scale = ""
        if kind == "PostgreSQL" and base and count > 1 and fig["claims_per_s"]:
            scale = f"; {fig['claims_per_s'] / base:.2f}x one PostgreSQL master"
        missing = "" if fig["built"] == JOBS else f"; only {fig['built']} of {JOBS} built"
        split = ""
        if count > 1:
            split = "; claimed " + " / ".join(f"{m} {n}" for m, n in sorted(fig["per_master"].items()))
        row("claims", what,
            f"{fig['claims_per_s']} claims/s ({fig['builds_per_s']} builds/s finished), "
            f"duplicates {fig['duplicates']}{scale}{split}{missing}; CPU ms per build: "
            f"{cpu_text(fig['cpu_ms_per_build'])}",
            "scales with masters; duplicates 0", load)


# ---- a log line on A's slave -> follow readers ---------------------------------------------------
class Follow(threading.Thread):
    """Reads a step's raw log with ?follow=1 and times each line (the line is the slave's clock
    when the step printed it)."""

    def __init__(self, master, path, delay=0.0):
        super().__init__(daemon=True)
        self.master, self.path, self.delays, self.error = master, path, [], None
        self.delay = delay
        self.bytes, self.seconds = 0, None

    def run(self):
        time.sleep(self.delay)
        try:
            connection = http.client.HTTPConnection("127.0.0.1", self.master.http_port, timeout=120)
            connected = time.time()
            connection.request("GET", self.path)
            response = connection.getresponse()
            if response.status != 200:
                self.error = f"{response.status} {response.read()[:200].decode(errors='replace')}"
                return
            pending = b""
            while True:
                chunk = response.read1(65536)
                now = time.time()
                if not chunk:
                    break
                self.bytes += len(chunk)
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    try:
                        printed = float(line)
                    except ValueError:
                        continue
                    if printed > connected:  # printed before we connected: not live
                        self.delays.append((now - printed) * 1000)
            connection.close()
            self.seconds = time.time() - connected
        except (OSError, http.client.HTTPException) as err:
            self.error = str(err)


def step_number(master, builder, step):
    try:
        builds = master.api(f"/api/builds?builder={builder}", timeout=5)
    except (OSError, ValueError, Failed):
        return None
    if not builds:
        return None
    for row_ in builds[0].get("steps", []):
        if row_.get("name") == step and row_.get("result") in (None, ""):
            return builds[0]["number"], row_["number"]
    return None


def latency_text(delays):
    if not delays:
        return "no line arrived"
    return (f"p50 {statistics.median(delays):.1f} ms, p99 {percentile(delays, 99):.1f} ms, "
            f"max {max(delays):.1f} ms ({len(delays)} lines)")


def live(kind):
    label = f"live-{kind.lower()}"
    db_pg = PgDb("live") if kind == "PostgreSQL" else None
    masters = cluster(label, 2 if db_pg else 1, db_pg)
    a = masters[0]
    slave_dir = os.path.join(WORK, label + "-s1")
    config = "\n" + make_slave(slave_dir, "s1", [a])
    config += builder_block("live", ["s1"], LIVE_CMD)
    config += builder_block("noop", ["s1"], "true")
    config += '\n[[scheduler]]\nkind = "try"\nbuilders = ["live", "noop"]\n'
    for master in masters:
        master.configure(config)
    procs = []
    try:
        for master in masters:
            master.start()
            procs.append(master.proc)
        procs.insert(0, start_slave(slave_dir))
        wait_for(alive(procs, lambda: a.slaves_connected() == 1), 60,
                 "the slave to connect to A")
        db = db_pg or SqliteDb(a)
        warm = job_name(f"{label}-warm", "noop")
        a.submit(warm, "noop")
        if not wait_jobs(db, f"{label}-warm", 1, 120):
            raise Failed(f"the warm-up build did not finish: {a.log_tail()}")
        out = {}
        if "live" not in SKIP:
            a.submit(job_name(label, "live"), "live")
            with Load() as load:
                number, step = wait_for(lambda: step_number(a, "live", "live"), 120,
                                        "the live step", poll=0.02)
                path = f"/builders/live/builds/{number}/steps/{step}/logs/stdout/raw?follow=1"
                # With a shared store, a third reader joins A one second into the step (after
                # its first lines): where a log is read from depends on when one asks.
                readers = [Follow(master, path) for master in masters]
                if len(masters) > 1:
                    readers.append(Follow(a, path, delay=1.0))
                for reader in readers:
                    reader.start()
                for reader in readers:
                    reader.join(timeout=LINES * 0.1 + 120)
            out["live"] = ([(r.master.name, r) for r in readers], load)
        if "events" not in SKIP:
            out["events"] = events_latency(masters, db, label)
        return out
    finally:
        stop_all(procs)


def events_latency(masters, db, label):
    """`ssh B watch --follow --json` (and on A) while trivial builds run on A's slave."""
    a = masters[0]
    watchers = []
    for master in list(reversed(masters[1:])) + [a]:
        proc = spawn(["ssh", *SSH_OPTS, "-p", str(master.ssh_port), f"{USER}@127.0.0.1",
                      "watch", "--follow", "--json", "noop"],
                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        delays = []

        def reader(proc=proc, delays=delays):
            for line in proc.stdout:
                now = time.time()
                try:
                    item = json.loads(line)
                except ValueError:
                    continue
                if item.get("item") == "event" and item.get("at"):
                    delays.append((now - float(item["at"])) * 1000)
        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        watchers.append((master.name, proc, thread, delays))
    time.sleep(2)  # both watchers connected and past their status snapshot
    tag = f"{label}-events"
    with Load() as load:
        for _ in range(20):
            a.submit(job_name(tag, "noop"), "noop")
        wait_jobs(db, tag, 20, 300)
        time.sleep(2)
    for _, proc, thread, _ in watchers:
        end_process(proc)
        thread.join(timeout=5)
    return [(name, delays) for name, _, _, delays in watchers], load


def live_section():
    for kind in ("SQLite", "PostgreSQL"):
        try:
            out = live(kind)
        except Failed as err:
            row("live", f"live logs and events, {kind}", f"not measured: {err}", "", None)
            continue
        if "live" in out:
            readers, load = out["live"]
            for index, (name, reader) in enumerate(readers):
                where = ("one SQLite master" if kind == "SQLite" else
                         ("another master (B)" if index == 1 else "the same master (A)"))
                if reader.delay:
                    where += ", joined 1 s into the step"
                    name += "_late"
                figure = latency_text(reader.delays) if not reader.error else \
                    f"not measured: {reader.error}"
                if not reader.delays and not reader.error:
                    figure += (f" (the follow answered 200 with {reader.bytes} bytes and ended "
                               f"after {reader.seconds or 0:.1f} s)")
                results[f"live_{kind.lower()}_{name}"] = {
                    "lines": len(reader.delays), "error": reader.error,
                    "p50_ms": statistics.median(reader.delays) if reader.delays else None,
                    "p99_ms": percentile(reader.delays, 99)}
                aim = "p99 < 250 ms" if index == 1 else "—"
                row("live", f"a step's log line on A's slave -> ?follow=1 on {where}", figure,
                    aim, load)
        if "events" in out:
            watchers, load = out["events"]
            for index, (name, delays) in enumerate(watchers):
                where = ("one SQLite master" if kind == "SQLite" else
                         ("another master (B)" if index == 0 else "the same master (A)"))
                results[f"events_{kind.lower()}_{name}"] = {
                    "events": len(delays),
                    "p50_ms": statistics.median(delays) if delays else None,
                    "p99_ms": percentile(delays, 99)}
                row("live", f"an event on A (20 builds) -> `watch --follow` on {where}",
                    latency_text(delays).replace("lines", "events"),
                    "p99 < 250 ms" if where.startswith("another") else "—", load)


# ---- failover ------------------------------------------------------------------------------------
def failover(lease, how):
    label = f"failover-{lease}-{how}"
    db = PgDb("failover")
    masters = cluster(label, 2, db, lease)
    a, b = masters
    dirs = [os.path.join(WORK, f"{label}-s{i}") for i in (1, 2)]
    config = "\n" + make_slave(dirs[0], "s1", [a, b]) + make_slave(dirs[1], "s2", [b, a])
    config += builder_block("long", ["s1", "s2"], "sleep 4")
    config += '\n[[scheduler]]\nkind = "try"\nbuilders = ["long"]\n'
    for master in masters:
        master.configure(config)
    procs = []
    try:
        for master in masters:
            master.start()
            procs.append(master.proc)
        for directory in dirs:
            procs.insert(0, start_slave(directory))
        wait_for(alive(procs, lambda: a.slaves_connected() == 1 and b.slaves_connected() == 1), 60,
                 "one slave on each master")
        # Warm-up: a build on each slave (the first checkout clones).
        for _ in range(2):
            a.submit(job_name(f"{label}-warm", "long"), "long")
        wait_jobs(db, f"{label}-warm", 2, 120)
        job = job_name(label, "long")
        a.submit(job, "long")

        def running():
            got = db.rows("SELECT b.id, b.request_id, b.master FROM builds b JOIN requests r "
                          f"ON b.request_id = r.id WHERE r.job_name = '{job}' "
                          "AND b.finished_at IS NULL")
            return got[0] if got else None
        build_id, request_id, owner = wait_for(running, 60, "the build to start", poll=0.05)
        victim = a if owner == a.name else b
        survivor = b if victim is a else a
        time.sleep(0.3)  # the step is running on the slave
        with Load() as load:
            t0 = time.time()
            if how == "kill":
                victim.proc.send_signal(signal.SIGKILL)
            else:
                victim.proc.send_signal(signal.SIGSTOP)

            def lost():
                try:
                    for m in survivor.api("/api/masters", timeout=5):
                        if m["name"] == victim.name and m["state"] == "lost":
                            return time.time()
                except (OSError, ValueError, Failed, KeyError):
                    pass
                return None
            limit = 6 * float(lease.rstrip("s")) + 60
            detected = wait_for(lost, limit, f"{survivor.name} to see {victim.name} lost",
                                poll=0.02)

            def restarted():
                got = db.rows(f"SELECT id, started_at FROM builds WHERE request_id = {request_id} "
                              f"AND id <> {build_id}")
                return got[0] if got else None
            new_id, new_started = wait_for(restarted, limit, "the retried build to start",
                                           poll=0.05)
        ended = db.rows(f"SELECT finished_at, result, reason FROM builds WHERE id = {build_id}")[0]
        requeued = num(ended[0])
        fig = {"lease": lease, "how": how, "victim": victim.name,
               "detection_s": round(detected - t0, 2),
               "requeue_s": round(requeued - t0, 2) if requeued else None,
               "restart_s": round(float(new_started) - t0, 2),
               "ended_as": ended[1], "reason": ended[2], "load": load.text()}
        # The retried build finishes; the request has exactly one build that counts.
        wait_for(lambda: db.rows(f"SELECT 1 FROM builds WHERE id = {new_id} "
                                 "AND finished_at IS NOT NULL"), 120, "the retried build's end")
        if how == "stop":
            # Back from the stall: the cluster declared its run lost, so it must stop itself.
            resumed = time.time()
            os.killpg(victim.proc.pid, signal.SIGCONT)
            try:
                victim.proc.wait(timeout=max(30, 3 * float(lease.rstrip("s"))))
                fig["stalled_master_after_sigcont"] = \
                    f"stopped itself {time.time() - resumed:.2f} s after SIGCONT"
            except subprocess.TimeoutExpired:
                fig["stalled_master_after_sigcont"] = "still running 30 s after SIGCONT"
            time.sleep(1)
        counted = db.rows("SELECT COUNT(*) FROM builds WHERE request_id = "
                          f"{request_id} AND (result IS NULL OR result <> 'exception')")[0][0]
        fig["counted_builds"] = int(counted)
        fig["duplicates"] = duplicates(db)
        return fig, load
    finally:
        stop_all(procs)


def failover_section():
    for lease in LEASES:
        for how in ("kill", "stop"):
            what = (f"failover, lease {lease}, {'kill -9' if how == 'kill' else 'SIGSTOP'} of "
                    f"the master owning a running build")
            try:
                fig, load = failover(lease, how)
            except Failed as err:
                row("failover", what, f"not measured: {err}", "", None)
                continue
            results[f"failover_{lease}_{how}"] = fig
            aim = f"< {2 * float(lease.rstrip('s')):g} s (2 x lease)"
            extra = f"; {fig['stalled_master_after_sigcont']}" \
                if "stalled_master_after_sigcont" in fig else ""
            row("failover", what,
                f"detection {fig['detection_s']} s, re-queue {fig['requeue_s']} s, "
                f"restart {fig['restart_s']} s (from the signal); the build ended as "
                f"{fig['ended_as']}; builds that count for the request: "
                f"{fig['counted_builds']}; duplicates {fig['duplicates']}{extra}", aim, load)


# ---- burst ---------------------------------------------------------------------------------------
def burst(kind):
    label = f"burst-{kind.lower()}"
    db_pg = PgDb("burst") if kind == "PostgreSQL" else None
    (master,) = cluster(label, 1, db_pg)
    db = db_pg or SqliteDb(master)
    dirs = [os.path.join(WORK, f"{label}-s{i}") for i in (1, 2)]
    config = "\n" + make_slave(dirs[0], "s1", [master]) + make_slave(dirs[1], "s2", [master])
    config += builder_block("burst", ["s1", "s2"], "true")
    config += '\n[[scheduler]]\nkind = "try"\nbuilders = ["burst"]\n'
    master.configure(config)
    procs = []
    try:
        master.start()
        procs.append(master.proc)
        for directory in dirs:
            procs.insert(0, start_slave(directory))
        wait_for(alive(procs, lambda: master.slaves_connected() == 2), 60, "both slaves")
        for _ in range(2):
            master.submit(job_name(f"{label}-warm", "burst"), "burst")
        wait_jobs(db, f"{label}-warm", 2, 120)
        names = [job_name(f"{label}-run", "burst") for _ in range(BURST)]
        before = db_pg.stats() if db_pg else None
        groups = {"master": lambda: [master.proc.pid]}
        if db_pg:
            groups["PostgreSQL"] = pg_pids
        with Load() as load, Cpu(groups) as cpu:
            first = None
            for name in names:
                at = master.submit(name, "burst")
                first = first or at
            done = wait_jobs(db, f"{label}-run", BURST, 600)
        last = max(finished for (_, _, finished, _) in done.values())
        fig = {"builds_per_s": round(len(done) / (last - first), 1), "built": len(done),
               "seconds": round(last - first, 2), "load": load.text(),
               "cpu_ms_per_build": cpu.per(max(len(done), 1))}
        if db_pg:
            after = db_pg.stats()
            n = max(len(done), 1)
            fig["per_build_in_postgresql"] = {
                key: round((a - b) / n, 1) for key, a, b in
                zip(("commits", "rows_inserted", "rows_updated", "rows_deleted"), after, before)}
        return fig, load
    finally:
        stop_all(procs)


def burst_section():
    figures = {}
    for kind in ("SQLite", "PostgreSQL"):
        what = f"{BURST} trivial builds queued at once, one {kind} master, 2 slaves"
        try:
            fig, load = burst(kind)
        except Failed as err:
            row("burst", what, f"not measured: {err}", "", None)
            continue
        figures[kind] = fig["builds_per_s"]
        results[f"burst_{kind.lower()}"] = fig
        ratio = ""
        if kind == "PostgreSQL" and figures.get("SQLite"):
            ratio = f" ({fig['builds_per_s'] / figures['SQLite']:.2f}x SQLite)"
        missing = "" if fig["built"] == BURST else f"; only {fig['built']} of {BURST} built"
        per = fig.get("per_build_in_postgresql")
        writes = (f"; per build in PostgreSQL: {per['commits']} commits, {per['rows_inserted']} "
                  f"rows inserted, {per['rows_updated']} updated, {per['rows_deleted']} deleted"
                  if per else "")
        row("burst", what, f"{fig['builds_per_s']} builds/s{ratio}{missing}; CPU ms per build: "
            f"{cpu_text(fig['cpu_ms_per_build'])}{writes}",
            "PostgreSQL ≥ 0.5x SQLite" if kind == "PostgreSQL" else "—", load)


# ---- main ----------------------------------------------------------------------------------------
try:
    if "claims" not in SKIP:
        claims_section()
    if not {"live", "events"} <= SKIP:
        live_section()
    if "failover" not in SKIP:
        failover_section()
    if "burst" not in SKIP:
        burst_section()
finally:
    benchlib.stop_children()

with open("/proc/loadavg") as f:
    results["loadavg_at_end"] = f.read().split()[:3]
results["cpus"] = os.cpu_count()
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                        text=True).stdout.strip()
results["commit"] = commit
print(f"commit {commit or '?'}, {BB}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
width = [max([len(r[1]) for r in rows] + [8]), max([len(r[2]) for r in rows] + [6])]
print(f"buildbot multi-master bench ({os.cpu_count()} CPUs; load = 1-min load average at the end "
      f"of the figure, busy = all CPUs during it, everything on the machine counted)")
print(f"| {'workload':<{width[0]}} | {'figure':<{width[1]}} | aim | load |")
print(f"|{'-' * (width[0] + 2)}|{'-' * (width[1] + 2)}|---|---|")
for _, name, figure, aim, load_text in rows:
    print(f"| {name:<{width[0]}} | {figure:<{width[1]}} | {aim} | {load_text} |")
print(json.dumps(results, sort_keys=True))
