"""Routing checks shared by the cut-over tests: the shipped routing conf
files with a test's database filled in, where a login is served (the
separator a client sees), where a message went (Postfix's log, the
maildirs), and NEW's userdb answer for ferry_phase."""
import os
import re
import socket

from .imapwire import check
from .sandbox import REPO

DOMAIN = "example.test"


def state_db(root):
    """An empty ferryd state database as Postfix's unprivileged daemons can
    read it: group postfix, directory 2770, file 0660 (SQLite gives its
    -wal/-shm files the same mode). Returns (its directory, its path)."""
    import grp
    pf_gid = grp.getgrnam("postfix").gr_gid
    fd_dir = os.path.join(root, "ferryd")
    os.makedirs(fd_dir)
    os.chown(fd_dir, 0, pf_gid)
    os.chmod(fd_dir, 0o2770)
    db = os.path.join(fd_dir, "ferryd.db")
    open(db, "w").close()
    os.chown(db, 0, pf_gid)
    os.chmod(db, 0o660)
    return fd_dir, db


def sql_conf(root, db):
    """conf/dovecot-sql.conf.ext with the test's database path."""
    with open(os.path.join(REPO, "conf", "dovecot-sql.conf.ext")) as f:
        text = f.read()
    text, n = re.subn(r"(?m)^connect = .*$", "connect = %s" % db, text)
    assert n == 1
    path = os.path.join(root, "dovecot-sql.conf.ext")
    with open(path, "w") as f:
        f.write(text)
    return path


def transport_cf(root, db, domain=DOMAIN):
    """conf/postfix/transport.sqlite.cf with the database and test domain."""
    with open(os.path.join(REPO, "conf", "postfix", "transport.sqlite.cf")) as f:
        text = f.read()
    text = re.sub(r"(?m)^dbpath = .*$", "dbpath = %s" % db, text)
    text = re.sub(r"(?m)^domain = .*$", "domain = %s" % domain, text)
    path = os.path.join(root, "transport.sqlite.cf")
    with open(path, "w") as f:
        f.write(text)
    return path


def separator(sb, user):
    """Hierarchy separator the login on NEW's IMAP port sees: '.' = served
    by OLD through the proxy, '/' = served by NEW."""
    conn = sb.imap("new", user)
    try:
        data = check(conn.list('""', '""'), "LIST")
        return data[0].decode().split('"')[1]
    finally:
        conn.logout()


def message(tag):
    return ("From: sender@example.org\r\nTo: %s\r\nSubject: %s\r\nMessage-ID: <%s@ferry.test>\r\n"
            "Date: Sat, 01 Jun 2024 10:00:00 +0000\r\n\r\nbody of %s\r\n" % (tag, tag, tag, tag))


def send(pf, user, tag, domain=DOMAIN):
    # one sender per message, as in real traffic: Postfix's queue manager
    # reuses its last resolution of the same (sender, recipient) for 30 s
    # (resolve_clnt.c); ferryd's --settle covers that window, not the test
    return pf.send("%s@%s" % (user, domain), message(tag), sender="%s@example.org" % tag)


def message_ids(sb, inst, user, folder="INBOX"):
    """Message-IDs in a folder, read on inst directly (master login)."""
    conn = sb.imap(inst, user, master=True)
    try:
        typ, _ = conn.select(folder, readonly=True)
        if typ != "OK":
            return set()
        data = check(conn.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"), "FETCH")
        out = set()
        for item in data:
            if isinstance(item, tuple):
                m = re.search(rb"<([^@>]+)@ferry\.test>", item[1])
                if m:
                    out.add(m.group(1).decode())
        return out
    finally:
        conn.logout()


def on_disk(sb, inst, user, tag):
    """Is the message in user's maildir on inst? Read from the files, so
    that looking does not make NEW's plugin pull anything."""
    needle = ("<%s@ferry.test>" % tag).encode()
    top = os.path.join(sb.home(inst, user), "Maildir")
    for d, _, files in os.walk(top):
        if os.path.basename(d) not in ("cur", "new"):
            continue
        for name in files:
            with open(os.path.join(d, name), "rb") as f:
                if needle in f.read(4096):
                    return True
    return False


def relays(pf, qids, sb):
    """{qid: 'old'|'new'} from Postfix's log (which LMTP port got it)."""
    port = {sb.port("old", "lmtp"): "old", sb.port("new", "lmtp"): "new"}
    out = {}
    for qid, relay in pf.wait_delivered(qids).items():
        out[qid] = port[int(relay.rsplit(":", 1)[1])]
    return out


def userdb_phase(sb, user):
    """NEW's userdb answer for ferry_phase, from its auth-userdb socket
    (the lookup the plugin's processes get; no doveadm, no plugin)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(os.path.join(sb.base_dir("new"), "auth-userdb"))
        s.sendall(b"VERSION\t1\t0\nUSER\t1\t%s\tservice=imap\n" % user.encode())
        buf = b""
        while not re.search(rb"(?m)^(USER|NOTFOUND|FAIL)\t1", buf):
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
    for line in buf.decode().splitlines():
        if line.startswith("USER\t1\t"):
            fields = dict(f.split("=", 1) for f in line.split("\t")[3:] if "=" in f)
            return fields.get("ferry_phase")
    raise AssertionError("userdb lookup of %s: %r" % (user, buf))
