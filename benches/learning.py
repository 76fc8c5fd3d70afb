"""``carls bench learning``: semi-supervised learning quality, carls at its default settings
against scikit-learn's baselines on identical splits.

The suite is data that ships with scikit-learn or is generated (nothing is downloaded):

* ``iris``: 150 x 4, 3 classes, 9 labels;
* ``digits``: 1,797 8x8 images as plain 64-d vectors (no image augmentation), 50 labels;
* ``moons``: ``make_moons(1000, noise=0.15)``, 2 classes, 10 labels;
* ``circles``: ``make_circles(1000, noise=0.08, factor=0.5)``, 2 classes, 10 labels;
* ``classification``: ``make_classification(2000, 20 features, 8 informative, 4 classes,
  2 clusters per class)``, 40 labels.

Per dataset and seed one split: 30 % test (stratified), the labels stratified among the
rest. It is written as an ``.npz`` with its ``labeled`` and ``test`` masks, so the carls job
(spec: the file, the paradigm's name, ``train.seed``; everything else default) and every
baseline see exactly the same rows. Baselines, on features standardized on the training
rows: supervised logistic regression on the labels; ``LabelSpreading`` with scikit-learn's
kernels (kNN, 7 neighbours; RBF, gamma 20; alpha 0.2); ``SelfTrainingClassifier`` around
logistic regression (threshold 0.75). Accuracy is on the test rows; the best baseline is
the one with the best mean over the seeds.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

Say = Callable[[str], None]
RunCarls = Callable[[Path, str, int, str], tuple[float, dict[str, Any]]]
"""``(npz, dataset, seed, paradigm) -> (test accuracy, knowledge)`` of a carls job on that
file; ``knowledge`` says how the job's knowledge came (see ``carls.demo.knowledge_of``), so
a seed far off the others says whether its knowledge was late or wrong."""
NAMES = ("iris", "digits", "moons", "circles", "classification")
"""The suite's datasets, in the order they run."""
SEEDS = (0, 1, 2)
PARADIGM = "pseudo_label_graph"
TEST_SIZE = 0.3


@dataclass(frozen=True)
class Problem:
    name: str
    x: npt.NDArray[np.float64]
    y: npt.NDArray[np.int64]
    labels: int
    """Labeled training examples."""
    what: str


def suite() -> dict[str, Problem]:
    from sklearn import datasets

    iris = datasets.load_iris()
    digits = datasets.load_digits()
    mx, my = datasets.make_moons(1000, noise=0.15, random_state=0)
    cx, cy = datasets.make_circles(1000, noise=0.08, factor=0.5, random_state=0)
    kx, ky = datasets.make_classification(
        2000,
        n_features=20,
        n_informative=8,
        n_redundant=4,
        n_classes=4,
        n_clusters_per_class=2,
        random_state=0,
    )
    out = [
        Problem("iris", iris.data, iris.target, 9, "150 x 4, 3 classes"),
        Problem("digits", digits.data, digits.target, 50, "1,797 x 64 plain vectors, 10 classes"),
        Problem("moons", mx, my, 10, "make_moons(1000, noise=0.15)"),
        Problem("circles", cx, cy, 10, "make_circles(1000, noise=0.08, factor=0.5)"),
        Problem("classification", kx, ky, 40, "make_classification(2000, 20 features, 4 classes)"),
    ]
    return {p.name: p for p in out}


