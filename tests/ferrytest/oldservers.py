"""The non-Dovecot OLD servers by name, for tests parametrized over them:
"cyrus-dot" / "cyrus-slash" (Cyrus 3.6, '.' or '/' hierarchy separator)
and "courier" (Courier-IMAP 5.0). A test skips only when their packages
cannot be fetched (ferrytest.unpack)."""
import pytest

from . import courier, cyrus, unpack

KINDS = ["cyrus-dot", "cyrus-slash", "courier"]


def make(kind, **kwargs):
    """An unstarted server of `kind` (kwargs for its class, e.g. users),
    or pytest.skip when its packages cannot be fetched."""
    module = cyrus if kind.startswith("cyrus") else courier
    try:
        module.ensure_installed()
    except unpack.Unavailable as e:
        pytest.skip("%s packages cannot be fetched: %s" % (kind, e))
    if module is cyrus:
        return cyrus.Cyrus(unixhierarchysep=kind == "cyrus-slash", **kwargs)
    return courier.Courier(**kwargs)
