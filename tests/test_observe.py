"""Watching a migration (issue 17): ferryd's /metrics, /healthz and
/readyz, the plugin's lazy-pull events counted by NEW's own Dovecot stats,
the dashboard page in a real headless Chromium, and the per-wave report.

One sandbox, one ferryd: wave w1 migrates first (one user's old-server
login is refused), /metrics is scraped while w2 still waits, then w2
runs. Counters are checked against what happened: messages copied equal
the messages an independent IMAP client finds on NEW, the failing user is
counted with its reason."""
import json
import os
import re
import subprocess
import urllib.request

import pytest

from ferrytest import chromium, corpus
from ferrytest.ferryd import TOKEN, Ferryd
from ferrytest.promtext import parse, total, value
from ferrytest.sandbox import (ASAN, BUILD_DIR, MASTER_PASSWORD, MASTER_USER, _free_ports,
                               password, wait_until)
from ferrytest.snapshot import snapshot

W1 = ["a1", "a2", "a3", "a4"]
W2 = ["b1", "b2", "b3", "b4"]
BAD = "badpw"      # NEW's imapc logs in to OLD with a wrong password for this one
PWUSER = "a1"      # imported with its CSV password (must never be served)
LAZY = "lazy1"     # not in ferryd: migrated by its own IMAP session
VIEWER_TOKEN = "ferry-viewer-token-for-tests"
SECRET_KEY = "ferry-secret-key-material-for-tests-0123456789"
STATS_PORT = _free_ports(1)[0]  # NEW's OpenMetrics exporter
# the whole module on each store backend (conftest.py)
FERRY_STORES = ("sqlite", "pgsql")
SANDBOX_KWARGS = {
    "users": W1 + W2 + [BAD, LAZY] + ["c1", "c2", "c3"],
    "batch_size": 10,
    "doveadm_http": True,
    "new_userdb_extra": {
        BAD: "userdb_imapc_master_user= userdb_imapc_password=wrong",
        # every folder of this one is pulled by its own commands
        LAZY: "userdb_ferry_background_idle_msecs=0",
    },
    # the plugin's lazy-pull events, counted by NEW's stats (docs/ferryd.md)
    "new_extra": """
service stats {
  inet_listener http {
    address = 127.0.0.1
    port = %d
  }
}
metric ferry_pull {
  filter = event=ferry_pull_finished
  fields = messages bytes waited_usecs
}
metric ferry_pull_failed {
  filter = event=ferry_pull_finished AND error=*
}
""" % STATS_PORT,
}


def secret_file(sandbox, name, text):
    path = os.path.join(sandbox.root, name)
    with open(path, "w") as f:
        f.write(text + "\n")
    os.chmod(path, 0o600)
    return path


@pytest.fixture(scope="module")
def ferryd(sandbox):
    master = secret_file(sandbox, "master.pw", MASTER_PASSWORD)
    fd = Ferryd(sandbox, max_per_host=2, max_concurrent=2, retry_limit=2,
                viewer_token_file=secret_file(sandbox, "viewer.token", VIEWER_TOKEN),
                secret_key_file=secret_file(sandbox, "secret.key", SECRET_KEY),
                old_master_user=MASTER_USER, old_master_password_file=master,
                new_master_user=MASTER_USER, new_master_password_file=master,
                new_imap="127.0.0.1:%d" % sandbox.port("new"), check_timeout=60)
    fd.start()
    yield fd
    if fd.alive():
        assert fd.stop() == 0


def secrets(sandbox):
    """Every secret ferryd knows: none may appear in what it serves."""
    return [TOKEN, VIEWER_TOKEN, SECRET_KEY, MASTER_PASSWORD, sandbox.doveadm_api_key,
            password(PWUSER)]


def assert_no_secret(sandbox, what, text):
    for s in secrets(sandbox):
        assert s not in text, "%s shows a secret" % what


def scrape(fd):
    code, text = fd.api("GET", "/metrics", token=None)
    assert code == 200, text
    return text


def grafana_exprs():
    with open(os.path.join(os.path.dirname(__file__), "..", "conf", "grafana-ferry.json")) as f:
        return [t["expr"] for p in json.load(f)["panels"] for t in p["targets"]]


