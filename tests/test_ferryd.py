"""ferryd + ferryctl (issue 3) against the sandbox's real Dovecot pair: NEW
serves the doveadm HTTP API and ferryd drives `ferry pull` through it.
Results are checked independently: OLD's own log (sessions, bodies fetched)
and an IMAP client on both servers (snapshot.compare)."""
import os
import re
import socket
import subprocess

import pytest

from ferrytest import corpus
from ferrytest.ferryd import TOKEN, Ferryd
from ferrytest.logs import peak_sessions
from ferrytest.sandbox import BUILD_DIR, MASTER_USER, wait_until
from ferrytest.snapshot import compare, duplicates, snapshot

BATCH = 20
PER_HOST = 2
WAVE_USERS = ["u%02d" % i for i in range(1, 51)]
BAD = "badpw"  # NEW's imapc logs in to OLD with a wrong password for this one
KILL_USERS = ["k%02d" % i for i in range(1, 7)]
# the whole module on each store backend (conftest.py)
FERRY_STORES = ("sqlite", "pgsql")
SANDBOX_KWARGS = {
    "users": WAVE_USERS + [BAD] + KILL_USERS,
    "batch_size": BATCH,
    "doveadm_http": True,
    # passwd-file userdb fields need the userdb_ prefix
    "new_userdb_extra": {BAD: "userdb_imapc_master_user= userdb_imapc_password=wrong"},
}


@pytest.fixture(scope="module")
def ferryd(sandbox):
    fd = Ferryd(sandbox, max_per_host=PER_HOST, max_concurrent=4, retry_limit=2)
    fd.start()
    yield fd
    if fd.alive():
        fd.kill()


def write_csv(sandbox, name, rows):
    path = os.path.join(sandbox.root, name)
    with open(path, "w") as f:
        f.write("user,old_login,new_login,endpoint,wave\n")
        for user, wave in rows:
            f.write("%s,%s,%s,127.0.0.1:%d,%s\n" % (user, user, user, sandbox.port("old"), wave))
    return path


def settled(fd, users):
    states = fd.users()
    return all(states[u]["state"] in ("done", "failed") and not states[u]["running"]
               for u in users)


def first_starts(fd):
    first = {}
    for i, e in enumerate(fd.events()):
        if e.get("event") == "pull-start" and e["user"] not in first:
            first[e["user"]] = i
    return first


