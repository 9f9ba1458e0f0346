"""Which Dovecot serves a sandbox instance, and how to run it.

FERRY_DOVECOT selects the pass (tests/README.md, "Dovecot 2.3 and 2.4"):
    2.3    OLD and NEW are the host's Dovecot 2.3 (the default)
    2.4    OLD and NEW are Dovecot 2.4.1 from a Debian 13 root
    mixed  OLD is the host's 2.3, NEW is 2.4 (the real migration direction)

Dovecot 2.4 runs from the root that scripts/trixie-root.sh makes once (and
reuses): `chroot ROOT /usr/sbin/dovecot -c CONF`. Inside this run's private
mount namespace (private_namespace(), entered by conftest.py and by the
CLIs), the temp dir and the checkout are bind-mounted into the root at
their own paths, so a config names the same files inside and outside, and
the root's doveadm and settings module dirs get private copies where the
build's modules are linked (nothing in the shared root is changed).

Configs are written in 2.3 syntax everywhere (the harness and the tests'
extras); conf24.py rewrites them for a 2.4 instance."""
import ctypes
import os
import shutil
import subprocess
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SELECT = os.environ.get("FERRY_DOVECOT", "2.3")
SELECTIONS = ("2.3", "2.4", "mixed")
if SELECT not in SELECTIONS:
    raise SystemExit("FERRY_DOVECOT=%s: one of %s" % (SELECT, ", ".join(SELECTIONS)))
TRIXIE_SCRIPT = os.path.join(REPO, "scripts", "trixie-root.sh")
MODULE_DIR = "/usr/lib/dovecot/modules"
DOVEADM_MODULE_DIR = MODULE_DIR + "/doveadm"
SETTINGS_MODULE_DIR = MODULE_DIR + "/settings"


class DovecotError(RuntimeError):
    pass


def version(inst, select=None):
    """'2.3' or '2.4': the Dovecot that runs instance inst ('old'/'new')."""
    select = select or SELECT
    if select == "mixed":
        return "2.4" if inst == "new" else "2.3"
    return select


def uses_24(select=None):
    return "2.4" in (version("old", select), version("new", select))


# ---- the private mount namespace ------------------------------------------------
_ns = {"private": False, "moddirs": [], "root24": None}


def private_namespace():
    """Enter a mount namespace of this process's own (once); False when it
    is not allowed (then mounts would be seen by the whole machine)."""
    if _ns["private"]:
        return True
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x00020000) != 0:  # CLONE_NEWNS
        return False
    if subprocess.run(["mount", "--make-rprivate", "/"], capture_output=True).returncode != 0:
        return False
    _ns["private"] = True
    return True


def private_copy(directory):
    """Mount a private copy of directory's plain files over it (this
    namespace only): links made there later are this run's alone.
    Copies, not links: a link into the directory would point at the copy
    once it is mounted; links found there are earlier runs'."""
    private = tempfile.mkdtemp(prefix="ferry-modules-")
    os.chmod(private, 0o755)
    if os.path.isdir(directory):
        for name in os.listdir(directory):
            src = os.path.join(directory, name)
            if os.path.isfile(src) and not os.path.islink(src):
                shutil.copy2(src, os.path.join(private, name))
    else:
        os.makedirs(directory)
    subprocess.run(["mount", "--bind", private, directory], check=True)
    _ns["moddirs"].append((directory, private))


def release():
    """Unmount the private copies (end of a run)."""
    while _ns["moddirs"]:
        directory, private = _ns["moddirs"].pop()
        subprocess.run(["umount", "-l", directory], capture_output=True)
        shutil.rmtree(private, ignore_errors=True)


# ---- the Dovecot 2.4 root ----------------------------------------------------------
def root24():
    """Path of the Debian 13 root with Dovecot 2.4, made on first use and
    prepared for this namespace (bind mounts, private module dirs)."""
    if _ns["root24"]:
        return _ns["root24"]
    if not os.path.exists(TRIXIE_SCRIPT):
        raise DovecotError("%s is missing" % TRIXIE_SCRIPT)
    if not private_namespace():
        raise DovecotError("Dovecot 2.4 runs only in a private mount namespace "
                           "(unshare refused: not root?)")
    r = subprocess.run(["bash", TRIXIE_SCRIPT], capture_output=True, text=True)
    if r.returncode != 0:
        raise DovecotError("scripts/trixie-root.sh failed: %s" % r.stderr.strip()[-2000:])
    root = r.stdout.strip().splitlines()[-1]
    binds = [os.path.realpath(tempfile.gettempdir()), REPO]
    if os.path.realpath(REPO) != REPO:
        binds.append(os.path.realpath(REPO))
    for path in binds + ["/dev"]:
        _bind(path, root + path)
    proc = os.path.join(root, "proc")
    if not os.path.ismount(proc):
        subprocess.run(["mount", "-t", "proc", "proc", proc], check=True)
    for d in (DOVEADM_MODULE_DIR, SETTINGS_MODULE_DIR):
        private_copy(root + d)
    _ns["root24"] = root
    return root


def _bind(src, dst):
    """src at dst too, as peers (this namespace only): what is mounted under
    src later (a test's tmpfs home) is seen at dst as well."""
    if os.path.ismount(dst):
        return
    os.makedirs(dst, exist_ok=True)
    if not os.path.ismount(src):
        subprocess.run(["mount", "--rbind", src, src], check=True)
    subprocess.run(["mount", "--make-shared", src], check=True)
    subprocess.run(["mount", "--rbind", src, dst], check=True)


def bind(path):
    """Make path (outside the temp dir and the checkout) visible in the 2.4
    root at the same path, e.g. a build dir elsewhere."""
    root = root24()
    if not os.path.exists(root + path):
        _bind(path, root + path)


def command(ver, argv):
    """argv (a Dovecot binary and its arguments) for version ver."""
    if ver == "2.3":
        return list(argv)
    prog = argv[0]
    if "/" not in prog:
        prog = ("/usr/sbin/" if prog == "dovecot" else "/usr/bin/") + prog
    return ["chroot", root24(), prog] + list(argv[1:])


def module_dirs(ver):
    """(doveadm module dir, settings module dir or None) as seen from the
    host, where a sandbox links the build's modules."""
    if ver == "2.3":
        return DOVEADM_MODULE_DIR, None
    root = root24()
    return root + DOVEADM_MODULE_DIR, root + SETTINGS_MODULE_DIR


def host_path(ver, path):
    """A path of that version's file system as seen from the host."""
    return path if ver == "2.3" else root24() + path


def version_string(ver):
    return subprocess.run(command(ver, ["dovecot", "--version"]), capture_output=True,
                          text=True).stdout.strip()
