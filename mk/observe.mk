# Watching a migration (docs/ferryd.md, "Metrics" and "Dashboard"): the
# tools tests/test_observe.py checks ferryd's output with. promtool (from
# Debian's prometheus package) validates /metrics.
DEB_PACKAGES += prometheus
