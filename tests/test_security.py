"""Security checks of a ferryd run (issue 8; docs/security.md):

  - no credential (OLD's master password, the doveadm API key, ferryd's
    admin token, a CSV password) in any log, error output, API answer, or
    /proc/<pid>/cmdline of any process while ferryd migrates;
  - files ferryd creates are 0600 (directories 0700);
  - the admin API refuses a missing or wrong token;
  - CSV passwords are stored encrypted: not in the SQLite files in clear."""
import glob
import os
import stat
import threading

import pytest

from ferrytest import corpus
from ferrytest.ferryd import TOKEN, Ferryd
from ferrytest.sandbox import password, wait_until

USERS = ["sec1", "sec2"]
# the real OLD/NEW password of sec1 (ferryd verifies with it)
CSV_PASSWORD = password("sec1")
SECRET_KEY = "ferry-test-secret-key-material-0123456789"
SANDBOX_KWARGS = {"users": USERS, "batch_size": 10, "doveadm_http": True}


class CmdlineWatch(threading.Thread):
    """Reads every process's cmdline until stopped; remembers any secret."""

    def __init__(self, secrets):
        super().__init__(daemon=True)
        self.secrets = [s.encode() for s in secrets]
        self.found = []
        self.samples = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            for e in os.listdir("/proc"):
                if not e.isdigit():
                    continue
                try:
                    with open("/proc/%s/cmdline" % e, "rb") as f:
                        text = f.read()
                except OSError:
                    continue
                for s in self.secrets:
                    if s in text:
                        self.found.append((int(e), text.replace(b"\0", b" ")[:200]))
            self.samples += 1
            self.stop.wait(0.05)


@pytest.fixture(scope="module")
def run(sandbox):
    """A ferryd run: import (one user with a CSV password), start, done."""
    for u in USERS:
        corpus.seed_old(sandbox, u, corpus.folder_spec("Box", n=30, seed=u, gaps=3))
    fd = Ferryd(sandbox, secret_key_file="", new_imap="127.0.0.1:%d" % sandbox.port("new"),
                new_tls="none")
    key = fd.path("secret.key")
    with open(key, "w") as f:
        f.write(SECRET_KEY + "\n")
    os.chmod(key, 0o600)
    fd.settings["secret_key_file"] = key
    fd.write_conf()
    secrets = [sandbox.master_password, sandbox.doveadm_api_key, TOKEN, CSV_PASSWORD,
               SECRET_KEY]
    watch = CmdlineWatch(secrets)
    watch.start()
    fd.start()
    try:
        csv = os.path.join(sandbox.root, "sec.csv")
        with open(csv, "w") as f:
            f.write("user,endpoint,tls,auth,wave,password\n")
            f.write("sec1,127.0.0.1:%d,none,password,sw,%s\n"
                    % (sandbox.port("old"), CSV_PASSWORD))
            f.write("sec2,127.0.0.1:%d,none,master,sw,\n" % sandbox.port("old"))
        outputs = [fd.ctl("import", csv)]
        outputs.append(fd.ctl("start", "--wave", "sw"))
        wait_until(lambda: all(fd.users()[u]["state"] in ("done", "verified", "failed") and
                               not fd.users()[u]["running"] for u in USERS), 120,
                   "both users migrated")
        outputs += [fd.ctl("status"), fd.ctl("log", "--user", "sec1")]
        answers = [fd.api("GET", "/v1/status"), fd.api("GET", "/v1/log"),
                   fd.api("GET", "/v1/status", token="wrong-" + TOKEN),
                   fd.api("GET", "/v1/status", token=None),
                   fd.api("POST", "/v1/import", {"csv": "user,endpoint,password\nx,h:1,"
                                                        + CSV_PASSWORD + ",extra\n"})]
        fd.hup()
        yield dict(fd=fd, watch=watch, secrets=secrets, outputs=outputs, answers=answers,
                   users=fd.users())
    finally:
        watch.stop.set()
        watch.join(5)
        if fd.alive():
            fd.stop()


def test_users_migrated(run):
    got = {u: (run["users"][u]["state"], run["users"][u]["error"]) for u in USERS}
    # sec1 has credentials for both servers (its CSV password): verified
    assert got == {"sec1": ("verified", ""), "sec2": ("done", "")}


def test_no_secret_in_any_cmdline(run):
    assert run["watch"].samples > 3
    assert run["watch"].found == []


def test_no_secret_in_logs_outputs_or_answers(sandbox, run):
    fd = run["fd"]
    texts = {}
    for p in [fd.log_path, fd.out_path, sandbox.log_path("new"), sandbox.log_path("old")]:
        with open(p, "rb") as f:
            texts[p] = f.read()
    for i, r in enumerate(run["outputs"]):
        texts["ferryctl %d" % i] = (r.stdout + r.stderr).encode()
    for i, (code, body) in enumerate(run["answers"]):
        texts["answer %d (%d)" % (i, code)] = repr(body).encode()
    leaks = [(name, s) for name, t in texts.items() for s in run["secrets"]
             if s.encode() in t]
    assert leaks == []


def test_files_created_by_ferryd_are_private(run):
    fd = run["fd"]
    mine = {fd.token_file, fd.key_file, fd.conf_path, fd.out_path, fd.path("secret.key")}
    created = [p for p in glob.glob(os.path.join(fd.dir, "*")) if p not in mine]
    assert fd.db_path in created and fd.log_path in created
    loose = {p: oct(stat.S_IMODE(os.stat(p).st_mode)) for p in created
             if stat.S_IMODE(os.stat(p).st_mode) & 0o077}
    assert loose == {}


def test_admin_api_refuses_wrong_or_missing_token(run):
    (c_wrong, b_wrong), (c_none, b_none) = run["answers"][2], run["answers"][3]
    assert c_wrong == 401 and "wrong API token" in b_wrong["error"]
    assert c_none == 401 and "missing API token" in b_none["error"]


def test_csv_password_encrypted_at_rest(run):
    fd = run["fd"]
    blobs = b""
    for p in glob.glob(fd.db_path + "*"):
        with open(p, "rb") as f:
            blobs += f.read()
    assert blobs, "no state database"
    assert CSV_PASSWORD.encode() not in blobs
    assert SECRET_KEY.encode() not in blobs
    import sqlite3
    db = sqlite3.connect("file:%s?mode=ro" % fd.db_path, uri=True)
    try:
        cols = [r[1] for r in db.execute("PRAGMA table_info(users)")]
        enc_col = next(c for c in cols if "pass" in c)
        (enc,) = db.execute("SELECT %s FROM users WHERE name='sec1'" % enc_col).fetchone()
        (none,) = db.execute("SELECT %s FROM users WHERE name='sec2'" % enc_col).fetchone()
    finally:
        db.close()
    assert enc and CSV_PASSWORD not in enc and len(enc) >= 40  # base64(nonce|ct|tag)
    assert not none
