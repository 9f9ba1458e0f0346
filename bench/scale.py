#!/usr/bin/env python3
"""make bench-scale: ferryd with 1k / 10k / 100k users queued and up to
1,000 pulls in flight against a FAKE doveadm endpoint answering each call
after --answer-delay seconds (bench/fakedoveadm.py), to measure ferryd itself
(docs/bench.md, "ferryd at scale"):
  - RSS (peak, VmHWM) of ferryd;
  - CPU per scheduling decision: ferryd's CPU time over the window divided
    by the pulls it started in it (each start is one decision, its three
    doveadm calls and its state writes);
  - `ferryctl status --once` latency (median of 6, while pulls run, the
    window opened once the totals caught up with the start);
  - with every pull paused and ended: ferryd's CPU time per `GET
    /v1/status` and per `GET /metrics` (20 each) and their latency;
  - the start of the whole wave (answered after its last slice): how long,
    ferryd's CPU, and `GET /v1/status` every 100 ms meanwhile (latency and
    ferryd's CPU time between request and answer).
Results in bench/results/scale.{json,md}; the issue's figures printed last
as one table.

usage: scale.py [--users 1000,10000,100000] [--window 20] [--answer-delay 1]"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, "build")
TOKEN = "bench-token-0123456789"
TICK = os.sysconf("SC_CLK_TCK")
QUIET_REQUESTS = 20


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(cond, timeout, what):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return
        time.sleep(0.1)
    raise SystemExit("timeout waiting for " + what)


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def mem_kb(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def count_starts(log):
    try:
        with open(log) as f:
            return sum(1 for line in f if "event=pull-start" in line)
    except FileNotFoundError:
        return 0


def failures(log):
    """pulls that failed (the fake answers every call: a failure is ferryd's
    or the loaded machine's, e.g. a connection refused) and the first error"""
    n, first = 0, ""
    try:
        with open(log) as f:
            for line in f:
                if "event=pull-failed" in line:
                    n += 1
                    first = first or line.strip()[-200:]
    except FileNotFoundError:
        pass
    return n, first


def run(n, window, delay):
    d = tempfile.mkdtemp(prefix="ferry-scale-")
    port, dport = free_port(), free_port()
    for name, text in (("token", TOKEN), ("doveadm.key", "fake")):
        with open(os.path.join(d, name), "w") as f:
            f.write(text + "\n")
        os.chmod(os.path.join(d, name), 0o600)
    conf = os.path.join(d, "ferryd.conf")
    log = os.path.join(d, "ferryd.log")
    settings = {"listen": "127.0.0.1:%d" % port, "api_token_file": os.path.join(d, "token"),
                "state_db": os.path.join(d, "state.db"), "doveadm": "127.0.0.1:%d" % dport,
                "doveadm_api_key_file": os.path.join(d, "doveadm.key"), "log_file": log,
                "max_concurrent": 1000, "max_per_host": 1000, "tick_ms": 1000,
                "pull_timeout": 300, "drain_timeout": 5, "max_body": 64 << 20}
    if os.geteuid() == 0:
        settings["allow_root"] = "yes"
    with open(conf, "w") as f:
        for k, v in settings.items():
            f.write("%s = %s\n" % (k, v))
    # imported 10,000 users per request (one request of 100,000 outlasts
    # ferryctl's answer timeout); 50 old hosts
    csvs = []
    for k in range(0, n, 10000):
        csvs.append(os.path.join(d, "users%d.csv" % k))
        with open(csvs[-1], "w") as f:
            f.write("user,old_login,new_login,endpoint,wave\n")
            for i in range(k, min(n, k + 10000)):
                f.write("u%06d,u%06d,u%06d,127.0.0.%d:143,bench\n" % (i, i, i, 1 + i % 50))
    fake = subprocess.Popen([sys.executable, os.path.join(ROOT, "bench", "fakedoveadm.py"),
                             str(dport), str(delay)], stdout=subprocess.PIPE, text=True)
    assert fake.stdout.readline().strip() == "ready"
    fd = subprocess.Popen([os.path.join(BUILD, "ferryd"), "-c", conf],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ctl = [os.path.join(BUILD, "ferryctl"), "-c", conf]

    def up():
        try:
            req = urllib.request.Request("http://127.0.0.1:%d/v1/health" % port,
                                         headers={"Authorization": "Bearer " + TOKEN})
            return urllib.request.urlopen(req, timeout=2).status == 200
        except OSError:
            return False
    try:
        wait(up, 30, "ferryd")
        t = time.time()
        for csv in csvs:
            r = subprocess.run(ctl + ["import", csv], capture_output=True, text=True,
                               timeout=600)
            if r.returncode != 0:
                raise SystemExit("import of %s: %s%s" % (csv, r.stdout, r.stderr))
        import_s = time.time() - t
        t = time.time()
        cpu_start = cpu_seconds(fd.pid)
        # the API directly (the start is answered after its last slice);
        # meanwhile GET /v1/status every 100 ms: its latency and ferryd's
        # CPU time between request and answer (the start runs in slices
        # from the event loop: docs/ferryd.md, "Event loop")
        req = urllib.request.Request("http://127.0.0.1:%d/v1/start" % port,
                                     data=json.dumps({"wave": "bench"}).encode(),
                                     headers={"Authorization": "Bearer " + TOKEN,
                                              "Content-Type": "application/json"})
        started = []
        th = threading.Thread(target=lambda: started.append(
            json.loads(urllib.request.urlopen(req, timeout=1800).read())))
        th.start()
        during = []
        while th.is_alive():
            c0, t0 = cpu_seconds(fd.pid), time.time()
            sreq = urllib.request.Request("http://127.0.0.1:%d/v1/status?limit=10" % port,
                                          headers={"Authorization": "Bearer " + TOKEN})
            urllib.request.urlopen(sreq, timeout=600).read()
            during.append(((time.time() - t0) * 1000, (cpu_seconds(fd.pid) - c0) * 1000))
            time.sleep(0.1)
        th.join()
        start_answer_s, start_answer_cpu = time.time() - t, cpu_seconds(fd.pid) - cpu_start
        if not started or "started" not in started[0]:
            raise SystemExit("start: %s" % started)

        def status_json():
            req = urllib.request.Request("http://127.0.0.1:%d/v1/status" % port,
                                         headers={"Authorization": "Bearer " + TOKEN})
            return json.loads(urllib.request.urlopen(req, timeout=600).read())

        def running():
            return status_json()["running"] > 0
        # the first pick reads once each user the start changed; the window
        # measures the steady state after it
        wait(running, 600, "the first pulls")
        start_s, start_cpu = time.time() - t, cpu_seconds(fd.pid) - cpu_start
        # steady state: the totals have read every user the start changed
        # (docs/ferryd.md, "Status and metrics at scale")
        wait(lambda: status_json()["totals_pending"] == 0, 600, "the totals to catch up")
        cpu0, starts0, t0 = cpu_seconds(fd.pid), count_starts(log), time.time()
        lat, running = [], 0
        while time.time() - t0 < window:
            t = time.time()
            r = subprocess.run(ctl + ["status", "--once", "--json"], check=True,
                               capture_output=True, text=True)
            lat.append((time.time() - t) * 1000)
            running = max(running, json.loads(r.stdout)["running"])
            time.sleep(max(0, window / 6 - (time.time() - t)))
        cpu1, starts1, t1 = cpu_seconds(fd.pid), count_starts(log), time.time()
        decisions = starts1 - starts0
        # the cost of one status and one scrape, ferryd otherwise idle (every
        # pull paused and ended): CPU time per request, and the latency of a
        # direct GET (no ferryctl process start)
        subprocess.run(ctl + ["pause"], check=True, capture_output=True)

        def quiet():
            return status_json()["running"] == 0
        wait(quiet, 300, "the pulls in flight to end")
        costs = {}
        for path in ("/v1/status", "/metrics"):
            c0, lat_q = cpu_seconds(fd.pid), []
            for _ in range(QUIET_REQUESTS):
                t = time.time()
                req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path),
                                             headers={"Authorization": "Bearer " + TOKEN})
                urllib.request.urlopen(req, timeout=60).read()
                lat_q.append((time.time() - t) * 1000)
            costs[path] = ((cpu_seconds(fd.pid) - c0) / QUIET_REQUESTS * 1000,
                           statistics.median(lat_q))
        overall = (cpu1 - cpu_start) / starts1 * 1e6 if starts1 else None
        wall = sorted(w for w, _ in during) or [0]
        failed, first_error = failures(log)
        return {"users": n, "import_s": round(import_s, 1),
                "start_answer_s": round(start_answer_s, 1),
                "start_answer_cpu_s": round(start_answer_cpu, 2),
                "status_during_start": len(during),
                "status_during_start_ms_median": round(statistics.median(wall), 1),
                "status_during_start_ms_max": round(wall[-1], 1),
                "status_during_start_cpu_ms_max": round(max([c for _, c in during] or [0])),
                "start_s": round(start_s, 1), "start_cpu_s": round(start_cpu, 2),
                "rss_peak_mb": round(mem_kb(fd.pid, "VmHWM") / 1024, 1),
                "window_s": round(t1 - t0, 1), "pulls_started": decisions,
                "pulls_failed": failed, "first_failure": first_error,
                "max_in_flight_seen": running,
                "cpu_s": round(cpu1 - cpu0, 2),
                "cpu_per_decision_us": round((cpu1 - cpu0) / decisions * 1e6) if decisions else None,
                "pulls_since_start": starts1,
                "cpu_per_pull_since_start_us": round(overall) if overall else None,
                "status_ms_median": round(statistics.median(lat), 1),
                "status_ms_max": round(max(lat), 1),
                "status_cpu_ms": round(costs["/v1/status"][0], 1),
                "status_quiet_ms_median": round(costs["/v1/status"][1], 1),
                "metrics_cpu_ms": round(costs["/metrics"][0], 1),
                "metrics_quiet_ms_median": round(costs["/metrics"][1], 1)}
    finally:
        fd.kill()
        fd.wait()
        fake.kill()
        fake.wait()
        subprocess.run(["rm", "-rf", d])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", default="1000,10000,100000")
    ap.add_argument("--window", type=float, default=20)
    # each fake doveadm answer 1 s late: a pull (three calls) lasts 3 s, so
    # up to max_concurrent (1,000) pulls are in flight together
    ap.add_argument("--answer-delay", type=float, default=1.0)
    a = ap.parse_args()
    rows = []
    for n in [int(x) for x in a.users.split(",")]:
        rows.append(run(n, a.window, a.answer_delay))
        print(json.dumps(rows[-1]), flush=True)
    out = os.path.join(ROOT, "bench", "results")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "scale.json"), "w") as f:
        json.dump(rows, f, indent=1)
    with open(os.path.join(out, "scale.md"), "w") as f:
        f.write("| users queued | RSS peak (MB) | pulls started in %gs | max in flight seen |"
                " CPU per decision, steady (µs) | CPU per pull since start (µs) |"
                " ferryctl status during pulls, median / max (ms) |"
                " status: ferryd CPU / latency, idle (ms) | metrics: ferryd CPU / latency, idle (ms) |"
                " import (s) | start to first pull (s, CPU s) |\n"
                "|---|---|---|---|---|---|---|---|---|---|---|\n" % a.window)
        for r in rows:
            f.write("| %d | %s | %d | %d | %s | %s | %s / %s | %s / %s | %s / %s | %s | %s, %s |\n" % (
                r["users"], r["rss_peak_mb"], r["pulls_started"], r["max_in_flight_seen"],
                r["cpu_per_decision_us"] or "-", r["cpu_per_pull_since_start_us"],
                r["status_ms_median"], r["status_ms_max"],
                r["status_cpu_ms"], r["status_quiet_ms_median"],
                r["metrics_cpu_ms"], r["metrics_quiet_ms_median"],
                r["import_s"], r["start_s"], r["start_cpu_s"]))
    print(open(os.path.join(out, "scale.md")).read())
    # the three figures (docs/bench.md, "ferryd at scale"); wall
    # clock is the machine's load as much as ferryd's: the CPU columns are
    # ferryd's own
    print("| users queued | ferryd RSS peak (MB) | CPU per scheduling decision (us) |"
          " ferryctl status, median / max (ms) | status: ferryd CPU (ms) |"
          " start: answered after (s) / ferryd CPU (s) |"
          " status during the start: answers, median / max (ms), ferryd CPU max (ms) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print("| %d | %s | %s | %s / %s | %s | %s / %s | %d, %s / %s, %s |" % (
            r["users"], r["rss_peak_mb"], r["cpu_per_decision_us"] or "-",
            r["status_ms_median"], r["status_ms_max"], r["status_cpu_ms"],
            r["start_answer_s"], r["start_answer_cpu_s"], r["status_during_start"],
            r["status_during_start_ms_median"], r["status_during_start_ms_max"],
            r["status_during_start_cpu_ms_max"]))


if __name__ == "__main__":
    main()
