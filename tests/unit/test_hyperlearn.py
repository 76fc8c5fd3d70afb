"""HyperLearn's parts on the in-memory bank: hypergraphs as data (checked, registered
whole or not at all), the normalized incidence operator, a learner's inputs from the
other modalities' embeddings, a modality that joins while the learners run, the fused
representation, and learners run as jobs."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from carls.bank.artifacts import ArtifactStore
from carls.bank.blobs import MemoryBlobs
from carls.bank.errors import DimensionError
from carls.bank.hypergraphs import Hypergraph, HypergraphError, HypergraphStore, load
from carls.bank.jobs import MemoryJobStore
from carls.bank.memory import MemoryBank
from carls.bank.types import KnowledgeBatch, Lineage, NamespaceSpec
from carls.trainers import hyperlearn as hl
from carls.trainers.errors import SpecError
from carls.trainers.paradigms import HyperLearn, Setup
from carls.trainers.paradigms.hypergraph import Operator
from carls.trainers.runner import Context, JobRun, new_job_id
from carls.trainers.spec import load_spec

E = 4


def edges(*rows: list[tuple[str, str]]) -> Hypergraph:
    return Hypergraph.of(rows)


# Hypergraphs as data -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rows", "weights", "says"),
    [
        ([[("a", "1")]], None, "order 1; a hyperedge joins 2 to 4"),
        ([[("a", str(i)) for i in range(5)]], None, "order 5; a hyperedge joins 2 to 4"),
        ([[("a", "1"), ("a", "1")]], None, "an item appears twice"),
        ([[("a", "1"), ("b", "1")]], [0.0], "weight 0.0; weights are positive"),
        ([[("a", "1"), ("b", "1")]], [float("nan")], "weight nan"),
        ([[("A!", "1"), ("b", "1")]], None, "modality 'A!' must match"),
    ],
)
def test_a_malformed_hyperedge_is_refused_naming_it(
    rows: list[list[tuple[str, str]]], weights: list[float] | None, says: str
) -> None:
    with pytest.raises(HypergraphError, match="hyperedge 'e0' \\(row 0\\)") as err:
        Hypergraph.of(rows, weights)
    assert says in str(err.value)


def test_a_hypergraph_file_round_trips_and_bad_files_are_refused(tmp_path: Path) -> None:
    hg = Hypergraph.of(
        [[("a", "1"), ("b", "1")], [("a", "1"), ("a", "2"), ("b", "2"), ("c", "9")]], [1.0, 2.5]
    )
    back = load(hg.to_bytes())
    assert back.members == hg.members and back.weights.tolist() == [1.0, 2.5]
    assert back.orders() == {2: 1, 4: 1} and back.modalities == ["a", "b", "c"]
    bad = tmp_path / "bad.npz"
    np.savez(bad, modality=np.array([["a", "b"]]), id=np.array([["1", ""]]))
    with pytest.raises(HypergraphError, match="row 0: a member needs both a modality and an id"):
        load(bad)
    np.savez(bad, modality=np.array([["a", "b"]]), id=np.array([["1", "2"]]), extra=np.ones(1))
    with pytest.raises(HypergraphError, match="unknown arrays \\['extra'\\]"):
        load(bad)


def test_registering_writes_all_or_nothing_and_the_newest_is_the_tasks() -> None:
    store = HypergraphStore(MemoryBlobs())
    first = edges([("a", "1"), ("b", "1")])
    with pytest.raises(HypergraphError, match="modality 'b': nobody trains it"):
        store.register("t", first, lambda m, ids: "nobody trains it" if m == "b" else None)
    assert store.newest("t") is None  # nothing written
    store.register("t", first)
    second = edges([("a", "1"), ("b", "1")], [("a", "1"), ("c", "1")])
    store.register("t", second)
    got = store.read("t")
    assert got is not None and got.members == second.members
    assert store.drop("t") >= 1 and store.read("t") is None


def _bank_with(task: str, modality: str, ids: list[str], kinds: dict[str, int]) -> MemoryBank:
    bank = MemoryBank()
    bank.create_namespace(NamespaceSpec(f"{task}_{modality}", kinds))
    bank.register_examples(f"{task}_{modality}", ids, np.zeros((len(ids), 2), np.float32))
    return bank


def test_the_bank_check_names_an_untrained_modality_and_unknown_ids() -> None:
    bank = _bank_with("t", "a", ["1", "2"], {"embedding/a": E})
    check = hl.bank_check(bank, "t")
    assert check("a", ["1", "2"]) is None
    assert "no namespace t_b: no learner of this modality has started" in str(check("b", ["1"]))
    assert check("a", ["1", "7", "8"]) == "2 ids are not examples registered in t_a (e.g. '7', '8')"
    other = _bank_with("t", "a", ["1"], {"embedding": E})
    assert "not a hypergraph learner's namespace" in str(hl.bank_check(other, "t")("a", ["1"]))


# The operator and a learner's inputs ------------------------------------------------------
def test_the_operator_is_hgnns_normalized_incidence_operator() -> None:
    hg = Hypergraph.of(
        [
            [("a", "1"), ("a", "2"), ("b", "1")],
            [("a", "2"), ("a", "3")],
            [("a", "1"), ("b", "2"), ("b", "1"), ("a", "3")],
        ],
        [1.0, 2.0, 0.5],
    )
    op = Operator(hg, "a", ("1", "2", "3"))
    nodes = [("a", "1"), ("a", "2"), ("a", "3"), ("b", "1"), ("b", "2")]
    h = np.array([[(n in e) for e in map(set, hg.members)] for n in nodes], float)
    w = np.diag(hg.weights)
    de = np.diag(1 / h.sum(0))
    dv = np.diag(1 / np.sqrt(h @ hg.weights))
    p = dv @ h @ w @ de @ h.T @ dv
    np.testing.assert_allclose(op.own.toarray(), p[:3, :3])
    ids, cols = op.others["b"]
    assert ids == ["1", "2"]
    np.testing.assert_allclose(cols.toarray(), p[:3, 3:])


def _learner(task: str, modality: str, ids: list[str], d: int, slots: int = 2) -> HyperLearn:
    p = HyperLearn(modality=modality, slots=slots)
    x = np.random.default_rng(0).normal(size=(len(ids), d)).astype(np.float32)
    padded = np.pad(x, ((0, 0), (0, p.width(d, E))))
    p.bind(Setup(f"{task}_{modality}", 2, E, tuple(ids), padded))
    return p


def test_a_learner_takes_in_the_others_embeddings_through_the_hypergraph() -> None:
    ids = ["1", "2", "3"]
    bank, store = MemoryBank(), HypergraphStore(MemoryBlobs())
    bank.create_namespace(NamespaceSpec("t_b", {"embedding/b": E}))
    e_b = np.arange(3 * E, dtype=np.float32).reshape(3, E)
    bank.write("t_b", "embedding/b", KnowledgeBatch(["1", "2"], e_b[:2]), Lineage(5, "b"))
    hg = Hypergraph.of([[("a", "1"), ("b", "1")], [("a", "2"), ("b", "2"), ("b", "3")]])
    store.register("t", hg)
    p = _learner("t", "a", ids, 3)
    p.attach(store, bank)
    p.poll()
    assert p.modalities == {"b": 0}
    block = p.block([0, 1, 2])
    d = 3
    slot, mass = block[:, d : d + E], block[:, d + 2 * E]
    # item 1: its one hyperedge joins b:1 alone -> P's whole row mass on b:1
    op = Operator(hg, "a", tuple(ids))
    _, cols = op.others["b"]
    row = cols.toarray()
    unit = e_b  # taken in as published
    np.testing.assert_allclose(slot[0], row[0, 0] * unit[0], rtol=1e-5)
    # item 2: b:3 has no embedding yet -> the aggregate over b:2, rescaled to the row mass
    np.testing.assert_allclose(slot[1], (row[1, 1] + row[1, 2]) * unit[1], rtol=1e-5)
    np.testing.assert_allclose(mass[:2], [1.0, 0.5])
    assert (block[2] == 0).all()  # item 3 is in no hyperedge


def test_a_modality_registered_while_learners_run_is_picked_up_without_a_restart() -> None:
    bank, store = MemoryBank(), HypergraphStore(MemoryBlobs())
    ids = ["1", "2"]
    store.register("t", Hypergraph.of([[("a", "1"), ("b", "1")], [("a", "2"), ("b", "2")]]))
    p = _learner("t", "a", ids, 3)
    p.attach(store, bank)
    p.poll()
    assert p.modalities == {"b": 0}
    bank.create_namespace(NamespaceSpec("t_c", {"embedding/c": E}))
    bank.write(
        "t_c", "embedding/c", KnowledgeBatch(ids, np.ones((2, E), np.float32)), Lineage(1, "c")
    )
    store.register(
        "t",
        Hypergraph.of([[("a", "1"), ("b", "1"), ("c", "1")], [("a", "2"), ("b", "2"), ("c", "2")]]),
    )
    p.poll()
    assert p.modalities == {"b": 0, "c": 1}
    block = p.block([0, 1])
    assert (block[:, 3 + E : 3 + 2 * E] > 0).all()  # c's slot filled
    assert block[:, 3 + 2 * E + 1].tolist() == [1.0, 1.0]  # all of c there


def test_modalities_beyond_the_slots_are_left_out_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = HypergraphStore(MemoryBlobs())
    store.register("t", Hypergraph.of([[("a", "1"), ("b", "1"), ("c", "1"), ("d", "1")]]))
    p = _learner("t", "a", ["1"], 2, slots=2)
    p.attach(store, MemoryBank())
    p.poll()
    assert p.modalities == {"b": 0, "c": 1}
    assert "modality d left out: all 2 slots are taken" in caplog.text


def test_a_learners_namespace_names_its_task_and_modality() -> None:
    p = HyperLearn(modality="q0")
    assert p.task_of("digits_q0") == "digits"
    with pytest.raises(SpecError, match="namespace is <task>_q0"):
        p.task_of("digits")
    with pytest.raises(SpecError, match="namespace is t_q0"):
        HyperLearn(modality="q0", task="t").task_of("u_q0")


# Hyperedges from data, and the fused representation ----------------------------------------
def test_knn_and_cooccurrence_hyperedges() -> None:
    x = np.array([[0.0], [0.1], [0.2], [5.0], [5.1], [5.2]])
    ids = [str(i) for i in range(6)]
    knn = hl.knn_hyperedges("a", ids, x, k=2)
    assert all(len(e) == 3 for e in knn)
    assert {frozenset(i for _, i in e) for e in knn} == {frozenset("012"), frozenset("345")}
    co = hl.cooccurrence_hyperedges({"a": ["1", "2"], "b": ["1"], "c": ["1", "3"]})
    assert co == [(("a", "1"), ("b", "1"), ("c", "1"))]
    five = hl.cooccurrence_hyperedges({m: ["1"] for m in "abcde"})
    assert len(five) == 10 and all(len(e) == 2 for e in five)  # pairs beyond order 4
    with pytest.raises(HypergraphError, match="1 <= k <= 3"):
        hl.knn_hyperedges("a", ids, x, k=4)


def test_the_fused_representation_concatenates_and_convolves_over_items() -> None:
    bank = MemoryBank()
    for m in ("a", "b"):
        bank.create_namespace(NamespaceSpec(f"t_{m}", {f"embedding/{m}": 2}))
    bank.write(
        "t_a",
        "embedding/a",
        KnowledgeBatch(["1", "2"], np.array([[3.0, 4], [1, 0]], np.float32)),
        Lineage(1, "a"),
    )
    bank.write(
        "t_b",
        "embedding/b",
        KnowledgeBatch(["1"], np.array([[0.0, 2]], np.float32)),
        Lineage(1, "b"),
    )
    hg = Hypergraph.of([[("a", "1"), ("a", "2")], [("a", "1"), ("b", "1")]])
    side, present = hl.side_by_side(bank, "t", ["a", "b"], ["1", "2"], 2)
    np.testing.assert_allclose(side, [[0.6, 0.8, 0, 1], [1, 0, 0, 0]], atol=1e-6)
    assert present.tolist() == [[1, 1], [1, 0]]  # item 2 lacks b: zeros there
    z, _ = hl.fuse(bank, "t", hg, ["1", "2"], 2)
    p = hl.item_operator(hg, ["1", "2"]).toarray()
    np.testing.assert_allclose(z, p @ side, atol=1e-6)
    assert p[0, 1] > 0  # the a-kNN hyperedge joins items 1 and 2; the 1-1 one joins none
    lone = Hypergraph.of([[("a", "1"), ("b", "1")]])  # joins no two items
    np.testing.assert_allclose(hl.fuse(bank, "t", lone, ["1", "2"], 2)[0], side, atol=1e-6)


# Learners as jobs ------------------------------------------------------------------------
def _spec(ns: str, path: Path, modality: str, steps: int = 60) -> object:
    return load_spec(
        {
            "namespace": ns,
            "dataset": {"path": str(path)},
            "model": {"hidden": [16], "embedding_dim": 8},
            "paradigm": {
                "name": "hypergraph",
                "params": {"modality": modality, "poll_s": 0.2, "every": 10},
            },
            "train": {"steps": steps, "eval_every": 20, "labeled_batch_size": 16, "seed": 0},
        }
    )


def test_learners_run_as_jobs_publish_every_nodes_embedding_and_refuse_a_changed_width(
    tmp_path: Path,
) -> None:
    info = hl.quadrant_digits(tmp_path, labels=50, missing=0.2, seed=0, modalities=hl.QUADRANTS)
    bank, blobs = MemoryBank(), MemoryBlobs()
    store = HypergraphStore(blobs)
    ctx = Context(
        bank=bank,
        publisher=None,
        store=ArtifactStore(tmp_path / "ck", blobs=blobs),
        jobs=MemoryJobStore(),
    )
    states: dict[str, dict[str, object]] = {}

    def run(m: str) -> None:
        spec = _spec(f"dq_{m}", Path(info["modalities"][m]), m)
        states[m] = JobRun(new_job_id(f"dq_{m}"), spec, ctx).run()  # type: ignore[arg-type]

    threads = [threading.Thread(target=run, args=(m,)) for m in ("q0", "q1")]
    for t in threads:
        t.start()
    hg = load(Path(info["hypergraph"]))
    cut = [[(m, i) for m, i in e if m in ("q0", "q1")] for e in hg.members]
    two = Hypergraph.of([e for e in cut if len(e) >= 2])
    check = hl.bank_check(bank, "dq")
    for _ in range(600):
        if all(check(m, two.ids_of(m)) is None for m in two.modalities):
            break
        threading.Event().wait(0.1)
    store.register("dq", two, check)
    for t in threads:
        t.join()
    for m in ("q0", "q1"):
        assert states[m]["state"] == "succeeded", states[m]
        ids = np.load(info["modalities"][m])["ids"].tolist()
        got = bank.read(f"dq_{m}", f"embedding/{m}", ids)
        assert not got.missing.any()  # train and test nodes alike
    # the same namespace with another feature width: refused, its examples untouched
    wide = tmp_path / "wide.npz"
    z = np.load(info["modalities"]["q0"])
    np.savez(
        wide,
        X=np.pad(z["X"], ((0, 0), (0, 3))),
        y=z["y"],
        ids=z["ids"],
        test=z["test"],
        labeled=z["labeled"],
    )
    before = bank.fetch_examples("dq_q0", z["ids"][:5].tolist()).features
    run = JobRun(new_job_id("dq_q0"), _spec("dq_q0", wide, "q0"), ctx)  # type: ignore[arg-type]
    with pytest.raises(
        DimensionError, match="dimension 65 does not match the namespace's 59"
    ) as err:
        run.run()
    assert "modality q0 had 16 feature columns in dq_q0, now 19" in str(err.value)
    assert run.state["state"] == "failed"
    after = bank.fetch_examples("dq_q0", z["ids"][:5].tolist()).features
    np.testing.assert_array_equal(before, after)


def test_the_fusion_is_written_as_a_kind_and_a_changed_width_is_refused() -> None:
    bank = MemoryBank()
    for m in ("a", "b"):
        bank.create_namespace(NamespaceSpec(f"t_{m}", {f"embedding/{m}": 2}))
        bank.write(
            f"t_{m}",
            f"embedding/{m}",
            KnowledgeBatch(["1", "2"], np.ones((2, 2), np.float32)),
            Lineage(1, m),
        )
    hg = Hypergraph.of([[("a", "1"), ("b", "1")], [("a", "2"), ("b", "2")]])
    fused = hl.write_fused(bank, "t", hg, 2)
    assert fused.namespace == "t_fused" and fused.modalities == ["a", "b"]
    got = bank.read("t_fused", "fused", ["1", "2"])
    assert not got.missing.any() and got.values.shape == (2, 4)
    bank.create_namespace(NamespaceSpec("t_c", {"embedding/c": 2}))
    three = Hypergraph.of([[("a", "1"), ("b", "1"), ("c", "1")]])
    with pytest.raises(HypergraphError, match="t_fused holds fused rows of width 4; 3 modalities"):
        hl.write_fused(bank, "t", three, 2)


def test_a_newer_hypergraph_without_a_modality_leaves_its_slot_empty() -> None:
    bank, store = MemoryBank(), HypergraphStore(MemoryBlobs())
    bank.create_namespace(NamespaceSpec("t_b", {"embedding/b": E}))
    bank.write(
        "t_b", "embedding/b", KnowledgeBatch(["1"], np.ones((1, E), np.float32)), Lineage(1, "b")
    )
    store.register("t", Hypergraph.of([[("a", "1"), ("b", "1")], [("a", "1"), ("a", "2")]]))
    p = _learner("t", "a", ["1", "2"], 3)
    p.attach(store, bank)
    p.poll()
    assert (p.block([0])[0, 3 : 3 + E] > 0).all()
    store.register("t", Hypergraph.of([[("a", "1"), ("a", "2")]]))  # b gone
    p.poll()
    assert (p.block([0, 1])[:, 3:] == 0).all()  # b's slot and mass empty, no error
    assert p.block([0])[0, :3].any()  # the own aggregate follows the new hypergraph


def test_the_items_operator_is_hgnns_operator_over_items() -> None:
    hg = Hypergraph.of(
        [
            [("a", "1"), ("a", "2"), ("a", "3")],
            [("a", "2"), ("b", "2"), ("b", "3")],  # joins items 2 and 3
            [("a", "1"), ("b", "1")],  # one item: joins none
        ],
        [1.0, 2.0, 1.0],
    )
    ids = ["1", "2", "3"]
    h = np.array([[1, 0], [1, 1], [1, 1]], float)
    w, de = np.diag([1.0, 2.0]), np.diag([1 / 3, 1 / 2])
    dv = np.diag(1 / np.sqrt(h @ [1.0, 2.0]))
    np.testing.assert_allclose(hl.item_operator(hg, ids).toarray(), dv @ h @ w @ de @ h.T @ dv)


def test_modalities_with_different_embedding_widths_are_refused() -> None:
    bank = MemoryBank()
    for m, e in (("a", 4), ("b", 8)):
        bank.create_namespace(NamespaceSpec(f"t_{m}", {f"embedding/{m}": e}))
        bank.register_examples(f"t_{m}", ["1"], np.zeros((1, 2), np.float32))
    store = HypergraphStore(MemoryBlobs())
    with pytest.raises(HypergraphError, match="embedding widths differ \\(a 4, b 8\\)"):
        store.register("t", Hypergraph.of([[("a", "1"), ("b", "1")]]), hl.bank_check(bank, "t"))
    assert store.newest("t") is None


def test_a_file_that_is_not_a_hypergraph_is_refused_with_a_message(tmp_path: Path) -> None:
    np.save(tmp_path / "one.npy", np.ones(3))
    with pytest.raises(HypergraphError, match="it holds one array"):
        load(tmp_path / "one.npy")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(HypergraphError, match=r"not a hypergraph \.npz file"):
        load(tmp_path / "junk.npz")


def test_a_learner_waits_for_its_hypergraph_until_it_comes_or_the_job_stops() -> None:
    store = HypergraphStore(MemoryBlobs())
    p = _learner("t", "a", ["1", "2"], 3)
    p.wait_s, p.poll_s = 30.0, 0.05
    stopping = threading.Event()
    p.attach(store, MemoryBank(), stopping.is_set)
    threading.Timer(0.3, stopping.set).start()
    t0 = time.monotonic()
    p.start()  # no hypergraph: waits until the job is asked to stop
    assert 0.25 < time.monotonic() - t0 < 10 and p.modalities == {}
    p.stop()
    q = _learner("t", "a", ["1", "2"], 3)
    q.wait_s, q.poll_s = 30.0, 0.05
    q.attach(store, MemoryBank())
    hg = Hypergraph.of([[("a", "1"), ("b", "1")]])
    threading.Timer(0.3, lambda: store.register("t", hg)).start()
    q.start()  # returns once the hypergraph is there
    try:
        assert q.modalities == {"b": 0}
    finally:
        q.stop()
