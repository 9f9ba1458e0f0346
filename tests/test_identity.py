"""The plugin's identity check after a master login (issue 11): a server
that answers OK to an authorization identity it ignores hands out the
master's own mailbox, which must never be copied into the user's.

- Courier-IMAP 5 (real, unpacked: ferrytest.courier) as Debian ships it
  (AUTH=PLAIN only after STARTTLS; its certificate verified against the
  test CA) with an admin account that has a mailbox and a password of its
  own: over STARTTLS, AUTHENTICATE PLAIN with authzid=alice logs admin in
  as admin. The lazy path (SELECT, LIST) and
  `doveadm ferry pull` are refused; alice's new mailbox gets no message and
  no folder; NEW's log names the identity failure as a security event;
  doveadm exits EX_NOPERM (77), which ferryd reads as permanent: ferryd
  marks alice failed with that reason after one attempt, no retry.
- The same Courier without TLS (bob): refused before any password is sent
  (the wire, through a relay, carries no LOGIN and no password).
- Dovecot with its master user and Cyrus with its admin (proxy login): the
  check passes and the user is migrated; it costs one burst of pipelined
  commands (one round trip) on the session itself, no second login, and is
  not repeated once remembered.
- A scripted server (ferrytest.hostile "identity", it says so in its
  greeting) that honours the identity for some logins and not others:
  every ignored one is refused, the honoured ones are migrated."""
import os
import shutil
import socket
import threading
import time

import pytest

from ferrytest import corpus, oldservers
from ferrytest.ferryd import Ferryd
from ferrytest.hostile import IDENTITY_HONOURED, HostileServer
from ferrytest.sandbox import Sandbox, password, wait_until

ADMIN = "admin"
USERS = ("alice", "bob", "carol", "dave") + tuple(sorted(IDENTITY_HONOURED)) + ("id-bad1", "id-bad2")


class Relay:
    """TCP relay that records both directions of each connection in the
    order the bytes passed: [(from_client, chunk), ...] per connection.
    `delay` holds each server chunk that long before passing it on: what
    the client sends before it sees an answer is then unambiguous."""

    def __init__(self, port, delay=0.0):
        self.target = port
        self.delay = delay
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.conns = []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            events = []
            with self.lock:
                self.conns.append(events)
            threading.Thread(target=self.pump, args=(server, client, events, False),
                             daemon=True).start()
            threading.Thread(target=self.pump, args=(client, server, events, True),
                             daemon=True).start()

    def pump(self, src, dst, events, from_client):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if not from_client and self.delay:
                    time.sleep(self.delay)  # latency, not synchronisation
                with self.lock:  # recorded as it is passed on
                    events.append((from_client, data))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            dst.close()

    def sent(self):
        with self.lock:
            return b"".join(d for c in self.conns for up, d in c if up)

    def lines(self, conn):
        """[(index, from_client, line)] of one connection"""
        out = []
        with self.lock:
            for i, (up, data) in enumerate(self.conns[conn]):
                out += [(i, up, line) for line in data.split(b"\r\n") if line]
        return out

    def reset(self):
        with self.lock:
            self.conns = []

    def stop(self):
        self.sock.close()


def _userdb(port, master=ADMIN, pw=None, extra=""):
    return ("userdb_imapc_port=%d userdb_imapc_master_user=%s userdb_imapc_password=%s "
            "userdb_imapc_list_prefix=INBOX userdb_imapc_connection_retry_count=0%s"
            % (port, master, pw or password(ADMIN), extra))