def seed_and_import(sandbox, fd):
    for i, user in enumerate(W1 + W2 + [BAD]):
        corpus.seed_old(sandbox, user, corpus.folder_spec("Bulk", n=12 + i, seed=i, gaps=2))
    path = os.path.join(sandbox.root, "users.csv")
    with open(path, "w") as f:
        f.write("user,endpoint,tls,wave,auth,password\n")
        for user in W1 + [BAD] + W2:
            wave = "w2" if user in W2 else "w1"
            pw = password(user) if user == PWUSER else ""
            f.write("%s,127.0.0.1:%d,none,%s,%s,%s\n" % (user, sandbox.port("old"), wave,
                                                    "password" if pw else "master", pw))
    fd.ctl("import", path)


def test_health_and_ready_without_token(sandbox, ferryd):
    for path in ("/healthz", "/readyz"):
        code, text = ferryd.api("GET", path, token=None)
        assert code == 200, (path, text)
    # the admin API still needs its token
    assert ferryd.api("GET", "/v1/status", token=None)[0] == 401
    # the viewer token reads, never writes
    assert ferryd.api("GET", "/v1/status", token=VIEWER_TOKEN)[0] == 200
    code, j = ferryd.api("POST", "/v1/pause", {}, token=VIEWER_TOKEN)
    assert code == 403, j


def test_metrics_count_what_happened(sandbox, ferryd):
    seed_and_import(sandbox, ferryd)
    first = parse(scrape(ferryd))
    assert value(first, "ferry_users", wave="w2", state="pending") == len(W2)
    assert value(first, "ferry_messages_copied_total") == 0

    ferryd.ctl("start", "--wave", "w1")
    wait_until(lambda: ferryd.settled(W1 + [BAD]), 120, "wave w1 verified or failed")
    # mid-migration: w1 finished, w2 not started
    text = scrape(ferryd)
    mid = parse(text)
    assert value(mid, "ferry_users", wave="w1", state="verified") == len(W1)
    assert value(mid, "ferry_users", wave="w1", state="failed") == 1
    assert value(mid, "ferry_users", wave="w2", state="pending") == len(W2)
    assert value(mid, "ferry_users_failed_total", reason="auth") == 1
    assert value(mid, "ferry_pull_failures_total", reason="auth") == 2  # retry_limit
    assert value(mid, "ferry_pulls_total", result="retry") == 1
    assert value(mid, "ferry_pulls_total", result="failed") == 1
    assert value(mid, "ferry_verifications_total", result="pass") == len(W1)
    assert value(mid, "ferry_verify_duration_seconds_count") == len(W1)

    ferryd.ctl("start", "--wave", "w2")
    # while it runs: pulls in flight and old-server sessions per host,
    # within max_per_host
    busy = []

    def in_flight():
        s = parse(scrape(ferryd))
        busy.append((value(s, "ferry_pulls_in_flight", host="127.0.0.1"),
                     value(s, "ferry_old_sessions", host="127.0.0.1")))
        return busy[-1][0] >= 1
    wait_until(in_flight, 60, "a pull in flight on /metrics", interval=0.05)
    wait_until(lambda: ferryd.settled(W2), 120, "wave w2 verified")
    assert max(p for p, _ in busy) <= 2 and max(s for _, s in busy) <= 2, busy
    assert all(s >= p for p, s in busy), busy
    text = scrape(ferryd)
    end = parse(text)
    msgs = [m for u in W1 + W2 for f in snapshot(sandbox, "new", u).folders.values()
            if f.selectable for m in f.messages.values()]
    on_new = len(msgs)
    assert on_new > 0
    assert value(end, "ferry_messages_copied_total") == on_new
    assert value(end, "ferry_bytes_copied_total") == sum(m.size for m in msgs)
    assert value(end, "ferry_folder_messages", server="new") == on_new
    started = value(end, "ferry_pulls_started_total")
    assert started == len(W1 + W2) + 2
    assert value(end, "ferry_pull_duration_seconds_count") == started
    assert total(end, "ferry_pulls_total") == started
    assert value(end, "ferry_pulls_total", result="ok") == len(W1 + W2)
    assert value(end, "ferry_verifications_total", result="pass") == len(W1 + W2)
    assert total(end, "ferry_users", state="verified") == len(W1 + W2)
    assert value(end, "ferry_queue_users") == 0
    assert value(end, "ferry_store_up") == 1
    assert value(end, "process_resident_memory_bytes") > 0
    # bounded labels: no user's name is a label value anywhere
    for (name, labels), _ in end.items():
        for k, v in labels:
            assert v not in W1 + W2 + [BAD], (name, labels)
    assert_no_secret(sandbox, "/metrics", text)

    # Prometheus' own checker accepts the exposition
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr

    # every ferryd series the Grafana dashboard queries exists
    exprs = grafana_exprs()
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        names |= {name + s for s in (("", "_bucket", "_sum", "_count") if kind == "histogram"
                                     else ("",))}
    used = {n for e in exprs for n in re.findall(r"\b((?:ferry|process)_[a-z_]+)", e)}
    assert used and used <= names, used - names


