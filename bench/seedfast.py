"""Bulk seeding of OLD faster than one imaplib APPEND per round trip:
APPENDs pipelined with LITERAL+ on a raw socket (a window of commands in
flight), UIDs checked from APPENDUID; then the expunges (UID gaps), the
subscriptions, and a STATUS check per folder. The result is checked
against ferrytest.snapshot by bench.py (seed_check)."""
import hashlib
import re
import socket

from ferrytest import imapwire
from ferrytest.sandbox import MASTER_PASSWORD, MASTER_USER
from ferrytest.snapshot import Folder as SFolder, Message as SMessage, Snapshot, uid_ranges

WINDOW_BYTES = 8 << 20
WINDOW_CMDS = 256
TAGGED = re.compile(rb"^(t\d+) (OK|NO|BAD)(.*)$")


class RawIMAP:
    """Minimal pipelining IMAP client (no literals in responses expected)."""

    def __init__(self, port, user, timeout=120):
        self.s = socket.create_connection(("127.0.0.1", port), timeout)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.r = self.s.makefile("rb")
        if not self.r.readline().startswith(b"* OK"):
            raise RuntimeError("no greeting")
        self.n = 0
        self.cmd(b'LOGIN "%s*%s" "%s"' % (user.encode(), MASTER_USER.encode(),
                                           MASTER_PASSWORD.encode()))

    def tag(self):
        self.n += 1
        return b"t%d" % self.n

    def read_until(self, tag):
        untagged = []
        while True:
            line = self.r.readline()
            if not line:
                raise RuntimeError("connection closed")
            m = TAGGED.match(line.rstrip(b"\r\n"))
            if m and m.group(1) == tag:
                if m.group(2) != b"OK":
                    raise RuntimeError("%s: %s" % (tag, line))
                return m.group(3), untagged
            untagged.append(line)

    def cmd(self, text):
        t = self.tag()
        self.s.sendall(t + b" " + text + b"\r\n")
        return self.read_until(t)

    def close(self):
        try:
            self.cmd(b"LOGOUT")
        except Exception:
            pass
        self.s.close()


def append_all(raw, wire, messages):
    """Pipelined APPEND of Messages into one folder; returns their UIDs."""
    pending, uids = [], []
    buf, nbytes = [], 0

    def flush():
        nonlocal buf, nbytes
        raw.s.sendall(b"".join(buf))
        buf, nbytes = [], 0
        for t in pending:
            text, _ = raw.read_until(t)
            uids.append(int(text.split(b"APPENDUID ", 1)[1].split()[1].rstrip(b"]")))
        pending.clear()

    for m in messages:
        t = raw.tag()
        flags = (" (%s)" % " ".join(sorted(m.flags))) if m.flags else ""
        head = "%s APPEND %s%s %s {%d+}\r\n" % (
            t.decode(), wire, flags, imapwire.format_date(m.date, m.tz), len(m.body))
        buf += [head.encode(), m.body, b"\r\n"]
        nbytes += len(m.body)
        pending.append(t)
        if nbytes >= WINDOW_BYTES or len(pending) >= WINDOW_CMDS:
            flush()
    if pending:
        flush()
    return uids


def seed_folder(raw, folder, sep="."):
    """APPEND, expunge, check STATUS; returns the expected snapshot Folder
    (bodies reduced to size + sha256 so they can be dropped)."""
    wire = imapwire.mailbox_arg(folder.name, sep)
    uids = append_all(raw, wire, folder.messages)
    if uids != list(range(1, len(folder.messages) + 1)):
        raise AssertionError("%s: APPEND UIDs %s..." % (folder.name, uids[:5]))
    gone = uid_ranges(i + 1 for i, m in enumerate(folder.messages) if m.expunged)
    if gone:
        raw.cmd(b"SELECT " + wire.encode())
        raw.cmd(b"UID STORE %s +FLAGS.SILENT (\\Deleted)" % gone.encode())
        raw.cmd(b"UID EXPUNGE " + gone.encode())
        raw.cmd(b"UNSELECT")
    if folder.subscribed:
        raw.cmd(b"SUBSCRIBE " + wire.encode())
    _, lines = raw.cmd(b"STATUS %s (UIDVALIDITY UIDNEXT MESSAGES)" % wire.encode())
    kept = folder.kept()
    want = "MESSAGES %d UIDNEXT %d UIDVALIDITY %d" % (len(kept), folder.uidnext,
                                                       folder.uidvalidity)
    if folder.uidvalidity and want not in b"".join(lines).decode():
        raise AssertionError("%s: STATUS %s, expected %s" % (folder.name, lines, want))
    msgs = {uid: SMessage(m.flags, m.date, len(m.body), hashlib.sha256(m.body).hexdigest())
            for uid, m in kept.items()}
    return SFolder(folder.name, True, folder.uidvalidity, folder.uidnext, msgs)


