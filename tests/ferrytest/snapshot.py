"""What a client sees over IMAP, independent of Dovecot internals and of the
plugin: folders, UIDVALIDITY/UIDNEXT, per-UID flags, keywords, INTERNALDATE,
size and body hash, and subscriptions. On NEW, EXAMINE triggers the lazy
pull; that is intended (the snapshot is what a client would get)."""
import hashlib
import re
from dataclasses import dataclass, field

from .imapwire import check, mutf7_decode, parse_list, parse_date, quote

CHUNK = 4 << 20  # bodies above this are fetched in partial chunks


@dataclass
class Message:
    flags: frozenset  # system flags and keywords, without \Recent
    internaldate: int  # epoch seconds
    size: int
    sha256: str = None  # None when bodies were not fetched


@dataclass
class Folder:
    name: str  # unicode, '/'-separated
    selectable: bool = True
    uidvalidity: int = None
    uidnext: int = None
    messages: dict = field(default_factory=dict)  # uid -> Message
    error: str = None  # EXAMINE answered NO/BAD


@dataclass
class Snapshot:
    folders: dict = field(default_factory=dict)  # name -> Folder
    subscriptions: set = field(default_factory=set)

    def count(self):
        return sum(len(f.messages) for f in self.folders.values())


def snapshot(sandbox, inst, user, master=False, bodies=True, chunk=CHUNK, timeout=300):
    """Snapshot of user's mailboxes on instance 'old' or 'new'."""
    conn = sandbox.imap(inst, user, master=master, timeout=timeout)
    try:
        return take(conn, bodies, chunk)
    finally:
        conn.logout()


def take(conn, bodies=True, chunk=CHUNK):
    snap = Snapshot()
    for wire, name, selectable in _list(conn, "LIST"):
        folder = snap.folders[name] = Folder(name, selectable)
        if selectable:
            _examine(conn, wire, folder, bodies, chunk)
    snap.subscriptions = {name for _, name, _ in _list(conn, "LSUB")}
    return snap


def _list(conn, cmd):
    data = check(conn.list('""', "*") if cmd == "LIST" else conn.lsub('""', "*"), cmd)
    for item in data:
        if item is None:  # imaplib's way of saying "no untagged replies"
            continue
        flags, delim, wire = parse_list(item)
        name = mutf7_decode(wire)
        if delim and delim != "/":
            name = name.replace(delim, "/")
        lower = {f.lower() for f in flags}
        yield wire, name, not ({"\\noselect", "\\nonexistent"} & lower)


_FETCH = {k: re.compile(v) for k, v in {
    "uid": rb"UID (\d+)", "flags": rb"FLAGS \(([^)]*)\)",
    "date": rb'INTERNALDATE "([^"]+)"', "size": rb"RFC822\.SIZE (\d+)"}.items()}


def _examine(conn, wire, folder, bodies, chunk):
    typ, data = conn.select(quote(wire), readonly=True)
    if typ != "OK":
        folder.error = "%s %s" % (typ, b" ".join(d for d in data if d).decode(errors="replace"))
        return
    folder.uidvalidity = int(conn.untagged_responses["UIDVALIDITY"][0])
    folder.uidnext = int(conn.untagged_responses["UIDNEXT"][0])
    if int(data[0]) == 0:
        return
    for item in check(conn.uid("FETCH", "1:*", "(UID FLAGS INTERNALDATE RFC822.SIZE)")):
        if isinstance(item, tuple):
            item = item[0]
        if not isinstance(item, bytes) or b"UID " not in item:
            continue
        g = {k: r.search(item).group(1) for k, r in _FETCH.items()}
        flags = frozenset(f for f in g["flags"].decode().split() if f.lower() != "\\recent")
        folder.messages[int(g["uid"])] = Message(
            flags, parse_date(g["date"].decode()), int(g["size"]))
    if bodies:
        _hash_bodies(conn, folder.messages, chunk)


def _hash_bodies(conn, messages, chunk):
    small, batch, batch_bytes = [], [], 0
    for uid, m in sorted(messages.items()):
        if m.size > chunk:
            m.sha256 = _hash_chunked(conn, uid, m.size, chunk)
            continue
        batch.append(uid)
        batch_bytes += m.size
        if batch_bytes >= chunk or len(batch) >= 500:
            small.append(batch)
            batch, batch_bytes = [], 0
    if batch:
        small.append(batch)
    for uids in small:
        data = check(conn.uid("FETCH", ",".join(map(str, uids)), "(UID BODY.PEEK[])"))
        for item in data:
            if isinstance(item, tuple):
                uid = int(_FETCH["uid"].search(item[0]).group(1))
                messages[uid].sha256 = hashlib.sha256(item[1]).hexdigest()