@pytest.fixture(scope="module")
def env():
    co = oldservers.make("courier", users=("alice", "bob", ADMIN), starttls=True)
    co.start()
    cy = oldservers.make("cyrus-dot", users=("dave",))
    cy.start()
    hostile = HostileServer("identity").start()
    relay_bob = Relay(co.port())
    relay_dave = Relay(cy.port(), delay=0.05)
    sb = Sandbox(users=USERS, doveadm_http=True,
                 new_extra="ssl_client_ca_file = %s\n" % co.tls_ca())
    relay_carol = Relay(sb.port("old"), delay=0.05)
    extra = {"alice": _userdb(co.port(), extra=" userdb_imapc_ssl=starttls"),
             "bob": _userdb(relay_bob.port),
             "carol": "userdb_imapc_port=%d" % relay_carol.port,
             "dave": "userdb_imapc_port=%d userdb_imapc_list_prefix=INBOX" % relay_dave.port}
    for u in USERS:
        if u.startswith("id-"):
            extra[u] = "userdb_imapc_port=%d userdb_imapc_connection_retry_count=0" % hostile.port
    sb.new_userdb_extra = extra
    try:
        sb.start()
        co.seed("alice", corpus.small_spec(seed=3))
        co.seed(ADMIN, corpus.folder_spec("Admin-Payroll", n=5, seed=4))
        co.seed("bob", corpus.small_spec(seed=5))
        corpus.seed_old(sb, "carol", corpus.small_spec(seed=6))
        cy.seed("dave", corpus.small_spec(seed=7))
        yield dict(sb=sb, co=co, hostile=hostile, relay_bob=relay_bob,
                   relay_carol=relay_carol, relay_dave=relay_dave)
    finally:
        sb.stop()
        for x in (co, cy, hostile, relay_bob, relay_carol, relay_dave):
            x.stop()
        reports = sb.sanitizer_reports()  # FERRY_ASAN=1: the plugin's own
        if not reports and not os.environ.get("FERRY_KEEP"):
            for root in (sb.root, co.root, cy.root):
                shutil.rmtree(root, ignore_errors=True)
        if reports:
            pytest.fail("sanitizer reports in %s:\n%s" % (sb.sanitizer_dir(),
                                                          "\n".join(reports)), pytrace=False)


def _new_maildir(sb, user):
    return os.path.join(sb.home("new", user), "Maildir")


def _messages_and_folders(sb, user):
    """(message files, folder names) in the user's NEW Maildir."""
    root = _new_maildir(sb, user)
    msgs, folders = [], []
    for d, dirs, files in os.walk(root):
        if os.path.basename(d) in ("cur", "new"):
            msgs += files
        folders += [n for n in dirs if n.startswith(".")]
    return msgs, folders


def test_courier_ignored_authzid_refused_lazy_and_pull(env):
    sb = env["sb"]
    off = sb.log_size("new")
    conn = sb.imap("new", "alice")
    try:
        typ, data = conn.select("INBOX")
        assert typ == "NO" and b"[UNAVAILABLE]" in data[0], data
        assert b"identity check for alice failed" in data[0], (data, sb.log_text("new", off))
        typ, data = conn.list()
        assert typ == "NO", data
    finally:
        conn.logout()
    r = sb.doveadm("new", "ferry", "pull", "-u", "alice", check=False)
    assert r.returncode == 77, (r.returncode, r.stderr)  # EX_NOPERM: not a retry
    assert "identity check for alice failed: the session shows the same mailbox as " \
           "admin's own login" in r.stderr, r.stderr
    assert "ignored the authorization identity; refusing to continue" in r.stderr
    msgs, folders = _messages_and_folders(sb, "alice")
    assert msgs == [] and folders == [], (msgs, folders)
    log = sb.log_text("new", off)
    assert "event=identity-failed security=yes server=127.0.0.1:%d master=admin" \
        % env["co"].port() in log, log
    assert password(ADMIN) not in log + r.stderr + r.stdout
    with open(env["co"].log_path) as f:  # Courier: those sessions were STARTTLS ones
        assert "starttls=1" in f.read()


def test_master_login_without_auth_plain_refused_before_any_password(env):
    sb, relay = env["sb"], env["relay_bob"]
    relay.reset()
    r = sb.doveadm("new", "ferry", "pull", "-u", "bob", check=False)
    assert r.returncode == 77, (r.returncode, r.stderr)
    assert "the old server does not support master logins: it offers no AUTH=PLAIN; " \
           "set per-user passwords or enable TLS" in r.stderr, r.stderr
    wire = relay.sent()
    assert relay.conns, "imapc never connected"
    # Courier's greeting carries its capabilities: nothing at all was sent
    print("\nbob: %d connection(s), client sent %r" % (len(relay.conns), wire))
    assert password(ADMIN).encode() not in wire and b"LOGIN" not in wire.upper() \
        and b"AUTHENTICATE" not in wire.upper(), wire
    msgs, folders = _messages_and_folders(sb, "bob")
    assert msgs == [] and folders == []


