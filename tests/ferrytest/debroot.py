"""A clean Debian 12 root to install packages into (tests/test_packaging.py).

    <CACHE>/debian-bookworm/root    debootstrap --variant=minbase bookworm,
                                    plus `apt-get update`, the packages the
                                    caller has installed there (the machine
                                    Ferry is added to), and the .debs further
                                    installs need, downloaded
    <CACHE>/debian-bookworm/stamp   written last; a lock file serialises callers
    <CACHE>/debian-bookworm/installed  the packages installed on top

`DebRoot.create()` copies that cached root into a fresh directory per run, so
each run starts clean and, once the archives are cached, without network.
CACHE is $FERRY_TEST_CACHE or /var/cache/ferry-test. The mirror is the
machine's own Debian mirror (/etc/apt/sources.list*).

Inside a root: a policy-rc.d that exits 101 (package scripts start nothing),
/proc mounted only between `mount_proc()` and `umount_proc()`. `destroy()`
ends the processes whose root is this directory (started by the test
through it), unmounts what is mounted under it and removes it."""
import fcntl
import glob
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

CACHE = os.environ.get("FERRY_TEST_CACHE", "/var/cache/ferry-test")
SUITE = "bookworm"
BASE = os.path.join(CACHE, "debian-" + SUITE)


class Unavailable(RuntimeError):
    """No debootstrap or no reachable mirror: the test skips."""


def mirror():
    """The machine's Debian mirror for the main archive."""
    texts = []
    for p in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*")):
        try:
            with open(p) as f:
                texts.append(f.read())
        except OSError:
            pass
    text = "\n".join(texts)
    # one-line "deb URI SUITE ..." and deb822 "URIs:" stanzas with SUITE
    for m in re.finditer(r"(?m)^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+%s\s" % SUITE, text):
        if "security" not in m.group(1):
            return m.group(1)
    for stanza in re.split(r"\n\s*\n", text):
        uris = re.search(r"(?m)^URIs:\s*(\S+)", stanza)
        suites = re.search(r"(?m)^Suites:\s*(.*)$", stanza)
        if uris and suites and SUITE in suites.group(1).split() and "security" not in uris.group(1):
            return uris.group(1)
    return "http://deb.debian.org/debian"


def _run(cmd, timeout=1800, **kw):
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C.UTF-8",
               PATH="/usr/sbin:/usr/bin:/sbin:/bin")
    env.pop("LD_PRELOAD", None)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, **kw)


def _check(r, what):
    if r.returncode != 0:
        raise RuntimeError("%s failed (%d):\n%s\n%s" % (what, r.returncode, r.stdout[-3000:],
                                                         r.stderr[-3000:]))
    return r


