"""Proves the harness itself: servers, corpus, snapshots, log counters, stop.
NEW runs without the plugin here, so this passes before the plugin exists.
FERRY_FULL=1 also seeds and checks the full corpus (~3,200 messages, 20 MB)."""
import copy
import datetime
import os
import poplib
import subprocess
import sys
import tempfile
import time

import pytest

from ferrytest import corpus, imapwire, logs
from ferrytest.sandbox import Sandbox, SandboxError, port_open, proc_alive, password
from ferrytest.snapshot import Message, compare, duplicates, snapshot

SANDBOX_KWARGS = {"new_plugin": False}
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def small(sandbox):
    spec = corpus.small_spec(seed=7)
    corpus.seed_old(sandbox, "alice", spec)
    return spec


def check_corpus(sandbox, user, spec, snap):
    """The properties the corpus promises, read back from the server."""
    assert compare(corpus.expected_snapshot(spec), snap) == []
    folders = {n: f for n, f in snap.folders.items() if f.selectable}
    for f in spec.folders:
        assert len(folders[f.name].messages) == len(f.kept()), f.name
    # UID gaps, and UIDNEXT beyond the last message
    assert any(set(f.messages) != set(range(1, max(f.messages) + 1))
               for f in folders.values() if f.messages)
    assert all(f.uidnext > max(f.messages) + 1 for f in folders.values() if f.messages)
    assert any(not f.messages and f.uidnext > 1 for f in folders.values())  # Trash
    assert any(not f.messages and f.uidnext == 1 for f in folders.values())  # Empty
    validities = [f.uidvalidity for f in folders.values()]
    assert len(set(validities)) == len(validities)
    msgs = [m for f in folders.values() for m in f.messages.values()]
    assert all(m.sha256 for m in msgs)  # compare() skips hashes that are missing
    flags = set().union(*(m.flags for m in msgs))
    assert set(corpus.SYSTEM_FLAGS) | set(corpus.KEYWORDS) <= flags
    years = [datetime.datetime.fromtimestamp(m.internaldate, datetime.timezone.utc).year
             for m in msgs]
    assert max(years) - min(years) >= 10
    empty = [m for f in spec.folders for m in f.kept().values() if m.body.endswith(b"\r\n\r\n")]
    assert empty and min(m.size for m in msgs) == min(len(m.body) for m in empty)
    # non-ASCII names round-trip, and travel as modified UTF-7
    assert {"Entwürfe", "アーカイブ"} <= set(folders)
    conn = sandbox.imap("old", user)
    raw = b" ".join(i if isinstance(i, bytes) else i[0] for i in conn.list('""', "*")[1])
    conn.logout()
    assert b"Entw&APw-rfe" in raw and b"&MKIw,DCrMKQw1g-" in raw
    assert [n for n, f in snap.folders.items() if not f.selectable] == spec.noselect()
    assert "Old Archive" in snap.subscriptions and "Empty" not in snap.subscriptions
    return msgs


def test_servers_answer(sandbox):
    for inst in ("old", "new"):
        conn = sandbox.imap(inst, "bob")
        assert imapwire.check(conn.noop())
        conn.logout()
        pop = poplib.POP3("127.0.0.1", sandbox.port(inst, "pop3"), timeout=10)
        pop.user("bob")
        pop.pass_(password("bob"))
        pop.quit()
    code, text = sandbox.lmtp_deliver("carol", b"Subject: hello\r\n\r\nhi\r\n")
    assert code == 250, text
    assert sandbox.lmtp_deliver("nobody", b"Subject: x\r\n\r\nx\r\n")[0] == 550
    out = sandbox.doveadm("new", "mailbox", "status", "-u", "carol", "messages", "INBOX").stdout
    assert out.split() == ["INBOX", "messages=1"]


def test_new_requires_built_plugin(tmp_path):
    sb = Sandbox(build_dir=str(tmp_path))  # no lib20_ferry_plugin.so there
    try:
        with pytest.raises(SandboxError, match="lib20_ferry_plugin.so"):
            sb.start()
        assert not sb.pids("old") and not sb.pids("new")
    finally:
        sb.cleanup()


