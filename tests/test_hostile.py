"""A hostile old server (issue 8), played by ferrytest/hostile.py, a scripted
server that says it is scripted in its greeting. NEW's imapc is pointed at
it per user (userdb_imapc_port). For each scenario, `doveadm ferry pull`:

  - writes nothing outside the user's own NEW home (the sandbox tree is
    compared before/after; no name with ESCAPE_MARK anywhere else; no
    symlink in the home),
  - stays under MEMORY_BOUND_MB of peak RSS (wait4 of the doveadm process),
  - ends within DEADLINE with a clear error (exit code != 0, a reason on
    stderr); for hostile folder names: those names are skipped, each with a
    warning naming it and why, and the rest of the user is migrated,
  - does not crash (no signal, no Panic/Fatal/killed in NEW's log).

The same scenarios against ferryd's own client (`ferry-imapcheck
preflight`): no crash, bounded memory, an error where the server breaks
the protocol."""
import os
import re
import subprocess
import time

import pytest

from faults.campaign import doveadm_env
from ferrytest.hostile import ESCAPE_MARK, SCENARIOS, STREAM_CAP, HostileServer
from ferrytest.sandbox import BUILD_DIR, Sandbox

MEMORY_BOUND_MB = 128  # the server streams STREAM_CAP (256 MiB) where it can
# ferryd's client keeps the folder list of a preflight in memory: 100,000
# folders measured at about 100 MB
CLIENT_MEMORY_BOUND_MB = 192
DEADLINE = 45  # seconds for one pull
CRASH = re.compile(r"Panic:|Fatal:|killed with signal|core dumped|AddressSanitizer")

# Measured on Dovecot 2.3.19.1 (docs/security.md, "Hostile old server");
# reported to the lead. Not weakened: strict xfail with the evidence.
# (A literal claiming 1 TiB and an endless line grew doveadm to 518 MB until
# the plugin capped imapc_max_line_length for its old-server session; now
# about 73 MB and a clear failure.)
XFAIL = {}  # (scenario, aspect) -> reason, for a measured and reported gap


def _user(scenario):
    return "h-" + scenario


@pytest.fixture(scope="module")
def hostile():
    servers = {s: HostileServer(s).start() for s in SCENARIOS}
    sb = Sandbox(users=tuple(_user(s) for s in SCENARIOS), new_userdb_extra={
        # the user logs in as itself (an empty override reads as "yes"): the
        # scripted server shows every login the same mailbox, which the
        # identity check of a master login refuses (test_identity.py)
        _user(s): "userdb_imapc_port=%d userdb_imapc_cmd_timeout=3s "
                  "userdb_imapc_connection_retry_count=0 userdb_imapc_master_user=%s"
                  % (srv.port, _user(s))
        for s, srv in servers.items()})
    try:
        sb.start()
        yield sb, servers
    finally:
        sb.stop()
        for srv in servers.values():
            srv.stop()
        import shutil
        shutil.rmtree(sb.root, ignore_errors=True)


def _tree(root, skip):
    out = set()
    for d, dirs, files in os.walk(root):
        if d.startswith(skip):
            dirs[:] = []
            continue
        for n in dirs + files:
            p = os.path.join(d, n)
            if not p.startswith(skip):
                out.add(p)
    return out


def _escapes(sb, home):
    """Names with ESCAPE_MARK outside the user's home (sandbox, /tmp, /)."""
    found = []
    for p in _tree(sb.root, home):
        if ESCAPE_MARK in p:
            found.append(p)
    for base in ("/tmp", "/", "/root", "/var/tmp", os.path.dirname(sb.root)):
        try:
            for n in os.listdir(base):
                if ESCAPE_MARK in n:
                    found.append(os.path.join(base, n))
        except OSError:
            pass
    return found


