"""What both benches share: the machine's load over a measurement."""

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
