"""Sieve filters, redirects and vacation replies move with the mail (issue 18).

OLD runs Pigeonhole's ManageSieve; each user has two scripts, one active,
with a fileinto into a folder the plugin renames (rename rule) and a
vacation rule. After `doveadm ferry pull` and the Sieve step, NEW has both
scripts, the same one active, the fileinto target rewritten to the new
name (taken from `doveadm ferry status`'s old_name column: the plugin's
own mapping), and a message delivered through NEW's LMTP is filed there
and answered by the vacation rule (the reply caught by an SMTP sink on
loopback). bob's active script needs an extension NEW does not enable:
it is kept on NEW commented out, not activated, and reported."""
import email
import json
import os
import re

import pytest

from ferrytest.ferryd import Ferryd, master_password_file
from ferrytest.managesieve import ManageSieve
from ferrytest.sandbox import MASTER_PASSWORD, MASTER_USER, wait_until
from ferrytest.sieve import folder_map, migrate, new_active, new_scripts
from ferrytest.smtpsink import SmtpSink

# OLD compiles editheader (off by default in Pigeonhole); NEW does not
OLD_EXTRA = "plugin {\n  sieve_extensions = +editheader\n}\n"
NEW_EXTRA = "plugin {\n  ferry_rename = ^Projects/(.*)$ => Work/\\1\n}\n"
SANDBOX_KWARGS = {"users": ("alice", "bob", "erin"), "sieve": True, "doveadm_http": True,
                  "tls": True,  # OLD offers STARTTLS (ManageSieve too), signed by a test CA
                  "old_extra": OLD_EXTRA, "new_extra": NEW_EXTRA}

MAIN = """require ["fileinto", "vacation", "copy"];
# filed by subject, a copy to the archive
if header :contains "subject" "report" {
  fileinto "Projects.2024";
  redirect :copy "archive@example.org";
}
vacation :days 1 :addresses ["alice@example.org"] :subject "Away" "I am away until Monday.";
"""
SPARE = """require ["fileinto"];
if address :is "from" "boss@example.org" { fileinto "INBOX"; stop; }
"""
BOB_ACTIVE = """require ["editheader", "fileinto"];
addheader "X-Filtered" "yes";
fileinto "Projects.2024";
"""
BOB_SPARE = 'require "vacation";\nvacation "gone";\n'


def seed_old(sb, user, scripts, active):
    c = sb.imap("old", user)
    c.create("Projects.2024")
    c.logout()
    ms = old_sieve(sb, user)
    for name, text in scripts.items():
        ms.put(name, text)
    ms.activate(active)
    assert ms.list()[active]
    ms.close()


def old_active(sb, user):
    ms = old_sieve(sb, user)
    try:
        return ([n for n, on in ms.list().items() if on] or [None])[0]
    finally:
        ms.close()


def old_sieve(sb, user):
    return ManageSieve("127.0.0.1", sb.port("old", "sieve"), MASTER_USER, MASTER_PASSWORD,
                       authz=user)


SINK = []


def sandbox_prepare(sb):
    """NEW sends vacation replies to an SMTP sink bound before it starts"""
    SINK.append(SmtpSink())
    sb.ports["smtp_sink"] = SINK[-1].port


@pytest.fixture(scope="module")
def migrated(sandbox):
    sink = SINK[-1]
    try:
        for user, scripts, active in (("alice", {"main": MAIN, "spare": SPARE}, "main"),
                                      ("bob", {"strict": BOB_ACTIVE, "away": BOB_SPARE},
                                       "strict")):
            seed_old(sandbox, user, scripts, active)
            sandbox.doveadm("new", "ferry", "pull", "-u", user)
        reports = {u: migrate(sandbox, u) for u in ("alice", "bob")}
        yield sandbox, sink, reports
    finally:
        sink.close()


def test_scripts_and_active_one_moved_with_fileinto_mapped(migrated):
    sb, _, reports = migrated
    assert folder_map(sb, "alice")["Projects.2024"] == "Work/2024"
    r = reports["alice"]
    assert r.returncode == 0, r.stderr + r.stdout
    scripts = new_scripts(sb, "alice")
    assert set(scripts) == {"main", "spare"}
    assert new_active(sb, "alice") == "main"
    assert scripts["main"] == MAIN.replace('"Projects.2024"', '"Work/2024"')
    assert scripts["spare"] == SPARE  # fileinto "INBOX" is INBOX everywhere


