#!/usr/bin/env python3
"""bench/shell.py: `ssh -t master shell BUILDER N` against plain OpenSSH on the same machine.

Figures (issue 25):
  - a keystroke's round trip: a key typed into the remote shell's PTY until its echo is back
    (user ssh -> master -> slave PTY -> back), median and p95, against `ssh -tt` to a local
    OpenSSH sshd running the same shell; aim: under 1.5x of it;
  - `cat` of a 100 MB file in the held build's directory, on a PTY (`ssh -tt ... shell linux 1
    -- cat big.bin`) and without one, throughput against OpenSSH doing the same.

Needs: the buildbot binary (BB, default target/release/buildbot), git, ssh, ssh-keygen, and
an OpenSSH server binary (`/usr/sbin/sshd`; installed with apt-get when missing and running as
root). Everything runs on 127.0.0.1 with ports chosen at run time; the work dir is removed.
"""

import json
import os
import pty
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import Load  # noqa: E402

BB = os.path.abspath(os.environ.get("BB", "target/release/buildbot"))
KEYS = int(os.environ.get("BENCH_KEYS", "200"))
BIG_MB = int(os.environ.get("BENCH_CAT_MB", "100"))
# Keystroke rounds (each a fresh pair of sessions, typed into key by key in turn), pooled.
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "1"))
# A file to write a `perf trace` of the relay's syscalls (master, slave, ssh client) over a few
# paced keystrokes into, to see where a round trip's time goes (bench/results-issue-25.md).
TRACE = os.environ.get("BENCH_TRACE")
USER = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
children = []


def log(message):
    print(f"shell-bench: {message}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(argv, **kw):
    return subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, timeout=300, **kw)


def spawn(argv, **kw):
    proc = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL, **kw)
    children.append(proc)
    return proc


def wait_for(condition, limit, what):
    deadline = time.monotonic() + limit
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"shell-bench: timed out after {limit}s waiting for {what}")
        time.sleep(0.05)


def find_sshd():
    sshd = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
    if sshd is None and os.geteuid() == 0:
        log("installing openssh-server (apt-get) for the OpenSSH baseline")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "openssh-server"],
                       env=env, check=False, stdout=subprocess.DEVNULL)
        sshd = "/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None
    if sshd is None:
        raise SystemExit("shell-bench: no sshd binary (apt-get install openssh-server)")
    return sshd


class Terminal:
    """`ssh -tt ...` on a PTY of its own; keys in, output collected."""

    def __init__(self, argv):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.execvp(argv[0], argv)
        self.buffer = b""

    def read_until(self, needle, limit=30):
        deadline = time.monotonic() + limit
        while needle not in self.buffer:
            if time.monotonic() > deadline:
                raise SystemExit(f"shell-bench: no {needle!r}; got {self.buffer[-300:]!r}")
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                raise SystemExit(f"shell-bench: terminal closed; got {self.buffer[-300:]!r}")
            if not chunk:
                raise SystemExit("shell-bench: terminal closed")
            self.buffer += chunk
        at = self.buffer.index(needle) + len(needle)
        seen, self.buffer = self.buffer[:at], self.buffer[at:]
        return seen

    def send(self, data):
        os.write(self.fd, data)

    def close(self):
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
        os.close(self.fd)


def trace_keys(term, pids):
    """Paced keystrokes under `perf trace` of `pids`, its output into TRACE."""
    perf = subprocess.Popen(["perf", "trace", "-o", TRACE, "-p", ",".join(map(str, pids)),
                             "-e", "read,write,readv,writev,recvfrom,sendto,epoll_wait,futex"],
                            stdin=subprocess.DEVNULL)
    time.sleep(2)
    for _ in range(20):
        term.send(b"x")
        term.read_until(b"x")
        time.sleep(0.02)
    perf.send_signal(signal.SIGINT)
    perf.wait(timeout=30)
    # perf names threads, not processes: which thread is whose, for bench/trace_hops.py.
    with open(TRACE + ".tids", "w") as f:
        for name, pid in zip(("master", "slave", "ssh"), pids):
            tids = os.listdir(f"/proc/{pid}/task") if os.path.exists(f"/proc/{pid}/task") else []
            f.write(f"{name} {' '.join(tids)}\n")
    term.send(b"\x15")
    time.sleep(0.05)
    term.buffer = b""
    os.read(term.fd, 65536)


def ready_terminal(argv):
    term = Terminal(argv)
    term.send(b"PS1='RE''ADY> '; stty -echoctl\n")
    term.read_until(b"READY> ")
    return term


def one_key(term):
    """A key's round trip in milliseconds: typed, until its echo is back."""
    start = time.perf_counter()
    term.send(b"x")
    term.read_until(b"x")
    return (time.perf_counter() - start) * 1000


