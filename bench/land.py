"""What `buildbot land` adds on top of the builds (issue 24; figures, never pass/fail).

Usage: bash bench/land.sh   (or BUILDBOT=path/to/buildbot python3 bench/land.py, as root)

Everything on 127.0.0.1 in a temp dir: a bare repository as the shared remote, one master
(embedded SQLite) whose builder runs `true` on real slaves, the real client over real OpenSSH.

  overhead  a 10-commit series (BENCH_COMMITS) landed BENCH_ROUNDS (5) times, each on a main
            that moved just before (so the master really rebases 10 commits): submission =
            `buildbot land` returning (bundle, ssh, the master's checks); rebase = the entry
            queued → its test's requests recorded; push = the last build's end → landed; added =
            everything but the builds (landed - queued - build span). Next to it, in the same
            run, the raw tools: `ssh master help` (the ssh round trip), `git bundle create` of
            the series, `git rebase` of it in a clone, `git push` of it to the remote.
  queue     20 entries (BENCH_QUEUE) from 20 users on a main nobody else pushes to, landed with
            window 1 and window 4 on 4 slaves, builds sleeping BENCH_BUILD_SECS (1 s):
            entries landed per minute (first queued → last landed).
Prints a table, then the figures as one JSON line. Creates the queue's users with useradd
(bench-land-N, one group) and removes them at the end.
"""

import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from benchlib import Load  # noqa: E402

