# Watching a migration (docs/ferryd.md, "Metrics" and "Dashboard"): the
# tools tests/test_observe.py checks ferryd's output with. promtool (from
# Debian's prometheus package) validates /metrics.
DEB_PACKAGES += prometheus

# the dashboard's files are built into ferryd (service/dashboard.c: .incbin)
DASHBOARD_ASSETS = $(wildcard service/dashboard/*)
$(BUILD)/service/dashboard.o: $(DASHBOARD_ASSETS)
# the browser test: Debian's headless Chromium driven over the DevTools
# protocol from Python (tests/ferrytest/chromium.py)
DEB_PACKAGES += chromium python3-websocket
