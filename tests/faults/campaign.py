"""Fault campaign: inject faults into pulls, resume, verify (issue 8).

    cd tests && python3 -m faults.campaign --per-kind 100 --md report.md --json report.json

One Sandbox is reused for the whole campaign. Each worker owns two users
and a FaultProxy (ferrytest/faultproxy.py) through which NEW's imapc reaches
OLD for them (userdb_imapc_port): `fb<w>` (a folder Bulk; its NEW home is a
small tmpfs, so it can run out of space) and `fl<w>` (messages in INBOX,
pulled by LMTP deliveries). OLD is seeded once; before every fault the
user's NEW home is emptied, so every fault hits a fresh migration of the
same small mailbox at a point chosen by a seeded RNG (a byte offset of the
OLD -> NEW stream, measured on a clean pull).

After each fault: resume (a new `doveadm ferry pull`, or the access of the
checker itself, chosen by the RNG), then compare NEW with what OLD holds
(ferrytest.snapshot against the seeded spec, bodies hashed): lost = old
messages missing or different on NEW, duplicated = extra copies of an old
body. Re-fetched = bodies sent by OLD beyond one per message: counted by
the proxy (every BODY[] literal that reached NEW) and from OLD's logout
lines (body_count; sessions of a killed OLD never log theirs).
"""
import argparse
import json
import os
import random
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from faults import ferryd_kill  # noqa: E402
from ferrytest import corpus  # noqa: E402
from ferrytest.faultproxy import Fault, FaultProxy, socket_owner  # noqa: E402
from ferrytest.logs import LogWatch  # noqa: E402
from ferrytest.sandbox import (Sandbox, cmdline, password, proc_alive,  # noqa: E402
                               proc_stat, wait_until)
from ferrytest.snapshot import compare, duplicates, snapshot  # noqa: E402

KINDS = ("proxy-cut", "proxy-stall", "proxy-truncate", "proxy-truncate-literal",
         "old-no-mid-fetch", "old-bye-mid-fetch", "kill-doveadm", "kill-imap",
         "kill-background", "kill-lmtp", ferryd_kill.KIND, "new-enospc", "old-restart", "new-restart")
DESCRIPTION = {
    "proxy-cut": "proxy resets both TCP connections at a random byte of OLD's stream",
    "proxy-stall": "proxy stops forwarding at a random byte: 0.05-0.6 s (pull goes on), "
                   "or until imapc gives up (imapc_cmd_timeout 1s)",
    "proxy-truncate": "proxy delivers OLD's stream up to a random byte, then FIN",
    "proxy-truncate-literal": "the same, the point moved inside a BODY[] literal",
    "old-no-mid-fetch": "tagged NO for the FETCH in flight between two responses, "
                        "OLD's rest of that command dropped",
    "old-bye-mid-fetch": "untagged BYE between two FETCH responses, then close",
    "kill-doveadm": "kill -9 of `doveadm ferry pull` while OLD's stream is held at a random byte",
    "kill-imap": "kill -9 of the imap process doing a lazy pull (SELECT), same points",
    "kill-background": "kill -9 of an idle session's imap process completing the user in "
                       "the background, same points",
    "kill-lmtp": "kill -9 of the lmtp process pulling INBOX before a delivery; "
                 "the delivery is retried",
    ferryd_kill.KIND: ferryd_kill.DESCRIPTION,
    "new-enospc": "NEW's home (tmpfs) has a random number of bytes left below what the "
                  "pull needs; then space is freed",
    "old-restart": "OLD's Dovecot restarted (90% kill -9 of all its processes, 10% "
                   "graceful SIGTERM) while a pull is held at a random byte",
    "new-restart": "NEW's Dovecot restarted the same way while a lazy pull (SELECT) is "
                   "held at a random byte",
}
N_MSGS = 12  # messages per folder (plus gaps)
BATCH = 4
TMPFS_MB = 6
PULL_TIMEOUT = 60


class CampaignError(AssertionError):
    pass


def _asan_link_race(stderr):
    """doveadm loaded an ASan doveadm plugin without the runtime: another
    test run re-pointed the global link meanwhile (not a Ferry failure)."""
    return "ASan runtime does not come first" in (stderr or "")


