"""First login of a never-migrated user (issue 19): STATUS of a folder that
is not complete is answered from OLD's STATUS for the items equal by
construction, and what it shows never changes when the folder completes;
any other item completes the folder first. Checked with an independent
client (imaplib) against both servers."""
import os
import re

import pytest

from ferrytest import corpus
from ferrytest.ferryd import TOKEN, Ferryd
from ferrytest.imapwire import check, quote
from ferrytest.logs import peak_sessions
from ferrytest.sandbox import MASTER_USER, _free_ports, proc_stat, wait_until
from ferrytest.snapshot import _list, compare, duplicates, snapshot

# the whole module on each store backend (conftest.py)
FERRY_STORES = ("sqlite", "pgsql")
SANDBOX_KWARGS = {"users": ("sweep", "modseq", "idler", "loginner", "downer", "worker"),
                  # several batches per folder: the background goes batch by batch
                  "batch_size": 20,
                  "doveadm_http": True}
FERRYD = {}


def _notify(port):
    return ("userdb_ferry_ferryd_url=http://127.0.0.1:%d/ userdb_ferry_ferryd_token=%s"
            % (port, TOKEN))


def sandbox_prepare(sb):
    fd = FERRYD["fd"] = Ferryd(sb, tick_ms=100)
    down = _free_ports(1)[0]  # nothing listens there: ferryd is down
    sb.new_userdb_extra = {
        # these two look at folders before and after their copy: no
        # background completion in between
        "sweep": "userdb_ferry_background_idle_msecs=0",
        "modseq": "userdb_ferry_background_idle_msecs=0",
        "idler": _notify(down),
        # ferryd alone completes this one (the session's background is off)
        "loginner": _notify(fd.port) + " userdb_ferry_background_idle_msecs=0",
        # two background workers whatever the machine's CPUs
        "worker": "userdb_ferry_parallel=2"}


@pytest.fixture(scope="module")
def ferryd(sandbox):
    fd = FERRYD["fd"]
    fd.start()
    yield fd
    if fd.alive():
        fd.stop()

ITEMS = "(MESSAGES UIDNEXT UIDVALIDITY UNSEEN RECENT)"


def _status(conn, wire, items=ITEMS):
    data = check(conn.status(quote(wire), items), "STATUS")
    text = data[0].decode()
    return {k: int(v) for k, v in re.findall(r"([A-Z-]+) (\d+)", text.split("(", 1)[1])}


def _sweep(conn):
    """What a desktop client does at login: LIST, then STATUS of every folder."""
    return {wire: _status(conn, wire) for wire, _, selectable in _list(conn, "LIST")
            if selectable}


def _folder_states(sandbox, user):
    out = sandbox.doveadm("new", "-f", "tab", "ferry", "status", "-u", user).stdout
    rows = [l.split("\t") for l in out.splitlines()[1:] if l]
    return {r[0]: r[1] for r in rows}


def test_status_sweep_then_select_counts_never_change(sandbox):
    spec = corpus.small_spec(seed=19)
    corpus.seed_old(sandbox, "sweep", spec)
    old = sandbox.imap("old", "sweep")
    want = _sweep(old)
    old.logout()
    for st in want.values():  # NEW shows RECENT 0 once copied (the copy claims it)
        st["RECENT"] = 0

    conn = sandbox.imap("new", "sweep")
    first = _sweep(conn)
    assert first == {w.replace(".", "/"): v for w, v in want.items()}
    # answered without copying: no folder is complete yet
    states = _folder_states(sandbox, "sweep")
    assert "complete" not in states.values(), states

    typ, data = conn.select("INBOX")
    assert typ == "OK", data
    assert int(data[0]) == first["INBOX"]["MESSAGES"]
    assert int(conn.untagged_responses["UIDNEXT"][0]) == first["INBOX"]["UIDNEXT"]
    assert int(conn.untagged_responses["UIDVALIDITY"][0]) == first["INBOX"]["UIDVALIDITY"]
    unseen = check(conn.uid("SEARCH", "UNSEEN"))[0].split()
    assert len(unseen) == first["INBOX"]["UNSEEN"]
    assert _states_of(sandbox, "sweep")["INBOX"] == "complete"
    # the same sweep after INBOX completed, and after every folder did
    assert _sweep(conn) == first
    # a later pass (stragglers mode after cut-over) copies a folder never
    # completed with its old UIDs: what STATUS showed stays true
    sandbox.doveadm("new", "ferry", "sync", "-u", "sweep")
    assert set(_folder_states(sandbox, "sweep").values()) <= {"complete", "local"}
    assert _sweep(conn) == first
    conn.logout()
    conn = sandbox.imap("new", "sweep")
    assert _sweep(conn) == first
    conn.logout()


