"""Two ferryd on one PostgreSQL (issue 16; docs/ferryd.md, "Several ferryd
on one PostgreSQL"), one of them killed -9 mid-run.

Two tests, and which is which:

- test_two_ferryd_real_dovecot: REAL pulls. A few dozen users on the
  sandbox's real OLD and NEW Dovecot, two real ferryd driving NEW's doveadm
  HTTP API. Exactly once and "per-old-host limit never exceeded" are counted
  from OLD's log (ferry's master sessions open at once, all of them and per
  user) and from what NEW holds (every folder equal to OLD's, no duplicate);
  a user done once in the shared migration log.
- test_two_ferryd_2000_users_fake_doveadm: SCHEDULING at scale. 2,000
  users against ferrytest/fakepull.py, a fake-fast doveadm endpoint that
  stands in for NEW and records each user's ferryPull requests (the copy),
  the requests of one user in flight at once and those per old host (the
  old hosts are never contacted: a real OLD is the test above). No mail is
  moved; what is checked is ferryd's claims, leases and shared slots.

- test_a_stalled_ferryd_writes_nothing_twice: A stopped (SIGSTOP, a stall
  or a paused VM) past its lease with pulls in flight, B takes them over
  and finishes them, then A goes on: its late results must not be written.

In the first two, ferryd A is killed -9 while it holds claims; B (the survivor)
must take them over after their lease ran out and within the lease time of
the kill (pgsql_lease here: LEASE s; the scan is once a second), pull every
user exactly once, never two pulls of one user at once, and never more than
max_per_host jobs on one old host across both processes (each process alone
would allow max_per_host, both together twice that)."""
import http.client
import json
import os
import signal
import socket
import threading
import time

import pytest

from ferrytest import corpus, pgsql
from ferrytest.fakepull import FakePull
from ferrytest.ferryd import TOKEN, Ferryd
from ferrytest.logs import peak_sessions
from ferrytest.sandbox import MASTER_USER, wait_until
from ferrytest.snapshot import compare, duplicates, snapshot

pytestmark = pytest.mark.skipif(pgsql.available() is not None, reason=str(pgsql.available()))
DOVECOT_ONCE = ("ferryd's claims, leases and shared slots are the store's: the same whatever"
                " the Dovecot (the real pulls of the first test use the 2.3 pair)")
FERRY_STORES = ("pgsql",)
LEASE = 6
REAL_USERS = ["r%02d" % i for i in range(1, 25)]
REAL_PER_HOST = 2
SANDBOX_KWARGS = {"users": REAL_USERS, "batch_size": 20, "doveadm_http": True}
N_FAKE = 2000
FAKE_HOSTS = 8
FAKE_PER_HOST = 3


def pair(sandbox, name, b_settings=None, **settings):
    """Ferryd A and B on A's database, each with its node_name (B's own
    settings over the common ones: B_SETTINGS)."""
    common = dict(pgsql_lease=LEASE, verify_after_pull="no", tick_ms=200, retry_limit=3,
                  **settings)
    a = Ferryd(sandbox, name=name + "-a", node_name=name + "-a", **common)
    b = Ferryd(sandbox, name=name + "-b", node_name=name + "-b",
               pgsql_conninfo=a.pg_db["conninfo"],
               pgsql_password_file=a.pg_db["password_file"],
               **dict(common, **(b_settings or {})))
    b.pg_db = a.pg_db
    return a, b


def sql(fd, query):
    return [line.split("|") for line in fd.pg.psql(fd.pg_db["name"], query).splitlines()
            if line]


def states(fd):
    return dict(sql(fd, "SELECT name, state || ':' || running FROM users"))


def log_events(fd, event):
    """(user, time) of every EVENT in the shared migration log."""
    return [(u, int(t)) for u, t in sql(fd, "SELECT \"user\", time FROM log WHERE event = '%s'"
                                        " ORDER BY id" % event)]


