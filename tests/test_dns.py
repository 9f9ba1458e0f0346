"""DNS readiness and blacklist checks in ferryd (issue 18), against NSD
serving the test zones on 127.0.0.1 (ferryd's dns_resolver): the cut-over
precheck refuses TTL 86400 and passes with 300, the MX switch (and the
client names moving to NEW) is reported when the zone changes, NEW's
address listed on a DNSBL is reported with the list's name and its TXT,
SPF/DMARC/DKIM are reported, and a resolver that does not answer (NSD
stopped with SIGSTOP) ends the check with a timeout error in bounded
time. Every result is in the migration log with its time."""
import json
import time

import pytest

from ferrytest import nsd
from ferrytest.ferryd import Ferryd
from ferrytest.sandbox import wait_until

# tests/README.md, "Dovecot 2.3 and 2.4"
DOVECOT_ONCE = "ferryd's DNS checks against NSD; the sandbox's Dovecot only gives ferryd a doveadm endpoint"

USER = "dana"
SANDBOX_KWARGS = {"users": (USER,), "doveadm_http": True}
OLD_IP, NEW_IP = "127.0.0.10", "127.0.0.20"  # only data in the zones: nothing connects


def example_zone(ttl, target_ip, serial):
    return nsd.zone("example.test", [
        "@ %d IN MX 10 mail" % ttl,
        "mail %d IN A %s" % (ttl, target_ip),
        "imap %d IN A %s" % (ttl, target_ip),
        "pop %d IN A %s" % (ttl, OLD_IP),
        '@ 3600 IN TXT "v=spf1 ip4:%s ip4:%s -all"' % (OLD_IP, NEW_IP),
        '_dmarc 3600 IN TXT "v=DMARC1; p=none"',
        'mail._domainkey 3600 IN TXT "v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQ"',
    ], serial=serial)


BL_ZONE = nsd.zone("bl.test", [
    "20.0.0.127 300 IN A 127.0.0.2",
    '20.0.0.127 300 IN TXT "listed for testing: see bl.test/20"',
])
CLEAN_ZONE = nsd.zone("clean.test", [])


@pytest.fixture(scope="module")
def env(sandbox):
    if not nsd.available():
        pytest.skip("nsd is not installed (make deps)")
    ns = nsd.Nsd(sandbox.root, {"example.test": example_zone(86400, OLD_IP, 1),
                                "bl.test": BL_ZONE, "clean.test": CLEAN_ZONE}).start()
    fd = Ferryd(sandbox, dns_resolver="127.0.0.1:%d" % ns.port, dns_domains="example.test",
                dns_hosts="imap.example.test pop.example.test", dns_old_ips=OLD_IP,
                dns_new_ips=NEW_IP, dnsbl_zones="bl.test clean.test", dkim_selectors="mail",
                dns_max_ttl=300, dns_timeout_ms=500, dns_interval=0)
    try:
        fd.start()
        fd.import_users([USER], "w1")
        fd.ctl("start")
        wait_until(lambda: fd.users()[USER]["state"] in ("done", "verified", "failed"), 120,
                   "the first copy pass")
        yield sandbox, ns, fd
    finally:
        fd.stop()
        ns.stop()


def dns_report(fd):
    r = fd.ctl("dns", "--json", check=False)
    assert r.returncode in (0, 1), r.stderr
    return json.loads(r.stdout), r.returncode


def dns_log(fd, event):
    return [e for e in fd.log(limit=1000) if e["event"] == event]


def test_ttl_precheck_refuses_86400_and_passes_300(env):
    sb, ns, fd = env
    rep, rc = dns_report(fd)
    assert rc == 1 and rep["errors"] == []
    assert "example.test MX 86400" in rep["ttl_too_high"]
    assert "imap.example.test A 86400" in rep["ttl_too_high"]
    r = fd.ctl("cutover", "--wave", "w1", "--settle", "0", check=False)
    assert r.returncode == 1 and "DNS TTLs above dns_max_ttl 300" in r.stderr, r.stderr
    assert "example.test MX 86400" in r.stderr
    # TTLs lowered (the addresses still the old server's)
    ns.set_zone("example.test", example_zone(300, OLD_IP, 2))
    rep, _ = dns_report(fd)
    assert rep["ttl_too_high"] == [] and rep["ttl_ok"]
    r = fd.ctl("cutover", "--wave", "w1", "--settle", "0", timeout=120)
    assert "cut-over of wave w1 done" in r.stdout, r.stdout + r.stderr


