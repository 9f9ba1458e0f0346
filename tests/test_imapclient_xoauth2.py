"""ferryd's own IMAP client (service/imap-client.c, through build/ferry-imapcheck
--old-auth xoauth2) against a real XOAUTH2 server: OLD (Dovecot 2.3.19)
offers AUTHENTICATE XOAUTH2 through Dovecot's oauth2 passdb, which validates
the bearer token locally as an HS256-signed JWT (introspection_mode = local;
no network, no identity provider).

The key lies in the dict fs:posix:prefix=<root>/oauth2-keys/ at
<azp>/<alg>/<kid> (lib-oauth2/oauth2-jwt.c looks up shared/<azp>/<alg>/<kid>,
"default" when the token names no azp or kid), its content the base64 of
the raw HMAC key. The oauth2 passdb is asked for XOAUTH2 and OAUTHBEARER
only (its `mechanisms`), after the sandbox's passwd-file passdb, so PLAIN
and LOGIN with the users' passwords keep working on OLD.

On a bad token Dovecot answers XOAUTH2 with a "+ <base64 JSON error>"
challenge first; the client must answer it with an empty line to get the
tagged NO, and report that as an authentication error, never the token."""
import base64
import hashlib
import hmac
import json
import os
import pwd
import socket
import subprocess
import threading
import time

import pytest

from ferrytest import corpus
from ferrytest.sandbox import BUILD_DIR, wait_until

# tests/README.md, "Dovecot 2.3 and 2.4"
DOVECOT_ONCE = "ferryd's IMAP client's XOAUTH2/OAUTHBEARER against OLD's oauth2 passdb; NEW is not used"

CHECK = os.path.join(BUILD_DIR, "ferry-imapcheck")
SPEC = corpus.small_spec()
USER = "alice"
ISSUER = "https://idp.ferry.test"
AZP, KID = "ferry-client", "ferry-key-1"
KEY = hashlib.sha256(b"ferry xoauth2 test key").digest()
WRONG_KEY = hashlib.sha256(b"not the key OLD knows").digest()


def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(sub, key=KEY, exp_in=600, iat_ago=60, kid=KID, azp=AZP, iss=ISSUER):
    """An HS256 JWT: sub = the user, valid from iat_ago s ago for exp_in s."""
    now = int(time.time())
    header = {"alg": "HS256", "typ": "JWT", "kid": kid}
    claims = {"sub": sub, "iss": iss, "azp": azp, "iat": now - iat_ago,
              "nbf": now - iat_ago, "exp": now + exp_in}
    signing = "%s.%s" % (_b64url(json.dumps(header).encode()),
                         _b64url(json.dumps(claims).encode()))
    sig = hmac.new(key, signing.encode(), hashlib.sha256).digest()
    return "%s.%s" % (signing, _b64url(sig))


def dotted(name):
    """A spec folder name as OLD (separator '.') lists it."""
    return name.replace("/", ".")


def old_extra(root):
    """OLD's oauth2 passdb with local validation; writes its key and config."""
    keys = os.path.join(root, "oauth2-keys")
    key_dir = os.path.join(keys, AZP, "HS256")
    os.makedirs(key_dir)
    with open(os.path.join(key_dir, KID), "w") as f:
        f.write(base64.b64encode(KEY).decode())
    dovecot = pwd.getpwnam("dovecot")  # OLD's auth process reads the key
    for d, _, files in os.walk(keys):
        os.chown(d, dovecot.pw_uid, dovecot.pw_gid)
        os.chmod(d, 0o700)
        for name in files:
            os.chown(os.path.join(d, name), dovecot.pw_uid, dovecot.pw_gid)
            os.chmod(os.path.join(d, name), 0o600)
    conf = os.path.join(root, "dovecot-oauth2.conf.ext")
    with open(conf, "w") as f:
        f.write("introspection_mode = local\n"
                "local_validation_key_dict = fs:posix:prefix=%s/\n"
                "username_attribute = sub\n"
                "issuers = %s\n" % (keys, ISSUER))
    return ("auth_mechanisms = plain login xoauth2 oauthbearer\n"
            "passdb {\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n"
            "  args = %s\n}\n" % conf)


