"""ferryd's preflight and verification (issue 4 wired into issue 3): real
OLD/NEW Dovecot, real ferryd; the runs are ferry-imapcheck children with
master logins on both servers (credentials from 0600 files, on a pipe).

- users migrate, are verified automatically when their pulls complete and
  end `verified`;
- a flag changed on NEW (imaplib) makes `ferryctl verify` fail, naming the
  folder and UID in the report, in the user's error and in `ferryctl log`;
- `ferryctl preflight --wave W` stores and shows a report per user."""
import imaplib
import json
import os
import re

import pytest

from ferrytest import corpus
from ferrytest.ferryd import Ferryd, master_password_file
from ferrytest.sandbox import MASTER_PASSWORD, MASTER_USER, password, wait_until

USERS = ["v1", "v2", "v3"]
WAVE = "vw"
# the whole module on each store backend (conftest.py)
FERRY_STORES = ("sqlite", "pgsql")
SANDBOX_KWARGS = {"users": USERS, "batch_size": 20, "doveadm_http": True}


@pytest.fixture(scope="module")
def ferryd(sandbox):
    secret = master_password_file(sandbox)
    fd = Ferryd(sandbox, name="ferryd-verify", max_per_host=2, max_concurrent=4,
                old_master_user=MASTER_USER, old_master_password_file=secret,
                new_master_user=MASTER_USER, new_master_password_file=secret,
                new_imap="127.0.0.1:%d" % sandbox.port("new"), verify_sample=1,
                check_timeout=60)
    fd.start()
    yield fd
    if fd.alive():
        # SIGTERM, not kill -9: under FERRY_VALGRIND the exit runs the leak check
        rc = fd.stop()
        assert rc == 0, "ferryd exited with %s" % rc


def no_secret_leaked(fd):
    text = fd.output()
    with open(fd.log_path) as f:
        text += f.read()
    assert MASTER_PASSWORD not in text
    for u in USERS:
        assert password(u) not in text


def test_pulls_then_automatic_verification(sandbox, ferryd):
    for i, user in enumerate(USERS):
        corpus.seed_old(sandbox, user, corpus.folder_spec("Bulk", n=12 + i, seed=40 + i, gaps=2))
    ferryd.import_users(USERS, WAVE)
    ferryd.ctl("start", "--wave", WAVE)
    wait_until(lambda: ferryd.settled(USERS), 50, "users pulled and verified")
    users = ferryd.users()
    assert {u: users[u]["state"] for u in USERS} == {u: "verified" for u in USERS}, users
    events = ferryd.events()
    for u in USERS:
        ev = [e for e in events if e.get("user") == u]
        names = [e["event"] for e in ev]
        assert "pulls-complete" in names and "user-done" not in names, names
        assert [e["result"] for e in ev if e["event"] == "verify"] == ["pass"]
        st = ferryd.status(user=u)["users"][0]
        assert st["verify"]["result"] == "pass"
    out = ferryd.ctl("status", "--once", "v2").stdout
    assert "verify: pass" in out, out
    shown = ferryd.ctl("verify", "v2", "--show", "--json").stdout
    rep = json.loads(shown)
    assert rep["state"] == "done" and rep["result"] == "pass" and rep["after_pull"] is True
    assert rep["report"]["result"] == "pass"
    assert {f["name"] for f in rep["report"]["folders"]} >= {"INBOX", "Bulk"}
    assert sum(f["bodies_compared"] for f in rep["report"]["folders"]) == 13  # all bodies
    no_secret_leaked(ferryd)


def test_changed_flag_on_new_fails_verify(sandbox, ferryd):
    user = "v1"
    imap = imaplib.IMAP4("127.0.0.1", sandbox.port("new"))
    try:
        imap.login(user, password(user))
        typ, _ = imap.select("Bulk")
        assert typ == "OK"
        typ, data = imap.uid("FETCH", "1:*", "(UID FLAGS)")
        assert typ == "OK" and data[0]
        first = data[0].decode()
        uid = int(re.search(r"UID (\d+)", first).group(1))
        op = "-FLAGS" if "\\Flagged" in first else "+FLAGS"
        typ, _ = imap.uid("STORE", str(uid), op, "(\\Flagged)")
        assert typ == "OK"
        imap.logout()
    finally:
        try:
            imap.shutdown()
        except OSError:
            pass
    r = ferryd.ctl("verify", user, check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Bulk" in r.stdout and str(uid) in r.stdout and "FAIL" in r.stdout.upper(), r.stdout
    rep = json.loads(ferryd.ctl("verify", user, "--show", "--json", check=False).stdout)
    assert rep["result"] == "fail"
    bulk = [f for f in rep["report"]["folders"] if f["name"] == "Bulk"][0]
    assert any(d.get("uid") == uid and d.get("field") == "flags" for d in bulk["differences"])
    u = ferryd.users()[user]
    assert u["state"] == "failed" and "Bulk" in u["error"] and str(uid) in u["error"], u
    log = ferryd.ctl("log", "--user", user).stdout
    assert re.search(r'verify-diff +user=v1 folder="Bulk" .*kind=flags uid=%d' % uid, log), log
    diff = [e for e in ferryd.events() if e.get("event") == "verify-diff"]
    assert [(e["user"], e["folder"], e["kind"], e["uid"]) for e in diff] == \
        [(user, "Bulk", "flags", str(uid))]
    # the others are untouched
    assert ferryd.users()["v2"]["state"] == "verified"
    no_secret_leaked(ferryd)


def test_preflight_wave_stores_and_shows_reports(sandbox, ferryd):
    r = ferryd.ctl("preflight", "--wave", WAVE)
    for u in USERS:
        assert "preflight %s: PASS" % u in r.stdout, r.stdout
    events = [e for e in ferryd.events() if e.get("event") == "preflight"]
    assert sorted((e["user"], e["result"]) for e in events) == [(u, "pass") for u in USERS]
    for u, n in zip(USERS, (12, 13, 14)):
        rep = json.loads(ferryd.ctl("preflight", u, "--show", "--json").stdout)
        assert rep["state"] == "done" and rep["result"] == "pass"
        assert rep["report"]["total"]["messages"] == n
        assert rep["report"]["new"]["login"] is True
    # an unknown wave or user: clear errors
    r = ferryd.ctl("preflight", "--wave", "nope", check=False)
    assert r.returncode == 1 and "unknown wave" in r.stderr
    r = ferryctl_verify_unknown = ferryd.ctl("verify", "nobody", check=False)
    assert ferryctl_verify_unknown.returncode == 1 and "unknown user" in r.stderr
    no_secret_leaked(ferryd)
