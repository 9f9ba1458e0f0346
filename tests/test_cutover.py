"""Phased cut-over (issue 6) end to end: a real OLD and NEW Dovecot, NEW's
passdb and userdb reading ferryd's state database (driver sql, SQLite), a
real Postfix (private instance, own config directory) whose transport_maps
read the same database, a real ferryd driving cut-over and rollback, and
ferryctl. Where a login or a message went is checked on the servers
themselves: the hierarchy separator a client sees ('.' = OLD, proxied;
'/' = NEW), Postfix's log (relay=) and the mailboxes over IMAP."""
import os
import tempfile
import time

import pytest

from ferrytest import corpus, postfix
from ferrytest.ferryd import Ferryd
from ferrytest.imapwire import check, format_date
from ferrytest.routing import (DOMAIN, message, message_ids, on_disk, relays, send, separator,
                               sql_conf, state_db, transport_cf, userdb_phase)
from ferrytest.sandbox import Sandbox, _free_ports, wait_until
from ferrytest.snapshot import compare, snapshot, take

WHY_NO_POSTFIX = postfix.available()
pytestmark = pytest.mark.skipif(WHY_NO_POSTFIX is not None, reason=str(WHY_NO_POSTFIX))

PILOT = "alice"
WAVE_A = ["a%03d" % i for i in range(1, 51)]
WAVE_B = ["b%03d" % i for i in range(1, 51)]
USERS = [PILOT] + WAVE_A + WAVE_B
ARRIVED_ON_NEW = 20


@pytest.fixture(scope="module")
def env(request):
    root = tempfile.mkdtemp(prefix="ferry-cutover-")
    os.chmod(root, 0o755)
    p = _free_ports(6)
    ports = {"old": {"imap": p[0], "pop3": p[1], "lmtp": p[2]},
             "new": {"imap": p[3], "pop3": p[4], "lmtp": p[5]}}
    _, db = state_db(root)
    user_fmt = "auth_username_format = %Ln\n"  # LMTP RCPT user@domain -> user
    sb = Sandbox(root=root, users=USERS, ports=ports, doveadm_http=True,
                 new_sql_conf=sql_conf(root, db), old_extra=user_fmt, new_extra=user_fmt)
    fd = pf = None
    failed_before = request.session.testsfailed
    try:
        sb.start()
        fd = Ferryd(sb, max_concurrent=8, max_per_host=8)
        assert fd.db_path == db
        fd.start()
        pf = postfix.Postfix(root, DOMAIN, transport_cf(root, db)).start()
        yield sb, fd, pf
    finally:
        if pf is not None:
            pf.stop()
        if fd is not None and fd.alive():
            fd.stop()
        sb.stop()
        sb.finish(request.session, failed_before, root=root)


def import_users(sb, fd):
    fd.import_users(USERS, lambda u: "pilot" if u == PILOT else ("teamA" if u in WAVE_A else "teamB"))
    fd.ctl("route", "config", "--new-transport", "lmtp:inet:127.0.0.1:%d" % sb.port("new", "lmtp"),
           "--endpoint", "127.0.0.1:%d" % sb.port("old"), "--pop3-port", str(sb.port("old", "pop3")),
           "--transport", "lmtp:inet:127.0.0.1:%d" % sb.port("old", "lmtp"))


def all_done(fd, users):
    st = fd.users()
    bad = [u for u in users if st[u]["state"] == "failed"]
    assert not bad, [(u, st[u]["error"]) for u in bad]
    return all(st[u]["state"] == "done" and not st[u]["running"] for u in users)


# ---- the tests ----------------------------------------------------------------

