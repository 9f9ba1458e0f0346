"""ferryd's own IMAP client (service/imap-client.c) through its test CLI
build/ferry-imapcheck: preflight and verification of a seeded user against
the sandbox, differences made on NEW named in the diff, IMAPS and STARTTLS
with a test CA, and the identity check after an impersonated login."""
import glob
import json
import os
import socket
import subprocess
import threading

import pytest

from ferrytest import corpus
from ferrytest.imapwire import check, mailbox_arg
from ferrytest.sandbox import BUILD_DIR, make_test_cert

SANDBOX_KWARGS = {"tls": True}
CHECK = os.path.join(BUILD_DIR, "ferry-imapcheck")
SPEC = corpus.small_spec()


def run(mode, sandbox, *args, secrets=None, user="alice", old=True, new=True):
    """ferry-imapcheck with OLD via master login (AUTHENTICATE PLAIN with
    authzid) and NEW via the user's password; secrets on stdin."""
    cmd = [CHECK, mode, "--user", user, "--credentials", "-", "--timeout-ms", "20000"]
    if old:
        cmd += ["--old-host", "127.0.0.1", "--old-port", str(sandbox.port("old")),
                "--old-auth", "plain", "--old-auth-user", sandbox.master_user]
    if new:
        cmd += ["--new-host", "127.0.0.1", "--new-port", str(sandbox.port("new"))]
    if mode == "verify":  # the plugin's answer to which new folder each old one became
        cmd += ["--names", sandbox.ferry_names(user)]
    cmd += list(args)
    if secrets is None:
        secrets = "old=%s\nnew=%s-pw\n" % (sandbox.master_password, user)
    r = subprocess.run(cmd, input=secrets, capture_output=True, text=True, timeout=120)
    # a secret must never reach the output, whatever happened
    for secret in (sandbox.master_password, user + "-pw"):
        assert secret not in r.stdout + r.stderr
    return r


def report(r):
    assert r.returncode in (0, 1) and r.stdout.startswith("{"), r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def migrated(sandbox):
    """alice seeded on OLD and pulled completely to NEW."""
    if not os.path.exists(CHECK):
        pytest.skip("build ferry-imapcheck first (make)")
    corpus.seed_old(sandbox, "alice", SPEC)
    sandbox.doveadm("new", "ferry", "pull", "-u", "alice")
    return SPEC


def test_preflight(sandbox, migrated):
    r = run("preflight", sandbox)
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(r.stdout)
    assert rep["result"] == "pass"
    old = rep["old"]
    assert old["namespace"] == {"prefix": "", "separator": "."}
    assert "IMAP4REV1" in old["capabilities"]
    assert old["identity"]["impersonated"] is True
    # ID says Dovecot: its master logins open the user's mailbox or fail,
    # so no second login as the master is needed (include/ferry-identity.h)
    assert old["identity"]["check"].startswith("Dovecot honours the authorization identity")
    assert old["identity"]["inbox_uidvalidity"] == SPEC.folder("INBOX").uidvalidity
    folders = {f["name"]: f for f in old["folders"]}
    for f in SPEC.folders:
        got = folders[f.name.replace("/", ".")]
        kept = f.kept()
        assert got["messages"] == len(kept), f.name
        assert got["bytes"] == sum(len(m.body) for m in kept.values()), f.name
        assert got["uidvalidity"] == f.uidvalidity
    assert folders["Projects.2019"]["selectable"] is False
    assert rep["total"]["messages"] == SPEC.count()
    biggest = max(len(m.body) for f in SPEC.folders for m in f.kept().values())
    assert rep["total"]["largest_message"] == biggest
    assert rep["total"]["largest_folder"] == "INBOX"
    assert rep["total"]["estimated_copy_seconds"] > 0
    assert rep["new"]["login"] is True and rep["new"]["namespace"]["separator"] == "/"


def test_preflight_with_login_master_separator_and_text(sandbox, migrated):
    r = run("preflight", sandbox, "--old-auth", "login", "--old-master-separator", "*",
            "--text", new=False)
    assert r.returncode == 0, r.stderr
    assert "preflight alice: PASS" in r.stdout
    assert "total: %d messages" % SPEC.count() in r.stdout


def test_verify_passes_after_pull(sandbox, migrated):
    r = run("verify", sandbox)
    rep = report(r)
    assert r.returncode == 0, json.dumps(rep, indent=1)
    assert rep["result"] == "pass"
    names = {f["name"] for f in rep["folders"]}
    assert names == {f.name for f in SPEC.folders}
    total = sum(f["bodies_compared"] for f in rep["folders"])
    assert total == SPEC.count()  # every body hashed on both sides
    assert rep["folders_missing_on_new"] == [] and rep["folders_only_on_new"] == []


