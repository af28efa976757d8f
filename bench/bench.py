"""The performance bench behind `bash bench/run.sh` (figures, never pass/fail).

Usage: python3 bench/bench.py BUILDBOT SSHD WORK

Everything runs on 127.0.0.1 under WORK. "Trigger" is a job file renamed into spool/new by this
script; "finished" is builds.finished_at (and "started" builds.started_at) in the master's
SQLite history. Every figure carries the machine's load while it was measured: the 1-minute
load average and how busy all CPUs were (from /proc/stat, everything on the machine counted,
this bench included), because on a shared machine the figures move with it.

Environment: BENCH_LOG_MB (1000: size of the log workloads, in 10^6 bytes), BENCH_RUNS (20:
trivial builds and try --wait runs), BENCH_BURST (50), BENCH_SWARM (1000: slaves for the
memory figure), BENCH_SKIP (comma-separated workload names to skip: log, random, trivial,
try, burst, idle, startup, live, swarm).
"""

import http.client
import json
import os
import shlex
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time

from benchlib import Load, free_port, private_sshd, run, spawn, stop_children

BB, SSHD, WORK = sys.argv[1], sys.argv[2], sys.argv[3]
LOG_BYTES = int(float(os.environ.get("BENCH_LOG_MB", "1000")) * 1_000_000)
RUNS = int(os.environ.get("BENCH_RUNS", "20"))
BURST = int(os.environ.get("BENCH_BURST", "50"))
SWARM = int(os.environ.get("BENCH_SWARM", "1000"))
SKIP = set(filter(None, os.environ.get("BENCH_SKIP", "").split(",")))
USER = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
LINE = "0123456789abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-bench!"
assert len(LINE) == 79  # 80 bytes with the newline
LINES_CMD = f"yes {LINE} | head -c {LOG_BYTES}"
RANDOM_CMD = f"head -c {LOG_BYTES * 3 // 4 + 3} /dev/urandom | base64 -w 76 | head -c {LOG_BYTES}"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---- machine load ------------------------------------------------------------------------------
def proc_cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class RssPeak(threading.Thread):
    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, rss_kib(pid), threading.Event()

    def run(self):
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, rss_kib(self.pid))