pytestmark = pytest.mark.skipif(not os.path.exists(CHECK),
                                reason="build ferry-imapcheck first (make all)")
# NEW (without the plugin) only for preflight's login check there
SANDBOX_KWARGS = {"users": (USER, "bob"), "new_plugin": False}


def sandbox_prepare(sb):
    """conftest's hook: OLD's XOAUTH2 setup needs the sandbox's root."""
    sb.old_extra = old_extra(sb.root)


@pytest.fixture(scope="module")
def sandbox(sandbox):
    """conftest's sandbox (OLD with XOAUTH2), USER seeded."""
    corpus.seed_old(sandbox, USER, SPEC)
    return sandbox


class Recorder:
    """A relay to OLD for one connection that records both directions."""

    def __init__(self, port):
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port, self.upstream = self.lsock.getsockname()[1], port
        self.c2s, self.s2c = bytearray(), bytearray()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        self.lsock.settimeout(30)
        with self.lsock.accept()[0] as client, \
                socket.create_connection(("127.0.0.1", self.upstream)) as server:
            back = threading.Thread(target=self.pump, args=(server, client, self.s2c))
            back.start()
            self.pump(client, server, self.c2s)
            back.join(30)

    @staticmethod
    def pump(src, dst, record):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                record += data
                dst.sendall(data)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def done(self):
        self.thread.join(30)
        self.lsock.close()
        assert not self.thread.is_alive(), "relay still running"
        return bytes(self.c2s), bytes(self.s2c)


def run(sandbox, token, user=USER, new=True, old_port=None):
    """ferry-imapcheck preflight with OLD via XOAUTH2 (token on stdin)."""
    cmd = [CHECK, "preflight", "--user", user, "--credentials", "-", "--timeout-ms", "20000",
           "--old-host", "127.0.0.1", "--old-port", str(old_port or sandbox.port("old")),
           "--old-auth", "xoauth2"]
    secrets = "old=%s\n" % token
    if new:
        cmd += ["--new-host", "127.0.0.1", "--new-port", str(sandbox.port("new"))]
        secrets += "new=%s-pw\n" % user
    r = subprocess.run(cmd, input=secrets, capture_output=True, text=True,
                       timeout=60)
    out = r.stdout + r.stderr
    # neither the token nor its signature may reach the output, whatever happened
    assert token not in out and token.rsplit(".", 1)[1] not in out
    assert user + "-pw" not in out
    assert "ERROR: AddressSanitizer" not in out and "runtime error" not in out, out
    return r


def old_log_has(sandbox, since, text):
    """OLD's log since `since` once it holds `text` (its log process writes
    asynchronously)."""
    return wait_until(lambda: text in sandbox.log_text("old", since) and
                      sandbox.log_text("old", since), 10, "%r in OLD's log" % text)


def test_xoauth2_preflight_reports_the_users_folders(sandbox):
    since = sandbox.log_size("old")
    r = run(sandbox, jwt(USER))
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(r.stdout)
    assert rep["result"] == "pass"
    old = rep["old"]
    assert old["namespace"] == {"prefix": "", "separator": "."}
    folders = {f["name"]: f for f in old["folders"]}
    assert set(folders) == {dotted(n) for n in [f.name for f in SPEC.folders] + SPEC.noselect()}
    assert SPEC.noselect() and all(not folders[dotted(n)]["selectable"] for n in SPEC.noselect())
    for f in SPEC.folders:
        got, kept = folders[dotted(f.name)], f.kept()
        assert got["messages"] == len(kept), f.name
        assert got["bytes"] == sum(len(m.body) for m in kept.values()), f.name
        assert got["uidvalidity"] == f.uidvalidity, f.name
    assert rep["total"]["messages"] == SPEC.count()
    assert rep["new"]["login"] is True
    # the session was really opened with XOAUTH2, through the oauth2 passdb
    log = old_log_has(sandbox, since, "Login: user=<%s>" % USER)
    logins = [line for line in log.splitlines() if "Login: user=<%s>" % USER in line]
    assert len(logins) == 1 and "method=XOAUTH2" in logins[0], logins


