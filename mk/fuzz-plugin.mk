# libFuzzer target for the mail plugin's own state formats (issue 8): the
# per-user state file (dovecot-ferry.state), the folder-name map
# (dovecot-ferry.map) and the per-folder index header extension, through
# the parsing functions plugin/state.c and plugin/map.c call themselves.
# Built from the plugin's sources with the plugin's include flags and
# warnings, linked with Dovecot's libraries. Seeds: fuzz/corpus/plugin_state/
# (first byte: 0 state file, 1 map, 2 header); the run's corpus grows in
# $(FUZZ_DIR)/corpus-plugin_state; crashes land in $(FUZZ_DIR)/ (copy
# reproducers to fuzz/crashes/).
#   make fuzz-plugin FUZZ_SECONDS=600      (also run by `make fuzz`)
# also set (the same way) by mk/fuzz-service.mk and mk/imapclient.mk
FUZZ_SECONDS ?= 600
FUZZ_DIR     ?= $(BUILD)/fuzz
FUZZ_CC      ?= clang
FUZZ_ARGS    ?= -rss_limit_mb=1024 -timeout=10 -print_final_stats=1
FUZZPLG_CFLAGS = -std=gnu11 -g -O1 -DHAVE_CONFIG_H -I$(DOVECOT_INC) -Iplugin -Iinclude \
                 $(WARN) -fsanitize=fuzzer,address,undefined \
                 -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZPLG_LIBS   = -L$(DOVECOT_LIB) -Wl,-rpath,$(DOVECOT_LIB) -ldovecot-storage -ldovecot
FUZZPLG_BIN    = $(FUZZ_DIR)/fuzz_plugin_state

.PHONY: fuzz-plugin fuzz-plugin-build fuzz-plugin-smoke
fuzz-plugin-build: $(FUZZPLG_BIN)

# state.c and map.c as they are (they need nothing else from the plugin but
# the user module context, which the target defines as ferry-plugin.c does)
FUZZPLG_SRCS = plugin/state.c plugin/map.c
$(FUZZPLG_BIN): fuzz/fuzz_plugin_state.c $(FUZZPLG_SRCS) plugin/ferry-plugin.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZPLG_CFLAGS) -o $@ fuzz/fuzz_plugin_state.c $(FUZZPLG_SRCS) \
	    $(FUZZPLG_LIBS)

fuzz-plugin: fuzz-plugin-build
	mkdir -p $(FUZZ_DIR)/corpus-plugin_state
	cd $(FUZZ_DIR) && ./fuzz_plugin_state $(FUZZ_ARGS) -max_total_time=$(FUZZ_SECONDS) \
	    corpus-plugin_state $(CURDIR)/fuzz/corpus/plugin_state

fuzz: fuzz-plugin

fuzz-plugin-smoke:
	$(MAKE) fuzz-plugin FUZZ_SECONDS=5
