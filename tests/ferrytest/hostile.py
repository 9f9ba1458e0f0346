"""A scripted IMAP server that plays a hostile old server, for faults a real
server cannot be made to produce. It says so in its greeting:

    * OK [CAPABILITY ...] ferry-hostile: SCRIPTED test server (scenario NAME), not a real IMAP server

    srv = HostileServer("names-slash").start()   # srv.port
    ...
    srv.stop()

It speaks just enough IMAP for Dovecot's imapc and ferryd's client (login,
CAPABILITY, ID, ENABLE, NAMESPACE, LIST/LSUB, STATUS, SELECT/EXAMINE,
FETCH/UID FETCH, SEARCH, NOOP, CLOSE/UNSELECT, LOGOUT). Scenarios:

  names-slash   separator "/": folders named ../X, a/../../X, /X, ~/X, X<NUL>Y,
                control characters, modified UTF-7 that decodes to "../"
  names-dot     the same names with separator "." (a "/" inside one level)
  deep          one folder 1,000 levels deep (and its parents)
  many          100,000 folders
  huge-literal  INBOX with one message whose RFC822.SIZE and BODY[] literal
                claim 1 TiB; the body is streamed up to STREAM_CAP bytes,
                then the server falls silent
  endless-line  INBOX with one message; the FETCH response is one line that
                never ends (STREAM_CAP bytes, then silence)
  short-size    INBOX with one large message (SHORT_BODY_SIZE bytes) whose
                RFC822.SIZE is under-reported (SHORT_ANNOUNCED); Small with
                one small message announced 10 bytes short; Other with one
                small, truthful message. FETCH answers FLAGS, INTERNALDATE,
                RFC822.SIZE, BODY[] and BODY[]<offset.length>
  identity      (not in SCENARIOS: test_identity.py) a server that honours
                the authorization identity of AUTHENTICATE PLAIN for the
                users in IDENTITY_HONOURED and ignores it for the others:
                their session is the authenticating identity's own mailbox
                (INBOX + "Admin-Payroll"); each user's own is INBOX +
                "Mine-<user>", every mailbox with its own UIDVALIDITY

Every name that would be a path escape contains ESCAPE_MARK, so a test can
look for it anywhere on the filesystem.
"""
import base64
import re
import socket
import threading
import zlib

ESCAPE_MARK = "ferry-escape"
STREAM_CAP = 256 << 20  # bytes sent for the 1 TiB literal / the endless line
TIB = 1 << 40
# short-size: the real body and the smaller size announced for it (both
# above ferry_big_message_size, so the body is fetched in ranges)
SHORT_BODY_SIZE = (5 << 20) + 4321
SHORT_ANNOUNCED = (5 << 20) // 2
SHORT_OTHER_BODY = (b"From: a@example.com\r\nTo: b@example.com\r\n"
                    b"Subject: truthful\r\nMessage-ID: <other-1@hostile>\r\n\r\nsmall body\r\n")


