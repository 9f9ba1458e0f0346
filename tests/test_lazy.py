"""Lazy migration by client access alone (issue 2): a full corpus copied on
first use with UIDVALIDITY, UIDs, flags, keywords, dates, sizes and bytes
kept; delivery before any pull; a finished user never contacts OLD again.
Every check reads both servers through an independent IMAP client."""
import glob
import os
import re
import socket
import subprocess

import pytest

from ferrytest import corpus
from ferrytest.sandbox import password
from ferrytest.snapshot import compare, duplicates, snapshot

SANDBOX_KWARGS = {"users": ("alice", "bob", "carol", "dave", "erin", "fran", "gail", "hank",
                            "ivan", "stay"),
                  "new_extra": "plugin {\n  ferry_progress_interval = 1\n}\n",
                  # per-user settings from userdb: this user is not migrated
                  "new_userdb_extra": {"stay": "userdb_ferry=no",
                                       # the SELECT copies the big message, not a
                                       # background worker forked at the login
                                       "erin": "userdb_ferry_background_idle_msecs=0",
                                       "fran": "userdb_ferry_background_idle_msecs=0",
                                       "gail": "userdb_ferry_background_idle_msecs=0"}}


def test_full_corpus_by_lazy_access(sandbox, old_log):
    spec = corpus.full_spec(seed=2)
    corpus.seed_old(sandbox, "alice", spec)
    old = snapshot(sandbox, "old", "alice")
    assert compare(corpus.expected_snapshot(spec), old) == []
    selectable = [f for f in old.folders.values() if f.selectable]
    assert old.count() >= 3000 and len(selectable) >= 12
    assert max(m.size for f in selectable for m in f.messages.values()) > 20 * 10**6

    old_log.mark()
    new = snapshot(sandbox, "new", "alice")  # LIST + EXAMINE each: the lazy path
    assert compare(old, new) == []
    assert duplicates(new, old) == {}
    old_log.settle("alice")
    # each body fetched once (large ones in ranges: count bytes, not fetches)
    assert sum(old_log.body_bytes("alice")) == sum(
        m.size for f in old.folders.values() for m in f.messages.values())

    # the second session: everything already there, OLD never contacted
    old_log.mark()
    again = snapshot(sandbox, "new", "alice")
    assert compare(old, again) == []
    old_log.settle("alice")
    assert old_log.logins("alice") == 0


def test_lmtp_delivery_before_any_pull(sandbox):
    spec = corpus.folder_spec("INBOX", n=400, seed=3)
    corpus.seed_old(sandbox, "bob", spec)
    old = snapshot(sandbox, "old", "bob")
    old_inbox = old.folders["INBOX"]

    code, text = sandbox.lmtp_deliver("bob", b"Subject: during the migration\r\n\r\nhi\r\n")
    assert code == 250, text

    new = snapshot(sandbox, "new", "bob")
    inbox = new.folders["INBOX"]
    assert inbox.uidvalidity == old_inbox.uidvalidity
    fresh = set(inbox.messages) - set(old_inbox.messages)
    assert len(fresh) == 1 and min(fresh) >= old_inbox.uidnext
    for uid, m in old_inbox.messages.items():
        assert inbox.messages[uid] == m, uid
    assert duplicates(new, old) == {}


def _resident_bytes(paths):
    """Bytes of these files in the page cache (util-linux fincore)."""
    out = subprocess.run(["fincore", "--bytes", "--raw", "--noheadings", "-o", "RES"]
                         + paths, capture_output=True, text=True, check=True).stdout
    return sum(int(x) for x in out.split())


def _mail_files(sandbox, user, folder):
    base = os.path.join(sandbox.home("new", user), "Maildir", "." + folder)
    return [os.path.join(base, d, f) for d in ("cur", "new")
            for f in os.listdir(os.path.join(base, d))]


@pytest.mark.parametrize("user,how", [("gail", "select"), ("hank", "doveadm")])
def test_copied_mail_leaves_the_page_cache(sandbox, user, how):
    """Once a batch is durable its mail files are dropped from the page cache
    (durable.c), both for a client's SELECT (syncfs in a helper thread) and
    for a bulk pull (in line): a migration's mail does not push the
    server's working set out of memory."""
    spec = corpus.folder_spec("Bulk", n=600, seed=31)
    corpus.seed_old(sandbox, user, spec)
    old = snapshot(sandbox, "old", user)
    if how == "select":
        conn = sandbox.imap("new", user)
        typ, data = conn.select("Bulk")
        assert typ == "OK" and int(data[0]) == 600, (typ, data)
        conn.logout()
    else:
        sandbox.doveadm("new", "ferry", "pull", "-u", user)
    files = _mail_files(sandbox, user, "Bulk")
    assert len(files) == 600
    size = sum(os.path.getsize(f) for f in files)
    assert _resident_bytes(files) == 0, "of %d bytes written" % size
    # the check sees cached pages: reading the files brings them back
    for f in files:
        with open(f, "rb") as fp:
            fp.read()
    assert _resident_bytes(files) >= size * 9 // 10
    assert compare(old, snapshot(sandbox, "new", user)) == []


