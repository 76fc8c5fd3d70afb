"""Contract: coverage and nearest neighbours, computed through the protocol on each bank."""

from __future__ import annotations

import numpy as np
import pytest
from bank_contract_support import MakeNamespace, lineage, vectors

from carls.bank.errors import DimensionError, ValueRejectedError
from carls.bank.protocol import KnowledgeBank, coverage, nearest
from carls.bank.types import KnowledgeBatch


def test_coverage_counts_registered_ids_by_freshness(
    bank: KnowledgeBank, make_namespace: MakeNamespace
) -> None:
    ns = make_namespace().name
    ids = [f"c{i}" for i in range(10)]
    bank.register_examples(ns, ids, np.zeros((10, 2), np.float32))

    empty = coverage(bank, ns, "embedding")
    assert (empty.total, empty.newest_step, empty.at_newest, empty.older, empty.none) == (
        10,
        None,
        0,
        0,
        10,
    )

    bank.write(ns, "embedding", KnowledgeBatch(ids[:4], vectors(5, 4, 8)), lineage(5))
    bank.write(ns, "embedding", KnowledgeBatch(ids[4:7], vectors(3, 3, 8)), lineage(3))
    bank.write(ns, "embedding", KnowledgeBatch(["unregistered"], vectors(9, 1, 8)), lineage(9))
    bank.write(ns, "prediction", KnowledgeBatch(ids, vectors(1, 10, 5)), lineage(1))

    cov = coverage(bank, ns, "embedding")
    assert (cov.namespace, cov.kind, cov.total) == (ns, "embedding", 10)
    assert (cov.newest_step, cov.at_newest, cov.older, cov.none) == (5, 4, 3, 3)
    assert dict(cov.steps) == {5: 4, 3: 3}
    assert cov.fraction_at_newest == pytest.approx(0.4)


def _cosine(mat: np.ndarray, q: np.ndarray) -> np.ndarray:
    return (mat @ q) / (np.linalg.norm(mat, axis=1) * np.linalg.norm(q))


@pytest.mark.parametrize("metric", ["cosine", "dot"])
def test_nearest_matches_brute_force(
    bank: KnowledgeBank, make_namespace: MakeNamespace, metric: str
) -> None:
    ns = make_namespace().name
    ids = [f"n{i}" for i in range(60)]
    mat = vectors(8, 60, 8)
    bank.write(ns, "embedding", KnowledgeBatch(ids, mat), lineage(8))
    q = vectors(1000, 1, 8)[0]

    got = nearest(bank, ns, "embedding", q, 7, metric=metric)
    scores = _cosine(mat, q) if metric == "cosine" else mat @ q
    want = np.argsort(-scores)[:7]
    assert [n.id for n in got] == [ids[i] for i in want]
    np.testing.assert_allclose([n.score for n in got], scores[want], rtol=1e-5)
    assert {n.step for n in got} == {8}
    assert len(nearest(bank, ns, "embedding", q, 100, metric=metric)) == 60


def test_nearest_compares_one_generation_unless_asked(
    bank: KnowledgeBank, make_namespace: MakeNamespace
) -> None:
    ns = make_namespace().name
    q = vectors(1000, 1, 8)[0]
    ids = [f"n{i}" for i in range(20)]
    bank.write(ns, "embedding", KnowledgeBatch(ids, vectors(8, 20, 8)), lineage(8))
    bank.write(ns, "embedding", KnowledgeBatch(["old"], (q * 10)[None, :]), lineage(4))

    assert "old" not in [n.id for n in nearest(bank, ns, "embedding", q, 20)]
    both = nearest(bank, ns, "embedding", q, 3, steps=(4, 8))
    assert (both[0].id, both[0].step) == ("old", 4)
    assert both[0].score == pytest.approx(1.0, abs=1e-5)
    only_old = nearest(bank, ns, "embedding", q, 3, steps=(4, 4))
    assert [n.id for n in only_old] == ["old"]

    top4 = nearest(bank, ns, "embedding", q, 4, steps=(4, 8))
    excluded = nearest(bank, ns, "embedding", q, 2, steps=(4, 8), exclude=["old", top4[1].id])
    assert [n.id for n in excluded] == [top4[2].id, top4[3].id]


def test_nearest_rejects_bad_queries(bank: KnowledgeBank, make_namespace: MakeNamespace) -> None:
    ns = make_namespace().name
    bank.write(ns, "embedding", KnowledgeBatch(["a"], vectors(1, 1, 8)), lineage(1))
    with pytest.raises(DimensionError):
        nearest(bank, ns, "embedding", np.ones(7, np.float32), 3)
    with pytest.raises(DimensionError):
        nearest(bank, ns, "embedding", np.full(8, np.nan, np.float32), 3)
    with pytest.raises(ValueRejectedError):
        nearest(bank, ns, "embedding", np.ones(8, np.float32), 3, metric="l2")
    with pytest.raises(ValueRejectedError):
        nearest(bank, ns, "embedding", np.ones(8, np.float32), 0)
    assert nearest(bank, ns, "embedding/text", np.ones(3, np.float32), 3) == []