def test_small_corpus_matches_spec(sandbox, small):
    snap = snapshot(sandbox, "old", "alice", chunk=256 * 1024)  # exercises partial fetch
    msgs = check_corpus(sandbox, "alice", small, snap)
    assert 180 <= len(msgs) <= 230 and max(m.size for m in msgs) > 900000


def test_master_login_sees_the_same_mailbox(sandbox, small):
    mine = snapshot(sandbox, "old", "alice", bodies=False)
    assert compare(mine, snapshot(sandbox, "old", "alice", master=True, bodies=False)) == []
    conn = sandbox.imap("old", "alice", master=True, authzid=True)
    assert imapwire.check(conn.status("INBOX", "(UIDVALIDITY)"))[0].endswith(
        b"%d)" % small.folder("INBOX").uidvalidity)
    conn.logout()


def test_compare_and_duplicates_report_differences(small):
    old = corpus.expected_snapshot(small)
    new = copy.deepcopy(old)
    inbox = new.folders["INBOX"]
    uid, m = sorted(inbox.messages.items())[1]
    inbox.messages[uid] = Message(m.flags | {"$Junk", "\\Seen"}, m.internaldate + 3600,
                                  m.size + 1, "0" * 64)
    inbox.messages[max(inbox.messages) + 100] = inbox.messages[uid + 1]  # a duplicate
    del new.folders["Sent"].messages[min(new.folders["Sent"].messages)]
    new.folders["Empty"].uidvalidity += 1
    new.subscriptions.discard("Old Archive")
    text = "\n".join(compare(old, new))
    for needle in ("keywords", "internaldate", "size", "body hash", "UIDs unexpected",
                   "'Sent': 1 UIDs missing", "uidvalidity", "subscription 'Old Archive'"):
        assert needle in text
    assert duplicates(new, old) == {"INBOX": 1}
    assert compare(old, old) == [] and duplicates(old, old) == {}


