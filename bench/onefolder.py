"""One big folder on OLD, for profiling the copy engine and measuring its
memory (docs/bench.md, "Where the CPU goes" and "Memory").

    python3 bench/onefolder.py setup DIR --messages 3000 [--mix text|mixed|tiny|medium] [--big MB]
                                         [--like-bench | --gaps]
    python3 bench/onefolder.py run DIR ferry|dsync [--fsync never|optimized]
                               [--callgrind] [--rawlog] [--perf] [--set k=v ...]
    python3 bench/onefolder.py select DIR [--perf]   # the lazy path: IMAP SELECT of INBOX
    python3 bench/onefolder.py stop DIR

setup starts a sandbox (OLD + NEW, the build's plugin) in its own mount
namespace (a private copy of doveadm's module dir, as bench.py does), seeds
OLD user src's INBOX, and leaves the servers running; run executes one pull
into a fresh NEW user inside that namespace (nsenter) and prints a JSON line:
wall s, the tool's CPU s and peak RSS MB (GNU time), OLD's CPU s, and with
--rawlog the imapc rawlog's directory, with --callgrind callgrind's output."""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
sys.path.insert(0, HERE)

from ferrytest.sandbox import Sandbox  # noqa: E402

import bcorpus  # noqa: E402
import meter  # noqa: E402
import seedfast  # noqa: E402

TARGETS = 40  # fresh NEW users per tool
DSYNC_OPTS = ("imapc_features=rfc822.size fetch-headers", "mail_prefetch_count=20")


def users():
    u = ["src"]
    for i in range(1, TARGETS + 1):
        u += ["f%02d" % i, "d%02d" % i]
    return u


def setup(a):
    import bench
    if os.environ.get("FERRY_BENCH_NS") != "1":
        os.environ["FERRY_BENCH_NS"] = "1"
        os.execvp("unshare", ["unshare", "-m", "--propagation", "private", sys.executable,
                              os.path.abspath(__file__)] + sys.argv[1:])
    bench.private_doveadm_modules()
    bench.PRIVATE_DIRS.clear()  # kept: the servers outlive this process
    os.makedirs(os.path.join(a.dir, "sb"), exist_ok=True)
    os.chmod(a.dir, 0o755)
    extra = {"src": "userdb_ferry=no"}
    for i in range(1, TARGETS + 1):
        extra["f%02d" % i] = "userdb_imapc_user=src"
        extra["d%02d" % i] = "userdb_ferry=no userdb_imapc_user=src"
    build = bench.private_build(os.path.join(a.dir, "build"))
    sb = Sandbox(root=os.path.join(a.dir, "sb"), users=users(), build_dir=build,
                 new_extra="imapc_cmd_timeout = 120s\n", new_userdb_extra=extra)
    sb.start()
    sb.save()
    if a.big:
        f = bcorpus.make_folder(a.seed, "INBOX", 1, "plain", True, 4242, expunge=0)
        f.messages[0].body = bcorpus.fc.make_message(
            __import__("random").Random(1), "big", f.messages[0].date, 0,
            size=3000, attachment=int(a.big * 10**6 * 0.74))
    elif a.mix == "tiny":
        # memory runs: 200,000 messages of ~1 KB (a realistic mix would be
        # 8 GB of disk for no insight into memory)
        import random
        rng = random.Random("tiny/%d" % a.seed)
        f = bcorpus.fc.Folder("INBOX", 4242, True)
        for i in range(a.messages):
            d = 1300000000 + i * 600
            f.messages.append(bcorpus.fc.Message(bcorpus.fc.make_message(
                rng, "t%d" % i, d, 0, size=600), frozenset(), d, 0))
    elif a.mix == "medium":
        # memory runs: every message just under ferry_big_message_size's
        # default (1.0-1.9 MB on the wire), so all are fetched whole
        import random
        rng = random.Random("medium/%d" % a.seed)
        f = bcorpus.fc.Folder("INBOX", 4242, True)
        for i in range(a.messages):
            d = 1300000000 + i * 600
            f.messages.append(bcorpus.fc.Message(bcorpus.fc.make_message(
                rng, "m%d" % i, d, 0, size=3000,
                attachment=int(rng.uniform(1.0, 1.9) * 10**6 * 0.74)), frozenset(), d, 0))
    elif a.mix == "text":
        f = bcorpus.text_folder("INBOX", a.messages, a.seed, 4242)
    elif a.like_bench:
        f = bcorpus.text_folder("L%d" % a.messages, a.messages, a.seed, 4242, mix="mixed")
        f.name = "INBOX"
    else:
        f = bcorpus.make_folder(a.seed, "INBOX", a.messages, "plain", True, 4242,
                                expunge=0, mix="mixed")
        if a.gaps:  # every 20th UID expunged on OLD, as bench.py's folders
            for i, m in enumerate(f.messages):
                if i % 20 == 7:
                    m.expunged = True
    if a.direct:
        nbytes, nmsgs = seed_direct(sb, f)
    else:
        _, nbytes, nmsgs = seedfast.seed_user(sb, "src", [f])
    with open(os.path.join(a.dir, "onefolder.json"), "w") as fp:
        json.dump({"ns_pid": sb.master_pid("old"), "messages": nmsgs, "bytes": nbytes,
                   "next": {"ferry": 1, "dsync": 1}}, fp)
    print(json.dumps({"messages": nmsgs, "bytes": nbytes}))