def test_before_cutover_login_proxied_and_mail_to_old(env):
    sb, fd, pf = env
    t0 = time.monotonic()
    spec = corpus.small_spec(seed=6, big=200000)
    corpus.seed_old(sb, PILOT, spec)
    for u in WAVE_A + WAVE_B:  # one message each: where did it go, later
        conn = sb.imap("old", u)
        check(conn.append("INBOX", None, None, message("seed-" + u).encode()), "APPEND")
        conn.logout()
    import_users(sb, fd)
    # nothing started yet: everyone is still routed to OLD
    assert separator(sb, PILOT) == "."
    conn = sb.imap("new", PILOT)  # the user's own password, checked by OLD
    try:
        proxied = take(conn)
    finally:
        conn.logout()
    assert compare(snapshot(sb, "old", PILOT), proxied) == []
    assert userdb_phase(sb, PILOT) == "presync"
    # POP3 is proxied to OLD's POP3 port too
    import poplib
    p = poplib.POP3("127.0.0.1", sb.port("new", "pop3"), timeout=30)
    try:
        p.user(PILOT)
        p.pass_(PILOT + "-pw")
        assert p.stat()[0] == len(spec.folder("INBOX").kept())
    finally:
        p.quit()
    # a message through Postfix lands on OLD
    qid = send(pf, PILOT, "pre-cutover")
    assert relays(pf, [qid], sb) == {qid: "old"}
    assert on_disk(sb, "old", PILOT, "pre-cutover")
    assert not on_disk(sb, "new", PILOT, "pre-cutover")
    print("\nproxied login + Postfix to OLD: %.1fs" % (time.monotonic() - t0))


def test_cutover_refused_then_served_by_new(env):
    sb, fd, pf = env
    # never copied: the prechecks refuse, and nothing changes
    r = fd.ctl("cutover", "--wave", "pilot", check=False)
    assert r.returncode == 1 and "refused" in r.stderr and "alice: not started" in r.stderr, r.stderr
    assert separator(sb, PILOT) == "."
    fd.ctl("start")
    wait_until(lambda: all_done(fd, USERS), 120, "first copy pass of every user")
    # a last mail to OLD after the copy pass: the cut-over's final presync
    # pass brings it with its UID
    qid = send(pf, PILOT, "after-pass")
    assert relays(pf, [qid], sb) == {qid: "old"}
    old_before = snapshot(sb, "old", PILOT)
    t0 = time.monotonic()
    r = fd.ctl("cutover", "--wave", "pilot", "--settle", "1")
    took = time.monotonic() - t0
    assert "cut-over of wave pilot done: 1 users" in r.stdout, r.stdout
    print("\ncutover of the pilot wave: %.2fs" % took)
    # the same login is now served by NEW, with every message and UID
    assert separator(sb, PILOT) == "/"
    assert userdb_phase(sb, PILOT) == "cutover"
    assert compare(old_before, snapshot(sb, "new", PILOT)) == []
    # a new message lands on NEW
    qid = send(pf, PILOT, "post-cutover")
    assert relays(pf, [qid], sb) == {qid: "new"}
    assert on_disk(sb, "new", PILOT, "post-cutover")
    assert not on_disk(sb, "old", PILOT, "post-cutover")
    events = [e["event"] for e in fd.log(user=PILOT)]
    assert "cutover-refused" in events and "final-sync" in events and "cutover" in events
    route = fd.api("GET", "/v1/route?user=alice")[1]["routes"][0]
    assert route["route"] == "new" and route["changed_at"] > 0


