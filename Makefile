# Ferry: Dovecot plugin (plugin/), ferryd service (service/), tests (tests/).
#   make            build into build/
#   make check      install missing Debian packages (as root), build, run all tests
#                   on Dovecot 2.3, then check-24 (the 2.4 pass and the mixed pass)
#   make check-asan the suite with the plugin built with ASan+UBSan (2.3);
#                   .ci/run runs make check, then make check-asan
#   make demo       the same prerequisites, then a live migration on the sandbox
#                   (DOVECOT=2.4: on Dovecot 2.4.1 from the trixie root)
#   make install    plugins, ferryd, ferryctl, unit, man pages (mk/install.mk)
#   make deb        the Debian packages (mk/deb.mk)

DOVECOT_LIB   ?= /usr/lib/dovecot
# The Dovecot version is the installed one's: dovecot-config names its
# headers, whose config.h has the version. DOVECOT=2.4 builds in the
# Debian 13 root instead (mk/dovecot24.mk).
DOVECOT_CONFIG ?= $(DOVECOT_LIB)/dovecot-config
DOVECOT_INC   ?= $(or $(patsubst -I%,%,$(filter -I%,$(shell sed -n 's/^LIBDOVECOT_INCLUDE=//p' $(DOVECOT_CONFIG) 2>/dev/null | tr -d "'\""))),/usr/include/dovecot)
DOVECOT_MINOR := $(shell sed -n 's/^\#define DOVECOT_VERSION_MINOR //p' $(DOVECOT_INC)/config.h 2>/dev/null)
MODULEDIR     ?= $(DOVECOT_LIB)/modules
BUILD         ?= build
PYTHON        ?= /usr/bin/python3
PYTEST_ARGS   ?=

# Dovecot's headers need GNU C (typeof, statement expressions).
WARN      = -Wall -Wextra -Werror -Wno-unused-parameter -Wmissing-prototypes \
            -Wmissing-declarations -Wpointer-arith
# EXTRA_CFLAGS/EXTRA_LDFLAGS: a packager's flags (debian/rules: hardening)
PLUGIN_CFLAGS = -std=gnu11 -O2 -g -fPIC -DHAVE_CONFIG_H -I$(DOVECOT_INC) \
            -Iplugin -Iinclude $(WARN) $(SANITIZE) $(EXTRA_CFLAGS)
# Dovecot has libdovecot loaded when it loads a plugin: the run path only
# helps tools that load the plugin alone (the packages set it empty)
PLUGIN_RPATH ?= -Wl,-rpath,$(DOVECOT_LIB)
PLUGIN_LDFLAGS = -shared -L$(DOVECOT_LIB) $(PLUGIN_RPATH) $(SANITIZE) $(EXTRA_LDFLAGS)

PLUGIN_SRCS = plugin/ferry-plugin.c plugin/state.c plugin/old.c plugin/old-identity.c plugin/old-body.c plugin/old-sizes.c plugin/old-list.c plugin/old-status.c plugin/map.c \
              plugin/tree.c plugin/pull.c plugin/mirror.c plugin/rollback.c plugin/lazy.c plugin/background.c plugin/ferryd-notify.c plugin/workers.c plugin/durable.c plugin/heap.c \
              $(DOVECOT_GLUE)
# the one file per Dovecot version (dovecot-glue.h), and the imapc
# internals both versions share (dovecot-imapc.c)
DOVECOT_GLUE = $(if $(filter 4,$(DOVECOT_MINOR)),plugin/dovecot24.c plugin/dovecot24-settings.c,plugin/dovecot23.c) \
               plugin/dovecot-imapc.c