def seed_direct(sb, f):
    """Mail files written straight into OLD's Maildir/cur (what maildir is
    made for), then indexed by OLD's doveadm: 200,000 APPENDs into one
    folder take OLD an hour, this a minute. Flags and order are not what
    a copy check needs; the memory runs only count."""
    cur = os.path.join(sb.home("old", "src"), "Maildir", "cur")
    os.makedirs(cur, exist_ok=True)
    nbytes = 0
    for i, m in enumerate(f.messages):
        body = m.body.replace(b"\r\n", b"\n")
        name = "%d.M%dP1.ferrytest,S=%d,W=%d:2," % (m.date, i, len(body), len(m.body))
        path = os.path.join(cur, name)
        with open(path, "wb") as fp:
            fp.write(body)
        os.utime(path, (m.date, m.date))
        nbytes += len(m.body)
    subprocess.run(["chown", "-R", "mail:mail", os.path.join(sb.home("old", "src"), "Maildir")],
                   check=True)
    sb.doveadm("old", "force-resync", "-u", "src", "INBOX", timeout=3600)
    return nbytes, len(f.messages)


def run(a):
    path = os.path.join(a.dir, "onefolder.json")
    with open(path) as fp:
        st = json.load(fp)
    sb = Sandbox.load(os.path.join(a.dir, "sb"))
    n = st["next"][a.tool]
    st["next"][a.tool] = n + 1
    with open(path, "w") as fp:
        json.dump(st, fp)
    user = ("f%02d" if a.tool == "ferry" else "d%02d") % n
    opts = ["mail_fsync=" + a.fsync] + list(a.set)
    if a.tool == "dsync":
        opts += DSYNC_OPTS
    if a.rawlog:
        rdir = os.path.join(a.dir, "rawlog-%s" % user)
        os.makedirs(rdir, exist_ok=True)
        os.chmod(rdir, 0o777)  # written as the mail user
        opts.append("imapc_rawlog_dir=" + rdir)
    cmd = ["doveadm", "-c", sb.conf_path("new")]
    for o in opts:
        cmd += ["-o", o]
    cmd += (["ferry", "pull", "-u", user] if a.tool == "ferry" else
            ["backup", "-R", "-u", user, "imapc:"])
    if a.massif:
        cdir = os.path.join(a.dir, "massif")
        os.makedirs(cdir, exist_ok=True)
        os.chmod(cdir, 0o777)
        res_cg = os.path.join(cdir, "%s.%s" % (a.tool, user))
        cmd = ["sh", "-c", 'f="$0.$$"; : > "$f"; chmod 666 "$f"; exec valgrind '
               '--tool=massif --trace-children=yes --massif-out-file="$f" "$@"',
               res_cg] + cmd
    elif a.callgrind:
        cdir = os.path.join(a.dir, "callgrind")
        os.makedirs(cdir, exist_ok=True)
        os.chmod(cdir, 0o777)  # written as the mail user
        res_cg = os.path.join(cdir, "%s.%s" % (a.tool, user))
        # doveadm execs doveconf, which execs doveadm again (same pid), and
        # drops privileges to the mail user before callgrind writes the
        # file it created as root: the file is made writable first
        cmd = ["sh", "-c", 'f="$0.$$"; : > "$f"; chmod 666 "$f"; exec valgrind '
               '--tool=callgrind --trace-children=yes --callgrind-out-file="$f" "$@"',
               res_cg] + cmd
    old_perf = None
    if a.trace:
        # syscall summary of the pull: where its wall time waits
        cmd = ["perf", "trace", "-s", "-o", _perf_path(a, "trace.%s.txt" % user), "--"] + cmd
    elif a.stat:
        # instructions (user, kernel) of the pull: comparable under load
        cmd = ["perf", "stat", "-x,", "-e", "instructions:u,instructions:k,task-clock",
               "-o", _perf_path(a, "stat.%s.txt" % user), "--"] + cmd
    elif a.perf:
        # perf record -g of the pull (NEW side) and of OLD's processes
        # (its master and every child forked during the pull)
        cmd = ["perf", "record", "-q", "-g", "-o", _perf_path(a, "new.%s.data" % user),
               "--"] + cmd
        old_perf = subprocess.Popen(["perf", "record", "-q", "-g", "-o",
                                     _perf_path(a, "old.%s.data" % user),
                                     "-p", str(sb.master_pid("old"))])
    cmd = ["nsenter", "-m", "-t", str(st["ns_pid"])] + cmd
    with meter.Meter(sb, ("old",)) as m:
        rc, out_, err, cpu, rss, wall = meter.run_tool(cmd, env=sb.doveadm_env("new"))
    _perf_stop(old_perf)
    r = m.result()
    res = {"tool": a.tool, "user": user, "fsync": a.fsync, "rc": rc, "wall_s": wall,
           "tool_cpu_s": cpu, "tool_rss_mb": rss, "old_cpu_s": r["cpu_s"].get("old"),
           "messages": st["messages"]}
    if rc != 0:
        res["error"] = (err or out_)[-600:]
    print(json.dumps(res))
    return 0 if rc == 0 else 1


