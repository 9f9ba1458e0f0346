"""A throwaway PostgreSQL 15 (Debian's postgresql-15) for ferryd's
store = pgsql: initdb into a temporary directory as the unprivileged
`postgres` user (the package creates it), listening on 127.0.0.1 on a free
port and on a socket in that directory, password (scram) authentication
over TCP, stopped by PID at the end.

    pg = PgServer().start()
    db = pg.new_database("ferryd1")  # {conninfo, password_file, ...}
    pg.psql(db["name"], "SELECT 1")  -> stdout
    pg.stop()

Each ferryd gets its own database and role (`ferry_<name>`, owner), so
side-by-side ferryd instances never see each other's state unless a test
hands them the same database.
"""
import ctypes
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile

from .sandbox import _free_ports, proc_alive, read_text, wait_until

PG_BIN = "/usr/lib/postgresql/15/bin"
RUN_AS = "postgres"


def available():
    """None, or why PostgreSQL cannot be started here."""
    if not os.path.exists(os.path.join(PG_BIN, "postgres")):
        return "PostgreSQL 15 is not installed (apt-get install postgresql)"
    try:
        pwd.getpwnam(RUN_AS)
    except KeyError:
        return "no user %s (apt-get install postgresql creates it)" % RUN_AS
    return None


class PgServer:
    def __init__(self):
        self.root = tempfile.mkdtemp(prefix="ferry-pg-")
        self.data = os.path.join(self.root, "data")
        self.port = _free_ports(1)[0]
        self.proc = None
        self.superpw = secrets.token_hex(16)
        pw = pwd.getpwnam(RUN_AS)
        self.uid, self.gid = pw.pw_uid, pw.pw_gid
        os.chown(self.root, self.uid, self.gid)
        os.chmod(self.root, 0o755)
        self.log_path = os.path.join(self.root, "postgres.log")
        self.databases = []

    def _demote(self):
        os.setgid(self.gid)
        os.setgroups([])
        os.setuid(self.uid)

    def _demote_and_follow(self):
        """The server: as postgres, and told to shut down (SIGINT: fast
        shutdown) if the test run dies without stopping it. Set after the
        uid change, which clears it."""
        self._demote()
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGINT), 0, 0, 0)  # PR_SET_PDEATHSIG

    def _run(self, *cmd, input=None, check=True):
        r = subprocess.run(list(cmd), preexec_fn=self._demote, capture_output=True, text=True,
                           input=input, cwd=self.root, timeout=120)
        if check and r.returncode != 0:
            raise RuntimeError("%s -> %d: %s%s" % (" ".join(cmd), r.returncode, r.stdout,
                                                    r.stderr))
        return r

    def start(self):
        pwfile = os.path.join(self.root, "superpw")
        with open(pwfile, "w") as f:
            f.write(self.superpw + "\n")
        os.chown(pwfile, self.uid, self.gid)
        os.chmod(pwfile, 0o600)
        self._run(os.path.join(PG_BIN, "initdb"), "-D", self.data, "-U", "postgres",
                  "--auth-local=trust", "--auth-host=scram-sha-256", "--pwfile", pwfile,
                  "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")
        os.unlink(pwfile)
        with open(os.path.join(self.data, "postgresql.auto.conf"), "a") as f:
            f.write("listen_addresses = '127.0.0.1'\nport = %d\n"
                    "unix_socket_directories = '%s'\nfsync = off\n"
                    "synchronous_commit = off\nfull_page_writes = off\n"
                    "max_connections = 100\nshared_buffers = 32MB\n" % (self.port, self.root))
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen([os.path.join(PG_BIN, "postgres"), "-D", self.data],
                                     preexec_fn=self._demote_and_follow, stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=subprocess.STDOUT, cwd=self.root)
        log.close()

        def up():
            if self.proc.poll() is not None:
                raise RuntimeError("postgres exited with %s: %s" % (self.proc.returncode,
                                                                     self.log()))
            return self._run(os.path.join(PG_BIN, "pg_isready"), "-h", self.root, "-p",
                             str(self.port), check=False).returncode == 0
        wait_until(up, 60, "PostgreSQL to accept connections on port %d" % self.port)
        return self

    def log(self):
        return read_text(self.log_path)

    def psql(self, db, sql, user="postgres"):
        """Runs SQL over the socket (trust) as USER; -> stdout (unaligned,
        tuples only, '|' between columns)."""
        r = self._run("psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", self.root,
                      "-p", str(self.port), "-U", user, "-d", db, "-c", sql)
        return r.stdout

    def session(self, db):
        """An open psql session as postgres on DB, for what must outlast one
        statement (a transaction holding a row lock): -> PgSession."""
        return PgSession(self, db)

    def new_database(self, name):
        """A database and its owner role with a random password; -> dict
        with name, role, password, conninfo (without the password) and
        password_file (0600, for ferryd's pgsql_password_file)."""
        db = "ferry_" + "".join(c if c.isalnum() else "_" for c in name)
        db = "%s_%d" % (db, len(self.databases) + 1)
        password = secrets.token_hex(16)
        self.psql("postgres", "CREATE ROLE %s LOGIN PASSWORD '%s'" % (db, password))
        self.psql("postgres", "CREATE DATABASE %s OWNER %s" % (db, db))
        pwfile = os.path.join(tempfile.mkdtemp(prefix="ferry-pgpw-"), "pgsql.pw")
        with open(pwfile, "w") as f:
            f.write(password + "\n")
        os.chmod(pwfile, 0o600)
        info = {"name": db, "role": db, "password": password, "password_file": pwfile,
                "conninfo": "host=127.0.0.1 port=%d dbname=%s user=%s" % (self.port, db, db)}
        self.databases.append(info)
        return info

    def reader_role(self, role, password):
        """A login role for Dovecot and Postfix (no rights yet: grant_views)."""
        self.psql("postgres", "CREATE ROLE %s LOGIN PASSWORD '%s'" % (role, password))

    def grant_views(self, db, role):
        """ROLE may read the routing views of DB and nothing else of it."""
        self.psql(db, "GRANT SELECT ON ferry_passdb, ferry_userdb, ferry_transport TO %s" % role)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self.proc is not None:
            wait_until(lambda: not proc_alive(self.proc.pid), 10, "postgres to exit")
        for d in self.databases:
            shutil.rmtree(os.path.dirname(d["password_file"]), ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)


class PgSession:
    """One psql process kept open; run() returns once psql carried out the
    SQL (a marker row read back), close() ends it."""

    def __init__(self, pg, db):
        self.proc = subprocess.Popen(
            ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", pg.root, "-p",
             str(pg.port), "-U", "postgres", "-d", db], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, preexec_fn=pg._demote, cwd=pg.root, text=True)

    def run(self, sql):
        marker = "ferry-ran-" + secrets.token_hex(8)
        self.proc.stdin.write("%s\nSELECT '%s';\n" % (sql, marker))
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.strip() == marker:
                return
        raise RuntimeError("psql ended before it carried out: %s" % sql)

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
