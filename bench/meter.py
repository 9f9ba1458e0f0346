"""Cgroup-free resource accounting.

Server CPU: a Dovecot instance's CPU time is its master's utime+stime+
cutime+cstime (every service process is the master's child, so a process
that exited and was reaped is in the master's cutime/cstime) plus the
utime+stime of the descendants still alive. Taken before and after a
scenario, the difference is what the instance spent in it.

Tool CPU and peak RSS: os.wait4() on the tool's process (ru_utime,
ru_stime, ru_maxrss). Server peak RSS: a sampler thread reads VmHWM of
the instance's processes that appear during the scenario (VmRSS of those
that were already there) every 100 ms."""
import os
import subprocess
import tempfile
import threading
import time

from ferrytest.sandbox import _descendants

CLK = os.sysconf("SC_CLK_TCK")


def _stat(pid):
    with open("/proc/%d/stat" % pid) as f:
        return f.read().rsplit(")", 1)[1].split()


def proc_cpu(pid, children=False):
    """CPU seconds of a live process (and of its reaped children)."""
    try:
        s = _stat(pid)
    except OSError:
        return 0.0
    t = int(s[11]) + int(s[12])
    if children:
        t += int(s[13]) + int(s[14])
    return t / CLK


def _status_kb(pid, key):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def instance_cpu(sb, inst):
    master = sb.master_pid(inst)
    if not master:
        return 0.0
    return proc_cpu(master, children=True) + sum(proc_cpu(p) for p in _descendants(master))


class Meter:
    """with Meter(sb, ["old", "new"]) as m: ... ; m.result() -> dict."""

    def __init__(self, sb, insts=("old", "new"), extra_pids=()):
        self.sbs = sb if isinstance(sb, dict) else {i: sb for i in insts}
        self.insts = list(self.sbs)
        self.extra_pids = list(extra_pids)
        self.peak_kb = {i: 0 for i in self.insts}
        self._stop = threading.Event()

    def _sample(self):
        while True:
            for inst in self.insts:
                master = self.sbs[inst].master_pid(inst)
                if not master:
                    continue
                for p in _descendants(master):
                    kb = (_status_kb(p, "VmRSS") if p in self.before_pids[inst]
                          else _status_kb(p, "VmHWM"))
                    if kb > self.peak_kb[inst]:
                        self.peak_kb[inst] = kb
            if self._stop.wait(0.1):
                return

    def __enter__(self):
        self.before_pids = {}
        for inst in self.insts:
            m = self.sbs[inst].master_pid(inst)
            self.before_pids[inst] = _descendants(m) if m else set()
        self.cpu0 = {i: instance_cpu(self.sbs[i], i) for i in self.insts}
        self.t0 = time.monotonic()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.wall = time.monotonic() - self.t0
        self._stop.set()
        self.thread.join()
        self.cpu = {i: round(instance_cpu(self.sbs[i], i) - self.cpu0[i], 3)
                    for i in self.insts}

    def result(self):
        return {"wall_s": round(self.wall, 3),
                "cpu_s": dict(self.cpu),
                "peak_rss_mb": {i: round(kb / 1024, 1) for i, kb in self.peak_kb.items()}}


TIME = "/usr/bin/time"  # Debian package time


def run_tool(cmd, env=None, timeout=3600, cwd=None):
    """Run a command; -> (returncode, stdout, stderr, cpu_s, maxrss_mb, wall_s).
    Peak RSS comes from /usr/bin/time (GNU time) when installed: the
    ru_maxrss of a child forked from this Python process would include the
    parent's RSS inherited before exec."""
    tf = None
    if os.path.exists(TIME):
        fd, tf = tempfile.mkstemp(prefix="bench-time-")
        os.close(fd)
        cmd = [TIME, "-f", "%M", "-o", tf] + list(cmd)
    t0 = time.monotonic()
    with open(os.devnull, "rb") as devnull:
        p = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=devnull,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    res = {}

    def reader(name, stream):
        res[name] = stream.read()
    threads = [threading.Thread(target=reader, args=(n, s), daemon=True)
               for n, s in (("out", p.stdout), ("err", p.stderr))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid == p.pid:
            break
        if time.monotonic() > deadline:
            p.kill()
            pid, status, ru = os.wait4(p.pid, 0)
            break
        time.sleep(0.01)
    wall = time.monotonic() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    for t in threads:
        t.join()
    maxrss_kb = ru.ru_maxrss
    if tf:
        try:
            with open(tf) as f:
                maxrss_kb = int(f.read().split()[-1])
        except (OSError, ValueError, IndexError):
            pass
        os.unlink(tf)
    return (p.returncode, res["out"].decode(errors="replace"), res["err"].decode(errors="replace"),
            round(ru.ru_utime + ru.ru_stime, 3), round(maxrss_kb / 1024, 1), round(wall, 3))
