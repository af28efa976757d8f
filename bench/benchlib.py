"""What the benches share: the machine's load over a measurement, and the processes they
start (spawned in sessions of their own, stopped together), run and reach (ports, a private
OpenSSH sshd)."""

import os


def cpu_times():
    """(all jiffies, idle jiffies) of the machine so far."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return sum(fields[:8]), fields[3] + fields[4]


class Load:
    """The machine's load over a measurement: loadavg at the end, busy % of all CPUs."""

    def __enter__(self):
        self.start = cpu_times()
        return self

    def __exit__(self, *exc):
        total, idle = cpu_times()
        dt, di = total - self.start[0], idle - self.start[1]
        self.busy = round(100 * (1 - di / dt), 0) if dt else 0.0
        with open("/proc/loadavg") as f:
            self.load1 = float(f.read().split()[0])
        return False

    def describe(self):
        return {"load1": self.load1, "busy_pct": self.busy, "cpus": os.cpu_count()}

    def text(self):
        return f"load {self.load1:.1f}, busy {self.busy:.0f}%"


# ---- processes: what every bench starts, runs and stops ---------------------------------------
import signal
import socket
import subprocess
import sys
import time

children = []


def log(message, name="bench"):
    print(f"{name}: {message}", file=sys.stderr, flush=True)


def spawn(argv, **kw):
    """Starts a process in a session of its own (so `stop_children` ends all it started)."""
    kw.setdefault("stdin", subprocess.DEVNULL)
    proc = subprocess.Popen(argv, start_new_session=True, **kw)
    children.append(proc)
    return proc


def stop_children():
    for proc in children:
        if proc.poll() is None:
            try:
                # A bench may have stopped one (SIGSTOP, a stalled master): it dies woken.
                os.killpg(proc.pid, signal.SIGCONT)
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for proc in children:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def run(argv, failed=None, **kw):
    """Runs a command to its end (120 s unless `timeout=`); a failure ends the bench, saying why
    (or raises `failed(reason)` when given, for a bench that goes on without that figure)."""
    # stderr is kept (unless the caller redirects it elsewhere) so a failing command says why.
    if not kw.get("capture_output") and kw.get("stderr") in (None, subprocess.DEVNULL):
        kw["stderr"] = subprocess.PIPE
    done = subprocess.run(argv, stdin=kw.pop("stdin", subprocess.DEVNULL),
                          timeout=kw.pop("timeout", 120), **kw)
    if done.returncode != 0:
        err = done.stderr if isinstance(done.stderr, str) else (done.stderr or b"").decode(
            errors="replace")
        reason = (f"{os.path.basename(argv[0])} {argv[1] if len(argv) > 1 else ''} exited "
                  f"{done.returncode}: {err.strip()}")
        if failed is not None:
            raise failed(reason)
        sys.exit(f"bench: {reason}")
    return done


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, what, limit=30):
    deadline = time.monotonic() + limit
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                sys.exit(f"bench: {what} did not come up")
            time.sleep(0.05)


def private_sshd(sshd, work, public_key):
    """Starts OpenSSH's sshd on 127.0.0.1 under `work`, letting in `public_key`; its port and
    process."""
    port = free_port()
    host_key = os.path.join(work, "sshd_host_key")
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", host_key])
    auth = os.path.join(work, "sshd_authorized_keys")
    with open(public_key) as src, open(auth, "w") as dst:
        dst.write(src.read())
    os.chmod(auth, 0o600)
    config = os.path.join(work, "sshd_config")
    with open(config, "w") as f:
        f.write(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
                f"AuthorizedKeysFile {auth}\nPermitRootLogin yes\nStrictModes no\nUsePAM no\n"
                f"PidFile none\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                f"UseDNS no\n")
    os.makedirs("/run/sshd", exist_ok=True)
    proc = spawn([sshd, "-D", "-e", "-f", config],
                 stderr=open(os.path.join(work, "sshd.log"), "w"))
    wait_port(port, "the private sshd", 20)
    return port, proc
