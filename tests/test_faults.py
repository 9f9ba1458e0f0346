"""Races, crashes and a dead old server (issue 2). After each: the folder
is complete, equal to OLD through an independent client, 0 duplicates."""
import os
import random
import signal
import subprocess
import time

import pytest

from ferrytest import corpus
from ferrytest.sandbox import wait_until
from ferrytest.snapshot import compare, duplicates, snapshot

BATCH = 100
SANDBOX_KWARGS = {"users": ("race1", "race2", "crash1", "crash2", "crash3", "crash4",
                            "down", "silent", "par1"),
                  "batch_size": BATCH,
                  # per-user imapc override from userdb: one connect attempt
                  "new_userdb_extra": {"silent": "userdb_imapc_connection_retry_count=0 "
                                                 "userdb_ferry_old_connect_timeout=3"}}
# connect + greeting of the old server for "silent" (imapc's own: a fixed 30 s)
OLD_CONNECT_TIMEOUT = 3


def _local_files(sandbox, user, folder):
    """Mail files of a NEW maildir++ folder (committed or being written)."""
    d = os.path.join(sandbox.home("new", user), "Maildir", "." + folder)
    n = 0
    for sub in ("cur", "new"):
        try:
            n += len(os.listdir(os.path.join(d, sub)))
        except FileNotFoundError:
            pass
    return n


