# Fault campaign (issue 8): tests/faults/campaign.py through a fault-injecting
# proxy, kills, restarts and a full disk; report in $(BUILD)/faults/.
#   make faults N=1000        a 1,000-fault campaign: N faults spread evenly over
#                             the 13 kinds (77 each), seeded (SEED=2: other points
#                             than make check's SEED=1)
# make check runs 100 of every kind (tests/test_fault_campaign.py).
N       ?= 1000
SEED    ?= 2
WORKERS ?= 3

.PHONY: faults
faults: all
	@mkdir -p $(BUILD)/faults
	cd tests && $(PYTHON) -m faults.campaign --total $(N) --seed $(SEED) \
	    --workers $(WORKERS) --md $(CURDIR)/$(BUILD)/faults/report-N$(N).md \
	    --json $(CURDIR)/$(BUILD)/faults/report-N$(N).json
