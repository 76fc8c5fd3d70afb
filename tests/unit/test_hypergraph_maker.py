"""The workers' hypergraph maker on the in-memory bank: it makes the hypergraph of a task
whose learners ask for one once their examples hold still, again when a modality joins,
never replaces a registered one, fuses the modalities' embeddings when newer ones come,
and one worker at a time serves a task."""

from __future__ import annotations

import numpy as np
import pytest

from carls.bank.blobs import MemoryBlobs
from carls.bank.hyperedges import FUSED
from carls.bank.hypergraphs import Hypergraph, HypergraphStore, Learner
from carls.bank.indexes import MemoryLeases
from carls.bank.memory import MemoryBank
from carls.bank.types import KnowledgeBatch, Lineage, NamespaceSpec
from carls.makers import hypergraphs
from carls.makers.hypergraphs import LEASE_SCOPE, HypergraphMaker
from carls.trainers.paradigms import HyperLearn, Setup

E, D = 4, 3
IDS = [f"i{n}" for n in range(12)]


def learner(bank: MemoryBank, store: HypergraphStore, m: str, ids: list[str], knn: int | None = 2):
    """What a learner of modality ``m`` does at its start: its namespace, its examples
    (features padded past its own ``D`` columns, as the runner pads them), and its word."""
    bank.create_namespace(NamespaceSpec(f"t_{m}", {f"embedding/{m}": E}))
    x = np.random.default_rng(len(m) + ord(m[0])).normal(size=(len(ids), D))
    padded = np.pad(x, ((0, 0), (0, 5))).astype(np.float32)
    bank.register_examples(f"t_{m}", ids, padded)
    store.announce(Learner("t", m, D, E, knn))


def embeddings(bank: MemoryBank, m: str, ids: list[str], step: int) -> None:
    values = np.random.default_rng(step).normal(size=(len(ids), E)).astype(np.float32)
    bank.write(f"t_{m}", f"embedding/{m}", KnowledgeBatch(ids, values), Lineage(step, "test"))


@pytest.fixture
def parts() -> tuple[MemoryBank, HypergraphStore, HypergraphMaker]:
    bank, store = MemoryBank(), HypergraphStore(MemoryBlobs())
    return bank, store, HypergraphMaker(bank, store, MemoryLeases(), "w1", fuse_every_s=0)


def test_the_hypergraph_is_made_once_the_examples_hold_still_and_again_when_a_modality_joins(
    parts: tuple[MemoryBank, HypergraphStore, HypergraphMaker],
) -> None:
    bank, store, maker = parts
    learner(bank, store, "a", IDS)
    learner(bank, store, "b", IDS[:9])
    maker.tick()
    assert store.newest("t") is None  # first look: the examples may still be coming
    maker.tick()
    first = store.read("t")
    assert first is not None and first.modalities == ["a", "b"]
    made = store.newest("t")
    assert made is not None and "made_from" in made.meta
    assert {len(e) for e in first.members} == {2, 3}  # kNN of order 3, a and b across
    across = [e for e in first.members if {m for m, _ in e} == {"a", "b"}]
    assert sorted(i for (_, i), _ in across) == IDS[:9]  # the items both have
    listed = []
    listing = bank.example_ids
    bank.example_ids = lambda ns, b: listed.append(ns) or listing(ns, b)  # type: ignore[method-assign]
    maker.tick()
    assert store.newest("t") == made and maker.made == 1  # nothing changed: nothing made
    assert listed == []  # nor listed: a current hypergraph costs a look no scan
    learner(bank, store, "c", IDS[3:])  # a third modality's learner starts
    maker.tick()
    maker.tick()
    second = store.read("t")
    assert second is not None and second.modalities == ["a", "b", "c"]
    assert set(second.ids_of("c")) == set(IDS[3:]) and maker.made == 2


def test_a_registered_hypergraph_is_never_replaced_and_a_task_without_knn_is_not_made(
    parts: tuple[MemoryBank, HypergraphStore, HypergraphMaker],
) -> None:
    bank, store, maker = parts
    learner(bank, store, "a", IDS)
    learner(bank, store, "b", IDS)
    mine = Hypergraph.of([[("a", "i0"), ("b", "i0")]])
    registered = store.register("t", mine)
    for _ in range(3):
        maker.tick()
    assert store.newest("t") == registered and maker.made == 0
    other = MemoryBank()
    bare = HypergraphStore(MemoryBlobs())
    learner(other, bare, "a", IDS, knn=None)
    learner(other, bare, "b", IDS, knn=None)
    lazy = HypergraphMaker(other, bare, None, "w1")
    lazy.tick()
    lazy.tick()
    assert bare.newest("t") is None


