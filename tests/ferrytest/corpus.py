"""Deterministic mail corpus (random.Random(seed)) and seeding of OLD over
IMAP, so that OLD looks lived-in: UID gaps, UIDNEXT beyond the last message,
a distinct UIDVALIDITY per folder, all flags, keywords, dates over 15+ years,
non-ASCII and nested names, (un)subscribed folders.

Messages are CRLF throughout so RFC822.SIZE == len(body) and the hash of
BODY[] equals the hash of the appended bytes."""
import base64
import datetime
import email.utils
import hashlib
import random
from dataclasses import dataclass, field

from . import imapwire
from .imapwire import check, mailbox_arg
from .snapshot import uid_ranges

SYSTEM_FLAGS = ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")
KEYWORDS = ("$Forwarded", "Project-X", "$Junk", "$NotJunk", "$MDNSent", "$Label1")
# forced onto the first INBOX messages (never expunged): every spec covers all
FORCED = ([frozenset(), frozenset(SYSTEM_FLAGS), frozenset(("\\Seen",) + KEYWORDS)]
          + [frozenset([f]) for f in SYSTEM_FLAGS + KEYWORDS])
BASE_P = {"\\Seen": .75, "\\Answered": .15, "\\Flagged": .07, "\\Deleted": .02,
          "\\Draft": .005, "$Forwarded": .05, "$MDNSent": .02, "$Label1": .02,
          "Project-X": .02, "$NotJunk": .03}
# profile -> (first year, last year, flag probability overrides)
PROFILES = {
    "inbox": (2019, 2025, {"\\Seen": .6}),
    "sent": (2012, 2025, {"\\Seen": 1, "\\Answered": 0, "$NotJunk": 0}),
    "drafts": (2022, 2025, {"\\Draft": 1, "\\Answered": 0}),
    "junk": (2020, 2025, {"$Junk": 1, "$NotJunk": 0, "\\Seen": .3}),
    "archive": (2008, 2018, {}),
    "project": (2018, 2021, {"Project-X": .5}),
    "plain": (2010, 2025, {}),
    "trash": (2023, 2025, {}),  # every message expunged: empty, UIDNEXT > 1
}
ZONES = (-480, -300, 0, 60, 120, 330, 540)  # APPEND zones; the instant is compared
WORDS = ("the of and to in is that for on with as was at by from this have "
         "meeting report budget project server migration mailbox folder invoice "
         "schedule review draft release customer support quarterly update lunch "
         "Grüße Übersicht Straße Änderung 会議 報告 予定 確認 ok thanks please "
         "regards tomorrow deadline attached").split()
PEOPLE = ("Ann Example <ann@example.org>", "Bo Müller <bo@example.de>",
          "Chen Wei <chen@example.cn>", "Dana Smith <dana@example.com>",
          "山田太郎 <yamada@example.jp>")


@dataclass
class Message:
    body: bytes
    flags: frozenset  # system flags and keywords
    date: int  # INTERNALDATE, epoch seconds
    tz: int = 0  # zone (minutes) used on APPEND
    expunged: bool = False

    def sha256(self):
        return hashlib.sha256(self.body).hexdigest()


@dataclass
class Folder:
    name: str  # unicode, '/'-separated
    uidvalidity: int
    subscribed: bool = False
    messages: list = field(default_factory=list)  # APPEND order: UID = index + 1

    @property
    def uidnext(self):
        return len(self.messages) + 1

    def kept(self):
        return {i + 1: m for i, m in enumerate(self.messages) if not m.expunged}


@dataclass
class Spec:
    folders: list
    ghost_subscriptions: list = field(default_factory=list)  # folder deleted

    def folder(self, name):
        return next(f for f in self.folders if f.name == name)

    def count(self):
        return sum(len(f.kept()) for f in self.folders)

    def noselect(self):
        """Parents that only exist as path components (LIST \\Noselect)."""
        names = {f.name for f in self.folders}
        return sorted({n.rsplit("/", i)[0] for n in names for i in range(1, n.count("/") + 1)}
                      - names)