def empty_line(term):
    term.send(b"\x15")  # Ctrl-U: empty the line again
    time.sleep(0.05)
    try:
        term.buffer = b""
        os.read(term.fd, 65536)
    except OSError:
        pass


def keystrokes(relay_argv, plain_argv, trace_pids=None):
    """Round trips of KEYS single keys (each waits for its echo) through both sessions, open
    side by side and typed into in turn, key by key: whatever else the machine does at a
    moment falls on both alike. Milliseconds, (relay, plain)."""
    relay, plain = ready_terminal(relay_argv), ready_terminal(plain_argv)
    if TRACE and trace_pids:
        trace_keys(relay, trace_pids + [relay.pid])
    relay_times, plain_times = [], []
    for index in range(KEYS):
        # Which goes first alternates too.
        if index % 2:
            relay_times.append(one_key(relay))
            plain_times.append(one_key(plain))
        else:
            plain_times.append(one_key(plain))
            relay_times.append(one_key(relay))
        if index % 50 == 49:
            empty_line(relay)
            empty_line(plain)
    for term in (relay, plain):
        term.send(b"\x15exit\n")
        term.close()
    return relay_times, plain_times


def summary(times):
    """Median and p95 of round trips."""
    times = sorted(times)
    return statistics.median(times), times[int(len(times) * 0.95) - 1]


def cat_seconds(argv, on_pty):
    """Seconds until `argv` (a cat of the big file) has delivered everything and ended."""
    start = time.perf_counter()
    if on_pty:
        term = Terminal(argv)
        total = 0
        while True:
            try:
                chunk = os.read(term.fd, 1 << 20)
            except OSError:
                break
            if not chunk:
                break
            total += len(chunk)
        os.waitpid(term.pid, 0)
        os.close(term.fd)
    else:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, check=True)
        total = len(done.stdout)
    elapsed = time.perf_counter() - start
    if total < BIG_MB * 1_000_000:
        raise SystemExit(f"shell-bench: {argv} delivered only {total} bytes")
    return elapsed


def main():
    if not os.path.exists(BB):
        raise SystemExit(f"shell-bench: no binary at {BB} (cargo build --release, or set BB)")
    sshd_bin = find_sshd()
    work = tempfile.mkdtemp(prefix="bench-shell-")
    try:
        measure(work, sshd_bin)
    finally:
        for proc in children:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(work, ignore_errors=True)


