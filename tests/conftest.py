"""Fixtures shared by Ferry's tests.

A test module configures its sandbox with a module-level dict, e.g.
    SANDBOX_KWARGS = {"new_plugin": False, "batch_size": 50}
and, when its configuration needs the sandbox's root, a function
    def sandbox_prepare(sb): ...   (called before sb.start())
FERRY_BUILD_DIR overrides the build directory; FERRY_KEEP=1 keeps the
sandbox directory (it is always kept when a test of the module failed)."""
import os
import shutil

import pytest

from ferrytest.logs import LogWatch
from ferrytest.sandbox import BUILD_DIR, Sandbox


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
        reports = sb.sanitizer_reports()
        if reports:  # fails the module's last test: a sanitizer found something
            print("\n".join(reports))
            pytest.fail("sanitizer reports in %s" % sb.sanitizer_dir(), pytrace=False)
        if request.session.testsfailed == failed_before and not os.environ.get("FERRY_KEEP"):
            shutil.rmtree(sb.root, ignore_errors=True)
        else:
            print("\nsandbox kept: %s" % sb.root)


@pytest.fixture
def old_log(sandbox):
    """LogWatch on OLD's log, marked at the start of the test:
    old_log.logins(user), old_log.body_counts(user) after old_log.settle(user)."""
    return LogWatch(sandbox, "old")


@pytest.fixture
def new_log(sandbox):
    return LogWatch(sandbox, "new")
