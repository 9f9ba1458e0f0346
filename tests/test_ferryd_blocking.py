"""No blocking call in ferryd's event loop (issue 16), measured against the
sandbox's real Dovecot pair:

- a slow DNS answer: the doveadm host is a name that a DNS responder on
  127.0.0.1 answers only after 5 s (ferrytest/slowdns.py: a scripted UDP
  responder, since a real server cannot be told to answer late); while
  ferryd's evdns lookup waits, the API (status, metrics) answers (every
  answer: ferryd's CPU time between request and answer < 100 ms, wall
  time < 1 s; the median < 100 ms: the machine is shared, see
  check_latency); then the pull runs through that name;
- the state database held locked for 5 s by another process (SQLite:
  `BEGIN EXCLUSIVE`; PostgreSQL: `LOCK TABLE ... IN EXCLUSIVE MODE` on
  every table, which lets readers through like SQLite's WAL): the API answers within 100 ms meanwhile (reads, and a write
  answered 503 "busy" at once), the doveadm answers that arrive during the
  lock are held and applied afterwards (event log store-busy /
  store-resumed), a `ferryctl pause` sent during the lock is carried out
  when it ends, and nothing is lost: every user done, NEW equal to OLD;
- a verification whose result comes while the database is locked (its
  ferry-imapcheck child stopped with SIGSTOP until the lock is taken, then
  let go): the result is held and written when the lock ends (event log
  store-busy held=check-result / store-resumed), not lost; on PostgreSQL
  also one whose BEGIN fails because the database refuses ferryd (its
  session ended, its role's login refused), held until it answers again;
- the start of a wave of 8,000 users (1,000 on PostgreSQL; a transition
  each, carried out in slices from the loop): the API answers meanwhile,
  ferryd spending less than 100 ms of CPU between a request and its
  answer."""
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from ferrytest import corpus
from ferrytest.ferryd import Ferryd, master_password_file
from ferrytest.sandbox import BUILD_DIR, MASTER_USER, wait_until
from ferrytest.slowdns import SlowDns
from ferrytest.snapshot import compare, snapshot

DNS_USER = "dnsu"
LOCK_USERS = ["lk%02d" % i for i in range(1, 9)]
IDLE = "idle"  # imported, never started: paused during the lock
CHECK_USER = "ck"  # verified while the database is locked
DOWN_USER = "ckd"  # verified while PostgreSQL refuses ferryd
SANDBOX_KWARGS = {"users": [DNS_USER, IDLE, CHECK_USER, DOWN_USER] + LOCK_USERS,
                  "doveadm_http": True}
# the whole module on each store backend (conftest.py)
FERRY_STORES = ("sqlite", "pgsql")
LIMIT_MS = 100
HOLD_S = 5
# The machine is shared (up to 8 test runs on 2 cores): one request can be
# delayed by the kernel's scheduling whatever ferryd does, so wall clock is
# not the measure of ferryd (tests/README.md). Asserted for every answer:
# the CPU time ferryd spent between the request and its answer is under
# LIMIT_MS (a long callback shows its whole length there, whatever the
# load), and its wall time under MAX_MS (a loop that slept on the 5 s lock
# or DNS answer would show seconds there); and the median answer within
# LIMIT_MS of wall time.
MAX_MS = 1000
TICK = os.sysconf("SC_CLK_TCK")