# ---- generation ------------------------------------------------------------

def _date_header(epoch, tz):
    zone = datetime.timezone(datetime.timedelta(minutes=tz))
    return email.utils.format_datetime(datetime.datetime.fromtimestamp(epoch, zone))


def _text(rng, size):
    lines, n = [], 0
    while n < size:
        line = " ".join(rng.choices(WORDS, k=rng.randint(4, 12)))
        lines.append(line)
        n += len(line.encode()) + 2
    return "\r\n".join(lines) + "\r\n"


def _b64_lines(raw):
    return base64.encodebytes(raw).replace(b"\n", b"\r\n")


def make_message(rng, tag, date, tz=0, size=None, attachment=0, empty=False):
    """One RFC 5322 message (bytes, CRLF). tag makes Message-ID unique;
    attachment = raw bytes of a base64 application/octet-stream part."""
    subject = " ".join(rng.choices(WORDS, k=rng.randint(2, 7)))
    if rng.random() < .15 or empty:
        subject = "=?UTF-8?B?%s?=" % base64.b64encode(subject.encode()).decode()
    head = ("From: %s\r\nTo: %s\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: <%s@ferry.test>\r\n"
            "MIME-Version: 1.0\r\n" % (rng.choice(PEOPLE), rng.choice(PEOPLE), subject,
                                       _date_header(date, tz), tag)).encode()
    if empty:
        return head + b"\r\n"
    size = size or max(200, min(40000, int(rng.lognormvariate(7.4, 0.8))))
    text = _text(rng, size).encode()
    if not attachment:
        return (head + b"Content-Type: text/plain; charset=utf-8\r\n"
                b"Content-Transfer-Encoding: 8bit\r\n\r\n" + text)
    b = "ferry-%s" % tag.replace(".", "-")
    return (head + b'Content-Type: multipart/mixed; boundary="%s"\r\n\r\n'
            b"--%s\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: 8bit\r\n\r\n%s"
            b'--%s\r\nContent-Type: application/octet-stream; name="data.bin"\r\n'
            b"Content-Transfer-Encoding: base64\r\n\r\n%s--%s--\r\n"
            % (b.encode(), b.encode(), text, b.encode(),
               _b64_lines(rng.randbytes(attachment)), b.encode()))


def simple_message(tag, seed=0, size=None):
    """A plain message for tests that need one (e.g. LMTP delivery)."""
    date = int(datetime.datetime(2024, 6, 1, tzinfo=datetime.timezone.utc).timestamp())
    return make_message(random.Random("%s/%s" % (seed, tag)), tag, date, size=size)


