"""ferryd's own IMAP client (build/ferry-imapcheck) with Cyrus IMAP 3.6 (both
hierarchy separators) and Courier-IMAP 5.0 as OLD, unpacked from Debian's
packages (ferrytest.cyrus, ferrytest.courier), and Ferry's NEW Dovecot
pulling from them: preflight and verification pass after the pull; a flag
changed, a message expunged and a body byte changed on NEW are each named in
the diff (JSON and text); the identity check accepts Cyrus's genuine admin
proxy login and refuses a session that is not the user's mailbox.

Old identities (as those modules document): Cyrus: the admin ferry-master
with AUTHENTICATE PLAIN, authzid = the user. Courier has no master login;
the harness's password backend takes LOGIN "alice*ferry-master" with the
master password (--old-auth login --old-master-separator '*').

Both servers keep the user's folders under INBOX (INBOX.Sent, INBOX/Sent);
NEW has them at the top level (imapc_list_prefix): verify gets which new
folder each old one became from the plugin (`doveadm ferry status`,
--names), whose old_folder column names them as the old server lists
them. Skips only if the packages cannot be fetched."""
import base64
import json
import os
import re
import shutil
import socket
import subprocess
import threading

import pytest

from ferrytest import corpus, courier, oldservers
from ferrytest.imapwire import check, mailbox_arg
from ferrytest.sandbox import BUILD_DIR, PLUGIN, PLUGIN_DIR, Sandbox

# tests/README.md, "Dovecot 2.3 and 2.4"
DOVECOT_ONCE = "ferryd's IMAP client against Cyrus and Courier (NEW on 2.4 pulling from them: test_oldservers.py)"

CHECK = os.path.join(BUILD_DIR, "ferry-imapcheck")
USER = "alice"
SEED = 11
KINDS = oldservers.KINDS


class Env:
    def __init__(self, kind, srv, sb, spec):
        self.kind, self.srv, self.sb, self.spec = kind, srv, sb, spec
        self.sep = srv.sep

    def master(self, master):
        """Courier answers a failed LOGIN only after a 5 s penalty, and the
        identity check's login as ferry-master alone is one: the Courier
        runs that do not test the identity check use alice's password."""
        return master or self.kind != "courier"

    def old_args(self, port=None, master=True):
        port = str(port or self.srv.port())
        args = ["--old-host", "127.0.0.1", "--old-port", port]
        if not self.master(master):
            return args + ["--old-auth", "login"]
        args += ["--old-auth-user", self.srv.master_user]
        if self.kind == "courier":
            return args + ["--old-auth", "login", "--old-master-separator",
                           courier.MASTER_SEPARATOR]
        return args + ["--old-auth", "plain"]

    def run(self, mode, *args, old_port=None, new=True, names=True, master=True):
        cmd = [CHECK, mode, "--user", USER, "--credentials", "-", "--timeout-ms", "20000"]
        cmd += self.old_args(old_port, master)
        if new:
            cmd += ["--new-host", "127.0.0.1", "--new-port", str(self.sb.port("new"))]
        if mode == "verify":
            if names:
                cmd += ["--names", self.sb.ferry_names(USER)]
            else:  # the plugin knows no folder at all
                empty = os.path.join(self.sb.root, "no-names.json")
                with open(empty, "w") as f:
                    f.write("[]")
                cmd += ["--names", empty]
        cmd += list(args)
        old_secret = self.srv.master_password if self.master(master) else USER + "-pw"
        secrets = "old=%s\nnew=%s-pw\n" % (old_secret, USER)
        r = subprocess.run(cmd, input=secrets, capture_output=True, text=True, timeout=120)
        for secret in (self.srv.master_password, USER + "-pw"):
            assert secret not in r.stdout + r.stderr
        assert "ERROR: AddressSanitizer" not in r.stderr and "runtime error" not in r.stderr, \
            r.stderr
        return r

    def folders(self):
        """Spec names of every selectable folder on OLD (Cyrus makes missing
        parents real folders)."""
        return {f.name for f in self.spec.folders} | set(getattr(self.spec, "cyrus_parents", {}))


def report(r):
    assert r.returncode in (0, 1) and r.stdout.startswith("{"), r.stdout + r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module", params=KINDS)
