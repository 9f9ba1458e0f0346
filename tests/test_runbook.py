"""docs/runbook.md, followed literally, end to end: the shipped conf/ files
(conf/ferry.conf, conf/ferryd.conf, conf/dovecot-sql.conf.ext,
conf/postfix/transport.sqlite.cf) with only hosts, ports, file paths and
secrets edited, and default settings. Real OLD and NEW Dovecot, a real
Postfix (private instance) routing mail by ferryd's state database, real
ferryd and ferryctl.

The one other edit: conf/ferryd.conf's `user = ferry` becomes
`allow_root = yes` (the suite runs as root and this machine has no ferry
account). NEW also gets what any NEW server has: special-use folders
(Dovecot's 15-mailboxes.conf), and the site's folder rules in ferry's
plugin block (an exclusion and a rename rule, docs/settings.md).

Users: wave pilot (alice, bob) and wave rest (carol, dave, erin, frank);
every mailbox has "Sent Items" (-> Sent, special use), Junk (excluded),
Projects.Alpha (renamed to Work/Alpha) and Archive.2023 (separator '.' on
OLD, '/' on NEW)."""
import os
import re
import signal
import subprocess
import tempfile
import threading

import pytest

from ferrytest import postfix
from ferrytest.faultproxy import Fault, FaultProxy
from ferrytest.ferryd import TOKEN, Ferryd
from ferrytest.imapwire import check
from ferrytest.logs import peak_sessions
from ferrytest.routing import (DOMAIN, message, message_ids, on_disk, relays, send,
                               separator, sql_conf, state_db, transport_cf, userdb_phase)
from ferrytest.sandbox import (BUILD_DIR, MASTER_PASSWORD, MASTER_USER, REPO, Sandbox,
                               _free_ports, wait_until)

NOT_UNDER_SANITIZERS = ("the docs' commands on the shipped defaults, mostly waiting out the"
                        " 35 s settle delays; the cut-over and rollback code it runs is"
                        " test_cutover's (ferryctl cutover and rollback) and test_rollback's, run there")
WHY_NO_POSTFIX = postfix.available()
pytestmark = pytest.mark.skipif(WHY_NO_POSTFIX is not None, reason=str(WHY_NO_POSTFIX))

PILOT = ["alice", "bob"]
REST = ["carol", "dave", "erin", "frank"]
USERS = PILOT + REST
# OLD's folder -> NEW's (None: excluded) and how many messages it starts with
FOLDERS = {"INBOX": ("INBOX", 4), "Sent Items": ("Sent", 2), "Junk": (None, 2),
           "Projects.Alpha": ("Work/Alpha", 2), "Archive.2023": ("Archive/2023", 2)}
NEW_EXTRA = r"""auth_username_format = %Ln
namespace inbox {
  mailbox Sent {
    special_use = \Sent
  }
  mailbox Trash {
    special_use = \Trash
  }
}
plugin {
  ferry_exclude = Junk
  ferry_rename = ^Projects/(.*)$ => Work/\1
}
"""
MAX_PER_HOST = 2  # conf/ferryd.conf's default, asserted on OLD's log


def ferryd_conf(fd, sb, secrets):
    """conf/ferryd.conf with this machine's hosts, ports, paths and secrets."""
    with open(os.path.join(REPO, "conf", "ferryd.conf")) as f:
        text = f.read()
    edits = {
        "listen": "127.0.0.1:%d" % fd.port,
        "user": None,
        "api_token_file": fd.token_file,
        "state_db": fd.db_path,
        "doveadm": "127.0.0.1:%d" % sb.doveadm_http_port,
        "doveadm_api_key_file": fd.key_file,
        "log_file": fd.log_path,
        "secret_key_file": secrets["secret.key"],
        "new_imap": "127.0.0.1:%d" % sb.port("new"),
        "old_master_user": MASTER_USER,
        "old_master_password_file": secrets["master.pw"],
        "new_master_user": MASTER_USER,
        "new_master_password_file": secrets["master.pw"],
    }
    for key, value in edits.items():
        line = re.compile(r"(?m)^#?%s = .*$" % key)
        assert line.search(text), key
        text = line.sub("allow_root = yes" if value is None else "%s = %s" % (key, value),
                        text, count=1)
    with open(fd.conf_path, "w") as f:
        f.write(text)