def stats_dump(sandbox):
    """doveadm stats dump on NEW -> {metric: {column: value}} (count and
    the sum of each field)."""
    out = sandbox.doveadm("new", "stats", "dump", "-f", "count sum").stdout
    rows = [l.split("\t") for l in out.splitlines() if l.strip()]
    head = rows[0]
    res = {}
    for r in rows[1:]:
        d = dict(zip(head, r))
        res.setdefault(d["metric_name"], {})[d["field"]] = d
    return res


def test_lazy_pulls_counted_by_dovecot_stats(sandbox):
    corpus.seed_old(sandbox, LAZY, corpus.folder_spec("Bulk", n=25, seed=99, gaps=2))
    # the first EXAMINE of each folder pulls it while the command waits
    new = snapshot(sandbox, "new", LAZY)
    msgs = [m for f in new.folders.values() if f.selectable for m in f.messages.values()]
    assert len(msgs) == 25
    stats = stats_dump(sandbox)
    pull = stats["ferry_pull"]
    assert int(pull["messages"]["sum"]) == len(msgs)
    assert int(pull["bytes"]["sum"]) == sum(m.size for m in msgs)
    assert int(pull["waited_usecs"]["count"]) >= 1
    assert int(pull["waited_usecs"]["sum"]) > 0
    assert "ferry_pull_failed" not in stats or int(stats["ferry_pull_failed"]["duration"]["count"]) == 0

    # a lazy pull that fails (NEW's imapc login to OLD is refused) is counted
    conn = sandbox.imap("new", BAD)
    try:
        typ, _ = conn.select("Bulk")
        assert typ == "NO"
    finally:
        conn.logout()
    failed = stats_dump(sandbox)["ferry_pull_failed"]
    assert int(list(failed.values())[0]["count"]) >= 1

    # Dovecot's own exporter publishes them under the names Grafana queries
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % STATS_PORT, timeout=30) as r:
        exported = parse("\n".join(l for l in r.read().decode().splitlines()
                                    if l != "# EOF"))
    assert value(exported, "dovecot_ferry_pull_total") == \
        int(stats_dump(sandbox)["ferry_pull"]["duration"]["count"])
    assert value(exported, "dovecot_ferry_pull_failed_total") >= 1
    used = {n for e in grafana_exprs() for n in re.findall(r"\b(dovecot_[a-z_]+)", e)}
    assert used and used <= {n for (n, _) in exported}, used


W3 = ["c1", "c2", "c3"]
ARTIFACTS = os.environ.get("FERRY_ARTIFACTS") or os.path.join(BUILD_DIR, "artifacts", "dashboard")