def _perf_path(a, name):
    """DIR/perf/NAME, the directory made."""
    pdir = os.path.join(a.dir, "perf")
    os.makedirs(pdir, exist_ok=True)
    return os.path.join(pdir, name)


def _perf_stop(proc):
    if proc is not None:
        proc.send_signal(2)  # perf writes its file on SIGINT
        proc.wait()


def _schedstat(pid):
    """(on-CPU s, runqueue-wait s) of a process's main thread."""
    with open("/proc/%d/task/%d/schedstat" % (pid, pid)) as f:
        run, wait = f.read().split()[:2]
    return int(run) / 1e9, int(wait) / 1e9


def select(a):
    """The lazy path itself: a fresh NEW user logs in over IMAP and SELECTs
    INBOX, the first SELECT of a never-copied folder (bench scenario 3's
    largest folder, alone); wall s of the SELECT, NEW's and OLD's CPU.

    The session's imap process is split as the kernel's scheduler saw its
    main thread (/proc/PID/task/PID/schedstat): on a CPU, waiting for a CPU
    (other load on the machine) and sleeping (waiting for the old server,
    the disk, the durability thread). On a quiet machine the wall time is
    on-CPU + sleeping; under load the runqueue share says how far the wall
    time is from a quiet one."""
    path = os.path.join(a.dir, "onefolder.json")
    with open(path) as fp:
        st = json.load(fp)
    sb = Sandbox.load(os.path.join(a.dir, "sb"))
    n = st["next"]["ferry"]
    st["next"]["ferry"] = n + 1
    with open(path, "w") as fp:
        json.dump(st, fp)
    user = "f%02d" % n
    import time
    rec = None
    if a.perf:
        # perf record -a -g (the whole machine: perf does not follow a
        # process forked after it attached) from before the login, as a
        # pause after it would let the session's background completion copy
        # part of the folder first; the session is the JSON's imap_pid
        # (`perf report --pid PID`)
        rec = subprocess.Popen(["perf", "record", "-q", "-a", "-g", "-o",
                                _perf_path(a, "select.%s.data" % user)])
        time.sleep(0.5)  # perf attaches asynchronously
    before = sb.pids("new")
    conn = sb.imap("new", user, timeout=600)
    imap = [p for p in sb.pids("new") - before if _comm(p) == "imap"]
    try:
        s0 = _schedstat(imap[0]) if len(imap) == 1 else None
        with meter.Meter(sb) as m:
            t = time.monotonic()
            typ, data = conn.select("INBOX")
            wall = time.monotonic() - t
        s1 = _schedstat(imap[0]) if s0 else None
    finally:
        _perf_stop(rec)
        conn.logout()
    r = m.result()
    res = {"tool": "ferry-select", "user": user, "ok": typ == "OK",
           "exists": int(data[0]) if typ == "OK" else None, "wall_s": round(wall, 3),
           "new_cpu_s": r["cpu_s"].get("new"), "old_cpu_s": r["cpu_s"].get("old"),
           "messages": st["messages"], "load1": round(os.getloadavg()[0], 2),
           "imap_pid": imap[0] if len(imap) == 1 else None}
    if s0 and s1:
        res["main_thread"] = {"on_cpu_s": round(s1[0] - s0[0], 3),
                              "runqueue_s": round(s1[1] - s0[1], 3),
                              "sleeping_s": round(wall - (s1[0] - s0[0]) - (s1[1] - s0[1]), 3)}
    print(json.dumps(res))
    return 0 if typ == "OK" else 1


