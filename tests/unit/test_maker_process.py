"""``Maker.process`` and the paradigms' loss terms on the in-memory bank, without servers:
the core of the makers' and the trainers' work, each checked against a computation made
here by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from carls.bank.memory import MemoryBank
from carls.bank.types import NamespaceSpec, default_kinds
from carls.makers import pipeline
from carls.makers.checkpoints import ModelCache
from carls.makers.compute import feature_graph, spread_labels
from carls.makers.pipeline import Maker
from carls.trainers.checkpoints import save_artifact
from carls.trainers.paradigms import Graph, Outputs, PseudoLabel
from tests.integration.makers_support import CLASSES, EMBED, FEATURES, K, tiny_model

N = 40


def exact_neighbours(model: Any, x: np.ndarray) -> list[list[str]]:
    """Each example's K nearest others by cosine of ``model``'s embeddings, ties to the
    lower row: what the makers must write."""
    pool = np.asarray(model(x)[0])
    unit = pool / np.linalg.norm(pool, axis=1, keepdims=True)
    scores = unit @ unit.T
    np.fill_diagonal(scores, -np.inf)
    return [[f"e{j}" for j in np.argsort(-row, kind="stable")[:K]] for row in scores]


@pytest.fixture
def made(tmp_path: Path) -> tuple[MemoryBank, Maker, Any, Any, np.ndarray]:
    bank = MemoryBank()
    bank.create_namespace(NamespaceSpec("ns", default_kinds(EMBED, CLASSES, K), buckets=4))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, FEATURES)).astype(np.float32)
    labels = [int(c) if i % 4 == 0 else -1 for i, c in enumerate(rng.integers(0, CLASSES, N))]
    bank.register_examples("ns", [f"e{i}" for i in range(N)], x, labels)
    model = tiny_model(3)
    manifest = save_artifact(model, tmp_path, "ns", 3)
    maker = Maker(bank, ModelCache(tmp_path), worker="test")
    return bank, maker, manifest, model, x


def test_process_writes_every_kind_at_the_checkpoints_step_from_its_own_outputs(
    made: tuple[MemoryBank, Maker, Any, Any, np.ndarray],
) -> None:
    bank, maker, manifest, model, x = made
    spec = bank.namespace("ns")
    ids = ["e1", "e2", "e5", "ghost", "e1"]  # one unknown id, one repeated
    out = maker.process(spec, manifest, ids)
    assert out.unregistered == ["ghost"] and out.processed == 3
    assert out.written == dict.fromkeys(default_kinds(EMBED, CLASSES, K), 3)
    emb, probs = (np.asarray(t) for t in model(x[[1, 2, 5]]))
    got = bank.read("ns", "embedding", ["e1", "e2", "e5"], lineage=True)
    np.testing.assert_allclose(got.values, emb, rtol=1e-5, atol=1e-6)
    assert set(got.steps.tolist()) == {3}
    pl = bank.read("ns", "pseudo_label", ["e1", "e2", "e5"])
    np.testing.assert_allclose(pl.values, probs, rtol=1e-5, atol=1e-6)
    assert pl.classes is not None and pl.classes.tolist() == probs.argmax(1).tolist()
    # neighbours: exact cosine top-k among every registered example's embedding, not self
    nb = bank.read("ns", "neighbours", ["e1"])
    assert nb.neighbour_ids is not None
    pool = np.asarray(model(x)[0])
    unit = pool / np.linalg.norm(pool, axis=1, keepdims=True)
    scores = unit @ unit[1]
    scores[1] = -np.inf
    expected = [f"e{i}" for i in np.argsort(-scores, kind="stable")[:K]]
    assert nb.neighbour_ids[0] == expected


def test_above_the_exact_threshold_neighbours_come_from_the_index_and_match_exact_ones(
    made: tuple[MemoryBank, Maker, Any, Any, np.ndarray],
) -> None:
    bank, exact, manifest, _, _ = made
    approximate = Maker(bank, exact.cache, worker="test", exact_below=10)
    spec = bank.namespace("ns")
    ids = [f"e{i}" for i in range(N)]
    exact.process(spec, manifest, ids, ["neighbours"])
    want = bank.read("ns", "neighbours", ids)
    approximate.process(spec, manifest, ids, ["neighbours"])
    got = bank.read("ns", "neighbours", ids, lineage=True)
    assert not approximate.pool(spec, exact.cache.get(manifest))[1].exact
    assert set(got.steps.tolist()) == {3}
    assert got.neighbour_ids is not None and want.neighbour_ids is not None
    hits = 0
    for qid, mine, theirs in zip(ids, got.neighbour_ids, want.neighbour_ids, strict=True):
        assert qid not in mine and len(mine) == K
        hits += len(set(mine) & set(theirs))
    assert hits / (K * N) >= 0.95


def test_neighbours_carry_their_models_step_and_never_replace_a_newer_steps(
    made: tuple[MemoryBank, Maker, Any, Any, np.ndarray], tmp_path: Path
) -> None:
    bank, maker, m3, model3, x = made
    m5 = save_artifact(tiny_model(5), tmp_path, "ns", 5)
    spec = bank.namespace("ns")
    ids = [f"e{i}" for i in range(N)]

    # The bank already holds step-5 embeddings; step 3's neighbours still come from the
    # step-3 model's embeddings, and say so.
    maker.process(spec, m5, ids, ["embedding"])
    maker.process(spec, m3, ids, ["neighbours"])
    got = bank.read("ns", "neighbours", ids, lineage=True)
    assert set(got.steps.tolist()) == {3}
    assert got.neighbour_ids == exact_neighbours(model3, x)
    # Step 5's replace them; step 3's, made again late (a replayed batch), do not.
    maker.process(spec, m5, ids, ["neighbours"])
    maker.process(spec, m3, ids, ["neighbours"])
    got = bank.read("ns", "neighbours", ids, lineage=True)
    assert set(got.steps.tolist()) == {5}
    assert got.neighbour_ids == exact_neighbours(tiny_model(5), x)


def test_only_the_kinds_asked_for_are_made(
    made: tuple[MemoryBank, Maker, Any, Any, np.ndarray],
) -> None:
    bank, maker, manifest, _, _ = made
    out = maker.process(bank.namespace("ns"), manifest, ["e0", "e3"], ["prediction"])
    assert out.written == {"prediction": 2}
    assert bank.read("ns", "embedding", ["e0"]).missing.all()


def test_the_pseudo_label_term_is_the_confident_rows_cross_entropy() -> None:
    logits = tf.constant([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    knowledge = {
        "pl_class": tf.constant([0, 2, 2]),
        "pl_w": tf.constant([1.0, 0.0, 0.5]),  # the middle row is not confident
    }
    term = PseudoLabel(weight=2.0).loss(knowledge, Outputs(tf.zeros((3, 4)), logits))["pseudo"]
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(knowledge["pl_class"], logits).numpy()
    expected = 2.0 * (1.0 * ce[0] + 0.0 * ce[1] + 0.5 * ce[2]) / 3
    assert float(term) == pytest.approx(expected, rel=1e-5)


def test_the_graph_term_pulls_embeddings_toward_weighted_neighbours() -> None:
    emb = tf.constant([[1.0, 0.0], [0.0, 2.0]])
    neighbours = tf.constant([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]])
    knowledge = {"g_emb": neighbours, "g_nw": tf.constant([[0.5, 0.5], [1.0, 0.0]])}
    graph = Graph(target="embedding", k=2, weight=1.0)
    term = graph.loss(knowledge, Outputs(emb, tf.zeros((2, 3))))["graph"]
    # row 0: cos 1 and 0 -> 0.5 * 0 + 0.5 * 1; row 1: cos 1 with weight 1 -> 0
    assert float(term) == pytest.approx((0.5 + 0.0) / 2, rel=1e-5)


def test_a_pool_fetched_chunk_by_chunk_serves_neighbour_batches_without_a_fetch(
    made: tuple[MemoryBank, Maker, Any, Any, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    bank, maker, manifest, model, x = made
    monkeypatch.setattr(pipeline, "POOL_CHUNK", 7)  # 40 ids: six fetches, the last short
    spec = bank.namespace("ns")
    maker.prepare_pool(spec, manifest)
    fetched: list[int] = []
    fetch = bank.fetch_examples
    monkeypatch.setattr(
        bank, "fetch_examples", lambda ns, ids: fetched.append(len(ids)) or fetch(ns, ids)
    )
    ids = [f"e{i}" for i in reversed(range(N))] + ["e3"]  # a repeat is written once
    out = maker.process(spec, manifest, ids, ["neighbours"])
    assert fetched == [] and out.processed == N and out.written == {"neighbours": N}
    want = exact_neighbours(model, x)
    got = bank.read("ns", "neighbours", [f"e{i}" for i in range(N)], lineage=True)
    assert got.neighbour_ids == want and set(got.steps.tolist()) == {3}


@pytest.mark.parametrize("share", [1.0, 0.5])
def test_a_pool_takes_the_campaigns_own_embeddings_and_fetches_only_the_rest(
    made: tuple[MemoryBank, Maker, Any, Any, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
    share: float,
) -> None:
    bank, maker, manifest, model, x = made
    spec = bank.namespace("ns")
    ids = [f"e{i}" for i in range(N)]
    maker.collect(spec, manifest, ids)
    maker.pool_stall_s = 0.2  # the other half went to another worker: fetched after this
    first = [k for k in spec.kinds if k != "neighbours"]
    mine = ids[: int(N * share)]
    for s in range(0, len(mine), 8):
        maker.process(spec, manifest, mine[s : s + 8], first)
    fetched: list[str] = []
    fetch = bank.fetch_examples
    monkeypatch.setattr(
        bank, "fetch_examples", lambda ns, some: fetched.extend(some) or fetch(ns, some)
    )
    maker.prepare_pool(spec, manifest)
    assert sorted(fetched) == sorted(ids[len(mine) :])
    maker.process(spec, manifest, ids, ["neighbours"])
    want = exact_neighbours(model, x)
    got = bank.read("ns", "neighbours", ids)
    assert got.neighbour_ids == want


def test_propagated_labels_spread_the_registered_labels_over_the_steps_pool(
    tmp_path: Path,
) -> None:
    from sklearn.datasets import make_moons

    x, y = make_moons(300, noise=0.05, random_state=0)
    feats = np.zeros((300, FEATURES), np.float32)
    feats[:, :2] = x
    labels = np.full(300, -1)
    for c in (0, 1):
        labels[np.flatnonzero(y == c)[:3]] = c
    bank = MemoryBank()
    kinds = {**default_kinds(EMBED, CLASSES, K), "propagated": CLASSES}
    bank.create_namespace(NamespaceSpec("ns", kinds, buckets=2))
    ids = [f"e{i}" for i in range(300)]
    bank.register_examples("ns", ids, feats, labels.tolist())
    manifest = save_artifact(tiny_model(3), tmp_path, "ns", 3)
    maker = Maker(bank, ModelCache(tmp_path), worker="test")
    spec = bank.namespace("ns")
    assert maker.propagate(spec, manifest) == 300
    got = bank.read("ns", "propagated", ids, lineage=True)
    assert set(got.steps.tolist()) == {3} and got.values.shape == (300, CLASSES)
    np.testing.assert_allclose(got.values.sum(axis=1), 1.0, rtol=1e-5)
    # the labeled rows keep their class; the distributions follow the pool's graph
    assert (got.values[labels >= 0].argmax(axis=1) == labels[labels >= 0]).all()
    # the spreads over the inputs' 5- and 10-NN graphs, averaged
    pool, _ = maker.pool(spec, maker.cache.get(manifest))
    rows = [int(i[1:]) for i in pool]
    graph = feature_graph(feats[rows], 10)
    want = np.mean([spread_labels(graph[:, :w], labels[rows], CLASSES)[0] for w in (5, 10)], axis=0)
    order = [pool.index(i) for i in ids]
    np.testing.assert_allclose(got.values, want[order], atol=1e-6)
    assert (got.values.argmax(axis=1) == y).mean() > 0.97  # the moons come apart
    # a later step writes the same spread again, at its own step (fresh for trainers)
    later = save_artifact(tiny_model(5), tmp_path, "ns", 5)
    assert maker.propagate(spec, later) == 300
    again = bank.read("ns", "propagated", ids, lineage=True)
    assert set(again.steps.tolist()) == {5}
    np.testing.assert_allclose(again.values, got.values)
    # a new label changes it
    bank.register_examples("ns", ["e299"], feats[299:], [int(y[299])])
    assert maker.propagate(spec, save_artifact(tiny_model(6), tmp_path, "ns", 6)) == 300
    assert not np.allclose(bank.read("ns", "propagated", ids).values, got.values)
    # a batch asking for every kind makes the per-id ones; propagated is left to campaigns
    out = maker.process(spec, manifest, ids[:5])
    assert "propagated" not in out.written and out.written["embedding"] == 5