def cpu_ms(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / TICK


def check_latency(lat, what, max_ms=MAX_MS, median=True):
    ms = sorted(m for _, _, m, _ in lat)
    cpu = sorted(c for _, _, _, c in lat)
    summary = ("%s: %d answers, wall median %.1f ms, 90%% %.1f ms, max %.1f ms; ferryd CPU"
               " during an answer: median %.0f ms, max %.0f ms (%d ms ticks)") % (
        what, len(ms), ms[len(ms) // 2], ms[int(len(ms) * 0.9)], ms[-1],
        cpu[len(cpu) // 2], cpu[-1], 1000 // TICK)
    print(summary)
    assert cpu[-1] < LIMIT_MS and ms[-1] < max_ms, summary
    assert not median or ms[len(ms) // 2] < LIMIT_MS, summary


def timed(fd, method, path, body=None):
    c, t = cpu_ms(fd.pid), time.monotonic()
    code, _ = fd.api(method, path, body)
    return code, (time.monotonic() - t) * 1000, cpu_ms(fd.pid) - c


def probe(fd, until, writes=False):
    """GET /v1/status and /metrics (and, with writes, a POST) every 50 ms
    until until() is true; -> [(path, HTTP status, wall ms, ferryd CPU ms)]"""
    out = []
    while not until():
        for method, path in (("GET", "/v1/status?limit=10"), ("GET", "/metrics")):
            code, ms, cpu = timed(fd, method, path)
            out.append((path, code, ms, cpu))
        if writes:
            code, ms, cpu = timed(fd, "POST", "/v1/pause", {"user": IDLE})
            out.append(("POST /v1/pause", code, ms, cpu))
        time.sleep(0.05)
    return out


def test_slow_dns_answer_does_not_block_the_api(sandbox):
    corpus.seed_old(sandbox, DNS_USER, corpus.folder_spec("Bulk", n=20, seed=16, gaps=2))
    dns = SlowDns("doveadm.ferry.test", "127.0.0.1", delay=HOLD_S, slow=2).start()
    resolv = os.path.join(sandbox.root, "resolv-slow.conf")
    with open(resolv, "w") as f:
        # one attempt that outlasts the late answer: the lookup waits for it
        f.write("nameserver 127.0.0.1:%d\noptions timeout:15 attempts:1\n" % dns.port)
    fd = Ferryd(sandbox, name="ferryd-dns", resolv_conf=resolv,
                doveadm="doveadm.ferry.test:%d" % sandbox.doveadm_http_port)
    try:
        fd.start()
        fd.import_users([DNS_USER], "wd")
        fd.ctl("start", "--wave", "wd")
        wait_until(lambda: len(dns.queries) > 0, 20, "ferryd to ask for the doveadm host")
        asked = dns.queries[0][0]
        lat = probe(fd, lambda: len(dns.answers) > 0 or time.time() > asked + HOLD_S + 5)
        answered = dns.answers[0][0] if dns.answers else None
        assert answered is not None and answered - asked >= HOLD_S - 0.5, \
            "the first answer came %s s after the question" % (
                None if answered is None else round(answered - asked, 2))
        assert len(lat) >= 20, lat
        assert all(code == 200 for _, code, _, _ in lat), lat
        check_latency(lat, "while the DNS answer waited")
        wait_until(lambda: fd.settled([DNS_USER]), 120, "the pull through the slow name")
        assert fd.users()[DNS_USER]["state"] in ("done", "verified"), fd.users()[DNS_USER]
        assert any(e.get("event") == "folder-pulled" and e.get("user") == DNS_USER
                   for e in fd.events())
    finally:
        fd.stop()
        dns.stop()


LOCKER = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
con.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
con.execute("COMMIT")
print("unlocked", flush=True)
"""

PG_LOCKER = """
import subprocess, sys, time
host, port, db, secs = sys.argv[1:5]
p = subprocess.Popen(["psql", "-X", "-q", "-A", "-t", "-h", host, "-p", port, "-U", "postgres",
                      "-d", db], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
p.stdin.write("BEGIN; LOCK TABLE settings, endpoints, waves, users, folders, log, routes,"
              " cutovers, checks IN EXCLUSIVE MODE; SELECT 'locked';\\n")
p.stdin.flush()
assert p.stdout.readline().strip() == "locked"
print("locked", flush=True)
time.sleep(float(secs))
p.stdin.write("COMMIT;\\n")
p.stdin.close()
p.wait()
print("unlocked", flush=True)
"""


def locker(fd, seconds):
    """Another process holding ferryd's database write-locked for SECONDS;
    it prints "locked", then "unlocked"."""
    if fd.pg_db is None:
        args = [LOCKER, fd.db_path, str(seconds)]
    else:
        args = [PG_LOCKER, fd.pg.root, str(fd.pg.port), fd.pg_db["name"], str(seconds)]
    return subprocess.Popen([sys.executable, "-c"] + args, stdout=subprocess.PIPE, text=True)


def test_locked_database_does_not_block_the_api(sandbox):
    for i, u in enumerate(LOCK_USERS):
        corpus.seed_old(sandbox, u, corpus.folder_spec("Bulk", n=150, seed=100 + i, gaps=5))
    fd = Ferryd(sandbox, name="ferryd-lock", max_concurrent=2, max_per_host=2)
    try:
        fd.start()
        fd.import_users(LOCK_USERS, "wl")
        fd.import_users([IDLE], "wi")
        fd.ctl("start", "--wave", "wl")
        wait_until(lambda: any(u["running"] for u in fd.status()["users"]), 30,
                   "the first pulls")
        lk = locker(fd, HOLD_S)
        try:
            assert lk.stdout.readline().strip() == "locked"
            locked_at = time.monotonic()
            # an admin's change sent during the lock: ferryctl is told
            # "busy" and sends it again until the lock is gone
            pause = subprocess.Popen([os.path.join(BUILD_DIR, "ferryctl"), "-c", fd.conf_path,
                                      "pause", IDLE], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
            lat = probe(fd, lambda: time.monotonic() > locked_at + HOLD_S - 0.5, writes=True)
            during = lk.poll() is None  # every probe ran while the lock was held
            assert lk.stdout.readline().strip() == "unlocked"
        finally:
            lk.wait(timeout=30)
        out, err = pause.communicate(timeout=60)
        assert pause.returncode == 0, err
        assert "locked by another process" in err
        assert len(lat) >= 30, lat
        reads = [x for x in lat if not x[0].startswith("POST")]
        writes = [x for x in lat if x[0].startswith("POST")]
        assert all(x[1] == 200 for x in reads), reads
        # the write refused at once (nothing waits for the lock in the loop)
        assert writes and all(x[1] == 503 for x in writes), writes
        check_latency(lat, "during the lock")
        assert during, "the lock ended before the probes did"
        # nothing lost: the answers that came during the lock were applied
        wait_until(lambda: fd.settled(LOCK_USERS), 180, "every locked-out pull to end")
        users = fd.users()
        assert users[IDLE]["paused"], users[IDLE]
        assert all(users[u]["state"] in ("done", "verified") for u in LOCK_USERS), \
            {u: users[u]["state"] for u in LOCK_USERS}
        ev = fd.events()
        held = [e for e in ev if e.get("event") == "store-busy" and e.get("held")]
        resumed = [e for e in ev if e.get("event") == "store-resumed"]
        assert held, "no doveadm answer arrived during the lock (nothing was measured)"
        assert {e["user"] for e in resumed} == {e["user"] for e in held}
        for u in LOCK_USERS:
            assert compare(snapshot(sandbox, "old", u), snapshot(sandbox, "new", u)) == []
        assert not fd.db_running()
    finally:
        fd.stop()



def imapcheck_child(ppid):
    """pid of a ferry-imapcheck child of ppid, or None"""
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % p) as f:
                stat = f.read()
        except OSError:
            continue
        comm, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:]
        if comm == "ferry-imapcheck" and int(rest.split()[1]) == ppid:
            return int(p)
    return None


def proc_state(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def checking_ferryd(sandbox, name, user, n, seed):
    """USER's folder of N messages on OLD, and a ferryd (not started) that
    verifies with both master logins, every body compared."""
    corpus.seed_old(sandbox, user, corpus.folder_spec("Bulk", n=n, seed=seed, gaps=3))
    secret = master_password_file(sandbox)
    return Ferryd(sandbox, name=name, old_master_user=MASTER_USER,
                  old_master_password_file=secret, new_master_user=MASTER_USER,
                  new_master_password_file=secret,
                  new_imap="127.0.0.1:%d" % sandbox.port("new"), verify_sample=1,
                  check_timeout=60)


def verified_then_stopped(fd, user, wave):
    """FD started, USER pulled and verified in WAVE, then an admin's verify
    stopped before its report (stopped_verification); -> the child's pid."""
    fd.start()
    fd.import_users([user], wave)
    fd.ctl("start", "--wave", wave)
    wait_until(lambda: fd.settled([user]), 60, "the pull and its verification")
    assert fd.users()[user]["state"] == "verified", fd.users()[user]
    return stopped_verification(fd, user)


def stopped_verification(fd, user):
    """An admin's verify of USER whose ferry-imapcheck child is
    stopped (SIGSTOP) before it wrote its report (a run that ended before
    it could be stopped is asked for again); -> the child's pid."""
    stopped = None
    for _ in range(20):
        code, body = fd.api("POST", "/v1/verify", {"user": user})
        assert code == 202, body
        # polled without a pause: the run may last a fraction of a second
        pid, end = None, time.monotonic() + 20
        while pid is None and time.monotonic() < end:
            pid = imapcheck_child(fd.pid)
            if pid is None and fd.api("GET", "/v1/check?user=%s&kind=verify" %
                                      user)[1].get("state") in ("done", "error"):
                break
        if pid is None:
            continue
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            continue
        wait_until(lambda: proc_state(pid) in ("T", "Z", None), 10, "the child to stop")
        if proc_state(pid) == "T":
            stopped = pid
            break
        wait_until(lambda: fd.api("GET", "/v1/check?user=%s&kind=verify" % user)[1]
                   .get("state") == "done", 20, "the run that ended to be written")
    assert stopped is not None, "every verification ended before it could be stopped"
    return stopped


def held_result_written(fd, user, timeout):
    """The verification result held for USER is written (store-resumed)
    within TIMEOUT s: the check passed and the user stays verified."""
    wait_until(lambda: any(e.get("event") == "store-resumed" and e.get("user") == user
                           and e.get("kind") == "verify" for e in fd.events()),
               timeout, "the held result to be written")
    code, chk = fd.api("GET", "/v1/check?user=%s&kind=verify" % user)
    assert code == 200 and chk["state"] == "done" and chk["result"] == "pass", chk
    assert fd.users()[user]["state"] == "verified"


def test_check_result_during_lock_is_kept(sandbox):
    fd = checking_ferryd(sandbox, "ferryd-check", CHECK_USER, n=300, seed=160)
    try:
        stopped = verified_then_stopped(fd, CHECK_USER, "wc")
        lk = locker(fd, HOLD_S)
        try:
            assert lk.stdout.readline().strip() == "locked"
            os.kill(stopped, signal.SIGCONT)

            def held():
                return any(e.get("event") == "store-busy" and e.get("held") == "check-result"
                           and e.get("user") == CHECK_USER for e in fd.events())
            wait_until(held, HOLD_S - 1, "the result to be held during the lock")
            assert lk.poll() is None, "the lock ended before the result came"
            assert lk.stdout.readline().strip() == "unlocked"
        finally:
            lk.wait(timeout=30)
        held_result_written(fd, CHECK_USER, 20)
        assert not [e for e in fd.events() if e.get("event") == "store-error"]
    finally:
        fd.stop()


def test_check_result_while_pgsql_refuses_is_kept(sandbox):
    """PostgreSQL ends ferryd's session and refuses its login (a failover,
    maintenance) while a verification's result is on its way: BEGIN fails
    with no lock to blame. The result is held (a store-error line, then
    tried again every 100 ms) and written once the database answers, not
    written statement by statement without a transaction (each failing
    alone: the result was lost, the check left running)."""
    fd = checking_ferryd(sandbox, "ferryd-check-down", DOWN_USER, n=100, seed=161)
    if fd.pg_db is None:
        pytest.skip("PostgreSQL only: SQLite's BEGIN is refused by a lock (the test above)")
    role, refused = fd.pg_db["role"], False
    try:
        stopped = verified_then_stopped(fd, DOWN_USER, "wd")
        fd.pg.psql("postgres", "ALTER ROLE %s NOLOGIN" % role)
        refused = True
        fd.pg.psql("postgres", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                   " WHERE usename = '%s'" % role)
        os.kill(stopped, signal.SIGCONT)
        wait_until(lambda: any(e.get("event") == "store-busy" and e.get("user") == DOWN_USER
                               and e.get("held") == "check-result" for e in fd.events()),
                   30, "the result to be held while PostgreSQL refuses ferryd")
        fd.pg.psql("postgres", "ALTER ROLE %s LOGIN" % role)
        refused = False
        held_result_written(fd, DOWN_USER, 30)
        errors = [e for e in fd.events() if e.get("event") == "store-error"
                  and e.get("user") == DOWN_USER]
        assert errors and errors[0]["error"].startswith(("begin: ", "connect: ")), errors
    finally:
        if refused:
            fd.pg.psql("postgres", "ALTER ROLE %s LOGIN" % role)
        fd.stop()


# users of the big wave per store: a transition costs PostgreSQL round trips
# (about 5 ms a user on the loaded machine), SQLite about 20 us of CPU
BIG_WAVE = {"sqlite": 8000, "pgsql": 1000}


def test_start_of_a_big_wave_does_not_block_the_api(sandbox):
    fd = Ferryd(sandbox, name="ferryd-bigstart")
    n = BIG_WAVE["pgsql" if fd.pg_db is not None else "sqlite"]
    try:
        fd.start()
        csv = os.path.join(sandbox.root, "big.csv")
        with open(csv, "w") as f:
            f.write("user,old_login,new_login,endpoint,wave\n")
            for i in range(n):
                f.write("b%05d,b%05d,b%05d,127.0.0.%d:143,big\n" % (i, i, i, 1 + i % 20))
        fd.ctl("import", csv)
        fd.ctl("pause")  # every pull: only the start itself is measured
        answer = []
        t = threading.Thread(target=lambda: answer.append(fd.api("POST", "/v1/start",
                                                                  {"wave": "big"})))
        t.start()
        lat = probe(fd, lambda: not t.is_alive())
        t.join()
        assert answer[0][0] == 200 and answer[0][1]["started"] == n, answer
        assert len(lat) >= 2, lat  # answers came during the start: something was measured
        assert all(code == 200 for _, code, _, _ in lat), lat
        # ferryd works through the start the whole time: on a loaded
        # machine its share of a core sets the wall time, so CPU time is the
        # measure (every answer), wall time only bounded; on PostgreSQL the
        # loop also waits for each statement's round trip (docs/ferryd.md,
        # "Blocking: what is bounded, what remains"), which a loaded machine
        # stretches (1.4 s seen at a load average of 14)
        check_latency(lat, "during the start of %d users" % n, median=False,
                      max_ms=MAX_MS if fd.pg_db is None else 5000)
        st = fd.api("GET", "/v1/status?wave=big&limit=1")[1]
        wait_until(lambda: fd.api("GET", "/v1/status?wave=big&limit=1")[1]
                   ["totals_pending"] == 0, 30, "the totals to read the start")
        st = fd.api("GET", "/v1/status?wave=big&limit=1")[1]
        assert st["states"]["presync"] == n, st["states"]
    finally:
        fd.stop()
