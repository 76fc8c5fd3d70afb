"""The pseudo-label paradigm's choice of pseudo labels, on a reader's cache made by hand:
fixed, adaptive and soft thresholds, distribution alignment, class weights, and the
pseudo labels' accuracy on held-out labeled examples."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from carls.trainers.paradigms import PseudoLabel, Setup, View
from carls.trainers.reader import Slice

LABELS = np.array([0, 1, 2, -1, -1, -1, -1, -1], np.int32)
VALUES = np.array(
    [
        [1.0, 0.0, 0.0],  # the labeled rows' own pseudo labels: never used
        [0.0, 1.0, 0.0],
        [0.0, 0.0, 1.0],
        [0.99, 0.005, 0.005],
        [0.90, 0.05, 0.05],
        [0.02, 0.97, 0.01],
        [0.05, 0.05, 0.90],
        [0.0, 0.0, 0.0],  # no pseudo label yet
    ],
    np.float32,
)


class Cache:
    """A reader holding ``VALUES`` as the pseudo labels of the trainer's eight examples."""

    def get(self, ns: str, kind: str, rows: Any, step: int, max_staleness: Any) -> Slice:
        idx = np.asarray(rows)
        steps = np.where(VALUES[idx].sum(axis=1) > 0, 100, -1)
        return Slice(VALUES[idx], steps, steps >= 0, VALUES[idx].argmax(1), VALUES[idx].max(1))


def used(
    p: PseudoLabel, rows: list[int] | None = None, view: View | None = None
) -> dict[str, np.ndarray]:
    p.bind(Setup("ns", classes=3, embedding_dim=4))
    view = view or View(Cache(), LABELS, max_staleness=None)  # type: ignore[arg-type]
    p.refresh(view, 100)
    return p.prepare(view, np.arange(8) if rows is None else np.array(rows), 100)


def test_a_fixed_threshold_uses_every_confident_unlabeled_row() -> None:
    got = used(PseudoLabel(thresholds="fixed", threshold=0.8, class_balance=False))
    assert (got["pl_w"] > 0).tolist() == [False] * 3 + [True] * 4 + [False]
    assert got["pl_class"][3:7].tolist() == [0, 0, 1, 2]


def test_adaptive_thresholds_ask_more_of_the_class_the_model_favours() -> None:
    # mean confidence 0.94; class means 0.49, 0.26875, 0.24125: bars 0.94, 0.516, 0.463
    p = PseudoLabel(thresholds="adaptive", class_balance=False)
    got = used(p)
    np.testing.assert_allclose(p._bars, [0.94, 0.94 * 0.26875 / 0.49, 0.94 * 0.24125 / 0.49])
    assert (got["pl_w"] > 0).tolist() == [False] * 3 + [True, False, True, True, False]


def test_distribution_alignment_moves_unsure_rows_toward_the_labels_class_frequencies() -> None:
    unsure = [0.5, 0.45, 0.05]
    VALUES[7] = unsure
    try:
        plain = used(PseudoLabel(thresholds="fixed", threshold=0.0, class_balance=False), [7])
        aligned = used(
            PseudoLabel(thresholds="fixed", threshold=0.0, class_balance=False, align=True), [7]
        )
    finally:
        VALUES[7] = 0.0
    assert plain["pl_class"].tolist() == [0] and aligned["pl_class"].tolist() == [1]


def test_class_weights_count_the_pseudo_labels_actually_used() -> None:
    p = PseudoLabel(thresholds="adaptive")
    got = used(p)
    # used: one each of classes 0, 1, 2 (row 4's class 0 is below its bar): equal weights
    assert p._class_weights.tolist() == [1.0, 1.0, 1.0]
    assert got["pl_w"][[3, 5, 6]].tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="thresholds"):
        PseudoLabel(thresholds="sometimes")


def test_soft_thresholds_use_every_pseudo_label_weighing_the_unsure_ones_of_a_class_less() -> None:
    # class 0: confidences 0.99 and 0.90, mean 0.945, variance 0.045^2: row 4 sits one
    # standard deviation below, weight exp(-1/2); classes 1 and 2 have one row each
    p = PseudoLabel(thresholds="soft", class_balance=False)
    got = used(p)
    assert (got["pl_w"] > 0).tolist() == [False] * 3 + [True] * 4 + [False]
    np.testing.assert_allclose(got["pl_w"][3:7], [1.0, np.exp(-0.5), 1.0, 1.0], rtol=1e-5)
    np.testing.assert_allclose(p._soft[0], [0.945, 0.97, 0.90], rtol=1e-6)


def test_held_out_labels_measure_the_pseudo_labels_without_being_learnt_from() -> None:
    view = View(Cache(), LABELS, max_staleness=None)  # type: ignore[arg-type]
    view.held_out = np.array([-1, -1, -1, -1, 0, 2, -1, 1], np.int32)
    got = used(PseudoLabel(thresholds="fixed", threshold=0.95, class_balance=False), view=view)
    # row 4 is right (0), row 5 wrong (1 for 2), row 7 has no pseudo label yet
    assert view.stats["pseudo_accuracy"] == 0.5 and view.stats["pseudo_held_out"] == 2
    assert view.stats["pseudo_used_accuracy"] == 0.0  # only row 5 passes 0.95
    # held-out rows are unlabeled to training: their pseudo labels are used like any other
    assert got["pl_w"][5] > 0
