"""The makers' numpy core: pseudo-labels, difficulty, neighbours and knowledge batches."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pytest

from carls.bank.rows import check_batch
from carls.bank.types import NamespaceSpec, default_kinds
from carls.makers.compute import (
    check_finite,
    difficulty,
    feature_graph,
    knowledge_batch,
    knowledge_batches,
    neighbours_batch,
    pseudo_labels,
    spread_labels,
    top_k_neighbours,
)
from carls.makers.errors import BadModelOutputError, InvalidInputError, MakerError

PROBS = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.1, 0.1, 0.8],
        [0.4, 0.45, 0.15],
    ],
    dtype=np.float32,
)


def test_pseudo_labels_take_argmax_and_its_probability() -> None:
    classes, confidence, probs = pseudo_labels(PROBS)
    assert classes.dtype == np.int32 and classes.tolist() == [0, 2, 1]
    assert confidence.dtype == np.float32
    np.testing.assert_allclose(confidence, [0.7, 0.8, 0.45])
    assert probs.dtype == np.float32 and np.array_equal(probs, PROBS)


def test_pseudo_labels_reject_wrong_rank_and_nan() -> None:
    with pytest.raises(InvalidInputError, match="2-d"):
        pseudo_labels(np.ones(3, np.float32))
    bad = PROBS.copy()
    bad[2, 1] = np.nan
    with pytest.raises(BadModelOutputError, match="row 2"):
        pseudo_labels(bad)


def test_difficulty_is_loss_where_labeled_and_margin_where_not() -> None:
    labels = np.array([0, -1, 2])
    got = difficulty(PROBS, labels)
    assert got.dtype == np.float32 and got.shape == (3,)
    np.testing.assert_allclose(got[0], -math.log(0.7), rtol=1e-6)
    np.testing.assert_allclose(got[1], 1 - (0.8 - 0.1), rtol=1e-6)
    np.testing.assert_allclose(got[2], -math.log(0.15), rtol=1e-6)


def test_difficulty_floors_zero_probabilities_and_orders_hard_above_easy() -> None:
    probs = np.array([[1.0, 0.0], [0.5, 0.5], [0.99, 0.01]], dtype=np.float32)
    got = difficulty(probs, np.array([1, -1, -1]))
    np.testing.assert_allclose(got[0], -math.log(1e-7), rtol=1e-5)
    assert got[1] == pytest.approx(1.0)  # a coin toss is as hard as it gets unlabeled
    assert got[2] < got[1]


def test_difficulty_single_class_margin_against_zero() -> None:
    got = difficulty(np.array([[1.0], [0.25]], np.float32), np.array([-1, -1]))
    np.testing.assert_allclose(got, [0.0, 0.75])


@pytest.mark.parametrize("labels", [[0, -1, 3], [-2, 0, 0]])
def test_difficulty_rejects_labels_out_of_range(labels: list[int]) -> None:
    with pytest.raises(InvalidInputError, match="labels: row") as info:
        difficulty(PROBS, np.array(labels))
    assert isinstance(info.value, ValueError) and isinstance(info.value, MakerError)


def test_difficulty_rejects_label_count_mismatch() -> None:
    with pytest.raises(InvalidInputError, match="expected 3 ints"):
        difficulty(PROBS, np.array([0, 1]))


def test_check_finite_names_array_and_first_bad_row() -> None:
    arr = np.zeros((4, 2), np.float32)
    check_finite("ok", arr)
    arr[1, 0] = np.inf
    arr[3, 1] = np.nan
    with pytest.raises(BadModelOutputError, match=r"embedding: NaN or Inf in row 1 of 4"):
        check_finite("embedding", arr)


def _brute_force(
    query_ids: list[str],
    q: np.ndarray,
    pool_ids: list[str],
    pool: np.ndarray,
    k: int,
    metric: str,
) -> tuple[list[list[str]], list[list[float]]]:
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        pool = pool / np.linalg.norm(pool, axis=1, keepdims=True)
    scores = (q @ pool.T).astype(np.float32)
    ids, vals = [], []
    for i, qid in enumerate(query_ids):
        cands = [j for j in range(len(pool_ids)) if pool_ids[j] != qid]
        cands.sort(key=lambda j: (-scores[i, j], j))
        ids.append([pool_ids[j] for j in cands[:k]])
        vals.append([float(scores[i, j]) for j in cands[:k]])
    return ids, vals


@pytest.mark.parametrize("metric", ["cosine", "dot"])
def test_neighbours_match_brute_force_on_random_data(metric: str) -> None:
    rng = np.random.default_rng(7)
    pool = rng.normal(size=(300, 16)).astype(np.float32)
    pool_ids = [f"p{j}" for j in range(300)]
    query_ids = [*pool_ids[:40], "outside-1", "outside-2"]
    q = np.concatenate([pool[:40], rng.normal(size=(2, 16)).astype(np.float32)])
    ids, scores = top_k_neighbours(query_ids, q, pool_ids, pool, 10, metric)
    want_ids, want_scores = _brute_force(query_ids, q, pool_ids, pool, 10, metric)
    assert scores.dtype == np.float32 and scores.shape == (42, 10)
    assert ids == want_ids
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    assert all(qid not in row for qid, row in zip(query_ids, ids, strict=True))


def test_neighbours_chunk_queries_without_changing_results(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    pool = rng.normal(size=(50, 4)).astype(np.float32)
    ids = [f"x{j}" for j in range(50)]
    whole = top_k_neighbours(ids, pool, ids, pool, 5)
    monkeypatch.setattr("carls.makers.compute.MAX_SCORE_ELEMENTS", 50 * 3)  # three queries a chunk
    chunked = top_k_neighbours(ids, pool, ids, pool, 5)
    assert chunked[0] == whole[0]
    np.testing.assert_array_equal(chunked[1], whole[1])


def test_neighbour_ties_go_to_the_lower_pool_index() -> None:
    pool = np.array([[1, 0], [0, 1], [0, 1], [0, 1], [0, 1]], dtype=np.float32)
    pool_ids = ["a", "b", "c", "d", "e"]
    ids, scores = top_k_neighbours(["q"], np.array([[0, 1]], np.float32), pool_ids, pool, 2)
    assert ids == [["b", "c"]]
    np.testing.assert_allclose(scores, [[1.0, 1.0]])
    ids, _ = top_k_neighbours(["c"], np.array([[0, 1]], np.float32), pool_ids, pool, 3)
    assert ids == [["b", "d", "e"]]


def test_neighbours_k_larger_than_pool() -> None:
    pool = np.eye(3, dtype=np.float32)
    pool_ids = ["a", "b", "c"]
    ids, scores = top_k_neighbours(pool_ids, pool, pool_ids, pool, 10)
    assert scores.shape == (3, 2)  # every query is in the pool: at most two others each
    assert ids == [["b", "c"], ["a", "c"], ["a", "b"]]
    ids, scores = top_k_neighbours(["z"], pool[:1], pool_ids, pool, 10)
    assert scores.shape == (1, 3) and ids == [["a", "b", "c"]]


def test_neighbours_of_the_only_pool_member_are_empty() -> None:
    ids, scores = top_k_neighbours(["a"], np.ones((1, 2)), ["a"], np.ones((1, 2)), 4)
    assert ids == [[]] and scores.shape == (1, 0)


def test_neighbours_zero_vectors_score_zero_under_cosine() -> None:
    pool = np.array([[0, 0], [1, 0]], dtype=np.float32)
    ids, scores = top_k_neighbours(["q"], np.array([[2, 0]], np.float32), ["z", "x"], pool, 2)
    assert ids == [["x", "z"]]
    np.testing.assert_allclose(scores, [[1.0, 0.0]])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 0}, "k: must be"),
        ({"metric": "l2"}, "metric"),
        ({"query_vecs": np.ones((2, 3), np.float32)}, "dimension"),
        ({"query_ids": ["a"]}, "expected 1 rows"),
        ({"pool_ids": ["p", "p"]}, "twice"),
    ],
)
def test_neighbours_reject_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {
        "query_ids": ["a", "b"],
        "query_vecs": np.ones((2, 2), np.float32),
        "pool_ids": ["p", "q"],
        "pool_vecs": np.ones((2, 2), np.float32),
        "k": 1,
    }
    args.update(kwargs)
    with pytest.raises(InvalidInputError, match=match):
        top_k_neighbours(**args)  # type: ignore[arg-type]


def test_neighbours_reject_nan_vectors() -> None:
    pool = np.ones((2, 2), np.float32)
    pool[1, 1] = np.nan
    with pytest.raises(BadModelOutputError, match="pool_vecs: NaN or Inf in row 1"):
        top_k_neighbours(["a"], np.ones((1, 2)), ["p", "q"], pool, 1)


def test_knowledge_batches_fit_the_bank_kinds() -> None:
    spec = NamespaceSpec("ns", default_kinds(dim=4, classes=3, k=2))
    ids = ["a", "b", "c"]
    emb = np.arange(12, dtype=np.float32).reshape(3, 4)
    labels = np.array([0, -1, 1])
    batches = knowledge_batches(
        ["embedding", "prediction", "pseudo_label", "difficulty"], ids, emb, PROBS, labels
    )
    for kind, batch in batches.items():
        checked = check_batch(spec, kind, batch)
        assert checked.ids == ids
    assert batches["difficulty"].values.shape == (3, 1)
    assert batches["pseudo_label"].classes is not None
    assert batches["pseudo_label"].classes.tolist() == [0, 2, 1]
    np.testing.assert_array_equal(batches["embedding"].values, emb)

    nids, scores = top_k_neighbours(ids, emb, ids, emb, 2)
    check_batch(spec, "neighbours", neighbours_batch(ids, nids, scores))


def test_knowledge_batch_refuses_what_it_cannot_make() -> None:
    emb = np.zeros((3, 2), np.float32)
    with pytest.raises(InvalidInputError, match="needs labels"):
        knowledge_batch("difficulty", ["a", "b", "c"], emb, PROBS)
    with pytest.raises(InvalidInputError, match="top_k_neighbours"):
        knowledge_batch("neighbours", ["a", "b", "c"], emb, PROBS)
    with pytest.raises(InvalidInputError, match="2 ids for 3 rows"):
        knowledge_batch("prediction", ["a", "b"], emb, PROBS)
    with pytest.raises(InvalidInputError, match="one string"):
        knowledge_batches("embedding", ["a", "b", "c"], emb, PROBS)
    assert knowledge_batch("embedding/image", ["a", "b", "c"], emb, PROBS).values.shape == (3, 2)


def test_nan_model_outputs_never_become_knowledge() -> None:
    probs = PROBS.copy()
    probs[1, 0] = np.inf
    for kind in ("prediction", "pseudo_label", "difficulty"):
        with pytest.raises(BadModelOutputError, match="probabilities"):
            knowledge_batch(kind, ["a", "b", "c"], np.zeros((3, 2)), probs, np.array([0, 0, 0]))


def test_label_spreading_converges_to_its_closed_form_and_leaves_the_unreached_uniform() -> None:
    rng = np.random.default_rng(0)
    n, k, classes, alpha = 30, 4, 3, 0.9
    neighbours = rng.integers(0, 25, size=(n, k))  # rows 25..29 are nobody's neighbour ...
    neighbours[25:] = -1  # ... and have none: unreached
    labels = np.full(n, -1)
    labels[[0, 1, 2]] = [0, 1, 2]
    got, reached = spread_labels(
        neighbours, labels, classes, alpha=alpha, iterations=400, class_mass=False
    )
    w = np.zeros((n, n))
    for i, row in enumerate(neighbours):
        for j in row[row >= 0]:
            if j != i:
                w[i, j] = w[j, i] = 1.0
    d = w.sum(axis=1)
    inv = np.where(d > 0, 1 / np.sqrt(np.maximum(d, 1e-12)), 0)
    s = inv[:, None] * w * inv[None, :]
    y = np.zeros((n, classes))
    y[[0, 1, 2], [0, 1, 2]] = 1
    f = (1 - alpha) * np.linalg.solve(np.eye(n) - alpha * s, y)
    want = f / np.maximum(f.sum(axis=1, keepdims=True), 1e-30)
    assert reached[:25].all() and not reached[25:].any()
    np.testing.assert_allclose(got[:25], want[:25], atol=1e-4)
    np.testing.assert_allclose(got[25:], 1 / classes)


def test_label_spreading_over_input_neighbours_separates_two_moons_from_ten_labels() -> None:
    from sklearn.datasets import make_moons

    x, y = make_moons(1000, noise=0.1, random_state=0)
    labels = np.full(1000, -1)
    for c in (0, 1):
        labels[np.flatnonzero(y == c)[:5]] = c
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    neighbours = np.argsort(d, axis=1)[:, :7]
    got, reached = spread_labels(neighbours, labels, 2)
    assert reached.all() and (got.argmax(axis=1) == y).mean() > 0.97


def test_class_mass_normalization_gives_each_class_its_share_of_the_labels() -> None:
    # a dense clique around class 0's label and a sparse chain from class 1's: spreading
    # alone hands class 0 most of the mass; normalized, the classes weigh as their labels
    n = 40
    neighbours = np.full((n, 6), -1)
    for i in range(20):  # rows 0..19: a clique of six-neighbour rows
        neighbours[i] = [(i + d) % 20 for d in range(1, 7)]
    for i in range(20, n):  # rows 20..39: a chain, row 19 links it to the clique
        neighbours[i, 0] = i - 1
    labels = np.full(n, -1)
    labels[[0, 39]] = [0, 1]
    plain, _ = spread_labels(neighbours, labels, 2, class_mass=False)
    got, reached = spread_labels(neighbours, labels, 2)
    assert reached.all()
    assert plain[:, 0].sum() > 1.2 * plain[:, 1].sum()  # the clique floods ...
    raw = spread_labels(neighbours, labels, 2, class_mass=False)[0]
    assert (got.argmax(axis=1) == 1).sum() > (raw.argmax(axis=1) == 1).sum()  # ... undone
    # the labeled rows keep their class either way
    assert got[0].argmax() == 0 and got[39].argmax() == 1


def test_the_feature_graph_is_the_standardized_inputs_euclidean_knn() -> None:
    from sklearn.neighbors import NearestNeighbors
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 5)) * [1, 10, 100, 0.1, 1]  # scales differ by 1000x
    x[:, 4] = 3.0  # a constant column carries nothing
    want = (
        NearestNeighbors(n_neighbors=8)
        .fit(StandardScaler().fit_transform(x[:, :4]))
        .kneighbors(return_distance=False)
    )
    exact = feature_graph(x, 8)
    assert exact.shape == (400, 8) and (exact != np.arange(400)[:, None]).all()
    assert np.mean([len(set(a) & set(b)) / 8 for a, b in zip(exact, want, strict=True)]) > 0.99
    approximate = feature_graph(x, 8, exact_below=100)  # an HNSW index
    hits = np.mean([len(set(a) & set(b)) / 8 for a, b in zip(approximate, want, strict=True)])
    assert hits > 0.9
    assert feature_graph(x[:1], 8).shape == (1, 0) and feature_graph(x[:3], 8).shape == (3, 2)


@pytest.mark.parametrize(
    ("neighbours", "labels", "words"),
    [
        (np.zeros((3, 2)), [0, 1, -1], "an (n, k) int array"),
        (np.array([[1], [5], [0]]), [0, 1, -1], "row numbers must be in [-1, 3)"),
        (np.array([[1], [2], [0]]), [0, 3, -1], "row 1 holds 3"),
    ],
)
def test_label_spreading_names_bad_input(neighbours: Any, labels: list[int], words: str) -> None:
    with pytest.raises(InvalidInputError, match=re.escape(words)):
        spread_labels(neighbours, labels, 2)