# ---- a master ----------------------------------------------------------------------------------
class Master:
    def __init__(self, name, extra_config="", max_startups=None):
        self.dir = os.path.join(WORK, name)
        self.ssh_port, self.http_port = free_port(), free_port()
        run([BB, "create-master", self.dir, "--ssh-listen", f"127.0.0.1:{self.ssh_port}",
             "--http-listen", f"127.0.0.1:{self.http_port}"], stdout=subprocess.DEVNULL)
        os.makedirs(os.path.join(self.dir, "authorized_keys.d"), exist_ok=True)
        keys = os.path.join(self.dir, "authorized_keys.d", USER)
        with open(KEY + ".pub") as src, open(keys, "w") as dst:
            dst.write(src.read())
        os.chmod(keys, 0o600)
        path = os.path.join(self.dir, "master.toml")
        with open(path) as f:
            text = f.read()
        text = text.replace('authorized_keys = ["%h/.ssh/authorized_keys", "authorized_keys.d/%u"]',
                            'authorized_keys = ["authorized_keys.d/%u"]')
        if os.geteuid() == 0:
            text = text.replace("allow_root = false", "allow_root = true")
        if max_startups:
            text = text.replace('max_startups = "10:30:100"', f'max_startups = "{max_startups}"')
            text = text.replace("# max_startups_per_source = 25",
                                f"max_startups_per_source = {max_startups}")
        with open(path, "w") as f:
            f.write(text + extra_config)
        with open(os.path.join(self.dir, "host_key.pub")) as f:
            self.host_key = f.read().strip()
        self.proc = None

    def start(self):
        """Starts the master; returns the seconds until both ports accept connections."""
        import socket
        started = time.monotonic()
        self.proc = spawn([BB, "master", self.dir], stdout=subprocess.DEVNULL,
                          stderr=open(self.dir + ".log", "a"),
                          env=dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn")))
        for port in (self.ssh_port, self.http_port):
            while True:
                if self.proc.poll() is not None:
                    raise SystemExit(f"the master did not start; see {self.dir}.log")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.001)
        return time.monotonic() - started

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def api(self, path):
        connection = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=30)
        connection.request("GET", path)
        body = connection.getresponse().read()
        connection.close()
        return json.loads(body)

    def submit(self, job_name, builder):
        """Delivers a job as a try client's tryserver would: spool/tmp, then a rename into
        spool/new. Returns the trigger time (just after the rename)."""
        body = json.dumps({
            "jobid": job_name, "branch": "main", "baserev": BASEREV, "patch_level": 1,
            "repository": "", "project": "", "who": USER, "comment": "bench",
            "builderNames": [builder], "patch_body": None,
        })
        data = b"1:5," + f"{len(body)}:{body},".encode()
        tmp = os.path.join(self.dir, "spool", "tmp", job_name)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, os.path.join(self.dir, "spool", "new", job_name))
        return time.time()

    def db(self):
        return sqlite3.connect(f"file:{os.path.join(self.dir, 'state.sqlite')}?mode=ro",
                               uri=True, timeout=30)

    def wait_builds(self, job_names, limit=3600, poll=0.01):
        """Waits until every job has a finished build; {job: (number, started, finished)}."""
        names = list(job_names)
        deadline = time.monotonic() + limit
        done = {}
        connection = None
        while len(done) < len(names):
            if time.monotonic() > deadline:
                raise SystemExit(f"builds not finished within {limit}s: {set(names) - set(done)}")
            try:
                connection = connection or self.db()
                marks = ",".join("?" * len(names))
                for job, number, started, finished in connection.execute(
                        f"SELECT r.job_name, b.number, b.started_at, b.finished_at FROM builds b "
                        f"JOIN requests r ON b.request_id = r.id WHERE r.job_name IN ({marks}) "
                        f"AND b.finished_at IS NOT NULL", names):
                    done[job] = (number, started, finished)
            except sqlite3.OperationalError:
                connection = None
            time.sleep(poll)
        if connection:
            connection.close()
        return done

    def slaves_connected(self):
        try:
            return sum(1 for slave in self.api("/api/slaves") if slave.get("connected"))
        except (OSError, ValueError):
            return -1