@pytest.fixture(scope="module")
def env(request):
    root = tempfile.mkdtemp(prefix="ferry-runbook-")
    os.chmod(root, 0o755)
    p = _free_ports(6)
    ports = {"old": {"imap": p[0], "pop3": p[1], "lmtp": p[2]},
             "new": {"imap": p[3], "pop3": p[4], "lmtp": p[5]}}
    fd_dir, db = state_db(root)
    # alice's old-server connection goes through a proxy that can cut it
    # mid-rollback (the one scripted fault: OLD going away mid-APPEND)
    proxy = FaultProxy(ports["old"]["imap"]).start()
    sb = Sandbox(root=root, users=USERS, ports=ports, doveadm_http=True,
                 new_sql_conf=sql_conf(root, db), old_extra="auth_username_format = %Ln\n",
                 new_extra=NEW_EXTRA + "imapc_cmd_timeout = 30s\n",
                 new_userdb_extra={"alice": "userdb_imapc_port=%d" % proxy.port})
    fd = pf = None
    failed_before = request.session.testsfailed
    try:
        sb.start()
        secrets = {}
        for name, text in (("secret.key", "runbook-secret-key-material-0123456789abcdef"),
                           ("master.pw", MASTER_PASSWORD)):
            secrets[name] = os.path.join(fd_dir, name)
            with open(secrets[name], "w") as f:
                f.write(text + "\n")
            os.chmod(secrets[name], 0o600)
        fd = Ferryd(sb)
        assert fd.db_path == db
        ferryd_conf(fd, sb, secrets)
        fd.start()
        pf = postfix.Postfix(root, DOMAIN, transport_cf(root, db)).start()
        yield sb, fd, pf, proxy
    finally:
        if pf is not None:
            pf.stop()
        if fd is not None and fd.alive():
            fd.stop()
        sb.stop()
        proxy.stop()
        sb.finish(request.session, failed_before, root=root)


# ---- helpers ----------------------------------------------------------------

def seed(sb):
    for u in USERS:
        conn = sb.imap("old", u)
        try:
            for folder, (_, n) in FOLDERS.items():
                if folder != "INBOX":
                    check(conn.create('"%s"' % folder), "CREATE")
                for i in range(n):
                    tag = "%s-%s-%d" % (u, folder.replace(" ", "_"), i)
                    check(conn.append('"%s"' % folder, None, None, message(tag).encode()),
                          "APPEND")
        finally:
            conn.logout()


def old_counts(sb, user):
    """{NEW's folder name: messages on OLD} for the migrated folders."""
    conn = sb.imap("old", user, master=True)
    try:
        out = {}
        for folder, (new, _) in FOLDERS.items():
            if new is None:
                continue
            typ, data = conn.status('"%s"' % folder, "(MESSAGES)")
            assert typ == "OK", data
            out[new] = int(re.search(rb"MESSAGES (\d+)", data[0]).group(1))
        return out
    finally:
        conn.logout()


def new_maildir_files(sb, user):
    """Files and folders under the user's NEW home (read from disk: looking
    through IMAP would make the plugin copy)."""
    found = []
    for d, dirs, files in os.walk(sb.home("new", user)):
        found += [os.path.join(d, x) for x in dirs + files]
    return found


# a login that failed, as imap-login and the passdbs log it ("unknown user"
# alone is not one: the routing passdb has no row for a cut-over user and
# the next passdb answers)
FAILED_LOGIN = re.compile(r"auth failed|Authentication failed|password mismatch"
                          r"|Aborted login", re.I)


def failed_logins(sb, inst, since):
    with open(sb.log_path(inst), errors="replace") as f:
        f.seek(since)
        return [line for line in f.read().splitlines() if FAILED_LOGIN.search(line)]


def settled(fd, users, states=("verified",)):
    st = fd.users()
    bad = [u for u in users if st[u]["state"] == "failed"]
    assert not bad, [(u, st[u]["error"]) for u in bad]
    return all(st[u]["state"] in states and not st[u]["running"] and not st[u]["sync_now"]
               for u in users)


def events(fd, user, since_id=0):
    return [e for e in fd.log(user=user) if e["id"] > since_id]


def last_id(fd):
    entries = fd.log()
    return entries[-1]["id"] if entries else 0


