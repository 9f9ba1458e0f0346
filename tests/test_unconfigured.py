"""The shipped conf/ferry.conf names no old server (imapc_host is empty): a
package installs the snippet into a running Dovecot before the administrator
has edited it. Until imapc_host is set, users are served locally, nothing is
pulled or failed, and the log says why once."""
from ferrytest import corpus

# the shipped snippet's imapc_host, after the sandbox's own one
SANDBOX_KWARGS = {"users": ("alice",), "new_extra": "imapc_host =\n"}


def test_no_old_server_configured_leaves_users_alone(sandbox, old_log):
    corpus.seed_old(sandbox, "alice", corpus.folder_spec("INBOX", n=5, seed=8))
    old_log.mark()
    conn = sandbox.imap("new", "alice")
    assert conn.list()[0] == "OK"
    typ, data = conn.select("INBOX")
    assert (typ, data) == ("OK", [b"0"])
    assert conn.append("INBOX", None, None, b"Subject: local\r\n\r\nhi\r\n")[0] == "OK"
    conn.logout()
    old_log.settle("alice")
    assert old_log.logins("alice") == 0
    log = sandbox.log_text("new")
    assert log.count("imapc_host is not set: nothing is migrated") >= 1
    assert "Error" not in log
