"""Download Debian packages that must not be installed (they conflict with
dovecot-imapd: `Conflicts: imap-server`) and unpack them into a private
root, once, under a cache directory:

    <CACHE>/<name>/debs/*.deb     what `apt-get download` fetched
    <CACHE>/<name>/root/...       `dpkg-deb -x` of every .deb
    <CACHE>/<name>/stamp          JSON: package versions; written last

Only plain shared libraries the unpacked binaries link against are
installed with apt-get, after `apt-get -s install` proved that nothing
would be removed. Idempotent and quick when the stamp is there; a lock
file serialises concurrent callers. CACHE is $FERRY_TEST_CACHE or
/var/cache/ferry-test.

Also shared by cyrus.py and courier.py: syslog_shim() (an LD_PRELOAD that
sends syslog(3) to a file, and optionally turns fsync off) and OldServer,
the base class with the OLD-half-of-Sandbox API (start/stop/port/imap/
seed/snapshot/expected_snapshot/imapc_settings/new_extra)."""
import fcntl
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

CACHE = os.environ.get("FERRY_TEST_CACHE", "/var/cache/ferry-test")


class Unavailable(RuntimeError):
    """The packages cannot be fetched (no registry): tests skip."""


def _run(cmd, **kw):
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C")
    return subprocess.run(cmd, capture_output=True, text=True, env=env, **kw)


def _installed(pkgs):
    """The subset of pkgs dpkg has installed (one dpkg-query call)."""
    r = _run(["dpkg-query", "-W", "-f=${Package} ${Status}\n"] + list(pkgs))
    return {l.split()[0].split(":")[0] for l in r.stdout.splitlines()
            if l.endswith(" installed")}


def _apt_update_once(state):
    if not state.get("updated"):
        _run(["apt-get", "update"], timeout=600)
        state["updated"] = True


def install_libraries(libs, state):
    """apt-get install the missing ones of `libs`, refusing any removal."""
    have = _installed(libs)
    missing = [p for p in libs if p not in have]
    if not missing:
        return []
    sim = _run(["apt-get", "-s", "install", "--no-install-recommends", "-y"] + missing)
    if sim.returncode != 0 and not state.get("updated"):
        _apt_update_once(state)
        sim = _run(["apt-get", "-s", "install", "--no-install-recommends", "-y"] + missing)
    if sim.returncode != 0:
        raise Unavailable("apt-get -s install %s: %s" % (" ".join(missing), sim.stderr.strip()))
    removals = [l for l in sim.stdout.splitlines() if l.startswith("Remv ")]
    if removals:
        raise RuntimeError("installing %s would remove packages: %s" % (missing, removals))
    r = _run(["apt-get", "install", "--no-install-recommends", "-y"] + missing, timeout=900)
    if r.returncode != 0:
        raise RuntimeError("apt-get install %s failed: %s" % (missing, r.stderr.strip()[-2000:]))
    return missing


def _download(pkgs, debs, state):
    os.makedirs(debs, exist_ok=True)
    os.chmod(debs, 0o755)  # apt's _apt user writes the downloads
    r = _run(["apt-get", "download"] + pkgs, cwd=debs, timeout=600)
    if r.returncode != 0 and not state.get("updated"):
        _apt_update_once(state)
        r = _run(["apt-get", "download"] + pkgs, cwd=debs, timeout=600)
    if r.returncode != 0:
        raise Unavailable("apt-get download %s: %s" % (" ".join(pkgs), r.stderr.strip()[-1000:]))