def doveadm_env(sb):
    """doveadm loads the doveadm plugin through a link in its global module
    dir; if a concurrent ASan run re-pointed it, run doveadm with the
    sanitizer runtime preloaded as that run would."""
    env = sb.doveadm_env("new")
    link = os.path.join("/usr/lib/dovecot/modules/doveadm", "lib10_doveadm_ferry_plugin.so")
    try:
        target = os.readlink(link)
    except OSError:
        target = ""
    if "asan" in target and "LD_PRELOAD" not in env:
        os.makedirs(sb.sanitizer_dir(), exist_ok=True)
        env.update(sb.sanitizer_env())
    return env


def _spec(kind_user, seed):
    if kind_user.startswith("fl"):
        return corpus.folder_spec("INBOX", n=N_MSGS, seed=seed, gaps=2)
    return corpus.folder_spec("Bulk", n=N_MSGS, seed=seed, gaps=2)


class Worker:
    def __init__(self, camp, index):
        self.camp, self.i = camp, index
        self.bulk_user, self.lmtp_user = "fb%d" % index, "fl%d" % index
        self.proxy = FaultProxy(camp.sb.port("old"))
        self.specs = {}
        self.expected = {}
        self.stream = {}  # user -> bytes OLD -> NEW of a clean pull
        self.need = None  # bytes a clean pull writes into the tmpfs home

    def users(self):
        return (self.bulk_user, self.lmtp_user)