def env(request):
    """USER seeded on the OLD server and pulled completely by NEW."""
    if not os.path.exists(CHECK) or not os.path.exists(os.path.join(PLUGIN_DIR, PLUGIN)):
        pytest.skip("build ferry-imapcheck and the plugin first (make)")
    srv = oldservers.make(request.param, users=(USER,))
    sb = Sandbox(users=(USER,), new_extra=srv.new_extra())
    failed_before = request.session.testsfailed
    setup_failed = True  # a setup error is counted only after this fixture's teardown
    try:
        srv.start()
        sb.start()
        spec = srv.seed(USER, corpus.small_spec(seed=SEED))
        r = sb.doveadm("new", "ferry", "pull", "-u", USER)
        assert "complete" in r.stdout, r.stdout + r.stderr
        setup_failed = False
        yield Env(request.param, srv, sb, spec)
    finally:
        sb.stop()
        srv.stop()
        reports = sb.sanitizer_reports()
        kept = (setup_failed or request.session.testsfailed != failed_before
                or os.environ.get("FERRY_KEEP"))
        if kept or reports:
            print("\nkept: sandbox %s, %s %s" % (sb.root, srv.kind, srv.root))
        else:
            shutil.rmtree(sb.root, ignore_errors=True)
            shutil.rmtree(srv.root, ignore_errors=True)
        if reports:
            print("\n".join(reports))
            pytest.fail("sanitizer reports in %s" % sb.sanitizer_dir(), pytrace=False)


def test_preflight(env):
    r = env.run("preflight")
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(r.stdout)
    assert rep["result"] == "pass"
    old, sep = rep["old"], env.sep
    assert old["namespace"] == {"prefix": "INBOX" + sep, "separator": sep}
    assert old["identity"]["impersonated"] is True
    if env.kind == "courier":  # "ferry-master" alone is refused
        assert old["identity"]["check"] == "the authenticating identity has no mailbox of its own"
    else:  # ID says Cyrus: proxy logins are honoured or refused
        assert old["identity"]["check"].startswith("Cyrus honours the authorization identity")
    assert old["identity"]["inbox_uidvalidity"] == env.spec.folder("INBOX").uidvalidity
    folders = {f["name"]: f for f in old["folders"]}
    for f in env.spec.folders:
        name = f.name if f.name == "INBOX" else "INBOX" + sep + f.name.replace("/", sep)
        got = folders[name]
        kept = f.kept()
        assert got["separator"] == sep
        assert got["messages"] == len(kept), name
        assert got["bytes"] == sum(len(m.body) for m in kept.values()), name
        assert got["uidvalidity"] == f.uidvalidity, name
        assert got["uidnext"] == f.uidnext, name  # Courier: from STATUS
    parent = folders["INBOX%sProjects%s2019" % (sep, sep)]
    if env.kind == "courier":
        assert parent["selectable"] is False
    else:  # Cyrus creates missing parents as real folders
        assert parent["messages"] == 0
    assert rep["total"]["messages"] == env.spec.count()
    biggest = max(len(m.body) for f in env.spec.folders for m in f.kept().values())
    assert rep["total"]["largest_message"] == biggest
    assert rep["total"]["largest_folder"] == "INBOX"
    assert rep["new"]["login"] is True and rep["new"]["namespace"]["separator"] == "/"

    text = env.run("preflight", "--text", new=False, master=False)
    assert text.returncode == 0, text.stderr
    assert "preflight %s: PASS" % USER in text.stdout
    assert "total: %d messages" % env.spec.count() in text.stdout


def test_verify_passes_after_pull(env):
    r = env.run("verify")
    rep = report(r)
    assert r.returncode == 0, json.dumps(rep, indent=1)
    assert rep["result"] == "pass"
    by_name = {f["name"]: f for f in rep["folders"]}
    assert set(by_name) == env.folders()
    for f in env.spec.folders:
        got = by_name[f.name]
        want = f.name if f.name == "INBOX" else "INBOX" + env.sep + f.name.replace("/", env.sep)
        assert got["old_name"] == want
        assert got["uidvalidity"] == {"old": f.uidvalidity, "new": f.uidvalidity}
        assert got["uidnext"]["old"] == f.uidnext, f.name  # Courier: from STATUS
        assert got["messages"] == {"old": len(f.kept()), "new": len(f.kept())}
    assert sum(f["bodies_compared"] for f in rep["folders"]) == env.spec.count()
    assert rep["folders_missing_on_new"] == [] and rep["folders_only_on_new"] == []
    assert rep["folders_skipped"] == [] and rep["folders_excluded"] == []