def seed_user(sb, user, folders, sep="."):
    """Seed OLD's user with an iterable of Folders (generated lazily);
    UIDVALIDITY is set per folder with doveadm while it is empty. Returns
    (expected Snapshot, bytes, messages)."""
    folders = list(folders) if not hasattr(folders, "__next__") else folders
    snap = Snapshot()
    total_bytes = total_msgs = 0
    raw = RawIMAP(sb.port("old"), user)
    try:
        for f in folders:
            vname = f.name.replace("/", sep)
            if f.name != "INBOX":
                sb.doveadm("old", "mailbox", "create", "-u", user, vname)
            if f.uidvalidity:
                sb.doveadm("old", "mailbox", "update", "-u", user,
                           "--uid-validity", str(f.uidvalidity), vname)
            sf = seed_folder(raw, f, sep)
            snap.folders[f.name] = sf
            if f.subscribed:
                snap.subscriptions.add(f.name)
            total_msgs += len(sf.messages)
            total_bytes += sum(m.size for m in sf.messages.values())
    finally:
        raw.close()
    # parents that only exist as path components
    names = set(snap.folders)
    for n in list(names):
        parts = n.split("/")
        for i in range(1, len(parts)):
            p = "/".join(parts[:i])
            if p not in names and p not in snap.folders:
                snap.folders[p] = SFolder(p, False)
    return snap, total_bytes, total_msgs


def write_maildir(sb, user, folders, sep="."):
    """Many small messages fast: the message files written straight into
    OLD's Maildir (flags in the file names, INTERNALDATE as mtime), then
    indexed by OLD itself (doveadm mailbox status) before anything is
    measured. For folders whose count matters, not their exact UIDs (the
    big first-login user); only \\Seen and \\Flagged, no keywords.
    Returns (bytes, messages)."""
    import os
    import pwd
    mail = pwd.getpwnam("mail")
    root = os.path.join(sb.home("old", user), "Maildir")
    total_bytes = total_msgs = 0
    letters = {"\\Seen": "S", "\\Flagged": "F"}
    for f in folders:
        vname = f.name.replace("/", sep)
        sb.doveadm("old", "mailbox", "create", "-u", user, vname)
        if f.uidvalidity:
            sb.doveadm("old", "mailbox", "update", "-u", user,
                       "--uid-validity", str(f.uidvalidity), vname)
        cur = os.path.join(root, "." + imapwire.mutf7_encode(vname), "cur")
        if not os.path.isdir(cur):
            raise RuntimeError("no maildir for %s at %s" % (f.name, cur))
        for i, m in enumerate(f.messages):
            if m.expunged:
                continue
            flags = "".join(sorted(letters[x] for x in m.flags if x in letters))
            path = os.path.join(cur, "%d.M%dP0.bench,S=%d:2,%s" % (
                m.date, i + 1, len(m.body), flags))
            with open(path, "wb") as out:
                out.write(m.body)
            os.utime(path, (m.date, m.date))
            os.chown(path, mail.pw_uid, mail.pw_gid)
            total_bytes += len(m.body)
            total_msgs += 1
        sb.doveadm("old", "mailbox", "status", "-u", user, "messages", vname)
    return total_bytes, total_msgs
