#!/usr/bin/env python3
"""bench/trace_hops.py TRACE: where a keystroke's round trip through the shell relay goes.

Reads the `perf trace` that `BENCH_TRACE=TRACE python3 bench/shell.py` writes (the syscalls
of the master, the slave and the user's ssh client over 20 paced keystrokes, and TRACE.tids,
whose threads are whose) and splits each round trip into its hops, by the syscalls that mark
them:

  ssh sends the key        -> master has read it     (TCP, user's ssh to master)
  -> master sends it on    -> slave has read it      (master's relay; TCP to the slave)
  -> slave writes the PTY                            (slave's relay)
  -> slave reads the echo                            (the shell on its PTY)
  -> slave sends it        -> master has read it     (slave's relay; TCP to the master)
  -> master sends it on    -> ssh has read it        (master's relay; TCP to the user)

and prints the median of each hop in microseconds, with the syscalls and futex wake-ups each
process made per keystroke. A syscall's time is when it returned.
"""

import re
import statistics
import sys

LINE = re.compile(
    r"^\s*([\d.]+) \(\s*([\d.]+) ms\): (.+?)/(\d+) (\w+)\((.*)\)\s+= (-?\d+)")
FD = re.compile(r"fd: (\d+)")


def load(path):
    owner = {}
    with open(path + ".tids") as f:
        for line in f:
            name, *tids = line.split()
            for tid in tids:
                owner[int(tid)] = name
    events = []
    with open(path) as f:
        for line in f:
            m = LINE.match(line)
            if not m:
                continue
            start, took, _comm, tid, call, args, ret = m.groups()
            fd = FD.search(args)
            events.append({
                "t": float(start) + float(took),
                "who": owner.get(int(tid), "?"),
                "call": call,
                "fd": int(fd.group(1)) if fd else None,
                "ret": int(ret),
            })
    events.sort(key=lambda e: e["t"])
    return events


def find(events, at, who, calls, fd=None, positive=True, not_fd=None):
    """Index of the first event from index `at` on matching the conditions."""
    for i in range(at, len(events)):
        e = events[i]
        if e["who"] == who and e["call"] in calls and (not positive or e["ret"] > 0) \
                and (fd is None or e["fd"] == fd) and (not_fd is None or e["fd"] != not_fd):
            return i
    return None


HOPS = [
    "user ssh -> master (TCP)",
    "master relay: user -> slave connection",
    "master -> slave (TCP)",
    "slave relay: connection -> PTY",
    "the shell echoes (PTY)",
    "slave relay: PTY -> connection",
    "slave -> master (TCP)",
    "master relay: slave -> user connection",
    "master -> user ssh (TCP)",
]


def main():
    events = load(sys.argv[1])
    rows = []
    counts = []
    i = 0
    while True:
        k = find(events, i, "ssh", {"write"}, fd=3)
        if k is None:
            break
        marks = [k]
        user_fd = slave_fd = socket_fd = None
        try:
            m1 = find(events, k, "master", {"recvfrom", "read"})
            user_fd = events[m1]["fd"]
            m2 = find(events, m1, "master", {"sendto", "write", "writev"}, not_fd=user_fd)
            slave_fd = events[m2]["fd"]
            s1 = find(events, m2, "slave", {"recvfrom"})
            socket_fd = events[s1]["fd"]
            s2 = find(events, s1, "slave", {"write"}, not_fd=socket_fd)
            s3 = find(events, s2, "slave", {"read"}, not_fd=socket_fd)
            s4 = find(events, s3, "slave", {"sendto"}, fd=socket_fd)
            m3 = find(events, s4, "master", {"recvfrom", "read"}, fd=slave_fd)
            m4 = find(events, m3, "master", {"sendto", "write", "writev"}, fd=user_fd)
            end = find(events, m4, "ssh", {"read"}, fd=3)
        except TypeError:
            break
        if end is None:
            break
        marks += [m1, m2, s1, s2, s3, s4, m3, m4, end]
        times = [events[x]["t"] for x in marks]
        rows.append([(b - a) * 1000 for a, b in zip(times, times[1:])])
        window = events[k:end + 1]
        counts.append({who: (sum(1 for e in window if e["who"] == who),
                             sum(1 for e in window if e["who"] == who and e["call"] == "futex"))
                       for who in ("master", "slave")})
        i = end + 1
    if not rows:
        raise SystemExit("trace_hops: no complete round trip in the trace")
    print(f"{len(rows)} round trips; median per hop (us):")
    for n, name in enumerate(HOPS):
        print(f"  {name:42} {statistics.median(r[n] for r in rows):8.1f}")
    total = statistics.median(sum(r) for r in rows)
    print(f"  {'round trip':42} {total:8.1f}")
    for who in ("master", "slave"):
        calls = statistics.median(c[who][0] for c in counts)
        futex = statistics.median(c[who][1] for c in counts)
        print(f"  {who}: {calls:.0f} syscalls per round trip, {futex:.0f} of them futex")


if __name__ == "__main__":
    main()
