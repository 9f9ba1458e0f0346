"""Cyrus IMAP 3.6 (both hierarchy separators) and Courier-IMAP 5.0 as OLD
servers: unpacked from Debian's packages (ferrytest.unpack), seeded with the
corpus, read back through snapshots named like the Dovecot OLD's, the master
identity logging in as the user, stop() leaving no process (IMAP and POP3
sessions open), and Ferry's NEW Dovecot migrating from them. (Their POP3
UIDLs: test_pop3_uidl.py.) Skips only if the packages cannot be fetched."""
import datetime
import imaplib
import os
import shutil

import pytest

from ferrytest import corpus, oldservers
from ferrytest.sandbox import PLUGIN, PLUGIN_DIR, Sandbox, port_open, proc_alive
from ferrytest.snapshot import compare, snapshot

USER = "alice"


@pytest.fixture(scope="module", params=sorted(oldservers.KINDS))
def seeded(request):
    """(server, spec as the server holds it, snapshot) for a seeded USER."""
    srv = oldservers.make(request.param)
    failed_before = request.session.testsfailed
    try:
        srv.start()
        spec = srv.seed(USER, corpus.small_spec(seed=7))
        yield srv, spec, srv.snapshot(USER)
    finally:
        srv.stop()
        if request.session.testsfailed == failed_before and not os.environ.get("FERRY_KEEP"):
            shutil.rmtree(srv.root, ignore_errors=True)
        else:
            print("\n%s kept: %s (log %s)" % (srv.kind, srv.root, srv.log_path))


def raw_list(srv, user):
    conn = srv.imap(user)
    try:
        return b" ".join(i if isinstance(i, bytes) else i[0]
                         for i in conn.list('""', "*")[1] if i)
    finally:
        conn.logout()


def test_snapshot_matches_spec(seeded):
    srv, spec, snap = seeded
    assert compare(srv.expected_snapshot(spec), snap) == []
    folders = {n: f for n, f in snap.folders.items() if f.selectable}
    for f in spec.folders:
        assert len(folders[f.name].messages) == len(f.kept()), f.name
    msgs = [m for f in folders.values() for m in f.messages.values()]
    assert len(msgs) == spec.count() and all(m.sha256 for m in msgs)
    # UID gaps after EXPUNGE, UIDNEXT beyond the last message
    assert any(set(f.messages) != set(range(1, max(f.messages) + 1))
               for f in folders.values() if f.messages)
    assert all(f.uidnext > max(f.messages) + 1 for f in folders.values() if f.messages)
    assert folders["Trash"].uidnext > 1 and not folders["Trash"].messages
    assert folders["Empty"].uidnext == 1 and not folders["Empty"].messages
    # every system flag and keyword, dates over 10+ years, sizes
    flags = set().union(*(m.flags for m in msgs))
    assert set(corpus.SYSTEM_FLAGS) | set(corpus.KEYWORDS) <= flags
    years = [datetime.datetime.fromtimestamp(m.internaldate, datetime.timezone.utc).year
             for m in msgs]
    assert max(years) - min(years) >= 10
    assert max(m.size for m in msgs) > 700000
    # subscriptions, with names like the Dovecot OLD's
    assert {"INBOX", "Sent", "Projects/2019/Q1", "Entwürfe"} <= snap.subscriptions
    assert "Empty" not in snap.subscriptions and "Projects" not in snap.subscriptions
    if srv.kind == "courier":  # UIDVALIDITY as the spec says; Cyrus picks its own
        assert [folders[f.name].uidvalidity for f in spec.folders] == \
            [f.uidvalidity for f in corpus.small_spec(seed=7).folders]
        assert "Old Archive" in snap.subscriptions  # ghost, as on Dovecot
        assert not snap.folders["Projects/2019"].selectable
    else:  # documented differences (ferrytest/cyrus.py)
        assert "Old Archive" not in snap.subscriptions
        assert snap.folders["Projects/2019"].selectable


def test_server_names_folders_under_inbox(seeded):
    srv, _, _ = seeded
    raw = raw_list(srv, USER)
    sep = srv.sep.encode()
    for name in (b"INBOX" + sep + b"Sent", b"INBOX" + sep + b"Entw&APw-rfe",
                 b"INBOX" + sep + b"Projects" + sep + b"2019" + sep + b"Q1"):
        assert name in raw, raw


def test_master_logs_in_as_user(seeded):
    srv, _, snap = seeded
    assert compare(snap, srv.snapshot(USER, master=True)) == []
    conn = srv.imap(USER, master=True)
    try:  # it is alice's session, not the admin's nor another user's
        assert conn.select("INBOX", readonly=True)[0] == "OK"
        assert int(conn.untagged_responses["EXISTS"][0]) == len(snap.folders["INBOX"].messages)
    finally:
        conn.logout()
    assert b"bob" not in raw_list(srv, USER)


def test_wrong_password_refused(seeded):
    from ferrytest import imapwire
    srv, _, _ = seeded
    with pytest.raises(imaplib.IMAP4.error):
        imapwire.connect("127.0.0.1", srv.port(), USER, "wrong").logout()


@pytest.mark.parametrize("kind", sorted(oldservers.KINDS))
def test_stop_leaves_no_process(kind):
    srv = oldservers.make(kind)
    try:
        srv.start()
        conns = [srv.imap(USER), srv.imap(USER, master=True)]  # live sessions too
        pop = srv.pop3(USER)  # and a POP3 one
        pids = srv.pids()
        assert len(pids) >= 2 and port_open(srv.port()) and port_open(srv.port("pop3"))
        srv.stop()
        assert not any(proc_alive(p) for p in pids)
        assert not srv.pids() and not port_open(srv.port()) and not port_open(srv.port("pop3"))
        for c in conns:
            c.shutdown()
        pop.close()
    finally:
        srv.cleanup()


@pytest.mark.skipif(not os.path.exists(os.path.join(PLUGIN_DIR, PLUGIN)),
                    reason="the ferry plugin is not built")
@pytest.mark.parametrize("kind", sorted(oldservers.KINDS))
def test_ferry_migrates_from(kind):
    """NEW Dovecot with the ferry plugin pulls USER from this OLD server;
    NEW's snapshot equals OLD's (names mapped as documented)."""
    srv = oldservers.make(kind)
    sb = Sandbox(users=(USER,), new_extra=srv.new_extra())
    try:
        srv.start()
        sb.start()
        spec = srv.seed(USER, corpus.small_spec(seed=3))
        old = srv.snapshot(USER)
        assert compare(srv.expected_snapshot(spec), old) == []
        r = sb.doveadm("new", "ferry", "pull", "-u", USER)
        assert "complete" in r.stdout
        new = snapshot(sb, "new", USER)
        assert compare(old, new) == []
        assert all(old.folders[n].uidvalidity == f.uidvalidity
                   for n, f in new.folders.items() if f.selectable)
    finally:
        sb.cleanup()
        srv.cleanup()
