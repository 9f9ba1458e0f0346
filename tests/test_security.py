"""Security checks of a ferryd run (issue 8; docs/security.md):

  - no credential (OLD's master password, the doveadm API key, ferryd's
    admin token, a CSV password) in any log, error output, API answer, or
    /proc/<pid>/cmdline of any process while ferryd migrates;
  - files ferryd creates are 0600 (directories 0700);
  - the admin API refuses a missing or wrong token;
  - CSV passwords are stored encrypted: not in the SQLite files in clear;
  - started as root, ferryd serves as `user` (and refuses root without it);
  - secret files readable by group/other, or owned by a stranger, are refused;
  - ferryd --rekey moves every stored password to a new key, all or nothing."""
import base64
import glob
import hashlib
import os
import pwd
import sqlite3
import stat
import subprocess
import threading

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ferrytest import corpus
from ferrytest.ferryd import TOKEN, Ferryd
from ferrytest.sandbox import BUILD_DIR, password, wait_until

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
    """Nothing for others. The state database and its -wal/-shm: 0660 (the
    routing readers, members of ferryd's group, write -shm); the rest: 0640
    at most (umask 027)."""
    fd = run["fd"]
    mine = {fd.token_file, fd.key_file, fd.conf_path, fd.out_path, fd.path("secret.key")}
    created = [p for p in glob.glob(os.path.join(fd.dir, "*")) if p not in mine]
    assert fd.db_path in created and fd.log_path in created
    modes = {p: stat.S_IMODE(os.stat(p).st_mode) for p in created}
    db = {p for p in created if p.startswith(fd.db_path)}
    assert {p: oct(m) for p, m in modes.items() if p in db and m != 0o660} == {}
    assert {p: oct(m) for p, m in modes.items() if p not in db and m & 0o027} == {}


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
    # v2:KEYID:base64(nonce|ct|tag)
    assert enc and CSV_PASSWORD not in enc and len(enc) >= 40
    assert enc.startswith("v2:%s:" % key_id(SECRET_KEY))
    assert not none


# ---- privileges ---------------------------------------------------------------

RUN_USER = "ferrytest-ferryd"  # throwaway system account ferryd drops to


@pytest.fixture(scope="module")
def run_user():
    if os.geteuid() != 0:
        pytest.skip("needs root (CI runs as root)")
    try:
        return pwd.getpwnam(RUN_USER)
    except KeyError:
        pass
    r = subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", RUN_USER], capture_output=True, text=True)
    try:
        return pwd.getpwnam(RUN_USER)
    except KeyError:
        pytest.fail("useradd %s: %s" % (RUN_USER, r.stderr))


def write_secret(path, text, mode=0o600, uid=None):
    with open(path, "w") as f:
        f.write(text + "\n")
    os.chmod(path, mode)
    if uid is not None:
        os.chown(path, uid, -1)
    return path


def ferryd_run(fd, *args, conf=None):
    """ferryd -c CONF ARGS... to completion (not as a daemon)."""
    return subprocess.run([os.path.join(BUILD_DIR, "ferryd"), "-c", conf or fd.conf_path]
                          + list(args), capture_output=True, text=True, timeout=60,
                          env=fd.env(), stdin=subprocess.DEVNULL)


def proc_ids(pid):
    """{"Uid": [real, effective, saved, fs], "Gid": [...], "Groups": [...]}"""
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("Uid", "Gid", "Groups"):
                out[k] = [int(x) for x in v.split()]
    return out


def stored_password(db_path, user):
    db = sqlite3.connect("file:%s?mode=ro" % db_path, uri=True)
    try:
        return db.execute("SELECT password_enc FROM users WHERE name = ?", (user,)).fetchone()[0]
    finally:
        db.close()


def set_stored_password(db_path, user, value):
    db = sqlite3.connect(db_path)
    try:
        with db:
            db.execute("UPDATE users SET password_enc = ? WHERE name = ?", (value, user))
    finally:
        db.close()


def csv_with_passwords(sandbox, path, users):
    with open(path, "w") as f:
        f.write("user,endpoint,tls,auth,wave,password\n")
        for u in users:
            f.write("%s,127.0.0.1:%d,none,password,,%s\n" % (u, sandbox.port("old"), password(u)))
    return path


