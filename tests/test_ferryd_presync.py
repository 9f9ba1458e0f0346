"""ferryd with users still in presync (userdb ferry_phase=presync): real
OLD/NEW Dovecot, real ferryd, master logins for verification.

- presync refresh: after the first pass and a green verification, mail
  delivered to OLD, a flag changed and a message expunged there are all on
  NEW after `ferryctl sync USER` (the new message with its old UID), though
  every folder was already `complete`; verification is green again and
  `ferryctl status` shows OLD's new counts;
- one answer to "old folder X is new folder Y": a user with a rename rule,
  an excluded folder, "Sent Items" and a separator change (OLD "." -> NEW
  "/") is verified green, because verification takes each folder's old
  name from `doveadm ferry status` (old_folder, excluded rows) instead of
  translating names itself."""
import json
import os

import pytest

from ferrytest import corpus
from ferrytest.ferryd import Ferryd, master_password_file
from ferrytest.imapwire import check
from ferrytest.sandbox import MASTER_PASSWORD, MASTER_USER, wait_until
from ferrytest.snapshot import compare, snapshot

REFRESH = "pr"
MAPPED = "mp"
USERS = [REFRESH, MAPPED]
WAVE = "pw"
NEW_EXTRA = """namespace inbox {
  mailbox Sent {
    special_use = \\Sent
  }
}
plugin {
  ferry_exclude = Junk*
  ferry_rename = ^Old/(.*)$ => Archive/\\1
}
"""
# the whole module on each store backend (conftest.py)
FERRY_STORES = ("sqlite", "pgsql")
SANDBOX_KWARGS = {"users": tuple(USERS), "doveadm_http": True, "new_extra": NEW_EXTRA,
                  "new_userdb_extra": {u: "userdb_ferry_phase=presync" for u in USERS}}
# MAPPED's old folders (spec names, "/" for OLD's ".") -> the name on NEW
MAPPED_FOLDERS = {
    "INBOX": "INBOX",
    "Sent Items": "Sent",                  # special use by its well-known name
    "Junk E-mail": None,                   # excluded
    "Old/Projects": "Archive/Projects",    # rename rule, then separators
    "Lists/Dev": "Lists/Dev",              # separators only: Lists.Dev on OLD
}


@pytest.fixture(scope="module")
def ferryd(sandbox):
    secret = master_password_file(sandbox)
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
    done = fd.settled(users)
    verified = [e for e in fd.events() if e.get("event") == "verify"]
    return len(verified) >= seen + len(users) and done


def test_first_pass_verified(sandbox, ferryd):
    corpus.seed_old(sandbox, REFRESH, corpus.folder_spec("Bulk", n=15, seed=61, gaps=2))
    corpus.seed_old(sandbox, MAPPED, corpus.Spec([
        corpus.Folder(name, 8100 + i, messages=[
            corpus.Message(corpus.simple_message("%s-%d" % (name, j), seed=63), frozenset(),
                           1600000000 + j) for j in range(3)])
        for i, name in enumerate(MAPPED_FOLDERS)]))
    ferryd.import_users(USERS, WAVE)
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


def test_mapped_names_verify_green(sandbox, ferryd):
    rows = json.loads(sandbox.doveadm("new", "-f", "json", "ferry", "status", "-u",
                                      MAPPED).stdout)
    got = {r["old_folder"]: (r["folder"] or None, r["state"]) for r in rows}
    want = {old.replace("/", "."): (new, "complete" if new else "excluded")
            for old, new in MAPPED_FOLDERS.items()}
    assert got == want, rows
    assert [r["reason"] for r in rows if r["state"] == "excluded"] == ["excluded by Junk*"]

    u = ferryd.users()[MAPPED]
    assert u["state"] == "verified", u
    rep = json.loads(ferryd.ctl("verify", MAPPED, "--show", "--json").stdout)["report"]
    assert rep["result"] == "pass", rep
    assert {f["old_name"]: f["name"] for f in rep["folders"]} == \
        {o.replace("/", "."): n for o, n in MAPPED_FOLDERS.items() if n}
    assert rep["folders_excluded"] == ["Junk E-mail"]
    assert rep["folders_missing_on_new"] == [] and rep["folders_skipped"] == []
    assert sum(f["bodies_compared"] for f in rep["folders"]) == 3 * 4
    # an admin's verify run takes the same names (asked again from NEW)
    r = ferryd.ctl("verify", MAPPED, check=False)
    assert r.returncode == 0 and "PASS" in r.stdout, r.stdout + r.stderr
    assert 'folder "Junk E-mail": excluded' in r.stdout, r.stdout