def test_50_users_3_waves_per_host_limit_and_bad_password(sandbox, ferryd, old_log):
    for i, user in enumerate(WAVE_USERS + [BAD]):
        corpus.seed_old(sandbox, user, corpus.folder_spec("Bulk", n=16 + i % 7, seed=i, gaps=3))
    waves = {u: "w%d" % (i * 3 // len(WAVE_USERS) + 1) for i, u in enumerate(WAVE_USERS)}
    waves[BAD] = "w3"
    ferryd.ctl("wave", "create", "w1")
    ferryd.ctl("wave", "create", "w2", "--start-after", "2020-01-01T00:00")
    ferryd.ctl("wave", "create", "w3", "--window", "00:00-24:00")
    r = ferryd.ctl("import", write_csv(sandbox, "users.csv", sorted(waves.items())))
    assert "imported 51 users" in r.stdout
    assert {w["name"]: w["users"] for w in ferryd.status()["waves"]} == \
        {"w1": 17, "w2": 17, "w3": 17}

    old_log.mark()
    ferryd.ctl("start")
    wait_until(lambda: settled(ferryd, WAVE_USERS + [BAD]), 170, "every user done or failed")
    old_log.barrier()
    peak, detail = peak_sessions(old_log.text(), MASTER_USER)
    print("\nmax concurrent ferry sessions on OLD: %d (limit %d)" % (peak, PER_HOST))
    assert peak <= PER_HOST, "\n".join(detail)
    assert peak == PER_HOST  # the limit was reached: pulls did run in parallel

    users = ferryd.users()
    assert [u for u in WAVE_USERS if users[u]["state"] != "done"] == []
    # waves in order: every w1 user started before any w2 user, w2 before w3
    first = first_starts(ferryd)
    for a, b in (("w1", "w2"), ("w2", "w3")):
        assert max(first[u] for u in waves if waves[u] == a) < \
            min(first[u] for u in waves if waves[u] == b)

    # per folder, NEW equals OLD (independent IMAP client); ferryd's view too
    for user in WAVE_USERS:
        old = snapshot(sandbox, "old", user)
        new = snapshot(sandbox, "new", user)
        assert compare(old, new) == [], user
        assert duplicates(new, old) == {}
        folders = {f["name"]: f for f in ferryd.status(user=user)["users"][0]["folders"]}
        for name, f in old.folders.items():
            if f.selectable:
                assert folders[name]["state"] == "complete"
                assert folders[name]["messages"] == len(f.messages) == folders[name]["old_messages"]

    # the wrong old password: failed, with the reason, everywhere
    bad = users[BAD]
    assert bad["state"] == "failed" and bad["attempts"] == 2
    assert "Authentication failed" in bad["error"]
    text = ferryd.ctl("status").stdout
    line = [l for l in text.splitlines() if l.startswith(BAD + " ")]
    assert line and "failed" in line[0] and "Authentication failed" in line[0], text
    log = ferryd.ctl("log", "--user", BAD).stdout
    assert re.search(r"user-failed +user=badpw .*Authentication failed", log), log
    assert "pull-failed" in log
    assert [e["event"] for e in ferryd.log(user=BAD)].count("pull-start") == 2
    print(text)


def test_kill9_mid_run_resumes_without_recopying(sandbox, ferryd, old_log):
    total = 0
    for i, user in enumerate(KILL_USERS):
        spec = corpus.folder_spec("Bulk", n=150, seed=100 + i, gaps=10)
        corpus.seed_old(sandbox, user, spec)
        total += sum(len(f.kept()) for f in spec.folders)
    ferryd.ctl("import", write_csv(sandbox, "kill.csv", [(u, "kwave") for u in KILL_USERS]))
    old_log.mark()
    ferryd.ctl("start", "--wave", "kwave")

    def some_done():
        return sum(1 for e in ferryd.events() if e.get("event") == "user-done"
                   and e.get("user") in KILL_USERS)
    def in_flight():
        ev = ferryd.events()
        started = {e["user"] for e in ev if e.get("event") == "pull-start"
                   and e.get("user") in KILL_USERS}
        done = {e["user"] for e in ev if e.get("event") == "user-done"
                and e.get("user") in KILL_USERS}
        return started - done
    # a user done and the next one's pull started (its claim is written
    # before its pull-start line): the kill lands mid-run
    wait_until(lambda: some_done() and in_flight(), 120, "a first kwave user to finish")
    ferryd.kill()
    running = ferryd.db_running()
    done_before = {e["user"] for e in ferryd.events()
                   if e.get("event") == "user-done" and e.get("user") in KILL_USERS}
    print("\nkill -9 with %d users done, in flight: %s" % (len(done_before), sorted(running)))
    assert running and len(done_before) < len(KILL_USERS)  # really mid-run

    ferryd.start()
    wait_until(lambda: settled(ferryd, KILL_USERS), 150, "kwave users after the restart")
    users = ferryd.users()
    assert all(users[u]["state"] == "done" and users[u]["attempts"] == 0 for u in KILL_USERS)
    log = ferryd.log(wave="kwave")
    for user in KILL_USERS:
        events = [e["event"] for e in log if e["user"] == user]
        assert events.count("user-done") == 1, (user, events)
        if user in running:
            assert "pull-interrupted" in events
        if user in done_before:  # not pulled again after the restart
            assert events[-1] == "user-done"

    fetched = 0
    for user in KILL_USERS:
        old_log.settle(user)
        fetched += sum(old_log.body_counts(user))
    for user in KILL_USERS:  # after counting: the checker reads OLD too
        old = snapshot(sandbox, "old", user)
        new = snapshot(sandbox, "new", user)
        assert compare(old, new) == [] and duplicates(new, old) == {}
    refetched = fetched - total
    print("kill -9 ferryd: bodies fetched %d for %d messages, fetched twice %d "
          "(bound: %d pulls in flight x batch %d)" % (fetched, total, refetched,
                                                        PER_HOST, BATCH))
    assert 0 <= refetched <= PER_HOST * BATCH


def _state(fd):
    s = fd.status()
    s.pop("time")
    return s, len(fd.log())


def test_bad_input_is_refused_without_state_change(sandbox, ferryd):
    before = _state(ferryd)

    bad = os.path.join(sandbox.root, "bad.csv")
    with open(bad, "w") as f:
        f.write("user,endpoint,wave\nnew1,127.0.0.1,w1\nnew2,127.0.0.1:notaport,w1\n")
    r = ferryd.ctl("import", bad, check=False)
    assert r.returncode == 1 and "line 3: endpoint" in r.stderr and "nothing imported" in r.stderr
    with open(bad, "w") as f:
        f.write("user,endpoint\nnew1,h\nu01,h\n")  # u01 exists
    r = ferryctl_err(ferryd, "import", bad)
    assert "line 3: user \"u01\" already exists" in r
    with open(bad, "w") as f:
        f.write("name,host\nnew1,h\n")
    assert "line 1: unknown column \"name\"" in ferryctl_err(ferryd, "import", bad)

    assert "unknown user \"nosuch\"" in ferryctl_err(ferryd, "sync", "nosuch")
    assert "unknown user \"nosuch\"" in ferryctl_err(ferryd, "status", "nosuch")
    assert "unknown user \"nosuch\"" in ferryctl_err(ferryd, "wave", "add", "w1", "u02", "nosuch")
    assert "unknown wave \"nowave\"" in ferryctl_err(ferryd, "pause", "--wave", "nowave")
    assert "already exists" in ferryctl_err(ferryd, "wave", "create", "w1")
    assert "not HH:MM-HH:MM" in ferryctl_err(ferryd, "wave", "create", "w9", "--window", "9-5")

    code, j = ferryd.api("GET", "/v1/status", token=None)
    assert code == 401 and "missing API token" in j["error"]
    code, j = ferryd.api("GET", "/v1/status", token="wrong")
    assert code == 401 and j["error"] == "wrong API token"
    code, j = ferryd.api("POST", "/v1/start", token=TOKEN[:-1])
    assert code == 401
    wrong = os.path.join(sandbox.root, "wrong.token")
    with open(wrong, "w") as f:
        f.write("not-the-token\n")
    r = subprocess.run([os.path.join(BUILD_DIR, "ferryctl"), "--api", "127.0.0.1:%d" % ferryd.port,
                        "--token-file", wrong, "start"], capture_output=True, text=True)
    assert r.returncode == 1 and "wrong API token" in r.stderr

    code, j = ferryd.api("GET", "/v1/nothing")
    assert code == 404 and "unknown endpoint /v1/nothing" in j["error"]
    code, j = ferryd.api("GET", "/v1/start")
    assert code == 405 and "method not allowed" in j["error"]
    code, j = ferryd.api("POST", "/v1/sync", raw=b"{not json")
    assert code == 400 and "JSON" in j["error"]
    assert oversized_post(ferryd, 2000000).startswith(b"HTTP/1.1 413 ")  # before the body
    big = os.path.join(sandbox.root, "big.csv")
    with open(big, "w") as f:
        f.write("user,endpoint\n" + "".join("big%d,h\n" % i for i in range(150000)))
    assert "too large" in ferryctl_err(ferryd, "import", big)

    # invalid configuration: refused at start, kept out at reload
    badconf = ferryd.write_conf(os.path.join(ferryd.dir, "bad.conf"), max_per_host="many")
    r = subprocess.run([os.path.join(BUILD_DIR, "ferryd"), "-c", badconf, "-t"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "bad.conf" in r.stderr and "max_per_host" in r.stderr
    r = subprocess.run([os.path.join(BUILD_DIR, "ferryd"), "-c", ferryd.conf_path, "-t"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with open(ferryd.conf_path) as f:
        good = f.read()
    with open(ferryd.conf_path, "a") as f:
        f.write("no_such_setting = 1\n")
    ferryd.hup()
    wait_until(lambda: any(e.get("event") == "reload-failed" for e in ferryd.events()), 10,
               "reload-failed")
    with open(ferryd.conf_path, "w") as f:
        f.write(good)
    ferryd.hup()
    wait_until(lambda: any(e.get("event") == "reloaded" for e in ferryd.events()), 10,
               "reloaded")

    assert ferryd.alive()
    assert _state(ferryd) == before
    # credentials never reach ferryd's log or output
    text = open(ferryd.log_path).read() + ferryd.output()
    for secret in (TOKEN, sandbox.doveadm_api_key, sandbox.master_password):
        assert secret not in text


def oversized_post(fd, length):
    """Announces a body of `length` bytes, sends a little: ferryd must answer
    413 from the headers alone."""
    with socket.create_connection(("127.0.0.1", fd.port), timeout=10) as s:
        s.sendall(b"POST /v1/import HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                  b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n{\"csv\": \""
                  % (TOKEN.encode(), length))
        return s.recv(4096)


def ferryctl_err(fd, *args):
    r = fd.ctl(*args, check=False)
    assert r.returncode == 1, (args, r.stdout, r.stderr)
    return r.stderr


def test_pause_resume_sync_and_sigterm(sandbox, ferryd):
    ferryd.ctl("pause")
    assert ferryd.status()["paused"] is True
    ferryd.ctl("sync", "u05")  # jumps the queue, but everything is paused
    assert ferryd.users()["u05"]["sync_now"] is True
    ferryd.ctl("resume")
    wait_until(lambda: ferryd.users()["u05"]["state"] == "done" and
               not ferryd.users()["u05"]["sync_now"], 30, "u05 synced again")
    ferryd.ctl("pause", "--wave", "w1")
    assert [w for w in ferryd.status()["waves"] if w["name"] == "w1"][0]["paused"]
    ferryd.ctl("resume", "--wave", "w1")
    out = ferryd.ctl("status", "--json").stdout
    assert '"states"' in out
    assert ferryd.stop() == 0
    events = [e["event"] for e in ferryd.events()]
    assert events[-2:] == ["draining", "stopped"] or events[-3:-1] == ["draining", "drained"]