def test_verify_without_the_plugins_names_verifies_nothing(env):
    """Old folders the plugin does not name are not guessed at: each is
    reported missing on NEW and the run fails."""
    r = env.run("verify", "--sample", "0", names=False, master=False)
    rep = report(r)
    assert r.returncode == 1 and rep["result"] == "fail" and rep["folders"] == []
    assert "INBOX" in rep["folders_missing_on_new"]
    assert "INBOX%sSent" % env.sep in rep["folders_missing_on_new"]
    assert "Sent" in rep["folders_only_on_new"]


# ---- the identity check -------------------------------------------------------

class AuthzidStripper:
    """A TCP relay to the OLD server that drops the authorization identity
    from AUTHENTICATE PLAIN: what a server (or a proxy) that ignores it
    does. The admin's own session then arrives where the user's was asked
    for."""

    def __init__(self, port):
        self.target = port
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.stripped = 0
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self.down, args=(server, client), daemon=True).start()
            threading.Thread(target=self.up, args=(client, server), daemon=True).start()

    @staticmethod
    def down(server, client):
        try:
            while True:
                data = server.recv(65536)
                if not data:
                    break
                client.sendall(data)
        except OSError:
            pass
        finally:
            client.close()

    def strip(self, b64):
        raw = base64.b64decode(b64)
        parts = raw.split(b"\0")
        if len(parts) != 3:
            return b64
        if parts[0]:
            self.stripped += 1
        return base64.b64encode(b"\0" + parts[1] + b"\0" + parts[2])

    def up(self, client, server):
        f = client.makefile("rb")
        sasl_next = False
        try:
            for line in f:
                m = re.match(rb"(\S+ AUTHENTICATE PLAIN)(?: (\S+))?\r\n$", line, re.I)
                if m and m.group(2):
                    line = m.group(1) + b" " + self.strip(m.group(2)) + b"\r\n"
                elif sasl_next:
                    line = self.strip(line.strip()) + b"\r\n"
                sasl_next = bool(m and not m.group(2))
                server.sendall(line)
        except OSError:
            pass
        finally:
            server.close()

    def close(self):
        self.sock.close()


def _courier_refuses_authzid(env):
    """Courier has no authorization identity: imaplogin drops the authzid
    of AUTHENTICATE PLAIN and authenticates ferry-master itself, which has
    no account: refused at login, never taken for alice's mailbox."""
    r = env.run("preflight", "--old-auth", "plain", new=False)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "AUTHENTICATE PLAIN: NO" in r.stderr, r.stderr
    assert r.stdout == ""


def _preflight_via_stripper(env):
    relay = AuthzidStripper(env.srv.port())
    try:
        r = env.run("preflight", old_port=relay.port, new=False)
    finally:
        relay.close()
    assert relay.stripped >= 1
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stdout == "" and "refusing to continue" in r.stderr, r.stderr
    return r.stderr


def test_identity_check_refuses_what_is_not_the_users_mailbox(env):
    """Cyrus: an admin login without the authorization identity is the
    admin's own session. With no INBOX of its own, the session has none;
    once the admin has one, the session lists user.alice (alice's mailbox
    as another user's, which alice's own session never does) -> the
    authorization identity was ignored. Both refused; the genuine proxy
    login still passes."""
    if env.kind == "courier":
        return _courier_refuses_authzid(env)
    err = _preflight_via_stripper(env)
    assert "identity check for alice failed: the session has no INBOX" in err, err

    from ferrytest import imapwire
    conn = imapwire.connect("127.0.0.1", env.srv.port(), env.srv.master_user,
                            env.srv.master_password)
    try:
        check(conn.create(imapwire.quote("user" + env.sep + env.srv.master_user)), "CREATE")
    finally:
        conn.logout()
    err = _preflight_via_stripper(env)
    # the admin's own session sees every user's mailbox: alice's among them
    assert "identity check for alice failed: the session lists user%salice among other " \
           "users' mailboxes" % env.sep in err, err
    assert "ignored the authorization identity; refusing to continue" in err

    r = env.run("preflight", new=False)
    assert r.returncode == 0, r.stderr
    ident = json.loads(r.stdout)["old"]["identity"]
    assert ident["check"].startswith("Cyrus honours the authorization identity")
    assert ident["inbox_uidvalidity"] == env.spec.folder("INBOX").uidvalidity


