# libFuzzer targets for ferryd's own parsers (issue 8): the users CSV
# (service/csv.c), the configuration file (service/config.c) and the admin
# API's JSON request bodies (service/api.c's decoding and the functions its
# handlers feed the fields to). Seeds: fuzz/corpus/<name>/; the run's corpus
# grows in $(FUZZ_DIR)/corpus-<name>; crashes land in $(FUZZ_DIR)/ (copy
# reproducers to fuzz/crashes/).
#   make fuzz-service FUZZ_SECONDS=600     each target for FUZZ_SECONDS
FUZZSVC_TARGETS = csv config api_json
# also set (the same way) by mk/imapclient.mk, which is included after this file
FUZZ_SECONDS ?= 600
FUZZ_DIR     ?= $(BUILD)/fuzz
FUZZ_CC      ?= clang
FUZZ_ARGS    ?= -rss_limit_mb=1024 -timeout=10 -print_final_stats=1
FUZZSVC_CFLAGS = -std=c11 -D_GNU_SOURCE -g -O1 -iquote service \
                 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
                 -fno-omit-frame-pointer
FUZZSVC_BINS = $(FUZZSVC_TARGETS:%=$(FUZZ_DIR)/fuzz_%)

.PHONY: fuzz-service fuzz-service-build fuzz-service-smoke
fuzz-service-build: $(FUZZSVC_BINS)

$(FUZZ_DIR)/fuzz_csv: fuzz/fuzz_csv.c service/csv.c service/csv.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZSVC_CFLAGS) -o $@ fuzz/fuzz_csv.c service/csv.c

$(FUZZ_DIR)/fuzz_config: fuzz/fuzz_config.c service/config.c service/config.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZSVC_CFLAGS) -o $@ fuzz/fuzz_config.c service/config.c

# api.c needs the rest of ferryd's core at link time (store, cut-over,
# checks, IMAP client); the target calls none of it. Every service/*.c but
# the three programs' mains.
FUZZSVC_API_SRCS = $(filter-out service/ferryd.c service/ferryctl.c service/ferry-imapcheck.c,\
                   $(wildcard service/*.c))
$(FUZZ_DIR)/fuzz_api_json: fuzz/fuzz_api_json.c $(FUZZSVC_API_SRCS) $(wildcard service/*.h) \
		$(COMMON_SRCS) $(COMMON_HDRS)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZSVC_CFLAGS) -Iinclude -o $@ fuzz/fuzz_api_json.c $(FUZZSVC_API_SRCS) \
	    $(COMMON_SRCS) \
	    -levent_openssl -levent -lsqlite3 -ljansson -lssl -lcrypto -lresolv

fuzz-service: fuzz-service-build
	@for t in $(FUZZSVC_TARGETS); do \
	    mkdir -p $(FUZZ_DIR)/corpus-$$t; \
	    echo "== fuzz_$$t for $(FUZZ_SECONDS) s"; \
	    (cd $(FUZZ_DIR) && ./fuzz_$$t $(FUZZ_ARGS) -max_total_time=$(FUZZ_SECONDS) \
	        corpus-$$t $(CURDIR)/fuzz/corpus/$$t) || exit 1; \
	done

fuzz-service-smoke:
	$(MAKE) fuzz-service FUZZ_SECONDS=5