def _folder(seed, name, count, profile, subscribed, uidvalidity,
            expunge=0.08, attach=0.03, special=()):
    """special: (kind, index) pairs, kind "empty" | "big:<raw bytes>" | "dup"
    (same bytes as the message before); these are never expunged."""
    rng = random.Random("%s/%s" % (seed, name))
    y0, y1, over = PROFILES[profile]
    p = dict(BASE_P, **over)
    t0 = int(datetime.datetime(y0, 1, 1, tzinfo=datetime.timezone.utc).timestamp())
    t1 = int(datetime.datetime(y1, 12, 31, tzinfo=datetime.timezone.utc).timestamp())
    dates = sorted(rng.randrange(t0, t1) for _ in range(count))
    for _ in range(count // 20):  # mail does not arrive in perfect date order
        i, j = rng.randrange(count), rng.randrange(count)
        dates[i], dates[j] = dates[j], dates[i]

    def tag(i):  # unique Message-ID per (seed, folder, UID)
        return "%s.%x.%d" % (seed, uidvalidity, i + 1)

    folder = Folder(name, uidvalidity, subscribed)
    for i in range(count):
        tz = rng.choice(ZONES)
        flags = frozenset(f for f, pf in p.items() if rng.random() < pf)
        att = rng.randint(10000, 150000) if rng.random() < attach else 0
        folder.messages.append(Message(make_message(rng, tag(i), dates[i], tz, attachment=att),
                                       flags, dates[i], tz))
    protected = set()
    if name == "INBOX":
        for i, flags in enumerate(FORCED[:count]):
            folder.messages[i].flags = flags
            protected.add(i)
    for kind, i in special:
        m = folder.messages[i]
        if kind == "empty":
            m.body = make_message(rng, tag(i), m.date, m.tz, empty=True)
        elif kind.startswith("big:"):
            m.body = make_message(rng, tag(i), m.date, m.tz, attachment=int(kind[4:]))
        elif kind == "dup":
            m.body = folder.messages[i - 1].body
            protected.add(i - 1)
        protected.add(i)
    # expunge: a ratio, or an exact number; the last message is always one
    # of them, so UIDNEXT > last UID + 1
    others = [i for i in range(count - 1) if i not in protected]
    k = expunge if isinstance(expunge, int) else int((len(others) + 1) * expunge)
    if profile == "trash":
        gone = set(range(count))
    elif k > 0 and count - 1 not in protected:
        gone = set(rng.sample(others, min(k - 1, len(others)))) | {count - 1}
    else:
        gone = set()
    for i in gone:
        folder.messages[i].expunged = True
    return folder


def _spec(seed, table, special, ghosts):
    rng = random.Random(seed)
    validities = rng.sample(range(1000000, 2000000000), len(table))
    return Spec([_folder(seed, name, count, profile, sub, uv, special=special.get(name, ()))
                 for (name, count, profile, sub), uv in zip(table, validities)],
                list(ghosts))


BIG = 15 * 2 ** 20 + 300000  # raw bytes: about 20.6 MiB once base64-encoded

FULL = [("INBOX", 750, "inbox", True), ("Sent", 450, "sent", True),
        ("Drafts", 25, "drafts", True), ("Trash", 40, "trash", True),
        ("Junk", 120, "junk", False), ("Archive", 950, "archive", True),
        ("Projects", 80, "project", True), ("Projects/2019", 60, "project", False),
        ("Projects/2019/Q1", 150, "project", True),
        ("Projects/2019/Q2", 150, "project", False),
        ("Projects/2020/Q3", 120, "project", False),  # parent Projects/2020 is \Noselect
        ("Entwürfe", 30, "drafts", True), ("アーカイブ", 300, "archive", True),
        ("Empty", 0, "plain", False), ("Reports & Stats", 200, "plain", False),
        ("INBOX/Sub", 60, "inbox", True)]

SMALL = [("INBOX", 70, "inbox", True), ("Sent", 40, "sent", True),
         ("Entwürfe", 25, "drafts", True), ("Projects", 15, "project", False),
         ("Projects/2019/Q1", 35, "project", True),  # parent Projects/2019 is \Noselect
         ("アーカイブ", 30, "archive", True), ("Empty", 0, "plain", False),
         ("Trash", 6, "trash", True)]


def full_spec(seed=1):
    """>= 3,000 messages in 16 folders, one ~20 MiB message."""
    return _spec(seed, FULL, {"INBOX": [("empty", 20), ("big:%d" % BIG, 400)],
                              "Archive": [("dup", 500)]}, ["Old Archive"])


def small_spec(seed=1, big=700000):
    """About 200 messages in 8 folders; one ~1 MiB message (chunked fetches)."""
    return _spec(seed, SMALL, {"INBOX": [("empty", 20), ("big:%d" % big, 30)]},
                 ["Old Archive"])


def folder_spec(name="Bulk", n=3000, seed=1, gaps=None, subscribed=True):
    """One folder with n surviving messages plus `gaps` expunged ones (and
    an empty INBOX, which every server has)."""
    gaps = n // 20 if gaps is None else gaps
    rng = random.Random("%s/%s/uv" % (seed, name))
    uv_inbox, uv = rng.sample(range(1000000, 2000000000), 2)
    folder = _folder(seed, name, n + gaps, "plain", subscribed, uv, expunge=gaps, attach=0)
    if name == "INBOX":
        return Spec([folder])
    return Spec([Folder("INBOX", uv_inbox), folder])


# ---- seeding ---------------------------------------------------------------

def append_message(conn, wire_name, m):
    """APPEND one Message; returns the UID from APPENDUID."""
    flags = "(%s)" % " ".join(sorted(m.flags)) if m.flags else None
    data = check(conn.append(wire_name, flags, imapwire.format_date(m.date, m.tz), m.body),
                 "APPEND")
    return int(data[-1].split(b"APPENDUID ", 1)[1].split()[1].rstrip(b"]"))


def seed_old(sandbox, user, spec, sep="."):
    """Fill OLD for a fresh user; raises if anything comes out unexpected."""
    seed(sandbox, "old", user, spec, sep)


def seed(sandbox, inst, user, spec, sep=None):
    """Create spec's folders for user on inst ('/' names -> sep, default:
    '.' on old, '/' on new) and APPEND/EXPUNGE/SUBSCRIBE as the spec says."""
    sep = sep or ("." if inst == "old" else "/")

    def vname(name):
        return name.replace("/", sep)
    creates = [vname(f.name) for f in spec.folders if f.name != "INBOX"]
    creates += [vname(g) for g in spec.ghost_subscriptions]
    if creates:
        sandbox.doveadm(inst, "mailbox", "create", "-u", user, *creates)
    for f in spec.folders:  # while still empty, so Dovecot accepts it
        sandbox.doveadm(inst, "mailbox", "update", "-u", user,
                        "--uid-validity", str(f.uidvalidity), vname(f.name))
    conn = sandbox.imap(inst, user)
    try:
        for f in spec.folders:
            _fill(conn, f, sep)
        for name in [f.name for f in spec.folders if f.subscribed] + spec.ghost_subscriptions:
            check(conn.subscribe(mailbox_arg(name, sep)), "SUBSCRIBE " + name)
    finally:
        conn.logout()
    for g in spec.ghost_subscriptions:  # deleting keeps the subscription
        sandbox.doveadm(inst, "mailbox", "delete", "-u", user, vname(g))


def _fill(conn, f, sep):
    wire = mailbox_arg(f.name, sep)
    for i, m in enumerate(f.messages):
        uid = append_message(conn, wire, m)
        if uid != i + 1:
            raise AssertionError("%s: APPEND got UID %d, expected %d" % (f.name, uid, i + 1))
    gone = uid_ranges(i + 1 for i, m in enumerate(f.messages) if m.expunged)
    if gone:
        check(conn.select(wire), "SELECT " + f.name)
        check(conn.uid("STORE", gone, "+FLAGS.SILENT", "(\\Deleted)"), "STORE")
        check(conn.uid("EXPUNGE", gone), "UID EXPUNGE")
        check(conn.unselect(), "UNSELECT")  # CLOSE would expunge kept \\Deleted mail
    status = check(conn.status(wire, "(UIDVALIDITY UIDNEXT MESSAGES)"), "STATUS")[0].decode()
    want = "MESSAGES %d UIDNEXT %d UIDVALIDITY %d" % (len(f.kept()), f.uidnext, f.uidvalidity)
    if want not in status:
        raise AssertionError("%s: STATUS %s, expected %s" % (f.name, status, want))


def expected_snapshot(spec):
    """The Snapshot a correct server holding `spec` must produce."""
    from .snapshot import Folder as SFolder, Message as SMessage, Snapshot
    snap = Snapshot()
    for f in spec.folders:
        msgs = {uid: SMessage(m.flags, m.date, len(m.body), m.sha256())
                for uid, m in f.kept().items()}
        snap.folders[f.name] = SFolder(f.name, True, f.uidvalidity, f.uidnext, msgs)
    for name in spec.noselect():
        snap.folders[name] = SFolder(name, False)
    snap.subscriptions = {f.name for f in spec.folders if f.subscribed}
    snap.subscriptions |= set(spec.ghost_subscriptions)
    return snap