BB = os.environ["BUILDBOT"]
COMMITS = int(os.environ.get("BENCH_COMMITS", "10"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
QUEUE = int(os.environ.get("BENCH_QUEUE", "20"))
BUILD_SECS = os.environ.get("BENCH_BUILD_SECS", "1")
USER = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
WORK = tempfile.mkdtemp(prefix="buildbot-bench-land.")
children = []
made_users = []


def log(message):
    print(f"land bench: {message}", file=sys.stderr, flush=True)


def run(argv, cwd=None, input=None, env=None):
    done = subprocess.run(argv, cwd=cwd, input=input, capture_output=True, timeout=300,
                          env=env)
    if done.returncode != 0:
        raise SystemExit(f"{argv[:3]} exited {done.returncode}: "
                         f"{done.stderr.decode(errors='replace').strip()}")
    return done.stdout.decode(errors="replace").strip()


def git(cwd, *args):
    return run(["git", "-c", "user.name=Bench", "-c", "user.email=bench@example.org",
                "-c", "init.defaultBranch=main", *args], cwd=cwd)


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, limit, what):
    deadline = time.monotonic() + limit
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {limit}s waiting for {what}")
        time.sleep(0.02)


def timed(fn):
    start = time.monotonic()
    fn()
    return time.monotonic() - start


class Setup:
    """A remote, a master with builder `linux` on `slaves` slaves and [[land]] for main."""

    def __init__(self, label, slaves, window, build_command, group=None):
        self.dir = os.path.join(WORK, label)
        os.makedirs(self.dir)
        self.remote = os.path.join(self.dir, "remote.git")
        seed = os.path.join(self.dir, "seed")
        os.makedirs(seed)
        git(seed, "init", "-q")
        with open(os.path.join(seed, "README"), "w") as f:
            f.write("bench\n")
        git(seed, "add", ".")
        git(seed, "commit", "-q", "-m", "base")
        git(self.dir, "clone", "-q", "--bare", "seed", "remote.git")
        self.master = os.path.join(self.dir, "master")
        self.ssh_port, self.http_port = free_port(), free_port()
        run([BB, "create-master", self.master, "--ssh-listen", f"127.0.0.1:{self.ssh_port}",
             "--http-listen", f"127.0.0.1:{self.http_port}"])
        self.key = os.path.join(self.dir, "key")
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.key])
        with open(self.key + ".pub") as f:
            self.public = f.read()
        os.makedirs(os.path.join(self.master, "authorized_keys.d"), exist_ok=True)
        self.authorize(USER)
        with open(os.path.join(self.master, "host_key.pub")) as f:
            host_key = f.read().strip()
        path = os.path.join(self.master, "master.toml")
        with open(path) as f:
            text = f.read()
        text = text.replace('authorized_keys = ["%h/.ssh/authorized_keys", "authorized_keys.d/%u"]',
                            'authorized_keys = ["authorized_keys.d/%u"]')
        text = text.replace("allow_root = false", "allow_root = true")
        names = []
        self.slave_dirs = []
        for i in range(slaves):
            name = f"s{i}"
            directory = os.path.join(self.dir, name)
            out = run([BB, "create-slave", directory, "--master", f"127.0.0.1:{self.ssh_port}",
                       "--name", name, "--master-host-key", host_key])
            text += "\n" + out[out.index("[[slave]]"):] + "\n"
            names.append(name)
            self.slave_dirs.append(directory)
        text += (f'\n[[builder]]\nname = "linux"\nslaves = {json.dumps(names)}\n'
                 f'repo = "{self.remote}"\nbranch = "main"\n'
                 f'steps = [ {{ name = "test", command = {json.dumps(build_command)} }} ]\n'
                 f'\n[[land]]\nbranch = "main"\nbuilders = ["linux"]\nwindow = {window}\n')
        if group:
            text += f'group = "{group}"\n'
        with open(path, "w") as f:
            f.write(text)
        self.procs = []

    def authorize(self, user):
        path = os.path.join(self.master, "authorized_keys.d", user)
        with open(path, "w") as f:
            f.write(self.public)
        os.chmod(path, 0o600)

    def start(self):
        env = dict(os.environ, RUST_LOG="warn")
        master = subprocess.Popen([BB, "master", self.master], stdout=subprocess.DEVNULL,
                                  stderr=open(self.master + ".log", "a"), env=env,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(master)
        children.append(master)
        wait_for(lambda: self.listening(), 60, "the master")
        for directory in self.slave_dirs:
            slave = subprocess.Popen([BB, "slave", directory], stdout=subprocess.DEVNULL,
                                     stderr=open(directory + ".log", "a"), env=env,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
            self.procs.append(slave)
            children.append(slave)
        wait_for(lambda: self.connected() == len(self.slave_dirs), 60, "the slaves")

    def listening(self):
        import socket
        try:
            socket.create_connection(("127.0.0.1", self.http_port), timeout=1).close()
            return True
        except OSError:
            return False

    def api(self, path):
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as r:
            return json.loads(r.read())

    def connected(self):
        return sum(1 for slave in self.api("/api/slaves") if slave.get("connected"))

    def ssh(self, user):
        return (f"ssh -F /dev/null -i {self.key} -o BatchMode=yes -o IdentitiesOnly=yes "
                f"-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR")

    def client(self, user=USER):
        return ["--host", "127.0.0.1", "--port", str(self.ssh_port), "-u", user,
                "--ssh", self.ssh(user)]

    def db(self):
        return sqlite3.connect(f"file:{self.master}/state.sqlite?mode=ro", uri=True, timeout=30)

    def stop(self):
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()


def push_elsewhere(setup, name):
    other = os.path.join(setup.dir, f"other-{name}")
    git(setup.dir, "clone", "-q", "remote.git", other)
    with open(os.path.join(other, f"{name}.txt"), "w") as f:
        f.write(name + "\n")
    git(other, "add", ".")
    git(other, "commit", "-q", "-m", f"elsewhere {name}")
    git(other, "push", "-q", "origin", "HEAD:main")


def overhead():
    setup = Setup("overhead", 1, 1, "true")
    setup.start()
    work = os.path.join(setup.dir, "work")
    rows = {"submission": [], "rebase": [], "push": [], "added": [], "builds": []}
    raw = {"ssh": [], "bundle": [], "rebase": [], "push": []}
    for round_ in range(ROUNDS):
        shutil.rmtree(work, ignore_errors=True)
        git(setup.dir, "clone", "-q", "remote.git", "work")
        for i in range(COMMITS):
            with open(os.path.join(work, f"r{round_}-f{i}.txt"), "w") as f:
                f.write(f"{round_} {i}\n")
            git(work, "add", ".")
            git(work, "commit", "-q", "-m", f"round {round_} commit {i}")
        push_elsewhere(setup, f"moved-{round_}")
        git(work, "fetch", "-q")
        # The raw tools on the same series, in the same run.
        raw["ssh"].append(timed(lambda: run(setup.ssh(USER).split() + [
            "-p", str(setup.ssh_port), f"{USER}@127.0.0.1", "help"])))
        raw["bundle"].append(timed(lambda: run(["git", "bundle", "create", "-q",
                                                os.path.join(setup.dir, "b"), "origin/main..HEAD"],
                                               cwd=work)))
        scratch = os.path.join(setup.dir, "scratch")
        shutil.rmtree(scratch, ignore_errors=True)
        git(setup.dir, "clone", "-q", "work", "scratch")
        git(scratch, "fetch", "-q", setup.remote, "main:refs/remotes/upstream/main")
        raw["rebase"].append(timed(lambda: git(scratch, "rebase", "-q", "upstream/main")))
        mirror = os.path.join(setup.dir, "mirror.git")
        shutil.rmtree(mirror, ignore_errors=True)
        git(setup.dir, "clone", "-q", "--bare", "remote.git", "mirror.git")
        raw["push"].append(timed(lambda: git(scratch, "push", "-q", mirror, "HEAD:main")))
        submitted = time.monotonic()
        run([BB, "land", *setup.client()], cwd=work)
        rows["submission"].append(time.monotonic() - submitted)
        entry_id = round_ + 1

        def ended():
            with setup.db() as db:
                row = db.execute("SELECT state, submitted_at, finished_at, job_name FROM "
                                 "land_entries WHERE id = ?", (entry_id,)).fetchone()
            return row if row and row[0] in ("landed", "rejected") else None
        state, queued_at, finished_at, job = wait_for(ended, 120, f"land #{entry_id}")
        if state != "landed":
            raise SystemExit(f"land #{entry_id} was {state}")
        with setup.db() as db:
            requested = db.execute("SELECT MIN(submitted_at) FROM requests WHERE job_name = ?",
                                   (job,)).fetchone()[0]
            started, done = db.execute(
                "SELECT MIN(b.started_at), MAX(b.finished_at) FROM builds b JOIN requests r "
                "ON b.request_id = r.id WHERE r.job_name = ?", (job,)).fetchone()
        rows["rebase"].append(requested - queued_at)
        rows["push"].append(finished_at - done)
        rows["builds"].append(done - started)
        rows["added"].append((finished_at - queued_at) - (done - started))
    setup.stop()
    return rows, raw


def create_users(count):
    group = f"bench-landers-{os.getpid()}"
    run(["groupadd", group])
    made_users.append(("group", group))
    users = []
    for i in range(count):
        name = f"bench-land-{os.getpid()}-{i}"
        run(["useradd", "-M", "-N", "-g", group, "-d", "/nonexistent", "-s",
             "/usr/sbin/nologin", name])
        made_users.append(("user", name))
        users.append(name)
    return group, users


def queue(window, group, users):
    setup = Setup(f"queue-w{window}", 4, window, f"sleep {BUILD_SECS}", group=group)
    for user in users:
        setup.authorize(user)
    setup.start()
    bundles = []
    for i, user in enumerate(users):
        clone = os.path.join(setup.dir, f"c{i}")
        git(setup.dir, "clone", "-q", "remote.git", clone)
        with open(os.path.join(clone, f"u{i}.txt"), "w") as f:
            f.write(f"{i}\n")
        git(clone, "add", ".")
        git(clone, "commit", "-q", "-m", f"change {i}")
        path = os.path.join(setup.dir, f"c{i}.bundle")
        git(clone, "bundle", "create", "-q", path, "origin/main..HEAD")
        with open(path, "rb") as f:
            bundles.append(f.read())
    with Load() as load:
        for user, bundle in zip(users, bundles):
            run(setup.ssh(user).split() + ["-p", str(setup.ssh_port), f"{user}@127.0.0.1",
                                           "land --onto main"], input=bundle)

        def done():
            with setup.db() as db:
                n = db.execute("SELECT COUNT(*) FROM land_entries WHERE state IN "
                               "('landed', 'rejected', 'cancelled')").fetchone()[0]
            return n == len(users)
        wait_for(done, 60 + 10 * len(users), "the queue")
    with setup.db() as db:
        first, last, landed = db.execute(
            "SELECT MIN(submitted_at), MAX(finished_at), SUM(state = 'landed') "
            "FROM land_entries").fetchone()
    setup.stop()
    return landed, landed / (last - first) * 60, load.text()


def median_ms(values):
    return f"{statistics.median(values) * 1000:.0f} ms"


def main():
    figures = {}
    log(f"overhead: a {COMMITS}-commit series, {ROUNDS} rounds")
    with Load() as load:
        rows, raw = overhead()
    print(f"\nland overhead, {COMMITS}-commit series rebased onto a moved main "
          f"(median of {ROUNDS}; {load.text()})")
    print(f"  {'part':<34}{'land':>10}   {'raw tool':>10}")
    pairs = [("submission (client → queued)", "submission", "ssh", "ssh round trip + bundle"),
             ("rebase (queued → requests)", "rebase", "rebase", "git rebase in a clone"),
             ("push (last build → landed)", "push", "push", "git push to a bare repo")]
    for label, key, raw_key, raw_label in pairs:
        raw_value = raw[raw_key]
        if key == "submission":
            raw_value = [a + b for a, b in zip(raw["ssh"], raw["bundle"])]
        print(f"  {label:<34}{median_ms(rows[key]):>10}   {median_ms(raw_value):>10}  "
              f"({raw_label})")
    print(f"  {'added in all (not the builds)':<34}{median_ms(rows['added']):>10}   "
          f"(builds themselves: {median_ms(rows['builds'])}; aim: added < 1 s)")
    figures["overhead"] = {k: statistics.median(v) for k, v in rows.items()}
    figures["raw"] = {k: statistics.median(v) for k, v in raw.items()}
    figures["overhead_load"] = load.describe()
    if os.geteuid() == 0:
        log(f"queue: {QUEUE} entries, window 1 and 4, 4 slaves")
        group, users = create_users(QUEUE)
        print(f"\nqueue of {QUEUE} entries, 4 slaves, builds of {BUILD_SECS} s")
        for window in (1, 4):
            landed, per_minute, load_text = queue(window, group, users)
            print(f"  window {window}: {landed} landed, {per_minute:.1f} entries/min ({load_text})")
            figures[f"queue_window_{window}_per_min"] = per_minute
    else:
        print("\nqueue: skipped (needs root to create the users)")
    print(json.dumps(figures))


if __name__ == "__main__":
    try:
        main()
    finally:
        for proc in children:
            if proc.poll() is None:
                proc.kill()
        for kind, name in reversed(made_users):
            subprocess.run(["userdel" if kind == "user" else "groupdel", name],
                           capture_output=True)
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(WORK, ignore_errors=True)
