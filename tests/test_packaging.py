"""Ferry installs and runs like a Debian service (issue 13; docs/packaging.md).

`make deb` builds ferry-dovecot-plugin and ferryd from this tree; lintian
finds no error in them (each warning is one docs/packaging.md explains).
They are installed with `apt-get install ./ferry*.deb` into a clean Debian
12 root (debootstrap --variant=minbase with Debian's Dovecot, Postfix and
systemd installed: the mail server Ferry is added to; cached by
ferrytest.debroot and copied for each run). With the shipped configuration files,
only hosts, ports and secrets edited (plus the documented line that
enables the routing passdb):
  - Dovecot starts with the plugin loaded (an IMAP session maps it);
  - ferryd starts the way the unit's ExecStartPre/ExecStart do, as
    User=ferry (its uid is checked), ferryctl talks to it, SIGHUP reloads
    the packaged root:ferry 0640 secret files;
  - Postfix's `postmap -q` run as postfix and `doveadm auth lookup` read
    the routing views in ferryd's database;
  - files holding secrets are not world-readable;
  - systemd-analyze verify accepts the unit;
  - removing the packages leaves Dovecot working and keeps configuration
    and state; purging removes them.
No systemd in the root: ferryd is started as the unit says. Skipped under
FERRY_ASAN=1 (no plugin or service code runs differently there)."""
import glob
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time

import pytest

from ferrytest import debroot
from ferrytest.sandbox import REPO, _free_ports, wait_until

# tests/README.md, "Dovecot 2.3 and 2.4"
DOVECOT_ONCE = 'the bookworm packages are tested in a Debian 12 root with its own Dovecot 2.3'

pytestmark = [
    pytest.mark.skipif(os.environ.get("FERRY_ASAN") == "1",
                       reason="packaging runs no sanitized code"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chroot, mount)"),
]

DEBS = ("ferry-dovecot-plugin", "ferryd")
# the mail server Ferry is added to
MAIL_SERVER = ["dovecot-imapd", "dovecot-lmtpd", "dovecot-sqlite", "postfix", "postfix-sqlite",
               "systemd"]
DEBCONF = ("postfix postfix/main_mailer_type select Local only\n"
           "postfix postfix/mailname string ferry.test\n")
LOCAL_USER, LOCAL_PW = "carol", "carol-pw"  # a user NEW serves itself
ROUTED_USER = "alice"                          # a user ferryd routes to OLD
TIMES = {}


def timed(name, fn, *a, **kw):
    t = time.monotonic()
    try:
        return fn(*a, **kw)
    finally:
        TIMES[name] = time.monotonic() - t