DOVEADM_SRCS = plugin/doveadm-ferry.c
# plain C shared with the service (common/, headers in include/)
COMMON_SRCS  = common/identity.c
COMMON_HDRS  = $(wildcard include/*.h)
PLUGIN_OBJS  = $(PLUGIN_SRCS:plugin/%.c=$(BUILD)/plugin/%.o) \
               $(COMMON_SRCS:common/%.c=$(BUILD)/plugin/common-%.o)
DOVEADM_OBJS = $(DOVEADM_SRCS:plugin/%.c=$(BUILD)/plugin/%.o)
PLUGIN_SO    = $(BUILD)/lib20_ferry_plugin.so
DOVEADM_SO   = $(BUILD)/lib10_doveadm_ferry_plugin.so
# Dovecot 2.4 accepts the ferry_* keys only with this module in
# modules/settings/ (its config process loads it)
SETTINGS_SO  = $(if $(filter 4,$(DOVECOT_MINOR)),$(BUILD)/libferry_settings.so)

# DOVECOT=2.3 (the host's), 2.4 or mixed (OLD 2.3, NEW 2.4): the Dovecot
# that make demo, make bench and the tests' sandbox run (FERRY_DOVECOT);
# 2.4 runs from the Debian 13 root of scripts/trixie-root.sh with the
# plugin built against it into BUILD24 (by BUILD24_TARGET, mk/dovecot24.mk)
DOVECOT   ?= 2.3
BUILD24_TARGET ?= plugin24
DOVECOT_ENV_2.3   = FERRY_DOVECOT=2.3
DOVECOT_ENV_2.4   = FERRY_DOVECOT=2.4 FERRY_PLUGIN_DIR=$(CURDIR)/$(BUILD24)
DOVECOT_ENV_mixed = FERRY_DOVECOT=mixed FERRY_PLUGIN_DIR=$(CURDIR)/$(BUILD24)
DOVECOT_ENV = $(DOVECOT_ENV_$(DOVECOT))
# the mixed pass: the modules where OLD's version matters (what NEW reads
# from the old server, its lock and crash behaviour); a shorter campaign
MIXED_TESTS ?= test_lazy.py test_presync.py test_rollback.py test_faults.py \
               test_hostile.py test_fault_campaign.py test_ferryd.py test_cutover.py \
               test_identity.py test_first_login.py
MIXED_FAULTS_PER_KIND ?= 30
# the 2.4 pass runs the campaign shorter too (issue 14: "a shorter N is
# fine"); the 2.3 pass keeps 100 of every kind (issue 8)
FAULTS_PER_KIND_24 ?= 30

DEB_PACKAGES = build-essential dovecot-core dovecot-imapd dovecot-pop3d \
               dovecot-lmtpd dovecot-dev python3 python3-pytest

# Each part of the project adds its targets in its own mk/*.mk:
#   ALL_TARGETS += what `make` builds
#   UNIT_TESTS  += test binaries that `make unit` runs (Criterion)
#   DEB_PACKAGES += Debian packages it needs
ALL_TARGETS = plugin
UNIT_TESTS =
# `make` builds; the mk/*.mk files must not pick the default target
.DEFAULT_GOAL := all
include $(sort $(wildcard mk/*.mk))

.PHONY: all plugin deps check check-24 check-asan unit demo clean format

all: $(ALL_TARGETS)
plugin: $(PLUGIN_SO) $(DOVEADM_SO) $(SETTINGS_SO)

unit: $(UNIT_TESTS)
	@for t in $(UNIT_TESTS); do echo "== $$t"; $$t || exit 1; done

$(BUILD)/plugin/%.o: plugin/%.c plugin/ferry-plugin.h plugin/dovecot-glue.h $(COMMON_HDRS) | $(BUILD)/plugin
	$(CC) $(PLUGIN_CFLAGS) -c -o $@ $<

$(BUILD)/plugin/common-%.o: common/%.c $(COMMON_HDRS) | $(BUILD)/plugin
	$(CC) $(PLUGIN_CFLAGS) -c -o $@ $<

$(BUILD)/plugin:
	mkdir -p $@

$(PLUGIN_SO): $(PLUGIN_OBJS)
	$(CC) $(PLUGIN_LDFLAGS) -o $@ $^ -ldovecot-storage -ldovecot

# Resolves the mail plugin's symbols at run time: doveadm loads its
# plugins after mail_plugins.
$(DOVEADM_SO): $(DOVEADM_OBJS)
	$(CC) $(PLUGIN_LDFLAGS) -o $@ $^ -ldovecot-storage -ldovecot

$(BUILD)/libferry_settings.so: $(BUILD)/plugin/dovecot24-settings.o
	$(CC) $(PLUGIN_LDFLAGS) -o $@ $^ -ldovecot

deps:
	@bash scripts/install-deps.sh $(DEB_PACKAGES)

check: deps
	$(MAKE) all
	$(MAKE) unit
	cd tests && $(PYTHON) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)
	$(MAKE) check-24

# Dovecot 2.4 (issue 14; tests/README.md "Dovecot 2.3 and 2.4"): the suite
# with OLD and NEW on Dovecot 2.4.1 from the trixie root (made on first use,
# scripts/trixie-root.sh), then the mixed pass (OLD 2.3 on the host, NEW
# 2.4: the migration direction) on the modules in MIXED_TESTS. The plugin
# for 2.4 is built into $(BUILD24); ferryd and the tools are build/'s.
check-24: deps
	$(MAKE) all $(BUILD24_TARGET)
	cd tests && $(DOVECOT_ENV_2.4) FERRY_FAULTS_PER_KIND=$(FAULTS_PER_KIND_24) \
		$(PYTHON) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)
	cd tests && $(DOVECOT_ENV_mixed) FERRY_FAULTS_PER_KIND=$(MIXED_FAULTS_PER_KIND) \
		$(PYTHON) -m pytest -q -p no:cacheprovider $(MIXED_TESTS) $(PYTEST_ARGS)

# The whole suite again with the plugin built with ASan+UBSan, the
# sanitizer runtime preloaded into NEW's Dovecot processes and doveadm;
# any sanitizer report fails the run.
check-asan: deps
	$(MAKE) BUILD=build-asan SANITIZE="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer" all unit
	cd tests && FERRY_BUILD_DIR=$(CURDIR)/build-asan FERRY_ASAN=1 $(PYTHON) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

demo: deps
	$(MAKE) all $(if $(filter 2.3,$(DOVECOT)),,$(BUILD24_TARGET))
	cd tests && $(DOVECOT_ENV) $(PYTHON) demo.py

format:
	clang-format -i plugin/*.c plugin/*.h common/*.c include/*.h

clean:
	rm -rf build build-asan build-24 build-24-asan
