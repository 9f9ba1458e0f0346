"""A throwaway pair of Dovecot servers on 127.0.0.1: OLD (the server being
migrated away from, maildir++ with '.' separator, master user) and NEW (the
server with the ferry plugin, '/' separator, LMTP).

    with Sandbox() as sb:
        conn = sb.imap("new", "alice")

CLI (run from tests/), leaves the servers running for demos/benchmarks:
    python3 -m ferrytest.sandbox start DIR [--no-plugin] [--seed small|full]
    python3 -m ferrytest.sandbox env DIR      # shell vars: eval "$(...)"
    python3 -m ferrytest.sandbox stop DIR
"""
import argparse
import json
import os
import pwd
import shlex
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time

from . import conf24, dovecot, imapwire

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD_DIR = os.environ.get("FERRY_BUILD_DIR", os.path.join(REPO, "build"))
# The Dovecot modules (mail plugin, doveadm plugin, 2.4's settings module)
# NEW loads: BUILD_DIR's, or those of FERRY_PLUGIN_DIR (the 2.4 passes:
# build-24, built against Dovecot 2.4; ferryd and the tools stay in BUILD_DIR)
PLUGIN_DIR = os.environ.get("FERRY_PLUGIN_DIR", BUILD_DIR)
CONF_SNIPPET = os.path.join(REPO, "conf", "ferry.conf")
# NEW on Dovecot 2.4 includes the 2.4 snippet instead of the default one
CONF_SNIPPET_24 = os.path.join(REPO, "conf", "ferry-2.4.conf")
# FERRY_ASAN=1: the plugin in BUILD_DIR was built with ASan+UBSan; the
# sanitizer runtimes are preloaded into NEW's processes and doveadm, and
# any report lands in <root>/sanitizer (see sanitizer_reports()).
ASAN = os.environ.get("FERRY_ASAN") == "1"
ASAN_RUNTIME = "/usr/lib/x86_64-linux-gnu/libasan.so.8"
PLUGIN = "lib20_ferry_plugin.so"
DOVEADM_PLUGIN = "lib10_doveadm_ferry_plugin.so"
DOVEADM_MODULE_DIR = dovecot.DOVEADM_MODULE_DIR
MASTER_USER = "ferry-master"
MASTER_PASSWORD = "master-secret"
INSTANCES = ("old", "new")
# Sandbox(doveadm_http=True): NEW serves the doveadm HTTP API (for ferryd)
DOVEADM_API_KEY = "ferry-doveadm-api-key"


class SandboxError(RuntimeError):
    pass


def wait_until(pred, timeout, what, interval=0.02):
    """Poll a condition until it holds; raise with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def read_text(path, since=0):
    """A log file's text from byte `since` on, "" while it does not exist."""
    try:
        with open(path, "rb") as f:
            f.seek(since)
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def password(user):
    return user + "-pw"


def _ephemeral_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
            return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


# Ports handed out by this process, next candidate first. A port from
# bind(port 0) is an ephemeral one: between our close() and the server's
# listen() any outgoing connection on the machine may take it (CI saw
# Dovecot's pop3-login fail with "Address already in use"). So tests' ports
# come from below the kernel's ephemeral range, each handed out once per
# run, the start spread by PID so two runs rarely probe the same ports.
_PORTS_LOW = 10000
_next_port = [None]


def _free_ports(n):
    lo_eph, hi_eph = _ephemeral_range()
    lo, hi = _PORTS_LOW, lo_eph - 1
    if hi - lo < 1000:  # unusual kernel setting: use the ports above it
        lo, hi = hi_eph + 1, 65535
    if _next_port[0] is None:
        _next_port[0] = lo + (os.getpid() * 97) % (hi - lo)
    ports = []
    for _ in range(hi - lo):
        port = _next_port[0]
        _next_port[0] = lo if port >= hi else port + 1
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            s.close()
        ports.append(port)
        if len(ports) == n:
            return ports
    raise OSError("no %d free ports in %d-%d" % (n, lo, hi))


