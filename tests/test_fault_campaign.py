"""Fault campaign in make check (issue 8): >= 100 injected faults of every
kind (faults/campaign.py), each followed by a resume and a comparison of
NEW with OLD: 0 lost, 0 duplicated, no other difference.

FERRY_FAULTS_PER_KIND overrides the number (default 100; 10 under
FERRY_ASAN=1, where every NEW process runs 3-5x slower). The report is
written to <build>/faults/report-check.{md,json}."""
import json
import os

import pytest

from faults.campaign import KINDS, Campaign
from ferrytest import dovecot
from ferrytest.sandbox import ASAN, BUILD_DIR

PER_KIND = int(os.environ.get("FERRY_FAULTS_PER_KIND", "10" if ASAN else "100"))

# Measured (see docs/faults.md, "Findings"): NEW running out of space while
# Dovecot's maildir writes dovecot-keywords or dovecot-uidlist breaks the
# copy. Reported to the lead; the plugin does not detect it.
def _selected_kinds(request):
    """The kinds of the tests selected in this module (`-k kill-ferryd`
    runs one kind's campaign, not all of them)."""
    kinds = {item.callspec.params["kind"] for item in request.session.items
             if item.module is request.module and "kind" in getattr(
                 getattr(item, "callspec", None), "params", {})}
    return [k for k in KINDS if k in kinds] or list(KINDS)


@pytest.fixture(scope="module")
def campaign(request):
    camp = Campaign(per_kind=PER_KIND, seed=1, workers=3, kinds=_selected_kinds(request))
    failed = False
    try:
        camp.setup()
        camp.run()
        yield camp
    except BaseException:
        failed = True
        raise
    finally:
        camp.teardown()
        reports = camp.sb.sanitizer_reports()
        # one report per Dovecot pass (FERRY_DOVECOT): build/faults, faults-2.4, faults-mixed
        out = os.path.join(BUILD_DIR, "faults" + ("" if dovecot.SELECT == "2.3"
                                                  else "-" + dovecot.SELECT))
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "report-check.md"), "w") as f:
            f.write(camp.markdown())
        with open(os.path.join(out, "report-check.json"), "w") as f:
            json.dump(camp.report(), f, indent=1)
        print("\n" + camp.markdown())
        if reports:
            print("\n".join(reports))
        bad = failed or reports or any(
            s["lost"] or s["duplicated"] or s["errors"] or s["other_differences"]
            for s in camp.results.values())
        if not bad and not os.environ.get("FERRY_KEEP"):
            import shutil
            shutil.rmtree(camp.sb.root, ignore_errors=True)
        else:
            print("sandbox kept: %s" % camp.sb.root)
        assert not reports, "sanitizer reports in %s" % camp.sb.sanitizer_dir()


@pytest.mark.parametrize("kind", KINDS)
def test_faults_injected(campaign, kind):
    s = campaign.results[kind]
    assert not s["errors"], s["errors"]
    assert s["injected"] >= PER_KIND, s


@pytest.mark.parametrize("kind", KINDS)
def test_nothing_lost_duplicated_or_changed(campaign, kind):
    s = campaign.results[kind]
    assert s["injected"] >= PER_KIND
    assert (s["lost"], s["duplicated"], s["other_differences"]) == (0, 0, 0), s["examples"]


@pytest.mark.parametrize("kind", KINDS)
def test_refetch_bounded(campaign, kind):
    """Resuming continues where the copy stopped: on average a fault costs
    less than half the folder again (measured: about one batch of 4)."""
    s = campaign.results[kind]
    assert s["refetched_proxy"] >= 0
    assert s["refetched_proxy"] < s["runs"] * 12 / 2, s


@pytest.mark.parametrize("kind", ["kill-ferryd"])
def test_ferryd_finishes_every_user_after_kill9(campaign, kind):
    """After each kill -9 the restarted ferryd cleared the dead one's
    `running`, logged pull-interrupted and drove the user to `done`, every
    folder complete with OLD's count (faults/ferryd_kill.py)."""
    s = campaign.results[kind]
    assert s["injected"] >= PER_KIND
    assert s["ferryd_differences"] == 0, s["examples"]
