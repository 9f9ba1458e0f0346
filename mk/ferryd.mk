# ferryd and ferryctl (service/), their Criterion unit tests (tests/unit/).
# Included by the main Makefile; builds into $(BUILD)/ and honours $(SANITIZE).

PQ_CFLAGS := $(shell pkg-config --cflags libpq 2>/dev/null || echo -I/usr/include/postgresql)
FERRYD_CFLAGS = -std=c11 -D_GNU_SOURCE -O2 -g -Wall -Wextra -Werror \
                -Wmissing-prototypes -Wpointer-arith -iquote service -iquote include -iquote $(BUILD)/service $(PQ_CFLAGS) $(SANITIZE) $(EXTRA_CFLAGS)
FERRYD_LDFLAGS = $(SANITIZE) $(EXTRA_LDFLAGS)
FERRYD_LIBS = -levent -lsqlite3 -lpq -ljansson -lcrypto -lresolv

FERRYD_CORE = config backend store store_sqlite store_pgsql sched runq tally dispatch doveadm api csv evlog secret userstate \
              cutover cutover_check checks rekey runas pathcheck metrics dns sieve_step \
              report dashboard
FERRYD_CORE_OBJS = $(FERRYD_CORE:%=$(BUILD)/service/%.o)
FERRYD_HDRS = $(wildcard service/*.h include/*.h)

ALL_TARGETS += $(BUILD)/ferryd $(BUILD)/ferryctl
FERRYD_UNIT = $(BUILD)/unit/test_csv $(BUILD)/unit/test_config \
              $(BUILD)/unit/test_store $(BUILD)/unit/test_sched \
              $(BUILD)/unit/test_doveadm $(BUILD)/unit/test_cutover \
              $(BUILD)/unit/test_metrics $(BUILD)/unit/test_userstate \
              $(BUILD)/unit/test_runq $(BUILD)/unit/test_tally
UNIT_TESTS += $(FERRYD_UNIT)
DEB_PACKAGES += libevent-dev libsqlite3-dev libjansson-dev libcriterion-dev \
                libssl-dev pkg-config libpq-dev
# store = pgsql: the tests start their own PostgreSQL 15 (tests/ferrytest/pgsql.py)
DEB_PACKAGES += postgresql

$(BUILD)/service $(BUILD)/unit:
	mkdir -p $@

# the routing views, one SQL file for both store backends, as a C string
$(BUILD)/service/routing_views.h: service/routing_views.sql | $(BUILD)/service
	{ echo '/* generated from $< by mk/ferryd.mk */'; \
	  echo 'static const char routing_views_sql[] ='; \
	  grep -v '^--' $< | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/^/"/' -e 's/$$/\\n"/'; \
	  echo ';'; } > $@.tmp && mv $@.tmp $@

FERRYD_OBJS = $(FERRYD_CORE_OBJS) $(BUILD)/service/ferryd.o $(BUILD)/service/ferryctl.o
$(FERRYD_OBJS): $(BUILD)/service/%.o: service/%.c $(FERRYD_HDRS) $(BUILD)/service/routing_views.h | $(BUILD)/service
	$(CC) $(FERRYD_CFLAGS) -c -o $@ $<

# checks.c formats reports with the IMAP library (preflight.c, verify.c);
# the runs themselves are ferry-imapcheck children (built alongside)
$(BUILD)/ferryd: $(BUILD)/service/ferryd.o $(FERRYD_CORE_OBJS) $(BUILD)/libferry-imap.a | $(BUILD)/ferry-imapcheck
	$(CC) $(FERRYD_LDFLAGS) -o $@ $(filter %.o %.a,$^) $(FERRYD_LIBS) $(IMAPC_LIBS)

$(BUILD)/ferryctl: $(BUILD)/service/ferryctl.o $(BUILD)/service/config.o
	$(CC) $(FERRYD_LDFLAGS) -o $@ $^ -levent -ljansson

$(FERRYD_UNIT:%=%.o): $(BUILD)/unit/%.o: tests/unit/%.c $(FERRYD_HDRS) $(wildcard tests/unit/*.h) | $(BUILD)/unit
	$(CC) $(FERRYD_CFLAGS) -Wno-missing-prototypes -c -o $@ $<

$(FERRYD_UNIT): $(BUILD)/unit/test_%: $(BUILD)/unit/test_%.o $(FERRYD_CORE_OBJS) $(BUILD)/libferry-imap.a
	$(CC) $(FERRYD_LDFLAGS) -o $@ $^ -lcriterion $(FERRYD_LIBS) $(IMAPC_LIBS)

.PHONY: ferryd
ferryd: $(BUILD)/ferryd $(BUILD)/ferryctl

# keep the unit test objects (no rebuild on every `make unit`)
.SECONDARY: $(FERRYD_UNIT:%=%.o)
