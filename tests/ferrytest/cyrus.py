"""Cyrus IMAP 3.6 (Debian 12's cyrus-imapd and cyrus-pop3d, unpacked, never
installed) as an OLD server on 127.0.0.1, for tests and for Ferry's imapc.

    with Cyrus(unixhierarchysep=False) as cy:        # or True: '/' separator
        spec = cy.seed("alice", corpus.small_spec())
        assert compare(cy.expected_snapshot(spec), cy.snapshot("alice")) == []

Layout under the root (a temp dir unless given), all owned by `mail`:
imapd.conf, cyrus.conf, sasldb2, conf/ (configdirectory), spool/
(partition-default), syslog (log_path, see below), master.out.

Processes: `master -C imapd.conf -M cyrus.conf -D` runs as the `mail` user
(Cyrus refuses uid 0; `cyrus_user: mail` so it does not look for a `cyrus`
user); every command in cyrus.conf carries `-C imapd.conf`. imapd (port()) and
pop3d (port("pop3")) are spawned per connection by master, one of each kept
ready (prefork=1: with pop3d at prefork=0, a connection opened and closed
at once, like sandbox.port_open's, made master take 15 s to stop). stop()
ends master and every process under it by PID; a master that outlives its
children (it can spin after SIGTERM when it was starting a pop3d: see
OldServer.stop) is SIGKILLed a second later.

POP3: USER/PASS (allowplaintext; CAPA lists no SASL), same passwords;
UIDL is "UIDVALIDITY.UID" of INBOX (imapd.conf `uidl_format: cyrus`, the
default), i.e. Dovecot's pop3_uidl_format %v.%u (test_pop3_uidl.py).

Authentication: SASL auxprop `sasldb` in <root>/sasldb2, written with the
unpacked saslpasswd2, realm `localhost` (= `servername`), mechanisms PLAIN
and LOGIN, plaintext allowed. Users: sandbox.password(user).

Master identity: `ferry-master` / `master-secret` (sandbox.MASTER_USER/
MASTER_PASSWORD) is listed in `admins:`. It logs in AS a user with
    AUTHENTICATE PLAIN  base64("alice\\0ferry-master\\0master-secret")
(authzid = the user, authcid = the admin): Cyrus lets admins proxy, and the
session is alice's own (LIST shows alice's folders only). LOGIN as
"alice*ferry-master" does not exist on Cyrus. This is what Dovecot's imapc
sends with imapc_master_user, so imapc needs no special setting.

Folder names: altnamespace: no, so personal folders are "INBOX.Sent"
(unixhierarchysep: no, '.') or "INBOX/Sent" (unixhierarchysep: yes, '/');
snapshots name them "Sent" like the Dovecot OLD (OldServer.snapshot_name).

Cyrus differences seed()/expected_snapshot() account for:
- UIDVALIDITY cannot be chosen: Cyrus uses the creation time (folders
  created in the same second share a value); seed() returns the spec with
  the server's values.
- Creating "INBOX.Projects.2019.Q1" without its parent creates the parent
  as a real, selectable, empty folder (Dovecot: a \\Noselect placeholder).
- DELETE removes the subscription; with `allowallsubscribe: yes` the
  subscription is made again afterwards (a "ghost" subscription), but
  LSUB never lists subscriptions of nonexistent folders (only
  LIST (SUBSCRIBED) shows them, \\NonExistent): expected_snapshot() drops
  the spec's ghost subscriptions.
- Cyrus replaces 8-bit bytes in headers with 'X' by default
  (`munge8bit`): set to `no` here, or body hashes differ.
- INTERNALDATE comes back in +0000 (the instant is kept).

Logging: Cyrus only logs through syslog(3) and test machines have no
/dev/log; a preloaded shim (unpack.syslog_shim) writes syslog lines to
<root>/syslog. master's own stdout/stderr go to master.out."""
import os
import pwd
import subprocess

from . import unpack
from .imapwire import check
from .sandbox import password

DEBS = ["cyrus-common", "cyrus-imapd", "cyrus-pop3d",
        "sasl2-bin"]  # sasl2-bin: saslpasswd2 only
