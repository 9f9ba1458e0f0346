"""Courier-IMAP 5.0 (Debian 12's courier-imap and courier-pop, unpacked, never
installed) as an OLD server on 127.0.0.1, for tests and for Ferry's imapc.

    with Courier() as co:
        spec = co.seed("alice", corpus.small_spec())
        assert compare(co.expected_snapshot(spec), co.snapshot("alice")) == []

Real Courier code serves every connection: couriertcpd accepts, imaplogin
speaks the pre-login protocol (CAPABILITY, LOGIN, AUTHENTICATE PLAIN) and
execs imapd with the user's Maildir; on port("pop3") a second couriertcpd
runs courierpop3login (USER/PASS) -> courierpop3d the same way (log
pop3d.log). What is not Courier's is the password
database: libcourierauth asks authdaemond over a socket whose path is
compiled in (/run/courier/authdaemon/socket), and authdaemond itself only
reads /etc/courier/*. Instead of touching /etc or /run of the machine:
- couriertcpd runs in a private mount namespace (`unshare -m`) in which
  <root>/run is bind-mounted on /run, then drops to the `mail` user
  (`setpriv`): only Courier's own processes see that /run;
- the socket is answered by `python3 -m ferrytest.courier authdaemon ROOT`
  (AuthDaemon below, running as `mail` too), which speaks authdaemond's
  protocol ("AUTH <n>\\nimap\\nlogin\\nUSER\\nPASS\\n" -> "UID=..\\nGID=..
  \\nHOME=..\\nADDRESS=..\\nMAILDIR=..\\n.\\n" or "FAIL\\n").

Users: sandbox.password(user), Maildir at <root>/home/<user>/Maildir,
all owned by `mail`.

STARTTLS (Courier(starttls=True)): as Debian ships it, AUTH=PLAIN only
after STARTTLS (IMAP_CAPABILITY / IMAP_CAPABILITY_TLS); imaplogin starts
couriertls, which looks up its daemon user `courier`: the private mount
namespace also gets a passwd/group with `courier` as the `mail` ids (the
machine's files are untouched). The certificate is made by
sandbox.make_test_cert (tls_ca(): the CA to verify it with).

Master identity: Courier has no master user and no SASL proxy: imaplogin
drops the authzid of AUTHENTICATE PLAIN and authenticates the authcid
(checked: "\\0ferry-master\\0pw" with authzid "alice" reaches the auth
daemon as user ferry-master). What Courier sites do instead is a backend
that accepts a master password for a special login name; the harness's
backend does that: LOGIN "alice*ferry-master" "master-secret" (or
AUTHENTICATE PLAIN with authcid "alice*ferry-master") logs in as alice.
For Dovecot's imapc: imapc_user = %u*ferry-master, imapc_password =
master-secret, imapc_master_user empty (imapc_settings()).

Folder names: namespace "INBOX." with '.', folders "INBOX.Sent",
"INBOX.Projects.2019.Q1"; snapshots name them "Sent", "Projects/2019/Q1"
like the Dovecot OLD (OldServer.snapshot_name). Missing parents are
\\Noselect as on Dovecot.

Courier differences seed()/snapshots account for:
- UIDVALIDITY is the time of creation minus 10^9 (folders created in the
  same second share it): seed() writes the spec's value into the new,
  still empty folder's courierimapuiddb ("1 <uidvalidity> 1"), the on-disk
  counterpart of `doveadm mailbox update --uid-validity`.
- No UNSELECT; UID EXPUNGE works.
- LSUB "*" also returns the unsubscribed parents of subscribed folders,
  flagged \\Noselect (e.g. "INBOX" when only INBOX.Sent is subscribed):
  those are not counted as subscriptions.
- DELETE keeps the subscription (a ghost, listed by LSUB like Dovecot).
- Defaults that would change mail are off: IMAP_EMPTYTRASH (Debian's
  default "Trash:7" purges Trash at login), IMAP_MOVE_EXPUNGE_TO_TRASH.
- Keywords need IMAP_KEYWORDS=1 (stored in courierimapkeywords/).
- INTERNALDATE is the file's mtime, returned in +0000.

POP3 (courierpop3d), unlike IMAP:
- UIDL is "UID<n>-<v>" from the maildir's courierpop3dsizelist, a counter
  of its own: n from 1 for each message a POP3 session sees first, v the
  time the file was made; not the IMAP UID/UIDVALIDITY (courierimapuiddb).
- Message order is the file names' (seconds, then the rest as a string:
  unpadded microseconds "M100846" sort before "M70171"), not UID order
  (mail APPENDed across such a rollover is listed out of UID order).
- A client that has not sent UTF8 (RFC 6856) gets each message with UTF-8
  headers wrapped in a "Cannot display Unicode content" notice.
- RETR sets \\Seen (renames the file to :2,S).
test_pop3_uidl.py checks the first two, and sends UTF8 for the third."""
import json
import os
import pwd
import socket
import sys