class Campaign:
    def __init__(self, per_kind=100, seed=1, workers=3, kinds=KINDS, root=None,
                 log=print, graceful_share=0.1):
        self.per_kind, self.seed, self.kinds = per_kind, seed, list(kinds)
        self.graceful_share = graceful_share
        self.log = log
        # kill-ferryd: NEW serves the doveadm HTTP API to one ferryd per worker
        self.sb = Sandbox(root=root, users=tuple(
            u for w in range(workers) for u in ("fb%d" % w, "fl%d" % w)), batch_size=BATCH,
            doveadm_http=ferryd_kill.KIND in self.kinds)
        self.workers = [Worker(self, w) for w in range(workers)]
        extra = {}
        for w in self.workers:
            for u in w.users():
                extra[u] = ("userdb_imapc_port=%d userdb_imapc_cmd_timeout=1s"
                            % w.proxy.port)
        self.sb.new_userdb_extra = extra
        self.mounts = []
        self.results = {}
        self.global_lock = threading.Lock()
        self.tls = threading.local()
        self.ferryd = None
        if ferryd_kill.KIND in self.kinds:
            self.ferryd = ferryd_kill.FerrydFaults(self, PULL_TIMEOUT)

    # ---- setup / teardown -------------------------------------------------------
    def setup(self):
        for w in self.workers:
            w.proxy.start()
        self.sb.start()
        for w in self.workers:
            # the bulk user's NEW home: a small tmpfs (ENOSPC on demand)
            home = self.sb.home("new", w.bulk_user)
            subprocess.run(["mount", "-t", "tmpfs", "-o",
                            "size=%dm,mode=0700,uid=8,gid=8" % TMPFS_MB,
                            "ferry-faults", home], check=True)
            self.mounts.append(home)
            for u in w.users():
                spec = _spec(u, "%s/%s" % (self.seed, u))
                corpus.seed_old(self.sb, u, spec)
                w.specs[u] = spec
                w.expected[u] = corpus.expected_snapshot(spec)
                # OLD holds what the spec says (the checker never reads OLD again)
                diffs = compare(w.expected[u], snapshot(self.sb, "old", u))
                if diffs:
                    raise CampaignError("OLD seeding of %s: %s" % (u, diffs))
            self._profile(w)
        if self.ferryd:
            self.ferryd.setup()
        return self

    def teardown(self):
        if self.ferryd:
            self.ferryd.teardown()
        for w in self.workers:
            w.proxy.stop()
        try:
            self.sb.stop()
        finally:
            for m in self.mounts:
                subprocess.run(["umount", "-l", m], check=False)
            self.mounts = []

    def cleanup(self):
        self.teardown()
        if self.sb.created_root:
            shutil.rmtree(self.sb.root, ignore_errors=True)

    def _profile(self, w):
        """Clean pulls: stream length of each user, space a pull needs."""
        u = w.bulk_user
        self.reset(u)
        before = self._used(u)
        w.proxy.arm(Fault("stall", at_byte=1 << 60))  # never fires: counts
        r = self.doveadm("ferry", "pull", "-u", u, "-m", "Bulk")
        if r.returncode != 0:
            raise CampaignError("profile pull: %s" % r.stderr)
        w.stream[u] = w.proxy.bytes
        w.need = self._used(u) - before
        self.verify(w, u)
        self.reset(w.lmtp_user)
        w.proxy.arm(Fault("stall", at_byte=1 << 60))
        code, text = self.sb.lmtp_deliver(w.lmtp_user, self._mail(w.lmtp_user, "profile"))
        if code != 250:
            raise CampaignError("profile delivery: %s %s" % (code, text))
        w.stream[w.lmtp_user] = w.proxy.bytes
        w.proxy.disarm()
        self.verify(w, w.lmtp_user, delivered=1)

    def _used(self, user):
        st = os.statvfs(self.sb.home("new", user))
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    # ---- helpers ------------------------------------------------------------------
    def user_procs(self, user):
        tag = "[%s " % user
        return [p for p, t in self.sb.processes("new").items() if tag in t]

    def reset(self, user):
        """Empty user's NEW home once no NEW process works for the user."""
        wait_until(lambda: not self.user_procs(user), 30, "NEW processes of %s to end" % user)
        home = self.sb.home("new", user)
        for e in os.listdir(home):
            p = os.path.join(home, e)
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            else:
                os.unlink(p)

    def _mail(self, user, tag):
        return corpus.simple_message("fault-%s-%s" % (user, tag), seed=self.seed)

    def doveadm_env(self):
        return doveadm_env(self.sb)

    def doveadm(self, *args):
        for _ in range(5):
            r = subprocess.run(self.sb.doveadm_cmd("new", *args), env=self.doveadm_env(),
                               capture_output=True, text=True, timeout=PULL_TIMEOUT,
                               stdin=subprocess.DEVNULL)
            if not _asan_link_race(r.stderr):
                return r
        return r

    def start_doveadm(self, user, folder="Bulk"):
        return subprocess.Popen(self.sb.doveadm_cmd("new", "ferry", "pull", "-u", user,
                                                    "-m", folder),
                                env=self.doveadm_env(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def start_select(self, user, folder="Bulk"):
        s, f = self.start_login(user)
        f.write(b"s SELECT %s\r\n" % folder.encode())
        f.flush()
        return (s, f)

    def start_login(self, user):
        s = socket.create_connection(("127.0.0.1", self.sb.port("new")), timeout=PULL_TIMEOUT)
        f = s.makefile("rwb")
        f.readline()
        f.write(b"a LOGIN %s %s\r\n" % (user.encode(), password(user).encode()))
        f.flush()
        while True:
            line = f.readline()
            if not line:
                raise CampaignError("NEW closed the connection at LOGIN")
            if line.startswith(b"a "):
                if not line.startswith(b"a OK"):
                    raise CampaignError("LOGIN: %r" % line)
                break
        return (s, f)

    @staticmethod
    def finish_select(conn):
        """-> the tagged reply of SELECT, b'' if the connection closed."""
        s, f = conn
        try:
            while True:
                line = f.readline()
                if not line:
                    return b""
                if line.startswith(b"s "):
                    try:
                        f.write(b"l LOGOUT\r\n")
                        f.flush()
                    except OSError:
                        pass
                    return line.strip()
        except OSError:
            return b""
        finally:
            try:
                f.close()
                s.close()
            except OSError:
                pass

    def verify(self, w, user, delivered=0, redelivery_ok=False):
        """-> (lost, duplicated, other differences) of user against OLD.
        delivered: deliveries that got 250; redelivery_ok: one more whose
        connection died before its reply (the MTA retries it: SMTP's
        at-least-once rule, RFC 5321 6.1), so 1 extra copy is allowed."""
        self.tls.redelivered = 0
        exp = w.expected[user]
        new = snapshot(self.sb, "new", user, timeout=PULL_TIMEOUT)
        if delivered:  # fresh local messages in INBOX: deliveries, UID >= old UIDNEXT
            inbox_e, inbox_n = exp.folders["INBOX"], new.folders.get("INBOX")
            if inbox_n is not None and inbox_n.uidnext is not None:
                fresh = [u for u in inbox_n.messages if u not in inbox_e.messages]
                if redelivery_ok and len(fresh) == delivered + 1:
                    self.tls.redelivered = 1
                    delivered += 1
                if len(fresh) != delivered or min(fresh, default=inbox_e.uidnext) < inbox_e.uidnext:
                    return (0, 0, ["deliveries: %d fresh messages (UIDs %s), want %d"
                                   % (len(fresh), fresh, delivered)])
                for u in fresh:
                    del inbox_n.messages[u]
                inbox_n.uidnext = inbox_e.uidnext
        lost = 0
        for name, fe in exp.folders.items():
            fn = new.folders.get(name)
            for uid, m in fe.messages.items():
                got = fn.messages.get(uid) if fn else None
                if got is None or got.sha256 != m.sha256:
                    lost += 1
        dup = sum(duplicates(new, exp).values())
        return lost, dup, compare(exp, new)

    # ---- restarts --------------------------------------------------------------
    def _instance_procs(self, inst):
        """The instance's processes: the master's descendants, and orphans
        whose title carries the instance name."""
        name = "ferry-%s-%s" % (inst, os.path.basename(self.sb.root))
        pids = set(self.sb.pids(inst))
        for e in os.listdir("/proc"):
            if e.isdigit() and name in cmdline(int(e)):
                pids.add(int(e))
        return {p for p in pids if proc_alive(p)}

    def hard_kill(self, inst):
        """kill -9 of every process of the instance (a crash)."""
        master = self.sb.master_pid(inst)
        if master:
            os.kill(master, signal.SIGSTOP)  # forks nothing more
        for _ in range(5):
            pids = self._instance_procs(inst)
            if not pids:
                break
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            wait_until(lambda: not any(map(proc_alive, pids)), 10, "%s to die" % inst)
        # its parent (PID 1 here) may leave it a zombie: dovecot would
        # take the pid file's PID for a running master
        try:
            os.unlink(os.path.join(self.sb.base_dir(inst), "master.pid"))
        except FileNotFoundError:
            pass

    def restart(self, inst, graceful):
        if graceful:
            self.sb.stop_instance(inst)
        else:
            self.hard_kill(inst)
        self.sb.start_instance(inst)

    # ---- one fault -----------------------------------------------------------------
    def one(self, w, kind, rng):
        """Inject one fault of kind; -> dict (injected: bool, ...)."""
        if kind == ferryd_kill.KIND:
            return self.ferryd.one(w, rng)
        lmtp = kind == "kill-lmtp"
        user = w.lmtp_user if lmtp else w.bulk_user
        folder = "INBOX" if lmtp else "Bulk"
        self.reset(user)
        total = w.stream[user]
        at = rng.randrange(0, max(1, int(total * 0.95)))
        path = {"kill-doveadm": "doveadm", "kill-imap": "imap", "new-restart": "imap",
                "kill-lmtp": "lmtp", "kill-background": "background"}.get(kind) or rng.choice(("doveadm", "imap"))
        res = {"kind": kind, "user": user, "at_byte": at, "path": path, "injected": False}
        fault = None
        ballast = None
        if kind == "proxy-cut":
            fault = Fault("cut", at_byte=at)
        elif kind == "proxy-truncate":
            fault = Fault("truncate", at_byte=at)
        elif kind == "proxy-truncate-literal":
            fault = Fault("truncate", at_byte=at, in_literal=True)
        elif kind == "proxy-stall":
            long_ = rng.random() < 0.2
            res["stall"] = "until timeout" if long_ else "short"
            fault = Fault("stall", at_byte=at, duration=None if long_ else rng.uniform(0.05, 0.6))
        elif kind == "old-no-mid-fetch":
            fault = Fault("no", at_byte=at)
        elif kind == "old-bye-mid-fetch":
            fault = Fault("bye", at_byte=at)
        elif kind in ("kill-doveadm", "kill-imap", "kill-background", "kill-lmtp",
                      "old-restart", "new-restart"):
            fault = Fault("hold", at_byte=at)
        elif kind == "new-enospc":
            free = rng.randrange(0, max(1, w.need))
            res["free_bytes"] = free
            st = os.statvfs(self.sb.home("new", user))
            avail = st.f_bavail * st.f_frsize
            ballast = os.path.join(self.sb.home("new", user), "ballast")
            fd = os.open(ballast, os.O_CREAT | os.O_WRONLY, 0o600)
            try:
                os.posix_fallocate(fd, 0, max(1, avail - free))
            finally:
                os.close(fd)
        if fault:
            w.proxy.arm(fault)
        else:
            w.proxy.arm(Fault("stall", at_byte=1 << 60))  # counting only
        t0 = time.monotonic()
        first = self._first_attempt(w, kind, user, folder, path, res, rng)
        res["first"] = first
        if kind == "new-enospc":
            os.unlink(ballast)
            res["injected"] = first != "ok"
        else:
            res["injected"] = w.proxy.fired.is_set() and not res.get("no_target")
        if first.startswith("rc ") and _asan_link_race(res.get("stderr")):
            res["injected"] = False
        w.proxy.disarm()
        # resume
        resume = "lmtp" if lmtp else rng.choice(("doveadm", "access"))
        res["resume"] = resume
        delivered = 0
        if lmtp:
            delivered = 2 if res.get("delivered_first") else 1
            code, text = self.sb.lmtp_deliver(user, self._mail(user, "retry"))
            if code != 250:
                raise CampaignError("retried delivery to %s: %s %s" % (user, code, text))
        elif resume == "doveadm":
            self.reset_wait_only(user)
            r = self.doveadm("ferry", "pull", "-u", user, "-m", folder)
            if r.returncode != 0:
                raise CampaignError("resume pull of %s after %s: rc %d %s"
                                    % (user, kind, r.returncode, r.stderr.strip()))
        lost, dup, diffs = self.verify(w, user, delivered,
                                       redelivery_ok=lmtp and first != "ok")
        res["redelivered"] = self.tls.redelivered
        res.update(lost=lost, duplicated=dup, diffs=diffs[:5],
                   bodies=w.proxy.bodies, messages=len(w.expected[user].folders[folder].messages),
                   seconds=round(time.monotonic() - t0, 3))
        res["refetched"] = res["bodies"] - res["messages"]
        return res

    def reset_wait_only(self, user):
        wait_until(lambda: not self.user_procs(user), 30, "NEW processes of %s to end" % user)

    def _kill_owner(self, w, res, name, user=None):
        """kill -9 the NEW process `name` that owns the held pull."""
        pid = self._owner(w, (name,), user)
        if not pid:
            res["no_target"] = True
            return
        res["killed"] = cmdline(pid)[:60]
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not proc_alive(pid), 10, "%s %d to die" % (name, pid))

    def _first_attempt(self, w, kind, user, folder, path, res, rng):
        """Start the pull, act at the hold point; -> 'ok' | reason text."""
        if path == "lmtp":
            box = {}

            def deliver():
                try:
                    box["r"] = self.sb.lmtp_deliver(user, self._mail(user, "first"), timeout=30)
                except (OSError, smtplib.SMTPException) as e:
                    box["r"] = (0, "%s: %s" % (type(e).__name__, e))
            t = threading.Thread(target=deliver)
            t.start()
            wait_until(lambda: w.proxy.held.is_set() or not t.is_alive(), PULL_TIMEOUT,
                       "lmtp pull to reach the fault point")
            if w.proxy.held.is_set():
                self._kill_owner(w, res, "lmtp")
                w.proxy.release("resume")
            t.join(PULL_TIMEOUT)
            code, text = box.get("r", (0, "no reply"))
            if code == 250:
                # the first delivery got through (fault not reached): the
                # retry below delivers a second message
                res["delivered_first"] = True
                return "ok"
            return "%s %s" % (code, text[:80])
        if path == "background":
            return self._background_attempt(w, user, res)
        if path == "doveadm":
            proc = self.start_doveadm(user, folder)
            done = lambda: proc.poll() is not None  # noqa: E731
        else:
            conn = self.start_select(user, folder)
            box = {}
            t = threading.Thread(target=lambda: box.setdefault("r", self.finish_select(conn)))
            t.start()
            done = lambda: not t.is_alive()  # noqa: E731
        if kind in ("kill-doveadm", "kill-imap", "old-restart", "new-restart"):
            wait_until(lambda: w.proxy.held.is_set() or done(), PULL_TIMEOUT,
                       "pull to reach the fault point")
            if w.proxy.held.is_set():
                if kind == "kill-doveadm":
                    res["killed"] = "doveadm"
                    proc.kill()
                    proc.wait(10)
                    w.proxy.release("resume")
                elif kind == "kill-imap":
                    self._kill_owner(w, res, "imap", user)
                    w.proxy.release("resume")
                else:
                    inst = "old" if kind == "old-restart" else "new"
                    graceful = rng.random() < self.graceful_share
                    res["restart"] = "graceful" if graceful else "kill -9"
                    with self.global_lock:
                        self.restart(inst, graceful)
                    w.proxy.release("resume")
        if path == "doveadm":
            try:
                out, err = proc.communicate(timeout=PULL_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise CampaignError("doveadm pull of %s hung after %s" % (user, kind))
            res["stderr"] = err[-300:]
            if proc.returncode == 0:
                return "ok"
            return "rc %d: %s" % (proc.returncode, err.strip().splitlines()[-1][:120]
                                  if err.strip() else "")
        t.join(PULL_TIMEOUT)
        if t.is_alive():
            raise CampaignError("SELECT of %s hung after %s" % (user, kind))
        reply = box.get("r", b"")
        if reply.startswith(b"s OK"):
            return "ok"
        return reply.decode(errors="replace")[:120] or "connection closed"

    def _user_done(self, user):
        path = os.path.join(self.sb.home("new", user), "Maildir", "dovecot-ferry.state")
        try:
            with open(path) as f:  # done=0 until every folder is complete
                return re.search(r"^done=[1-9]", f.read(), re.M) is not None
        except OSError:
            return False

    def _background_attempt(self, w, user, res):
        """A session that logs in and stays idle: its imap process pulls the
        user in the background; kill -9 of it at the hold point."""
        s, f = self.start_login(user)
        try:
            wait_until(lambda: w.proxy.held.is_set() or self._user_done(user), PULL_TIMEOUT,
                       "background pull to reach the fault point")
            if not w.proxy.held.is_set():
                return "ok"
            self._kill_owner(w, res, "imap", user)
            w.proxy.release("resume")
            return "killed"
        finally:
            f.close()
            s.close()

    def _owner(self, w, names, user=None):
        def find():
            if user:  # the session's title names the user
                procs = [p for p in self.user_procs(user) if "/imap " in cmdline(p)]
                # the session, not one of its background workers (forked
                # from it, same title): killing it kills them
                for p in procs:
                    if proc_stat(p)[0] not in procs:
                        return p
            for port in w.proxy.client_ports():
                pid = socket_owner(port, self.sb.pids("new"))
                if pid and any(n in cmdline(pid) for n in names):
                    return pid
            return None
        try:
            return wait_until(find, 5, "process behind the proxied connection")
        except TimeoutError:
            return None  # imapc gave up the held connection meanwhile

    # ---- the campaign ------------------------------------------------------------
    def run_kind(self, kind):
        old_log = LogWatch(self.sb, "old")
        # global kinds restart a server: one worker at a time
        workers = self.workers[:1] if kind in ("old-restart", "new-restart") else self.workers
        want = self.per_kind
        results, errors = [], []
        lock = threading.Lock()
        counter = {"n": 0}

        def work(w):
            rng = random.Random("%s/%s/%d" % (self.seed, kind, w.i))
            attempts = 0
            while True:
                with lock:
                    if counter["n"] >= want or errors:
                        return
                attempts += 1
                if attempts > 4 * want + 20:
                    errors.append("%s: faults do not fire" % kind)
                    return
                try:
                    r = self.one(w, kind, rng)
                except Exception as e:  # noqa: BLE001 - reported with the campaign
                    errors.append("%s (worker %d): %s: %s" % (kind, w.i, type(e).__name__, e))
                    return
                with lock:
                    results.append(r)
                    if r["injected"]:
                        counter["n"] += 1
        t0 = time.monotonic()
        threads = [threading.Thread(target=work, args=(w,)) for w in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0
        injected = [r for r in results if r["injected"]]
        users = {r["user"] for r in results}
        # OLD's own count: sessions that logged out (a killed OLD logs nothing)
        try:
            old_log.barrier()
        except Exception:  # noqa: BLE001
            pass
        body_count = sum(sum(old_log.body_counts(u)) for u in users)
        body_bytes = sum(sum(old_log.body_bytes(u)) for u in users)
        messages = sum(r["messages"] for r in results)
        summary = {
            "kind": kind, "description": DESCRIPTION[kind],
            "injected": len(injected), "runs": len(results),
            "first_attempt_failed": sum(1 for r in results if r["injected"] and r["first"] != "ok"),
            "lost": sum(r["lost"] for r in results),
            "duplicated": sum(r["duplicated"] for r in results),
            "other_differences": sum(1 for r in results if r["diffs"]),
            "messages_expected": messages,
            "refetched_proxy": sum(r["refetched"] for r in results),
            "max_refetched_per_fault": max((r["refetched"] for r in results), default=0),
            "old_body_count": body_count,
            "old_body_bytes": body_bytes,
            "refetched_old_log": body_count - messages,
            "seconds": round(elapsed, 1),
            "errors": errors,
            "examples": [r for r in results if r["diffs"] or r["lost"] or r["duplicated"]][:5],
            # where the time went: the slowest faults, briefly
            "slowest": [{k: r.get(k) for k in ("user", "seconds", "first", "resume", "at_byte")}
                        for r in sorted(results, key=lambda r: -r.get("seconds", 0))[:3]],
            "first_outcomes": _outcomes(injected),
            "lmtp_redelivered": sum(r.get("redelivered", 0) for r in results),
            # kill-ferryd: faults after which ferryd's own state was wrong
            "ferryd_differences": sum(1 for r in results if r.get("ferryd_diffs")),
        }
        self.results[kind] = summary
        self.log("%-24s injected %4d  lost %d  dup %d  diffs %d  refetched %d (OLD log %d)  %.1fs%s"
                 % (kind, summary["injected"], summary["lost"], summary["duplicated"],
                    summary["other_differences"], summary["refetched_proxy"],
                    summary["refetched_old_log"], elapsed,
                    ("  ERRORS: %s" % errors) if errors else ""))
        return summary

    def run(self):
        t0 = time.monotonic()
        for kind in self.kinds:
            self.run_kind(kind)
        self.elapsed = time.monotonic() - t0
        return self.results

    # ---- reports -------------------------------------------------------------------
    def report(self):
        return {"seed": self.seed, "per_kind": self.per_kind, "workers": len(self.workers),
                "messages_per_folder": N_MSGS, "batch_size": BATCH,
                "seconds": round(getattr(self, "elapsed", 0), 1),
                "kinds": [self.results[k] for k in self.kinds if k in self.results]}

    def markdown(self):
        rows = ["| fault kind | injected | first attempt failed | lost | duplicated | "
                "other diffs | re-fetched (proxy) | max per fault | OLD body_count "
                "(re-fetched) | seconds |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        tot = dict(injected=0, lost=0, duplicated=0, other_differences=0, refetched_proxy=0)
        for s in self.report()["kinds"]:
            old = ("%d (%d)" % (s["old_body_count"], s["refetched_old_log"])
                   if s["refetched_old_log"] >= 0 else
                   "%d (n/a: killed OLD sessions log nothing)" % s["old_body_count"])
            rows.append("| %s | %d | %d | %d | %d | %d | %d | %d | %s | %.1f |" % (
                s["kind"], s["injected"], s["first_attempt_failed"], s["lost"],
                s["duplicated"], s["other_differences"], s["refetched_proxy"],
                s["max_refetched_per_fault"], old, s["seconds"]))
            for k in tot:
                tot[k] += s[k]
        rows.append("| **total** | %d | | %d | %d | %d | %d | | | | %.1f |" % (
            tot["injected"], tot["lost"], tot["duplicated"], tot["other_differences"],
            tot["refetched_proxy"], getattr(self, "elapsed", 0)))
        return "\n".join(rows) + "\n"


def _outcomes(results):
    out = {}
    for r in results:
        key = "completed" if r["first"] == "ok" else r["first"].split(":")[0][:40]
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1])[:6])


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python3 -m faults.campaign")
    ap.add_argument("--per-kind", type=int, default=100)
    ap.add_argument("--total", type=int, help="faults in all, spread evenly over the kinds")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--md")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    if a.total:
        a.per_kind = -(-a.total // len(a.kinds.split(",")))
    camp = Campaign(per_kind=a.per_kind, seed=a.seed, workers=a.workers,
                    kinds=a.kinds.split(","))
    ok = False
    try:
        camp.setup()
        camp.run()
        rep = camp.report()
        ok = all(s["injected"] >= a.per_kind and not s["lost"] and not s["duplicated"]
                 and not s["other_differences"] and not s["errors"] for s in rep["kinds"])
    finally:
        camp.teardown()
        if ok and camp.sb.created_root and not os.environ.get("FERRY_KEEP"):
            shutil.rmtree(camp.sb.root, ignore_errors=True)
        elif camp.sb.created_root:
            print("sandbox kept: %s" % camp.sb.root)
    md = camp.markdown()
    print(md)
    if a.md:
        with open(a.md, "w") as f:
            f.write(md)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(camp.report(), f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
