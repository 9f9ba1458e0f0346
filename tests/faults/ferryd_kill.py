"""Fault kind kill-ferryd: kill -9 of ferryd while it drives a pull.

Each worker has its own ferryd (own state database, admin port) that knows
one user, the worker's bulk user, and pulls it through NEW's doveadm HTTP
API as in production (ferryStatus, ferryPull INBOX for the tree, ferryPull
Bulk, ferryStatus). A fault: NEW's home emptied, `sync` of the user through
the admin API, OLD's stream held by the proxy at a seeded byte (of a clean
ferryd-driven pull, measured at start), ferryd killed -9 while the doveadm
request is in flight, the hold released (seeded: the orphaned doveadm pull
goes on, or its OLD connection is cut), ferryd started again on the same
database. It must finish the user by itself; then NEW is compared with
OLD like every kind, and ferryd's own view is checked: the user `done`, not
`running`, `pull-interrupted` logged by the restarted ferryd, every folder
`complete` with OLD's count.

Injected = held, and the dead ferryd's database did mark the user running
(a crash really left a pull in flight for the next start to recover)."""
import time

from ferrytest.faultproxy import Fault
from ferrytest.ferryd import Ferryd
from ferrytest.sandbox import proc_alive, wait_until

KIND = "kill-ferryd"
DESCRIPTION = ("kill -9 of ferryd while its doveadm pull is held at a random byte of "
               "OLD's stream; ferryd restarted on the same database finishes the user")


class FerrydFaults:
    def __init__(self, camp, pull_timeout):
        self.camp = camp
        self.timeout = pull_timeout
        self.fds = {}  # worker index -> Ferryd
        self.stream = {}  # worker index -> bytes OLD -> NEW of a clean ferryd pull

    def setup(self):
        for w in self.camp.workers:
            fd = Ferryd(self.camp.sb, name="ferryd-w%d" % w.i, max_concurrent=1,
                        max_per_host=1, retry_limit=5, retry_base=1, retry_max_delay=2,
                        pull_timeout=self.timeout, drain_timeout=5, verify_after_pull=0)
            self.fds[w.i] = fd.start()
            code, j = fd.api("POST", "/v1/import", {"csv": (
                "user,old_login,new_login,endpoint\n%s,%s,%s,127.0.0.1:%d\n"
                % (w.bulk_user, w.bulk_user, w.bulk_user, w.proxy.port))})
            if code != 200:
                raise AssertionError("ferryd import: %s %s" % (code, j))
            self._profile(w)

    def teardown(self):
        for fd in self.fds.values():
            if fd.alive():
                fd.stop()

    # ---- helpers ---------------------------------------------------------------
    def _sync(self, fd, user):
        code, j = fd.api("POST", "/v1/sync", {"user": user})
        if code != 200:
            raise AssertionError("ferryd sync %s: %s %s" % (user, code, j))

    @staticmethod
    def _settled(fd, user):
        u = fd.users()[user]
        return u["state"] in ("done", "failed") and not u["running"]

    def _wait_settled(self, fd, user, what):
        wait_until(lambda: self._settled(fd, user), self.timeout, what)

    def _profile(self, w):
        """A clean ferryd-driven pull: the stream length fault points are
        drawn from."""
        fd, user = self.fds[w.i], w.bulk_user
        self.camp.reset(user)
        w.proxy.arm(Fault("stall", at_byte=1 << 60))  # never fires: counts
        self._sync(fd, user)
        self._wait_settled(fd, user, "ferryd's profile pull of %s" % user)
        self.stream[w.i] = w.proxy.bytes
        w.proxy.disarm()
        diffs = self._ferryd_diffs(w, fd, user, restarted_at=None)
        lost, dup, other = self.camp.verify(w, user)
        if diffs or lost or dup or other:
            raise AssertionError("ferryd's clean pull of %s: %s" % (user, diffs + other))

    def _ferryd_diffs(self, w, fd, user, restarted_at):
        """ferryd's own view after the user settled -> list of differences."""
        out = []
        u = fd.status(user=user)["users"][0]
        if u["state"] != "done" or u["running"]:
            out.append("ferryd: user %s state=%s running=%s error=%s"
                       % (user, u["state"], u["running"], u.get("error")))
        folders = {f["name"]: f for f in u.get("folders", [])}
        for name, fe in w.expected[user].folders.items():
            f = folders.get(name)
            if f is None or f["state"] != "complete" or f["messages"] != len(fe.messages):
                out.append("ferryd: folder %s %s, want complete with %d"
                           % (name, f and (f["state"], f["messages"]), len(fe.messages)))
        if restarted_at is not None:
            after = fd.events()[restarted_at:]
            if not any(e.get("event") == "pull-interrupted" and e.get("user") == user
                       for e in after):
                out.append("ferryd: no pull-interrupted for %s after the restart" % user)
        return out

    # ---- one fault -------------------------------------------------------------
    def one(self, w, rng):
        fd, user = self.fds[w.i], w.bulk_user
        self.camp.reset(user)
        at = rng.randrange(0, max(1, int(self.stream[w.i] * 0.95)))
        then = rng.choice(("resume", "cut"))  # the orphaned request's OLD connection
        res = {"kind": KIND, "user": user, "at_byte": at, "path": "ferryd",
               "injected": False, "release": then}
        w.proxy.arm(Fault("hold", at_byte=at))
        t0 = time.monotonic()
        self._sync(fd, user)
        wait_until(lambda: w.proxy.held.is_set() or self._settled(fd, user), self.timeout,
                   "ferryd's pull of %s to reach the fault point" % user)
        restarted_at = None
        orphan_pid = None
        if w.proxy.held.is_set():
            # the doveadm-server process running the held request: it goes
            # on without ferryd (its title does not name the user)
            orphan_pid = self.camp._owner(w, ("doveadm-server",))
            fd.kill()
            res["stale_running"] = user in fd.db_running()
            res["orphan_pid"] = orphan_pid
            restarted_at = len(fd.events())
            w.proxy.release(then)
            fd.start()
            res["first"] = "ferryd killed"
            res["injected"] = res["stale_running"]
        else:
            res["first"] = "ok"
        w.proxy.disarm()
        res["resume"] = "ferryd restart"
        self._wait_settled(fd, user, "ferryd to finish %s after the restart" % user)
        if orphan_pid:  # before the checker reads NEW and the next fault empties it
            wait_until(lambda: not proc_alive(orphan_pid), self.timeout,
                       "the orphaned doveadm request %d to end" % orphan_pid)
        ferryd_diffs = self._ferryd_diffs(w, fd, user, restarted_at if res["injected"] else None)
        lost, dup, diffs = self.camp.verify(w, user)
        res.update(lost=lost, duplicated=dup, diffs=(ferryd_diffs + diffs)[:5],
                   ferryd_diffs=ferryd_diffs,
                   bodies=w.proxy.bodies,
                   messages=len(w.expected[user].folders["Bulk"].messages),
                   seconds=round(time.monotonic() - t0, 3))
        res["refetched"] = res["bodies"] - res["messages"]
        return res
