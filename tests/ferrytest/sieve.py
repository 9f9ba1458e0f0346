"""Helpers of the Sieve tests (test_sieve*.py): the folder map the plugin
reports, ferry-imapcheck sieve between two ManageSieve servers, and NEW's
Pigeonhole storage read straight from disk (~/sieve, ~/.dovecot.sieve)."""
import os
import subprocess

from .sandbox import BUILD_DIR, MASTER_PASSWORD, MASTER_USER

IMAPCHECK = os.path.join(BUILD_DIR, "ferry-imapcheck")


def folder_map(sb, user):
    """old name -> new name, as the plugin reports them"""
    out = sb.doveadm("new", "-f", "tab", "ferry", "status", "-u", user).stdout.splitlines()
    head = out[0].split("\t")
    rows = [dict(zip(head, line.split("\t"))) for line in out[1:]]
    return {r["old_folder"]: r["folder"] for r in rows if r.get("old_folder") and r.get("folder")}


def migrate(sb, user, old_port=None, old_prefix=None, extra=()):
    """ferry-imapcheck sieve: CompletedProcess (JSON report on stdout)"""
    with open(os.path.join(sb.root, "map-" + user), "w") as f:
        for old, new in folder_map(sb, user).items():
            f.write("%s\t%s\n" % (old, new))
    args = [IMAPCHECK, "sieve", "--user", user, "--timeout-ms", "20000",
            "--map", os.path.join(sb.root, "map-" + user), "--credentials", "-"]
    for side in ("old", "new"):
        port = old_port if side == "old" and old_port else sb.port(side, "sieve")
        args += ["--%s-host" % side, "127.0.0.1", "--%s-port" % side, str(port),
                 "--%s-auth" % side, "plain", "--%s-auth-user" % side, MASTER_USER]
    if old_prefix:
        args += ["--old-prefix", old_prefix]
    args += list(extra)
    r = subprocess.run(args, input="old=%s\nnew=%s\n" % (MASTER_PASSWORD, MASTER_PASSWORD),
                       capture_output=True, text=True, timeout=120)
    assert MASTER_PASSWORD not in r.stdout + r.stderr
    return r


def new_scripts(sb, user):
    d = os.path.join(sb.home("new", user), "sieve")
    return {n[:-6]: open(os.path.join(d, n)).read() for n in os.listdir(d) if n.endswith(".sieve")}


def new_active(sb, user):
    link = os.path.join(sb.home("new", user), ".dovecot.sieve")
    return os.path.basename(os.readlink(link))[:-6] if os.path.islink(link) else None
