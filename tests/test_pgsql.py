"""ferryd on PostgreSQL (store = pgsql, issue 16): Dovecot's passdb and
userdb (dovecot-pgsql) and Postfix's transport lookup (postfix-pgsql) read
the routing from the same views with the same queries as on SQLite.

The Dovecot configuration is conf/dovecot-sql.conf.ext with only `driver`
and `connect` changed, the Postfix map conf/postfix/transport.pgsql.cf whose
query is transport.sqlite.cf's; both connect as a role that may only read
the three views. Where a login goes is checked on the servers themselves
(the hierarchy separator: '.' = OLD through NEW's proxy, '/' = NEW), the
userdb answer on NEW's auth-userdb socket, the nexthop with `postmap -q`.
A real ferryd cuts a wave over; nothing writes the routes but ferryd."""
import os
import re
import subprocess
import tempfile
import time

import pytest

from ferrytest import corpus, pgsql
from ferrytest.ferryd import Ferryd
from ferrytest.routing import DOMAIN, separator, userdb_phase
from ferrytest.sandbox import BUILD_DIR, REPO, Sandbox, wait_until

PGSQL_MAP = "/usr/lib/postfix/postfix-pgsql.so"
DOVECOT_PGSQL = "/usr/lib/dovecot/modules/auth/libdriver_pgsql.so"
WHY_NOT = (pgsql.available() or
           (None if os.path.exists(PGSQL_MAP) else "apt-get install postfix-pgsql") or
           (None if os.path.exists("/usr/lib/dovecot/modules/libdriver_pgsql.so") or
            os.path.exists(DOVECOT_PGSQL) else "apt-get install dovecot-pgsql"))
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=str(WHY_NOT))
# to be lifted once scripts/trixie-root.sh installs dovecot-pgsql (adding it
# rebuilds the shared root, so not while other runs use it)
DOVECOT_ONCE = "Dovecot 2.4's pgsql driver is not in the trixie root yet (dovecot-pgsql)"

STAY = "alice"            # wave "later": stays on OLD
MOVE = ["bob", "carol"]   # wave "now": cut over
USERS = [STAY] + MOVE
READER, READER_PW = "ferry_reader", "reader-pw-for-tests"


def query_lines(path):
    with open(path) as f:
        return [l for l in f.read().splitlines() if re.match(r"(password_query|user_query|"
                                                             r"iterate_query|query) = ", l)
                or l.startswith("  ")]


def dovecot_pgsql_conf(root, pg, db):
    """conf/dovecot-sql.conf.ext with driver pgsql and the reader role."""
    with open(os.path.join(REPO, "conf", "dovecot-sql.conf.ext")) as f:
        text = f.read()
    text, n1 = re.subn(r"(?m)^driver = .*$", "driver = pgsql", text)
    text, n2 = re.subn(r"(?m)^connect = .*$", "connect = host=127.0.0.1 port=%d dbname=%s"
                       " user=%s password=%s" % (pg.port, db["name"], READER, READER_PW), text)
    assert n1 == 1 and n2 == 1
    path = os.path.join(root, "dovecot-pgsql.conf.ext")
    with open(path, "w") as f:
        f.write(text)
    return path


def postfix_pgsql_cf(root, pg, db):
    with open(os.path.join(REPO, "conf", "postfix", "transport.pgsql.cf")) as f:
        text = f.read()
    for key, value in (("hosts", "127.0.0.1:%d" % pg.port), ("user", READER),
                       ("password", READER_PW), ("dbname", db["name"]), ("domain", DOMAIN)):
        text, n = re.subn(r"(?m)^%s = .*$" % key, "%s = %s" % (key, value), text)
        assert n == 1, key
    confdir = os.path.join(root, "postfix-conf")
    os.makedirs(confdir)
    with open(os.path.join(confdir, "main.cf"), "w") as f:
        f.write("compatibility_level = 3.6\n")
    path = os.path.join(confdir, "transport.pgsql.cf")
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)
    return path


@pytest.fixture(scope="module")
def env(request, pg_server):
    root = tempfile.mkdtemp(prefix="ferry-pgsql-")
    os.chmod(root, 0o755)
    db = pg_server.new_database("routing")
    # before Dovecot starts: its auth process connects at start (and
    # Dovecot 2.3.19's crashed, signal 11, when that login was refused)
    pg_server.reader_role(READER, READER_PW)
    sb = Sandbox(root=root, users=USERS, doveadm_http=True,
                 new_sql_conf=dovecot_pgsql_conf(root, pg_server, db))
    fd = None
    failed_before = request.session.testsfailed
    try:
        sb.start()
        fd = Ferryd(sb, store="pgsql", pgsql_conninfo=db["conninfo"],
                    pgsql_password_file=db["password_file"], max_concurrent=4)
        fd.start()
        # the views exist once ferryd has started: Dovecot's and Postfix's
        # role may read them and nothing else
        pg_server.grant_views(db["name"], READER)
        yield sb, fd, pg_server, db, postfix_pgsql_cf(root, pg_server, db)
    finally:
        if fd is not None and fd.alive():
            fd.stop()
        sb.stop()
        sb.finish(request.session, failed_before, root)