def kill_holding(a, node, want):
    """Kills A -9 once it holds at least WANT claims; -> (kill time, its
    claims at the kill: {user: lease_until})."""
    wait_until(lambda: len(sql(a, "SELECT name FROM users WHERE running = 1 AND"
                               " claimed_by = '%s'" % node)) >= want, 120,
               "ferryd %s to hold %d claims" % (node, want))
    a.kill()
    t_kill = time.time()
    held = {u: int(l) for u, l in sql(a, "SELECT name, lease_until FROM users WHERE"
                                     " running = 1 AND claimed_by = '%s'" % node)}
    return t_kill, held


def check_takeover(fd, t_kill, held, survivor_log):
    """Every claim the dead one held was taken over, not before its lease
    ran out, within LEASE s of the kill (+ the once-a-second scan and the
    log's one-second resolution)."""
    taken = {}
    for u, t in log_events(fd, "pull-taken-over"):
        taken.setdefault(u, t)
    assert held and set(held) <= set(taken), (sorted(held), sorted(taken))
    late = {u: taken[u] - t_kill for u in held}
    print("takeover of %d claims: %.1f..%.1f s after the kill (lease %d s)"
          % (len(held), min(late.values()), max(late.values()), LEASE))
    for u in held:
        assert taken[u] > held[u] - 1, (u, "taken over before its lease ended")
        assert taken[u] - t_kill <= LEASE + 2, (u, taken[u] - t_kill)
    ev = [e for e in survivor_log if e.get("event") == "taken-over"]
    assert {e["user"] for e in ev} >= set(held)


def test_two_ferryd_real_dovecot(sandbox, old_log):
    for i, user in enumerate(REAL_USERS):
        corpus.seed_old(sandbox, user, corpus.folder_spec("Bulk", n=60, seed=300 + i))
    a, b = pair(sandbox, "real", max_concurrent=REAL_PER_HOST, max_per_host=REAL_PER_HOST)
    try:
        a.start()
        b.start()
        a.import_users(REAL_USERS, wave="real")
        old_log.mark()
        a.ctl("start", "--wave", "real")
        t_kill, held = kill_holding(a, "real-a", 1)
        wait_until(lambda: all(s == "done:0" for s in states(b).values()), 180,
                   "every user done after the kill")
        check_takeover(b, t_kill, held, b.events())
    finally:
        for fd in (a, b):
            if fd.alive():
                fd.stop()
    done = [u for u, _ in log_events(b, "user-done")]
    assert sorted(done) == sorted(REAL_USERS), "a user done more or less than once"
    # both pulled (cooperation, not one refusing the other)
    starts = {fd.dir: {e["user"] for e in fd.events() if e.get("event") == "pull-start"}
              for fd in (a, b)}
    assert all(starts.values()), starts
    # OLD's log: ferry's sessions (the master login) never more than the
    # per-host limit at once across both ferryd, and never two of one user
    text = old_log.text()
    peak, detail = peak_sessions(text, MASTER_USER)
    print("\nOLD: max concurrent ferry sessions %d (limit %d, each ferryd alone: %d)"
          % (peak, REAL_PER_HOST, REAL_PER_HOST))
    assert peak <= REAL_PER_HOST, "\n".join(detail)
    for user in REAL_USERS:
        lines = "\n".join(l for l in text.splitlines() if "(%s)" % user in l or
                          "user=<%s>" % user in l)
        upeak, udetail = peak_sessions(lines, MASTER_USER)
        assert upeak <= 1, (user, "\n".join(udetail))
    for user in REAL_USERS:
        old = snapshot(sandbox, "old", user)
        new = snapshot(sandbox, "new", user)
        assert compare(old, new) == [] and duplicates(new, old) == {}, user


def start_wave(fd, wave):
    """POST /v1/start directly: 2,000 transitions may outlast ferryctl's 60 s
    answer timeout (and evhttp's 30 s connection timeout) on a loaded
    machine; the start itself is then done, waited for below."""
    conn = http.client.HTTPConnection("127.0.0.1", fd.port, timeout=600)
    try:
        conn.request("POST", "/v1/start", body=json.dumps({"wave": wave}),
                     headers={"Authorization": "Bearer " + TOKEN,
                              "Content-Type": "application/json"})
        assert conn.getresponse().status == 200
    except (ConnectionError, socket.timeout):
        pass
    finally:
        conn.close()
    wait_until(lambda: sql(fd, "SELECT count(*) FROM users WHERE state = 'pending'") == [["0"]],
               600, "every user started")


