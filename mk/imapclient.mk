# ferryd's IMAP client (issue 4): parser, modified UTF-7, client, preflight,
# verify -> $(BUILD)/libferry-imap.a, the ferry-imapcheck CLI, Criterion
# unit tests, libFuzzer targets (make fuzz FUZZ_SECONDS=600).

IMAPC_CFLAGS  = -std=c11 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -O2 -g -Iservice -iquote include \
                -Wall -Wextra -Werror -Wno-unused-parameter -Wmissing-prototypes \
                -Wno-format-truncation $(SANITIZE) $(EXTRA_CFLAGS)
IMAPC_LDFLAGS = $(SANITIZE) $(EXTRA_LDFLAGS)
IMAPC_LIBS    = -levent_openssl -levent -lssl -lcrypto -ljansson

IMAPC_SRCS = service/imap-parser.c service/imap-utf7.c service/imap-client.c \
             service/preflight.c service/verify.c \
             service/managesieve.c service/sieve.c
IMAPC_HDRS = $(IMAPC_SRCS:.c=.h) include/ferry-contract.h
IMAPC_OBJS = $(IMAPC_SRCS:service/%.c=$(BUILD)/service/%.o) \
             $(COMMON_SRCS:common/%.c=$(BUILD)/service/common-%.o)
IMAPC_LIB  = $(BUILD)/libferry-imap.a
IMAPCHECK  = $(BUILD)/ferry-imapcheck
IMAPC_UNIT = $(BUILD)/unit/test_imap_parser $(BUILD)/unit/test_imap_utf7 \
             $(BUILD)/unit/test_identity

ALL_TARGETS  += imapclient
UNIT_TESTS   += $(IMAPC_UNIT)
DEB_PACKAGES += libevent-dev libssl-dev libjansson-dev libcriterion-dev pkg-config \
                openssl clang libclang-rt-14-dev

.PHONY: imapclient fuzz fuzz-build fuzz-smoke
imapclient: $(IMAPC_LIB) $(IMAPCHECK) $(IMAPC_UNIT)

# static pattern rules: only these objects, whatever service.mk defines
$(filter-out $(BUILD)/service/common-%,$(IMAPC_OBJS)) $(BUILD)/service/ferry-imapcheck.o: \
		$(BUILD)/service/%.o: service/%.c $(IMAPC_HDRS) $(COMMON_HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(IMAPC_CFLAGS) -c -o $@ $<

# the plain C shared with the plugin (common/)
$(BUILD)/service/common-%.o: common/%.c $(COMMON_HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(IMAPC_CFLAGS) -c -o $@ $<

$(IMAPC_LIB): $(IMAPC_OBJS)
	rm -f $@
	ar rcs $@ $^

$(IMAPCHECK): $(BUILD)/service/ferry-imapcheck.o $(IMAPC_LIB)
	$(CC) $(IMAPC_LDFLAGS) -o $@ $^ $(IMAPC_LIBS)

$(IMAPC_UNIT): $(BUILD)/unit/test_%: tests/unit/test_%.c $(IMAPC_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(IMAPC_CFLAGS) $(IMAPC_LDFLAGS) -o $@ $< $(IMAPC_LIB) -lcriterion $(IMAPC_LIBS)

# ---- libFuzzer -------------------------------------------------------------
# Seeds are committed in fuzz/corpus/<name>/; the run's own corpus grows in
# $(FUZZ_DIR)/corpus-<name> so the seeds stay reviewable. Crashes land in
# $(FUZZ_DIR)/ (crash-*, leak-*, timeout-*).
FUZZ_SECONDS       ?= 600
FUZZ_UTF7_SECONDS  ?= 60
FUZZ_DIR           ?= $(BUILD)/fuzz
FUZZ_CC            ?= clang
FUZZ_CFLAGS = -std=c11 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -g -O1 -Iservice \
              -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
              -fno-omit-frame-pointer
FUZZ_ARGS  ?= -rss_limit_mb=1024 -timeout=10 -print_final_stats=1

fuzz-build: $(FUZZ_DIR)/fuzz_imap_parser $(FUZZ_DIR)/fuzz_imap_utf7

$(FUZZ_DIR)/fuzz_imap_parser: fuzz/fuzz_imap_parser.c service/imap-parser.c service/imap-parser.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ fuzz/fuzz_imap_parser.c service/imap-parser.c

$(FUZZ_DIR)/fuzz_imap_utf7: fuzz/fuzz_imap_utf7.c service/imap-utf7.c service/imap-utf7.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ fuzz/fuzz_imap_utf7.c service/imap-utf7.c

fuzz: fuzz-build
	mkdir -p $(FUZZ_DIR)/corpus-imap_parser $(FUZZ_DIR)/corpus-imap_utf7
	cd $(FUZZ_DIR) && ./fuzz_imap_parser $(FUZZ_ARGS) -max_total_time=$(FUZZ_SECONDS) \
	    -dict=$(CURDIR)/fuzz/imap.dict corpus-imap_parser $(CURDIR)/fuzz/corpus/imap_parser
	cd $(FUZZ_DIR) && ./fuzz_imap_utf7 $(FUZZ_ARGS) -max_total_time=$(FUZZ_UTF7_SECONDS) \
	    corpus-imap_utf7 $(CURDIR)/fuzz/corpus/imap_utf7

# a few seconds each, e.g. before committing parser changes
fuzz-smoke:
	$(MAKE) fuzz FUZZ_SECONDS=5 FUZZ_UTF7_SECONDS=3