def _popen_wait4(cmd, env, timeout, stdin=None):
    """Run cmd; -> (exit code or 'timeout', stdout, stderr, peak RSS MB, s)."""
    t0 = time.monotonic()
    outf = open(os.devnull, "rb")
    import tempfile
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE if stdin else outf,
                             stdout=out, stderr=err)
        if stdin:
            p.stdin.write(stdin)
            p.stdin.close()
        code, hwm = None, 0
        deadline = time.monotonic() + timeout
        while code is None:
            # VmHWM: the peak RSS of the program since its exec (wait4's
            # ru_maxrss would include the forked copy of this Python)
            try:
                with open("/proc/%d/status" % p.pid) as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            hwm = max(hwm, int(line.split()[1]) // 1024)
            except (OSError, ValueError):
                pass
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                code = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                p.kill()
                os.wait4(p.pid, 0)
                code = "timeout"
                break
            time.sleep(0.02)  # polling the child's exit with a deadline
        rss = hwm
        p.returncode = code if isinstance(code, int) else -9
        outf.close()
        out.seek(0)
        err.seek(0)
        return (code, out.read().decode(errors="replace"), err.read().decode(errors="replace"),
                rss, time.monotonic() - t0)


@pytest.fixture(scope="module")
def pulls(hostile):
    """Each scenario's pull, once: scenario -> result dict."""
    sb, servers = hostile
    results = {}
    for s in SCENARIOS:
        user = _user(s)
        home = sb.home("new", user)
        before = _tree(sb.root, home)
        escapes_before = set(_escapes(sb, home))  # other scenarios' own homes
        off = sb.log_size("new")
        code, out, err, rss, secs = _popen_wait4(
            sb.doveadm_cmd("new", "ferry", "pull", "-u", user), doveadm_env(sb), DEADLINE)
        after = _tree(sb.root, home)
        new_outside = sorted(p for p in after - before
                             if not p.startswith(os.path.join(sb.dir("new"), "run"))
                             and not p.startswith(os.path.join(sb.dir("old"), "run"))
                             and "/sanitizer/" not in p)
        links = [os.path.join(d, n) for d, ds, fs in os.walk(home) for n in ds + fs
                 if os.path.islink(os.path.join(d, n))]
        log = sb.log_text("new", off)
        results[s] = dict(code=code, out=out, err=err, rss=rss, seconds=secs,
                          outside=new_outside, links=links,
                          escapes=[p for p in _escapes(sb, home) if p not in escapes_before],
                          crash=[ln for ln in (log + err).splitlines() if CRASH.search(ln)],
                          streamed=servers[s].streamed)
        print("\n%s: exit %s in %.1fs, peak RSS %d MB, streamed %d, stderr: %s"
              % (s, code, secs, rss, servers[s].streamed, err.strip().splitlines()[-1:]))
    return results


def _mark(scenario, aspect):
    reason = XFAIL.get((scenario, aspect))
    if reason:
        return pytest.param(scenario, marks=pytest.mark.xfail(strict=True, reason=reason))
    return scenario


def test_greeting_says_scripted(hostile):
    import socket
    _, servers = hostile
    with socket.create_connection(("127.0.0.1", servers["deep"].port), 5) as s:
        assert b"SCRIPTED test server" in s.makefile("rb").readline()


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_no_write_outside_home(pulls, scenario):
    r = pulls[scenario]
    assert r["outside"] == [] and r["escapes"] == [] and r["links"] == [], r


# ASan's quarantine and shadow memory make RSS no measure of the heap: the
# plain run checks the bounds
ASAN = os.environ.get("FERRY_ASAN") == "1"


@pytest.mark.skipif(ASAN, reason="RSS is no heap measure under ASan; the plain run checks it")
@pytest.mark.parametrize("scenario", [_mark(s, "memory") for s in SCENARIOS])
def test_memory_bounded(pulls, scenario):
    r = pulls[scenario]
    assert r["rss"] < MEMORY_BOUND_MB, "peak RSS %d MB (streamed %d of %d)" % (
        r["rss"], r["streamed"], STREAM_CAP)


NAME_SCENARIOS = ("names-slash", "names-dot")


@pytest.mark.parametrize("scenario", NAME_SCENARIOS)
def test_bad_names_skipped_with_reason_rest_migrated(pulls, scenario):
    """A folder name this server refuses (.., ., a leading separator, '~',
    too long) or one with control characters is skipped with a warning
    naming it; every other folder is migrated and the pull succeeds."""
    r = pulls[scenario]
    assert r["code"] == 0, r["err"]
    tree = re.search(r"event=tree folders=(\d+) skipped=(\d+)", r["err"])
    assert tree, r["err"]
    made, skipped = int(tree.group(1)), int(tree.group(2))
    assert made + skipped == len(HostileServer(scenario).folders()), r["err"]
    assert len(re.findall(r"Warning: ferry: folder=.* event=skipped: \S", r["err"])) == skipped
    assert "folder=INBOX event=complete" in r["err"]


@pytest.mark.parametrize("scenario", [_mark(s, "error") for s in SCENARIOS
                                      if s not in NAME_SCENARIOS])
def test_clear_error(pulls, scenario):
    r = pulls[scenario]
    assert r["code"] != "timeout", "still running after %ds" % DEADLINE
    assert r["code"] != 0, r["out"]
    assert "Error:" in r["err"] or "failed" in r["out"], (r["out"], r["err"])


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_no_crash(pulls, scenario):
    r = pulls[scenario]
    assert r["code"] == "timeout" or r["code"] >= 0, "killed by signal %s" % r["code"]
    assert r["crash"] == [], r["crash"]


# ---- ferryd's own IMAP client ---------------------------------------------------

@pytest.mark.parametrize("scenario", SCENARIOS)
def test_ferryd_client_preflight(hostile, scenario):
    _, servers = hostile
    cmd = [os.path.join(BUILD_DIR, "ferry-imapcheck"), "preflight", "--user", "u",
           "--old-host", "127.0.0.1", "--old-port", str(servers[scenario].port),
           "--credentials", "-", "--timeout-ms", "3000", "--text"]
    code, out, err, rss, secs = _popen_wait4(cmd, dict(os.environ), DEADLINE, b"old=pw\n")
    print("\npreflight %s: exit %s in %.1fs, peak RSS %d MB: %s"
          % (scenario, code, secs, rss, (out.strip().splitlines() or [""])[0]))
    assert code in (0, 1, 2), "crashed or hung: %s %s" % (code, err[-500:])
    assert ASAN or rss < CLIENT_MEMORY_BOUND_MB
    if scenario == "endless-line":  # a protocol violation: a clear failure
        assert code != 0 and "parse error" in out + err, out + err
    if scenario == "huge-literal":  # only sizes are read: the claim is shown
        assert "1099511627776" in out, out


# ---- a size the server under-reports ---------------------------------------------

def test_under_reported_size_fails_the_folder_naming_the_message(hostile, pulls):
    """short-size: INBOX's large message (fetched in ranges) and Small's
    small one (fetched whole) have an RFC822.SIZE smaller than the body the
    server sends. Each folder fails with an error naming the folder and the
    UID, nothing of those messages is saved, and the user's other folder is
    migrated (a failed folder does not stop the others)."""
    sb, _ = hostile
    user = _user("short-size")
    r = pulls["short-size"]
    assert r["code"] != 0, r["out"]
    from ferrytest.hostile import SHORT_ANNOUNCED, SHORT_BODY_SIZE
    failed = re.search(r"ferry: folder=INBOX event=failed copied=0 error=(.*)", r["err"])
    assert failed, r["err"]
    assert ("UID 1: the old server announced RFC822.SIZE %d but sent at least"
            % SHORT_ANNOUNCED) in failed.group(1), failed.group(1)
    small = re.search(r"ferry: folder=Small event=failed copied=0 error=(.*)", r["err"])
    assert small and "UID 1: the old server announced RFC822.SIZE" in small.group(1), r["err"]
    rows = {}
    for line in sb.doveadm("new", "-f", "tab", "ferry", "status", "-u", user).stdout.splitlines()[1:]:
        f = line.split("\t")
        rows[f[0]] = f
    assert rows["INBOX"][1] in ("new", "partial") and rows["INBOX"][3] == "0", rows
    assert rows["Small"][1] in ("new", "partial") and rows["Small"][3] == "0", rows
    assert rows["Other"][1] == "complete" and rows["Other"][3] == "1", rows
    # nothing truncated anywhere in the user's mail: no file holds its subject
    home = sb.home("new", user)
    for d, _, files in os.walk(home):
        for n in files:
            with open(os.path.join(d, n), "rb") as fh:
                assert b"Subject: under-reported" not in fh.read(), os.path.join(d, n)
    got = sb.doveadm("new", "fetch", "-u", user, "text", "mailbox", "Other", "all").stdout
    assert "Message-ID: <other-1@hostile>" in got and "small body" in got, got
    assert SHORT_BODY_SIZE > SHORT_ANNOUNCED