@pytest.mark.parametrize("name, wire", [
    ("Entwürfe", "Entw&APw-rfe"), ("アーカイブ", "&MKIw,DCrMKQw1g-"),
    ("Reports & Stats", "Reports &- Stats"), ("~peter/mail/台北/日本語",
                                              "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
    ("emoji 📬", "emoji &2D3c7A-")])
def test_mutf7(name, wire):
    assert imapwire.mutf7_encode(name) == wire
    assert imapwire.mutf7_decode(wire) == name


def test_log_counters(sandbox, small, old_log):
    for _ in range(2):
        sandbox.imap("old", "alice").logout()
    conn = sandbox.imap("old", "alice", master=True)
    conn.select("INBOX", readonly=True)
    imapwire.check(conn.uid("FETCH", "1:3", "(BODY.PEEK[])"))
    conn.logout()
    old_log.settle("alice")
    assert old_log.logins("alice") == 3
    assert old_log.logins("alice", master=True) == 1
    assert old_log.logins("alice", master=False) == 2
    assert old_log.body_counts("alice") == [0, 0, 3]


def _login(t, user, session, auth="m"):
    return ("Nov 28 22:03:%s imap-login: Info: Login: user=<%s>, auth=<%s>, method=PLAIN, "
            "rip=127.0.0.1, lip=127.0.0.1, session=<%s>" % (t, user, auth, session))


def _end(t, user, session):
    return "Nov 28 22:03:%s imap(%s)<7><%s>: Info: Disconnected: Logged out in=9" % (t, user, session)


@pytest.mark.parametrize("lines,peak", [
    # one after the other; the first's end filed 1 ms after the next Login
    ([_login("01.000000", "a", "A"), _login("02.000000", "b", "B"),
      _end("02.001000", "a", "A"), _end("03.000000", "b", "B")], 1),
    # a real overlap of 100 ms
    ([_login("01.000000", "a", "A"), _login("02.000000", "b", "B"),
      _end("02.100000", "a", "A"), _end("03.000000", "b", "B")], 2),
    # B's end filed before its own Login: B was open then
    ([_login("01.000000", "a", "A"), _end("02.000000", "b", "B"),
      _login("02.100000", "b", "B"), _end("03.000000", "a", "A")], 2),
    # logins with another auth are not counted
    ([_login("01.000000", "a", "A"), _login("01.500000", "b", "B", auth="b"),
      _end("03.000000", "a", "A"), _end("03.000000", "b", "B")], 1),
])
def test_peak_sessions_counts_from_an_unordered_log(lines, peak):
    assert logs.peak_sessions("\n".join(lines), "m")[0] == peak


def test_stop_old_alone_and_restart(sandbox, small):
    pids = sandbox.pids("old")
    new_pids = sandbox.pids("new")
    sandbox.stop_old()
    assert not any(map(proc_alive, pids)) and not port_open(sandbox.port("old"))
    assert sandbox.pids("new") >= {min(new_pids)}
    sandbox.start_old()
    conn = sandbox.imap("old", "alice")
    assert imapwire.check(conn.status("INBOX", "(MESSAGES)"))
    conn.logout()


def test_stop_leaves_no_process():
    with Sandbox(new_plugin=False) as sb:
        sessions = [sb.imap(inst, "alice") for inst in ("old", "new")]  # busy servers
        for s in sessions:  # Dovecot 2.4 titles a session at its first command
            s.noop()
        pids = sb.pids("old") | sb.pids("new")
        assert any(t.endswith("/imap [alice 127.0.0.1]") for t in sb.processes("new").values())
    assert not any(map(proc_alive, pids))
    assert not any(port_open(p) for ports in sb.ports.values() for p in ports.values())
    for s in sessions:
        s.shutdown()
    sb.cleanup()


def test_cli_start_env_stop():
    root = tempfile.mkdtemp(prefix="ferry-cli-")
    cmd = [sys.executable, "-m", "ferrytest.sandbox"]
    try:
        out = subprocess.run(cmd + ["start", root, "--no-plugin"], cwd=TESTS_DIR,
                             capture_output=True, text=True, timeout=60, check=True).stdout
        env = dict(l[len("export "):].split("=", 1) for l in out.splitlines())
        assert port_open(int(env["FERRY_OLD_IMAP_PORT"]))
        assert port_open(int(env["FERRY_NEW_LMTP_PORT"]))
        again = subprocess.run(cmd + ["env", root], cwd=TESTS_DIR, capture_output=True,
                               text=True, timeout=60, check=True).stdout
        assert again == out
    finally:
        subprocess.run(cmd + ["stop", root], cwd=TESTS_DIR, timeout=60, check=True)
        sb = Sandbox.load(root)
        assert not sb.pids("old") and not sb.pids("new")
        subprocess.run(["rm", "-rf", root], check=True)


@pytest.mark.skipif(not os.environ.get("FERRY_FULL"), reason="set FERRY_FULL=1")
def test_full_corpus(sandbox):
    spec = corpus.full_spec()
    t0 = time.monotonic()
    corpus.seed_old(sandbox, "bob", spec)
    t1 = time.monotonic()
    snap = snapshot(sandbox, "old", "bob")
    t2 = time.monotonic()
    print("\nfull corpus: seed %.1fs, snapshot %.1fs" % (t1 - t0, t2 - t1))
    msgs = check_corpus(sandbox, "bob", spec, snap)
    assert len(msgs) >= 3000 and len([f for f in snap.folders.values() if f.selectable]) >= 12
    assert max(m.size for m in msgs) >= 20 * 10 ** 6
    assert max(n.count("/") for n in snap.folders) >= 2
    assert duplicates(snap) == {"Archive": 1}  # an exact duplicate that OLD really has
    assert duplicates(snap, corpus.expected_snapshot(spec)) == {}
