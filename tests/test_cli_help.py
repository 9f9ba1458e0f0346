"""ferryctl's help and command-line errors (issue 13; ferryctl(8)): help per
command (`ferryctl help CMD`, `ferryctl CMD --help`), needing neither a
configuration nor a running ferryd; a word a command does not understand
is named in the error with that command's usage, before any configuration
is read."""
import os
import subprocess

import pytest

from ferrytest.sandbox import BUILD_DIR

# tests/README.md, "Dovecot 2.3 and 2.4"
DOVECOT_ONCE = "ferryctl's help and argument errors involve no Dovecot"

FERRYCTL = os.path.join(BUILD_DIR, "ferryctl")
COMMANDS = ["import", "wave", "start", "pause", "resume", "sync", "status", "log", "cutover",
            "rollback", "route", "preflight", "verify", "endpoint"]


def ctl(*args):
    # no configuration anywhere: whatever needs one fails loudly
    env = dict(os.environ, FERRYD_CONF="/nonexistent/ferryd.conf")
    env.pop("FERRY_API", None)
    env.pop("FERRY_TOKEN_FILE", None)
    return subprocess.run([FERRYCTL] + list(args), capture_output=True, text=True, env=env,
                          timeout=30)


def test_help_lists_every_command():
    r = ctl("help")
    assert r.returncode == 0, r.stderr
    listed = {l.split()[0] for l in r.stdout.splitlines()[1:] if l.startswith("  ")}
    assert listed >= set(COMMANDS), listed


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help_per_command(cmd):
    a, b = ctl("help", cmd), ctl(cmd, "--help")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert a.stdout == b.stdout
    assert ("ferryctl [OPTIONS] %s" % cmd) in a.stdout and len(a.stdout.splitlines()) >= 3


@pytest.mark.parametrize("args,word", [
    (("sync", "alice", "--bogus"), "--bogus"),
    (("status", "--wave"), "--wave"),                  # missing value
    (("cutover", "--wave", "w1", "--frce"), "--frce"),
    (("log", "--usr", "alice"), "--usr"),
    (("route", "config", "--endpoint"), "--endpoint"),
    (("preflight", "alice", "bob"), "bob"),            # one user only
])
def test_unknown_word_is_named(args, word):
    r = ctl(*args)
    assert r.returncode == 2, r.stdout + r.stderr
    first = r.stderr.splitlines()[0]
    assert first.startswith("ferryctl %s: \"%s\"" % (args[0], word)), r.stderr
    assert "ferryctl [OPTIONS] %s" % args[0] in r.stderr
    assert "nonexistent" not in r.stderr  # the command line is judged before the configuration


def test_unknown_command_and_global_option():
    r = ctl("frobnicate")
    assert r.returncode == 2 and 'unknown command "frobnicate"' in r.stderr
    r = ctl("--tokenfile", "x", "status")
    assert r.returncode == 2 and '"--tokenfile": unknown option' in r.stderr
    r = ctl("help", "frobnicate")
    assert r.returncode == 2 and 'unknown command "frobnicate"' in r.stderr