from . import unpack
from .sandbox import password, wait_until

DEBS = ["courier-base", "courier-imap", "courier-pop", "courier-authlib"]
LIBS = ["libcourier-unicode4", "libidn12", "libgamin0", "libgdbm6", "libltdl7",
        "libgnutls30", "libpcre3", "libcrypt1"]
NEEDED = ["usr/sbin/couriertcpd", "usr/lib/courier/courier/imaplogin", "usr/bin/imapd",
          "usr/lib/courier/courier/courierpop3login", "usr/lib/courier/courier/courierpop3d"]
RUN_AS = "mail"
SOCKET = "/run/courier/authdaemon/socket"  # compiled into libcourierauth
TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MASTER_SEPARATOR = "*"

# what /etc/courier/imapd would set (Debian defaults), minus what alters mail
IMAPD_ENV = {
    "IMAP_CAPABILITY": "IMAP4rev1 UIDPLUS CHILDREN NAMESPACE THREAD=ORDEREDSUBJECT "
                       "THREAD=REFERENCES SORT QUOTA IDLE AUTH=PLAIN",
    "IMAP_KEYWORDS": "1", "IMAP_ACL": "1", "IMAP_PROXY": "0",
    "IMAP_IDLE_TIMEOUT": "60", "IMAP_MAILBOX_SANITY_CHECK": "1",
    "IMAP_DISABLETHREADSORT": "0", "IMAP_CHECK_ALL_FOLDERS": "0",
    "IMAP_OBSOLETE_CLIENT": "0", "IMAP_UMASK": "022", "IMAP_ULIMITD": "131072",
    "IMAP_USELOCKS": "1", "IMAP_ENHANCEDIDLE": "0", "IMAP_TRASHFOLDERNAME": "Trash",
    "IMAP_EMPTYTRASH": "", "IMAP_MOVE_EXPUNGE_TO_TRASH": "0",
}
# what /etc/courier/pop3d would set (Debian defaults): USER/PASS, no SASL
# advertised, no TLS, no proxy
POP3D_ENV = {"POP3AUTH": "", "POP3AUTH_TLS": "", "POP3_PROXY": "0",
             "MIME_UNICODE_MESSAGE_TYPE": "message/global"}


def ensure_installed():
    """Root of the unpacked Courier (downloads and unpacks once; quick when
    cached). Raises unpack.Unavailable when the packages cannot be fetched."""
    root = unpack.ensure("courier", DEBS, LIBS)
    missing = unpack.missing_libraries(root, NEEDED)
    if missing:
        raise RuntimeError("courier: libraries still missing: %s" % missing)
    return root


