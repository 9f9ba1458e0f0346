"""IMAP wire helpers imaplib lacks: modified UTF-7 (RFC 3501 5.1.3),
quoting, LIST/LSUB parsing, INTERNALDATE formatting/parsing, login."""
import base64
import datetime
import imaplib
import re

MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()


def mutf7_encode(name):
    out, run = [], []

    def flush():
        if run:
            raw = "".join(run).encode("utf-16-be")
            b64 = base64.b64encode(raw).decode().rstrip("=").replace("/", ",")
            out.append("&" + b64 + "-")
            run.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    flush()
    return "".join(out)


def mutf7_decode(wire):
    out, i = [], 0
    while i < len(wire):
        if wire[i] != "&":
            out.append(wire[i])
            i += 1
            continue
        end = wire.index("-", i)
        b64 = wire[i + 1:end].replace(",", "/")
        if not b64:
            out.append("&")
        else:
            b64 += "=" * (-len(b64) % 4)
            out.append(base64.b64decode(b64).decode("utf-16-be"))
        i = end + 1
    return "".join(out)


def quote(s):
    """Quoted string for an argument: Python 3's imaplib sends args verbatim."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def mailbox_arg(name, sep="/"):
    """Unicode '/'-separated name -> quoted mUTF-7 wire argument."""
    return quote(mutf7_encode(name.replace("/", sep)))


_TOKEN = re.compile(rb'\(([^)]*)\)\s+(NIL|"(?:[^"\\]|\\.)*")\s*(.*)$', re.S)


def _unquote(b):
    if b.startswith(b'"'):
        return re.sub(rb"\\(.)", rb"\1", b[1:-1])
    return b


def parse_list(item):
    """One LIST/LSUB data item -> (flags set, delimiter or None, wire name)."""
    literal = None
    if isinstance(item, tuple):  # name sent as a literal
        item, literal = item[0], item[1]
    m = _TOKEN.match(item)
    if not m:
        raise ValueError("unparsable LIST item: %r" % (item,))
    flags = {f.decode() for f in m.group(1).split()}
    delim = None if m.group(2) == b"NIL" else _unquote(m.group(2)).decode()
    name = literal if literal is not None else _unquote(m.group(3).strip())
    return flags, delim, name.decode()


def format_date(epoch, tz_minutes=0):
    """Quoted INTERNALDATE for APPEND, in a chosen zone (locale independent)."""
    tz = datetime.timezone(datetime.timedelta(minutes=tz_minutes))
    d = datetime.datetime.fromtimestamp(epoch, tz)
    sign = "+" if tz_minutes >= 0 else "-"
    off = abs(tz_minutes)
    return '"%02d-%s-%04d %02d:%02d:%02d %s%02d%02d"' % (
        d.day, MONTHS[d.month - 1], d.year, d.hour, d.minute, d.second,
        sign, off // 60, off % 60)


_DATE = re.compile(r"\s*(\d+)-(\w{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)")


def parse_date(text):
    """INTERNALDATE text -> epoch seconds (an instant; the zone is dropped)."""
    m = _DATE.match(text)
    if not m:
        raise ValueError("bad INTERNALDATE %r" % text)
    day, mon, year, hh, mm, ss, sign, oh, om = m.groups()
    off = (int(oh) * 60 + int(om)) * (1 if sign == "+" else -1)
    tz = datetime.timezone(datetime.timedelta(minutes=off))
    d = datetime.datetime(int(year), MONTHS.index(mon) + 1, int(day),
                          int(hh), int(mm), int(ss), tzinfo=tz)
    return int(d.timestamp())


def connect(host, port, user, password, master=None, authzid=False, timeout=60):
    """Logged-in imaplib connection. With master: LOGIN 'user*master', or
    AUTHENTICATE PLAIN with user as authorization identity if authzid."""
    conn = imaplib.IMAP4(host, port, timeout=timeout)
    if master and authzid:
        blob = "%s\0%s\0%s" % (user, master, password)
        conn.authenticate("PLAIN", lambda _: blob.encode())
    elif master:
        conn.login("%s*%s" % (user, master), password)
    else:
        conn.login(user, password)
    return conn


def check(resp, what="IMAP command"):
    typ, data = resp
    if typ != "OK":
        raise imaplib.IMAP4.error("%s failed: %s %r" % (what, typ, data))
    return data
