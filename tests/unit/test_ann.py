"""The neighbour index: exact below its threshold, approximate (HNSW) above, and the
approximate one measured against the exact one."""

from __future__ import annotations

import numpy as np
import pytest

from carls.bank.ann import HnswParams, VectorIndex
from carls.bank.similarity import top_k


def _clustered(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    """Points around 500 centres, with noise as large as the centres' spread (a hard case:
    neighbourhoods overlap)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((500, dim)).astype(np.float32) * 0.7
    return (centres[rng.integers(0, 500, n)] + rng.standard_normal((n, dim))).astype(np.float32)


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(f) & set(t)) / truth.shape[1] for f, t in zip(found, truth, strict=True)])
    )


def test_the_approximate_index_finds_at_least_95_percent_of_the_exact_neighbours() -> None:
    x = _clustered(30_000)
    index = VectorIndex(x, exact_below=0)
    assert not index.exact
    queries = np.arange(0, 30_000, 30)
    got, scores = index.search(x[queries], 10, self_index=queries)
    truth, best = top_k(x[queries], x, 10, self_index=queries)
    assert got.shape == (1000, 10) and not (got == queries[:, None]).any()
    assert _recall(got, truth) >= 0.95
    # scores are true cosine similarities, best first, never better than the exact best
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    direct = np.einsum("qd,qkd->qk", unit[queries], unit[got])
    np.testing.assert_allclose(scores, direct, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    assert (scores[:, 0] <= best[:, 0] + 1e-5).all()


def test_calibration_raises_the_search_effort_until_the_recall_target_is_met() -> None:
    """Hard data (overlapping clusters) and a graph built cheaply: the cheapest ef misses
    the target, so calibration raises it, and the recall on other queries follows."""
    x = _clustered(30_000, seed=3)
    queries = np.arange(5, 30_000, 30)
    truth, _ = top_k(x[queries], x, 10, self_index=queries)
    found = {}
    for target in (0.0, 0.99):
        params = HnswParams(expansion_add=16, expansion_search=10, recall_target=target)
        index = VectorIndex(x, exact_below=0, params=params)
        found[target] = _recall(index.search(x[queries], 10, self_index=queries)[0], truth)
        if target == 0:
            assert index.ef == 10 and index.recall is None
        else:
            assert index.ef > 10 and index.recall is not None and index.recall >= 0.99
    assert found[0.0] < 0.9 <= 0.97 <= found[0.99]


@pytest.mark.parametrize("cosine", [True, False])
def test_a_pool_under_the_threshold_is_searched_exactly(cosine: bool) -> None:
    x = _clustered(2_000, seed=1)
    index = VectorIndex(x, cosine=cosine)
    assert index.exact
    q = np.arange(0, 2_000, 7)
    got = index.search(x[q], 10, self_index=q)
    want = top_k(x[q], x, 10, cosine=cosine, self_index=q)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6)


def test_asking_for_more_neighbours_than_there_are_returns_every_other_row() -> None:
    x = _clustered(6, seed=2)
    for exact_below in (0, 100):
        index = VectorIndex(x, exact_below=exact_below)
        rows, scores = index.search(x, 10, self_index=np.arange(6))
        assert rows.shape == scores.shape == (6, 5)
        for i, row in enumerate(rows):
            assert sorted(row) == [j for j in range(6) if j != i]
        outside, _ = index.search(x[:1] * 2, 10)  # not a pool row: all six
        assert sorted(outside[0]) == list(range(6))


def test_memory_grows_with_the_ids_not_their_square() -> None:
    small, large = (VectorIndex(_clustered(n), exact_below=0) for n in (10_000, 40_000))
    per_id = large.memory_bytes / 40_000
    assert per_id < 2_000  # 32-d: 128 bytes of vector twice, the graph's links, slack
    assert large.memory_bytes < 6 * small.memory_bytes


def test_a_one_row_pool_and_the_least_search_effort_still_build() -> None:
    """Calibration has nothing to measure on one row, and raises ef even from 1."""
    assert VectorIndex(_clustered(1), exact_below=0).size == 1
    params = HnswParams(expansion_search=1, recall_target=1.0)
    index = VectorIndex(_clustered(2_000, seed=4), exact_below=0, params=params)
    assert index.ef > 1