def _hash_chunked(conn, uid, size, chunk):
    h, off = hashlib.sha256(), 0
    while off < size:
        data = check(conn.uid("FETCH", str(uid), "(UID BODY.PEEK[]<%d.%d>)" % (off, chunk)))
        part = next(item[1] for item in data if isinstance(item, tuple))
        if not part:
            break
        h.update(part)
        off += len(part)
    return h.hexdigest()


# ---- comparison -------------------------------------------------------------

def uid_ranges(uids):
    """[1,2,3,7] -> '1:3,7' (for readable diffs and IMAP UID sets)."""
    out, uids = [], sorted(uids)
    i = 0
    while i < len(uids):
        j = i
        while j + 1 < len(uids) and uids[j + 1] == uids[j] + 1:
            j += 1
        out.append(str(uids[i]) if i == j else "%d:%d" % (uids[i], uids[j]))
        i = j + 1
    return ",".join(out)


def _split(flags):
    system = {f for f in flags if f.startswith("\\")}
    return system, set(flags) - system


def _message_diffs(old, new):
    out = []
    (so, ko), (sn, kn) = _split(old.flags), _split(new.flags)
    if so != sn:
        out.append("flags %s != %s" % (sorted(so), sorted(sn)))
    if ko != kn:
        out.append("keywords %s != %s" % (sorted(ko), sorted(kn)))
    if old.internaldate != new.internaldate:
        out.append("internaldate %d != %d" % (old.internaldate, new.internaldate))
    if old.size != new.size:
        out.append("size %d != %d" % (old.size, new.size))
    if old.sha256 and new.sha256 and old.sha256 != new.sha256:
        out.append("body hash differs")
    return out


def compare(old, new, limit=20):
    """Human-readable differences between two snapshots ([] = equal).
    At most `limit` per-message lines per folder."""
    diffs = []
    for name in sorted(set(old.folders) - set(new.folders)):
        diffs.append("folder %r missing" % name)
    for name in sorted(set(new.folders) - set(old.folders)):
        diffs.append("folder %r unexpected" % name)
    for name in sorted(set(old.folders) & set(new.folders)):
        diffs += ["folder %r: %s" % (name, d)
                  for d in _folder_diffs(old.folders[name], new.folders[name], limit)]
    for name in sorted(old.subscriptions - new.subscriptions):
        diffs.append("subscription %r missing" % name)
    for name in sorted(new.subscriptions - old.subscriptions):
        diffs.append("subscription %r unexpected" % name)
    return diffs


def _folder_diffs(o, n, limit):
    if o.selectable != n.selectable:
        return ["selectable %s != %s" % (o.selectable, n.selectable)]
    if o.error or n.error:
        return ["error %r != %r" % (o.error, n.error)] if o.error != n.error else []
    out = []
    for attr in ("uidvalidity", "uidnext"):
        if getattr(o, attr) != getattr(n, attr):
            out.append("%s %s != %s" % (attr, getattr(o, attr), getattr(n, attr)))
    missing = set(o.messages) - set(n.messages)
    extra = set(n.messages) - set(o.messages)
    if missing:
        out.append("%d UIDs missing: %s" % (len(missing), uid_ranges(missing)[:200]))
    if extra:
        out.append("%d UIDs unexpected: %s" % (len(extra), uid_ranges(extra)[:200]))
    per_msg = []
    for uid in sorted(set(o.messages) & set(n.messages)):
        per_msg += ["uid %d: %s" % (uid, d)
                    for d in _message_diffs(o.messages[uid], n.messages[uid])]
    out += per_msg[:limit]
    if len(per_msg) > limit:
        out.append("... and %d more message differences" % (len(per_msg) - limit))
    return out


def duplicates(new, old=None):
    """{folder: extra copies} of bodies appearing more often than they should:
    without old, any repeated hash; with old, copies beyond old's count of
    that hash in that folder (new local mail is not counted)."""
    result = {}
    for name, f in new.folders.items():
        if old is not None and name not in old.folders:
            continue
        counts = _hash_counts(f)
        ref = _hash_counts(old.folders[name]) if old is not None else None
        extra = 0
        for h, c in counts.items():
            if ref is None:
                extra += c - 1
            elif h in ref:
                extra += max(0, c - ref[h])
        if extra:
            result[name] = extra
    return result


def _hash_counts(folder):
    counts = {}
    for m in folder.messages.values():
        if m.sha256:
            counts[m.sha256] = counts.get(m.sha256, 0) + 1
    return counts
