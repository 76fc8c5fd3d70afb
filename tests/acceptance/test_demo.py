"""`carls demo --json`: the main job end to end (about three minutes on two cores).

Semi-supervised digits with 50 labels, three seeds: carls (pseudo labels and neighbours
made by a `carls worker` from the trainer's checkpoints, read from the bank while it trains)
must beat the supervised-only baseline. It runs on the default topic prefix: the demo
brings up the stack (a no-op when it is running) and starts its own worker."""

from __future__ import annotations

import math
import re
import statistics

import pytest

from carls.settings import Settings
from tests.acceptance.conftest import CarlsRun, json_of

pytestmark = pytest.mark.acceptance

TF_LOG = re.compile(
    r"^[IWEF]\d{4} \d\d:\d\d:\S+\s+\d+ \S+:\d+\]"  # absl / TSL C++ logging
    r"|absl::InitializeLog|^(WARNING|INFO|ERROR):absl:|^WARNING:tensorflow|oneDNN|cuda",
    re.IGNORECASE,
)
TRAIN_EXAMPLES = 1257  # digits' 1797 rows, 30% held out for test


@pytest.mark.learning
@pytest.mark.timeout(960)
def test_demo_beats_the_supervised_baseline_with_knowledge_from_the_bank(
    stack: Settings, carls: CarlsRun
) -> None:
    proc = carls("demo", "--json", timeout=900)
    report = json_of(proc)
    # the user sees carls' own lines, none of TensorFlow's or absl's start-up logging
    noise = [line for line in proc.stderr.splitlines() if TF_LOG.search(line)]
    assert not noise, noise

    assert report["seeds"] == [0, 1, 2]
    for arm in ("baseline", "carls"):
        accs = report[arm]["accuracies"]
        assert len(accs) == 3 and all(0.0 <= a <= 1.0 for a in accs), report[arm]
        assert report[arm]["mean"] == pytest.approx(sum(accs) / 3)
        assert report[arm]["std"] == pytest.approx(statistics.pstdev(accs))
    ours, base = report["carls"]["mean"], report["baseline"]["mean"]
    assert ours >= 0.93, report["carls"]
    assert ours > base, (report["carls"], report["baseline"])

    assert len(report["coverage"]) == 3
    for seed_cov in report["coverage"]:
        assert set(seed_cov) == {"pseudo_label", "neighbours"}
        for kind, cov in seed_cov.items():
            assert cov["kind"] == kind
            assert cov["total"] == TRAIN_EXAMPLES, cov
            assert cov["at_newest"] > 0 and cov["newest_step"] > 0, cov
            assert cov["at_newest"] + cov["older"] + cov["none"] == cov["total"], cov

    stale = report["staleness_mean_steps"]
    assert len(stale) == 3
    assert all(isinstance(s, int | float) and math.isfinite(s) and s >= 0 for s in stale), stale
    assert len(report["job_ids"]) == 3
    assert report["references"]
    assert isinstance(report["wall_s"], float) and math.isfinite(report["wall_s"])