def split(p: Problem, seed: int) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """``(labeled, test)`` masks over ``p``'s rows for ``seed``: the one split every
    method of that seed sees."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(p.y))
    train, test_rows = train_test_split(rows, test_size=TEST_SIZE, stratify=p.y, random_state=seed)
    labeled_rows, _ = train_test_split(
        train, train_size=p.labels, stratify=p.y[train], random_state=seed
    )
    labeled = np.zeros(len(rows), bool)
    labeled[labeled_rows] = True
    test = np.zeros(len(rows), bool)
    test[test_rows] = True
    return labeled, test


def write_npz(path: Path, p: Problem, labeled: npt.NDArray[np.bool_], test: Any) -> Path:
    np.savez(path, X=p.x, y=p.y, labeled=labeled, test=test)
    return path


def baselines(
    p: Problem, labeled: npt.NDArray[np.bool_], test: npt.NDArray[np.bool_]
) -> dict[str, float]:
    """Test accuracy of each baseline on this split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from sklearn.semi_supervised import LabelSpreading, SelfTrainingClassifier

    train = ~test
    scaler = StandardScaler().fit(p.x[train])
    x_train, x_test = scaler.transform(p.x[train]), scaler.transform(p.x[test])
    y_train = np.where(labeled[train], p.y[train], -1)
    lab = labeled[train]
    out = {}
    supervised = LogisticRegression(max_iter=5000).fit(x_train[lab], y_train[lab])
    out["supervised LogisticRegression"] = float(supervised.score(x_test, p.y[test]))
    for name, spreading in (
        ("LabelSpreading (kNN)", LabelSpreading(kernel="knn", n_neighbors=7, max_iter=1000)),
        ("LabelSpreading (RBF)", LabelSpreading(kernel="rbf", gamma=20, max_iter=1000)),
    ):
        with warnings.catch_warnings():  # rows no label reaches: NaN, scored as wrong
            warnings.simplefilter("ignore", RuntimeWarning)
            out[name] = float(spreading.fit(x_train, y_train).score(x_test, p.y[test]))
    self_training = SelfTrainingClassifier(LogisticRegression(max_iter=5000), threshold=0.75)
    out["SelfTraining (LogisticRegression)"] = float(
        self_training.fit(x_train, y_train).score(x_test, p.y[test])
    )
    return out


def summary(values: Sequence[float]) -> dict[str, Any]:
    return {
        "accuracies": [round(v, 4) for v in values],
        "mean": statistics.fmean(values),
        "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
    }


def run(
    run_carls: RunCarls,
    folder: Path,
    *,
    datasets: Sequence[str] | None = None,
    seeds: Sequence[int] = SEEDS,
    paradigm: str = PARADIGM,
    say: Say = lambda _: None,
) -> dict[str, Any]:
    names = list(datasets or NAMES)
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise ValueError(f"unknown datasets {unknown}; the suite has {', '.join(NAMES)}")
    problems = suite()
    t0 = time.monotonic()
    result: dict[str, Any] = {"seeds": list(seeds), "paradigm": paradigm, "datasets": {}}
    for name in names:
        p = problems[name]
        ours: list[float] = []
        runs: list[dict[str, Any]] = []
        theirs: dict[str, list[float]] = {}
        for seed in seeds:
            labeled, test = split(p, seed)
            npz = write_npz(folder / f"{name}_s{seed}.npz", p, labeled, test)
            for method, acc in baselines(p, labeled, test).items():
                theirs.setdefault(method, []).append(acc)
            say(f"{name} seed {seed}: carls {paradigm} at its defaults")
            accuracy, knowledge = run_carls(npz, name, seed, paradigm)
            ours.append(accuracy)
            runs.append({"seed": seed, "accuracy": round(accuracy, 4), **knowledge})
            came = knowledge.get("knowledge_from_step")
            say(
                f"{name} seed {seed}: carls {accuracy:.4f}"
                + (f" (knowledge from step {came})" if came is not None else "")
                + "; "
                + ", ".join(f"{m} {a[-1]:.4f}" for m, a in theirs.items())
            )
        base = {m: summary(a) for m, a in theirs.items()}
        best = max(base, key=lambda m: base[m]["mean"])
        mine = summary(ours)
        result["datasets"][name] = {
            "what": p.what,
            "examples": len(p.y),
            "labels": p.labels,
            "carls": mine,
            "carls_runs": runs,
            "baselines": base,
            "best_baseline": best,
            "best_baseline_mean": base[best]["mean"],
            "carls_minus_best": mine["mean"] - base[best]["mean"],
        }
    rows = result["datasets"].values()
    result["matches_best_on_every_set"] = all(r["carls_minus_best"] >= 0 for r in rows)
    result["beats_best_on"] = sum(r["carls_minus_best"] > 0 for r in rows)
    result["wall_s"] = round(time.monotonic() - t0, 1)
    return result