class DebRoot:
    def __init__(self, path):
        self.path = path
        self.proc_mounted = False

    # ---- the cached base -------------------------------------------------------

    @classmethod
    def base(cls, downloads=(), debconf="", install=()):
        """The cached base root (made once: about 30 s and ~40 MB from the
        mirror); `install`: packages installed into it (again only when the
        list changes; debconf answers first); `downloads`: packages or
        /x.deb paths inside the root whose dependencies are fetched into its
        apt cache (quick when cached)."""
        if shutil.which("debootstrap") is None:
            raise Unavailable("debootstrap is not installed (make deps)")
        os.makedirs(CACHE, exist_ok=True)
        with open(BASE + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            root = cls(os.path.join(BASE, "root"))
            stamp = os.path.join(BASE, "stamp")
            if not os.path.exists(stamp):
                shutil.rmtree(BASE, ignore_errors=True)
                os.makedirs(BASE)
                r = _run(["debootstrap", "--variant=minbase", SUITE, root.path, mirror()])
                if r.returncode != 0:
                    shutil.rmtree(BASE, ignore_errors=True)
                    raise Unavailable("debootstrap %s: %s" % (SUITE, (r.stdout + r.stderr)[-800:]))
                root.write("/usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n", 0o755)
                _check(root.run(["apt-get", "update", "-q"]), "apt-get update")
                with open(stamp, "w") as f:
                    f.write("debootstrap --variant=minbase %s %s\n" % (SUITE, mirror()))
            if debconf:
                _check(root.run(["debconf-set-selections"], input=debconf),
                       "debconf-set-selections")
            marker = os.path.join(BASE, "installed")
            want = " ".join(sorted(install)) + "\n"
            if install and (not os.path.exists(marker) or open(marker).read() != want):
                try:
                    root.mount_proc()
                    r = root.run(["apt-get", "install", "-y", "-q", "--no-install-recommends"]
                                 + sorted(install))
                finally:
                    root.stop_all()  # nothing should run: policy-rc.d said no
                    root.umount_proc()
                if r.returncode != 0:
                    raise Unavailable("apt-get install: %s" % (r.stdout + r.stderr)[-800:])
                with open(marker, "w") as f:
                    f.write(want)
            if downloads:
                r = root.run(["apt-get", "install", "-y", "-q", "--download-only",
                              "--no-install-recommends"] + list(downloads), cwd="/")
                if r.returncode != 0:
                    raise Unavailable("apt-get --download-only: %s" % (r.stdout + r.stderr)[-800:])
            return root

    def create(self):
        """A fresh copy of this (base) root for one run."""
        path = tempfile.mkdtemp(prefix="ferry-debroot-", dir=CACHE)
        _check(_run(["cp", "-a", "--reflink=auto", self.path + "/.", path]), "copy of the root")
        return DebRoot(path)

    # ---- inside the root ---------------------------------------------------------

    def host_path(self, path):
        return os.path.join(self.path, path.lstrip("/"))

    def read(self, path):
        with open(self.host_path(path)) as f:
            return f.read()

    def write(self, path, text, mode=None):
        p = self.host_path(path)
        with open(p, "w") as f:
            f.write(text)
        if mode is not None:
            os.chmod(p, mode)

    def edit(self, path, pattern, repl, count=1):
        """re.sub on a file of the root; the pattern must match."""
        text = self.read(path)
        new, n = re.subn(pattern, repl, text, count=count, flags=re.M)
        assert n == count or (count == 0 and n > 0), "%s: %r not found" % (path, pattern)
        st = os.stat(self.host_path(path))
        self.write(path, new)
        os.chmod(self.host_path(path), st.st_mode & 0o7777)
        os.chown(self.host_path(path), st.st_uid, st.st_gid)

    def run(self, cmd, user=None, cwd="/", timeout=900, input=None):
        """cmd inside the root, as root or as `user` (uid, gid and the
        supplementary groups of the root's own /etc/group: what systemd's
        User= gives)."""
        spec = ["--userspec=%s:%s" % (user, user)] if user else []
        return _run(["chroot"] + spec + [self.path, "sh", "-c", 'cd "$1" && shift && exec "$@"',
                     "sh", cwd] + list(cmd), timeout=timeout, input=input)

    def popen(self, cmd, user=None, stdout=None, stderr=None):
        spec = ["--userspec=%s:%s" % (user, user)] if user else []
        env = dict(os.environ, LC_ALL="C.UTF-8", PATH="/usr/sbin:/usr/bin:/sbin:/bin")
        env.pop("LD_PRELOAD", None)
        return subprocess.Popen(["chroot"] + spec + [self.path] + list(cmd), env=env,
                                stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)

    def ids(self, name):
        """(uid, gid) of a user of the root's /etc/passwd."""
        for line in self.read("/etc/passwd").splitlines():
            f = line.split(":")
            if f[0] == name:
                return int(f[2]), int(f[3])
        raise KeyError(name)

    def group_id(self, name):
        for line in self.read("/etc/group").splitlines():
            f = line.split(":")
            if f[0] == name:
                return int(f[2])
        raise KeyError(name)

    def mount_proc(self):
        if not self.proc_mounted:
            _check(_run(["mount", "-t", "proc", "proc", self.host_path("/proc")]), "mount /proc")
            self.proc_mounted = True

    def umount_proc(self):
        if self.proc_mounted:
            _check(_run(["umount", self.host_path("/proc")]), "umount /proc")
            self.proc_mounted = False

    def pids(self):
        """Processes whose root directory is this root."""
        out = []
        real = os.path.realpath(self.path)
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    if os.readlink("/proc/%s/root" % d) == real:
                        out.append(int(d))
                except OSError:
                    pass
        return out

    def mounts(self):
        real = os.path.realpath(self.path)
        with open("/proc/self/mounts") as f:
            return [l.split()[1] for l in f
                    if l.split()[1] == real or l.split()[1].startswith(real + "/")]

    def stop_all(self, timeout=20):
        """SIGTERM, then SIGKILL, the processes running in this root."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + timeout
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.1)
            if not self.pids():
                return

    def destroy(self):
        self.stop_all()
        for m in sorted(self.mounts(), reverse=True):
            _run(["umount", "-l", m])
        self.proc_mounted = False
        assert not self.mounts(), self.mounts()
        shutil.rmtree(self.path, ignore_errors=True)
