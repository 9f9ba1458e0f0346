"""Several NEW backends behind a Dovecot proxy (issue 16): two NEW Dovecot
backends with the ferry plugin on their own loopback addresses (127.0.0.2,
127.0.0.3; the same ports, so ferryd's `doveadm = %{host}:PORT` and
`new_imap = %{host}:PORT` reach each), a Dovecot proxy on 127.0.0.1 whose
passdb is the shipped conf/dovecot-proxy-sql.conf.ext reading ferryd's
state database (view ferry_proxy), and a real ferryd.

The users are split over the two backends by the import CSV's new_host
column. ferryd pulls, verifies and cuts them over; each user's pulls run on
the backend that owns it (its doveadm log and its mail directory; the other
backend never saw the user and has no mail directory for it), and after the
cut-over the user logs in through the proxy and finds OLD's mail there,
UIDs and bodies."""
import os
import re
import tempfile

import pytest

from ferrytest import corpus
from ferrytest.ferryd import Ferryd, master_password_file
from ferrytest.imapwire import connect
from ferrytest.sandbox import MASTER_USER, REPO, Sandbox, _free_ports, password, wait_until
from ferrytest.snapshot import compare, snapshot, take

BACKENDS = ("127.0.0.2", "127.0.0.3")
OWNER = {"a1": "new", "a2": "new", "a3": "new", "b1": "new2", "b2": "new2", "b3": "new2"}
USERS = sorted(OWNER)
WAVE = "pool"


def proxy_sql_conf(root, db, ports):
    """conf/dovecot-proxy-sql.conf.ext with the test's database and the
    backends' ports in place of 143 and 110."""
    with open(os.path.join(REPO, "conf", "dovecot-proxy-sql.conf.ext")) as f:
        text = f.read()
    text, n = re.subn(r"(?m)^connect = .*$", "connect = %s" % db, text)
    assert n == 1
    text, n = re.subn(r"THEN 143\b", "THEN %d" % ports["imap"], text)
    assert n == 1
    text, n = re.subn(r"THEN 110\b", "THEN %d" % ports["pop3"], text)
    assert n == 1
    path = os.path.join(root, "dovecot-proxy-sql.conf.ext")
    with open(path, "w") as f:
        f.write(text)
    return path


@pytest.fixture(scope="module")
def env(request):
    root = tempfile.mkdtemp(prefix="ferry-backends-")
    os.chmod(root, 0o755)
    p = _free_ports(5)
    ports = {"old": {"imap": p[0], "pop3": p[1]},
             "new": {"imap": p[2], "pop3": p[3], "lmtp": p[4]}}
    db = os.path.join(root, "ferryd", "ferryd.db")  # Ferryd(sb)'s state_db
    sb = Sandbox(root=root, users=USERS, ports=ports, doveadm_http=True, batch_size=20,
                 new_backends=BACKENDS,
                 proxy_sql_conf=proxy_sql_conf(root, db, ports["new"]))
    fd = None
    failed_before = request.session.testsfailed
    try:
        sb.start()
        secret = master_password_file(sb)
        fd = Ferryd(sb, max_concurrent=4, max_per_host=4,
                    doveadm="%%{host}:%d" % sb.doveadm_http_port,
                    new_imap="%%{host}:%d" % sb.port("new"),
                    old_master_user=MASTER_USER, old_master_password_file=secret,
                    new_master_user=MASTER_USER, new_master_password_file=secret)
        assert fd.db_path == db
        fd.start()
        yield sb, fd
    finally:
        if fd is not None and fd.alive():
            fd.stop()
        sb.stop()
        sb.finish(request.session, failed_before, root=root)


def proxy_login(sb, user):
    return connect("127.0.0.1", sb.port("proxy"), user, password(user))


def separator(conn):
    typ, data = conn.list('""', '""')
    assert typ == "OK", data
    return data[0].decode().split('"')[1]


