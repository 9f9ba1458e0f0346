# Dovecot 2.4 (Debian 13): a trixie root with Dovecot 2.4.1 and a compiler,
# made once under /var/cache/ferry-test/trixie (FERRY_TRIXIE_ROOT) and reused.
#   make trixie-root      the root (scripts/trixie-root.sh)
#   make plugin24         the plugin, doveadm plugin and settings module
#   make DOVECOT=2.4      built in that root with its gcc and 2.4.1 headers,
#                         into build-24/ (BUILD24); SANITIZE is passed on
# The tree is bind-mounted at its own path inside the root, in a private
# mount namespace (unshare -m): nothing stays mounted afterwards.
TRIXIE_ROOT ?= $(or $(FERRY_TRIXIE_ROOT),/var/cache/ferry-test/trixie)
BUILD24     ?= build-24

.PHONY: trixie-root plugin24 plugin-24
trixie-root:
	@FERRY_TRIXIE_ROOT=$(TRIXIE_ROOT) bash scripts/trixie-root.sh >/dev/null

plugin24: trixie-root
	unshare -m sh -ec 'mount --make-rprivate /; \
		mkdir -p "$(TRIXIE_ROOT)$(CURDIR)"; \
		mount --bind "$(CURDIR)" "$(TRIXIE_ROOT)$(CURDIR)"; \
		exec chroot "$(TRIXIE_ROOT)" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
			make -C "$(CURDIR)" -j2 BUILD=$(BUILD24) PLUGIN_RPATH= \
			SANITIZE="$(SANITIZE)" plugin'

# the name the check-24/demo/bench rules ask for (BUILD24_TARGET)
plugin-24: plugin24

# `make DOVECOT=2.4` on a 2.3 host: the 2.4 build
ifeq ($(DOVECOT),2.4)
ifneq ($(DOVECOT_MINOR),4)
.DEFAULT_GOAL := plugin24
endif
endif
