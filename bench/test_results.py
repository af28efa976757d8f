"""Test results bench (issue 26): figures, never pass/fail.

Usage: BUILDBOT=/path/to/release/buildbot python3 bench/test_results.py
       (BENCH_CASES, default 100000; BENCH_RUNS, default 20 page fetches)

A real master (embedded SQLite) and a real slave on 127.0.0.1. One forced build of a builder
whose steps are: `copy` (puts a generated JUnit XML report of BENCH_CASES test cases, 1% failed
and 1% skipped, into the work tree), `noop` (`true`, no reports) and `report` (`true` with
`test_results = ["junit:reports/junit.xml"]`). The `report` step's time minus the `noop` step's
is what collecting (slave -> master over SSH), parsing and storing the cases cost; step times
come from the store (steps.started_at, finished_at, written by the master).
Then the pages: GET /builders/bench/builds/1/tests (first page of 200, worst first, with the
slowest and the builder's flakiest), /api/builds/ID/tests?limit=200, the build page (which leads
with the summary), BENCH_RUNS times each, median and p90.
The raw-tool limits in the same run: reading the file (cat), Python's C XML parser
(xml.etree.ElementTree) on it, and sqlite3 inserting the same rows in one transaction (same
table and index); GET /api/builders as the web's floor.
"""

import http.client
import json
import os
import random
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import Load  # noqa: E402

BB = os.environ.get("BUILDBOT", "target/release/buildbot")
CASES = int(os.environ.get("BENCH_CASES", "100000"))
RUNS = int(os.environ.get("BENCH_RUNS", "20"))
USER = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(argv, **kw):
    return subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, **kw)


def wait_for(condition, limit, what):
    deadline = time.monotonic() + limit
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            sys.exit(f"timed out after {limit}s waiting for {what}")
        time.sleep(0.05)


def report(path, cases):
    """A JUnit XML report as cargo-nextest writes it."""
    rng = random.Random(26)
    with open(path, "w") as f:
        f.write('<?xml version="1.0" encoding="UTF-8"?>\n<testsuites name="nextest-run">\n')
        per_suite = 1000
        for s in range(0, cases, per_suite):
            f.write(f'<testsuite name="crate{s // per_suite}" tests="{per_suite}">\n')
            for i in range(s, min(s + per_suite, cases)):
                name = f"module{i % 97}::tests::case_{i}"
                time_ = f"{rng.random() * 0.5:.3f}"
                if i % 100 == 1:
                    f.write(f'<testcase name="{name}" classname="crate{s // per_suite}" time="{time_}">'
                            f'<failure type="test failure">thread \'{name}\' panicked at src/lib.rs:{i}:5:\n'
                            f'assertion `left == right` failed\n  left: 1\n right: 2</failure>'
                            f'<system-out>running 1 test</system-out></testcase>\n')
                elif i % 100 == 2:
                    f.write(f'<testcase name="{name}" classname="crate{s // per_suite}" time="0">'
                            f'<skipped/></testcase>\n')
                else:
                    f.write(f'<testcase name="{name}" classname="crate{s // per_suite}" time="{time_}"/>\n')
            f.write("</testsuite>\n")
        f.write("</testsuites>\n")


def get(port, path):
    start = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("GET", path)
    response = connection.getresponse()
    body = response.read()
    connection.close()
    if response.status != 200:
        sys.exit(f"GET {path}: {response.status} {body[:200]!r}")
    return time.perf_counter() - start, body


def timed_gets(port, path):
    get(port, path)  # warm
    times = sorted(get(port, path)[0] * 1000 for _ in range(RUNS))
    return statistics.median(times), times[int(len(times) * 0.9) - 1]


def raw_limits(path):
    start = time.perf_counter()
    subprocess.run(["cat", path], stdout=subprocess.DEVNULL, check=True)
    cat = time.perf_counter() - start
    start = time.perf_counter()
    tree = ET.parse(path)
    rows = []
    for suite in tree.getroot():
        for case in suite.iter("testcase"):
            failure = case.find("failure")
            result = "failed" if failure is not None else (
                "skipped" if case.find("skipped") is not None else "passed")
            rows.append((suite.get("name"), case.get("name"), result,
                         int(float(case.get("time") or 0) * 1000),
                         (failure.text or "")[:2048] if failure is not None else ""))
    parse = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        db = sqlite3.connect(os.path.join(tmp, "raw.sqlite"))
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE test_results (build_id INTEGER NOT NULL, seq INTEGER NOT NULL, "
                   "suite TEXT NOT NULL, name TEXT NOT NULL, result TEXT NOT NULL, duration_ms INTEGER, "
                   "message TEXT NOT NULL, step INTEGER NOT NULL, PRIMARY KEY (build_id, seq))")
        db.execute("CREATE INDEX test_results_test ON test_results (name, suite, build_id)")
        start = time.perf_counter()
        with db:
            db.executemany("INSERT INTO test_results VALUES (1, ?, ?, ?, ?, ?, ?, 4)",
                           ((i,) + row for i, row in enumerate(rows)))
        store = time.perf_counter() - start
        db.close()
    return cat, parse, store, len(rows)


