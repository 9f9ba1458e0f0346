"""Presync mirror passes (issue 5): while a user still works on the old
server, `doveadm ferry sync` makes NEW a mirror of OLD — new messages with
their UIDs, flag and keyword changes, expunges, folders created, renamed
and deleted, subscriptions — for Dovecot, Cyrus 3.6 (both separators) and
Courier-IMAP 5.0 as OLD. Checked with the independent snapshot client."""
import random

import pytest

from ferrytest import corpus, oldservers
from ferrytest.imapwire import check, mailbox_arg
from ferrytest.sandbox import Sandbox
from ferrytest.snapshot import compare, duplicates, snapshot

USER = "pre"
PRESYNC = {USER: "userdb_ferry_phase=presync"}


class DovecotOld:
    """The sandbox's own Dovecot OLD, with the interface of ferrytest.unpack."""
    sep = "."

    def __init__(self, sb):
        self.sb = sb

    def imap(self, user):
        return self.sb.imap("old", user)

    def wire_name(self, name):
        return mailbox_arg(name, self.sep)

    def seed(self, user, spec):
        corpus.seed_old(self.sb, user, spec)
        return spec

    def snapshot(self, user):
        return snapshot(self.sb, "old", user)


def _servers():
    return ["dovecot", "cyrus-dot", "cyrus-slash", "courier"]


@pytest.fixture(params=_servers())
def setup(request):
    kind = request.param
    srv = None
    if kind != "dovecot":
        srv = oldservers.make(kind, users=(USER,))
    sb = Sandbox(users=(USER,), new_userdb_extra=PRESYNC,
                 new_extra=srv.new_extra() if srv else "")
    try:
        if srv:
            srv.start()
        sb.start()
        yield kind, sb, (srv or DovecotOld(sb))
    finally:
        sb.cleanup()
        if srv:
            srv.cleanup()


def _sync(sb):
    """Output table plus doveadm's log lines (they go to its stderr)."""
    r = sb.doveadm("new", "ferry", "sync", "-u", USER)
    return r.stdout + r.stderr


def _change_old(old, spec, rng):
    """200 new messages, 500 flag changes, 100 expunges, one folder
    renamed, one deleted, one created (with mail)."""
    conn = old.imap(USER)
    try:
        for i in range(200):
            m = corpus.simple_message("new-%d" % i, seed=rng.random())
            target = "INBOX" if i % 4 else "Sent"
            check(conn.append(old.wire_name(target), "(\\Seen)", None, m), "APPEND")
        changes = 0
        for name, n in (("INBOX", 250), ("Sent", 150), ("Projects", 100)):
            check(conn.select(old.wire_name(name)), "SELECT")
            uids = check(conn.uid("SEARCH", "ALL"))[0].split()
            for uid in rng.choices(uids, k=n):  # some messages change twice
                flag = rng.choice(["\\Flagged", "\\Answered", "$Label1", "Project-X"])
                op = rng.choice(["+FLAGS.SILENT", "-FLAGS.SILENT"])
                check(conn.uid("STORE", uid, op, "(%s)" % flag), "STORE")
                changes += 1
        assert changes == 500
        check(conn.select(old.wire_name("INBOX")), "SELECT")
        uids = check(conn.uid("SEARCH", "ALL"))[0].split()
        gone = b",".join(rng.sample(uids, 100)).decode()
        check(conn.uid("STORE", gone, "+FLAGS.SILENT", "(\\Deleted)"), "STORE")
        check(conn.uid("EXPUNGE", gone), "UID EXPUNGE") if b"UIDPLUS" in \
            check(conn.capability())[0] else check(conn.expunge(), "EXPUNGE")
        conn.close()
        check(conn.rename(old.wire_name("Entwürfe"), old.wire_name("Drafts-renamed")),
              "RENAME")
        check(conn.delete(old.wire_name("Empty")), "DELETE")  # Courier keeps Trash
        check(conn.create(old.wire_name("Created")), "CREATE")
        for i in range(5):
            check(conn.append(old.wire_name("Created"), None, None,
                              corpus.simple_message("created-%d" % i)), "APPEND")
        check(conn.subscribe(old.wire_name("Created")), "SUBSCRIBE")
    finally:
        conn.logout()


