"""Fixtures shared by Ferry's tests.

A test module configures its sandbox with a module-level dict, e.g.
    SANDBOX_KWARGS = {"new_plugin": False, "batch_size": 50}
and, when its configuration needs the sandbox's root, a function
    def sandbox_prepare(sb): ...   (called before sb.start())
It runs its ferryd on each store backend with
    FERRY_STORES = ("sqlite", "pgsql")
(the whole module, with a sandbox of its own, once per backend; pgsql is a
PostgreSQL 15 the session starts: ferrytest.pgsql); the 2.4, mixed and
sanitizer passes run the first backend only (the sanitizers see the
PostgreSQL store in its own modules, test_pgsql*.py). A module the
sanitizer pass leaves out says why with NOT_UNDER_SANITIZERS = "why".
FERRY_BUILD_DIR overrides the build directory; FERRY_KEEP=1 keeps the
sandbox directory (it is always kept when a test of the module failed)."""
import os

import pytest

from ferrytest import dovecot
from ferrytest import pgsql
from ferrytest.logs import LogWatch
from ferrytest.sandbox import ASAN, DOVEADM_MODULE_DIR, PLUGIN_DIR, Sandbox


def _private_doveadm_module_dir():
    """Give this test run its own view of doveadm's compiled-in module dir.

    doveadm loads its plugins only from DOVEADM_MODULE_DIR; the sandbox
    links the build tree's doveadm plugin there. In a private mount
    namespace that link is seen only by this run and the servers it starts,
    so two checkouts tested side by side never load each other's plugin and
    the system directory is left untouched. Without the privilege for it
    the run falls back to the shared directory (2.3 only: Dovecot 2.4 runs
    only in a private namespace, ferrytest/dovecot.py)."""
    if os.environ.get("FERRY_SHARED_MODDIR") or not os.path.isdir(DOVEADM_MODULE_DIR):
        return
    if dovecot.private_namespace():
        dovecot.private_copy(DOVEADM_MODULE_DIR)


def pytest_configure(config):
    _private_doveadm_module_dir()


def pytest_unconfigure(config):
    dovecot.release()


def pytest_collection_modifyitems(config, items):
    """A module that does not involve Dovecot (or only its 2.3 packaging)
    says so with DOVECOT_ONCE = "why": it runs in the 2.3 pass only
    (tests/README.md, "Dovecot 2.3 and 2.4"); one the sanitizer pass leaves
    out, with NOT_UNDER_SANITIZERS = "why"."""
    skips = []  # (module attribute, what the skip's reason says first)
    if ASAN:
        skips.append(("NOT_UNDER_SANITIZERS", "not in the sanitizer pass: "))
    if dovecot.SELECT != "2.3":
        skips.append(("DOVECOT_ONCE", "runs in the 2.3 pass only (FERRY_DOVECOT=%s): "
                      % dovecot.SELECT))
    for item in items:
        for attr, prefix in skips:
            why = getattr(item.module, attr, None)
            if why:
                item.add_marker(pytest.mark.skip(reason=prefix + why))
                break


def pytest_report_header(config):
    return "Dovecot: FERRY_DOVECOT=%s (OLD %s, NEW %s)" % (
        dovecot.SELECT, dovecot.version("old"), dovecot.version("new"))


def pytest_generate_tests(metafunc):
    stores = getattr(metafunc.module, "FERRY_STORES", None)
    if stores and (dovecot.SELECT != "2.3" or ASAN):
        # the store is ferryd's, the same whatever the Dovecot: its other
        # backends run in the plain 2.3 pass only; under the sanitizers the
        # PostgreSQL store runs in its own modules (test_pgsql*.py), for
        # the time budget of .ci/run (tests/README.md)
        stores = stores[:1]
    if stores and "ferry_store" in metafunc.fixturenames:
        metafunc.parametrize("ferry_store", stores, indirect=True, scope="module")


@pytest.fixture(scope="session")
def pg_server():
    """The session's PostgreSQL (started on first use, stopped by PID)."""
    why = pgsql.available()
    if why:
        pytest.skip(why)
    pg = pgsql.PgServer().start()
    yield pg
    pg.stop()


@pytest.fixture(scope="module")
def ferry_store(request):
    """The store backend of the module's ferryd: FERRY_STORES parametrizes
    it; sqlite otherwise."""
    return getattr(request, "param", "sqlite")


@pytest.fixture(scope="module")
def sandbox(request, ferry_store):
    kwargs = dict(getattr(request.module, "SANDBOX_KWARGS", {}))
    kwargs.setdefault("build_dir", PLUGIN_DIR)
    sb = Sandbox(**kwargs)
    # Ferryd(sb) takes its store from here (ferrytest.ferryd)
    sb.ferryd_store = ferry_store
    sb.pg = request.getfixturevalue("pg_server") if ferry_store == "pgsql" else None
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
