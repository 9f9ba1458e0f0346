"""POP3 UIDLs across a migration from Cyrus IMAP 3.6 and Courier-IMAP 5.0
(their own pop3d: Debian's cyrus-pop3d and courier-pop, unpacked like the
IMAP servers, see ferrytest/cyrus.py and ferrytest/courier.py).

A POP3 client that "leaves mail on the server" remembers the UIDLs it has
downloaded; NEW must answer UIDL with the old server's strings or the
client downloads everything again. Ferry keeps every message's UID and the
folder's UIDVALIDITY, so a per-user `pop3_uidl_format` (a userdb field) that
spells UIDs the way the old server does reproduces its UIDLs:

- Cyrus: "UIDVALIDITY.UID" (imapd.conf uidl_format: cyrus, the default),
  Dovecot's `%v.%u`: test_cyrus_uidls_kept.
- Courier: "UID<n>-<v>" with n and v from the maildir's
  courierpop3dsizelist, a POP3-only counter (n from 1, in filename order,
  given when a POP3 session first sees a message; v = the time that file
  was made), not the IMAP UID/UIDVALIDITY: none of pop3_uidl_format's
  variables holds them. test_courier_uidls_are_not_imap_uids shows that
  (the nearest format, `UID%u-%v`, gives other strings) and that the mail
  itself arrives intact.
(Dovecot as OLD: test_lazy.py::test_pop3_login_pulls_inbox.)"""
import contextlib
import hashlib
import os
import re
import time

import pytest

from ferrytest import corpus, oldservers
from ferrytest.sandbox import PLUGIN, PLUGIN_DIR, Sandbox, password

USER = "alice"
# 30 kept messages plus 6 expunged: UIDs with gaps, so UID != sequence number
SPEC = dict(name="INBOX", n=30, gaps=6)

pytestmark = pytest.mark.skipif(not os.path.exists(os.path.join(PLUGIN_DIR, PLUGIN)),
                                reason="the ferry plugin is not built")


def pop3_listing(port, user=USER):
    """(UIDL lines as str, sha256 of each RETR'd message) of one POP3
    session on 127.0.0.1:port, in message-number order. A server that
    offers RFC 6856 UTF8 (Courier) is asked for it: without it Courier
    sends a message with UTF-8 headers wrapped in a "Cannot display
    Unicode content" notice instead of the message."""
    import poplib
    pop = poplib.POP3("127.0.0.1", port, timeout=60)
    try:
        if "UTF8" in pop.capa():
            pop.utf8()
        pop.user(user)
        pop.pass_(password(user))
        uidls = [line.decode() for line in pop.uidl()[1]]
        bodies = [hashlib.sha256(b"\r\n".join(pop.retr(i + 1)[1]) + b"\r\n").hexdigest()
                  for i in range(len(uidls))]
        pop.quit()
    finally:
        pop.close()
    return uidls, bodies


def inbox_uids(srv, user=USER):
    """(UIDVALIDITY, sorted UIDs) of INBOX over the old server's IMAP."""
    conn = srv.imap(user)
    try:
        conn.select("INBOX", readonly=True)
        uidvalidity = int(conn.untagged_responses["UIDVALIDITY"][0])
        uids = sorted(int(u) for u in conn.uid("SEARCH", "ALL")[1][0].split())
    finally:
        conn.logout()
    return uidvalidity, uids


@contextlib.contextmanager
def old_and_new(srv, uidl_format):
    """srv started, and a NEW Dovecot whose ferry pulls from srv and whose
    userdb gives USER pop3_uidl_format = uidl_format. Both are removed
    afterwards, or stopped and kept (and named) when the block raised or
    FERRY_KEEP=1."""
    sb = Sandbox(users=(USER,), new_extra=srv.new_extra(),
                 # passwd-file extra fields expand %variables: %% is a '%'
                 new_userdb_extra={USER: "userdb_pop3_uidl_format=%s"
                                   % uidl_format.replace("%", "%%")})
    ok = False
    try:
        srv.start()
        sb.start()
        yield sb
        ok = True
    finally:
        if ok and not os.environ.get("FERRY_KEEP"):
            sb.cleanup()
            srv.cleanup()
        else:
            print("\nkept: %s (%s), %s" % (srv.root, srv.kind, sb.root))
            sb.stop()
            srv.stop()


def migrate_by_pop3(srv, sb, seed):
    """Seed USER's INBOX on srv, read it by POP3 there, then by POP3 on
    NEW (the login pulls INBOX from srv: lazy, no doveadm). Checks that NEW
    lists every message whole, in UID order; returns what was seen."""
    spec = srv.seed(USER, corpus.folder_spec(seed=seed, **SPEC))
    kept = spec.folder("INBOX").kept()
    uidvalidity, uids = inbox_uids(srv)
    assert uids == sorted(kept) and uids != list(range(1, len(kept) + 1))
    started = int(time.time())
    old_uidls, old_bodies = pop3_listing(srv.port("pop3"))
    new_uidls, new_bodies = pop3_listing(sb.port("new", "pop3"))
    assert len(old_uidls) == len(new_uidls) == len(kept)
    assert new_bodies == [hashlib.sha256(kept[u].body).hexdigest() for u in uids]
    return {"kept": kept, "uidvalidity": uidvalidity, "uids": uids, "started": started,
            "uidnext": spec.folder("INBOX").uidnext,
            "old_uidls": old_uidls, "old_bodies": old_bodies,
            "new_uidls": new_uidls, "new_bodies": new_bodies}


