# make bench: Ferry against dsync, mbsync (and imapsync if it can run) on one
# seeded corpus, in one run (issue 7, docs/bench.md). Results land in
# bench/results/latest.{json,md} and are printed.
#   make bench                         default corpus (BENCH_MESSAGES=20000)
#   make bench BENCH_MESSAGES=5000     another size
#   make bench-smoke                   the small mode (tests/test_bench_smoke.py runs it too)
#   make bench DOVECOT=2.4             OLD and NEW on Dovecot 2.4.1 (the trixie root)
# BENCH_ARGS passes more options to bench/bench.py (e.g. --set ferry_batch_size=1000,
# --perf: perf record -g the Ferry full pass; needs Debian linux-perf).

BENCH_MESSAGES ?= 20000
BENCH_ARGS     ?=
DEB_PACKAGES   += isync time

.PHONY: bench bench-smoke
bench: deps
	$(MAKE) all $(if $(filter 2.3,$(DOVECOT)),,$(BUILD24_TARGET))
	$(DOVECOT_ENV) $(PYTHON) bench/bench.py --messages $(BENCH_MESSAGES) $(BENCH_ARGS)

bench-smoke: deps
	$(MAKE) all $(if $(filter 2.3,$(DOVECOT)),,$(BUILD24_TARGET))
	$(DOVECOT_ENV) $(PYTHON) bench/bench.py --small --out $(BUILD)/bench-smoke $(BENCH_ARGS)

# make bench-scale: ferryd alone at 1k / 10k / 100k queued users, up to 1,000
# pulls in flight against a fake instant doveadm (bench/scale.py, docs/bench.md
# "ferryd at scale"); not part of make check. SCALE_ARGS e.g. --users 1000 --window 10
SCALE_ARGS ?=
.PHONY: bench-scale
bench-scale:
	$(MAKE) all
	$(PYTHON) bench/scale.py $(SCALE_ARGS)