def _uids_in(uidset, first, last):
    """Whether an IMAP UID set (1,3:5,...) names a UID in first..last."""
    for part in uidset.split(b","):
        lo, _, hi = part.partition(b":")
        lo, hi = int(lo), int(hi or lo)
        if min(lo, hi) <= last and max(lo, hi) >= first:
            return True
    return False


def test_next_batch_sizes_are_asked_for_ahead(sandbox):
    """Each batch's RFC822.SIZE command goes out while the batch before it
    is copied (old-sizes.c), not after it: on the wire to OLD (imapc's
    rawlog, per session), no body of batch k is asked for before the sizes
    of batch k+1. (Each batch used to begin with a sizes round trip that
    the copy waited for while OLD had nothing to do.)"""
    spec = corpus.folder_spec("Bulk", n=450, seed=32)
    corpus.seed_old(sandbox, "ivan", spec)
    old = snapshot(sandbox, "old", "ivan")
    rawlog = os.path.join(sandbox.root, "rawlog-ivan")
    os.makedirs(rawlog)
    os.chmod(rawlog, 0o777)  # written as the mail user
    sandbox.doveadm("new", "-o", "plugin/ferry_batch_size=100", "-o",
                    "imapc_rawlog_dir=" + rawlog, "ferry", "pull", "-u", "ivan")
    assert compare(old, snapshot(sandbox, "new", "ivan")) == []
    fetch = re.compile(rb"^\d+\.\d+ \S+ UID FETCH (\S+) \((.*)\)\r?$")
    checked = 0
    for out in glob.glob(os.path.join(rawlog, "*.out")):
        cmds = []  # (sizes range or None, uid set) in the order sent
        with open(out, "rb") as f:
            for line in f:
                m = fetch.match(line)
                if m and m.group(2) == b"RFC822.SIZE":
                    first, _, last = m.group(1).partition(b":")
                    cmds.append(((int(first), int(last or first)), m.group(1)))
                elif m and b"BODY.PEEK[]" in m.group(2):
                    cmds.append((None, m.group(1)))
        sizes = [(i, r) for i, (r, _) in enumerate(cmds) if r is not None]
        for (_, prev), (at, _) in zip(sizes, sizes[1:]):
            early = [u for r, u in cmds[:at] if r is None and _uids_in(u, *prev)]
            assert early == [], "bodies of UIDs %d:%d asked for before the next sizes: %s" % (
                prev[0], prev[1], early[:3])
            checked += 1
    # 450 messages in batches of 100: five sizes commands, four of them ahead
    assert checked >= 4, checked


def _raw_session(sandbox, user):
    s = socket.create_connection(("127.0.0.1", sandbox.port("new")), 60)
    f = s.makefile("rwb")
    f.readline()
    f.write(b'a LOGIN "%s" "%s"\r\n' % (user.encode(), password(user).encode()))
    f.flush()
    assert f.readline().startswith(b"a OK")
    return s, f


def test_long_pull_reports_progress_and_new_folders_stay_local(sandbox, old_log):
    spec = corpus.folder_spec("Big", n=3000, seed=4)
    corpus.seed_old(sandbox, "carol", spec)
    s, f = _raw_session(sandbox, "carol")
    f.write(b"b SELECT Big\r\n")
    f.flush()
    lines = []
    while True:
        line = f.readline()
        assert line, "connection closed"
        lines.append(line)
        if line.startswith(b"b "):
            break
    assert lines[-1].startswith(b"b OK"), lines[-1]
    progress = [l for l in lines if re.match(rb"\* OK Migrating Big: \d+ of 3000", l)]
    assert progress, b"".join(lines[:10])
    assert b"* %d EXISTS" % len(spec.folder("Big").kept()) in b"".join(lines)

    # a folder made on NEW is local from birth: no OLD look-up when used
    f.write(b"c CREATE Mine\r\n")
    f.flush()
    assert f.readline().startswith(b"c OK")
    old_log.mark()
    f.write(b"d SELECT Mine\r\nz LOGOUT\r\n")
    f.flush()
    while not f.readline().startswith(b"z "):
        pass
    s.close()
    old_log.settle("carol")
    assert old_log.logins("carol") == 0