def test_the_embeddings_are_fused_when_newer_ones_come(
    parts: tuple[MemoryBank, HypergraphStore, HypergraphMaker],
) -> None:
    bank, store, maker = parts
    learner(bank, store, "a", IDS)
    learner(bank, store, "b", IDS)
    maker.tick()
    maker.tick()
    assert maker.fused == 0  # a hypergraph, but no embeddings yet
    embeddings(bank, "a", IDS, 25)
    maker.tick()
    assert maker.fused == 1
    fused = bank.read("t_fused", FUSED, IDS)
    assert fused.values.shape == (len(IDS), 2 * E) and not fused.missing.any()
    np.testing.assert_allclose(fused.values[:, E:], 0.0)  # b has published nothing yet
    maker.tick()
    assert maker.fused == 1  # nothing newer
    embeddings(bank, "b", IDS, 25)
    maker.tick()
    assert maker.fused == 2
    assert np.abs(bank.read("t_fused", FUSED, IDS).values[:, E:]).sum() > 0
    learner(bank, store, "c", IDS)  # a third modality: the fused rows are made anew, wider
    embeddings(bank, "c", IDS, 5)
    maker.tick()
    maker.tick()
    assert bank.namespace("t_fused").kinds[FUSED] == 3 * E
    assert np.abs(bank.read("t_fused", FUSED, IDS).values[:, 2 * E :]).sum() > 0


def test_one_worker_at_a_time_serves_a_task() -> None:
    bank, store, leases = MemoryBank(), HypergraphStore(MemoryBlobs()), MemoryLeases()
    one = HypergraphMaker(bank, store, leases, "w1")
    two = HypergraphMaker(bank, store, leases, "w2")
    learner(bank, store, "a", IDS)
    learner(bank, store, "b", IDS)
    for _ in range(3):
        one.tick()
        two.tick()
    assert (one.made, two.made) == (1, 0)
    assert len(store.blobs.entries("hypergraphs/t")) == 1
    leases.release(LEASE_SCOPE, "t", "w1")  # w1 stopped: w2 takes the task over
    learner(bank, store, "c", IDS)
    for _ in range(2):
        two.tick()
    assert two.made == 1 and leases.holder(LEASE_SCOPE, "t") == "w2"
    one.tick()
    assert one.made == 1 and "t" not in one.tasks  # w2's now


def test_a_hypergraph_that_cannot_be_registered_is_not_made_again_until_something_changes(
    parts: tuple[MemoryBank, HypergraphStore, HypergraphMaker],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bank, store, maker = parts
    learner(bank, store, "a", IDS)
    bank.create_namespace(NamespaceSpec("t_b", {"embedding/b": E + 1}))  # another width
    bank.register_examples("t_b", IDS, np.zeros((len(IDS), 8), np.float32))
    store.announce(Learner("t", "b", D, E + 1, 2))
    embeddings(bank, "a", IDS, 3)
    builds = []
    make = hypergraphs.make_hypergraph
    monkeypatch.setattr(hypergraphs, "make_hypergraph", lambda *a: builds.append(1) or make(*a))
    for _ in range(6):
        maker.tick()
    assert len(builds) == 1 and maker.made == 0 and store.newest("t") is None
    learner(bank, store, "c", IDS)  # the announcements changed: tried again
    maker.tick()
    maker.tick()
    assert len(builds) == 2 and maker.made == 0
    maker.tasks["t"].rescan_at = 0.0  # and after a while (the bank may have been away)
    maker.tick()
    assert len(builds) == 3


def test_the_learner_announces_its_modality_and_whether_the_workers_make_the_hypergraph() -> None:
    store = HypergraphStore(MemoryBlobs())
    p = HyperLearn(modality="a", slots=2, knn=3, cross_weight=2.0, wait_s=0)
    padded = np.zeros((2, D + p.width(D, E)), np.float32)
    p.bind(Setup("t_a", 2, E, ("1", "2"), padded))
    p.attach(store, MemoryBank())
    p.start()
    p.stop()
    assert store.learners() == {"t": {"a": Learner("t", "a", D, E, 3, 2.0)}}
    store.drop("t")
    assert store.learners() == {}


def test_the_announcement_of_a_dropped_namespace_is_forgotten(
    parts: tuple[MemoryBank, HypergraphStore, HypergraphMaker],
) -> None:
    bank, store, maker = parts
    learner(bank, store, "a", IDS)
    learner(bank, store, "b", IDS)
    bank.drop_namespace("t_b")
    maker.tick()
    assert set(store.learners()["t"]) == {"a"}
    assert maker.leases is not None and maker.leases.holder(LEASE_SCOPE, "t") == "w1"
    bank.drop_namespace("t_a")
    maker.tick()
    assert store.learners() == {} and maker.tasks == {}
    assert maker.leases.holder(LEASE_SCOPE, "t") is None  # nothing left: the lease given up
