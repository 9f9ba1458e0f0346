# Sieve filters and DNS readiness (issue 18): the ManageSieve mode of
# ferryd's IMAP client (service/managesieve.c), the migration of a user's
# scripts (service/sieve.c), DNS checks with libevent (service/dns.c).
# Tests: OLD and NEW with Pigeonhole (ManageSieve, LMTP sieve), nsd as the
# authoritative DNS server on loopback.
DEB_PACKAGES += dovecot-managesieved dovecot-sieve nsd

SIEVE_UNIT = $(BUILD)/unit/test_sieve_dns
UNIT_TESTS += $(SIEVE_UNIT)

$(SIEVE_UNIT): tests/unit/test_sieve_dns.c $(FERRYD_CORE_OBJS) $(BUILD)/libferry-imap.a | $(BUILD)/unit
	$(CC) $(FERRYD_CFLAGS) -Wno-missing-prototypes -o $@ $< $(FERRYD_CORE_OBJS) \
	    $(BUILD)/libferry-imap.a -lcriterion $(FERRYD_LIBS) $(IMAPC_LIBS)

# libFuzzer: scripts and ManageSieve lines from the old server
#   make fuzz-sieve FUZZ_SECONDS=600
$(FUZZ_DIR)/fuzz_sieve: fuzz/fuzz_sieve.c service/sieve.c service/managesieve.c \
                        $(IMAPC_SRCS) $(IMAPC_HDRS) $(COMMON_SRCS) $(COMMON_HDRS)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -Iinclude -o $@ fuzz/fuzz_sieve.c $(IMAPC_SRCS) $(COMMON_SRCS) \
	    -levent_openssl -levent -lssl -lcrypto -ljansson

.PHONY: fuzz-sieve
fuzz-sieve: $(FUZZ_DIR)/fuzz_sieve
	mkdir -p $(FUZZ_DIR)/corpus-sieve
	cd $(FUZZ_DIR) && ./fuzz_sieve $(FUZZ_ARGS) -max_total_time=$(FUZZ_SECONDS) \
	    corpus-sieve $(CURDIR)/fuzz/corpus/sieve
