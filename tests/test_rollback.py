"""Rollback (issue 6, plugin side): `doveadm ferry rollback` appends back
to OLD what arrived on NEW after cut-over — new messages with flags,
keywords and dates, and folders made on NEW — once, however often it runs."""
from ferrytest import corpus, imapwire
from ferrytest.imapwire import check
from ferrytest.snapshot import snapshot

USER = "back"
SANDBOX_KWARGS = {"users": (USER,)}


def test_rollback_appends_new_mail_back_once(sandbox):
    corpus.seed_old(sandbox, USER, corpus.small_spec(seed=31))
    sandbox.doveadm("new", "ferry", "pull", "-u", USER)
    before = snapshot(sandbox, "old", USER)

    for i in range(20):
        code, text = sandbox.lmtp_deliver(
            USER, corpus.simple_message("after-cutover-%d" % i, seed=31))
        assert code == 250, text
    conn = sandbox.imap("new", USER)
    check(conn.create("Made-on-new"), "CREATE")
    mine = [corpus.simple_message("mine-%d" % i, seed=32) for i in range(2)]
    for m in mine:
        check(conn.append("Made-on-new", "(\\Flagged $Label1)",
                          imapwire.format_date(1500000000, 60), m), "APPEND")
    conn.logout()
    new = snapshot(sandbox, "new", USER)
    arrived = {m.sha256 for uid, m in new.folders["INBOX"].messages.items()
               if uid >= before.folders["INBOX"].uidnext}
    assert len(arrived) == 20

    for _ in range(2):  # a repeated rollback appends nothing twice
        r = sandbox.doveadm("new", "ferry", "rollback", "-u", USER)
        assert "failed" not in r.stdout, r.stdout

    after = snapshot(sandbox, "old", USER)
    inbox = after.folders["INBOX"]
    old_hashes = [m.sha256 for m in inbox.messages.values()]
    assert all(old_hashes.count(h) == 1 for h in arrived)
    assert len(inbox.messages) == len(before.folders["INBOX"].messages) + 20
    back = {m.sha256: m for m in after.folders["Made-on-new"].messages.values()}
    assert len(back) == 2
    by_hash = {m.sha256: m for m in new.folders["Made-on-new"].messages.values()}
    for h, m in back.items():
        assert (m.flags, m.internaldate, m.size) == \
            (by_hash[h].flags, by_hash[h].internaldate, by_hash[h].size)
