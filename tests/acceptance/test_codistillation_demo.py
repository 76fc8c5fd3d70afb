"""`carls demo codistillation --json`: codistillation through the command line (about four
minutes on two cores).

Two `carls trainer` processes; for each of seeds 0, 1, 2 two peers submitted together as a
job group with `carls submit` train at the same time, each distilling the other's stale
predictions (made by a `carls worker` from the other's checkpoints, read from the bank),
and each must beat the same model trained alone on the same labels.

Margin: three runs of the demo on a two-core machine. The peers' means against the model
alone: 0.907 and 0.910 against 0.848, 0.920 and 0.917 against 0.853 (every seed's peers
ahead, by 4.1 to 9.1 points); in an earlier version that ran the model alone beside the
peers, 0.898 and 0.902 against 0.860. Gaps of 3.8 to 6.7 points; the test asks for 2.
"""

from __future__ import annotations

import pytest

from carls.settings import Settings
from tests.acceptance.conftest import CarlsRun, json_of

pytestmark = pytest.mark.acceptance

MARGIN = 0.02


@pytest.mark.learning
@pytest.mark.timeout(1500)
def test_each_codistillation_peer_beats_the_same_model_trained_alone(
    stack: Settings, carls: CarlsRun
) -> None:
    report = json_of(carls("demo", "codistillation", "--json", timeout=1400))

    assert report["seeds"] == [0, 1, 2]
    alone = report["alone"]["mean"]
    for peer in ("peer_a", "peer_b"):
        accs = report[peer]["accuracies"]
        assert len(accs) == 3 and all(0.0 <= a <= 1.0 for a in accs), report[peer]
        assert report[peer]["mean"] > alone + MARGIN, (peer, report[peer], report["alone"])
    for run in report["runs"]:
        # the peers ran as one group, at the same time, on the trainers the demo started
        assert run["group"] and run["group"].startswith("group-"), run
        assert run["peers_overlap_s"] > 0, run
        assert all(run["trainers"]), run
    # each read the other's predictions while it trained (group members wait for each
    # other after their first step, so neither runs beyond the other's staleness window),
    # in at least two of the three seeds: the trainers never wait on the bank, so a seed
    # whose worker or bank stalls for the length of the jobs trains its peers alone (seen
    # once, in a loaded CI: one seed's peers read nothing, the claim above still held)
    for peer in (0, 1):
        read = [run["peer_reads_used"][peer] > 0 for run in report["runs"]]
        assert sum(read) >= 2, report["runs"]
