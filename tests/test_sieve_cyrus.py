"""Sieve scripts from Cyrus timsieved (Cyrus 3.6, unpacked like the other
Cyrus tests) to NEW's Pigeonhole (issue 18): the admin identity acting as
the user (SASL PLAIN with authzid), two scripts with one active; fileinto
"INBOX.Projects.2024" (Cyrus names personal folders under INBOX.) follows
the plugin's mapping (its old_folder is Cyrus's own LIST name) to
"Work/2024"; a message delivered through NEW's
LMTP is filed there and answered by the vacation rule."""
import email
import os
import shutil

import pytest

from ferrytest import oldservers
from ferrytest.managesieve import ManageSieve
from ferrytest.sandbox import MASTER_PASSWORD, MASTER_USER, Sandbox, wait_until
from ferrytest.sieve import folder_map, migrate, new_active, new_scripts
from ferrytest.smtpsink import SmtpSink

USER = "frank"
MAIN = """require ["fileinto", "vacation"];
if header :contains "subject" "report" { fileinto "INBOX.Projects.2024"; }
vacation :days 1 :addresses ["frank@example.org"] :subject "Out" "Back on Monday.";
"""
SPARE = 'require "fileinto";\nif header :is "x-spam" "yes" { fileinto "INBOX.Junk"; }\n'


@pytest.fixture(scope="module")
def env(request):
    cy = oldservers.make("cyrus-dot", users=(USER,), sieve=True)
    sb = Sandbox(users=(USER,), sieve=True, new_extra=cy.new_extra() +
                 "plugin {\n  ferry_rename = ^Projects/(.*)$ => Work/\\1\n}\n")
    sink = SmtpSink()
    sb.ports["smtp_sink"] = sink.port
    failed_before = request.session.testsfailed
    try:
        cy.start()
        sb.start()
        yield cy, sb, sink
    finally:
        sink.close()
        sb.stop()
        cy.stop()
        if request.session.testsfailed == failed_before and not os.environ.get("FERRY_KEEP"):
            shutil.rmtree(sb.root, ignore_errors=True)
            shutil.rmtree(cy.root, ignore_errors=True)
        else:
            print("\nkept: %s %s" % (sb.root, cy.root))


def test_cyrus_scripts_move_and_work_on_new(env):
    cy, sb, sink = env
    c = cy.imap(USER)
    c.create("INBOX.Projects.2024")
    c.logout()
    ms = ManageSieve("127.0.0.1", cy.port("sieve"), MASTER_USER, MASTER_PASSWORD, authz=USER)
    ms.put("main", MAIN)
    ms.put("spare", SPARE)
    ms.activate("main")
    ms.close()
    sb.doveadm("new", "ferry", "pull", "-u", USER)
    # the plugin names old folders as Cyrus's LIST does, INBOX. included
    assert folder_map(sb, USER).get("INBOX.Projects.2024") == "Work/2024", folder_map(sb, USER)
    r = migrate(sb, USER, old_port=cy.port("sieve"), old_prefix="INBOX.")
    assert r.returncode == 0, r.stdout + r.stderr
    scripts = new_scripts(sb, USER)
    assert set(scripts) == {"main", "spare"} and new_active(sb, USER) == "main"
    assert scripts["main"] == MAIN.replace('"INBOX.Projects.2024"', '"Work/2024"')
    assert scripts["spare"] == SPARE  # no INBOX.Junk on the old server: kept as it is
    msg = ("From: Gina <gina@example.net>\r\nTo: frank@example.org\r\n"
           "Subject: weekly report\r\nMessage-ID: <cy-1@example.net>\r\n\r\nhi\r\n")
    code, text = sb.lmtp_deliver(USER, msg, sender="gina@example.net")
    assert code == 250, text
    c = sb.imap("new", USER)
    try:
        typ, data = c.select('"Work/2024"', readonly=True)
        assert typ == "OK" and int(data[0]) == 1
    finally:
        c.logout()
    sender, rcpts, raw = wait_until(lambda: sink.received(), 30, "the vacation reply")[0]
    assert rcpts == ["gina@example.net"]
    assert email.message_from_bytes(raw)["Subject"] == "Out"