def _doveadm_pull(sandbox, user, folder):
    return subprocess.Popen(sandbox.doveadm_cmd("new", "ferry", "pull", "-u", user,
                                                "-m", folder),
                            env=sandbox.doveadm_env("new"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _assert_equal(sandbox, user):
    old = snapshot(sandbox, "old", user)
    new = snapshot(sandbox, "new", user)
    assert compare(old, new) == []
    assert duplicates(new, old) == {}
    return old


@pytest.mark.parametrize("user, lazy_first", [("race1", False), ("race2", True)])
def test_lazy_select_races_bulk_pull(sandbox, user, lazy_first):
    spec = corpus.folder_spec("Bulk", n=3000, seed=10)
    corpus.seed_old(sandbox, user, spec)
    conn = sandbox.imap("new", user, timeout=600)
    conn.list()  # the folder tree, so that both race for the messages only
    if lazy_first:
        conn.send(b"r1 SELECT Bulk\r\n")
        wait_until(lambda: _local_files(sandbox, user, "Bulk") > 0, 60, "lazy pull to start")
        proc = _doveadm_pull(sandbox, user, "Bulk")
    else:
        proc = _doveadm_pull(sandbox, user, "Bulk")
        wait_until(lambda: _local_files(sandbox, user, "Bulk") > 0, 60, "bulk pull to start")
        conn.send(b"r1 SELECT Bulk\r\n")
    # both are now at work on the same folder
    assert _local_files(sandbox, user, "Bulk") < 3000
    while True:
        line = conn.readline()
        assert line, "connection closed"
        if line.startswith(b"r1 "):
            break
    assert line.startswith(b"r1 OK"), line
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    conn.logout()
    old = _assert_equal(sandbox, user)
    assert len(old.folders["Bulk"].messages) == 3000


def _assert_refetch_bound(sandbox, user, what, fetched, refetched, folder_size):
    """At most one batch is fetched twice — unless Dovecot's maildir
    renumbered the files of the commit the kill interrupted (files moved in
    before dovecot-uidlist was written): then Ferry detects it and copies
    the never-shown folder again (event=recopy), rather than let a UID name
    another message."""
    recopied = "event=recopy" in sandbox.log_text("new")
    print("\n%s: bodies fetched %d, fetched twice %d (batch %d)%s"
          % (what, fetched, refetched, BATCH,
             ", folder copied again after renumbering" if recopied else ""))
    assert 0 <= refetched <= (folder_size + BATCH if recopied else BATCH)


def _kill_when_committed(sandbox, user, pid, batches):
    wait_until(lambda: _local_files(sandbox, user, "Bulk") >= batches * BATCH + BATCH // 2,
               120, "%d batches to be copied" % batches)
    os.kill(pid, signal.SIGKILL)


def test_kill_doveadm_mid_folder_then_access(sandbox, old_log):
    spec = corpus.folder_spec("Bulk", n=3000, seed=11)
    corpus.seed_old(sandbox, "crash1", spec)
    old_log.mark()
    proc = _doveadm_pull(sandbox, "crash1", "Bulk")
    _kill_when_committed(sandbox, "crash1", proc.pid, 5)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert _local_files(sandbox, "crash1", "Bulk") < 3000  # killed mid-folder

    conn = sandbox.imap("new", "crash1", timeout=600)
    assert conn.select("Bulk")[0] == "OK"
    conn.logout()
    old_log.settle("crash1")
    fetched = sum(old_log.body_counts("crash1"))  # before the checker reads OLD
    old = _assert_equal(sandbox, "crash1")
    refetched = fetched - len(old.folders["Bulk"].messages)
    _assert_refetch_bound(sandbox, "crash1", "kill -9 doveadm", fetched, refetched,
                          len(old.folders["Bulk"].messages))


def test_kill_imap_mid_lazy_pull_then_access(sandbox, old_log):
    spec = corpus.folder_spec("Bulk", n=3000, seed=12)
    corpus.seed_old(sandbox, "crash2", spec)
    conn = sandbox.imap("new", "crash2", timeout=600)
    conn.list()
    old_log.mark()
    conn.send(b"k1 SELECT Bulk\r\n")
    # the imap process serving this session: the one logging for crash2
    new_log = sandbox.log_text("new")
    pids = {int(p) for p in __import__("re").findall(r"imap\(crash2\)<(\d+)>", new_log)}
    assert len(pids) == 1, pids
    _kill_when_committed(sandbox, "crash2", pids.pop(), 3)
    while True:  # progress lines, then the end: the server side is gone
        line = conn.readline()
        if not line:
            break
        assert line.startswith(b"* OK Migrating Bulk"), line
    conn.shutdown()

    conn = sandbox.imap("new", "crash2", timeout=600)
    assert conn.select("Bulk")[0] == "OK"
    conn.logout()
    old_log.settle("crash2")
    fetched = sum(old_log.body_counts("crash2"))  # before the checker reads OLD
    old = _assert_equal(sandbox, "crash2")
    refetched = fetched - len(old.folders["Bulk"].messages)
    _assert_refetch_bound(sandbox, "crash2", "kill -9 imap", fetched, refetched,
                          len(old.folders["Bulk"].messages))


def test_renumbered_tail_after_kill_is_rebuilt(sandbox, old_log):
    """The window Dovecot's maildir leaves in a commit (files moved in before
    dovecot-uidlist names them: the next sync numbers them afresh), made
    deterministic: after a kill -9 mid-folder a message that is not the old
    one is put at the next UID behind Ferry's back. The resumed copy must
    notice, keep the trusted part with its UIDs (local copy), fetch only the
    rest again, and end equal to OLD."""
    spec = corpus.folder_spec("Bulk", n=1000, seed=15)
    corpus.seed_old(sandbox, "crash3", spec)
    proc = _doveadm_pull(sandbox, "crash3", "Bulk")
    wait_until(lambda: _local_files(sandbox, "crash3", "Bulk") >= 2 * BATCH, 120,
               "2 batches to be copied")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert _local_files(sandbox, "crash3", "Bulk") < 1000
    sandbox.doveadm("new", "-o", "plugin/ferry=no", "save", "-u", "crash3", "-m", "Bulk",
                    input="Subject: not an old message\n\norphan\n")
    old_log.mark()
    conn = sandbox.imap("new", "crash3", timeout=600)
    assert conn.select("Bulk")[0] == "OK"
    conn.logout()
    old_log.settle("crash3")
    fetched = sum(old_log.body_counts("crash3"))
    log = sandbox.log_text("new")
    assert "event=crash-renumbered" in log and "event=rebuilt" in log
    old = _assert_equal(sandbox, "crash3")
    done_before = len(old.folders["Bulk"].messages) - fetched
    print("\nrenumbered tail: %d kept by local copy, %d fetched" % (done_before, fetched))
    assert done_before >= BATCH  # the trusted part was not fetched again


def test_storage_next_uid_past_the_resume_point_is_rebuilt(sandbox, old_log):
    """After a kill -9 inside maildir's commit, dovecot-uidlist can name the
    killed process's last batch while the index the resumed copy reads does
    not, with the index's next UID already past them: the resumed saves are
    then given fresh UIDs (seen in test_kill_parallel_pull_mid_folders,
    about one run in five: the folder completed with other bodies under the
    old UIDs). That window cannot be opened from outside; what it leads to
    can: the folder's next UID is raised past the resume point behind
    Ferry's back, after a kill between two batches (tmp/ holds the next
    batch's files, so no commit was in flight). The first batch that cannot
    keep its UIDs must stop the copy - no message saved under a fresh UID
    (event=renumbered) - the trusted part is kept with its UIDs, the rest
    copied again, and the folder ends equal to OLD. (When the kill lands
    inside a commit after all, the older rebuild for renumbered files comes
    first; seen once in CI.)"""
    user = "crash4"
    spec = corpus.folder_spec("Bulk", n=3000, seed=16)
    corpus.seed_old(sandbox, user, spec)
    proc = _doveadm_pull(sandbox, user, "Bulk")
    tmp = os.path.join(sandbox.home("new", user), "Maildir", ".Bulk", "tmp")
    wait_until(lambda: _local_files(sandbox, user, "Bulk") >= 2 * BATCH and
               len(os.listdir(tmp)) >= 10, 120, "2 batches copied, the next one being saved")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert _local_files(sandbox, user, "Bulk") < 3000
    st = sandbox.doveadm("new", "-o", "plugin/ferry=no", "mailbox", "status", "-u", user,
                         "uidnext", "Bulk").stdout
    uidnext = int(st.split("=")[1])
    old_next = int(sandbox.doveadm("old", "mailbox", "status", "-u", user, "uidnext",
                                   "Bulk").stdout.split("=")[1])
    # past the resume point but below OLD's UIDNEXT: at or above it, the
    # resumed copy finds "local UID at or above the old UIDNEXT" first and
    # copies the folder again (event=recopy, also safe) without reaching
    # the batch check this test is about (CI: the kill landed at 887 of 1051)
    raised = min(uidnext + 2 * BATCH, old_next - 1)
    assert raised > uidnext, (uidnext, old_next)
    sandbox.doveadm("new", "-o", "plugin/ferry=no", "mailbox", "update", "-u", user,
                    "--min-next-uid", str(raised), "Bulk")
    new_mark = sandbox.log_size("new")
    old_log.mark()
    conn = sandbox.imap("new", user, timeout=600)
    assert conn.select("Bulk")[0] == "OK"
    conn.logout()
    old_log.settle(user)
    fetched = sum(old_log.body_counts(user))
    log = sandbox.log_text("new", new_mark)
    assert "event=renumbered" not in log
    # a kill that landed inside a commit despite tmp/ holding files (the
    # batch was saved and its commit begun between the check and the kill)
    # leaves files the next sync numbers at the raised UID: the older
    # rebuild (event=crash-renumbered) comes first then; either way no
    # message is saved under a fresh UID
    assert ("could not keep their old UIDs" in log or
            "event=crash-renumbered" in log), log
    assert "event=rebuilt" in log, log
    old = _assert_equal(sandbox, user)
    done_before = len(old.folders["Bulk"].messages) - fetched
    print("\nnext UID raised: %d kept by local copy, %d fetched" % (done_before, fetched))
    assert done_before >= BATCH  # the trusted part was not fetched again


def test_old_server_down_then_back(sandbox):
    spec = corpus.small_spec(seed=13)
    corpus.seed_old(sandbox, "down", spec)
    old = snapshot(sandbox, "old", "down")
    sandbox.stop_old()
    try:
        conn = sandbox.imap("new", "down")
        t0 = time.monotonic()
        typ, data = conn.select("Sent")
        elapsed = time.monotonic() - t0
        assert typ == "NO", data
        text = data[0].decode()
        assert text.startswith("[UNAVAILABLE]") and "Sent" in text, text
        assert elapsed < 10  # imapc_cmd_timeout = 5s in the sandbox
        typ, data = conn.list()
        assert typ == "NO" and b"UNAVAILABLE" in data[0], data
        conn.logout()

        code, text = sandbox.lmtp_deliver("down", b"Subject: while OLD is down\r\n\r\nx\r\n")
        assert 400 <= code < 500, (code, text)
    finally:
        sandbox.start_old()

    code, text = sandbox.lmtp_deliver("down", b"Subject: retried\r\n\r\nx\r\n")
    assert code == 250, text
    new = snapshot(sandbox, "new", "down")
    inbox_old, inbox_new = old.folders["INBOX"], new.folders["INBOX"]
    fresh = set(inbox_new.messages) - set(inbox_old.messages)
    assert len(fresh) == 1 and min(fresh) >= inbox_old.uidnext
    for uid in fresh:
        del inbox_new.messages[uid]
    inbox_new.uidnext = inbox_old.uidnext
    assert compare(old, new) == []
    assert duplicates(new, old) == {}


def test_old_server_silent_then_back(sandbox):
    """OLD accepts connections but says nothing (its processes stopped with
    SIGSTOP): the command fails after ferry_old_connect_timeout (3 s for
    this user, one attempt), not imapc's fixed 30 s; then completes."""
    spec = corpus.folder_spec("Quiet", n=30, seed=14)
    corpus.seed_old(sandbox, "silent", spec)
    old = snapshot(sandbox, "old", "silent")
    pids = sorted(sandbox.pids("old"))
    try:  # (a process may end meanwhile: it was already on its way out)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                pass
        conn = sandbox.imap("new", "silent", timeout=120)
        t0 = time.monotonic()
        typ, data = conn.select("Quiet")
        elapsed = time.monotonic() - t0
        conn.logout()
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    print("\nsilent OLD: NO after %.1fs" % elapsed)
    assert typ == "NO" and data[0].startswith(b"[UNAVAILABLE]"), data
    # far below imapc's own 30 s even on a loaded machine
    assert OLD_CONNECT_TIMEOUT - 0.5 < elapsed < OLD_CONNECT_TIMEOUT + 12, elapsed
    new = snapshot(sandbox, "new", "silent")
    assert compare(old, new) == []


def _children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


def test_kill_parallel_pull_mid_folders(sandbox, old_log):
    """A whole-user pull with three workers (ferry_parallel=3), each inside
    its own folder, killed with -9: the workers die with it, and the next
    pull completes every folder equal to OLD, no duplicate, at most one
    batch per worker fetched twice."""
    user = "par1"
    rng = random.Random("par1/uv")
    uvs = rng.sample(range(1000000, 2000000000), 4)
    spec = corpus.Spec([corpus.Folder("INBOX", uvs[0])] + [
        corpus._folder(12, name, 1050, "plain", True, uv, expunge=50, attach=0)
        for name, uv in zip(("Alpha", "Beta", "Gamma"), uvs[1:])])
    corpus.seed_old(sandbox, user, spec)
    old_log.mark()
    new_mark = sandbox.log_size("new")
    proc = subprocess.Popen(sandbox.doveadm_cmd("new", "-o", "plugin/ferry_parallel=3",
                                                "ferry", "pull", "-u", user),
                            env=sandbox.doveadm_env("new"), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_until(lambda: all(_local_files(sandbox, user, f) >= 2 * BATCH
                           for f in ("Alpha", "Beta", "Gamma")),
               180, "every worker two batches into its folder")
    workers = _children(proc.pid)  # the pull itself is the third
    assert len(workers) == 2, workers
    proc.kill()
    out, err = proc.communicate(timeout=30)
    assert b"event=parallel workers=3" in err, err[-2000:]
    for pid in workers:  # PR_SET_PDEATHSIG: none outlives the pull
        wait_until(lambda: not os.path.exists("/proc/%d" % pid) or
                   open("/proc/%d/stat" % pid).read().split()[2] == "Z", 10,
                   "worker %d to die" % pid)
    assert any(_local_files(sandbox, user, f) < 1000 for f in ("Alpha", "Beta", "Gamma"))

    r = subprocess.run(sandbox.doveadm_cmd("new", "-o", "plugin/ferry_parallel=3",
                                           "ferry", "pull", "-u", user),
                       env=sandbox.doveadm_env("new"), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    old_log.settle(user)
    fetched = sum(old_log.body_counts(user))
    old = _assert_equal(sandbox, user)
    total = sum(len(f.messages) for f in old.folders.values())
    refetched = fetched - total
    # doveadm logs to its stderr, not to NEW's log
    recopied = "event=recopy" in r.stderr + sandbox.log_text("new", new_mark)
    print("\nparallel kill -9: bodies fetched %d, fetched twice %d (3 workers, batch %d)%s"
          % (fetched, refetched, BATCH, ", a folder copied again" if recopied else ""))
    assert 0 <= refetched <= (3 * BATCH + (1000 if recopied else 0))