def ensure(name, debs_wanted, libs):
    """Unpacked root of `debs_wanted` (package names) at CACHE/name/root,
    with `libs` installed. Returns the root path."""
    base = os.path.join(CACHE, name)
    root, stamp = os.path.join(base, "root"), os.path.join(base, "stamp")
    os.makedirs(base, exist_ok=True)
    with open(os.path.join(base, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = {}
        install_libraries(libs, state)
        try:
            with open(stamp) as f:
                if sorted(json.load(f)["packages"]) == sorted(debs_wanted):
                    return root
        except (OSError, ValueError, KeyError):
            pass
        debs = os.path.join(base, "debs")
        shutil.rmtree(debs, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
        _download(list(debs_wanted), debs, state)
        versions = {}
        for deb in sorted(os.listdir(debs)):
            if not deb.endswith(".deb"):
                continue
            r = _run(["dpkg-deb", "-x", os.path.join(debs, deb), root])
            if r.returncode != 0:
                raise RuntimeError("dpkg-deb -x %s: %s" % (deb, r.stderr))
            versions[deb.split("_")[0]] = deb.split("_")[1]
        if set(versions) != set(debs_wanted):
            raise RuntimeError("downloaded %s, wanted %s" % (sorted(versions), sorted(debs_wanted)))
        os.chmod(base, 0o755)
        os.chmod(root, 0o755)
        with open(stamp + ".tmp", "w") as f:
            json.dump({"packages": versions}, f, indent=1)
        os.rename(stamp + ".tmp", stamp)
        return root


def lib_path(root):
    """LD_LIBRARY_PATH for binaries of an unpacked root."""
    return ":".join(os.path.join(root, d) for d in (
        "usr/lib/x86_64-linux-gnu", "usr/lib", "usr/lib/courier-authlib"))


def missing_libraries(root, binaries):
    """'ldd' of the given binaries: the libraries that are still missing."""
    env = dict(os.environ, LD_LIBRARY_PATH=lib_path(root))
    missing = set()
    for b in binaries:
        out = subprocess.run(["ldd", os.path.join(root, b)], capture_output=True,
                             text=True, env=env).stdout
        missing |= {l.split()[0] for l in out.splitlines() if "not found" in l}
    return sorted(missing)


# ---- syslog -> file shim ------------------------------------------------------
# Cyrus logs only through syslog(3), and test machines run no syslog daemon
# (no /dev/log). Preloaded into Cyrus's processes, this writes every syslog
# line to $FERRY_SYSLOG_FILE instead. Built with cc when the cache is made;
# without a compiler the servers run anyway, just without a log. With
# FERRY_NOFSYNC=1 it also turns fsync()/fdatasync() into no-ops.
SYSLOG_SHIM_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>
static char ident[64];
void openlog(const char *id, int opt, int fac) { (void)opt; (void)fac; if (id) snprintf(ident, sizeof ident, "%s", id); }
void closelog(void) {}
int setlogmask(int mask) { return mask; }
void vsyslog(int pri, const char *fmt, va_list ap) {
    const char *path = getenv("FERRY_SYSLOG_FILE");
    char buf[8192]; time_t t = time(NULL); struct tm tm; int n, fd;
    if (!path) return;
    localtime_r(&t, &tm);
    n = strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S ", &tm);
    n += snprintf(buf + n, sizeof buf - n, "%s[%d] <%d>: ", ident, (int)getpid(), pri & 7);
    if (n < (int)sizeof buf) n += vsnprintf(buf + n, sizeof buf - n, fmt, ap);
    if (n > (int)sizeof buf - 2) n = sizeof buf - 2;
    if (n > 0 && buf[n - 1] != '\n') buf[n++] = '\n';
    fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0) { (void)!write(fd, buf, n); close(fd); }
}
void syslog(int pri, const char *fmt, ...) { va_list ap; va_start(ap, fmt); vsyslog(pri, fmt, ap); va_end(ap); }
void __syslog_chk(int pri, int flag, const char *fmt, ...) { va_list ap; (void)flag; va_start(ap, fmt); vsyslog(pri, fmt, ap); va_end(ap); }
void __vsyslog_chk(int pri, int flag, const char *fmt, va_list ap) { (void)flag; vsyslog(pri, fmt, ap); }
/* FERRY_NOFSYNC=1: like Dovecot OLD's mail_fsync = never (seeding speed) */
int fsync(int fd) { return getenv("FERRY_NOFSYNC") ? 0 : syscall(SYS_fsync, fd); }
int fdatasync(int fd) { return getenv("FERRY_NOFSYNC") ? 0 : syscall(SYS_fdatasync, fd); }
"""


def syslog_shim(name):
    """Path of the syslog->file shim for CACHE/name (built once), or None."""
    import hashlib
    base = os.path.join(CACHE, name)
    tag = hashlib.sha256(SYSLOG_SHIM_C.encode()).hexdigest()[:10]
    so = os.path.join(base, "syslog2file-%s.so" % tag)
    if os.path.exists(so):
        return so
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return None
    src = os.path.join(base, "syslog2file.c")
    with open(src, "w") as f:
        f.write(SYSLOG_SHIM_C)
    r = _run([cc, "-O2", "-fPIC", "-shared", "-o", so + ".tmp", src])
    if r.returncode != 0:
        return None
    os.rename(so + ".tmp", so)
    return so


# ---- what Cyrus and Courier share --------------------------------------------

class OldServer:
    """The OLD half of Sandbox, for a non-Dovecot server (subclasses:
    cyrus.Cyrus, courier.Courier). An IMAP and a POP3 port on 127.0.0.1
    (ports["imap"], ports["pop3"]; pop3() logs in there), a temp root,
    users with sandbox.password(user), a master identity, seeding from
    corpus specs and snapshots named like Dovecot OLD's.

    Folder names: the server shows personal folders under "INBOX" + sep
    ("INBOX.Sent", Cyrus with unixhierarchysep: "INBOX/Sent"); snapshots
    and specs name them like Dovecot OLD does: "Sent", "Projects/2019/Q1",
    "INBOX" stays "INBOX". A spec folder "INBOX/x" cannot exist on these
    servers (it would be the same folder as "x") and is refused."""
    kind = None
    sep = "."

    def __init__(self, root=None, users=("alice", "bob", "carol"), port=None, pop3_port=None):
        from . import sandbox
        self.created_root = root is None
        self.root = os.path.abspath(root or tempfile.mkdtemp(prefix="ferry-%s-" % self.kind))
        self.users = list(users)
        free = sandbox._free_ports(2)
        self.ports = {"imap": port or free[0], "pop3": pop3_port or free[1]}
        self.master_user, self.master_password = sandbox.MASTER_USER, sandbox.MASTER_PASSWORD
        self._procs = []  # Popen objects of the daemons we started, in start order
        self._known = set()  # every pid seen under them (for stop)

    # ---- paths / ports ---------------------------------------------------
    def path(self, *parts):
        return os.path.join(self.root, *parts)

    def port(self, proto="imap"):
        return self.ports[proto]

    # ---- lifecycle -------------------------------------------------------
    def pids(self):
        """Our daemons and all their descendants that are alive."""
        from .sandbox import _descendants, proc_alive
        out = set()
        for p in self._procs:
            if proc_alive(p.pid):
                out |= {p.pid} | _descendants(p.pid)
        self._known |= out
        return {p for p in out if proc_alive(p)}

    def processes(self):
        from .sandbox import cmdline
        return {p: cmdline(p) for p in self.pids()}

    def running(self):
        return bool(self.pids())

    def _spawn(self, argv, env, out_name, user=None):
        from .sandbox import SandboxError
        out = open(self.path(out_name), "ab")
        try:
            kw = {}
            if user is not None:
                pw = pwd.getpwnam(user)
                kw = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
            p = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, cwd=self.root, **kw)
        except OSError as e:
            raise SandboxError("%s: cannot start %s: %s" % (self.kind, argv[0], e))
        finally:
            out.close()
        self._procs.append(p)
        return p

    def _wait_greeting(self, timeout=20):
        """Every port (IMAP, POP3) answers with its greeting."""
        from .sandbox import SandboxError, _greets, wait_until
        for proto, port in self.ports.items():
            def up():
                if any(p.poll() is not None for p in self._procs):
                    raise SandboxError("%s exited during start: %s" % (self.kind,
                                                                      self.log_tail()))
                return _greets(port)
            wait_until(up, timeout, "%s %s greeting on port %d" % (self.kind, proto, port))

    def stop(self, timeout=15, idle_grace=1.0):
        """SIGTERM our daemons (last started first), then any process left
        under them; SIGKILL what outlives the deadline. Only our PIDs.
        A daemon still there idle_grace seconds after its last child ended
        is SIGKILLed too: Cyrus's master, told to stop while it is starting
        a pop3d (a POP3 session and another connection just before stop),
        reaps every child and then spins until the deadline."""
        from .sandbox import _descendants, _kill, proc_alive, wait_until
        procs = self.pids()
        for p in reversed(self._procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                childless_since = []

                def done():
                    if p.poll() is not None:
                        return True
                    if any(map(proc_alive, _descendants(p.pid))):
                        childless_since.clear()
                    elif not childless_since:
                        childless_since.append(time.monotonic())
                    return bool(childless_since) and \
                        time.monotonic() - childless_since[0] > idle_grace
                try:
                    wait_until(done, timeout, "%s pid %d to exit" % (self.kind, p.pid))
                except TimeoutError:
                    pass
                if p.poll() is None:
                    p.kill()
                    p.wait(5)
        procs |= self._known
        for pid in procs:
            _kill(pid, signal.SIGTERM)
        try:
            wait_until(lambda: not any(map(proc_alive, procs)), 5,
                       "%s processes to exit" % self.kind)
        except TimeoutError:
            for pid in procs:
                _kill(pid, signal.SIGKILL)
            wait_until(lambda: not any(map(proc_alive, procs)), 5,
                       "%s processes to die after SIGKILL" % self.kind)
        self._procs, self._known = [], set()

    def cleanup(self):
        self.stop()
        if self.created_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def log_text(self, since=0):
        from .sandbox import read_text
        return read_text(self.log_path, since)

    def log_tail(self, n=3000):
        return self.log_text()[-n:]

    # ---- clients ---------------------------------------------------------
    def imap(self, user, master=False, timeout=60):
        """Logged-in imaplib.IMAP4 as `user`; master=True: the master
        identity logs in as the user (see the subclass for how)."""
        from . import imapwire
        from .sandbox import password
        if master:
            conn = self._master_login(user, timeout)
        else:
            conn = imapwire.connect("127.0.0.1", self.port(), user, password(user),
                                    timeout=timeout)
        # imaplib sends an APPEND literal and its CRLF in two writes: with
        # Nagle + delayed ACK each APPEND to Cyrus/Courier waits ~40 ms
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def pop3(self, user, timeout=60):
        """Logged-in poplib.POP3 as `user` (USER/PASS) on the POP3 port."""
        import poplib
        from .sandbox import password
        pop = poplib.POP3("127.0.0.1", self.port("pop3"), timeout=timeout)
        try:
            pop.user(user)
            pop.pass_(password(user))
        except BaseException:
            pop.close()
            raise
        return pop

    # ---- folder names ------------------------------------------------------
    def wire_name(self, name):
        """Spec/snapshot name ('/'-separated unicode) -> quoted mUTF-7 wire name."""
        from .imapwire import mailbox_arg
        return mailbox_arg(self.server_name(name), self.sep)

    def server_name(self, name):
        """'Sent' -> 'INBOX/Sent' (still '/'-separated, unicode)."""
        if name == "INBOX":
            return name
        if name.upper().startswith("INBOX/"):
            raise ValueError("%s cannot hold %r: INBOX children and top-level folders "
                             "are the same folders there" % (self.kind, name))
        return "INBOX/" + name

    @staticmethod
    def snapshot_name(name):
        """Snapshot name the server gave ('INBOX/Sent') -> Dovecot OLD's ('Sent')."""
        return name[6:] if name.upper().startswith("INBOX/") else name

    def normalise(self, snap):
        """Rename a raw snapshot's folders and subscriptions in place."""
        folders = {}
        for name, f in snap.folders.items():
            f.name = self.snapshot_name(name)
            folders[f.name] = f
        snap.folders = folders
        snap.subscriptions = {self.snapshot_name(n) for n in snap.subscriptions}
        return snap

    def subscriptions(self, conn):
        """Names (server form, '/'-separated) of the subscribed folders."""
        from .imapwire import check, mutf7_decode, parse_list
        out = set()
        for item in check(conn.lsub('""', "*"), "LSUB"):
            if item is None:
                continue
            flags, delim, wire = parse_list(item)
            if not self._lsub_counts(flags):
                continue
            name = mutf7_decode(wire)
            out.add(name.replace(delim, "/") if delim and delim != "/" else name)
        return out

    def _lsub_counts(self, flags):
        return True

    @staticmethod
    def _uidnext_from_status(conn):
        """Courier's SELECT/EXAMINE sends no [UIDNEXT n] (RFC 3501: SHOULD);
        snapshot.take() reads it from there: add it from STATUS."""
        select = conn.select

        def select_with_uidnext(mailbox="INBOX", readonly=False):
            typ, data = select(mailbox, readonly)
            if typ == "OK" and "UIDNEXT" not in conn.untagged_responses:
                st = conn.status(mailbox, "(UIDNEXT)")
                m = re.search(rb"UIDNEXT (\d+)", b" ".join(d for d in st[1] if d))
                if st[0] == "OK" and m:
                    conn.untagged_responses["UIDNEXT"] = [m.group(1)]
            return typ, data
        conn.select = select_with_uidnext
        return conn

    def take(self, conn, bodies=True):
        from . import snapshot
        snap = snapshot.take(self._uidnext_from_status(conn), bodies)
        snap.subscriptions = self.subscriptions(conn)
        return self.normalise(snap)

    def snapshot(self, user, master=False, bodies=True, timeout=300):
        """snapshot.take() of user's mailboxes, named like on Dovecot OLD."""
        conn = self.imap(user, master=master, timeout=timeout)
        try:
            return self.take(conn, bodies)
        finally:
            conn.logout()

    # ---- seeding -----------------------------------------------------------
    def seed(self, user, spec):
        """Create spec's folders for a fresh user, APPEND, EXPUNGE and
        SUBSCRIBE as the spec says. Returns the spec as the server holds
        it (a copy; UIDVALIDITY values are the server's where it cannot
        be told them); compare snapshots with expected_snapshot(that)."""
        import copy
        from .imapwire import check
        spec = copy.deepcopy(spec)
        for f in spec.folders:
            self.server_name(f.name)  # refuse INBOX/x early
        conn = self.imap(user)
        try:
            for f in spec.folders:
                if f.name != "INBOX":
                    check(conn.create(self.wire_name(f.name)), "CREATE " + f.name)
                f.uidvalidity = self._set_uidvalidity(conn, user, f)
            for g in spec.ghost_subscriptions:
                check(conn.create(self.wire_name(g)), "CREATE " + g)
            for f in spec.folders:
                self._fill(conn, f)
            for name in [f.name for f in spec.folders if f.subscribed]:
                check(conn.subscribe(self.wire_name(name)), "SUBSCRIBE " + name)
            for g in spec.ghost_subscriptions:
                check(conn.subscribe(self.wire_name(g)), "SUBSCRIBE " + g)
                check(conn.delete(self.wire_name(g)), "DELETE " + g)
                self._keep_ghost(conn, g)
        finally:
            conn.logout()
        return spec

    def _status(self, conn, name):
        from .imapwire import check
        text = check(conn.status(self.wire_name(name), "(UIDVALIDITY UIDNEXT MESSAGES)"),
                     "STATUS " + name)[0].decode()
        return {k: int(v) for k, v in re.findall(r"(UIDVALIDITY|UIDNEXT|MESSAGES) (\d+)", text)}

    def _set_uidvalidity(self, conn, user, folder):
        """Make the new, empty folder use folder.uidvalidity if the server
        can be told; return the UIDVALIDITY it will report."""
        return self._status(conn, folder.name)["UIDVALIDITY"]

    def _keep_ghost(self, conn, name):
        """After DELETE: make sure the subscription survives."""

    def _fill(self, conn, f):
        from .corpus import append_message
        from .imapwire import check
        from .snapshot import uid_ranges
        wire = self.wire_name(f.name)
        for i, m in enumerate(f.messages):
            uid = append_message(conn, wire, m)
            if uid != i + 1:
                raise AssertionError("%s: APPEND got UID %d, expected %d" % (f.name, uid, i + 1))
        gone = uid_ranges(i + 1 for i, m in enumerate(f.messages) if m.expunged)
        if gone:
            check(conn.select(wire), "SELECT " + f.name)
            check(conn.uid("STORE", gone, "+FLAGS.SILENT", "(\\Deleted)"), "STORE")
            check(conn.uid("EXPUNGE", gone), "UID EXPUNGE")
            # no CLOSE (it would expunge kept \Deleted mail), and Courier
            # has no UNSELECT: the next SELECT or LOGOUT leaves the folder
        st = self._status(conn, f.name)
        want = {"MESSAGES": len(f.kept()), "UIDNEXT": f.uidnext, "UIDVALIDITY": f.uidvalidity}
        if st != want:
            raise AssertionError("%s: STATUS %s, expected %s" % (f.name, st, want))

    def expected_snapshot(self, spec):
        """What snapshot() must return for a user seeded with `spec` (the
        spec seed() returned)."""
        from .corpus import expected_snapshot
        return expected_snapshot(spec)

    # ---- Ferry's NEW Dovecot ---------------------------------------------------
    def imapc_settings(self):
        """imapc_* settings that point Dovecot (Ferry's NEW) at this server."""
        return {"imapc_host": "127.0.0.1", "imapc_port": str(self.port()),
                "imapc_ssl": "no", "imapc_list_prefix": "INBOX"}

    def new_extra(self):
        """Text for Sandbox(new_extra=...): later settings override the
        Sandbox's imapc_* lines that point at the Dovecot OLD."""
        return "".join("%s = %s\n" % kv for kv in self.imapc_settings().items())