@pytest.fixture(scope="module")
def built():
    out = tempfile.mkdtemp(prefix="ferry-deb-")
    try:
        r = timed("make deb", subprocess.run, ["make", "-C", REPO, "deb", "DEB_OUT=%s" % out],
                  capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        debs = {name: glob.glob(os.path.join(out, "%s_*.deb" % name)) for name in DEBS}
        assert all(len(v) == 1 for v in debs.values()), os.listdir(out)
        changes = glob.glob(os.path.join(out, "*.changes"))
        yield {"dir": out, "debs": {k: v[0] for k, v in debs.items()}, "changes": changes[0]}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def apt(root, *args):
    r = root.run(["apt-get", "-y", "-q", "--no-install-recommends"] + list(args), cwd="/tmp/debs")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def root(built):
    t0 = time.monotonic()
    try:
        base = debroot.DebRoot.base(debconf=DEBCONF, install=MAIL_SERVER)
    except debroot.Unavailable as e:
        pytest.skip(str(e))
    TIMES["base root (debootstrap and the mail server when not cached)"] = time.monotonic() - t0
    # fetch what the install needs into the cache (nothing when cached)
    os.makedirs(base.host_path("/tmp/debs"), exist_ok=True)
    for p in built["debs"].values():
        shutil.copy(p, base.host_path("/tmp/debs"))
    names = ["./" + os.path.basename(p) for p in built["debs"].values()]
    try:
        timed("download into the cache", debroot.DebRoot.base,
              downloads=["/tmp/debs/" + n[2:] for n in names])
    except debroot.Unavailable as e:
        pytest.skip(str(e))
    finally:
        shutil.rmtree(base.host_path("/tmp/debs"), ignore_errors=True)
    r = timed("copy of the root", base.create)
    os.makedirs(r.host_path("/tmp/debs"))
    for p in built["debs"].values():
        shutil.copy(p, r.host_path("/tmp/debs"))
    try:
        r.mount_proc()
        timed("apt-get install ./ferry*.deb", apt, r, "install", *names)
        yield r
    finally:
        r.destroy()
        assert not r.mounts() and not r.pids()
        TIMES["whole module"] = time.monotonic() - t0
        print("\npackaging times: " + ", ".join("%s %.1f s" % kv for kv in TIMES.items()))


# ---- lintian and the unit ------------------------------------------------------

def documented_lintian_tags():
    with open(os.path.join(REPO, "docs", "packaging.md")) as f:
        return set(re.findall(r"`([a-z0-9-]+)`", f.read()))


def test_lintian_no_errors_and_warnings_explained(built):
    r = timed("lintian", subprocess.run, ["lintian", "--allow-root", built["changes"]],
              capture_output=True, text=True, timeout=600)
    lines = [l for l in r.stdout.splitlines() if re.match(r"^[EW]: ", l)]
    errors = [l for l in lines if l.startswith("E: ")]
    assert errors == [], r.stdout
    warned = {l.split()[2] for l in lines if l.startswith("W: ")}
    assert warned <= documented_lintian_tags(), (warned, r.stdout)


def test_systemd_analyze_verify_accepts_the_unit(root):
    unit = root.host_path("/lib/systemd/system/ferryd.service")
    text = root.read("/lib/systemd/system/ferryd.service")
    assert re.search(r"(?m)^User=ferry$", text)
    for d in ("StateDirectory=ferry", "LogsDirectory=ferry", "NoNewPrivileges=yes",
              "ProtectSystem=strict"):
        assert d in text, d
    # in the root (its systemd, the installed binaries); its man pages are
    # checked here, as files of the package (no man-db in the root)
    r = root.run(["systemd-analyze", "verify", "--man=no", "/lib/systemd/system/ferryd.service"])
    assert r.returncode == 0 and "ferryd.service" not in r.stderr, r.stdout + r.stderr
    for page in re.findall(r"man:([a-z.-]+)\((\d)\)", text):
        assert os.path.exists(root.host_path("/usr/share/man/man%s/%s.%s.gz" % (page[1], *page)))


# ---- the installed layout -----------------------------------------------------------

def mode_of(root, path):
    st = os.stat(root.host_path(path))
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def test_secret_files_not_world_readable(root):
    ferry_gid = root.group_id("ferry")
    dovecot_gid = root.group_id("dovecot")
    expect = {
        "/etc/dovecot/conf.d/05-ferry.conf": (0, dovecot_gid, 0o640),
        "/etc/dovecot/dovecot-ferry-sql.conf.ext": (0, dovecot_gid, 0o640),
        "/etc/ferry/api.token": (0, ferry_gid, 0o640),
        "/etc/ferry/doveadm.key": (0, ferry_gid, 0o640),
        "/etc/ferry/secret.key": (0, ferry_gid, 0o640),
    }
    got = {p: mode_of(root, p) for p in expect}
    assert got == expect
    # the generated secrets differ and are long
    keys = {root.read(p).strip() for p in expect if p.startswith("/etc/ferry/")}
    assert len(keys) == 3 and all(len(k) == 64 for k in keys)
    ferry_uid, _ = root.ids("ferry")
    assert mode_of(root, "/var/lib/ferry") == (ferry_uid, ferry_gid, 0o2770)
    assert mode_of(root, "/var/log/ferry") == (ferry_uid, ferry_gid, 0o750)
    # the routing readers are in group ferry
    members = root.read("/etc/group")
    m = re.search(r"(?m)^ferry:x:\d+:(.*)$", members)
    assert set(m.group(1).split(",")) >= {"dovecot", "postfix"}


# ---- configured and running ------------------------------------------------------

@pytest.fixture(scope="module")
def running(root):
    ports = dict(zip(("imap", "doveadm", "api", "old"), _free_ports(4)))
    key = root.read("/etc/ferry/doveadm.key").strip()
    # Dovecot: ports and listen address only
    root.edit("/etc/dovecot/dovecot.conf", r"^#listen = \*, ::$", "listen = 127.0.0.1")
    root.edit("/etc/dovecot/conf.d/10-master.conf", r"^    #port = 143$",
              "    port = %d" % ports["imap"])
    root.edit("/etc/dovecot/conf.d/10-master.conf", r"^    #port = 993$", "    port = 0")
    root.edit("/etc/dovecot/conf.d/10-master.conf", r"^    #port = 110$", "    port = 0")
    root.edit("/etc/dovecot/conf.d/10-master.conf", r"^    #port = 995$", "    port = 0")
    # Ferry's snippet: the old server, its secret, the doveadm API's port and key
    conf = "/etc/dovecot/conf.d/05-ferry.conf"
    root.edit(conf, r"^imapc_host =.*$", "imapc_host = 127.0.0.1")
    root.edit(conf, r"^imapc_port = .*$", "imapc_port = %d" % ports["old"])
    root.edit(conf, r"^imapc_ssl = .*$", "imapc_ssl = no")
    root.edit(conf, r"^imapc_password = .*$", "imapc_password = old-master-secret")
    root.edit(conf, r"^#doveadm_api_key = .*$", "doveadm_api_key = %s" % key)
    root.edit(conf, r"^#(service doveadm \{|  inet_listener http \{|    address = 127.0.0.1|"
              r"  \}|\})$", r"\1", count=0)
    root.edit(conf, r"^#    port = 8080$", "    port = %d" % ports["doveadm"])
    # the documented routing passdb/userdb line, above the site's own
    root.edit("/etc/dovecot/conf.d/10-auth.conf", r"^!include auth-system.conf.ext$",
              "!include_try auth-ferry.conf.ext\n!include auth-system.conf.ext")
    # ferryd: its ports
    root.edit("/etc/ferry/ferryd.conf", r"^listen = .*$", "listen = 127.0.0.1:%d" % ports["api"])
    root.edit("/etc/ferry/ferryd.conf", r"^doveadm = .*$",
              "doveadm = 127.0.0.1:%d" % ports["doveadm"])
    # a user NEW serves itself (PAM, passwd)
    r = root.run(["sh", "-c", "useradd -m %s && echo %s:%s | chpasswd"
                  % (LOCAL_USER, LOCAL_USER, LOCAL_PW)])
    assert r.returncode == 0, r.stderr
    # the documented order: ferryd (the database's schema), then Dovecot
    fd = start_ferryd(root)
    start_dovecot(root, ports)
    try:
        yield {"ports": ports, "ferryd": fd}
    finally:
        if fd.poll() is None:
            fd.terminate()
            fd.wait(timeout=60)


def start_dovecot(root, ports):
    # its output to a file: the daemon's children would hold a pipe open
    r = root.run(["sh", "-c", "dovecot >/tmp/dovecot.out 2>&1"])
    assert r.returncode == 0, root.read("/tmp/dovecot.out")
    wait_until(lambda: imap_login_ok(ports["imap"]), 60, "Dovecot answers on its IMAP port")


def imap_login_ok(port, user=LOCAL_USER, password=LOCAL_PW):
    import imaplib
    try:
        c = imaplib.IMAP4("127.0.0.1", port, timeout=10)
    except OSError:
        return False
    try:
        return c.login(user, password)[0] == "OK"
    finally:
        try:
            c.logout()
        except Exception:
            pass


def unit_lines(root, key):
    text = root.read("/lib/systemd/system/ferryd.service")
    return [l.split("=", 1)[1] for l in text.splitlines() if l.startswith(key + "=")]


def start_ferryd(root):
    """ExecStartPre, then ExecStart, as the unit's User= (no systemd here)."""
    (user,) = unit_lines(root, "User")
    for pre in unit_lines(root, "ExecStartPre"):
        r = root.run(pre.split(), user=user)
        assert r.returncode == 0, (pre, r.stdout + r.stderr)
        assert "is valid" in r.stdout
    (cmd,) = unit_lines(root, "ExecStart")
    p = root.popen(["sh", "-c", "umask %s && exec %s" % (unit_lines(root, "UMask")[0], cmd)],
                   user=user, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_until(lambda: ferryd_ok(root), 30, "ferryctl status answers")
    return p


def ferryd_ok(root):
    return root.run(["ferryctl", "status", "--once"]).returncode == 0


def test_dovecot_runs_with_the_plugin_loaded(root, running):
    r = root.run(["doveconf", "-h", "mail_plugins"])
    assert "ferry" in r.stdout.split(), r.stdout + r.stderr
    # an IMAP session of the local user: its imap process maps the plugin
    import imaplib
    c = imaplib.IMAP4("127.0.0.1", running["ports"]["imap"], timeout=30)
    try:
        assert c.login(LOCAL_USER, LOCAL_PW)[0] == "OK"
        c.noop()
        maps = []
        for pid in root.pids():
            try:
                with open("/proc/%d/cmdline" % pid, "rb") as f:
                    if not f.read().startswith(b"dovecot/imap"):
                        continue
                with open("/proc/%d/maps" % pid) as f:
                    maps.append(f.read())
            except OSError:
                pass
        assert any("lib20_ferry_plugin.so" in m for m in maps), "no imap process maps the plugin"
    finally:
        c.logout()
    # and doveadm has the plugin's commands
    r = root.run(["doveadm", "ferry", "status", "-u", LOCAL_USER])
    assert "Unknown command" not in r.stderr and "usage" not in r.stderr.lower(), r.stderr


def test_ferryd_runs_as_ferry_and_ferryctl_talks_to_it(root, running):
    fd = running["ferryd"]
    assert fd.poll() is None
    ferry_uid, ferry_gid = root.ids("ferry")
    # the chroot process execs ferryd: its pid is ferryd's
    with open("/proc/%d/status" % fd.pid) as f:
        status = f.read()
    uids = re.search(r"(?m)^Uid:\s+(.*)$", status).group(1).split()
    assert [int(u) for u in uids] == [ferry_uid] * 4, status
    log = root.read("/var/log/ferry/ferryd.log")
    assert re.search(r"event=started .*uid=%d" % ferry_uid, log), log
    r = root.run(["ferryctl", "status", "--once"])
    assert r.returncode == 0 and "0 users" in r.stdout, r.stdout + r.stderr
    # the state database: ferry:ferry 0660 in the 2770 directory
    assert mode_of(root, "/var/lib/ferry/state.db") == (ferry_uid, ferry_gid, 0o660)
    # ferryd -t as root (the admin's check) agrees
    r = root.run(["ferryd", "-c", "/etc/ferry/ferryd.conf", "-t"])
    assert r.returncode == 0 and "warning" not in r.stderr, r.stdout + r.stderr
    # SIGHUP re-reads the root:ferry 0640 secret files as ferry
    fd.send_signal(1)
    wait_until(lambda: "event=reloaded" in root.read("/var/log/ferry/ferryd.log"), 20,
               "ferryd reloaded")
    assert "reload-failed" not in root.read("/var/log/ferry/ferryd.log")


def test_routing_views_read_by_postfix_and_dovecot(root, running):
    old = running["ports"]["old"]
    root.write("/tmp/users.csv", "user,endpoint,tls,wave\n%s,127.0.0.1:%d,none,pilot\n"
               % (ROUTED_USER, old))
    r = root.run(["ferryctl", "import", "/tmp/users.csv"])
    assert r.returncode == 0, r.stdout + r.stderr
    r = root.run(["ferryctl", "route", "config", "--new-transport", "lmtp:unix:private/dovecot-lmtp",
                  "--endpoint", "127.0.0.1:%d" % old, "--transport", "smtp:[127.0.0.1]:2525"])
    assert r.returncode == 0, r.stdout + r.stderr
    # Postfix's lookup as user postfix (a member of group ferry), the shipped map
    r = root.run(["postmap", "-q", "%s@example.com" % ROUTED_USER,
                  "sqlite:/etc/postfix/ferry-transport.sqlite.cf"], user="postfix")
    assert r.returncode == 0 and r.stdout.strip() == "smtp:[127.0.0.1]:2525", r.stdout + r.stderr
    # Dovecot's auth: the not-yet-cut-over user is proxied to OLD
    r = root.run(["doveadm", "auth", "lookup", ROUTED_USER])
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"proxy\s*:?\s*y", r.stdout) and "127.0.0.1" in r.stdout, r.stdout
    assert re.search(r"port\s*:\s*%d" % old, r.stdout), r.stdout
    # a user ferryd does not route is the site's own (PAM) and logs in on NEW
    assert imap_login_ok(running["ports"]["imap"])


def test_remove_keeps_dovecot_working_purge_removes_config_and_state(root, running):
    fd = running["ferryd"]
    fd.terminate()
    fd.wait(timeout=60)
    apt(root, "remove", *DEBS)
    # Dovecot, reloaded (the package's invoke-rc.d is denied here), still serves
    root.run(["doveadm", "reload"])
    wait_until(lambda: imap_login_ok(running["ports"]["imap"]), 30, "login after remove")
    r = root.run(["doveconf", "-h", "mail_plugins"])
    assert r.returncode == 0 and "ferry" not in r.stdout.split(), r.stdout + r.stderr
    kept = ["/etc/ferry/ferryd.conf", "/etc/ferry/api.token", "/etc/dovecot/conf.d/05-ferry.conf",
            "/var/lib/ferry/state.db"]
    assert [p for p in kept if not os.path.exists(root.host_path(p))] == []
    assert not os.path.exists(root.host_path("/usr/sbin/ferryd"))
    # routing still read (the auth-ferry include and database are kept)
    r = root.run(["doveadm", "auth", "lookup", ROUTED_USER])
    assert r.returncode == 0, r.stdout + r.stderr

    apt(root, "purge", *DEBS)
    gone = kept + ["/var/lib/ferry", "/var/log/ferry", "/etc/dovecot/conf.d/auth-ferry.conf.ext",
                   "/etc/dovecot/dovecot-ferry-sql.conf.ext"]
    assert [p for p in gone if os.path.exists(root.host_path(p))] == []
    r = root.run(["doveadm", "reload"])
    assert r.returncode == 0, r.stdout + r.stderr
    wait_until(lambda: imap_login_ok(running["ports"]["imap"]), 30, "login after purge")