def short_big_body():
    head = (b"From: a@example.com\r\nTo: b@example.com\r\nSubject: under-reported\r\n"
            b"Message-ID: <big-1@hostile>\r\n\r\n")
    line = b"y" * 70 + b"\r\n"
    body = head + line * ((SHORT_BODY_SIZE - len(head)) // len(line) + 1)
    return body[:SHORT_BODY_SIZE - 2] + b"\r\n"
CAPS = b"IMAP4rev1 LITERAL+ SASL-IR ID ENABLE NAMESPACE UIDPLUS AUTH=PLAIN"


def _names_slash():
    m = ESCAPE_MARK
    return [
        "INBOX",
        "../%s-1" % m,
        "../../%s-2" % m,
        "a/../../%s-3" % m,
        "/%s-abs" % m,
        "~/%s-home" % m,
        "..",
        ".",
        "a/./b",
        "%s-nul\x00hidden" % m,
        "ctl-\x01\x07\x1b[2J-\x7f",
        "cr-\rlf-\n-%s" % m,
        "&AC4ALgAv-%s-mutf7" % m,  # modified UTF-7 of "../"
        "&AC8-%s-mutf7slash" % m,  # "/"
        "x" * 300,  # longer than NAME_MAX
    ]


SCENARIOS = ("names-slash", "names-dot", "deep", "many", "huge-literal", "endless-line",
             "short-size")
IDENTITY_HONOURED = frozenset(("id-ok1", "id-ok2"))


def _quote(name):
    """A mailbox name on the wire: quoted if it can be, else a literal."""
    raw = name.encode("utf-8", "surrogateescape") if isinstance(name, str) else name
    if any(c < 0x20 or c == 0x7f or c > 0x7e for c in raw) or b'"' in raw or b"\\" in raw:
        return b"{%d}\r\n%s" % (len(raw), raw)
    return b'"%s"' % raw


class HostileServer:
    def __init__(self, scenario, host="127.0.0.1"):
        assert scenario in SCENARIOS + ("identity",), scenario
        self.scenario = scenario
        self.sep = "." if scenario == "names-dot" else "/"
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.stopping = threading.Event()
        self.sessions = 0
        self.commands = []  # (scenario, command line) seen, for the tests
        self.streamed = 0  # bytes of literal / endless line sent
        self.threads = []
        self.local = threading.local()  # per session: whose mailbox it shows
        self.logins = []  # identity: (authorization id, whose mailbox it got)

    # ---- folders -------------------------------------------------------------
    def owner(self):
        return getattr(self.local, "owner", None) or ""

    def uidvalidity(self):
        if self.scenario != "identity":
            return 7
        return 1000 + zlib.crc32(self.owner().encode()) % 100000

    def _authenticate(self, raw_b64):
        """identity: AUTHENTICATE PLAIN authzid NUL authcid NUL password"""
        try:
            authzid, authcid, _ = base64.b64decode(raw_b64).decode().split("\0")
        except ValueError:
            return
        owner = authzid if authzid in IDENTITY_HONOURED else authcid
        self.local.owner = owner
        self.logins.append((authzid or authcid, owner))

    def folders(self):
        if self.scenario == "identity":
            owner = self.owner()
            if owner.startswith("id-"):
                return ["INBOX", "Mine-" + owner]
            return ["INBOX", "Admin-Payroll"]
        if self.scenario == "names-slash":
            return _names_slash()
        if self.scenario == "names-dot":  # "/" is then part of one level's name
            return _names_slash()
        if self.scenario == "deep":
            return ["INBOX"] + ["/".join(["d"] * k) for k in range(1, 1001)]
        if self.scenario == "many":
            return ["INBOX"] + ["f%06d" % i for i in range(100000)]
        if self.scenario == "short-size":
            return ["INBOX", "Other", "Small"]
        return ["INBOX"]

    def messages(self, box):
        if self.scenario == "short-size":
            return 1 if box in ("INBOX", "Other", "Small") else 0
        return 1 if self.scenario in ("huge-literal", "endless-line") and box == "INBOX" else 0

    # ---- lifecycle ----------------------------------------------------------------
    def start(self):
        t = threading.Thread(target=self._accept, daemon=True, name="hostile-" + self.scenario)
        t.start()
        self.threads.append(t)
        return self

    def stop(self):
        self.stopping.set()
        try:
            self.lsock.close()
        except OSError:
            pass

    def _accept(self):
        while not self.stopping.is_set():
            try:
                conn, _ = self.lsock.accept()
            except OSError:
                return
            self.sessions += 1
            t = threading.Thread(target=self._session, args=(conn,), daemon=True)
            t.start()

    # ---- one session ----------------------------------------------------------
    def _session(self, conn):
        conn.settimeout(120)
        f = conn.makefile("rb")
        try:
            conn.sendall(b"* OK [CAPABILITY %s] ferry-hostile: SCRIPTED test server "
                         b"(scenario %s), not a real IMAP server\r\n"
                         % (CAPS, self.scenario.encode()))
            selected = None
            while not self.stopping.is_set():
                line = f.readline(1 << 16)
                if not line:
                    return
                line = self._read_literals(conn, f, line)
                parts = line.rstrip(b"\r\n").split(b" ", 3)
                if len(parts) < 2:
                    conn.sendall(b"* BAD ferry-hostile: no command\r\n")
                    continue
                tag, cmd = parts[0], parts[1].upper()
                args = parts[2:]
                if cmd == b"UID" and args:
                    sub = args[0].upper()
                    rest = args[1:] if len(args) > 1 else []
                    cmd, args = b"UID " + sub, rest
                self.commands.append(line[:200])
                if not self._command(conn, f, tag, cmd, args, selected):
                    return
                if cmd in (b"SELECT", b"EXAMINE"):
                    selected = self._box_arg(args)
        except OSError:
            return
        finally:
            try:
                conn.close()
            except OSError:
                pass

    @staticmethod
    def _read_literals(conn, f, line):
        """Client literals ({N} or {N+}): read them into the line; a
        synchronizing one gets its continuation, as from a real server."""
        while True:
            s = line.rstrip(b"\r\n")
            if not s.endswith(b"}") or b"{" not in s:
                return line
            n = s[s.rindex(b"{") + 1:-1]
            sync = not n.endswith(b"+")
            n = n.rstrip(b"+")
            if not n.isdigit() or int(n) > 1 << 20:
                return line
            if sync:
                conn.sendall(b"+ go on\r\n")
            data = f.read(int(n))
            line = s + b"\r\n" + data + f.readline(1 << 16)

    @staticmethod
    def _box_arg(args):
        if not args:
            return None
        a = b" ".join(args).split(b" ")[0]
        return a.strip(b'"').decode("utf-8", "replace")

    def _command(self, conn, f, tag, cmd, args, selected):
        ok = tag + b" OK done\r\n"
        if cmd == b"CAPABILITY":
            conn.sendall(b"* CAPABILITY %s\r\n" % CAPS + ok)
        elif cmd == b"LOGIN":
            if args:
                self.local.owner = args[0].strip(b'"').decode("utf-8", "replace")
                self.logins.append((self.local.owner, self.local.owner))
            conn.sendall(tag + b" OK [CAPABILITY %s] Logged in (scripted)\r\n" % CAPS)
        elif cmd == b"AUTHENTICATE":
            if len(args) < 2:  # no initial response: ask for it
                conn.sendall(b"+ \r\n")
                resp = f.readline(1 << 16).strip()
            else:
                resp = args[1].split(b" ")[0]
            self._authenticate(resp)
            conn.sendall(tag + b" OK [CAPABILITY %s] Logged in (scripted)\r\n" % CAPS)
        elif cmd == b"ID":
            conn.sendall(b'* ID ("name" "ferry-hostile")\r\n' + ok)
        elif cmd == b"NAMESPACE":
            conn.sendall(b'* NAMESPACE (("" "%s")) NIL NIL\r\n' % self.sep.encode() + ok)
        elif cmd in (b"LIST", b"LSUB"):
            self._list(conn, tag, cmd, b" ".join(args))
        elif cmd == b"STATUS":
            box = self._box_arg(args)
            n = self.messages(box)
            conn.sendall(b"* STATUS %s (MESSAGES %d UIDNEXT %d UIDVALIDITY %d UNSEEN 0 RECENT 0)"
                         b"\r\n" % (_quote(box or "INBOX"), n, n + 1, self.uidvalidity()) + ok)
        elif cmd in (b"SELECT", b"EXAMINE"):
            box = self._box_arg(args)
            n = self.messages(box)
            conn.sendall(b"* FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft)\r\n"
                         b"* OK [PERMANENTFLAGS ()] x\r\n* %d EXISTS\r\n* 0 RECENT\r\n"
                         b"* OK [UIDVALIDITY %d] x\r\n* OK [UIDNEXT %d] x\r\n"
                         b"%s OK [READ-ONLY] selected\r\n" % (n, self.uidvalidity(), n + 1, tag))
        elif cmd in (b"FETCH", b"UID FETCH"):
            return self._fetch(conn, tag, b" ".join(args), selected)
        elif cmd in (b"SEARCH", b"UID SEARCH"):
            n = self.messages(selected)
            conn.sendall((b"* SEARCH 1\r\n" if n else b"* SEARCH\r\n") + ok)
        elif cmd == b"LOGOUT":
            conn.sendall(b"* BYE scripted\r\n" + ok)
            return False
        elif cmd in (b"NOOP", b"CHECK", b"CLOSE", b"UNSELECT", b"ENABLE", b"EXPUNGE",
                     b"SUBSCRIBE", b"UNSUBSCRIBE"):
            conn.sendall(ok)
        else:
            conn.sendall(tag + b" BAD ferry-hostile: not scripted\r\n")
        return True

    def _list(self, conn, tag, cmd, arg):
        if arg.endswith(b'""') and arg.count(b'"') == 4:  # LIST "" "": the separator
            conn.sendall(b'* LIST (\\Noselect) "%s" ""\r\n%s OK done\r\n'
                         % (self.sep.encode(), tag))
            return
        out = bytearray()
        sep = self.sep.encode()
        for name in self.folders():
            out += b"* %s () \"%s\" %s\r\n" % (cmd, sep, _quote(name))
            if len(out) > 1 << 16:
                conn.sendall(out)
                out.clear()
        conn.sendall(bytes(out) + tag + b" OK done\r\n")

    def _fetch(self, conn, tag, arg, selected):
        if not self.messages(selected):
            conn.sendall(tag + b" OK done\r\n")
            return True
        up = arg.upper()
        wants_body = b"BODY" in up or b"RFC822 " in up or up.endswith(b"RFC822)")
        if self.scenario == "short-size":
            return self._fetch_short(conn, tag, up, selected)
        if self.scenario == "huge-literal":
            if not wants_body:
                conn.sendall(b"* 1 FETCH (UID 1 FLAGS (\\Seen) RFC822.SIZE %d "
                             b'INTERNALDATE "01-Jan-2024 00:00:00 +0000")\r\n%s OK done\r\n'
                             % (TIB, tag))
                return True
            conn.sendall(b"* 1 FETCH (UID 1 BODY[] {%d}\r\n" % TIB)
            return self._stream(conn, b"x" * (1 << 20))
        # endless-line: the first FETCH answer never ends its line
        conn.sendall(b'* 1 FETCH (UID 1 FLAGS (\\Seen) X-FERRY-HOSTILE "')
        return self._stream(conn, b"a" * (1 << 20))

    def _fetch_short(self, conn, tag, up, selected):
        """UID 1 of the selected folder, with the items asked for; INBOX's
        RFC822.SIZE under-reported."""
        body = short_big_body() if selected == "INBOX" else SHORT_OTHER_BODY
        size = {"INBOX": SHORT_ANNOUNCED, "Small": len(body) - 10}.get(selected, len(body))
        out = b"* 1 FETCH (UID 1"
        if b"FLAGS" in up:
            out += b" FLAGS (\\Seen)"
        if b"RFC822.SIZE" in up:
            out += b" RFC822.SIZE %d" % size
        if b"INTERNALDATE" in up:
            out += b' INTERNALDATE "01-Jan-2024 00:00:00 +0000"'
        ranged = re.search(rb"BODY(?:\.PEEK)?\[\]<(\d+)\.(\d+)>", up)
        if ranged:
            off, n = int(ranged.group(1)), int(ranged.group(2))
            part = body[off:off + n]
            out += b" BODY[]<%d> {%d}\r\n%s" % (off, len(part), part)
        elif re.search(rb"BODY(?:\.PEEK)?\[\]|RFC822(?![.])", up):
            out += b" BODY[] {%d}\r\n%s" % (len(body), body)
        conn.sendall(out + b")\r\n" + tag + b" OK done\r\n")
        return True

    def _stream(self, conn, chunk):
        """Send chunk until STREAM_CAP (per session), then stay silent until
        the client hangs up (or the server is stopped)."""
        sent = 0
        try:
            while sent < STREAM_CAP and not self.stopping.is_set():
                conn.sendall(chunk)
                sent += len(chunk)
                self.streamed += len(chunk)
            conn.settimeout(1)
            while not self.stopping.is_set():
                try:
                    if not conn.recv(65536):
                        return False
                except socket.timeout:
                    continue
        except OSError:
            pass
        return False