def _states_of(sandbox, user):
    return _folder_states(sandbox, user)


def test_idle_session_completes_the_rest_with_ferryd_down(sandbox, new_log):
    """ferryd configured but down: the login's request fails (logged), and
    the imap process completes every folder while its client is idle; the
    user is done (later sessions never contact OLD)."""
    spec = corpus.small_spec(seed=21)
    corpus.seed_old(sandbox, "idler", spec)
    old = snapshot(sandbox, "old", "idler")
    conn = sandbox.imap("new", "idler")
    first = _sweep(conn)
    check(conn.select("INBOX"), "SELECT")
    # the client stays logged in and says nothing
    wait_until(lambda: set(_folder_states(sandbox, "idler").values()) <= {"complete", "local"},
               120, "every folder complete while the client is idle")
    wait_until(lambda: "event=user-done" in new_log.text(), 30, "user done")
    assert "event=background folders=" in new_log.text()
    assert re.search(r"idler.*event=ferryd-unreachable", new_log.text())
    assert TOKEN not in new_log.text()
    # still the same numbers, and the session is still usable
    assert _sweep(conn) == first
    conn.logout()
    new = snapshot(sandbox, "new", "idler")
    assert compare(old, new) == []
    assert duplicates(new, old) == {}


def test_status_with_highestmodseq_completes_first(sandbox):
    spec = corpus.folder_spec("Mods", n=40, seed=20)
    corpus.seed_old(sandbox, "modseq", spec)
    conn = sandbox.imap("new", "modseq")
    _list(conn, "LIST")
    # equal by construction: answered from OLD, nothing copied
    assert _status(conn, "Mods", "(MESSAGES UIDNEXT)")["MESSAGES"] == 40
    assert _folder_states(sandbox, "modseq")["Mods"] != "complete"
    st = _status(conn, "Mods", "(MESSAGES HIGHESTMODSEQ)")
    assert _folder_states(sandbox, "modseq")["Mods"] == "complete"
    assert st["MESSAGES"] == 40 and st["HIGHESTMODSEQ"] > 0
    # SIZE is NEW's own number too
    assert _status(conn, "INBOX", "(MESSAGES)")["MESSAGES"] == 0
    conn.logout()


def test_login_puts_the_user_first_in_ferryd(sandbox, ferryd, new_log):
    """A login of a user not done yet asks ferryd to pull the user ahead of
    the others; ferryd's status shows the pull was triggered by a login,
    and ferryd completes the user after the session has ended."""
    spec = corpus.small_spec(seed=22)
    corpus.seed_old(sandbox, "loginner", spec)
    old = snapshot(sandbox, "old", "loginner")
    csv = os.path.join(sandbox.root, "login.csv")
    with open(csv, "w") as f:
        f.write("user,old_login,new_login,endpoint,wave\n")
        f.write("loginner,loginner,loginner,127.0.0.1:%d,later\n" % sandbox.port("old"))
    ferryd.ctl("wave", "create", "later")
    ferryd.ctl("import", csv)  # imported, its wave never started
    assert ferryd.users()["loginner"]["login_at"] == 0

    conn = sandbox.imap("new", "loginner")
    first = _sweep(conn)
    conn.logout()
    wait_until(lambda: ferryd.users()["loginner"]["state"] == "done", 120,
               "ferryd to complete the user after the login")
    assert ferryd.users()["loginner"]["login_at"] > 0
    assert ",login" in ferryd.ctl("status").stdout
    # the session logs ferryd's answer, even when the client has logged
    # out first; Dovecot's log process writes it a moment later
    wait_until(lambda: "event=ferryd-login" in new_log.text(), 10,
               "NEW to log ferryd's answer to the login")
    assert any(e.get("event") == "sync-login" and e.get("user") == "loginner"
               for e in ferryd.events())
    conn = sandbox.imap("new", "loginner")
    assert _sweep(conn) == first
    conn.logout()
    new = snapshot(sandbox, "new", "loginner")
    assert compare(old, new) == []
    assert duplicates(new, old) == {}