def proc_stat(pid):
    """(ppid, nice) of a process from /proc, or (None, None) once it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[1]), int(fields[16])
    except (OSError, ValueError, IndexError):
        return None, None


def proc_alive(pid):
    """True unless gone or a zombie (PID 1 here may never reap daemons)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _descendants(pid):
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in found:
                found.add(c)
                todo.append(c)
    return found


def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _kill(pid, sig):
    try:
        if proc_alive(pid):
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def port_open(port, addr="127.0.0.1"):
    try:
        socket.create_connection((addr, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _greets(port, addr="127.0.0.1"):
    """The service answers with a greeting line (its login process is up)."""
    try:
        with socket.create_connection((addr, port), timeout=5) as s:
            return s.makefile("rb").readline().startswith((b"* OK", b"+OK", b"220",
                                                           b'"IMPLEMENTATION"'))
    except OSError:
        return False


def _link(src, directory):
    """A link to src in directory, replacing an earlier run's link (never
    a file that is not a link)."""
    dst = os.path.join(directory, os.path.basename(src))
    if not os.path.exists(src) or (os.path.exists(dst) and not os.path.islink(dst)):
        return
    if os.path.islink(dst):
        if os.readlink(dst) == src:
            return
        os.unlink(dst)
    os.symlink(src, dst)


def make_test_cert(d, ca, name, san):
    """A CA (d/ca.pem, d/ca.key; made if missing) and a certificate d/name.pem
    + d/name.key it signed for the subjectAltNames san (openssl CLI)."""
    os.makedirs(d, exist_ok=True)

    def run(*args):
        subprocess.run(["openssl"] + list(args), check=True, capture_output=True, cwd=d)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    if not os.path.exists(os.path.join(d, ca + ".pem")):
        run("req", "-x509", *ec, "-keyout", ca + ".key", "-out", ca + ".pem", "-days", "3",
            "-subj", "/CN=Ferry test CA %s" % ca)
    run("req", *ec, "-keyout", name + ".key", "-out", name + ".csr", "-subj", "/CN=" + name)
    with open(os.path.join(d, name + ".ext"), "w") as f:
        f.write("subjectAltName=%s\n" % ",".join(san))
    run("x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem", "-CAkey", ca + ".key",
        "-CAcreateserial", "-out", name + ".pem", "-days", "3", "-extfile", name + ".ext")


class Sandbox:
    def __init__(self, root=None, build_dir=PLUGIN_DIR, conf_snippet=CONF_SNIPPET,
                 users=("alice", "bob", "carol"), new_plugin=True, batch_size=None,
                 old_extra="", new_extra="", new_userdb_extra=None, ports=None,
                 doveadm_http=False, tls=False, new_sql_conf=None, sieve=False,
                 dovecot_select=None, new_backends=None, proxy_sql_conf=None):
        self.created_root = root is None
        self.root = os.path.abspath(root or tempfile.mkdtemp(prefix="ferry-"))
        self.build_dir = os.path.abspath(build_dir)
        self.conf_snippet = os.path.abspath(conf_snippet)
        self.users = list(users)
        self.new_plugin = new_plugin
        self.batch_size = batch_size
        self.old_extra, self.new_extra = old_extra, new_extra
        self.new_userdb_extra = dict(new_userdb_extra or {})  # user -> "k=v k=v"
        if ports is None:
            p = _free_ports(5)
            ports = {"old": {"imap": p[0], "pop3": p[1]},
                     "new": {"imap": p[2], "pop3": p[3], "lmtp": p[4]}}
            if sieve:
                q = _free_ports(3)
                ports["old"]["sieve"], ports["new"]["sieve"] = q[0], q[1]
                ports["smtp_sink"] = q[2]
        # new_backends: loopback addresses of several NEW backends, e.g.
        # ("127.0.0.2", "127.0.0.3"): instances "new" (the first), "new2",
        # ... each a NEW with the plugin on its own address and the same
        # ports (so doveadm = %{host}:PORT reaches each), and "proxy": a
        # Dovecot proxy on 127.0.0.1 whose passdb is proxy_sql_conf
        # (conf/dovecot-proxy-sql.conf.ext) with ports of its own
        self.new_backends = list(new_backends or [])
        self.proxy_sql_conf = os.path.abspath(proxy_sql_conf) if proxy_sql_conf else None
        if self.new_backends:
            for i in range(2, len(self.new_backends) + 1):
                ports.setdefault("new%d" % i, dict(ports["new"]))
            if "proxy" not in ports:
                q = _free_ports(2)
                ports["proxy"] = {"imap": q[0], "pop3": q[1]}
        self.ports = ports
        # sieve: Pigeonhole on both (ManageSieve on ports[inst]["sieve"],
        # scripts in ~/sieve, ~/.dovecot.sieve the active one); NEW's LMTP
        # runs Sieve and sends vacation replies and redirects to
        # 127.0.0.1:ports["smtp_sink"] (a test's SMTP sink)
        self.sieve = sieve
        # doveadm_http: True (pick a free port) or a port number; NEW then
        # serves the doveadm HTTP API on 127.0.0.1 with DOVEADM_API_KEY
        if doveadm_http is True:
            doveadm_http = _free_ports(1)[0]
        self.doveadm_http = doveadm_http or False
        self.doveadm_http_port = self.doveadm_http or None
        self.doveadm_api_key = DOVEADM_API_KEY if self.doveadm_http else None
        self.master_user, self.master_password = MASTER_USER, MASTER_PASSWORD
        # tls: OLD gets ssl=yes (STARTTLS on its imap port) and an IMAPS
        # listener on tls_port, with a test CA made at start (tls_ca())
        self.tls = _free_ports(1)[0] if tls is True else (tls or False)
        self.tls_port = self.tls or None
        # new_sql_conf: a dovecot-sql.conf.ext (conf/dovecot-sql.conf.ext):
        # NEW asks its passdb sql first (proxy to OLD for users not cut over)
        # and its userdb sql first (ferry_phase), then its passwd-file
        self.new_sql_conf = os.path.abspath(new_sql_conf) if new_sql_conf else None
        # which Dovecot runs OLD and NEW: 2.3, 2.4 or mixed (ferrytest.dovecot;
        # default FERRY_DOVECOT)
        self.dovecot_select = dovecot_select or dovecot.SELECT
        if ASAN and dovecot.uses_24(self.dovecot_select):
            raise SandboxError("the sanitizer pass runs on Dovecot 2.3 only")

    def version(self, inst):
        """'2.3' or '2.4': the Dovecot that runs inst."""
        return dovecot.version("old" if inst == "old" else "new", self.dovecot_select)

    @property
    def instances(self):
        """In start order: old, new (new2, ..., proxy with new_backends)."""
        if not self.new_backends:
            return list(INSTANCES)
        return ["old"] + self.backends() + ["proxy"]

    def backends(self):
        """The NEW instances: ["new"], or one per new_backends address."""
        if not self.new_backends:
            return ["new"]
        return ["new"] + ["new%d" % i for i in range(2, len(self.new_backends) + 1)]

    def is_new(self, inst):
        return inst in self.backends()

    def addr(self, inst):
        """The address inst listens on (127.0.0.1 unless a backend)."""
        if self.new_backends and self.is_new(inst):
            return self.new_backends[self.backends().index(inst)]
        return "127.0.0.1"

    # ---- paths -----------------------------------------------------------
    def dir(self, inst):
        return os.path.join(self.root, inst)

    def conf_path(self, inst):
        return os.path.join(self.dir(inst), "dovecot.conf")

    def log_path(self, inst):
        return os.path.join(self.dir(inst), "dovecot.log")

    def base_dir(self, inst):
        return os.path.join(self.dir(inst), "run")

    def home(self, inst, user):
        return os.path.join(self.dir(inst), "home", user)

    def port(self, inst, proto="imap"):
        return self.ports[inst][proto]

    # ---- configuration ---------------------------------------------------
    def _write_conf(self, inst):
        d = self.dir(inst)
        mail = pwd.getpwnam("mail")
        for sub in ("run", "state", "home"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        for user in self.users:
            h = self.home(inst, user)
            if not os.path.isdir(h):
                os.makedirs(h)
                os.chown(h, mail.pw_uid, mail.pw_gid)
        extra = self.new_userdb_extra if self.is_new(inst) else {}
        v24 = self.version(inst) == "2.4"
        with open(os.path.join(d, "passwd"), "w") as f:
            for user in self.users:
                fields = extra.get(user, "")
                f.write("%s:{PLAIN}%s:%d:%d::%s::%s\n" % (
                    user, password(user), mail.pw_uid, mail.pw_gid,
                    self.home(inst, user), conf24.userdb_extra(fields) if v24 else fields))
        with open(os.path.join(d, "masters"), "w") as f:
            f.write("%s:{PLAIN}%s\n" % (MASTER_USER, MASTER_PASSWORD))
        text = self._conf_text(inst)
        if v24:  # written in 2.3 syntax, by the harness and the tests
            text = conf24.HEADER + conf24.convert(text)
        with open(self.conf_path(inst), "w") as f:
            f.write(text)

    def _conf_text(self, inst):
        d, ports = self.dir(inst), self.ports[inst]
        addr = self.addr(inst)
        listeners = []
        for proto, port in ports.items():
            svc = proto if proto == "lmtp" else proto + "-login"
            if proto == "sieve":
                svc = "managesieve-login"
            chroot = "" if proto == "lmtp" else "  chroot =\n"
            listeners.append("service %s {\n%s  inet_listener %s {\n"
                             "    address = %s\n    port = %d\n  }\n}\n"
                             % (svc, chroot, proto, addr, port))
        sep = "." if inst == "old" else "/"
        text = f"""# generated by ferrytest.sandbox ({inst})
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
log_timestamp = "%b %d %H:%M:%S.%{{usecs}} "
instance_name = ferry-{inst}-{os.path.basename(self.root)}
listen = {addr}
protocols = {" ".join(ports)}
default_internal_user = dovecot
default_login_user = dovenull
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_verbose = yes
auth_master_user_separator = *
mail_debug = no
# lets tests find a user's session process (Sandbox.processes)
verbose_proctitle = yes
first_valid_uid = 8
mail_location = maildir:~/Maildir
# tests open many sessions per user from one IP
mail_max_userip_connections = 1000
# so log counters can tell master (ferry) logins from user logins
login_log_format_elements = user=<%u> auth=<%{{auth_user}}> method=%m rip=%r lip=%l mpid=%e %c session=<%{{session}}>
imap_logout_format = in=%i out=%o deleted=%{{deleted}} expunged=%{{expunged}} trashed=%{{trashed}} hdr_count=%{{fetch_hdr_count}} hdr_bytes=%{{fetch_hdr_bytes}} body_count=%{{fetch_body_count}} body_bytes=%{{fetch_body_bytes}}
# log barriers (logs.py) send an ID to mark a point in the log
imap_id_log = *
namespace inbox {{
  inbox = yes
  separator = {sep}
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {d}/masters
  master = yes
}}
{self._sql_passdb(inst)}passdb {{
  driver = passwd-file
  args = scheme=PLAIN {d}/passwd
}}
{self._sql_userdb(inst)}userdb {{
  driver = passwd-file
  args = {d}/passwd
}}
service anvil {{
  chroot =
}}
""" + "".join(listeners)
        if inst == "proxy":
            return self._proxy_conf(text)
        if inst == "old" and self.tls:
            text += self._tls_conf()
        if self.sieve:
            text += self._sieve_conf(inst)
        if inst == "old":
            # seeding speed; OLD is never crashed mid-write by the tests
            return text + "mail_fsync = never\n" + self.old_extra + "\n"
        text += "mail_plugin_dir = %s\n" % self._plugin_dir()
        if self.new_plugin:
            text += "!include %s\n" % self._snippet(inst)
        text += f"""imapc_host = 127.0.0.1
imapc_port = {self.ports["old"]["imap"]}
imapc_ssl = no
imapc_master_user = {MASTER_USER}
imapc_password = {MASTER_PASSWORD}
imapc_cmd_timeout = 5s
"""
        if self.batch_size is not None:
            text += "plugin {\n  ferry_batch_size = %d\n}\n" % self.batch_size
        if self.doveadm_http:
            text += ("doveadm_api_key = %s\nservice doveadm {\n  inet_listener http {\n"
                     "    address = %s\n    port = %d\n  }\n}\n"
                     % (self.doveadm_api_key, addr, self.doveadm_http))
        if ASAN:
            text += self._asan_conf()
        return text + self.new_extra + "\n"

    def _snippet(self, inst):
        if self.version(inst) == "2.4" and self.conf_snippet == CONF_SNIPPET:
            return CONF_SNIPPET_24
        return self.conf_snippet

    def _plugin_dir(self):
        """The build dir; with sieve, a dir of links to the build's plugins
        and Pigeonhole's (mail_plugin_dir is one directory)."""
        if not self.sieve:
            return self.build_dir
        d = os.path.join(self.root, "plugins")
        os.makedirs(d, exist_ok=True)
        links = {n: os.path.join(self.build_dir, n) for n in os.listdir(self.build_dir)
                 if n.endswith(".so")}
        links["lib90_sieve_plugin.so"] = "/usr/lib/dovecot/modules/lib90_sieve_plugin.so"
        for name, src in links.items():
            dst = os.path.join(d, name)
            if os.path.islink(dst):
                os.unlink(dst)
            os.symlink(src, dst)
        return d

    def _sieve_conf(self, inst):
        text = ("plugin {\n  sieve = file:~/sieve;active=~/.dovecot.sieve\n}\n"
                "protocol sieve {\n  mail_max_userip_connections = 100\n}\n")
        if self.is_new(inst):
            text += ("protocol lmtp {\n  mail_plugins = $mail_plugins sieve\n}\n"
                     "submission_host = 127.0.0.1:%d\n"
                     "postmaster_address = postmaster@example.org\n"
                     "hostname = new.example.org\n" % self.ports["smtp_sink"])
        return text

    def _sql_passdb(self, inst):
        if inst == "proxy":
            return "passdb {\n  driver = sql\n  args = %s\n}\n" % self.proxy_sql_conf
        if not self.is_new(inst) or not self.new_sql_conf:
            return ""
        return "passdb {\n  driver = sql\n  args = %s\n}\n" % self.new_sql_conf

    def _sql_userdb(self, inst):
        if not self.is_new(inst) or not self.new_sql_conf:
            return ""
        return ("userdb {\n  driver = sql\n  args = %s\n  result_success = continue-ok\n}\n"
                % self.new_sql_conf)

    def _proxy_conf(self, text):
        """The proxy in front of the backends: every login is proxied
        (passdb sql with proxy=y host=...), nothing is stored here."""
        return text + "# a proxy: its sql passdb answers proxy=y host=...\n"

    # ---- TLS (OLD only) ------------------------------------------------------
    def tls_dir(self):
        return os.path.join(self.root, "tls")

    def tls_ca(self):
        """PEM file of the test CA that signed OLD's certificate."""
        return os.path.join(self.tls_dir(), "ca.pem")

    def _tls_conf(self):
        d = self.tls_dir()
        if not os.path.exists(os.path.join(d, "server.pem")):
            make_test_cert(d, "ca", "server", ["DNS:localhost", "IP:127.0.0.1"])
        return ("ssl = yes\nssl_cert = <%s/server.pem\nssl_key = <%s/server.key\n"
                "service imap-login {\n  inet_listener imaps {\n    address = 127.0.0.1\n"
                "    port = %d\n    ssl = yes\n  }\n}\n"
                # ssl = yes would also open POP3S on the fixed port 995
                "service pop3-login {\n  inet_listener pop3s {\n    port = 0\n  }\n}\n"
                % (d, d, self.tls_port))

    # ---- sanitizers --------------------------------------------------------
    def sanitizer_dir(self):
        return os.path.join(self.root, "sanitizer")

    def sanitizer_env(self):
        """Environment that makes a process run the ASan+UBSan plugin."""
        d = self.sanitizer_dir()
        return {"LD_PRELOAD": ASAN_RUNTIME,
                "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1:log_path=%s/asan" % d,
                "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1:log_path=%s/ubsan" % d}

    def _asan_conf(self):
        d = self.sanitizer_dir()
        os.makedirs(d, exist_ok=True)
        os.chmod(d, 0o1777)  # reports are written as the mail user
        env = " ".join("%s=%s" % kv for kv in self.sanitizer_env().items())
        # ASan reserves terabytes of address space: no vsz limit
        return ("import_environment = TZ CORE_OUTOFMEM CORE_ERROR LISTEN_PID "
                "LISTEN_FDS %s\ndefault_vsz_limit = 0\n" % env)

    def sanitizer_reports(self):
        """Texts of the sanitizer reports written so far (empty = clean)."""
        d = self.sanitizer_dir()
        if not os.path.isdir(d):
            return []
        out = []
        for name in sorted(os.listdir(d)):
            with open(os.path.join(d, name), errors="replace") as f:
                out.append("%s:\n%s" % (name, f.read()))
        return out

    def finish(self, session, failed_before, root=None):
        """A stopped sandbox's teardown, the same for every module fixture:
        fails the module's last test on a sanitizer report, removes the
        sandbox's directory (or `root`) when no test of the module failed
        and FERRY_KEEP is unset, else says where it was kept."""
        import pytest
        reports = self.sanitizer_reports()
        if reports:
            print("\n".join(reports))
            pytest.fail("sanitizer reports in %s" % self.sanitizer_dir(), pytrace=False)
        root = root or self.root
        if session.testsfailed == failed_before and not os.environ.get("FERRY_KEEP"):
            shutil.rmtree(root, ignore_errors=True)
        else:
            print("\nsandbox kept: %s" % root)

    def doveadm_cmd(self, inst, *args):
        """argv of doveadm for inst (its Dovecot's doveadm: the 2.4 root's
        for a 2.4 instance, where -o plugin/KEY=V is -o KEY=V)."""
        ver = self.version(inst)
        if ver == "2.4":
            args = conf24.doveadm_args(args)
        return dovecot.command(ver, ["doveadm", "-c", self.conf_path(inst)] + list(args))

    def doveadm_env(self, inst):
        env = dict(os.environ)
        if ASAN:  # doveadm loads the (sanitized) doveadm plugin for OLD too
            env.update(self.sanitizer_env())
        return env

    # ---- lifecycle -------------------------------------------------------
    def master_pid(self, inst):
        try:
            with open(os.path.join(self.base_dir(inst), "master.pid")) as f:
                pid = int(f.read().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None
        # a stale pid file may name a recycled pid: only trust our own master
        ok = proc_alive(pid) and self.conf_path(inst) in cmdline(pid)
        return pid if ok else None

    def pids(self, inst):
        """Master and all its descendants (empty when stopped)."""
        pid = self.master_pid(inst)
        return {pid} | _descendants(pid) if pid else set()

    def processes(self, inst):
        """{pid: title} of the instance; with verbose_proctitle a session
        reads like 'dovecot-.../imap [alice 127.0.0.1 UID FETCH]'."""
        return {p: cmdline(p) for p in self.pids(inst)}

    def start_instance(self, inst):
        if self.master_pid(inst):
            return
        if self.is_new(inst) and self.new_plugin:
            plugin = os.path.join(self.build_dir, PLUGIN)
            if not os.path.exists(plugin):
                raise SandboxError("NEW needs %s: build the plugin (make) or use "
                                   "Sandbox(new_plugin=False)" % plugin)
        os.chmod(self.root, 0o755)  # mail/dovenull must traverse it
        ver = self.version(inst)
        if ver == "2.4":  # its files at the same paths inside the 2.4 root
            for path in (self.root, self.build_dir):
                if os.path.isdir(path):
                    dovecot.bind(path)
        self._write_conf(inst)
        if self.is_new(inst):
            self._link_modules(ver)
        # output to a file, not a pipe: the daemon keeps stderr open forever
        out_path = os.path.join(self.dir(inst), "start.out")
        with open(out_path, "w+") as out:
            rc = subprocess.run(dovecot.command(ver, ["dovecot", "-c", self.conf_path(inst)]),
                                stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT).returncode
            out.seek(0)
            if rc != 0:
                raise SandboxError("dovecot %s failed to start (rc %d): %s%s" % (
                    inst, rc, out.read(), self.log_text(inst)[-2000:]))
        addr = self.addr(inst)
        for port in self.ports[inst].values():
            wait_until(lambda: _greets(port, addr), 10, "%s greeting on %s:%d" % (inst, addr, port))
        if self.is_new(inst) and self.doveadm_http:
            wait_until(lambda: port_open(self.doveadm_http, addr), 10,
                       "doveadm HTTP on %s:%d" % (addr, self.doveadm_http))

    def stop_instance(self, inst, timeout=15):
        pid = self.master_pid(inst)
        if not pid:
            return
        procs = self.pids(inst)
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not proc_alive(pid), timeout, "dovecot %s master to exit" % inst)
        # Session processes then wait up to 10 s for their clients to hang up
        # ("Server shutting down"); end them now, but not the log process, so
        # their last lines (logout, body_count) still reach the log.
        for p in procs:
            if proc_alive(p) and not cmdline(p).endswith("/log"):
                _kill(p, signal.SIGTERM)
        try:
            wait_until(lambda: not any(map(proc_alive, procs)), 5,
                       "dovecot %s processes to exit" % inst)
        except TimeoutError:
            for p in procs:  # last resort, only processes of this instance
                _kill(p, signal.SIGKILL)
            wait_until(lambda: not any(map(proc_alive, procs)), 5,
                       "dovecot %s to die after SIGKILL" % inst)

    def start(self):
        started = []
        try:
            for inst in self.instances:
                self.start_instance(inst)
                started.append(inst)
        except BaseException:
            for inst in reversed(started):
                self.stop_instance(inst)
            raise
        self.save()
        return self

    def stop(self):
        # NEW first: it may hold imapc sessions to OLD
        for inst in reversed(self.instances):
            self.stop_instance(inst)

    def start_old(self):
        self.start_instance("old")

    def stop_old(self):
        self.stop_instance("old")

    def cleanup(self):
        """stop() and remove the root if this Sandbox created it."""
        self.stop()
        if self.created_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _link_modules(self, ver):
        """doveadm loads its plugins only from its compiled-in module dir,
        and 2.4's config process settings modules (which declare the ferry_*
        settings) only from its own: link the build's there (in the
        private copies of those dirs, conftest.py)."""
        doveadm_dir, settings_dir = dovecot.module_dirs(ver)
        _link(os.path.join(self.build_dir, DOVEADM_PLUGIN), doveadm_dir)
        if settings_dir and os.path.isdir(self.build_dir):
            for name in os.listdir(self.build_dir):
                if name.endswith("_settings.so"):
                    _link(os.path.join(self.build_dir, name), settings_dir)

    # ---- clients ---------------------------------------------------------
    def doveadm(self, inst, *args, check=True, timeout=300, input=None):
        r = subprocess.run(self.doveadm_cmd(inst, *args), env=self.doveadm_env(inst),
                           capture_output=True, text=True, timeout=timeout, input=input)
        if check and r.returncode != 0:
            raise SandboxError("doveadm %s %s -> rc %d: %s" % (
                inst, " ".join(args), r.returncode, r.stderr.strip()))
        return r

    def ferry_names(self, user):
        """Path of a file with `doveadm -f json ferry status -u USER` from
        NEW: the plugin's old name -> new name of every folder, what
        ferry-imapcheck verify --names reads."""
        path = os.path.join(self.root, "ferry-names-%s.json" % user)
        out = self.doveadm("new", "-f", "json", "ferry", "status", "-u", user).stdout
        with open(path, "w") as f:
            f.write(out)
        return path

    def log_text(self, inst, since=0):
        return read_text(self.log_path(inst), since)

    def log_size(self, inst):
        try:
            return os.path.getsize(self.log_path(inst))
        except FileNotFoundError:
            return 0

    def imap(self, inst, user, master=False, authzid=False, timeout=60):
        """Logged-in imaplib.IMAP4; master=True logs in as user*ferry-master
        (or AUTHENTICATE PLAIN with authzid if authzid=True)."""
        if master:
            return imapwire.connect(self.addr(inst), self.port(inst), user,
                                    MASTER_PASSWORD, MASTER_USER, authzid, timeout)
        return imapwire.connect(self.addr(inst), self.port(inst), user,
                                password(user), timeout=timeout)

    def lmtp_deliver(self, user, message, sender="sender@example.org", timeout=120):
        """Deliver via NEW's LMTP; returns the (code, text) reply for user."""
        with smtplib.LMTP("127.0.0.1", self.port("new", "lmtp"), timeout=timeout) as s:
            s.ehlo()  # smtplib.LMTP sends LHLO
            code, text = s.mail(sender)
            if code == 250:
                code, text = s.rcpt(user)
                if code in (250, 251):
                    code, text = s.data(message)
            return code, text.decode("utf-8", "replace")

    # ---- persistence for the CLI -------------------------------------------
    STATE = "sandbox.json"

    def save(self):
        state = {k: getattr(self, k) for k in (
            "build_dir", "conf_snippet", "users", "new_plugin", "batch_size",
            "old_extra", "new_extra", "new_userdb_extra", "ports", "doveadm_http",
            "tls", "new_sql_conf", "sieve", "dovecot_select", "new_backends",
            "proxy_sql_conf")}
        with open(os.path.join(self.root, self.STATE), "w") as f:
            json.dump(state, f, indent=1)

    @classmethod
    def load(cls, root):
        with open(os.path.join(root, cls.STATE)) as f:
            return cls(root=root, **json.load(f))

    def env(self):
        e = {"FERRY_DIR": self.root, "FERRY_USERS": " ".join(self.users),
             "FERRY_MASTER_USER": MASTER_USER, "FERRY_MASTER_PASSWORD": MASTER_PASSWORD,
             "FERRY_PASSWORD_SUFFIX": password("")}
        for inst in self.instances:
            I = inst.upper()
            e["FERRY_%s_CONF" % I] = self.conf_path(inst)
            e["FERRY_%s_LOG" % I] = self.log_path(inst)
            e["FERRY_%s_HOME" % I] = os.path.join(self.dir(inst), "home")
            for proto, port in self.ports[inst].items():
                e["FERRY_%s_%s_PORT" % (I, proto.upper())] = str(port)
        return e


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python3 -m ferrytest.sandbox")
    ap.add_argument("action", choices=("start", "stop", "env"))
    ap.add_argument("dir")
    ap.add_argument("--no-plugin", action="store_true", help="NEW without ferry")
    ap.add_argument("--build-dir", default=PLUGIN_DIR)
    ap.add_argument("--conf-snippet", default=CONF_SNIPPET)
    ap.add_argument("--users", default="alice,bob,carol")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--seed", choices=("small", "full"), help="seed OLD for every user")
    a = ap.parse_args(argv)
    root = os.path.abspath(a.dir)
    if a.action == "start":
        if os.path.exists(os.path.join(root, Sandbox.STATE)):
            sb = Sandbox.load(root)
        else:
            os.makedirs(root, exist_ok=True)
            sb = Sandbox(root, a.build_dir, a.conf_snippet, a.users.split(","),
                         new_plugin=not a.no_plugin, batch_size=a.batch_size)
        sb.start()
        if a.seed:
            from . import corpus
            spec = corpus.full_spec() if a.seed == "full" else corpus.small_spec()
            for user in sb.users:
                corpus.seed_old(sb, user, spec)
    else:
        sb = Sandbox.load(root)
        if a.action == "stop":
            sb.stop()
            return 0
    for k, v in sb.env().items():
        print("export %s=%s" % (k, shlex.quote(v)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
