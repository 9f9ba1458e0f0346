# valgrind (memcheck) run of ferryd's tests (issue 8): every ferryd and
# ferryctl the tests start runs under memcheck (FERRY_VALGRIND=1, read by
# tests/ferrytest/ferryd.py), one XML report per process in $(VALGRIND_DIR);
# then tests/ferrytest/valgrind.py counts the errors (invalid accesses,
# uninitialised reads, bad frees; definite leaks of the processes that
# exited) and fails on any. ferryd's checks run in ferry-imapcheck
# children: memcheck follows them too. Not part of make check (about 3 min).
#   make valgrind-ferryd                       ferryd's three test modules
#   make valgrind-ferryd VALGRIND_TESTS=test_ferryd.py
DEB_PACKAGES += valgrind
VALGRIND_DIR   ?= $(BUILD)/valgrind
VALGRIND_TESTS ?= test_ferryd.py test_cutover.py test_verify_ferryd.py

.PHONY: valgrind-ferryd
valgrind-ferryd: deps
	$(MAKE) all
	rm -rf $(VALGRIND_DIR) && mkdir -p $(VALGRIND_DIR)
	cd tests && FERRY_VALGRIND=1 FERRY_VALGRIND_DIR=$(abspath $(VALGRIND_DIR)) \
	    $(PYTHON) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) $(VALGRIND_TESTS); \
	    rc=$$?; $(PYTHON) -m ferrytest.valgrind $(abspath $(VALGRIND_DIR)) && exit $$rc