def test_old_server_down_backs_off(sandbox, new_log):
    """OLD goes down while a session completes the user in the background:
    each worker fails the folder it is in (at most ferry_parallel, here the
    default: the CPUs, at most 4), then the round stops and the session
    waits (a minute, doubled per failure) instead of failing every folder
    in a row; the session still answers."""
    # 1,600 messages in batches of 20: still copying when OLD goes down,
    # with folders after the one in flight
    spec = corpus._spec(23, [("INBOX", 10, "inbox", True)] + [
        (name, 400, "plain", True) for name in ("A", "B", "C", "D")], {}, [])
    corpus.seed_old(sandbox, "downer", spec)
    conn = sandbox.imap("new", "downer")
    first = _sweep(conn)  # answered from OLD: nothing complete yet
    mark = new_log.mark()
    sandbox.stop_old()
    try:
        wait_until(lambda: re.search(r"downer.*event=failed", new_log.text(mark)), 60,
                   "a background step to fail with OLD down")
        check(conn.noop(), "NOOP")
        # a NOOP round trip later (the NOOP waited for the workers to stop)
        # the session has not gone on to the next folders: 5 folders, at
        # most one failure per worker
        workers = min(os.cpu_count() or 1, 4)
        failed = re.findall(r"downer.*event=failed", new_log.text(mark))
        assert 1 <= len(failed) <= workers < 5, failed
    finally:
        sandbox.start_old()
    assert _sweep(conn) == first
    conn.logout()


def _sessions_and_workers_nice(sandbox):
    """[(nice of an imap session that has background workers, [nice of
    each of its workers])], each sampled together; [] while none has one.
    Found by the process tree: 2.4's titles do not name the user (and a
    session of an earlier test may still be completing its user)."""
    procs = {p: proc_stat(p) for p, t in sandbox.processes("new").items() if "/imap " in t}
    with_workers = {}
    for p, (ppid, nice) in procs.items():
        if ppid in procs and nice is not None and procs[ppid][0] not in procs:
            with_workers.setdefault(ppid, []).append(nice)
    return [(procs[session][1], nices) for session, nices in with_workers.items()]


def test_background_workers_keep_to_ferry_parallel_and_yield(sandbox, new_log, old_log):
    """The idle session's background workers (ferry_parallel=2 here) never
    have more sessions open on OLD than ferry_parallel (the session closes
    its own while they run); a SELECT of a folder a worker is copying
    stops the workers after their batch and completes the folder itself;
    once idle again the workers finish the user: every message once, with
    its UID."""
    spec = corpus._spec(24, [("INBOX", 10, "inbox", True)] + [
        (name, 1500, "plain", True) for name in ("P", "Q", "R", "S")], {}, [])
    corpus.seed_old(sandbox, "worker", spec)
    old = snapshot(sandbox, "old", "worker")
    begin = new_log.mark()
    conn = sandbox.imap("new", "worker")
    _list(conn, "LIST")  # the folder tree; then the client is idle
    # a folder with mail files but not complete yet; looked at on disk
    # (doveadm ferry status would open a session on OLD of its own)
    maildir = os.path.join(sandbox.home("new", "worker"), "Maildir")

    def in_flight():
        for name in ("P", "Q", "R", "S"):
            cur = os.path.join(maildir, "." + name, "cur")
            if (os.path.isdir(cur) and os.listdir(cur) and
                    "folder=%s event=complete" % name not in new_log.text(begin)):
                return name
        return None
    def in_flight_with_workers():
        name = in_flight()
        sessions = name and _sessions_and_workers_nice(sandbox)
        return (name, sessions) if sessions else None
    partial, sessions = wait_until(
        in_flight_with_workers, 60, "a background worker in the middle of a folder")
    # the workers yield the CPUs to the session a client waits on
    for session_nice, worker_nices in sessions:
        assert set(worker_nices) == {min(session_nice + 10, 19)}, sessions
    mark = new_log.mark()
    typ, data = conn.select(partial)
    assert typ == "OK", data
    assert int(data[0]) == len(old.folders[partial].messages)
    # the SELECT found the folder's lock free within a batch: no NO [INUSE]
    assert "event=failed" not in new_log.text(mark)
    wait_until(lambda: "event=user-done" in new_log.text(begin), 120, "user done")
    assert re.search(r"worker.*event=background folders=5", new_log.text(begin))
    conn.logout()
    new = snapshot(sandbox, "new", "worker")
    assert compare(old, new) == []
    assert duplicates(new, old) == {}
    old_log.barrier()
    peak, detail = peak_sessions(old_log.text(), MASTER_USER)
    assert 1 <= peak <= 2, "\n".join(detail)