def test_cyrus_uidls_kept():
    srv = oldservers.make("cyrus-dot", users=(USER,))
    with old_and_new(srv, "%v.%u") as sb:
        seen = migrate_by_pop3(srv, sb, seed=11)
    # Cyrus's UIDL is UIDVALIDITY.UID of the IMAP INBOX ...
    assert seen["old_uidls"] == ["%d %d.%d" % (i + 1, seen["uidvalidity"], uid)
                                 for i, uid in enumerate(seen["uids"])]
    # ... and NEW, with the same UIDs and UIDVALIDITY, says the same, for
    # the same messages in the same order
    assert seen["new_uidls"] == seen["old_uidls"]
    assert seen["new_bodies"] == seen["old_bodies"]


def courier_files(srv, user=USER):
    """Courier's two per-maildir databases, keyed by the message file's
    base name (up to ':'): courierpop3dsizelist ("/3 <next n> <v>", then
    "<file> <size> <n>:<v>:<utf8>") and courierimapuiddb ("1 <UIDVALIDITY>
    <UIDNEXT>", then "<UID> <file>")."""
    md = srv.maildir(user)
    with open(os.path.join(md, "courierpop3dsizelist")) as f:
        head, *rows = f.read().splitlines()
    pop3 = [(row.split()[0].split(":")[0],
             tuple(int(x) for x in row.split()[-1].split(":")[:2])) for row in rows]
    with open(os.path.join(md, "courierimapuiddb")) as f:
        imap_head, *rows = f.read().splitlines()
    imap = {row.split()[1]: int(row.split()[0]) for row in rows}
    return head.split(), pop3, imap_head.split(), imap


def courier_pop3_order(names):
    """Courier pop3d's message order (cmpmsgs): the filename's leading
    seconds as a number, then the rest as a string, so "M100846P..."
    (microseconds, not zero-padded) sorts before "M70171P..."."""
    return sorted(names, key=lambda n: (int(n.split(".")[0]), n.split(".", 1)[1]))


def test_courier_uidls_are_not_imap_uids():
    srv = oldservers.make("courier", users=(USER,))
    with old_and_new(srv, "UID%u-%v") as sb:
        seen = migrate_by_pop3(srv, sb, seed=12)
        pop3_head, pop3, imap_head, imap = courier_files(srv)
    n, uids, uidvalidity = len(seen["kept"]), seen["uids"], seen["uidvalidity"]
    parsed = [re.fullmatch(r"(\d+) UID(\d+)-(\d+)", line) for line in seen["old_uidls"]]
    assert all(parsed), seen["old_uidls"]
    pop3_ids = [(int(m.group(2)), int(m.group(3))) for m in parsed]
    # Courier's UIDL "UID<n>-<v>" is its POP3 server's own counter, kept in
    # courierpop3dsizelist: n from 1 in POP3 order (no gaps where IMAP has
    # them), v the time its first POP3 session made that file ...
    assert [ids for _, ids in pop3] == pop3_ids
    (pop3_validity,) = {v for _, v in pop3_ids}
    assert [i for i, _ in pop3_ids] == list(range(1, n + 1)) != uids
    assert pop3_head == ["/3", str(n + 1), str(pop3_validity)]
    assert seen["started"] <= pop3_validity <= seen["started"] + 60
    # ... not the IMAP UIDVALIDITY/UIDs of courierimapuiddb, and its
    # message order is its filename order, not necessarily UID order
    assert imap_head == ["1", str(uidvalidity), str(seen["uidnext"])]
    assert pop3_validity != uidvalidity
    assert sorted(imap.values()) == uids
    assert [name for name, _ in pop3] == courier_pop3_order(imap)
    imap_uid_of = [imap[name] for name, _ in pop3]  # OLD's POP3 message -> IMAP UID
    # the same mail on NEW (NEW lists in UID order)
    assert [seen["new_bodies"][uids.index(u)] for u in imap_uid_of] == seen["old_bodies"]
    # NEW can only spell IMAP UIDs and UIDVALIDITY (the nearest format is
    # "UID%u-%v"): other strings, so a Courier POP3 client would download
    # everything again
    assert seen["new_uidls"] == ["%d UID%d-%d" % (i + 1, uid, uidvalidity)
                                 for i, uid in enumerate(uids)]
    assert not set(seen["new_uidls"]) & set(seen["old_uidls"])