class OldStopped:
    """OLD's processes stopped (SIGSTOP) for a moment: a copy pass talking to
    it stays in flight until they go on (SIGCONT). The connection is
    accepted by the kernel and waits; nothing times out in that time."""

    def __init__(self, sb):
        self.sb = sb
        self.pids = []

    def __enter__(self):
        self.pids = sorted(self.sb.pids("old"))
        for pid in self.pids:
            os.kill(pid, signal.SIGSTOP)
        return self

    def __exit__(self, *exc):
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


def deliver_during(pf, sb, users, until, tag):
    """Mail through Postfix to each user until `until` is set: OLD keeps
    receiving while the copy runs. Returns the queue ids."""
    qids, n = [], 0
    while not until.is_set() and n < 4:
        for u in users:
            qids.append(send(pf, u, "%s-%s-%d" % (tag, u, n)))
        n += 1
        until.wait(0.3)
    return qids


# ---- the runbook, section by section ------------------------------------------

def test_0_preparation_preflight_copies_nothing_and_fails_no_login(env):
    """Runbook 0: import, routing, waves, preflight."""
    sb, fd, pf, proxy = env
    seed(sb)
    fd.import_users(USERS)
    fd.ctl("route", "config", "--new-transport", "lmtp:inet:127.0.0.1:%d" % sb.port("new", "lmtp"),
           "--endpoint", "127.0.0.1:%d" % sb.port("old"), "--pop3-port", str(sb.port("old", "pop3")),
           "--transport", "lmtp:inet:127.0.0.1:%d" % sb.port("old", "lmtp"))
    fd.ctl("wave", "create", "pilot")
    fd.ctl("wave", "add", "pilot", *PILOT)
    fd.ctl("wave", "create", "rest")
    fd.ctl("wave", "add", "rest", *REST)
    # everybody is routed to OLD: logins proxied, mail relayed there
    assert separator(sb, "alice") == "."
    qid = send(pf, "alice", "before-anything")
    assert relays(pf, [qid], sb) == {qid: "old"}

    offsets = {i: os.path.getsize(sb.log_path(i)) for i in ("old", "new")}
    for wave in ("pilot", "rest"):
        r = fd.ctl("preflight", "--wave", wave, timeout=120)
        assert r.stdout.count(": PASS") == len(PILOT if wave == "pilot" else REST), r.stdout
    for u in USERS:
        assert new_maildir_files(sb, u) == [], u  # copied nothing
    for inst in ("old", "new"):
        assert failed_logins(sb, inst, offsets[inst]) == [], inst
    # the preflight did log in on both (as the master user, for each user)
    for inst in ("old", "new"):
        with open(sb.log_path(inst), errors="replace") as f:
            f.seek(offsets[inst])
            text = f.read()
        # "Login:" on Dovecot 2.3, "Logged in:" on 2.4
        assert len(re.findall(r"(?:Login|Logged in): user=<carol>, auth=<%s>" % MASTER_USER,
                              text)) >= 1, inst


def test_1_background_copy_while_mail_arrives(env):
    """Runbook 1: ferryctl start per wave; Postfix keeps delivering to OLD
    during the passes; every user ends verified (verify_after_pull = yes)."""
    sb, fd, pf, proxy = env
    done = threading.Event()
    out = {}
    t = threading.Thread(target=lambda: out.setdefault(
        "qids", deliver_during(pf, sb, USERS, done, "presync")))
    t.start()
    try:
        fd.ctl("start", "--wave", "pilot")
        fd.ctl("start", "--wave", "rest")
        wait_until(lambda: settled(fd, USERS), 180, "every user copied and verified")
    finally:
        done.set()
        t.join(60)
    assert set(relays(pf, out["qids"], sb).values()) == {"old"}
    st = fd.users()
    assert {u: st[u]["state"] for u in USERS} == {u: "verified" for u in USERS}
    r = fd.ctl("status", "--once")
    assert re.search(r"(?m)^alice\s+pilot\s+verified\b", r.stdout), r.stdout