def test_plain_login_and_bobs_own_token_beside_oauth2(sandbox):
    """The passwd-file passdb still answers PLAIN and LOGIN on OLD, and bob's
    own token logs bob in (his mailbox: empty). Before the failures below:
    Dovecot's auth penalty (per client IP) would delay these logins."""
    for auth in ("plain", "login"):
        r = subprocess.run([CHECK, "preflight", "--user", "bob", "--credentials", "-",
                            "--old-host", "127.0.0.1", "--old-port", str(sandbox.port("old")),
                            "--old-auth", auth, "--timeout-ms", "20000"],
                           input="old=bob-pw\n", capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, (auth, r.stderr)
        assert "bob-pw" not in r.stdout + r.stderr
    r = run(sandbox, jwt("bob"), user="bob", new=False)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["total"]["messages"] == 0


def test_xoauth2_with_an_auth_user_is_refused_before_connecting(sandbox):
    """XOAUTH2 has no authorization identity: a master user given with it is
    refused by the client with a clear message, before any connection."""
    token = jwt(USER)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        r = subprocess.run([CHECK, "preflight", "--user", USER, "--credentials", "-",
                            "--old-host", "127.0.0.1", "--old-port",
                            str(listener.getsockname()[1]), "--old-auth", "xoauth2",
                            "--old-auth-user", sandbox.master_user, "--timeout-ms", "20000"],
                           input="old=%s\n" % token, capture_output=True, text=True, timeout=60)
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):  # the process has exited: nothing came
            listener.accept()
    assert r.returncode == 2, r.stdout + r.stderr
    assert "XOAUTH2 has no authorization identity" in r.stderr, r.stderr
    assert token not in r.stdout + r.stderr


# Each failure raises OLD's auth penalty for 127.0.0.1 (2 s failure delay,
# then 4, 8, 15 s waits before the next attempt): few cases, and last.
@pytest.mark.parametrize("make,reason", [
    (lambda: jwt(USER, exp_in=-60, iat_ago=3600), "Token has expired"),
    (lambda: jwt(USER, key=WRONG_KEY), "Incorrect JWT signature"),
    (lambda: jwt("bob"), "Username 'alice' did not match 'bob'"),
], ids=["expired", "wrong-signature", "other-users-token"])
def test_bad_token_is_a_clear_authentication_error(sandbox, make, reason):
    token = make()
    since = sandbox.log_size("old")
    relay = Recorder(sandbox.port("old"))
    r = run(sandbox, token, new=False, old_port=relay.port)
    c2s, s2c = relay.done()
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stdout == ""
    assert "AUTHENTICATE XOAUTH2: NO [AUTHENTICATIONFAILED]" in r.stderr, r.stderr
    assert "no response within" not in r.stderr and "unexpected" not in r.stderr, r.stderr
    # on the wire: the SASL-IR, OLD's "+ <base64 JSON error>" challenge, the
    # client's empty answer, then the tagged NO
    sent = c2s.split(b"\r\n")
    i = next(n for n, line in enumerate(sent) if b" AUTHENTICATE XOAUTH2 " in line)
    tag = sent[i].split(b" ")[0]
    assert sent[i] + b"\r\n\r\n" in c2s, sent[i + 1:i + 2]  # the answer: an empty line
    challenge = next(line for line in s2c.split(b"\r\n") if line.startswith(b"+ "))
    assert json.loads(base64.b64decode(challenge[2:]))["status"] == "401"
    assert b"\r\n" + tag + b" NO [AUTHENTICATIONFAILED]" in s2c
    assert token.encode() not in c2s  # only inside the base64 initial response
    # and OLD refused it for the reason the token was made to fail
    log = old_log_has(sandbox, since, "Local validation failed: ")
    assert "Local validation failed: " + reason in log, log[-2000:]