def doveadm_commands(sb, inst):
    """{user: {commands}} of the doveadm HTTP API's commands run on inst
    (2.3: "Executing command 'ferry pull' as 'a1'", 2.4: "cmd ferry pull:
    Executing command as 'a1'")."""
    out = {}
    text = sb.log_text(inst)
    found = re.findall(r"Executing command '([^']+)' as '([^']+)'", text) + \
        re.findall(r"cmd ([^:]+): Executing command as '([^']+)'", text)
    for cmd, user in found:
        out.setdefault(user, set()).add(cmd)
    return out


def maildir(sb, inst, user):
    return os.path.join(sb.home(inst, user), "Maildir")


def test_pulls_run_on_the_owning_backend_and_logins_go_through_the_proxy(env):
    sb, fd = env
    for i, u in enumerate(USERS):
        spec = corpus.small_spec(seed=30 + i, big=150000) if u in ("a1", "b1") else \
            corpus.folder_spec("Bulk", n=12 + i, seed=30 + i, gaps=3)
        corpus.seed_old(sb, u, spec)
    csv = os.path.join(sb.root, "users.csv")
    with open(csv, "w") as f:
        f.write("user,endpoint,tls,wave,new_host\n")
        for u in USERS:
            f.write("%s,127.0.0.1:%d,none,%s,%s\n" % (u, sb.port("old"), WAVE, sb.addr(OWNER[u])))
    assert "imported 6 users" in fd.ctl("import", csv).stdout
    status = {u["name"]: u for u in fd.status()["users"]}
    assert {u: status[u]["new_host"] for u in USERS} == {u: sb.addr(OWNER[u]) for u in USERS}

    # not cut over yet: the proxy sends the login to OLD ('.' is OLD's separator)
    conn = proxy_login(sb, "a1")
    try:
        assert separator(conn) == "."
        assert compare(snapshot(sb, "old", "a1"), take(conn)) == []
    finally:
        conn.logout()

    fd.ctl("start")

    def verified():
        st = fd.users()
        bad = {u: st[u]["error"] for u in USERS if st[u]["state"] == "failed"}
        assert not bad, bad
        return all(st[u]["state"] == "verified" and not st[u]["running"] for u in USERS)
    wait_until(verified, 120, "every user pulled and verified")

    r = fd.ctl("cutover", "--wave", WAVE, "--settle", "0", timeout=120)
    assert "cut-over of wave %s done: 6 users" % WAVE in r.stdout, r.stdout + r.stderr

    # each user's pulls ran on its owner, never on the other backend
    starts = {e["user"]: e.get("new_host") for e in fd.events() if e.get("event") == "pull-start"}
    assert starts == {u: sb.addr(OWNER[u]) for u in USERS}
    on = {inst: doveadm_commands(sb, inst) for inst in sb.backends()}
    for u in USERS:
        other = "new2" if OWNER[u] == "new" else "new"
        # pulled, synced (presync and the cut-over's final pass) and asked
        # for its folders (verification) on its owner
        assert {"ferry pull", "ferry sync", "ferry status"} <= on[OWNER[u]].get(u, set()), \
            (u, on)
        assert u not in on[other], (u, on)
        assert "user=<%s>" % u not in sb.log_text(other)  # no login either
        assert os.path.isdir(maildir(sb, OWNER[u], u)), u
        assert not os.path.exists(maildir(sb, other, u)), (u, other)

    # cut over: the proxy sends each login to its backend, which has OLD's mail
    proxy_log = sb.log_size("proxy")
    for u in USERS:
        old = snapshot(sb, "old", u)
        conn = proxy_login(sb, u)
        try:
            assert separator(conn) == "/"  # NEW's
            assert compare(old, take(conn)) == []
        finally:
            conn.logout()
    route = fd.api("GET", "/v1/route?user=b1")[1]["routes"][0]
    assert route["route"] == "new" and route["new_host"] == sb.addr("new2"), route
    proxied = dict(re.findall(r"proxy\(([^,)]+),([0-9.]+):\d+\): Started proxying",
                              sb.log_text("proxy", proxy_log)))
    assert proxied == {u: sb.addr(OWNER[u]) for u in USERS}
    # the logins themselves left no mail directory on the other backend
    for u in USERS:
        other = "new2" if OWNER[u] == "new" else "new"
        assert not os.path.exists(maildir(sb, other, u)), (u, other)