def test_root_start_drops_to_user(sandbox, run_user):
    """As root with user = ...: socket, secrets (root-owned) and files set up
    first, then ferryd serves as the user: API, imports, preflight (its child
    too), SIGHUP, all with the files ferryd created handed to the user."""
    name = "ferryd-drop"
    state_dir = os.path.join(sandbox.root, name, "state")  # ferryd creates it
    fd = Ferryd(sandbox, name=name, user=RUN_USER,
                state_db=os.path.join(state_dir, "ferryd.db"),
                secret_key_file=write_secret(os.path.join(sandbox.root, name + ".key"),
                                             SECRET_KEY),
                new_imap="127.0.0.1:%d" % sandbox.port("new"), new_tls="none")
    fd.settings.pop("allow_root", None)  # user alone is enough
    fd.write_conf()
    fd.db_path = fd.settings["state_db"]
    assert not os.path.exists(state_dir)
    fd.start()
    try:
        ids = proc_ids(fd.pid)
        assert ids["Uid"] == [run_user.pw_uid] * 4
        assert ids["Gid"] == [run_user.pw_gid] * 4
        assert 0 not in ids["Groups"]
        started = [e for e in fd.events() if e.get("event") == "started"]
        assert started and started[-1]["uid"] == str(run_user.pw_uid)

        # serves the API and writes its database as the user
        fd.ctl("import", csv_with_passwords(sandbox, os.path.join(fd.dir, "u.csv"), ["sec1"]))
        assert set(fd.users()) == {"sec1"}
        assert stored_password(fd.db_path, "sec1").startswith("v2:")
        # a preflight: the key read as root before the drop, the child as the user
        r = fd.ctl("preflight", "sec1", check=False, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        for p, mode in ((state_dir, 0o2770), (fd.db_path, 0o660),
                        (fd.db_path + "-wal", 0o660), (fd.db_path + "-shm", 0o660),
                        (fd.log_path, 0o640)):
            st = os.stat(p)
            assert ((p, st.st_uid, st.st_gid, oct(stat.S_IMODE(st.st_mode))) ==
                    (p, run_user.pw_uid, run_user.pw_gid, oct(mode)))

        # SIGHUP re-reads the secret files as the user: the packages' layout,
        # root-owned and readable by ferryd's group (root:ferry 0640)
        for p in (fd.token_file, fd.key_file, fd.settings["secret_key_file"]):
            os.chown(p, 0, run_user.pw_gid)
            os.chmod(p, 0o640)
        fd.hup()
        wait_until(lambda: any(e.get("event") == "reloaded" for e in fd.events()), 10,
                   "reloaded (log reopened as the user)")
        assert fd.api("GET", "/v1/health")[0] == 200
        assert ferryd_run(fd, "-t").returncode == 0
    finally:
        fd.stop()
    assert not [e for e in fd.events() if e.get("event") == "reload-failed"]


def test_root_without_user_refused(sandbox):
    fd = Ferryd(sandbox, name="ferryd-root")
    fd.settings.pop("allow_root", None)
    fd.write_conf()
    want = "ferryd: refusing to run as root: set user = ... in %s" % fd.conf_path
    for args in ((), ("-t",)):
        r = ferryd_run(fd, *args)
        assert r.returncode == 1 and want in r.stderr, (args, r.stderr)
    assert not os.path.exists(fd.db_path)
    # allow_root = yes is the explicit way to run as root
    r = ferryd_run(fd, "-t", conf=fd.write_conf(fd.path("root.conf"), allow_root="yes"))
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("setting", ["api_token_file", "doveadm_api_key_file",
                                     "secret_key_file"])
def test_loose_secret_file_refused(sandbox, run_user, setting):
    fd = Ferryd(sandbox, name="ferryd-mode-" + setting)
    text = SECRET_KEY if setting == "secret_key_file" else open(
        fd.settings[setting]).read().strip()
    outputs = ""
    # readable by group/other: refused at start and by -t
    loose = write_secret(fd.path("loose"), text, mode=0o644)
    conf = fd.write_conf(fd.path("loose.conf"), **{setting: loose})
    for args in ((), ("-t",)):
        r = ferryd_run(fd, *args, conf=conf)
        outputs += r.stdout + r.stderr
        assert r.returncode == 1
        assert "%s: mode 0644, owner uid 0" % loose in r.stderr and "chmod 600" in r.stderr
    # 0600 but owned by someone who is neither ferryd's user (root) nor root
    alien = write_secret(fd.path("alien"), text, uid=run_user.pw_uid)
    r = ferryd_run(fd, conf=fd.write_conf(fd.path("alien.conf"), **{setting: alien}))
    outputs += r.stdout + r.stderr
    assert r.returncode == 1
    assert "%s: mode 0600, owner uid %d" % (alien, run_user.pw_uid) in r.stderr
    # the same file is fine once ferryd runs as that user (checked before the
    # drop; the state directory does not exist yet: ferryd would create it)
    r = ferryd_run(fd, "-t", conf=fd.write_conf(fd.path("user.conf"), user=RUN_USER,
                                                state_db=fd.path("state-u/ferryd.db"),
                                                **{setting: alien}))
    outputs += r.stdout + r.stderr
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(fd.db_path)
    assert text not in outputs  # the secret itself is in no message


def test_config_check_names_paths_the_user_cannot_use(sandbox, run_user):
    """ferryd -t checks as ferryd's user what a start and a SIGHUP need: the
    log and state paths writable, the secret files readable, and says why."""
    fd = Ferryd(sandbox, name="ferryd-pathcheck")
    locked = fd.path("locked")  # root's, 0700: the user cannot enter it
    os.makedirs(locked, mode=0o700, exist_ok=True)
    open(os.path.join(locked, "ferryd.log"), "a").close()
    conf = fd.write_conf(fd.path("pc.conf"), user=RUN_USER,
                         log_file=os.path.join(locked, "ferryd.log"),
                         state_db=os.path.join(locked, "state.db"))
    r = ferryd_run(fd, "-t", conf=conf)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "is valid" not in r.stdout
    assert ("error: log_file %s/ferryd.log: not accessible by user %s: "
            "Permission denied" % (locked, RUN_USER)) in r.stderr, r.stderr
    assert ("error: state_db directory %s: not writable by user %s: Permission denied"
            % (locked, RUN_USER)) in r.stderr, r.stderr
    # root-only secrets: a start works (read before the drop), a reload would not
    assert "warning: api_token_file %s: not readable by user %s" % (
        fd.token_file, RUN_USER) in r.stderr and "SIGHUP reload will fail" in r.stderr
    # the same files given to the user's group: valid, no warning
    os.chown(locked, 0, run_user.pw_gid)
    os.chmod(locked, 0o770)
    os.chmod(os.path.join(locked, "ferryd.log"), 0o660)
    os.chown(os.path.join(locked, "ferryd.log"), 0, run_user.pw_gid)
    for p in (fd.token_file, fd.key_file):
        os.chown(p, 0, run_user.pw_gid)
        os.chmod(p, 0o640)
    r = ferryd_run(fd, "-t", conf=conf)
    assert r.returncode == 0 and "is valid" in r.stdout, r.stdout + r.stderr
    assert "warning" not in r.stderr, r.stderr


# ---- key rotation ---------------------------------------------------------------

KEY_A = "rotation-key-A-0123456789abcdef"
KEY_B = "rotation-key-B-fedcba9876543210"
KEY_C = "rotation-key-C-unrelated"
KEY_WRONG = "rotation-key-wrong"


def key_id(material):
    return hashlib.sha256(hashlib.sha256(material.encode()).digest()).hexdigest()[:8]


def seal(material, plaintext, legacy=False):
    """What ferryd stores (service/secret.h); legacy = before key ids."""
    nonce = os.urandom(12)
    prefix = "" if legacy else "v2:%s:" % key_id(material)
    ct = AESGCM(hashlib.sha256(material.encode()).digest()).encrypt(
        nonce, plaintext.encode(), prefix.encode() or None)
    return prefix + base64.b64encode(nonce + ct).decode()


def preflight_ok(fd, user):
    r = fd.ctl("preflight", user, check=False, timeout=120)
    return r.returncode == 0


def test_rekey(sandbox):
    fd = Ferryd(sandbox, name="ferryd-rekey",
                new_imap="127.0.0.1:%d" % sandbox.port("new"), new_tls="none")
    key_a = write_secret(fd.path("key-a"), KEY_A)
    key_b = write_secret(fd.path("key-b"), KEY_B)
    wrong = write_secret(fd.path("key-wrong"), KEY_WRONG)
    conf_a = fd.write_conf(fd.path("a.conf"), secret_key_file=key_a)
    conf_b = fd.write_conf(fd.path("b.conf"), secret_key_file=key_b)

    def start(conf):
        fd.conf_path = conf
        fd.start()

    # import under key A; a value from before key ids still decrypts
    start(conf_a)
    fd.ctl("import", csv_with_passwords(sandbox, fd.path("u.csv"), USERS))
    fd.stop()
    v_a = stored_password(fd.db_path, "sec1")
    assert v_a.startswith("v2:%s:" % key_id(KEY_A))
    set_stored_password(fd.db_path, "sec2", seal(KEY_A, password("sec2"), legacy=True))
    start(conf_a)
    assert preflight_ok(fd, "sec1") and preflight_ok(fd, "sec2")
    fd.stop()
    before = {u: stored_password(fd.db_path, u) for u in USERS}

    # a wrong old key changes nothing
    r = ferryd_run(fd, "--rekey", wrong, conf=conf_b)
    assert r.returncode == 1, r.stdout
    assert ("user sec1: the password was encrypted with key %s, neither the old key (%s)"
            " nor the current one (%s); nothing changed"
            % (key_id(KEY_A), key_id(KEY_WRONG), key_id(KEY_B))) in r.stderr
    assert {u: stored_password(fd.db_path, u) for u in USERS} == before
    # all or nothing: sec2 under a third key fails the run after sec1 was re-encrypted
    set_stored_password(fd.db_path, "sec2", seal(KEY_C, password("sec2")))
    r = ferryd_run(fd, "--rekey", key_a, conf=conf_b)
    assert r.returncode == 1 and "user sec2:" in r.stderr and "nothing changed" in r.stderr
    assert stored_password(fd.db_path, "sec1") == before["sec1"]
    set_stored_password(fd.db_path, "sec2", before["sec2"])
    # a world-readable old key file is refused like any secret file
    loose = write_secret(fd.path("key-a-loose"), KEY_A, mode=0o640)
    r = ferryd_run(fd, "--rekey", loose, conf=conf_b)
    assert r.returncode == 1 and "%s: mode 0640" % loose in r.stderr

    # A -> B
    r = ferryd_run(fd, "--rekey", key_a, conf=conf_b)
    assert r.returncode == 0, r.stderr
    assert "2 stored passwords re-encrypted from key %s" % key_id(KEY_A) in r.stdout
    after = {u: stored_password(fd.db_path, u) for u in USERS}
    for u in USERS:
        assert after[u] != before[u] and after[u].startswith("v2:%s:" % key_id(KEY_B))
    for out in (r.stdout, r.stderr):
        assert KEY_A not in out and KEY_B not in out
    # again: idempotent (nothing under A left)
    r = ferryd_run(fd, "--rekey", key_a, conf=conf_b)
    assert r.returncode == 0 and "0 stored passwords" in r.stdout and "2 already" in r.stdout
    assert {u: stored_password(fd.db_path, u) for u in USERS} == after

    # B decrypts them; A no longer does
    start(conf_b)
    assert preflight_ok(fd, "sec1") and preflight_ok(fd, "sec2")
    fd.stop()
    start(conf_a)
    r = fd.ctl("preflight", "sec1", check=False, timeout=120)
    assert r.returncode != 0
    assert "stored password does not decrypt with secret_key_file" in r.stdout + r.stderr
    fd.stop()
    bad = [e for e in fd.events() if e.get("event") == "password-undecryptable"]
    assert bad and bad[-1]["user"] == "sec1"
    assert (bad[-1]["key_id"], bad[-1]["current_key_id"]) == (key_id(KEY_B), key_id(KEY_A))
    db = sqlite3.connect("file:%s?mode=ro" % fd.db_path, uri=True)
    try:
        rekeys = db.execute("SELECT messages FROM log WHERE event = 'rekey'").fetchall()
    finally:
        db.close()
    assert rekeys == [(2,), (0,)]  # the failed runs left no trace