def catch(errors, fn, *args):
    try:
        fn(*args)
    except Exception as e:  # re-raised by the test's thread
        errors.append(e)


def _users_done(a, b):
    """({user: user-done rows in the migration log}, users A logged done,
    users B logged done)"""
    done = {}
    for u, _ in log_events(b, "user-done"):
        done[u] = done.get(u, 0) + 1
    by = [{e["user"] for e in fd.events() if e.get("event") == "user-done"} for fd in (a, b)]
    return done, by[0], by[1]


def fake_pair(sandbox, name, users, delay):
    """A recording fake doveadm for USERS on FAKE_HOSTS old hosts, ferryd A
    and B started on it, the users imported through A into wave NAME."""
    host_of = {u: "127.0.1.%d" % (1 + i % FAKE_HOSTS) for i, u in enumerate(users)}
    fake = FakePull(lambda u: host_of.get(u, "?"), delay=delay).start()
    # B, which starts the wave, may hold half the old hosts' slots: a ferryd
    # refills a slot at once when its job ends, another only at its tick, so
    # with every slot allowed B kept them all and A was never seen holding 3
    # claims (CI; docs/ferryd.md "Sharing the old hosts")
    a, b = pair(sandbox, name, doveadm="127.0.0.1:%d" % fake.port,
                max_concurrent=FAKE_HOSTS * FAKE_PER_HOST, max_per_host=FAKE_PER_HOST,
                b_settings=dict(max_concurrent=FAKE_HOSTS * FAKE_PER_HOST // 2))
    path = os.path.join(sandbox.root, name + ".csv")
    with open(path, "w") as f:
        f.write("user,old_login,new_login,endpoint,wave\n")
        for u in users:
            f.write("%s,%s,%s,%s:143,%s\n" % (u, u, u, host_of[u], name))
    try:
        a.start()
        b.start()
        a.ctl("import", path, timeout=300)
    except BaseException:
        for fd in (a, b):
            if fd.alive():
                fd.stop()
        fake.stop()
        raise
    return fake, a, b


def test_two_ferryd_2000_users_fake_doveadm(sandbox):
    users = ["f%04d" % i for i in range(N_FAKE)]
    fake, a, b = fake_pair(sandbox, "fake", users, delay=0.01)
    try:
        t0 = time.time()
        # B, the survivor, carries out the start while the pulls run (A
        # answered it only once the wave was nearly done under the
        # sanitizers, too late to be killed holding claims)
        errors = []
        starter = threading.Thread(target=lambda: catch(errors, start_wave, b, "fake"))
        starter.start()
        # generous deadlines (conditions, not sleeps): the machine may be loaded
        wait_until(lambda: len(log_events(a, "user-done")) >= N_FAKE // 4, 300,
                   "a quarter of the users done")
        t_kill, held = kill_holding(a, "fake-a", FAKE_PER_HOST)
        starter.join(700)
        assert not starter.is_alive() and not errors, errors
        try:
            wait_until(lambda: all(s == "done:0" for s in states(b).values()), 400,
                       "every user done after the kill")
        except TimeoutError:
            print(sql(b, "SELECT state, running, claimed_by, paused, next_attempt > 0,"
                      " count(*), min(name) FROM users GROUP BY 1, 2, 3, 4, 5"))
            print(sql(b, "SELECT * FROM host_slots WHERE holder <> ''"))
            raise
        elapsed = time.time() - t0
        check_takeover(b, t_kill, held, b.events())
    finally:
        for fd in (a, b):
            if fd.alive():
                fd.stop()
        fake.stop()
    done, by_a, by_b = _users_done(a, b)
    print("\n%d users in %.1f s: done by A %d (killed), by B %d; %d doveadm requests;"
          " peak per host %s (limit %d); most requests of one user at once %d"
          % (N_FAKE, elapsed, len(by_a), len(by_b), fake.requests, fake.host_peak,
             FAKE_PER_HOST, fake.user_peak))
    assert by_a and by_b and not by_a & by_b
    assert sorted(done) == users and set(done.values()) == {1}, \
        [u for u in users if done.get(u) != 1][:20]
    # the copy (ferryPull) exactly once per user, never two requests of one
    # user at once (one by A, one by B)
    assert sorted(fake.pulls) == users and set(fake.pulls.values()) == {1}, \
        [u for u in users if fake.pulls.get(u) != 1][:20]
    assert fake.user_peak == 1, fake.overlaps[:10]
    # the per-old-host limit across both processes: reached, never exceeded
    assert max(fake.host_peak.values()) == FAKE_PER_HOST, fake.host_peak
    assert set(fake.host_peak) == {"127.0.1.%d" % (1 + i) for i in range(FAKE_HOSTS)}
    # nothing left held
    assert sql(b, "SELECT count(*) FROM users WHERE running = 1") == [["0"]]
    # the survivor released every slot of its own; a slot of the killed one
    # keeps its name in the row but is free once its lease is over (taken
    # again by whoever needs that host next; CI under the sanitizers saw 2
    # such rows of hosts nobody needed after the lease ran out)
    assert sql(b, "SELECT count(*) FROM host_slots WHERE holder = 'fake-b'") == [["0"]]
    assert sql(b, "SELECT count(*) FROM host_slots WHERE holder <> '' AND lease_until > %d"
               % int(time.time())) == [["0"]]


def test_a_stalled_ferryd_writes_nothing_twice(sandbox):
    """A stalls past its lease while its pulls are in flight (SIGSTOP): B
    takes the claims over and finishes those users; A, continued, gets its
    answers late and finds its claims gone (claim-lost): nothing written,
    every user done once in the migration log. (A late job's pass was
    written again when the taker had finished the user already.)"""
    users = ["s%03d" % i for i in range(200)]
    fake, a, b = fake_pair(sandbox, "stall", users, delay=0.2)
    held = []
    try:
        start_wave(b, "stall")
        claims = "SELECT name FROM users WHERE running = 1 AND claimed_by = 'stall-a'"
        wait_until(lambda: len(sql(a, claims)) >= 3, 120, "ferryd A to hold 3 claims")
        os.kill(a.pid, signal.SIGSTOP)
        try:
            held = [r[0] for r in sql(b, claims)]
            # B takes them over once the lease ran out and pulls them to the end
            wait_until(lambda: all(states(b)[u] == "done:0" for u in held), 120,
                       "B to finish the users A held")
        finally:
            os.kill(a.pid, signal.SIGCONT)
        wait_until(lambda: all(s == "done:0" for s in states(b).values()), 300,
                   "every user done")
        # A reads its late answers: each held user's job ends (claim-lost)
        wait_until(lambda: {e["user"] for e in a.events()
                            if e.get("event") in ("claim-lost", "user-done")} >= set(held),
                   60, "A to end the jobs it held")
    finally:
        for fd in (a, b):
            if fd.alive():
                fd.stop()
        fake.stop()
    assert held
    done, by_a, by_b = _users_done(a, b)
    assert sorted(done) == users and set(done.values()) == {1}, \
        [(u, done.get(u)) for u in users if done.get(u) != 1][:20]
    assert not by_a & by_b and not by_a & set(held), sorted(by_a & (by_b | set(held)))[:20]
    assert {u for u, _ in log_events(b, "pull-taken-over")} >= set(held)
    assert {e["user"] for e in a.events() if e.get("event") == "claim-lost"} >= set(held)


def test_an_answer_the_store_cannot_begin_restarts_the_pass(sandbox):
    """PostgreSQL does not answer when a doveadm answer arrives (ferryd's
    session ended and its role refused at login: a failover, maintenance):
    BEGIN fails with no lock to blame. The answer's writes are not made
    one by one outside a transaction (each reconnecting alone, a failure
    half-way leaving the store behind the job); the pass restarts, and once
    the database answers again the user ends done once. (BEGIN's failure
    used to be taken for "inside a transaction already": the writes went
    ahead without one.)"""
    gate = threading.Event()
    fake = FakePull(lambda u: "127.0.1.1", delay=0.05, gate=gate).start()
    fd = Ferryd(sandbox, name="nb", node_name="nb", verify_after_pull="no",
                doveadm="127.0.0.1:%d" % fake.port)
    role = fd.pg_db["role"]
    refused = False
    try:
        fd.start()
        fd.import_users(["nb1"], wave="nb")
        fd.ctl("start", "--wave", "nb")
        wait_until(lambda: fake.waiting == 1, 60, "nb1's pull answer to be on its way")
        fd.pg.psql("postgres", "ALTER ROLE %s NOLOGIN" % role)
        refused = True
        fd.pg.psql("postgres", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                   " WHERE usename = '%s'" % role)
        gate.set()
        wait_until(lambda: [e for e in fd.events() if e.get("event") == "pass-restart"],
                   60, "the pass to restart on the answer BEGIN could not take")
        fd.pg.psql("postgres", "ALTER ROLE %s LOGIN" % role)
        refused = False
        wait_until(lambda: states(fd)["nb1"] == "done:0", 60, "nb1 done once PostgreSQL answers")
    finally:
        gate.set()
        if refused:
            fd.pg.psql("postgres", "ALTER ROLE %s LOGIN" % role)
        if fd.alive():
            fd.stop()
        fake.stop()
    restarts = [e for e in fd.events() if e.get("event") == "pass-restart"]
    # BEGIN on the ended session, or its reconnection refused (a tick's read
    # may have met the ended session first)
    assert restarts[0]["user"] == "nb1", restarts[0]
    assert restarts[0]["error"].startswith(("begin: ", "connect: ")), restarts[0]
    assert [u for u, _ in log_events(fd, "user-done")] == ["nb1"]
    assert fake.pulls == {"nb1": 1}


def test_a_rolled_back_answer_restarts_the_pass(sandbox):
    """The answer whose writes PostgreSQL rolled back at COMMIT (a row
    locked by another session past lock_timeout: here the user's row, held
    FOR NO KEY UPDATE by a psql session while the pass ends) restarts the
    pass; the user ends done once. (The job used to end anyway: its user
    stayed claimed by this ferryd, with no job, never picked again.)"""
    fake = FakePull(lambda u: "127.0.1.1", delay=0.2).start()
    fd = Ferryd(sandbox, name="rb", node_name="rb", verify_after_pull="no",
                doveadm="127.0.0.1:%d" % fake.port)
    locker = None
    try:
        fd.start()
        fd.import_users(["rb1"], wave="rb")
        fd.ctl("start", "--wave", "rb")
        wait_until(lambda: sql(fd, "SELECT running FROM users WHERE name = 'rb1'") == [["1"]],
                   60, "rb1 claimed")
        # the session holding the row: the FK checks of the pass's folder and
        # log writes (KEY SHARE) go through, the user's own transition waits
        locker = fd.pg.session(fd.pg_db["name"])
        locker.run("BEGIN; SELECT 1 FROM users WHERE name = 'rb1' FOR NO KEY UPDATE;")
        wait_until(lambda: [e for e in fd.events() if e.get("user") == "rb1" and
                            e.get("event") in ("store-error", "pass-restart")],
                   60, "rb1's transition to fail on the locked row")
        locker.run("COMMIT;")
        locker.close()
        wait_until(lambda: states(fd)["rb1"] == "done:0", 60, "rb1 done after the lock")
    finally:
        if locker is not None:
            locker.close()
        if fd.alive():
            fd.stop()
        fake.stop()
    restarts = [e for e in fd.events() if e.get("event") == "pass-restart"]
    assert restarts and restarts[0]["user"] == "rb1" and "lock timeout" in restarts[0]["error"]
    assert log_events(fd, "user-done") and [u for u, _ in log_events(fd, "user-done")] == ["rb1"]
    assert sql(fd, "SELECT claimed_by FROM users WHERE name = 'rb1'") in ([[""]], [])
