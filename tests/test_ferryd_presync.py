"""ferryd with users still in presync (userdb ferry_phase=presync): real
OLD/NEW Dovecot, real ferryd, master logins for verification.

- presync refresh: after the first pass and a green verification, mail
  delivered to OLD, a flag changed and a message expunged there are all on
  NEW after `ferryctl sync USER` (the new message with its old UID), though
  every folder was already `complete`; verification is green again and
  `ferryctl status` shows OLD's new counts."""
import os

import pytest

from ferrytest import corpus
from ferrytest.ferryd import Ferryd
from ferrytest.imapwire import check
from ferrytest.sandbox import MASTER_PASSWORD, MASTER_USER, wait_until
from ferrytest.snapshot import compare, snapshot

REFRESH = "pr"
USERS = [REFRESH]
WAVE = "pw"
SANDBOX_KWARGS = {"users": tuple(USERS), "doveadm_http": True,
                  "new_userdb_extra": {u: "userdb_ferry_phase=presync" for u in USERS}}


@pytest.fixture(scope="module")
def ferryd(sandbox):
    secret = os.path.join(sandbox.root, "master.pw")
    with open(secret, "w") as f:
        f.write(MASTER_PASSWORD + "\n")
    os.chmod(secret, 0o600)
    fd = Ferryd(sandbox, name="ferryd-presync", old_master_user=MASTER_USER,
                old_master_password_file=secret, new_master_user=MASTER_USER,
                new_master_password_file=secret,
                new_imap="127.0.0.1:%d" % sandbox.port("new"), check_timeout=60)
    fd.start()
    yield fd
    if fd.alive():
        assert fd.stop() == 0


def settled(fd, users, seen=0):
    """Every user finished a job whose verification came after `seen`
    verify events."""
    st = fd.users()
    verified = [e for e in fd.events() if e.get("event") == "verify"]
    return len(verified) >= seen + len(users) and all(
        st[u]["state"] in ("verified", "failed", "done") and not st[u]["running"]
        for u in users)


def test_first_pass_verified(sandbox, ferryd):
    corpus.seed_old(sandbox, REFRESH, corpus.folder_spec("Bulk", n=15, seed=61, gaps=2))
    csv = os.path.join(sandbox.root, "presync-users.csv")
    with open(csv, "w") as f:
        f.write("user,endpoint,tls,wave\n")
        for u in USERS:
            f.write("%s,127.0.0.1:%d,none,%s\n" % (u, sandbox.port("old"), WAVE))
    ferryd.ctl("import", csv)
    ferryd.ctl("start", "--wave", WAVE)
    wait_until(lambda: settled(ferryd, USERS), 60, "users pulled and verified")
    users = ferryd.users()
    assert {u: users[u]["state"] for u in USERS} == {u: "verified" for u in USERS}, users


def _folder_counts(fd, user):
    st = fd.status(user=user)["users"][0]
    return {f["name"]: (f["state"], f["old_messages"], f["messages"]) for f in st["folders"]}


def test_sync_refreshes_complete_folders(sandbox, ferryd):
    before = snapshot(sandbox, "old", REFRESH)
    conn = sandbox.imap("old", REFRESH)
    try:
        check(conn.append("INBOX", "(\\Flagged)", None,
                          corpus.simple_message("after-first-pass", seed=62)), "APPEND")
        check(conn.select("Bulk"), "SELECT")
        uids = check(conn.uid("SEARCH", "ALL"))[0].split()
        check(conn.uid("STORE", uids[0], "+FLAGS.SILENT", "(\\Answered $Changed)"), "STORE")
        check(conn.uid("STORE", uids[1], "+FLAGS.SILENT", "(\\Deleted)"), "STORE")
        check(conn.uid("EXPUNGE", uids[1]), "UID EXPUNGE")
    finally:
        conn.logout()
    after = snapshot(sandbox, "old", REFRESH)
    new_uid = after.folders["INBOX"].uidnext - 1
    assert new_uid not in before.folders["INBOX"].messages
    states = _folder_counts(ferryd, REFRESH)
    assert states["INBOX"][0] == "complete" and states["Bulk"][0] == "complete", states

    seen = len([e for e in ferryd.events() if e.get("event") == "verify"])
    ferryd.ctl("sync", REFRESH)
    wait_until(lambda: settled(ferryd, [REFRESH], seen), 60, "sync and verification")
    u = ferryd.users()[REFRESH]
    assert u["state"] == "verified", u

    new = snapshot(sandbox, "new", REFRESH)
    assert compare(after, new) == []  # the new message under its UID, flags, expunge
    assert new.folders["INBOX"].messages[new_uid].sha256 == \
        after.folders["INBOX"].messages[new_uid].sha256
    counts = _folder_counts(ferryd, REFRESH)
    assert counts["INBOX"][1:] == (len(after.folders["INBOX"].messages),) * 2, counts
    assert counts["Bulk"][1:] == (len(after.folders["Bulk"].messages),) * 2, counts
    pulled = [e for e in ferryd.events() if e.get("event") == "folder-pulled"
              and e.get("user") == REFRESH]
    assert any(e["folder"] == "INBOX" and e["copied"] == "1" for e in pulled), pulled