def test_mx_switch_and_names_moving_to_new_are_reported(env):
    sb, ns, fd = env
    rep, _ = dns_report(fd)
    points = {n["name"]: n["points"] for n in rep["names"]}
    assert points == {"imap.example.test": "old", "pop.example.test": "old",
                      "mail.example.test": "old"}
    assert rep["domains"]["example.test"]["mx_points"] == "old"
    ns.set_zone("example.test", example_zone(300, NEW_IP, 3))
    r = fd.ctl("dns", check=False)
    assert "mail.example.test                points at new" in r.stdout, r.stdout
    assert "imap.example.test                points at new" in r.stdout
    assert "pop.example.test                 points at old" in r.stdout
    assert "domain example.test: MX points at new" in r.stdout
    changed = {e["folder"]: e["error"] for e in dns_log(fd, "dns-changed")}
    assert changed == {"mail.example.test": "old -> new", "imap.example.test": "old -> new"}
    assert all(e["time"] > 0 for e in dns_log(fd, "dns-record"))


def test_listed_address_reported_with_the_lists_name(env):
    sb, ns, fd = env
    rep, rc = dns_report(fd)
    assert rc == 1  # a listed address fails the check
    bl = {e["zone"]: e for e in rep["dnsbl"]}
    assert bl["bl.test"]["listed"] and bl["bl.test"]["ip"] == NEW_IP
    assert bl["bl.test"]["answer"] == "127.0.0.2"
    assert bl["bl.test"]["reason"] == "listed for testing: see bl.test/20"
    assert not bl["clean.test"]["listed"]
    logged = {e["folder"]: e["error"] for e in dns_log(fd, "dnsbl-listed")}
    assert "bl.test" in logged and NEW_IP in logged["bl.test"] and "127.0.0.2" in logged["bl.test"]
    d = rep["domains"]["example.test"]
    assert d["spf"] == ["v=spf1 ip4:%s ip4:%s -all" % (OLD_IP, NEW_IP)]
    assert d["dmarc"] == ["v=DMARC1; p=none"]
    assert d["dkim"]["mail"].startswith("v=DKIM1")


def test_resolver_that_does_not_answer_times_out(env):
    sb, ns, fd = env
    ns.pause()  # NSD's socket stays open, nothing answers
    try:
        t0 = time.monotonic()
        rep, rc = dns_report(fd)
        took = time.monotonic() - t0
    finally:
        ns.resume()
    assert rc == 1 and took < 15, took
    assert rep["errors"], rep
    assert all("no answer from the resolver 127.0.0.1:%d within 2 attempts of 500 ms" % ns.port
               in e for e in rep["errors"]), rep["errors"]
    # the precheck refuses a cut-over on a failed check
    code, j = fd.api("POST", "/v1/cutover", {"wave": "w1"})
    assert code == 409 and "the last DNS check failed" in j["error"], j


def test_bad_dns_settings_stop_ferryd_with_the_reason(env):
    sb, ns, fd = env
    bad = Ferryd(sb, name="ferryd-bad-dns", dns_domains="example.test",
                 dns_new_ips="mail.example.test")
    with pytest.raises(RuntimeError) as e:
        bad.start()
    assert 'dns_new_ips: "mail.example.test" is not an IP address' in str(e.value)
    bad = Ferryd(sb, name="ferryd-bad-resolver", dns_domains="example.test",
                 dns_resolver="ns.example.test")
    with pytest.raises(RuntimeError) as e:
        bad.start()
    assert 'dns_resolver: "ns.example.test" is not IP[:PORT]' in str(e.value)