def measure(work, sshd_bin):
    key = os.path.join(work, "key")
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key])
    repo = os.path.join(work, "repo.git")
    seed = os.path.join(work, "seed")
    os.makedirs(seed)
    run(["git", "init", "-q", "-b", "main", seed])
    with open(os.path.join(seed, "README"), "w") as f:
        f.write("bench\n")
    run(["git", "-C", seed, "add", "."])
    run(["git", "-C", seed, "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "x"])
    run(["git", "clone", "-q", "--bare", seed, repo])

    master_dir = os.path.join(work, "master")
    ssh_port, http_port = free_port(), free_port()
    run([BB, "create-master", master_dir, "--ssh-listen", f"127.0.0.1:{ssh_port}",
         "--http-listen", f"127.0.0.1:{http_port}"], stdout=subprocess.DEVNULL)
    os.makedirs(os.path.join(master_dir, "authorized_keys.d"), exist_ok=True)
    shutil.copy(key + ".pub", os.path.join(master_dir, "authorized_keys.d", USER))
    with open(os.path.join(master_dir, "host_key.pub")) as f:
        host_key = f.read().strip()
    slave_dir = os.path.join(work, "slave")
    out = run([BB, "create-slave", slave_dir, "--master", f"127.0.0.1:{ssh_port}", "--name",
               "s1", "--master-host-key", host_key], capture_output=True, text=True).stdout
    config_path = os.path.join(master_dir, "master.toml")
    with open(config_path) as f:
        text = f.read()
    text = text.replace('authorized_keys = ["%h/.ssh/authorized_keys", "authorized_keys.d/%u"]',
                        'authorized_keys = ["authorized_keys.d/%u"]')
    text = text.replace("allow_root = false", "allow_root = true")
    text += "\n" + out[out.index("[[slave]]"):] + "\n"
    # Printable lines: what a log looks like, and nothing a terminal would interpret.
    make_big = f"yes 0123456789abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTU | head -c {BIG_MB * 1_000_000} > big.bin"
    text += (f'\n[[builder]]\nname = "linux"\nslaves = ["s1"]\nrepo = "{repo}"\nbranch = "main"\n'
             f'hold = {{ on = "always", for = "1h" }}\n'
             f'steps = [ {{ name = "big", command = {json.dumps(make_big)} }} ]\n'
             f'\n[[scheduler]]\nkind = "force"\nbuilders = ["linux"]\n')
    with open(config_path, "w") as f:
        f.write(text)
    spawn([BB, "master", master_dir], stdout=subprocess.DEVNULL,
          stderr=open(master_dir + ".log", "a"), env=dict(os.environ, RUST_LOG="warn"))
    spawn([BB, "slave", slave_dir], stdout=subprocess.DEVNULL,
          stderr=open(slave_dir + ".log", "a"), env=dict(os.environ, RUST_LOG="warn"))
    ssh_base = ["ssh", "-F", "/dev/null", "-i", key, "-o", "IdentitiesOnly=yes", "-o",
                "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o",
                "LogLevel=ERROR", "-o", "BatchMode=yes"]
    master_ssh = ssh_base + ["-p", str(ssh_port), f"{USER}@127.0.0.1"]

    def slave_up():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/api/slaves") as r:
                return any(s["connected"] for s in json.load(r))
        except OSError:
            return False

    wait_for(slave_up, 60, "the slave to connect")
    run(master_ssh + ["force", "linux", "--reason", "bench"], stdout=subprocess.DEVNULL)

    def built():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/api/builds?builder=linux") as r:
                builds = json.load(r)
            return builds and not builds[0]["running"] and builds[0]
        except OSError:
            return False

    build = wait_for(built, 300, "the build that writes big.bin")
    build_dir = os.path.join(slave_dir, "build", "linux")
    if build["result"] != "success" or not os.path.exists(os.path.join(build_dir, "big.bin")):
        raise SystemExit(f"shell-bench: the build failed: {build}")

    # The OpenSSH baseline: a private sshd on a run-time port, the same key and user.
    sshd_dir = os.path.join(work, "sshd")
    os.makedirs(sshd_dir)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", os.path.join(sshd_dir, "host")])
    shutil.copy(key + ".pub", os.path.join(sshd_dir, "authorized_keys"))
    sshd_port = free_port()
    with open(os.path.join(sshd_dir, "config"), "w") as f:
        f.write(f"Port {sshd_port}\nListenAddress 127.0.0.1\nHostKey {sshd_dir}/host\n"
                f"AuthorizedKeysFile {sshd_dir}/authorized_keys\nPidFile none\nUsePAM no\n"
                f"StrictModes no\nPermitRootLogin yes\nPasswordAuthentication no\n")
    os.makedirs("/run/sshd", exist_ok=True)
    spawn([sshd_bin, "-D", "-e", "-f", os.path.join(sshd_dir, "config")],
          stderr=open(sshd_dir + ".log", "a"))

    def sshd_up():
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", sshd_port)) == 0

    wait_for(sshd_up, 30, "sshd to listen")
    plain = ssh_base + ["-p", str(sshd_port), f"{USER}@127.0.0.1"]

    rows = []
    relay_times, plain_times = [], []
    with Load() as load:
        for _ in range(ROUNDS):
            relay, direct = keystrokes(
                master_ssh[:1] + ["-tt"] + master_ssh[1:] + ["shell linux 1"],
                plain[:1] + ["-tt"] + plain[1:] + [f"cd {build_dir}; exec $SHELL"],
                [children[0].pid, children[1].pid])
            relay_times += relay
            plain_times += direct
    relay_keys, plain_keys = summary(relay_times), summary(plain_times)
    rows.append(("keystroke round trip, median ms", relay_keys[0], plain_keys[0], load.text()))
    rows.append(("keystroke round trip, p95 ms", relay_keys[1], plain_keys[1], load.text()))

    for on_pty in (True, False) if BIG_MB > 0 else ():
        tt = ["-tt"] if on_pty else ["-T"]
        with Load() as load:
            relay = cat_seconds(master_ssh[:1] + tt + master_ssh[1:]
                                + ["shell linux 1 -- cat big.bin"], on_pty)
            direct = cat_seconds(plain[:1] + tt + plain[1:] + [f"cat {build_dir}/big.bin"], on_pty)
        label = "on a PTY" if on_pty else "no PTY"
        rows.append((f"cat {BIG_MB} MB {label}, MB/s", BIG_MB / relay, BIG_MB / direct,
                     load.text()))

    print(f"{'figure':40} {'relay':>10} {'OpenSSH':>10} {'ratio':>7}  load")
    for name, relay, direct, load_text in rows:
        print(f"{name:40} {relay:10.2f} {direct:10.2f} {relay / direct:7.2f}  {load_text}")


if __name__ == "__main__":
    main()