@pytest.mark.skipif(ASAN, reason="exercises no plugin or ferryd code under the sanitizer")
@pytest.mark.skipif(not chromium.available(), reason="Debian's chromium is not installed")
def test_dashboard_in_a_browser(sandbox, ferryd):
    """Runs after the migration of w1 and w2 above: a third wave is
    migrated while the page is open."""
    for i, user in enumerate(W3):
        corpus.seed_old(sandbox, user, corpus.folder_spec("Bulk", n=15, seed=50 + i, gaps=1))
    ferryd.import_users(W3, "w3")
    r = ferryd.ctl("report", "--wave", "w1", "--dns-changed", "2026-11-28T16:00",
                   "--note", "MX of example.com to NEW")
    assert "DNS change noted for wave w1" in r.stdout
    code, j = ferryd.api("POST", "/v1/report/dns", {"wave": "w1", "note": "x"}, token=VIEWER_TOKEN)
    assert code == 403, j
    shots = []

    def shot(b, name):
        shots.append(b.screenshot(os.path.join(ARTIFACTS, name + ".png")))

    with chromium.Chromium(os.path.join(sandbox.root, "chromium")) as b:
        b.goto("http://127.0.0.1:%d/dashboard?refresh=300#token=%s" % (ferryd.port, VIEWER_TOKEN))
        pct = 'document.querySelector(\'[data-wave-progress="w3"]\')?.dataset.pct'
        assert b.wait_js(pct + ' === "0"', 30, "wave w3 at 0% on the page")
        # the token left the address bar at once
        assert VIEWER_TOKEN not in b.js("location.href")
        shot(b, "1-before")

        ferryd.ctl("start", "--wave", "w3")
        seen = [0]

        def progressed():
            v = int(b.js(pct))
            if v != seen[-1]:
                seen.append(v)
            return v == 100
        wait_until(progressed, 120, "wave w3 at 100% on the page", interval=0.1)
        assert seen == sorted(seen) and seen[0] == 0 and seen[-1] == 100, seen
        print("\nwave w3 progress seen on the page: %s%%" % seen)
        b.wait_js("document.querySelector('#chart svg')?.dataset.points > 0", 30,
                  "the throughput chart")
        b.wait_js("document.querySelector('[data-eta=\"w3\"]').textContent === 'finished'", 30,
                  "w3's ETA")
        shot(b, "2-migrated")

        # failed users only, then the one failed user's page
        b.js("(() => { const s = document.getElementById('state-filter'); s.value = 'failed';"
             " s.dispatchEvent(new Event('input')); })()")
        rows = b.wait_js("(() => { const r = [...document.querySelectorAll('#users tbody tr')]"
                         ".map(t => t.dataset.user); return r.length === 1 && r; })()",
                         30, "the failed users")
        assert rows == [BAD]
        shot(b, "3-failed-users")
        b.js("document.querySelector('#users tr[data-user=\"%s\"]').click()" % BAD)
        b.wait_js("document.getElementById('user-name').textContent === '%s'" % BAD, 30,
                  "the user's page")
        err = b.wait_js("document.getElementById('user-error').textContent", 30, "its error")
        assert "Authentication failed" in err
        assert b.js("document.querySelectorAll('#user-log tbody tr').length") >= 2
        shot(b, "4-user")
        page_html = b.js("document.documentElement.outerHTML")

        # the report of w1, downloaded by the page
        b.js("location.hash = ''")
        b.wait_js("document.querySelector('a.report-csv[data-wave=\"w1\"]') !== null", 30,
                  "the report link")
        b.js("document.querySelector('a.report-csv[data-wave=\"w1\"]').click()")
        csv_path = wait_until(lambda: b.downloaded("ferry-report-w1.csv"), 30, "the report")
        page_html += b.js("document.documentElement.outerHTML")
        # no script error, no Content-Security-Policy violation, no failed load
        assert b.errors() == []

    import csv
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    users = {r["user"]: r for r in rows if r["record"] == "user"}
    assert set(users) == set(W1 + [BAD])
    assert users[BAD]["state"] == "failed" and "Authentication failed" in users[BAD]["last_error"]
    assert int(users[BAD]["errors"]) == 2
    for u in W1:
        assert users[u]["state"] == "verified" and users[u]["verify"] == "pass"
        assert users[u]["messages"] == users[u]["old_messages"] != "0"
    dns = [r for r in rows if r["record"] == "dns-change"]
    assert len(dns) == 1 and "MX of example.com to NEW" in dns[0]["detail"]
    assert dns[0]["time"].startswith("2026-11-28T")
    # ferryctl prints the same report
    with open(csv_path, newline="") as f:
        assert ferryd.ctl("report", "--wave", "w1").stdout == f.read().replace("\r\n", "\n")
    print("\nscreenshots: " + ", ".join(shots))

    # nothing the dashboard is served shows a secret
    assert_no_secret(sandbox, "the dashboard page", page_html)
    for path in ("/dashboard", "/dashboard.js", "/dashboard.css", "/v1/status",
                 "/v1/status?user=" + PWUSER, "/v1/log", "/v1/report?wave=w1&format=csv",
                 "/v1/report?wave=w1", "/v1/report", "/v1/throughput",
                 "/v1/check?user=%s&kind=verify" % PWUSER):
        code, body = ferryd.api("GET", path, token=VIEWER_TOKEN)
        assert code == 200, (path, body)
        assert_no_secret(sandbox, path, body if isinstance(body, str) else json.dumps(body))