def test_delivery_is_filed_and_answered_by_vacation(migrated):
    sb, sink, _ = migrated
    msg = ("From: Carol <carol@example.net>\r\nTo: alice@example.org\r\n"
           "Subject: quarterly report\r\nMessage-ID: <sieve-1@example.net>\r\n"
           "Date: Fri, 04 Dec 2026 10:00:00 +0000\r\n\r\nnumbers\r\n")
    code, text = sb.lmtp_deliver("alice", msg, sender="carol@example.net")
    assert code == 250, text
    c = sb.imap("new", "alice")
    try:
        typ, data = c.select('"Work/2024"', readonly=True)
        assert typ == "OK" and int(data[0]) == 1
        typ, data = c.fetch("1", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        assert b"sieve-1@example.net" in data[0][1]
        typ, data = c.select("INBOX", readonly=True)
        assert int(data[0]) == 0
    finally:
        c.logout()
    sent = wait_until(lambda: len(sink.received()) >= 2 and sink.received(), 30,
                      "the redirect and the vacation reply at the SMTP sink")
    by_rcpt = {tuple(rcpts): raw for _, rcpts, raw in sent}
    assert set(by_rcpt) == {("archive@example.org",), ("carol@example.net",)}, by_rcpt
    # the redirect rule carried over: the message itself, to the archive
    assert b"Message-ID: <sieve-1@example.net>" in by_rcpt[("archive@example.org",)]
    rcpts, raw = ["carol@example.net"], by_rcpt[("carol@example.net",)]
    reply = email.message_from_bytes(raw)
    assert rcpts == ["carol@example.net"]
    assert reply["Subject"] == "Away"
    assert reply["In-Reply-To"] == "<sieve-1@example.net>"
    assert "I am away until Monday." in reply.get_payload(decode=True).decode()


def test_script_new_cannot_compile_is_kept_inactive_and_reported(migrated):
    sb, _, reports = migrated
    r = reports["bob"]
    assert r.returncode == 1, r.stderr + r.stdout  # reported as a failure
    rep = json.loads(r.stdout)
    strict = [s for s in rep["scripts"] if s["name"] == "strict"][0]
    assert strict["result"] == "kept-inactive"
    assert "editheader" in strict["error"]
    assert rep["old_active"] == "strict" and rep["new_active"] is None
    assert "did not compile" in rep["activate_error"]
    scripts = new_scripts(sb, "bob")
    assert set(scripts) == {"strict", "away"}
    assert new_active(sb, "bob") is None
    # the original text is all there, commented out
    kept = [ln[2:] for ln in scripts["strict"].splitlines(True) if ln.startswith("# ")]
    assert "".join(kept).endswith(BOB_ACTIVE)
    assert scripts["away"] == BOB_SPARE


def test_ferryd_moves_scripts_after_the_copy_and_on_request(migrated):
    """ferryd's Sieve step: after erin's pulls complete (sieve_after_pull),
    and again with ferryctl sieve erin; the report and the migration log
    say what happened to each script."""
    sb = migrated[0]
    seed_old(sb, "erin", {"main": MAIN, "spare": SPARE}, "main")
    secret = master_password_file(sb)
    fd = Ferryd(sb, old_master_user=MASTER_USER, old_master_password_file=secret,
                new_master_user=MASTER_USER, new_master_password_file=secret,
                new_imap="127.0.0.1:%d" % sb.port("new"), check_timeout=60,
                new_sieve="127.0.0.1:%d" % sb.port("new", "sieve"),
                old_sieve_port=sb.port("old", "sieve"), sieve_after_pull="yes",
                verify_after_pull="no")  # (verification does not follow rename rules yet)
    fd.start()
    try:
        fd.import_users(["erin"], "w1")
        fd.ctl("start")

        def sieve_done():
            code, j = fd.api("GET", "/v1/check?user=erin&kind=sieve")
            return code == 200 and j["state"] in ("done", "error") and j
        j = wait_until(sieve_done, 120, "erin's Sieve run after the copy")
        assert j["state"] == "done" and j["result"] == "pass", j
        assert new_active(sb, "erin") == "main"
        scripts = new_scripts(sb, "erin")
        assert scripts["main"] == MAIN.replace('"Projects.2024"', '"Work/2024"')
        assert scripts["spare"] == SPARE
        logged = {e["folder"]: e["error"] for e in fd.log(user="erin")
                  if e["event"] == "sieve-script"}
        assert logged == {"main": "result=stored active-on-old", "spare": "result=stored"}
        r = fd.ctl("sieve", "erin", timeout=120)
        assert 'fileinto "Projects.2024" -> "Work/2024"' in r.stdout, r.stdout
        assert "active on old: main, active on new: main" in r.stdout
        # cut over: the step runs again after the cut-over's pull and
        # switches OLD's script off (stragglers there get no second vacation
        # reply); a rollback switches it on again
        fd.ctl("cutover", "--wave", "w1", "--settle", "0", timeout=120)
        wait_until(lambda: old_active(sb, "erin") is None, 120,
                   "OLD's active script switched off after the cut-over")
        assert new_active(sb, "erin") == "main"
        fd.ctl("rollback", "--wave", "w1", "--settle", "0", timeout=120)
        wait_until(lambda: old_active(sb, "erin") == "main", 120,
                   "OLD's active script back after the rollback")
        events = [(e["event"], e["folder"]) for e in fd.log(user="erin")]
        assert ("sieve-old-deactivated", "main") in events
        assert ("sieve-restored", "main") in events
        text = fd.output() + open(fd.log_path).read()
        assert MASTER_PASSWORD not in text
    finally:
        fd.stop()


def test_starttls_to_the_old_managesieve_verifies_its_certificate(migrated):
    """STARTTLS on OLD's ManageSieve port: the capabilities the server sends
    again after the handshake are read, the certificate is checked against
    the CA (a wrong name is refused before any login)."""
    sb = migrated[0]
    since = sb.log_size("old")
    r = migrate(sb, "alice", extra=["--old-tls", "starttls", "--old-ca-file", sb.tls_ca()])
    assert r.returncode == 0, r.stdout + r.stderr
    logins = [ln for ln in sb.log_text("old", since).splitlines()
              # the login line: "Login:" on Dovecot 2.3, "Logged in:" on 2.4
              if re.search(r"managesieve-login: Info: (Login|Logged in): user=<alice>", ln)]
    assert logins and all(" TLS" in ln for ln in logins), logins
    r = migrate(sb, "alice", extra=["--old-tls", "starttls", "--old-ca-file", sb.tls_ca(),
                                    "--old-tls-name", "wrong.example"])
    assert r.returncode == 2 and "certificate verification failed" in r.stderr, r.stderr