def test_rollback_appends_what_arrived_on_new(env):
    sb, fd, pf = env
    # 20 messages arrived on NEW since the cut-over: 1 (previous test) + 14
    # through Postfix + 5 appended by the user into a folder made on NEW
    qids = [send(pf, PILOT, "new-%02d" % i) for i in range(14)]
    assert set(relays(pf, qids, sb).values()) == {"new"}
    conn = sb.imap("new", PILOT)
    appended = {}
    try:
        check(conn.create("Launch2026"), "CREATE")
        for i in range(5):
            when = 1700000000 + i * 3600
            tag = "proj-%d" % i
            check(conn.append("Launch2026", r"(\Flagged $Work)", format_date(when, 0),
                              message(tag).encode()), "APPEND")
            appended[tag] = when
    finally:
        conn.logout()
    on_new = {"post-cutover"} | {"new-%02d" % i for i in range(14)} | set(appended)
    assert len(on_new) == ARRIVED_ON_NEW
    t0 = time.monotonic()
    r = fd.ctl("rollback", "--wave", "pilot", "--settle", "1")
    took = time.monotonic() - t0
    assert "rollback of wave pilot done: 1 users" in r.stdout, r.stdout
    print("\nrollback of the pilot wave (%d messages back): %.2fs" % (ARRIVED_ON_NEW, took))
    # all 20 are on OLD now, flags and dates kept
    old_inbox = message_ids(sb, "old", PILOT)
    old_projects = message_ids(sb, "old", PILOT, "Launch2026")
    missing = on_new - (old_inbox | old_projects)
    assert not missing, missing
    snap = snapshot(sb, "old", PILOT)
    projects = snap.folders["Launch2026"].messages.values()
    assert sorted(m.internaldate for m in projects) == sorted(appended.values())
    assert all({"\\Flagged", "$Work"} <= set(m.flags) for m in projects)
    # no duplicates on OLD: each Message-ID once
    assert len(snap.folders["INBOX"].messages) == len(old_inbox)
    # proxied again, and mail goes to OLD again
    assert separator(sb, PILOT) == "."
    assert userdb_phase(sb, PILOT) == "presync"
    qid = send(pf, PILOT, "after-rollback")
    assert relays(pf, [qid], sb) == {qid: "old"}
    log = fd.log(user=PILOT)
    done = [e for e in log if e["event"] == "rollback-done"]
    assert done and done[-1]["copied"] == ARRIVED_ON_NEW, done


def test_hundred_users_two_waves_route_right(env):
    sb, fd, pf = env
    t0 = time.monotonic()
    r = fd.ctl("cutover", "--wave", "teamA", "--settle", "1", timeout=180)
    cut = time.monotonic() - t0
    assert "cut-over of wave teamA done: 50 users" in r.stdout, r.stdout
    wait_until(lambda: all_done(fd, WAVE_A), 120, "teamA's delta pulls")
    expect = {u: ("new" if u in WAVE_A else "old") for u in WAVE_A + WAVE_B}
    # every login
    t1 = time.monotonic()
    seen = {u: ("new" if separator(sb, u) == "/" else "old") for u in expect}
    assert seen == expect
    phases = {u: userdb_phase(sb, u) for u in expect}
    assert phases == {u: ("cutover" if w == "new" else "presync") for u, w in expect.items()}
    logins = time.monotonic() - t1
    # every delivery
    t2 = time.monotonic()
    qids = {send(pf, u, "route-" + u): u for u in expect}
    went = relays(pf, list(qids), sb)
    assert {qids[q]: w for q, w in went.items()} == expect
    for u, where in expect.items():
        other = "old" if where == "new" else "new"
        assert on_disk(sb, where, u, "route-" + u), u
        assert not on_disk(sb, other, u, "route-" + u), u
        if where == "new":  # cut over: the seeded message came along
            assert on_disk(sb, "new", u, "seed-" + u), u
    mails = time.monotonic() - t2
    print("\n100 users: cutover of 50 %.2fs, 200 logins+phases %.2fs, 100 deliveries %.2fs"
          % (cut, logins, mails))


def test_scheduled_cutover_runs_when_due(env):
    sb, fd, pf = env
    r = fd.ctl("cutover", "--wave", "teamB", "--at", "+2s", "--settle", "0")
    assert "scheduled" in r.stdout, r.stdout
    code, rec = fd.api("GET", "/v1/cutover?wave=teamB")
    assert code == 200 and rec["state"] in ("scheduled", "running", "done"), rec
    t0 = time.monotonic()
    wait_until(lambda: fd.api("GET", "/v1/cutover?wave=teamB")[1]["state"] in ("done", "failed"),
               90, "the scheduled cut-over of teamB")
    rec = fd.api("GET", "/v1/cutover?wave=teamB")[1]
    assert rec["state"] == "done" and rec["users"] == len(WAVE_B), rec
    routes = fd.api("GET", "/v1/route?wave=teamB")[1]["routes"]
    assert {r["route"] for r in routes} == {"new"}
    assert separator(sb, WAVE_B[0]) == "/"
    events = [e["event"] for e in fd.log(user=WAVE_B[0])]
    assert events.index("cutover-scheduled") < events.index("cutover")
    print("\nscheduled cut-over of 50 users done %.2fs after it was due" %
          (time.monotonic() - t0))
