"""The benchmark corpus: deterministic (random.Random(seed)), built on
ferrytest.corpus (same Message/Folder/Spec types, same message generator,
flag profiles and date ranges), with a realistic size mix:

  * most messages: a 2-20 KB text body (log-uniform);
  * ~4.2 %: one attachment of 100 KB - 2 MB on the wire (log-uniform);
  * 1 in 2,000 (at least one when n >= 200): an attachment of ~10 MB.

That averages ~42 KB a message: 20,000 messages are ~840 MB. 25 folders
with nesting (3 levels), a non-ASCII name, an '&' name, INBOX children,
flags and keywords, INTERNALDATEs over 2008-2025, ~8 % of each folder
expunged (UID gaps, UIDNEXT beyond the last message) and a distinct
UIDVALIDITY per folder."""
import datetime
import email.utils
import math
import random

from ferrytest import corpus as fc

# (name, share of the messages, profile, subscribed)
FOLDERS = [
    ("INBOX", .18, "inbox", True), ("Sent", .10, "sent", True),
    ("Drafts", .005, "drafts", True), ("Trash", .005, "trash", True),
    ("Junk", .02, "junk", False), ("Archive", .08, "archive", True),
    ("Archive/2015", .05, "archive", True), ("Archive/2016", .05, "archive", True),
    ("Archive/2017", .05, "archive", False), ("Archive/2018", .05, "archive", True),
    ("Projects", .02, "project", True), ("Projects/Alpha", .03, "project", True),
    ("Projects/Alpha/Specs", .03, "project", True), ("Projects/Beta", .03, "project", False),
    ("Projects/Beta/Reviews", .02, "project", True), ("Customers", .01, "plain", True),
    ("Customers/ACME", .04, "plain", True), ("Customers/Globex", .03, "plain", True),
    ("Lists", .005, "plain", True), ("Lists/dovecot", .06, "plain", True),
    ("Lists/debian-devel", .055, "plain", False), ("Entwürfe", .01, "drafts", True),
    ("アーカイブ", .03, "archive", True), ("Reports & Stats", .02, "plain", False),
    ("INBOX/Receipts", .02, "inbox", True),
]
assert len(FOLDERS) == 25 and abs(sum(f[1] for f in FOLDERS) - 1) < 1e-9

EXPUNGE = 0.08
ATTACH_P = 0.042
HUGE_EVERY = 2000
HUGE_WIRE = 10 * 10**6