def test_1_refresh_brings_new_mail_verified_with_current_counts(env):
    """Runbook 1: `ferryctl sync USER` just before the cut-over: what
    reached OLD since the last pass (mail that arrived during and after the
    passes) is copied, verification is green, status shows OLD's counts."""
    sb, fd, pf, proxy = env
    qids = [send(pf, "alice", "refresh-%d" % i) for i in range(3)]
    assert set(relays(pf, qids, sb).values()) == {"old"}
    for u in USERS:
        mark = last_id(fd)
        fd.ctl("sync", u)
        wait_until(lambda: settled(fd, [u]) and any(
            e["event"] == "user-done" for e in events(fd, u, mark)), 90, "refresh of " + u)
        verify = [e for e in events(fd, u, mark) if e["event"] == "verify"]
        assert verify and verify[-1]["error"] == "result=pass", verify
        want = old_counts(sb, u)
        folders = {f["name"]: f for f in fd.status(user=u)["users"][0]["folders"]}
        assert {n: folders[n]["old_messages"] for n in want} == want, (u, folders)
        assert {n: folders[n]["messages"] for n in want} == want, (u, folders)
        assert "Junk" not in folders
    ids = message_ids(sb, "new", "alice")
    assert {"refresh-0", "refresh-1", "refresh-2"} <= ids
    r = fd.ctl("status", "--once")
    total = sum(old_counts(sb, "alice").values())
    assert re.search(r"(?m)^alice\s+pilot\s+verified\s+\d+\s+%d/%d\b" % (total, total),
                     r.stdout), r.stdout


def test_sync_during_a_running_pull_is_carried_out_afterwards(env):
    sb, fd, pf, proxy = env
    mark = last_id(fd)
    with OldStopped(sb):
        fd.ctl("sync", "bob")
        wait_until(lambda: fd.users()["bob"]["running"], 30, "bob's pass to start")
        r = fd.ctl("sync", "bob")
        assert "sync of user bob queued: a pass of it is running, this one follows" in r.stdout, \
            r.stdout
    wait_until(lambda: settled(fd, ["bob"]), 90, "bob's passes")
    ev = [e["event"] for e in events(fd, "bob", mark)]
    # two passes: the one running, then the one asked for during it
    assert ev.count("pull-start") == 2, ev
    assert ev.count("user-done") == 2, ev