def start_slave(directory):
    return spawn([BB, "slave", directory], stdout=subprocess.DEVNULL,
                 stderr=open(directory + ".log", "a"),
                 env=dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn")))


def wait_for(condition, limit, what):
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


# ---- set-up ------------------------------------------------------------------------------------
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
            "-o", "GSSAPIAuthentication=no",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR"]

results = {"log_bytes": LOG_BYTES, "cpus": os.cpu_count()}
rows = []  # (workload, figure, target, load)


def row(name, figure, target, load):
    rows.append((name, figure, target, load))


def load_text(load):
    if load is None:
        return ""
    return f"load {load.load1:.1f}, busy {load.busy:.0f}%"


# ---- master startup time (fresh master, 5 starts) ----------------------------------------------
try:
    if "startup" not in SKIP:
        fresh = Master("fresh")
        times = []
        with Load() as load:
            for _ in range(5):
                times.append(fresh.start())
                fresh.stop()
        startup_ms = round(statistics.median(times) * 1000, 1)
        results["startup"] = {"median_ms": startup_ms, "runs_ms": [round(t * 1000, 1) for t in times],
                              "load": load.describe()}
        row("master startup (spawn -> SSH and HTTP accept)", f"{startup_ms} ms (median of 5)", "—",
            load)

    # ---- the main master and two slaves --------------------------------------------------------
    slave_dirs = [os.path.join(WORK, f"slave{i}") for i in (1, 2)]
    main = Master("master")
    blocks = ""
    for index, directory in enumerate(slave_dirs, 1):
        out = run([BB, "create-slave", directory, "--master", f"127.0.0.1:{main.ssh_port}",
                   "--name", f"s{index}", "--master-host-key", main.host_key],
                  capture_output=True, text=True).stdout
        blocks += out[out.index("[[slave]]"):] + "\n"
    live_cmd = "for i in $(seq 40); do date +%%s.%%N; sleep 0.05; done"
    builders = {
        "lines": (["s1"], LINES_CMD.replace("%", "%%")),
        "random": (["s1"], RANDOM_CMD.replace("%", "%%")),
        "noop": (["s1"], "true"),
        "burst1": (["s1"], "true"),
        "burst2": (["s1", "s2"], "true"),
        "live": (["s1"], live_cmd),
    }
    config = "\n" + blocks
    for name, (slaves, command) in builders.items():
        config += (f'\n[[builder]]\nname = "{name}"\nslaves = {json.dumps(slaves)}\n'
                   f'repo = "{REPO}"\nsteps = [ {{ name = "run", command = {json.dumps(command)} }} ]\n')
    config += f'\n[[scheduler]]\nkind = "try"\nbuilders = {json.dumps(list(builders))}\n'
    with open(os.path.join(main.dir, "master.toml"), "a") as f:
        f.write(config)
    main.start()
    slaves = [start_slave(d) for d in slave_dirs]
    wait_for(lambda: main.slaves_connected() == 2, 60, "both slaves to connect")
    counter = iter(range(1, 1 << 30))

    def job(builder):
        return f"{int(time.time() * 1000)}.bench{next(counter)}.{builder}"

    # Warm up: one build on each slave (the first checkout clones).
    warm = [job("burst2"), job("burst2"), job("noop")]
    for name in warm[:2]:
        main.submit(name, "burst2")
    main.wait_builds(warm[:2])
    main.submit(warm[2], "noop")
    main.wait_builds(warm[2:])

    # ---- idle RSS and CPU ----------------------------------------------------------------------
    if "idle" not in SKIP:
        time.sleep(2)
        with Load() as load:
            cpu0 = (proc_cpu(main.proc.pid), proc_cpu(slaves[0].pid))
            time.sleep(10)
            cpu1 = (proc_cpu(main.proc.pid), proc_cpu(slaves[0].pid))
        idle = {
            "master_rss_mb": round(rss_kib(main.proc.pid) / 1024, 1),
            "slave_rss_mb": round(rss_kib(slaves[0].pid) / 1024, 1),
            "master_cpu_s_over_10s": round(cpu1[0] - cpu0[0], 3),
            "slave_cpu_s_over_10s": round(cpu1[1] - cpu0[1], 3),
            "load": load.describe(),
        }
        results["idle"] = idle
        row("idle RSS master / slave", f"{idle['master_rss_mb']} / {idle['slave_rss_mb']} MB",
            "≤ 12 / ≤ 8 MB", load)
        row("idle CPU over 10 s master / slave",
            f"{idle['master_cpu_s_over_10s']} / {idle['slave_cpu_s_over_10s']} s", "—", load)

    # ---- the private OpenSSH sshd --------------------------------------------------------------
    sshd_port, sshd = private_sshd(SSHD, WORK, KEY + ".pub")

    def openssh(command):
        """Seconds for `ssh host COMMAND > /dev/null` against the private sshd."""
        start = time.monotonic()
        run(["ssh", *SSH_OPTS, "-p", str(sshd_port), f"{USER}@127.0.0.1", command],
            stdout=subprocess.DEVNULL, timeout=3600)
        return time.monotonic() - start

    # ---- the log workloads ---------------------------------------------------------------------
    def log_workload(key, builder, command, verify):
        # OpenSSH first, then ours, back to back in the same run.
        with Load() as ssh_load:
            ssh_seconds = openssh(command)
        ssh_rate = LOG_BYTES / 1e6 / ssh_seconds
        name = job(builder)
        rss_before = rss_kib(main.proc.pid)
        peak = RssPeak(main.proc.pid)
        peak.start()
        cpu0 = (proc_cpu(main.proc.pid), proc_cpu(slaves[0].pid))
        with Load() as load:
            trigger = main.submit(name, builder)
            number, started, finished = main.wait_builds([name], poll=0.05)[name]
        cpu1 = (proc_cpu(main.proc.pid), proc_cpu(slaves[0].pid))
        peak.stop.set()
        peak.join()
        ours_rate = LOG_BYTES / 1e6 / (finished - trigger)
        path = os.path.join(main.dir, "logs", builder, str(number), "2-run.stdout")
        size = os.path.getsize(path) if os.path.exists(path) else -1
        exact = None
        if verify:
            expected = subprocess.run(["bash", "-c", f"{command} | sha256sum"], capture_output=True,
                                      text=True, check=True).stdout.split()[0]
            actual = run(["sha256sum", path], capture_output=True, text=True).stdout.split()[0]
            exact = expected == actual
        figure = {
            "ours_mb_s": round(ours_rate, 1), "openssh_mb_s": round(ssh_rate, 1),
            "ratio": round(ours_rate / ssh_rate, 2),
            "ours_seconds": round(finished - trigger, 2), "openssh_seconds": round(ssh_seconds, 2),
            "master_cpu_s": round(cpu1[0] - cpu0[0], 2), "slave_cpu_s": round(cpu1[1] - cpu0[1], 2),
            "master_rss_growth_mb": round((peak.peak - rss_before) / 1024, 1),
            "log_size": size, "log_size_ok": size == LOG_BYTES, "byte_exact": exact,
            "load": load.describe(), "openssh_load": ssh_load.describe(),
        }
        results[key] = figure
        return figure, load, ssh_load

    if "log" not in SKIP:
        fig, load, ssh_load = log_workload("log_lines", "lines", LINES_CMD, True)
        mb = LOG_BYTES / 1e6
        row(f"{mb:g} MB as 80-byte lines: OpenSSH (ssh host CMD >/dev/null)",
            f"{fig['openssh_mb_s']} MB/s", "—", ssh_load)
        row(f"{mb:g} MB as 80-byte lines: ours, trigger -> finished",
            f"{fig['ours_mb_s']} MB/s ({fig['ratio']}x OpenSSH); master CPU {fig['master_cpu_s']} s,"
            f" slave {fig['slave_cpu_s']} s; master RSS +{fig['master_rss_growth_mb']} MB;"
            f" byte-exact {fig['byte_exact']}", "≥ 0.75x OpenSSH; ≤ +32 MB", load)
    if "random" not in SKIP:
        fig, load, ssh_load = log_workload("log_random", "random", RANDOM_CMD, False)
        mb = LOG_BYTES / 1e6
        row(f"{mb:g} MB base64 of random bytes: OpenSSH", f"{fig['openssh_mb_s']} MB/s", "—", ssh_load)
        row(f"{mb:g} MB base64 of random bytes: ours",
            f"{fig['ours_mb_s']} MB/s ({fig['ratio']}x OpenSSH); master CPU {fig['master_cpu_s']} s,"
            f" slave {fig['slave_cpu_s']} s; master RSS +{fig['master_rss_growth_mb']} MB;"
            f" size ok {fig['log_size_ok']}", "≥ 0.75x OpenSSH", load)

    # ---- trivial build latency -----------------------------------------------------------------
    if "trivial" not in SKIP:
        to_started, to_finished, total = [], [], []
        with Load() as load:
            for _ in range(RUNS):
                name = job("noop")
                trigger = main.submit(name, "noop")
                _, started, finished = main.wait_builds([name], poll=0.002)[name]
                to_started.append((started - trigger) * 1000)
                to_finished.append((finished - started) * 1000)
                total.append((finished - trigger) * 1000)
        med = {k: round(statistics.median(v), 1) for k, v in
               (("trigger_to_started_ms", to_started), ("started_to_finished_ms", to_finished),
                ("trigger_to_finished_ms", total))}
        results["trivial"] = dict(med, runs=RUNS, load=load.describe())
        row("trivial build (true), trigger -> finished",
            f"{med['trigger_to_finished_ms']} ms = {med['trigger_to_started_ms']} to started"
            f" + {med['started_to_finished_ms']} started to finished (medians of {RUNS})",
            "≤ 20 ms", load)

    # ---- try --wait through the user's OpenSSH -------------------------------------------------
    if "try" not in SKIP:
        patch = os.path.join(WORK, "change.patch")
        with open(patch, "w") as f:
            f.write("--- a/bench.txt\n+++ b/bench.txt\n@@ -0,0 +1 @@\n+bench\n")
        ssh_cmd = "ssh " + " ".join(shlex.quote(o) for o in SSH_OPTS)
        times, connects = [], []
        with Load() as load:
            for _ in range(RUNS):
                start = time.monotonic()
                run([BB, "try", "--wait", "--diff", patch, "-p", "1", "--baserev", BASEREV, "-b", "noop",
                     "--host", "127.0.0.1", "--port", str(main.ssh_port), "--username", USER,
                     "--ssh", ssh_cmd], cwd=REPO, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)
                times.append((time.monotonic() - start) * 1000)
            for _ in range(10):
                connects.append(openssh("true") * 1000)
        try_ms = round(statistics.median(times), 1)
        connect_ms = round(statistics.median(connects), 1)
        results["try_wait"] = {"median_ms": try_ms, "openssh_new_connection_ms": connect_ms,
                               "runs": RUNS, "load": load.describe()}
        row("buildbot try --wait (with a patch), end to end",
            f"{try_ms} ms (median of {RUNS}); a new OpenSSH connection (ssh host true): "
            f"{connect_ms} ms", "≤ 100 ms", load)

    # ---- bursts --------------------------------------------------------------------------------
    if "burst" not in SKIP:
        for builder, count_slaves in (("burst1", 1), ("burst2", 2)):
            names = [job(builder) for _ in range(BURST)]
            with Load() as load:
                first = None
                for name in names:
                    at = main.submit(name, builder)
                    first = first or at
                done = main.wait_builds(names, poll=0.02)
            last = max(finished for (_, _, finished) in done.values())
            rate = round(BURST / (last - first), 1)
            results[f"burst_{count_slaves}"] = {"builds_per_s": rate, "builds": BURST,
                                                "seconds": round(last - first, 2),
                                                "load": load.describe()}
            target = "≥ 50 builds/s" if count_slaves == 1 else "≥ 100 builds/s"
            row(f"{BURST} trivial builds queued at once, {count_slaves} slave(s)",
                f"{rate} builds/s", target, load)

    # ---- live logs -----------------------------------------------------------------------------
    if "live" not in SKIP:
        name = job("live")
        main.submit(name, "live")

        def step_running():
            try:
                builds = main.api("/api/builds?builder=live")
            except (OSError, ValueError):
                return False
            return bool(builds) and len(builds[0].get("steps", [])) >= 2
        with Load() as load:
            wait_for(step_running, 60, "the live step")
            number = main.api("/api/builds?builder=live")[0]["number"]
            connection = http.client.HTTPConnection("127.0.0.1", main.http_port, timeout=60)
            connected = time.time()
            connection.request("GET", f"/builders/live/builds/{number}/steps/2/logs/stdout/raw?follow=1")
            response = connection.getresponse()
            delays, pending = [], b""
            while True:
                chunk = response.read1(65536)
                now = time.time()
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    try:
                        printed = float(line)
                    except ValueError:
                        continue
                    if printed > connected:  # lines printed before we connected: not live
                        delays.append((now - printed) * 1000)
            connection.close()
        main.wait_builds([name])
        delays.sort()
        live = {"median_ms": round(statistics.median(delays), 1) if delays else None,
                "max_ms": round(delays[-1], 1) if delays else None,
                "p90_ms": round(delays[int(len(delays) * 0.9)], 1) if delays else None,
                "lines": len(delays), "load": load.describe()}
        results["live_follow"] = live
        row("a step's line -> ?follow=1 reader",
            f"median {live['median_ms']} ms, p90 {live['p90_ms']} ms, max {live['max_ms']} ms"
            f" ({live['lines']} lines)", "≤ 100 ms", load)

    main.stop()
    for slave in slaves:
        slave.send_signal(signal.SIGTERM)
    sshd.send_signal(signal.SIGTERM)

    # ---- master memory with many slaves --------------------------------------------------------
    if "swarm" not in SKIP:
        swarm_dir = os.path.join(WORK, "swarm")
        many = Master("many", max_startups=200)
        blocks = run([BB, "bench-swarm", swarm_dir, "--count", str(SWARM), "--master",
                      f"127.0.0.1:{many.ssh_port}", "--master-host-key", many.host_key],
                     capture_output=True, text=True, timeout=1800).stdout
        with open(os.path.join(many.dir, "master.toml"), "a") as f:
            f.write("\n" + blocks)
        many.start()
        time.sleep(1)
        rss_before = rss_kib(many.proc.pid)
        with Load() as load:
            swarm = spawn([BB, "bench-swarm", swarm_dir, "--count", str(SWARM)],
                          stdout=subprocess.DEVNULL, stderr=open(swarm_dir + ".log", "w"),
                          env=dict(os.environ, RUST_LOG="error"))
            connect_start = time.monotonic()
            wait_for(lambda: many.slaves_connected() >= SWARM, 900, f"{SWARM} slaves")
            connect_seconds = time.monotonic() - connect_start
            time.sleep(3)
        rss_after = rss_kib(many.proc.pid)
        swarm_rss = rss_kib(swarm.pid)
        mem = {"slaves": SWARM, "master_rss_mb": round(rss_after / 1024, 1),
               "master_rss_before_mb": round(rss_before / 1024, 1),
               "per_slave_kb": round((rss_after - rss_before) / SWARM, 1),
               "connect_seconds": round(connect_seconds, 1),
               "swarm_process_rss_mb": round(swarm_rss / 1024, 1),
               "tool": "bench-swarm: real slave code (SSH + RPC handshake + keepalives), "
                       "one process", "load": load.describe()}
        results["swarm"] = mem
        row(f"master memory with {SWARM} slaves connected",
            f"{mem['master_rss_mb']} MB ({mem['master_rss_before_mb']} MB before; "
            f"{mem['per_slave_kb']} KB per slave; all connected in {mem['connect_seconds']} s)",
            "≤ 150 MB", load)
        swarm.send_signal(signal.SIGTERM)
        try:
            swarm.wait(timeout=30)
        except subprocess.TimeoutExpired:
            swarm.kill()
        many.stop()
finally:
    stop_children()

# ---- the table -------------------------------------------------------------------------------
with open("/proc/loadavg") as f:
    results["loadavg_at_end"] = f.read().split()[:3]
width = [max(len(str(r[i])) for r in rows) for i in range(2)]
print(f"buildbot bench ({os.cpu_count()} CPUs; load = 1-min load average at the end of the "
      f"figure, busy = all CPUs during it, everything on the machine counted)")
print(f"| {'workload':<{width[0]}} | {'figure':<{width[1]}} | target | load |")
print(f"|{'-' * (width[0] + 2)}|{'-' * (width[1] + 2)}|---|---|")
for name, figure, target, load in rows:
    print(f"| {name:<{width[0]}} | {figure:<{width[1]}} | {target} | {load_text(load)} |")
print(json.dumps(results, sort_keys=True))