def _loguniform(rng, lo, hi):
    return int(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _size_plan(rng, kind):
    """-> (text bytes, raw attachment bytes); wire size of base64 is ~4/3 raw."""
    if kind == "huge":
        return 3000, int(HUGE_WIRE * 0.74)
    if kind == "text":
        return _loguniform(rng, 2000, 20000), 0
    if rng.random() < ATTACH_P:
        return _loguniform(rng, 1000, 8000), int(_loguniform(rng, 100000, 2000000) * 0.74)
    return _loguniform(rng, 2000, 20000), 0


def make_folder(seed, name, count, profile, subscribed, uidvalidity,
                expunge=EXPUNGE, huge=(), mix="mixed"):
    """A ferrytest.corpus.Folder; `huge` = indexes of ~10 MB messages;
    mix="text": 2-20 KB text only (the lazy-latency folders)."""
    rng = random.Random("bench/%s/%s" % (seed, name))
    y0, y1, over = fc.PROFILES[profile]
    p = dict(fc.BASE_P, **over)
    t0 = int(datetime.datetime(y0, 1, 1, tzinfo=datetime.timezone.utc).timestamp())
    t1 = int(datetime.datetime(y1, 12, 31, tzinfo=datetime.timezone.utc).timestamp())
    dates = sorted(rng.randrange(t0, t1) for _ in range(count))
    for _ in range(count // 20):
        i, j = rng.randrange(count), rng.randrange(count)
        dates[i], dates[j] = dates[j], dates[i]
    folder = fc.Folder(name, uidvalidity, subscribed)
    huge = set(huge)
    for i in range(count):
        tz = rng.choice(fc.ZONES)
        flags = frozenset(f for f, pf in p.items() if rng.random() < pf)
        text, att = _size_plan(rng, "huge" if i in huge else mix)
        tag = "b%s.%x.%d" % (seed, uidvalidity, i + 1)
        body = fc.make_message(rng, tag, dates[i], tz, size=text, attachment=att)
        folder.messages.append(fc.Message(body, flags, dates[i], tz))
    if profile == "trash":
        gone = set(range(count))
    elif count > 1:
        k = expunge if isinstance(expunge, int) else int(count * expunge) + 1
        pool = [i for i in range(count - 1) if i not in huge]
        gone = set(rng.sample(pool, min(max(k - 1, 0), len(pool)))) | {count - 1}
    else:
        gone = set()
    for i in gone:
        folder.messages[i].expunged = True
    return folder


def plan(n, seed=1):
    """[(name, count, profile, subscribed, uidvalidity, huge indexes)] for
    about n surviving messages (counts include the expunged ones)."""
    rng = random.Random("bench/%s/plan" % seed)
    total = int(round(n / (1 - EXPUNGE)))
    validities = rng.sample(range(1000000, 2000000000), len(FOLDERS))
    out = []
    for (name, share, profile, sub), uv in zip(FOLDERS, validities):
        out.append([name, max(1, int(round(total * share))), profile, sub, uv, []])
    n_huge = total // HUGE_EVERY if total >= 200 else 0
    if n >= 200:
        n_huge = max(1, n_huge)
    big_folders = [f for f in out if f[2] not in ("trash", "drafts") and f[1] > 20]
    for k in range(n_huge):
        f = big_folders[k % len(big_folders)]
        f[5].append(rng.randrange(f[1] - 1))
    return [tuple(f) for f in out]


def folders(n, seed=1):
    """Generator of Folders (one at a time: bodies are large)."""
    for name, count, profile, sub, uv, huge in plan(n, seed):
        yield make_folder(seed, name, count, profile, sub, uv, huge=huge)


def text_folder(name, n, seed, uidvalidity, mix="text"):
    """n surviving 2-20 KB text messages (plus ~5 % expunged); mix="mixed":
    the corpus's realistic sizes instead."""
    count = n + n // 20
    return make_folder(seed, name, count, "plain", True, uidvalidity,
                       expunge=n // 20, mix=mix)


def small_folder(seed, name, count, uidvalidity, subscribed=True):
    """count ~1 KB text messages, cheap to make (the big first-login user's
    many-message folders: the count matters there, not the bytes); flags
    as in the inbox profile; the last one expunged (UIDNEXT > last UID + 1)."""
    rng = random.Random("bench/%s/%s/small" % (seed, name))
    t0 = int(datetime.datetime(2010, 1, 1, tzinfo=datetime.timezone.utc).timestamp())
    folder = fc.Folder(name, uidvalidity, subscribed)
    pad = "x" * 60 + "\r\n"
    for i in range(count):
        date = t0 + i * 3600 + rng.randrange(3600)
        flags = frozenset(f for f, p in (("\\Seen", .75), ("\\Flagged", .05),
                                         ("$Label1", .02)) if rng.random() < p)
        body = ("From: Bench <bench@example.org>\r\nTo: user@example.org\r\n"
                "Subject: %s message %d\r\nMessage-ID: <s%s.%x.%d@bench>\r\n"
                "Date: %s\r\n\r\n%s" % (name, i + 1, seed, uidvalidity, i + 1,
                                            email.utils.formatdate(date), pad * rng.randint(4, 24)))
        folder.messages.append(fc.Message(body.encode(), flags, date, 0))
    if count > 1:
        folder.messages[-1].expunged = True
    return folder
