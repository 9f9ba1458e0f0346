# Dovecot 2.4 (Debian 13): a trixie root with Dovecot 2.4.1 and a compiler,
# made once under /var/cache/ferry-test/trixie (FERRY_TRIXIE_ROOT) and reused.
TRIXIE_ROOT ?= $(or $(FERRY_TRIXIE_ROOT),/var/cache/ferry-test/trixie)

.PHONY: trixie-root
trixie-root:
	@FERRY_TRIXIE_ROOT=$(TRIXIE_ROOT) bash scripts/trixie-root.sh >/dev/null