# ---- differences on NEW, named in the diff (last: changes NEW) ---------------

def _first_kept(folder, pred=lambda m: True):
    return next(uid for uid, m in sorted(folder.kept().items()) if pred(m))


def _message_id(m):
    return re.search(rb"\r\nMessage-ID: (<[^>]+>)", m.body).group(1)


def _change_body_on_new(env, folder, uid):
    """Flip one byte of the message's file in NEW's maildir (same size)."""
    mid = _message_id(folder.kept()[uid])
    base = os.path.join(env.sb.home("new", USER), "Maildir")
    sub = "" if folder.name == "INBOX" else "." + folder.name.replace("/", ".")
    hits = []
    for d in ("cur", "new"):
        dirpath = os.path.join(base, sub, d)
        for n in os.listdir(dirpath):
            with open(os.path.join(dirpath, n), "rb") as f:
                if mid in f.read():
                    hits.append(os.path.join(dirpath, n))
    assert len(hits) == 1, (mid, hits)
    with open(hits[0], "rb") as f:
        data = f.read()
    i = data.rindex(b"the ") if b"the " in data else len(data) - 3
    data = data[:i] + (b"T" if data[i:i + 1] != b"T" else b"t") + data[i + 1:]
    with open(hits[0], "wb") as f:
        f.write(data)


def test_verify_catches_flag_missing_message_and_body(env):
    spec = env.spec
    inbox, sent, projects = spec.folder("INBOX"), spec.folder("Sent"), spec.folder("Projects")
    flag_uid = _first_kept(inbox, lambda m: "\\Flagged" not in m.flags)
    gone_uid = _first_kept(sent)
    mids = [_message_id(m) for m in projects.kept().values()]
    body_uid = _first_kept(projects, lambda m: mids.count(_message_id(m)) == 1)
    conn = env.sb.imap("new", USER)
    try:
        check(conn.select("INBOX"), "SELECT")
        check(conn.uid("STORE", str(flag_uid), "+FLAGS.SILENT", "(\\Flagged)"), "STORE")
        check(conn.select(mailbox_arg("Sent")), "SELECT")
        check(conn.uid("STORE", str(gone_uid), "+FLAGS.SILENT", "(\\Deleted)"), "STORE")
        check(conn.uid("EXPUNGE", str(gone_uid)), "UID EXPUNGE")
    finally:
        conn.logout()
    _change_body_on_new(env, projects, body_uid)

    r = env.run("verify")
    rep = report(r)
    assert r.returncode == 1 and rep["result"] == "fail"
    by_name = {f["name"]: f for f in rep["folders"]}
    diffs = {name: f["differences"] for name, f in by_name.items()}
    assert by_name["INBOX"]["result"] == "fail"
    assert diffs["INBOX"] == [{"uid": flag_uid, "field": "flags",
                               "old": diffs["INBOX"][0]["old"], "new": diffs["INBOX"][0]["new"]}]
    assert "\\Flagged" in diffs["INBOX"][0]["new"].split()
    assert "\\Flagged" not in diffs["INBOX"][0]["old"].split()
    assert by_name["INBOX"]["counts"] == {"flags": 1}
    assert diffs["Sent"] == [{"uid": gone_uid, "field": "missing on new"}]
    assert by_name["Sent"]["counts"] == {"missing": 1}
    assert len(diffs["Projects"]) == 1 and diffs["Projects"][0]["uid"] == body_uid
    assert diffs["Projects"][0]["field"] == "body sha256"
    assert by_name["Projects"]["counts"] == {"body": 1}
    others = env.folders() - {"INBOX", "Sent", "Projects"}
    assert others and all(by_name[n]["result"] == "pass" for n in others)

    r = env.run("verify", "--text", master=False)
    assert r.returncode == 1
    text = r.stdout
    assert "verify %s: FAIL" % USER in text
    assert "folder \"INBOX\": fail" in text and "folder \"Sent\": fail" in text
    assert "uid %d: flags" % flag_uid in text
    assert "uid %d: missing on new" % gone_uid in text
    assert "uid %d: body sha256" % body_uid in text
