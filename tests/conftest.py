"""Fixtures shared by Ferry's tests.

A test module configures its sandbox with a module-level dict, e.g.
    SANDBOX_KWARGS = {"new_plugin": False, "batch_size": 50}
and, when its configuration needs the sandbox's root, a function
    def sandbox_prepare(sb): ...   (called before sb.start())
FERRY_BUILD_DIR overrides the build directory; FERRY_KEEP=1 keeps the
sandbox directory (it is always kept when a test of the module failed)."""
import ctypes
import os
import shutil
import subprocess
import tempfile

import pytest

from ferrytest.logs import LogWatch
from ferrytest.sandbox import BUILD_DIR, DOVEADM_MODULE_DIR, Sandbox


def _private_doveadm_module_dir():
    """Give this test run its own view of doveadm's compiled-in module dir.

    doveadm loads its plugins only from DOVEADM_MODULE_DIR; the sandbox
    links the build tree's doveadm plugin there. In a private mount
    namespace that link is seen only by this run and the servers it starts,
    so two checkouts tested side by side never load each other's plugin and
    the system directory is left untouched. Without the privilege for it
    the run falls back to the shared directory."""
    if os.environ.get("FERRY_SHARED_MODDIR") or not os.path.isdir(DOVEADM_MODULE_DIR):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x00020000) != 0:  # CLONE_NEWNS
        return
    if subprocess.run(["mount", "--make-rprivate", "/"], capture_output=True).returncode != 0:
        return
    private = tempfile.mkdtemp(prefix="ferry-doveadm-modules-")
    for name in os.listdir(DOVEADM_MODULE_DIR):
        src = os.path.join(DOVEADM_MODULE_DIR, name)
        # copies, not links: a link into the directory would point at the
        # private one once it is mounted over it; links are earlier runs'
        if os.path.isfile(src) and not os.path.islink(src):
            shutil.copy2(src, os.path.join(private, name))
    subprocess.run(["mount", "--bind", private, DOVEADM_MODULE_DIR], check=True)
    _private_moddir.append(private)


_private_moddir = []


def pytest_configure(config):
    _private_doveadm_module_dir()


def pytest_unconfigure(config):
    for d in _private_moddir:
        subprocess.run(["umount", DOVEADM_MODULE_DIR], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def sandbox(request):
    kwargs = dict(getattr(request.module, "SANDBOX_KWARGS", {}))
    kwargs.setdefault("build_dir", BUILD_DIR)
    sb = Sandbox(**kwargs)
    prepare = getattr(request.module, "sandbox_prepare", None)
    failed_before = request.session.testsfailed
    try:
        if prepare is not None:
            prepare(sb)
        sb.start()
        yield sb
    finally:
        sb.stop()
        sb.finish(request.session, failed_before)


@pytest.fixture
def old_log(sandbox):
    """LogWatch on OLD's log, marked at the start of the test:
    old_log.logins(user), old_log.body_counts(user) after old_log.settle(user)."""
    return LogWatch(sandbox, "old")


@pytest.fixture
def new_log(sandbox):
    return LogWatch(sandbox, "new")