def main():
    work = tempfile.mkdtemp(prefix="bench-tests-")
    procs = []
    try:
        reports = os.path.join(work, "junit.xml")
        report(reports, CASES)
        size = os.path.getsize(reports)
        upstream = os.path.join(work, "upstream")
        run(["git", "init", "-q", "-b", "main", upstream])
        run(["git", "-C", upstream, "-c", "user.name=b", "-c", "user.email=b@x", "commit", "-q",
             "--allow-empty", "-m", "base"])
        key = os.path.join(work, "key")
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key])
        master = os.path.join(work, "master")
        ssh_port, http_port = free_port(), free_port()
        run([BB, "create-master", master, "--ssh-listen", f"127.0.0.1:{ssh_port}",
             "--http-listen", f"127.0.0.1:{http_port}"], stdout=subprocess.DEVNULL)
        os.makedirs(os.path.join(master, "authorized_keys.d"), exist_ok=True)
        keys = os.path.join(master, "authorized_keys.d", USER)
        with open(key + ".pub") as src, open(keys, "w") as dst:
            dst.write(src.read())
        os.chmod(keys, 0o600)
        with open(os.path.join(master, "host_key.pub")) as f:
            host_key = f.read().strip()
        slave = os.path.join(work, "slave")
        out = run([BB, "create-slave", slave, "--master", f"127.0.0.1:{ssh_port}", "--name", "s1",
                   "--master-host-key", host_key], capture_output=True, text=True).stdout
        path = os.path.join(master, "master.toml")
        with open(path) as f:
            text = f.read()
        text = text.replace('authorized_keys = ["%h/.ssh/authorized_keys", "authorized_keys.d/%u"]',
                            'authorized_keys = ["authorized_keys.d/%u"]')
        if os.geteuid() == 0:
            text = text.replace("allow_root = false", "allow_root = true")
        text += out[out.index("[[slave]]"):] + "\n"
        text += (f'\n[[builder]]\nname = "bench"\nslaves = ["s1"]\nrepo = "{upstream}"\n'
                 f'steps = [\n'
                 f'  {{ name = "copy", command = "mkdir -p reports && cp {reports} reports/junit.xml" }},\n'
                 f'  {{ name = "noop", command = "true" }},\n'
                 f'  {{ name = "report", command = "true", test_results = ["junit:reports/junit.xml"] }},\n'
                 f']\n')
        with open(path, "w") as f:
            f.write(text)
        env = dict(os.environ, RUST_LOG="warn")
        procs.append(subprocess.Popen([BB, "master", master], stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL,
                                      stderr=open(master + ".log", "w"), env=env,
                                      start_new_session=True))
        def listening():
            if procs[0].poll() is not None:
                sys.exit(f"the master exited: {open(master + '.log').read()}")
            try:
                socket.create_connection(("127.0.0.1", http_port), timeout=1).close()
                return True
            except OSError:
                return False

        wait_for(listening, 60, "the master")
        procs.append(subprocess.Popen([BB, "slave", slave], stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL,
                                      stderr=open(slave + ".log", "w"), env=env,
                                      start_new_session=True))
        wait_for(lambda: any(s.get("connected") for s in json.loads(get(http_port, "/api/slaves")[1])),
                 60, "the slave")
        with Load() as load:
            run(["ssh", "-q", "-p", str(ssh_port), "-i", key, "-o", "IdentitiesOnly=yes",
                 "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                 f"{USER}@127.0.0.1", "force", "bench", "--reason", "bench"],
                stdout=subprocess.DEVNULL)

            def finished():
                builds = json.loads(get(http_port, "/api/builds?builder=bench")[1])
                return builds and not builds[0]["running"] and builds[0]

            build = wait_for(finished, 600, "the build")
        db = sqlite3.connect(os.path.join(master, "state.sqlite"))
        steps = dict(db.execute("SELECT name, finished_at - started_at FROM steps "
                                "WHERE build_id = ?", (build["id"],)).fetchall())
        stored = db.execute("SELECT COUNT(*) FROM test_results WHERE build_id = ?",
                            (build["id"],)).fetchone()[0]
        db.close()
        ingest = steps["report"] - steps["noop"]
        cat, parse, store, rows = raw_limits(reports)
        page = timed_gets(http_port, "/builders/bench/builds/1/tests")
        api = timed_gets(http_port, f"/api/builds/{build['id']}/tests?limit=200")
        build_page = timed_gets(http_port, "/builders/bench/builds/1")
        floor = timed_gets(http_port, "/api/builders")
        print(f"# test results bench: {CASES} cases, report {size / 1e6:.1f} MB, "
              f"{stored} rows stored, build {build['result']}")
        print(f"machine during the build: {load.text()}")
        print(f"collect + parse + store (report step - noop step): {ingest:.2f} s "
              f"(report {steps['report']:.2f} s, noop {steps['noop']:.3f} s; aim < 2 s)")
        print(f"  raw limits: cat {cat * 1000:.0f} ms; Python ElementTree parse {parse:.2f} s "
              f"({rows} cases); sqlite3 executemany of the rows {store:.2f} s")
        print(f"/builders/bench/builds/1/tests (200 of {CASES}): median {page[0]:.0f} ms, "
              f"p90 {page[1]:.0f} ms (aim < 200 ms)")
        print(f"/api/builds/ID/tests?limit=200: median {api[0]:.0f} ms, p90 {api[1]:.0f} ms")
        print(f"build page (summary + failures listed): median {build_page[0]:.0f} ms, "
              f"p90 {build_page[1]:.0f} ms")
        print(f"  floor: /api/builders median {floor[0]:.1f} ms")
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


if __name__ == "__main__":
    main()