def test_full_pass_then_delta_pass(setup):
    kind, sb, old = setup
    spec = corpus.small_spec(seed=21)
    spec.folders = [f for f in spec.folders if "/" not in f.name or kind == "dovecot"
                    or not f.name.upper().startswith("INBOX/")]
    old.seed(USER, spec)
    before = old.snapshot(USER)
    out = _sync(sb)
    assert "failed" not in out, out
    new = snapshot(sb, "new", USER)
    assert compare(before, new) == []

    _change_old(old, spec, random.Random(kind))
    after = old.snapshot(USER)
    assert "Drafts-renamed" in after.folders and "Empty" not in after.folders
    out = _sync(sb)
    assert "failed" not in out, out
    new = snapshot(sb, "new", USER)
    assert compare(after, new) == [], out
    assert duplicates(new, after) == {}
    # where the old server keeps a renamed folder's identity (Dovecot,
    # Cyrus), the mirror renames too instead of copying it again; Courier
    # gives a renamed folder a new UIDVALIDITY, so it is a new folder there
    kept = after.folders["Drafts-renamed"].uidvalidity == \
        before.folders["Entwürfe"].uidvalidity
    assert kept == (kind != "courier")
    assert ("event=renamed" in out) == kept, out
    assert "event=deleted" in out

    # a pass with nothing new changes nothing
    out = _sync(sb)
    assert compare(after, snapshot(sb, "new", USER)) == []


def test_after_cutover_new_server_is_the_truth():
    """A cut-over user's own changes on NEW (flags, a move, a delete, a new
    folder) survive later passes untouched; a straggler that still reaches
    OLD arrives once, above everything, with a fresh UID."""
    user = "cut"
    sb = Sandbox(users=(user,))
    try:
        sb.start()
        corpus.seed_old(sb, user, corpus.small_spec(seed=41))
        sb.doveadm("new", "ferry", "pull", "-u", user)
        conn = sb.imap("new", user)
        check(conn.select("INBOX"), "SELECT")
        uids = check(conn.uid("SEARCH", "ALL"))[0].split()
        check(conn.uid("STORE", uids[0], "+FLAGS", "(\\Flagged $Label1)"), "STORE")
        check(conn.uid("STORE", uids[1], "-FLAGS", "(\\Seen)"), "STORE")
        check(conn.uid("MOVE", uids[2], "Sent"), "MOVE")
        check(conn.uid("STORE", uids[3], "+FLAGS", "(\\Deleted)"), "STORE")
        check(conn.uid("EXPUNGE", uids[3]), "EXPUNGE")
        check(conn.create("Mine"), "CREATE")
        check(conn.delete("Empty"), "DELETE")
        conn.logout()
        mine = snapshot(sb, "new", user)

        old = sb.imap("old", user)
        straggler = corpus.simple_message("straggler", seed=41)
        check(old.append("INBOX", None, None, straggler), "APPEND")
        old.logout()
        for _ in range(2):  # the second pass finds nothing new
            out = sb.doveadm("new", "ferry", "sync", "-u", user)
            assert "failed" not in out.stdout, out.stdout
        after = snapshot(sb, "new", user)

        inbox = after.folders["INBOX"]
        fresh = set(inbox.messages) - set(mine.folders["INBOX"].messages)
        assert len(fresh) == 1 and min(fresh) >= mine.folders["INBOX"].uidnext
        del inbox.messages[fresh.pop()]
        inbox.uidnext = mine.folders["INBOX"].uidnext
        assert compare(mine, after) == []  # everything the user did, as it was
        assert "Empty" not in after.folders and "Mine" in after.folders
    finally:
        sb.cleanup()
