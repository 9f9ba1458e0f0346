"""imaptest (Dovecot's IMAP stress tester) against a never-migrated user
(issue 19): several clients log in to NEW at once for the user's first
login, then SELECT, FETCH, STORE, EXPUNGE and APPEND in INBOX for a while.
imaptest must report no errors (it checks what every client sees against
what the others did), and afterwards NEW holds every OLD message exactly
once, under its OLD UID.

Opt-in: imaptest is not packaged in Debian, so this runs only when a binary
is found (FERRY_IMAPTEST, else `imaptest` on PATH); docs/bench.md
("imaptest") says how to build one."""
import os
import re
import shutil
import subprocess

import pytest

from ferrytest import corpus
from ferrytest.sandbox import password
from ferrytest.snapshot import Snapshot, compare, duplicates, snapshot

IMAPTEST = os.environ.get("FERRY_IMAPTEST") or shutil.which("imaptest")
pytestmark = pytest.mark.skipif(
    not IMAPTEST, reason="imaptest is not packaged in Debian; see docs/bench.md (imaptest)")

USER = "stress"
SANDBOX_KWARGS = {"users": (USER,), "batch_size": 20}
SECS = 20
CLIENTS = 5
APPENDS = 20  # distinct messages imaptest APPENDs (none of them is on OLD)
# imaptest's target INBOX size: above OLD's, so it does not start by expunging
# all but its default 30, and some OLD messages are usually left to check
TARGET = 250
ERROR_LINE = re.compile(r"\b(Error|Panic|Fatal):")


def _write_mbox(path):
    with open(path, "wb") as f:
        for i in range(APPENDS):
            body = corpus.simple_message("imaptest-%d" % i, seed=19).replace(b"\r\n", b"\n")
            f.write(b"From imaptest@example.org Sat Jun  1 00:00:00 2024\n" + body + b"\n")


def _totals(out):
    """imaptest's final command counts, e.g. {'Sele': 667, 'Appe': 332}."""
    lines = out.splitlines()
    i = lines.index("Totals:")
    names, counts = lines[i + 1].split(), lines[i + 4].split()
    return dict(zip(names, map(int, counts)))


def test_imaptest_first_login_no_errors_every_old_message_once(sandbox):
    spec = corpus.small_spec(seed=19)
    corpus.seed_old(sandbox, USER, spec)
    old = snapshot(sandbox, "old", USER)
    assert old.count() == spec.count()
    mbox = os.path.join(sandbox.root, "imaptest.mbox")
    _write_mbox(mbox)
    users = os.path.join(sandbox.root, "imaptest.users")  # the password stays out of argv
    with open(os.open(users, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write("%s:%s\n" % (USER, password(USER)))
    log_from = sandbox.log_size("new")

    cmd = [IMAPTEST, "host=127.0.0.1", "port=%d" % sandbox.port("new"),
           # user= only because this imaptest insists on one; userfile wins
           "user=" + USER, "userfile=" + users, "mbox=" + mbox,
           "clients=%d" % CLIENTS, "secs=%d" % SECS, "msgs=%d" % TARGET, "seed=19", "no_pipelining"]
    run = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, timeout=SECS + 300)
    out = run.stdout
    with open(os.path.join(sandbox.root, "imaptest.out"), "w") as f:
        f.write(out)
    print(out[-2000:])
    errors = [l for l in out.splitlines() if ERROR_LINE.search(l)]
    assert run.returncode == 0 and not errors, errors[:20]
    totals = _totals(out)
    for cmd_name in ("Sele", "Fetc", "Stor", "Expu", "Appe"):
        assert totals.get(cmd_name, 0) > 0, totals  # the profile really ran

    new_errors = [l for l in sandbox.log_text("new", log_from).splitlines()
                  if ERROR_LINE.search(l)]
    assert not new_errors, new_errors[:20]

    new = snapshot(sandbox, "new", USER)
    # folders imaptest did not touch: exactly OLD's
    untouched_old, untouched_new = _without(old, "INBOX"), _without(new, "INBOX")
    assert compare(untouched_old, untouched_new) == []
    # INBOX: imaptest changed flags and expunged, but every message under an
    # OLD UID is OLD's message at that UID, and no OLD message came back
    # under a new UID
    o, n = old.folders["INBOX"], new.folders["INBOX"]
    assert n.uidvalidity == o.uidvalidity
    wrong = [uid for uid, m in n.messages.items() if uid < o.uidnext
             and (uid not in o.messages or (m.sha256, m.size, m.internaldate)
                  != (o.messages[uid].sha256, o.messages[uid].size,
                      o.messages[uid].internaldate))]
    assert wrong == []
    old_hashes = {m.sha256 for m in o.messages.values()}
    again = [uid for uid in _appended(n, o) if n.messages[uid].sha256 in old_hashes]
    assert again == []
    assert duplicates(new, old) == {}
    appended = len(_appended(n, o))
    print("OLD %d messages; NEW: untouched folders %d, INBOX %d of OLD's %d left"
          " after imaptest's expunges, %d appended" % (
              old.count(), untouched_new.count(), len(n.messages) - appended,
              len(o.messages), appended))


def _appended(n, o):
    """UIDs NEW gave to messages appended after the migration."""
    return [uid for uid in n.messages if uid >= o.uidnext]


def _without(snap, name):
    return Snapshot({k: v for k, v in snap.folders.items() if k != name},
                    set(snap.subscriptions))
