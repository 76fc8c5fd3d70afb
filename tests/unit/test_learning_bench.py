"""The learning benchmark's protocol: one split per dataset and seed, shared by every
method, and its verdict against the best baseline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from carls.benches import learning
from carls.trainers.datasets import load_dataset
from carls.trainers.spec import DatasetSpec


@pytest.mark.parametrize("name", ["iris", "moons", "classification"])
def test_each_seed_has_one_split_and_the_carls_job_reads_exactly_it(
    name: str, tmp_path: Path
) -> None:
    p = learning.suite()[name]
    labeled, test = learning.split(p, 1)
    assert not (labeled & test).any() and labeled.sum() == p.labels
    assert abs(test.mean() - learning.TEST_SIZE) < 0.01
    classes = np.unique(p.y)
    assert set(p.y[labeled]) == set(classes)  # every class labeled, stratified
    again, _ = learning.split(p, 1)
    other, _ = learning.split(p, 2)
    assert (again == labeled).all() and not (other == labeled).all()
    data = load_dataset(
        DatasetSpec(path=learning.write_npz(tmp_path / "d.npz", p, labeled, test)), 7
    )
    rows = [int(i.rsplit("-", 1)[1]) for i in data.ids_test]
    assert rows == np.flatnonzero(test).tolist()
    train_rows = np.array([int(i.rsplit("-", 1)[1]) for i in data.ids_train])
    assert sorted(train_rows[data.labeled]) == np.flatnonzero(labeled).tolist()


def test_the_verdict_is_against_the_best_baselines_mean(tmp_path: Path) -> None:
    seen: list[tuple[str, int]] = []

    def run_carls(npz: Path, dataset: str, seed: int, paradigm: str) -> tuple[float, dict]:
        seen.append((dataset, seed))
        assert npz.is_file() and paradigm == "pseudo_label_graph"
        return (1.0 if dataset == "iris" else 0.0), {"knowledge_from_step": 100 * (seed + 1)}

    assert tuple(learning.suite()) == learning.NAMES
    r = learning.run(run_carls, tmp_path, datasets=["iris", "circles"], seeds=(0, 1))
    assert seen == [("iris", 0), ("iris", 1), ("circles", 0), ("circles", 1)]
    iris, circles = r["datasets"]["iris"], r["datasets"]["circles"]
    assert set(iris["baselines"]) == {
        "supervised LogisticRegression",
        "LabelSpreading (kNN)",
        "LabelSpreading (RBF)",
        "SelfTraining (LogisticRegression)",
    }
    best = max(m["mean"] for m in iris["baselines"].values())
    assert iris["best_baseline_mean"] == best and iris["carls_minus_best"] == 1.0 - best
    assert circles["carls_minus_best"] < 0
    # each job's own figures, so a seed far off the others says why
    assert circles["carls_runs"] == [
        {"seed": 0, "accuracy": 0.0, "knowledge_from_step": 100},
        {"seed": 1, "accuracy": 0.0, "knowledge_from_step": 200},
    ]
    assert r["beats_best_on"] == 1 and r["matches_best_on_every_set"] is False
    with pytest.raises(ValueError, match="unknown datasets"):
        learning.run(run_carls, tmp_path, datasets=["mnist"])


def test_a_jobs_knowledge_is_told_from_its_state() -> None:
    from carls.demo import knowledge_of

    state = {
        "history": [
            {"step": 100, "knowledge_coverage": None, "knowledge_use": {}},
            {"step": 200, "knowledge_coverage": 0.0, "knowledge_use": {}},
            {"step": 300, "knowledge_coverage": 0.4, "knowledge_use": {"pseudo_used": 0.2}},
            {"step": 400, "knowledge_coverage": 1.0, "knowledge_use": {"pseudo_used": 0.8}},
        ],
        "staleness": {"mean": 12.5, "reads": 10},
    }
    assert knowledge_of(state) == {
        "knowledge_from_step": 300,
        "coverage_at_end": 1.0,
        "use_at_end": {"pseudo_used": 0.8},
        "staleness_mean": 12.5,
    }
    # a job that never had any: None, not a step
    assert knowledge_of({"history": state["history"][:2]})["knowledge_from_step"] is None