def postmap(cf, address):
    """Postfix's own lookup of ADDRESS in the map (its directory holds a
    main.cf for postmap -c: the system may have none)."""
    confdir = os.path.dirname(cf)
    r = subprocess.run(["postmap", "-c", confdir, "-q", address, "pgsql:" + cf],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode in (0, 1) and not r.stderr.strip(), r.stderr  # 1: not found
    return r.stdout.strip() if r.returncode == 0 else None


@pytest.mark.parametrize("unit", ["test_store", "test_userstate", "test_runq"])
def test_store_unit_tests_on_postgresql(pg_server, unit):
    """The store's, the user-state transitions' (compare-and-set) and the run
    queue's unit tests (tests/unit/, Criterion), as `make unit` runs them on
    SQLite, against PostgreSQL: one database per test process."""
    env = dict(os.environ, FERRY_UNIT_PGSQL="host=%s port=%d user=postgres dbname=postgres"
               % (pg_server.root, pg_server.port))
    r = subprocess.run([os.path.join(BUILD_DIR, "unit", unit), "--jobs=1"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"Tested: (\d+) \| Passing: (\d+) \| Failing: 0 \| Crashing: 0",
                  r.stdout + r.stderr)
    assert m and int(m.group(1)) > 0, r.stdout + r.stderr


def test_same_queries_as_on_sqlite():
    """The PostgreSQL confs differ from the SQLite ones only in how they
    connect: every query line is the same."""
    assert query_lines(os.path.join(REPO, "conf", "postfix", "transport.pgsql.cf")) == \
        query_lines(os.path.join(REPO, "conf", "postfix", "transport.sqlite.cf"))
    with open(os.path.join(REPO, "conf", "dovecot-sql.conf.ext")) as f:
        assert "password_query" in f.read()  # dovecot_pgsql_conf() changes driver/connect only


def test_dovecot_and_postfix_route_from_postgresql(env):
    sb, fd, pg, db, cf = env
    for i, u in enumerate(USERS):
        corpus.seed_old(sb, u, corpus.folder_spec("Bulk", n=5, seed=i))
    fd.import_users(USERS, lambda u: "later" if u == STAY else "now")
    new_t = "lmtp:inet:127.0.0.1:%d" % sb.port("new", "lmtp")
    old_t = "smtp:[old.example.test]:25"
    fd.ctl("route", "config", "--new-transport", new_t,
           "--endpoint", "127.0.0.1:%d" % sb.port("old"), "--transport", old_t)

    # before: everybody on OLD (NEW proxies the login; OLD's separator)
    for u in USERS:
        assert userdb_phase(sb, u) == "presync"
        assert separator(sb, u) == "."
        assert postmap(cf, "%s@%s" % (u, DOMAIN)) == old_t
    assert postmap(cf, "stranger@%s" % DOMAIN) is None
    assert postmap(cf, "alice@elsewhere.test") is None

    # ferryd cuts wave "now" over: the routes change in PostgreSQL only
    fd.ctl("cutover", "--wave", "now", "--force", "--settle", "0s", timeout=300)
    for u in MOVE:
        assert userdb_phase(sb, u) == "cutover"
        assert separator(sb, u) == "/"
        assert postmap(cf, "%s@%s" % (u, DOMAIN)) == new_t
    assert userdb_phase(sb, STAY) == "presync"
    assert separator(sb, STAY) == "."
    assert postmap(cf, "%s@%s" % (STAY, DOMAIN)) == old_t
    # the same answer from the views Dovecot's and Postfix's role reads
    rows = pg.psql(db["name"], "SELECT login, ferry_phase FROM ferry_userdb ORDER BY login",
                   user=READER)
    assert rows.split() == ["alice|presync", "bob|cutover", "carol|cutover"]
    # ... and that role cannot read ferryd's tables
    with pytest.raises(RuntimeError, match="permission denied"):
        pg.psql(db["name"], "SELECT password_enc FROM users", user=READER)


def test_schema_versioned_and_reopen_keeps_views_and_grants(env):
    """A restart migrates nothing and leaves the views (and the reader's
    grant) alone; the schema version is recorded."""
    sb, fd, pg, db, cf = env
    assert pg.psql(db["name"], "SELECT version FROM ferry_schema").strip() == "3"
    before = pg.psql(db["name"], "SELECT value FROM settings WHERE key = 'routing_views_hash'")
    assert re.fullmatch(r"[0-9a-f]{16}\n", before)
    fd.stop()
    fd.start()
    assert pg.psql(db["name"], "SELECT value FROM settings WHERE key = 'routing_views_hash'") \
        == before
    assert postmap(cf, "bob@%s" % DOMAIN).startswith("lmtp:")
    # the migration log stays append-only on PostgreSQL too
    with pytest.raises(RuntimeError, match="append-only"):
        pg.psql(db["name"], "DELETE FROM log", user=db["role"])


def test_locked_database_costs_the_loop_at_most_lock_timeout(env):
    """Another session holds ferryd's users table locked for 5 s (reads
    too): every API request meanwhile is answered (an error at worst)
    within about pgsql_lock_timeout_ms (5 ms), never after the 5 s; then
    all is well. (tests/test_ferryd_blocking.py: the write lock, with pulls.)
    Wall-clock bounds are loose (a loaded machine); the printed maxima are
    the measurement."""
    sb, fd, pg, db, cf = env
    holder = subprocess.Popen(
        ["psql", "-X", "-q", "-h", pg.root, "-p", str(pg.port), "-U", "postgres", "-d",
         db["name"], "-c", "BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE;"
         " SELECT pg_sleep(5); COMMIT;"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        preexec_fn=pg._demote)
    try:
        wait_until(lambda: pg.psql(db["name"], "SELECT count(*) FROM pg_locks l JOIN pg_class c"
                                   " ON c.oid = l.relation WHERE c.relname = 'users' AND"
                                   " l.mode = 'AccessExclusiveLock' AND l.granted").strip()
                   == "1", 10, "the lock on users")
        worst = {"/v1/health": 0.0, "/v1/status?limit=10": 0.0}
        codes = set()
        t_end = time.monotonic() + 3.5
        while time.monotonic() < t_end:
            for path in worst:
                t0 = time.monotonic()
                code, _ = fd.api("GET", path)
                worst[path] = max(worst[path], time.monotonic() - t0)
                codes.add((path, code))
        assert holder.poll() is None, "the lock was released before the measurement ended"
    finally:
        holder.wait(timeout=30)
    print("\nAPI latency while users was locked (max, s): %s; answers %s" % (worst, sorted(codes)))
    assert all(v < 1.0 for v in worst.values()), worst
    assert ("/v1/health", 200) in codes
    assert fd.alive()
    assert fd.api("GET", "/v1/status?limit=10")[0] == 200


def test_broken_connection_is_reestablished(env):
    """PostgreSQL ends ferryd's session (a restart, a failover, an admin):
    at most the call in flight fails, the next one reconnects and takes the
    database's holder lock again."""
    sb, fd, pg, db, cf = env

    def ferryd_backends():
        return pg.psql(db["name"], "SELECT pid FROM pg_stat_activity WHERE"
                       " application_name = 'ferryd' AND datname = current_database()").split()
    before = ferryd_backends()
    assert len(before) == 1
    pg.psql(db["name"], "SELECT pg_terminate_backend(%s)" % before[0])
    wait_until(lambda: fd.api("GET", "/v1/status?limit=10")[0] == 200, 20, "status again")
    after = ferryd_backends()
    assert len(after) == 1 and after != before
    assert fd.alive()
    assert pg.psql(db["name"], "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                   " AND granted AND pid = %s" % after[0]).strip() == "1"


def test_one_ferryd_per_node_name_until_the_holder_dies(env):
    """Several ferryd share a database (test_pgsql_multi.py), each under its
    own node_name: a second ferryd with the same name is refused while the
    first lives (its start-up recovery takes back that name's claims); once
    the first is killed -9, PostgreSQL drops its lock and the second starts."""
    sb, fd, pg, db, cf = env
    second = Ferryd(sb, name="ferryd-second", store="pgsql", pgsql_conninfo=db["conninfo"],
                    pgsql_password_file=db["password_file"], pgsql_connect_timeout=2,
                    node_name=fd.events()[0]["node"])
    with pytest.raises(RuntimeError, match="exited"):
        second.start()
    assert "another ferryd named" in second.output()
    fd.kill()
    second.start()
    assert second.users()[STAY]["state"] in ("pending", "presync", "done")
    second.stop()
    fd.start()