# linked by the unpacked binaries, or dlopen()ed (SASL plugins); none conflicts
LIBS = ["libsasl2-2", "libsasl2-modules", "libsasl2-modules-db", "libdb5.3",
        "libical3", "libxapian30", "libjansson4", "libicu72", "libpcre3",
        "libwrap0", "libcom-err2", "libxml2", "libsqlite3-0", "libpq5",
        "libldap-2.5-0", "libkrb5-3", "libssl3", "zlib1g"]
BINDIR = "usr/lib/cyrus/bin"
NEEDED = [BINDIR + "/master", BINDIR + "/imapd", BINDIR + "/pop3d", BINDIR + "/ctl_cyrusdb",
          "usr/sbin/saslpasswd2"]
RUN_AS = "mail"
REALM = "localhost"


def ensure_installed():
    """Root of the unpacked Cyrus (downloads and unpacks once; quick when
    cached). Raises unpack.Unavailable when the packages cannot be fetched."""
    root = unpack.ensure("cyrus", DEBS, LIBS)
    missing = unpack.missing_libraries(root, NEEDED)
    if missing:
        raise RuntimeError("cyrus: libraries still missing: %s" % missing)
    unpack.syslog_shim("cyrus")
    return root


class Cyrus(unpack.OldServer):
    kind = "cyrus"

    def __init__(self, root=None, users=("alice", "bob", "carol"), port=None,
                 unixhierarchysep=False, extra_conf="", pop3_port=None, sieve=False):
        super().__init__(root, users, port, pop3_port)
        if sieve:  # timsieved, Cyrus's ManageSieve, on port("sieve")
            from .sandbox import _free_ports
            self.ports["sieve"] = _free_ports(1)[0]
        self.unixhierarchysep = unixhierarchysep
        self.sep = "/" if unixhierarchysep else "."
        self.extra_conf = extra_conf
        self.log_path = self.path("syslog")
        self.install_root = None

    def _bin(self, name):
        return os.path.join(self.install_root, BINDIR, name)

    @property
    def conf_path(self):
        return self.path("imapd.conf")

    def _env(self):
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
               "LD_LIBRARY_PATH": unpack.lib_path(self.install_root),
               "FERRY_SYSLOG_FILE": self.log_path, "FERRY_NOFSYNC": "1"}
        shim = unpack.syslog_shim("cyrus")
        if shim:
            env["LD_PRELOAD"] = shim
        return env

    def _write_conf(self):
        for d in ("conf", "spool", "run", "conf/db", "conf/proc", "conf/socket",
                  "conf/log", "conf/msg", "conf/user", "conf/quota", "conf/lock",
                  "conf/sieve"):
            os.makedirs(self.path(d), exist_ok=True)
        conf = self.conf_path
        with open(conf, "w") as f:
            f.write(f"""# generated by ferrytest.cyrus
configdirectory: {self.path("conf")}
defaultpartition: default
partition-default: {self.path("spool")}
servername: {REALM}
cyrus_user: {RUN_AS}
cyrus_group: {RUN_AS}
admins: {self.master_user}
allowplaintext: yes
sasl_pwcheck_method: auxprop
sasl_auxprop_plugin: sasldb
sasl_sasldb_path: {self.path("sasldb2")}
sasl_mech_list: PLAIN LOGIN
unixhierarchysep: {"yes" if self.unixhierarchysep else "no"}
altnamespace: no
virtdomains: off
allowallsubscribe: yes
# keep 8-bit header bytes as they are (default: replaced by 'X')
munge8bit: no
reject8bit: no
syslog_prefix: cyrus-{os.path.basename(self.root)}
sievedir: {self.path("conf/sieve")}
""" + self.extra_conf + "\n")
        sieve = ""
        if "sieve" in self.ports:
            sieve = ('  sieve cmd="%s -C %s" listen="127.0.0.1:%d" prefork=1\n'
                     % (self._bin("timsieved"), conf, self.port("sieve")))
        with open(self.path("cyrus.conf"), "w") as f:
            f.write(f"""# generated by ferrytest.cyrus
START {{
  recover cmd="{self._bin("ctl_cyrusdb")} -C {conf} -r"
}}
SERVICES {{
  imap cmd="{self._bin("imapd")} -C {conf}" listen="127.0.0.1:{self.port()}" prefork=1
  pop3 cmd="{self._bin("pop3d")} -C {conf}" listen="127.0.0.1:{self.port("pop3")}" prefork=1
{sieve}}}
EVENTS {{
}}
""")

    def _write_sasldb(self):
        db = self.path("sasldb2")
        saslpasswd = os.path.join(self.install_root, "usr/sbin/saslpasswd2")
        creds = [(u, password(u)) for u in self.users]
        creds.append((self.master_user, self.master_password))
        for user, pw in creds:
            env = dict(self._env())
            env.pop("LD_PRELOAD", None)  # its syslog noise is not the server's
            r = subprocess.run([saslpasswd, "-f", db, "-p", "-c", "-u", REALM, user],
                               input=pw, text=True, capture_output=True, env=env)
            if r.returncode != 0:
                raise RuntimeError("saslpasswd2 %s: %s" % (user, r.stderr))

    def _chown_tree(self):
        pw = pwd.getpwnam(RUN_AS)
        os.chmod(self.root, 0o755)
        for d, dirs, files in os.walk(self.root):
            for n in [d] + [os.path.join(d, x) for x in dirs + files]:
                os.lchown(n, pw.pw_uid, pw.pw_gid)

    def start(self):
        if self.running():
            return self
        self.install_root = ensure_installed()
        self._write_conf()
        if not os.path.exists(self.path("sasldb2")):
            self._write_sasldb()
        self._chown_tree()
        self._spawn([self._bin("master"), "-C", self.conf_path, "-M", self.path("cyrus.conf"),
                     "-p", self.path("run", "master.pid"), "-D"],
                    self._env(), "master.out", user=RUN_AS)
        try:
            self._wait_greeting()
            self._create_users()
        except BaseException:
            self.stop()
            raise
        return self

    def _create_users(self):
        """Each user's INBOX (user.<name>), created by the admin; idempotent."""
        from . import imapwire
        conn = imapwire.connect("127.0.0.1", self.port(), self.master_user,
                                self.master_password)
        try:
            for user in self.users:
                typ, data = conn.create(imapwire.quote("user" + self.sep + user))
                if typ != "OK" and b"exists" not in b" ".join(d for d in data if d):
                    raise RuntimeError("cyrus: CREATE user %s: %s %r" % (user, typ, data))
        finally:
            conn.logout()

    def _master_login(self, user, timeout):
        from . import imapwire
        return imapwire.connect("127.0.0.1", self.port(), user, self.master_password,
                                self.master_user, authzid=True, timeout=timeout)

    def _keep_ghost(self, conn, name):
        check(conn.subscribe(self.wire_name(name)), "SUBSCRIBE (again) " + name)

    def seed(self, user, spec):
        spec = super().seed(user, spec)
        # the parents Cyrus created as real folders, with their UIDVALIDITY
        conn = self.imap(user)
        try:
            spec.cyrus_parents = {n: self._status(conn, n)["UIDVALIDITY"]
                                  for n in spec.noselect()}
        finally:
            conn.logout()
        return spec

    def expected_snapshot(self, spec):
        """corpus.expected_snapshot, with missing parents as Cyrus makes
        them: real, empty folders (spec as returned by seed())."""
        from .snapshot import Folder
        snap = super().expected_snapshot(spec)
        for name, uidvalidity in getattr(spec, "cyrus_parents", {}).items():
            snap.folders[name] = Folder(name, True, uidvalidity, 1)
        # kept by Cyrus, but LSUB (what snapshots and imapc read) omits
        # subscriptions of folders that do not exist
        snap.subscriptions -= set(spec.ghost_subscriptions)
        return snap

    def imapc_settings(self):
        """Cyrus: imapc_master_user works as is (admin proxy via authzid)."""
        s = super().imapc_settings()
        s.update({"imapc_master_user": self.master_user,
                  "imapc_password": self.master_password})
        return s
