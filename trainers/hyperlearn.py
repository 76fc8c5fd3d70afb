"""HyperLearn's files: hyperedges from modality files, the downstream judge of a
representation, and the quadrant-digits task the bench runs (what hyperedges are made of,
the registration check and the fusion are ``carls.bank.hyperedges``, re-exported here).

A task's modalities are ``.npz`` files of the dataset form (``X``, ``y``, ``ids``, and the
``test``/``labeled`` masks), one per modality, whose ``ids`` name the same item in every
modality it has; an item may lack some modalities. ``build_hypergraph`` joins them:
kNN hyperedges within each modality (an item and its ``k`` nearest, order ``k + 1``) and
co-occurrence hyperedges across modalities (the modalities of one item).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from carls.bank.hyperedges import (
    FUSED,
    Fused,
    bank_check,
    cooccurrence_hyperedges,
    fuse,
    item_operator,
    knn_hyperedges,
    make_hypergraph,
    side_by_side,
    write_fused,
)
from carls.bank.hypergraphs import Hypergraph, HypergraphError

__all__ = [
    "FUSED",
    "QUADRANTS",
    "Fused",
    "ModalityFile",
    "bank_check",
    "build_hypergraph",
    "cooccurrence_hyperedges",
    "downstream_accuracy",
    "fuse",
    "item_operator",
    "knn_hyperedges",
    "quadrant_digits",
    "read_modality",
    "side_by_side",
    "write_fused",
]
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class ModalityFile:
    """A modality's examples as read from its file."""

    modality: str
    ids: list[str]
    x: F32
    y: npt.NDArray[Any]
    test: npt.NDArray[np.bool_] | None
    labeled: npt.NDArray[np.bool_] | None


def read_modality(modality: str, path: Path) -> ModalityFile:
    """A modality file (the dataset ``.npz`` form, with ``ids``)."""
    with np.load(path, allow_pickle=False) as z:
        a = {k: z[k] for k in z.files}
    if "ids" not in a or "X" not in a:
        raise HypergraphError(f"{path}: a modality file holds X and ids (and y, test, labeled)")
    return ModalityFile(
        modality,
        [str(i) for i in a["ids"].tolist()],
        a["X"].astype(np.float32).reshape(len(a["ids"]), -1),
        a.get("y", np.zeros(len(a["ids"]))),
        a.get("test"),
        a.get("labeled"),
    )


def build_hypergraph(
    files: Iterable[ModalityFile], k: int = 3, cross_weight: float = 1.0
) -> Hypergraph:
    """kNN hyperedges within each modality and co-occurrence ones across them."""
    return make_hypergraph([(f.modality, f.ids, f.x, k) for f in files], cross_weight)


def downstream_accuracy(
    z: npt.ArrayLike, y: npt.ArrayLike, train: npt.ArrayLike, test: npt.ArrayLike
) -> float:
    """Accuracy on ``test`` rows of a logistic regression fit on ``train`` rows of ``z``,
    its regularization chosen by 3-fold cross-validation on those rows (so no
    representation is judged at a strength that suits another's scale)."""
    from sklearn.linear_model import LogisticRegressionCV

    za, ya = np.asarray(z), np.asarray(y)
    tr, te = np.asarray(train, bool), np.asarray(test, bool)
    clf = LogisticRegressionCV(Cs=[0.1, 1.0, 10.0, 100.0], cv=3, max_iter=2000)
    with warnings.catch_warnings():  # scikit-learn 1.8's notice of its attributes to come
        warnings.simplefilter("ignore", FutureWarning)
        clf.fit(za[tr], ya[tr])
    return float((clf.predict(za[te]) == ya[te]).mean())


QUADRANTS = ("q0", "q1", "q2", "q3")


def quadrant_digits(
    out: Path,
    *,
    labels: int = 100,
    missing: float = 0.0,
    seed: int = 0,
    k: int = 3,
    modalities: Sequence[str] = QUADRANTS,
) -> dict[str, Any]:
    """Write the quadrant-digits task to ``out``: scikit-learn's 8x8 digits split into four
    4x4 quadrant modalities ``q0``..``q3`` (one ``.npz`` each, item ids ``d<row>``), a
    30 % stratified test split and ``labels`` labeled training items (both by ``seed``),
    a fraction ``missing`` of the items lacking one random quadrant (never all), the
    hypergraph (kNN within each quadrant, the quadrants of one image across) and
    ``full.npz``, the concatenated features with the same split and labels (missing
    quadrants as zeros) for the one-model baseline. Returns the paths and counts."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    n = len(y)
    img = x.reshape(n, 8, 8)
    quads = [img[:, :4, :4], img[:, :4, 4:], img[:, 4:, :4], img[:, 4:, 4:]]
    rng = np.random.default_rng(seed)
    train, test_rows = train_test_split(np.arange(n), test_size=0.3, stratify=y, random_state=seed)
    test = np.zeros(n, bool)
    test[test_rows] = True
    labeled = np.zeros(n, bool)
    per = max(1, labels // 10)
    for c in range(10):
        rows = train[y[train] == c]
        labeled[rng.choice(rows, size=min(per, len(rows)), replace=False)] = True
    lack = np.full(n, -1)
    gone = rng.random(n) < missing
    lack[gone] = rng.integers(0, len(modalities), int(gone.sum()))
    ids = np.asarray([f"d{r:05d}" for r in range(n)])
    out.mkdir(parents=True, exist_ok=True)
    files: list[ModalityFile] = []
    paths: dict[str, str] = {}
    for q, m in enumerate(modalities):
        keep = lack != q
        path = out / f"{m}.npz"
        np.savez(
            path,
            X=quads[q][keep].reshape(int(keep.sum()), -1),
            y=y[keep],
            ids=ids[keep],
            test=test[keep],
            labeled=labeled[keep],
        )
        paths[m] = str(path)
        files.append(read_modality(m, path))
    full = np.concatenate(
        [np.where((lack == q)[:, None], 0.0, quads[q].reshape(n, -1)) for q in range(4)], 1
    )
    np.savez(out / "full.npz", X=full, y=y, ids=ids, test=test, labeled=labeled)
    hg = build_hypergraph(files, k)
    (out / "hypergraph.npz").write_bytes(hg.to_bytes())
    return {
        "modalities": paths,
        "full": str(out / "full.npz"),
        "hypergraph": str(out / "hypergraph.npz"),
        "items": n,
        "lacking_a_modality": int(gone.sum()),
        "hyperedges": hg.orders(),
        "ids": ids.tolist(),
        "y": y.tolist(),
        "test": test.tolist(),
        "labeled": labeled.tolist(),
    }