class Courier(unpack.OldServer):
    kind = "courier"
    sep = "."

    def __init__(self, root=None, users=("alice", "bob", "carol"), port=None, env=None,
                 pop3_port=None, starttls=False):
        super().__init__(root, users, port, pop3_port)
        self.env_extra = dict(env or {})
        self.starttls = starttls
        self.log_path = self.path("imapd.log")  # couriertcpd/imaplogin/imapd stderr
        self.authdaemon_log = self.path("authdaemon.log")
        self.install_root = None

    def home(self, user):
        return self.path("home", user)

    def maildir(self, user):
        return os.path.join(self.home(user), "Maildir")

    def folder_dir(self, user, name):
        """On-disk Maildir++ folder of a spec name (UTF-8 names on disk)."""
        if name == "INBOX":
            return self.maildir(user)
        return os.path.join(self.maildir(user), "." + name.replace("/", "."))

    def _setup(self):
        mail = pwd.getpwnam(RUN_AS)
        os.chmod(self.root, 0o755)
        os.makedirs(self.path("run", "courier", "authdaemon"), exist_ok=True)
        for user in self.users:
            for sub in ("cur", "new", "tmp"):
                os.makedirs(os.path.join(self.maildir(user), sub), exist_ok=True)
        with open(self.path("authdaemon.json"), "w") as f:
            json.dump({"socket": self.path("run", "courier", "authdaemon", "socket"),
                       "uid": mail.pw_uid, "gid": mail.pw_gid,
                       "master_user": self.master_user,
                       "master_password": self.master_password,
                       "users": {u: {"password": password(u), "home": self.home(u),
                                     "maildir": self.maildir(u)} for u in self.users}},
                      f, indent=1)
        for d, dirs, files in os.walk(self.root):
            for n in [d] + [os.path.join(d, x) for x in dirs + files]:
                os.lchown(n, mail.pw_uid, mail.pw_gid)

    def tls_ca(self):
        return self.path("tls", "ca.pem")

    def _setup_tls(self):
        from .sandbox import make_test_cert
        d = self.path("tls")
        os.makedirs(d, exist_ok=True)
        if not os.path.exists(os.path.join(d, "server.pem")):
            make_test_cert(d, "ca", "server", ["DNS:localhost", "IP:127.0.0.1"])
        with open(os.path.join(d, "server-both.pem"), "w") as f:
            for part in ("server.key", "server.pem"):
                with open(os.path.join(d, part)) as src:
                    f.write(src.read())
        mail = pwd.getpwnam(RUN_AS)
        with open("/etc/passwd") as src, open(self.path("tls", "passwd"), "w") as f:
            f.write(src.read() + "courier:x:%d:%d::/nonexistent:/usr/sbin/nologin\n"
                    % (mail.pw_uid, mail.pw_gid))
        with open("/etc/group") as src, open(self.path("tls", "group"), "w") as f:
            f.write(src.read() + "courier:x:%d:\n" % mail.pw_gid)
        caps = IMAPD_ENV["IMAP_CAPABILITY"].replace(" AUTH=PLAIN", "")
        self.env_extra.update({
            "IMAP_CAPABILITY": caps, "IMAP_CAPABILITY_TLS": caps + " AUTH=PLAIN",
            "IMAP_STARTTLS": "YES", "IMAP_TLS_REQUIRED": "0",
            "COURIERTLS": os.path.join(self.install_root, "usr/bin/couriertls"),
            "TLS_CERTFILE": os.path.join(d, "server-both.pem"), "TLS_VERIFYPEER": "NONE",
            "TLS_CACHEFILE": os.path.join(d, "cache"), "TLS_CACHESIZE": "0"})

    def start(self):
        if self.running():
            return self
        self.install_root = ensure_installed()
        if self.starttls:
            self._setup_tls()
        self._setup()
        sock = self.path("run", "courier", "authdaemon", "socket")
        if os.path.exists(sock):
            os.unlink(sock)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
               "PYTHONPATH": TESTS_DIR, "PYTHONDONTWRITEBYTECODE": "1"}
        self._spawn([sys.executable, "-m", "ferrytest.courier", "authdaemon", self.root],
                    env, "authdaemon.out", user=RUN_AS)
        try:
            wait_until(lambda: os.path.exists(sock) or self._died(), 10,
                       "courier auth daemon socket %s" % sock)
            self._died(raise_=True)
            self._start_tcpd()
            self._wait_greeting()
        except BaseException:
            self.stop()
            raise
        return self

    def _died(self, raise_=False):
        from .sandbox import SandboxError
        dead = [p for p in self._procs if p.poll() is not None]
        if dead and raise_:
            with open(self.path("authdaemon.out"), errors="replace") as f:
                raise SandboxError("courier: auth daemon exited: %s" % f.read()[-2000:])
        return bool(dead)

    def _start_tcpd(self):
        """One couriertcpd per protocol: imaplogin -> imapd on the IMAP
        port, courierpop3login -> courierpop3d on the POP3 port (log
        pop3d.log), as /usr/lib/courier/{imapd,pop3d} would start them."""
        r = self.install_root
        libexec = os.path.join(r, "usr/lib/courier/courier")
        self._spawn_tcpd(self.port("imap"), IMAPD_ENV,
                         [os.path.join(libexec, "imaplogin"), os.path.join(r, "usr/bin/imapd")],
                         "imapd.log")
        self._spawn_tcpd(self.port("pop3"), POP3D_ENV,
                         [os.path.join(libexec, "courierpop3login"),
                          os.path.join(libexec, "courierpop3d")], "pop3d.log")

    def _spawn_tcpd(self, port, env_defaults, programs, out_name):
        r = self.install_root
        mail = pwd.getpwnam(RUN_AS)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
               "LD_LIBRARY_PATH": unpack.lib_path(r)}
        env.update(env_defaults)
        env.update(self.env_extra)
        tcpd = [os.path.join(r, "usr/sbin/couriertcpd"), "-address=127.0.0.1",
                "-maxprocs=100", "-maxperip=100", "-nodnslookup", "-noidentlookup",
                str(port)] + programs + ["Maildir"]
        # root only for the mounts; the same PID then execs couriertcpd as mail
        etc = ""
        if self.starttls:
            etc = ('mount --bind "%s" /etc/passwd && mount --bind "%s" /etc/group && '
                   % (self.path("tls", "passwd"), self.path("tls", "group")))
        script = ('mount --bind "$1" /run && %sshift && exec setpriv --reuid=%d --regid=%d '
                  '--clear-groups -- "$@"' % (etc, mail.pw_uid, mail.pw_gid))
        self._spawn(["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                     "sh", self.path("run")] + tcpd, env, out_name)

    def _master_login(self, user, timeout):
        from . import imapwire
        return imapwire.connect("127.0.0.1", self.port(),
                                user + MASTER_SEPARATOR + self.master_user,
                                self.master_password, timeout=timeout)

    def _lsub_counts(self, flags):
        return "\\noselect" not in {f.lower() for f in flags}

    def _set_uidvalidity(self, conn, user, folder):
        """Write the spec's UIDVALIDITY into the new folder's uid db."""
        path = os.path.join(self.folder_dir(user, folder.name), "courierimapuiddb")
        try:
            with open(path) as f:
                head = f.readline().split()
        except FileNotFoundError:
            head = ["1", "0", "1"]
        if head[0] != "1" or head[2] != "1":
            raise AssertionError("%s: %s is not new (%r)" % (folder.name, path, head))
        mail = pwd.getpwnam(RUN_AS)
        with open(path + ".ferry", "w") as f:
            f.write("1 %d 1\n" % folder.uidvalidity)
        os.chown(path + ".ferry", mail.pw_uid, mail.pw_gid)
        os.rename(path + ".ferry", path)
        return super()._set_uidvalidity(conn, user, folder)

    def imapc_settings(self):
        """Courier: no authzid, so the master login name goes in imapc_user."""
        s = super().imapc_settings()
        s.update({"imapc_user": "%u" + MASTER_SEPARATOR + self.master_user,
                  "imapc_master_user": "", "imapc_password": self.master_password})
        return s


# ---- the authdaemond stand-in ------------------------------------------------

class AuthDaemon:
    """Answers libcourierauth on a unix socket, one request per connection:
        [KEY=VALUE\\n...] AUTH <n>\\n<service>\\n<type>\\n<n-bytes data>
        [KEY=VALUE\\n...] PRE . <service> <user>\\n
    type "login": data is "user\\npassword\\n". Reply: the account as
    KEY=VALUE lines ended by ".\\n", or "FAIL\\n"."""

    def __init__(self, root):
        with open(os.path.join(root, "authdaemon.json")) as f:
            self.conf = json.load(f)
        self.log = open(os.path.join(root, "authdaemon.log"), "a", buffering=1)

    def account(self, name):
        u = self.conf["users"].get(name)
        if u is None:
            return None
        return ("UID=%d\nGID=%d\nHOME=%s\nADDRESS=%s\nNAME=\nMAILDIR=%s\nOPTIONS=\n.\n"
                % (self.conf["uid"], self.conf["gid"], u["home"], name, u["maildir"]))

    def login(self, name, pw):
        master = MASTER_SEPARATOR + self.conf["master_user"]
        if name.endswith(master):
            name = name[:-len(master)]
            ok = pw == self.conf["master_password"]
        else:
            ok = name in self.conf["users"] and pw == self.conf["users"][name]["password"]
        return self.account(name) if ok else None

    @staticmethod
    def _read(conn):
        data = b""
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                return data
            data += chunk
            lines = data.split(b"\n")
            cmd_i = next((i for i, l in enumerate(lines[:-1]) if b"=" not in l), None)
            if cmd_i is None:
                continue
            cmd = lines[cmd_i]
            if not cmd.startswith(b"AUTH "):
                return data
            head = b"\n".join(lines[:cmd_i + 1]) + b"\n"
            if len(data) - len(head) >= int(cmd.split()[1]):
                return data

    def handle(self, conn):
        lines = self._read(conn).decode("utf-8", "replace").split("\n")
        i = next((i for i, l in enumerate(lines) if "=" not in l), len(lines))
        what, args = (lines[i], lines[i + 1:]) if i < len(lines) else ("", [])
        reply = "FAIL\n"
        if what.startswith("PRE "):
            parts = what.split()
            reply = (self.account(parts[3]) if len(parts) > 3 else None) or "FAIL\n"
        elif what.startswith("AUTH ") and len(args) >= 4 and args[1] == "login":
            what = "AUTH %s login %s" % (args[0], args[2])
            reply = self.login(args[2], args[3]) or "FAIL\n"
        self.log.write("%s -> %s\n" % (what, "FAIL" if reply == "FAIL\n" else "OK"))
        conn.sendall(reply.encode())

    def serve(self):
        path = self.conf["socket"]
        if os.path.exists(path):
            os.unlink(path)
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(path + ".new")
        os.chmod(path + ".new", 0o777)
        srv.listen(64)
        os.rename(path + ".new", path)  # appears only once it accepts
        while True:
            conn, _ = srv.accept()
            with conn:
                conn.settimeout(10)
                try:
                    self.handle(conn)
                except (OSError, ValueError, IndexError) as e:
                    self.log.write("error: %r\n" % e)


def main(argv):
    if len(argv) == 2 and argv[0] == "authdaemon":
        AuthDaemon(argv[1]).serve()
        return 0
    print("usage: python3 -m ferrytest.courier authdaemon ROOT", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