@pytest.mark.parametrize("user", ["carol", "dave"])  # Dovecot, Cyrus
def test_master_login_passes_in_one_round_trip_once(env, user):
    sb, relay = env["sb"], env["relay_" + user]
    relay.reset()
    # -p 1: one folder at a time, so one connection is the whole pull's
    # (parallel workers would each open their own after the check)
    r = sb.doveadm("new", "ferry", "pull", "-u", user, "-p", "1")
    assert "complete" in r.stdout and "failed" not in r.stdout, r.stdout
    assert len(relay.conns) == 1, "a second login (the master alone) was made"
    # one round trip: every command of the check went out before the
    # server answered any of them
    lines = relay.lines(0)
    check = (b"ID NIL", b"NAMESPACE", b"STATUS INBOX (MESSAGES UIDNEXT UIDVALIDITY)",
             b'LIST "" "*"')
    sent = {}
    for i, up, line in lines:
        tag, _, cmd = line.partition(b" ")
        if up and cmd in check and cmd not in sent.values():
            sent[tag] = cmd
    assert sorted(sent.values()) == sorted(check), lines
    last_sent = max(i for i, up, line in lines if up and line.split(b" ")[0] in sent)
    first_answer = min(i for i, up, line in lines
                       if not up and line.split(b" ")[0] in sent)
    assert last_sent < first_answer, "\n".join(repr(l)[:120] for l in lines if l[0] <= first_answer + 2)
    print("\n%s's first pull: the identity check's %d commands in one round trip"
          % (user, len(sent)))
    state = os.path.join(_new_maildir(sb, user), "dovecot-ferry.state")
    with open(state) as f:
        assert "identity=ferry-master@127.0.0.1:%d" % relay.port in f.read()

    # a later session on the old server (sync: stragglers from every old
    # folder): the proof is remembered, not made again
    relay.reset()
    sb.doveadm("new", "ferry", "sync", "-u", user)
    assert relay.conns and b"ID NIL" not in relay.sent(), relay.sent()


def test_scripted_server_every_ignored_identity_refused(env):
    sb, hostile = env["sb"], env["hostile"]
    for user in sorted(IDENTITY_HONOURED) + ["id-bad1", "id-bad2"]:
        r = sb.doveadm("new", "ferry", "pull", "-u", user, check=False)
        msgs, folders = _messages_and_folders(sb, user)
        if user in IDENTITY_HONOURED:
            assert r.returncode == 0, r.stderr
            assert folders == [".Mine-" + user], folders
        else:
            assert r.returncode == 77, (r.returncode, r.stderr)
            assert "identity check for %s failed" % user in r.stderr, r.stderr
            assert folders == [] and msgs == [], folders
    ignored = {authz for authz, owner in hostile.logins if authz != owner}
    assert ignored == {"id-bad1", "id-bad2"}, hostile.logins


def test_ferryd_marks_the_user_failed_without_retrying(env):
    """ferryd drives alice's pull through doveadm's HTTP API: the refusal
    (exit 77) is permanent, so alice is failed at the first attempt with
    the identity failure as the reason (retry_limit 3 would retry a
    temporary one), and nothing reaches her mailbox."""
    sb = env["sb"]
    fd = Ferryd(sb, retry_limit=3, retry_base=1, retry_max_delay=2)
    fd.start()
    try:
        path = os.path.join(sb.root, "identity-users.csv")
        with open(path, "w") as f:
            f.write("user,old_login,new_login,endpoint,wave\n")
            f.write("alice,alice,alice,127.0.0.1:%d,w1\n" % env["co"].port())
        fd.ctl("wave", "create", "w1")
        fd.ctl("import", path)
        fd.ctl("start")
        wait_until(lambda: fd.users()["alice"]["state"] == "failed"
                   and not fd.users()["alice"]["running"], 120, "alice failed")
        alice = fd.users()["alice"]
        assert alice["attempts"] == 1, alice
        assert "identity check for alice failed" in alice["error"], alice
        assert "ignored the authorization identity" in alice["error"], alice
        events = [e["event"] for e in fd.log(user="alice")]
        assert events.count("pull-start") == 1 and "user-failed" in events, events
        assert "pull-failed" not in events, events  # pull-failed: a retry is scheduled
    finally:
        fd.stop()
    msgs, folders = _messages_and_folders(sb, "alice")
    assert msgs == [] and folders == []
