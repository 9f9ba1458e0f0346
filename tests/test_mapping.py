"""Folder mapping (issue 5): special use (flagged by the old server, or
known by name in several languages), rename rules, exclusions, two old
folders never merged, a maximum message size — skipped messages logged and
counted, never silently dropped."""
import os

from ferrytest import corpus
from ferrytest.snapshot import snapshot

USER = "map"
# OLD flags one folder \Archive under a name no table knows
OLD_EXTRA = 'namespace inbox {\n  mailbox "Meine Ablage" {\n    special_use = \\Archive\n  }\n}\n'
NEW_EXTRA = """namespace inbox {
  mailbox Sent {
    special_use = \\Sent
  }
  mailbox Trash {
    special_use = \\Trash
  }
  mailbox Drafts {
    special_use = \\Drafts
  }
  mailbox Archive {
    special_use = \\Archive
  }
}
plugin {
  ferry_exclude = Junk*
  ferry_rename = ^Old/(.*)$ => Archive/\\1
  ferry_max_message_size = 200k
}
"""
CAPPED = "capped"  # ferry_max_folders=3 from userdb; OLD has 5 folders
SANDBOX_KWARGS = {"users": (USER, CAPPED), "old_extra": OLD_EXTRA, "new_extra": NEW_EXTRA,
                  "new_userdb_extra": {CAPPED: "userdb_ferry_max_folders=3"}}

# old name -> where it must end up on NEW (None: not migrated)
EXPECTED = {
    "INBOX": "INBOX",
    "Sent Items": "Sent",            # well-known English name
    "Gelöschte Objekte": "Trash",    # well-known German name
    "送信済みアイテム": None,         # also \Sent: Sent is taken -> kept as is
    "Meine Ablage": "Archive",       # the old server's SPECIAL-USE flag
    "Drafts": "Drafts",
    "Entwürfe": "Entwürfe",          # \Drafts too, but Drafts exists: not merged
    "Junk E-mail": None,             # excluded
    "Old/Projects/X": "Archive/Projects/X",  # rename rule
}


def test_folders_map_and_big_messages_are_counted(sandbox):
    folders = [corpus.Folder(name, 5000 + i, messages=[
        corpus.Message(corpus.simple_message("%s-%d" % (name, j), seed=51),
                       frozenset(), 1600000000 + j) for j in range(3)])
        for i, name in enumerate(EXPECTED)]
    big = folders[1].messages[1]
    big.body = big.body + (b"y" * 76 + b"\r\n") * 4000  # ~310 KB > 200k
    corpus.seed_old(sandbox, USER, corpus.Spec(folders))
    old = snapshot(sandbox, "old", USER)

    r = sandbox.doveadm("new", "ferry", "pull", "-u", USER)
    assert "failed" not in r.stdout, r.stdout + r.stderr
    new = snapshot(sandbox, "new", USER)
    expected = dict(EXPECTED)
    expected["送信済みアイテム"] = "送信済みアイテム"
    expected = {o: n for o, n in expected.items() if n is not None}
    assert sorted(f for f, v in new.folders.items() if v.selectable) == \
        sorted(expected.values())
    for old_name, new_name in expected.items():
        o, n = old.folders[old_name], new.folders[new_name]
        assert n.uidvalidity == o.uidvalidity, old_name
        msgs = dict(o.messages)
        if old_name == "Sent Items":  # the big one was not copied
            big_uid = [u for u, m in msgs.items() if m.size > 200 * 1024]
            assert len(big_uid) == 1
            del msgs[big_uid[0]]
        assert n.messages == msgs, old_name
    log = r.stderr
    assert "folder=Sent event=skipped old_uid=" in log  # named as on NEW
    assert "skipped=1" in log
    assert "event=skipped: excluded by Junk*" in log
    status = sandbox.doveadm("new", "ferry", "status", "-u", USER).stdout
    assert "Archive/Projects/X" in status


def test_more_old_folders_than_ferry_max_folders_is_refused_whole(sandbox):
    """An old server listing more folders than ferry_max_folders: the
    user's LIST is refused with the reason and no old folder is created."""
    folders = [corpus.Folder(name, 7000 + i, messages=[
        corpus.Message(corpus.simple_message(name, seed=52), frozenset(), 1600000000)])
        for i, name in enumerate(["INBOX", "A", "B", "C", "D"])]
    corpus.seed_old(sandbox, CAPPED, corpus.Spec(folders))

    conn = sandbox.imap("new", CAPPED)
    typ, data = conn.list()
    conn.logout()
    assert typ == "NO", data
    assert b"ferry_max_folders" in data[0] and b"more than 3" in data[0], data
    r = sandbox.doveadm("new", "ferry", "pull", "-u", CAPPED, check=False)
    assert r.returncode != 0 and "ferry_max_folders" in r.stderr, r.stdout + r.stderr
    maildir = os.path.join(sandbox.home("new", CAPPED), "Maildir")
    made = [d for d in os.listdir(maildir) if d.startswith(".") and
            os.path.isdir(os.path.join(maildir, d))] if os.path.isdir(maildir) else []
    assert made == [], made