def test_3_cutover_pilot_waits_for_running_pull_then_goes_through(env):
    """Runbook 3: `ferryctl cutover --wave pilot` without --force, sent
    while a pass of alice runs: it waits for the pass, then cuts over."""
    sb, fd, pf, proxy = env
    mark = last_id(fd)
    with OldStopped(sb):
        fd.ctl("sync", "alice")
        wait_until(lambda: fd.users()["alice"]["running"], 30, "alice's pass to start")
        cut = subprocess.Popen([os.path.join(BUILD_DIR, "ferryctl"), "-c", fd.conf_path,
                                "cutover", "--wave", "pilot"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=fd.env())
        wait_until(lambda: "waiting" in fd.api("GET", "/v1/cutover?wave=pilot")[1], 30,
                   "the cut-over to wait for alice's pass")
        rec = fd.api("GET", "/v1/cutover?wave=pilot")[1]
        assert "alice" in rec["waiting"] and rec["state"] == "running", rec
        assert fd.api("GET", "/v1/route?user=alice")[1]["routes"][0]["route"] == "old"
    out, err = cut.communicate(timeout=180)
    assert cut.returncode == 0, out + err
    assert "cut-over of wave pilot done: 2 users" in out, out
    assert "cut-over of wave pilot: waiting for 1 running job (alice) to end" in out, out
    ev = [e["event"] for e in events(fd, "alice", mark)]
    assert "cutover-waiting" in ev and "final-sync" in ev and "cutover" in ev, ev
    assert ev.index("user-done") < ev.index("final-sync") < ev.index("cutover"), ev


def test_4_check_logins_and_deliveries_follow(env):
    sb, fd, pf, proxy = env
    wait_until(lambda: settled(fd, PILOT, ("done", "verified")), 90, "the pilot's delta pulls")
    for u in PILOT:
        assert separator(sb, u) == "/"
        assert userdb_phase(sb, u) == "cutover"
    assert separator(sb, "carol") == "."
    qids = {send(pf, u, "after-cutover-" + u): u for u in PILOT + ["carol"]}
    went = relays(pf, list(qids), sb)
    assert {qids[q]: w for q, w in went.items()} == {"alice": "new", "bob": "new",
                                                     "carol": "old"}
    assert on_disk(sb, "new", "alice", "after-cutover-alice")
    assert not on_disk(sb, "old", "alice", "after-cutover-alice")
    r = fd.ctl("route", "--wave", "pilot")
    assert r.stdout.count("cutover") >= 2, r.stdout


def test_5_rollback_cut_half_way_then_again_appends_each_once(env):
    """Runbook 5: mail arrived on NEW; `ferryctl rollback --wave pilot`
    loses OLD half-way through alice's appends (her connection to OLD cut
    right after OLD stored the 6th); run again, as the output says: every
    message that arrived on NEW is on OLD exactly once."""
    sb, fd, pf, proxy = env
    qids = [send(pf, "alice", "on-new-%02d" % i) for i in range(11)]
    assert set(relays(pf, qids, sb).values()) == {"new"}
    arrived = {"after-cutover-alice"} | {"on-new-%02d" % i for i in range(11)}
    assert arrived <= message_ids(sb, "new", "alice")
    base = len(message_ids(sb, "old", "alice"))
    proxy.arm(Fault("cut", pattern=rb"^\* %d EXISTS" % (base + 6)))
    try:
        r = fd.ctl("rollback", "--wave", "pilot", check=False, timeout=180)
        assert proxy.fired.is_set(), r.stdout + r.stderr
    finally:
        proxy.disarm()
    assert r.returncode == 1 and "run ferryctl rollback --wave pilot again" in r.stderr, \
        r.stdout + r.stderr
    half = message_ids(sb, "old", "alice") & arrived
    assert 0 < len(half) < len(arrived), half
    r = fd.ctl("rollback", "--wave", "pilot", timeout=180)
    assert "rollback of wave pilot done: 2 users" in r.stdout, r.stdout
    conn = sb.imap("old", "alice", master=True)
    try:
        check(conn.select("INBOX", readonly=True), "SELECT")
        data = check(conn.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"),
                     "FETCH")
    finally:
        conn.logout()
    ids = [re.search(rb"<([^@>]+)@ferry\.test>", item[1]).group(1).decode()
           for item in data if isinstance(item, tuple)]
    assert {t: ids.count(t) for t in arrived} == {t: 1 for t in arrived}
    assert separator(sb, "alice") == "."
    assert userdb_phase(sb, "alice") == "presync"


def test_6_next_wave_and_old_never_over_its_session_limit(env):
    """Runbook 6: the rest wave cut over the same way (ferryd stopped during
    it: shutdown waits for the cut-over in flight); over the whole run
    OLD never saw more ferry sessions at once than max_per_host (copy
    passes, verifications, final and stragglers passes, rollbacks)."""
    sb, fd, pf, proxy = env
    mark = last_id(fd)
    cut = subprocess.Popen([os.path.join(BUILD_DIR, "ferryctl"), "-c", fd.conf_path,
                            "cutover", "--wave", "rest"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=fd.env())
    # ferryd is stopped right after the flip, in the settle delay: SIGTERM
    # waits for the cut-over (past drain_timeout), which ends done
    wait_until(lambda: any(e["event"] == "cutover" for e in events(fd, "frank", mark)), 120,
               "the rest wave's flip")
    os.kill(fd.pid, signal.SIGTERM)
    assert fd.proc.wait(timeout=180) == 0
    out, err = cut.communicate(timeout=60)
    drained = [e for e in fd.events() if e.get("event") in ("drain-waiting", "cutover-finished")]
    assert [e["event"] for e in drained][-2:] == ["drain-waiting", "cutover-finished"], drained
    assert drained[-1]["state"] == "done", drained
    fd.start()
    rec = fd.api("GET", "/v1/cutover?wave=rest")[1]
    assert rec["state"] == "done" and rec["users"] == 4, (rec, out, err)
    wait_until(lambda: settled(fd, REST, ("done", "verified")), 90, "rest's delta pulls")
    assert {separator(sb, u) for u in REST} == {"/"}
    with open(sb.log_path("old"), errors="replace") as f:
        peak, detail = peak_sessions(f.read(), MASTER_USER)
    print("\nmost ferry sessions on OLD at once: %d (max_per_host %d)" % (peak, MAX_PER_HOST))
    assert peak <= MAX_PER_HOST, "\n".join(detail)
    # verification after every pass made no login meant to fail either
    for inst in ("old", "new"):
        assert failed_logins(sb, inst, 0) == [], inst
    assert TOKEN not in fd.output()