def test_verify_sample_hashes_fewer_bodies(sandbox, migrated):
    rep = report(run("verify", sandbox, "--sample", "0.3", "--sample-seed", "7"))
    assert rep["result"] == "pass"
    hashed = sum(f["bodies_compared"] for f in rep["folders"])
    assert 0 < hashed < SPEC.count()
    again = report(run("verify", sandbox, "--sample", "0.3", "--sample-seed", "7"))
    assert [f["bodies_compared"] for f in again["folders"]] == \
        [f["bodies_compared"] for f in rep["folders"]]  # deterministic


def _first_kept(folder, pred=lambda m: True):
    return next(uid for uid, m in sorted(folder.kept().items()) if pred(m))


def _change_body_on_new(sandbox, folder, uid):
    """Flip one byte of a message file in NEW's maildir (same size, so the
    server has no reason to notice): only a body hash can catch it."""
    mid = b"<%s.%x.%d@ferry.test>" % (b"1", folder.uidvalidity, uid)
    base = os.path.join(sandbox.home("new", "alice"), "Maildir")
    sub = "" if folder.name == "INBOX" else "." + folder.name.replace("/", ".")
    for path in glob.glob(os.path.join(base, sub, "cur", "*")) + \
            glob.glob(os.path.join(base, sub, "new", "*")):
        with open(path, "rb") as f:
            data = f.read()
        if mid in data:
            i = data.rindex(b"the ") if b"the " in data else len(data) - 3
            data = data[:i] + (b"T" if data[i:i + 1] != b"T" else b"t") + data[i + 1:]
            with open(path, "wb") as f:
                f.write(data)
            return
    raise AssertionError("message %s not found in %s" % (mid, base + sub))


def test_verify_catches_flag_missing_message_and_body(sandbox, migrated):
    inbox, sent, projects = SPEC.folder("INBOX"), SPEC.folder("Sent"), SPEC.folder("Projects")
    flag_uid = _first_kept(inbox, lambda m: "\\Flagged" not in m.flags)
    gone_uid = _first_kept(sent)
    body_uid = _first_kept(projects)
    conn = sandbox.imap("new", "alice")
    try:
        check(conn.select("INBOX"), "SELECT")
        check(conn.uid("STORE", str(flag_uid), "+FLAGS.SILENT", "(\\Flagged)"), "STORE")
        check(conn.select(mailbox_arg("Sent")), "SELECT")
        check(conn.uid("STORE", str(gone_uid), "+FLAGS.SILENT", "(\\Deleted)"), "STORE")
        check(conn.uid("EXPUNGE", str(gone_uid)), "UID EXPUNGE")
    finally:
        conn.logout()
    _change_body_on_new(sandbox, projects, body_uid)

    r = run("verify", sandbox)
    rep = report(r)
    assert r.returncode == 1 and rep["result"] == "fail"
    by_name = {f["name"]: f for f in rep["folders"]}
    diffs = {name: f["differences"] for name, f in by_name.items()}
    assert by_name["INBOX"]["result"] == "fail"
    assert {"uid": flag_uid, "field": "flags"}.items() <= diffs["INBOX"][0].items()
    assert "\\Flagged" in diffs["INBOX"][0]["new"] and "\\Flagged" not in diffs["INBOX"][0]["old"]
    assert diffs["Sent"] == [{"uid": gone_uid, "field": "missing on new"}]
    assert by_name["Sent"]["counts"] == {"missing": 1}
    assert len(diffs["Projects"]) == 1 and diffs["Projects"][0]["uid"] == body_uid
    assert diffs["Projects"][0]["field"] == "body sha256"
    for name in ("Entwürfe", "アーカイブ", "Empty", "Projects/2019/Q1"):
        assert by_name[name]["result"] == "pass", name

    text = run("verify", sandbox, "--text").stdout
    assert "verify alice: FAIL" in text
    assert "uid %d: flags" % flag_uid in text
    assert "uid %d: missing on new" % gone_uid in text
    assert "uid %d: body sha256" % body_uid in text


# ---- TLS --------------------------------------------------------------------

def tls_preflight(sandbox, *args):
    """preflight of bob (empty mailbox: fast) on OLD only, with his password."""
    return run("preflight", sandbox, "--old-auth", "login", "--old-host", "127.0.0.1",
               *args, user="bob", old=False, new=False,
               secrets="old=bob-pw\n")


def test_imaps_with_test_ca(sandbox):
    for host in ("127.0.0.1", "localhost"):  # IP and DNS subjectAltName
        r = tls_preflight(sandbox, "--old-host", host, "--old-port", str(sandbox.tls_port),
                          "--old-tls", "imaps", "--old-ca-file", sandbox.tls_ca())
        assert r.returncode == 0, r.stderr
        rep = json.loads(r.stdout)
        assert rep["old"]["tls"] == "imaps" and rep["result"] == "pass"