def test_pop3_login_pulls_inbox(sandbox):
    import poplib
    spec = corpus.folder_spec("INBOX", n=50, seed=5)
    corpus.seed_old(sandbox, "dave", spec)
    pop = poplib.POP3("127.0.0.1", sandbox.port("new", "pop3"), timeout=60)
    pop.user("dave")
    pop.pass_(password("dave"))
    count, _ = pop.stat()
    new_uidls = pop.uidl()[1]
    pop.quit()
    assert count == len(spec.folder("INBOX").kept())
    # UIDs and UIDVALIDITY kept: the UIDLs (Dovecot's default %08Xu%08Xv)
    # are the old server's, so POP3 clients download nothing again
    pop = poplib.POP3("127.0.0.1", sandbox.port("old", "pop3"), timeout=60)
    pop.user("dave")
    pop.pass_(password("dave"))
    old_uidls = pop.uidl()[1]
    pop.quit()
    assert new_uidls == old_uidls and len(new_uidls) == count
    old = snapshot(sandbox, "old", "dave")
    assert compare(old, snapshot(sandbox, "new", "dave")) == []


@pytest.mark.skipif(os.environ.get("FERRY_ASAN") != "1", reason="FERRY_ASAN=1 only")
def test_sanitized_plugin_is_what_runs(sandbox):
    """Under FERRY_ASAN=1 the plugin that serves users is the sanitized one,
    with the ASan runtime loaded (so a clean run means something)."""
    conn = sandbox.imap("new", "dave")
    conn.select("INBOX")
    pids = [p for p, title in sandbox.processes("new").items() if "imap [dave" in title]
    assert pids
    with open("/proc/%d/maps" % pids[0]) as f:
        maps = f.read()
    conn.logout()
    assert "libasan.so" in maps
    assert os.path.join(sandbox.build_dir, "lib20_ferry_plugin.so") in maps


def _peak_rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1))


@pytest.mark.skipif(os.environ.get("FERRY_ASAN") == "1", reason=(
    "ASan's quarantine and shadow memory make RSS no measure of the heap; "
    "the plain run checks this"))
def test_big_message_streams_without_heap(sandbox):
    """A 20 MB message is copied through streams, not held in memory: the
    copying process stays far below the message size (plus its baseline).
    (Dovecot 2.3's imapc alone would hold ~3x the message: old-body.c.)"""
    spec = corpus.folder_spec("Big", n=3, seed=6)
    big = spec.folder("Big").messages[1]
    # a 20 MB attachment-like body: 76-character lines, as base64 has
    big.body = big.body + (b"x" * 76 + b"\r\n") * (20 * 2**20 // 78)
    corpus.seed_old(sandbox, "erin", spec)
    base = sandbox.imap("new", "erin")
    base.noop()
    pids = [p for p, t in sandbox.processes("new").items() if "imap [erin" in t]
    assert len(pids) == 1
    before = _peak_rss_kb(pids[0])
    assert base.select("Big")[0] == "OK"
    after = _peak_rss_kb(pids[0])
    base.logout()
    print("\nimap peak RSS: %d kB before, %d kB after copying a 20 MB message" % (before, after))
    assert after - before < 8 * 1024
    old = snapshot(sandbox, "old", "erin")
    assert compare(old, snapshot(sandbox, "new", "erin")) == []


@pytest.mark.skipif(os.environ.get("FERRY_ASAN") == "1", reason=(
    "ASan's quarantine and shadow memory make RSS no measure of the heap; "
    "the plain run checks this"))
def test_whole_fetches_ahead_are_bounded_in_bytes(sandbox):
    """Messages just under ferry_big_message_size (2 MiB) are fetched whole,
    and imapc holds every body of its prefetch window (50) in memory: 40
    messages of ~1.8 MB would be ~75 MB at once. Runs are cut so that a
    window holds at most 3 x ferry_big_message_size (pull.c): the copying
    process grows by far less than the folder."""
    spec = corpus.folder_spec("Medium", n=40, seed=8, gaps=0)
    for m in spec.folder("Medium").messages:
        m.body = m.body + (b"z" * 76 + b"\r\n") * (1800 * 1000 // 78)
        assert 1800 * 1000 < len(m.body) < 2 * 2**20
    corpus.seed_old(sandbox, "fran", spec)
    base = sandbox.imap("new", "fran")
    base.noop()
    pids = [p for p, t in sandbox.processes("new").items() if "imap [fran" in t]
    assert len(pids) == 1
    before = _peak_rss_kb(pids[0])
    assert base.select("Medium")[0] == "OK"
    after = _peak_rss_kb(pids[0])
    base.logout()
    print("\nimap peak RSS: %d kB before, %d kB after copying 40 messages of 1.8 MB"
          % (before, after))
    assert after - before < 20 * 1024
    old = snapshot(sandbox, "old", "fran")
    assert compare(old, snapshot(sandbox, "new", "fran")) == []


def test_userdb_can_leave_a_user_alone(sandbox, old_log):
    corpus.seed_old(sandbox, "stay", corpus.folder_spec("INBOX", n=20, seed=7))
    old_log.mark()
    conn = sandbox.imap("new", "stay")
    typ, data = conn.select("INBOX")
    conn.logout()
    assert (typ, data) == ("OK", [b"0"])
    old_log.settle("stay")
    assert old_log.logins("stay") == 0
