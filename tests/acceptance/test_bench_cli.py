"""`carls bench bank` as users run it: small, against the real Cassandra. What it prints
is a measurement (never asserted); that it runs, checks every lookup it times, compares
each figure with the driver's own ways, and reports its targets is what users rely on."""

from __future__ import annotations

import pytest

from carls.settings import Settings
from tests.acceptance.conftest import CarlsRun, json_of

pytestmark = pytest.mark.acceptance


def test_bench_bank_reports_the_bank_next_to_the_driver(stack: Settings, carls: CarlsRun) -> None:
    r = json_of(carls("bench", "bank", "--rows", "3000", "--lookups", "10", "--json"))
    ways = {"IN per bucket", "execute_concurrent per id"}
    assert ways <= set(r["driver_lookup_ms"])
    assert {"unlogged batches of 128", "execute_concurrent per row"} <= set(
        r["driver_write_rows_per_s"]
    )
    best = r["driver_lookup_ms"][r["driver_best_lookup"]]["median"]
    assert best == min(v["median"] for v in r["driver_lookup_ms"].values())
    assert r["lookup_vs_driver_best"] == pytest.approx(r["lookup_median_ms"] / best)
    assert r["write_vs_driver_best"] == pytest.approx(
        r["write_rows_per_s"] / max(r["driver_write_rows_per_s"].values())
    )
    assert set(r["targets"]) >= {"lookup_vs_driver_best", "write_vs_driver_best"}
    assert all(isinstance(t["met"], bool) for t in r["targets"].values())

    human = carls("bench", "bank", "--rows", "2000", "--lookups", "10")
    assert human.returncode == 0, human.stderr
    assert "lookup vs the driver's best" in human.stdout


def test_bench_learning_runs_carls_and_the_baselines_on_one_split(
    stack: Settings, carls: CarlsRun
) -> None:
    r = json_of(carls("bench", "learning", "--datasets", "iris", "--seeds", "0", "--json"))
    iris = r["datasets"]["iris"]
    assert r["paradigm"] == "pseudo_label_graph" and r["seeds"] == [0]
    assert 0.0 < iris["carls"]["mean"] <= 1.0 and len(iris["carls"]["accuracies"]) == 1
    assert iris["best_baseline"] in iris["baselines"] and len(iris["baselines"]) == 4
    assert iris["carls_minus_best"] == pytest.approx(
        iris["carls"]["mean"] - iris["best_baseline_mean"]
    )
    assert isinstance(r["matches_best_on_every_set"], bool)

    bad = carls("bench", "learning", "--datasets", "iris,mnist")
    assert bad.returncode == 2 and "unknown mnist; the suite has iris" in bad.stderr