def test_starttls_with_test_ca(sandbox):
    r = tls_preflight(sandbox, "--old-port", str(sandbox.port("old")), "--old-tls", "starttls",
                      "--old-ca-file", sandbox.tls_ca())
    assert r.returncode == 0, r.stderr
    caps = json.loads(r.stdout)["old"]["capabilities"]
    assert "STARTTLS" not in caps.split()  # capabilities were asked again under TLS


@pytest.mark.parametrize("tls,port", [("imaps", "tls"), ("starttls", "imap")])
def test_wrong_host_name_fails(sandbox, tls, port):
    port = sandbox.tls_port if port == "tls" else sandbox.port("old")
    r = tls_preflight(sandbox, "--old-port", str(port), "--old-tls", tls,
                      "--old-ca-file", sandbox.tls_ca(), "--old-tls-name", "wrong.example")
    assert r.returncode == 2
    assert "certificate verification failed: hostname mismatch" in r.stderr.lower(), r.stderr
    assert "wrong.example" in r.stderr


def test_untrusted_certificate_fails(sandbox, tmp_path):
    make_test_cert(str(tmp_path), "other", "unused", ["DNS:localhost"])
    for tls, port in (("imaps", sandbox.tls_port), ("starttls", sandbox.port("old"))):
        r = tls_preflight(sandbox, "--old-port", str(port), "--old-tls", tls,
                          "--old-ca-file", str(tmp_path / "other.pem"))
        assert r.returncode == 2
        assert "certificate verification failed: unable to get local issuer certificate" \
            in r.stderr, r.stderr
    # and without a CA file: the system store does not know the test CA either
    r = tls_preflight(sandbox, "--old-port", str(sandbox.tls_port), "--old-tls", "imaps")
    assert r.returncode == 2 and "certificate verification failed" in r.stderr


def test_insecure_tls_only_when_asked_and_warns(sandbox):
    r = tls_preflight(sandbox, "--old-port", str(sandbox.tls_port), "--old-tls", "imaps",
                      "--old-tls-insecure")
    assert r.returncode == 0, r.stderr
    assert "verification is DISABLED" in r.stderr


def test_starttls_not_offered_fails(sandbox):
    r = run("preflight", sandbox, "--old-port", str(sandbox.port("new")), "--old-auth", "login",
            "--old-tls", "starttls", user="bob", old=False, new=False,
            secrets="old=bob-pw\n", *["--old-host", "127.0.0.1"])
    assert r.returncode == 2
    assert "STARTTLS required but the server does not offer it" in r.stderr


# ---- errors -----------------------------------------------------------------

def test_wrong_password_is_a_clear_error(sandbox):
    r = run("preflight", sandbox, secrets="old=not-the-secret\n", new=False)
    assert r.returncode == 2
    assert "AUTHENTICATE PLAIN: NO [AUTHENTICATIONFAILED]" in r.stderr, r.stderr
    assert "not-the-secret" not in r.stderr + r.stdout


def test_missing_folder_names_command_and_folder(sandbox, migrated):
    r = run("verify", sandbox, "--folder", "Nope")
    rep = report(r)
    assert rep["folders"] == []  # nothing by that name: nothing compared
    r = run("preflight", sandbox, "--old-port", "1", new=False)
    assert r.returncode == 2 and "cannot connect" in r.stderr


class FakeServer:
    """An IMAP server that accepts any authorization identity and ignores
    it: every login sees the same mailbox (what the identity check is for)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.session, args=(conn,), daemon=True).start()

    def session(self, conn):
        f = conn.makefile("rwb", buffering=0)
        f.write(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR] fake\r\n")
        for line in f:
            tag, cmd = line.split(b" ", 2)[:2]
            cmd = cmd.strip().upper()
            if cmd == b"CAPABILITY":
                f.write(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR\r\n")
            elif cmd == b"STATUS":
                f.write(b"* STATUS INBOX (MESSAGES 3 UIDNEXT 4 UIDVALIDITY 42)\r\n")
            elif cmd == b"LIST":
                f.write(b'* LIST () "/" INBOX\r\n* LIST () "/" Sent\r\n')
            elif cmd == b"LOGOUT":
                f.write(b"* BYE bye\r\n" + tag + b" OK done\r\n")
                break
            f.write(tag + b" OK done\r\n")
        conn.close()

    def close(self):
        self.sock.close()


def test_identity_check_refuses_an_ignored_authzid():
    if not os.path.exists(CHECK):
        pytest.skip("build ferry-imapcheck first (make)")
    srv = FakeServer()
    try:
        r = subprocess.run([CHECK, "preflight", "--user", "alice", "--credentials", "-",
                            "--old-host", "127.0.0.1", "--old-port", str(srv.port),
                            "--old-auth", "plain", "--old-auth-user", "admin"],
                           input="old=admin-secret\n", capture_output=True, text=True,
                           timeout=60)
    finally:
        srv.close()
    assert r.returncode == 2
    assert "identity check for alice failed" in r.stderr
    assert "ignored the authorization identity; refusing to continue" in r.stderr
    assert "admin-secret" not in r.stderr