def _comm(pid):
    try:
        with open("/proc/%d/comm" % pid) as f:
            return f.read().strip()
    except OSError:
        return ""


def stop(a):
    Sandbox.load(os.path.join(a.dir, "sb")).stop()


def main():
    ap = argparse.ArgumentParser(prog="onefolder.py")
    ap.add_argument("action", choices=("setup", "run", "select", "stop"))
    ap.add_argument("dir")
    ap.add_argument("tool", nargs="?", choices=("ferry", "dsync"))
    ap.add_argument("--messages", type=int, default=3000)
    ap.add_argument("--mix", choices=("text", "mixed", "tiny", "medium"), default="text")
    ap.add_argument("--gaps", action="store_true",
                    help="with --mix mixed: every 20th message expunged on OLD (5%% UID gaps)")
    ap.add_argument("--like-bench", action="store_true",
                    help="with --mix mixed: bench.py scenario 3's largest folder "
                         "(its name, 5%% expunged UIDs, same seed), for --messages N")
    ap.add_argument("--big", type=float, help="one message of this many MB instead")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--direct", action="store_true",
                    help="write OLD's mail files directly (memory runs of 200,000)")
    ap.add_argument("--fsync", default="never")
    ap.add_argument("--callgrind", action="store_true")
    ap.add_argument("--rawlog", action="store_true")
    ap.add_argument("--stat", action="store_true",
                    help="perf stat the pull: instructions user/kernel (DIR/perf/)")
    ap.add_argument("--trace", action="store_true",
                    help="perf trace -s the pull: syscall time summary (DIR/perf/)")
    ap.add_argument("--perf", action="store_true",
                    help="perf record -g the pull and OLD's processes; with select, the session's imap process (DIR/perf/)")
    ap.add_argument("--massif", action="store_true", help="valgrind --tool=massif (heap)")
    ap.add_argument("--set", action="append", default=[])
    a = ap.parse_args()
    a.dir = os.path.abspath(a.dir)
    return {"setup": setup, "run": run, "select": select, "stop": stop}[a.action](a) or 0


if __name__ == "__main__":
    sys.exit(main())
