"""Contract: every kind round trips; reads are honest; bad input changes nothing; TTL."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest
from bank_contract_support import (
    CONTRACT_KINDS,
    Harness,
    MakeNamespace,
    assert_missing,
    assert_rows,
    batch_for,
    lineage,
    vectors,
)

from carls.bank.errors import DimensionError, KnowledgeKindError, NamespaceError, ValueRejectedError
from carls.bank.protocol import KnowledgeBank, concat_reads, scan_all
from carls.bank.types import KnowledgeBatch, KnowledgeRead, Lineage, bucket_of


@pytest.mark.parametrize("kind", list(CONTRACT_KINDS))
def test_each_kind_round_trips_in_the_order_asked(
    bank: KnowledgeBank, make_namespace: MakeNamespace, kind: str
) -> None:
    ns = make_namespace().name
    dim = CONTRACT_KINDS[kind]
    ids = [f"k{i}" for i in range(30)]
    batch = batch_for(kind, dim, ids, seed=11)
    assert bank.write(ns, kind, batch, lineage(4)) == 30

    ask = ["k7", "absent", "k0", "k29", "k7", "other"]
    read = bank.read(ns, kind, ask)
    assert read.kind == kind
    assert read.ids == ask
    assert read.values.shape == (6, dim)
    assert read.values.dtype == np.float32
    assert read.missing.tolist() == [False, True, False, False, False, True]
    assert_rows(read, [0, 2, 3, 4], batch, [7, 0, 29, 7], step=4)
    assert_missing(read, [1, 5])
    assert not read.stale.any()
    assert read.usable.tolist() == (~read.missing).tolist()

    if kind == "pseudo_label":
        assert batch.classes is not None and batch.confidence is not None
        assert read.classes is not None and read.confidence is not None
        assert read.classes.tolist() == [
            batch.classes[7],
            -1,
            batch.classes[0],
            batch.classes[29],
            batch.classes[7],
            -1,
        ]
        np.testing.assert_array_equal(read.confidence[[0, 2, 3]], batch.confidence[[7, 0, 29]])
        assert read.confidence[[1, 5]].tolist() == [0.0, 0.0]
    if kind == "neighbours":
        assert batch.neighbour_ids is not None and read.neighbour_ids is not None
        assert read.neighbour_ids == [
            batch.neighbour_ids[7],
            [],
            batch.neighbour_ids[0],
            batch.neighbour_ids[29],
            batch.neighbour_ids[7],
            [],
        ]


def test_per_modality_kind_is_separate_from_embedding(
    bank: KnowledgeBank, make_namespace: MakeNamespace
) -> None:
    ns = make_namespace().name
    text = batch_for("embedding/text", 3, ["a", "b"], seed=1)
    bank.write(ns, "embedding/text", text, lineage(2))
    assert bank.read(ns, "embedding", ["a", "b"]).missing.all()
    assert_rows(bank.read(ns, "embedding/text", ["b", "a"]), [0, 1], text, [1, 0], step=2)


@pytest.mark.parametrize("shape", [(3,), (3, 1)])
def test_difficulty_accepts_a_column_or_a_vector(
    bank: KnowledgeBank, make_namespace: MakeNamespace, shape: tuple[int, ...]
) -> None:
    ns = make_namespace().name
    values = np.array([0.5, 2.25, -1.0], np.float32).reshape(shape)
    bank.write(ns, "difficulty", KnowledgeBatch(["a", "b", "c"], values), lineage(1))
    read = bank.read(ns, "difficulty", ["c", "a", "b"])
    assert read.values.shape == (3, 1)
    assert read.values[:, 0].tolist() == [-1.0, 0.5, 2.25]


def test_fewer_neighbours_than_k_are_kept_at_their_length(
    bank: KnowledgeBank, make_namespace: MakeNamespace
) -> None:
    ns = make_namespace().name
    two = KnowledgeBatch(
        ["a", "b"],
        np.array([[0.9, 0.5], [0.8, 0.1]], np.float32),
        neighbour_ids=[["b", "c"], ["a", "d"]],
    )
    four = KnowledgeBatch(
        ["c"], np.array([[0.7, 0.6, 0.5, 0.4]], np.float32), neighbour_ids=[["a", "b", "d", "e"]]
    )
    bank.write(ns, "neighbours", two, lineage(3))
    bank.write(ns, "neighbours", four, lineage(3))
    read = bank.read(ns, "neighbours", ["a", "c", "zz"])
    assert read.values.shape == (3, 4)
    np.testing.assert_array_equal(read.values[0], np.array([0.9, 0.5, 0, 0], np.float32))
    np.testing.assert_array_equal(read.values[1], four.values[0])
    assert read.neighbour_ids == [["b", "c"], ["a", "b", "d", "e"], []]


def test_lineage_is_returned_on_request(bank: KnowledgeBank, make_namespace: MakeNamespace) -> None:
    ns = make_namespace().name
    before = time.time()
    bank.write(
        ns,
        "embedding",
        batch_for("embedding", 8, ["a"], 1),
        Lineage(step=12, maker="embedder-3", fingerprint="abc123"),
    )
    bank.write(
        ns, "embedding", batch_for("embedding", 8, ["b"], 2), Lineage(step=13, maker="embedder-4")
    )
    read = bank.read(ns, "embedding", ["b", "none", "a"], lineage=True)
    assert read.steps.tolist() == [13, -1, 12]
    assert read.makers == ["embedder-4", "", "embedder-3"]
    assert read.fingerprints == ["", "", "abc123"]
    assert read.written_at is not None
    assert read.written_at[1] == 0.0
    for at in read.written_at[[0, 2]]:
        assert abs(at - before) < 120


def test_written_at_given_by_an_import_is_kept(
    bank: KnowledgeBank, make_namespace: MakeNamespace
) -> None:
    ns = make_namespace().name
    batch = batch_for("embedding", 8, ["a", "b"], 1)
    batch.written_at = np.array([1_600_000_000.25, 1_650_000_000.5])
    bank.write(ns, "embedding", batch, lineage(1))
    read = bank.read(ns, "embedding", ["b", "a"], lineage=True)
    assert read.written_at is not None
    np.testing.assert_allclose(read.written_at, [1_650_000_000.5, 1_600_000_000.25], atol=1e-3)


def test_scan_returns_a_bucket_sorted_with_lineage(
    bank: KnowledgeBank, make_namespace: MakeNamespace
) -> None:
    spec = make_namespace(buckets=3)
    ids = [f"s{i}" for i in range(40)]
    batch = batch_for("pseudo_label", 5, ids, seed=3)
    bank.write(spec.name, "pseudo_label", batch, lineage(9, maker="labeler"))
    seen: list[str] = []
    for bucket in range(3):
        part = bank.scan(spec.name, "pseudo_label", bucket)
        assert part.ids == sorted(i for i in ids if bucket_of(i, 3) == bucket)
        assert_rows(part, range(len(part.ids)), batch, [ids.index(i) for i in part.ids], 9)
        assert part.makers == ["labeler"] * len(part.ids)
        assert part.classes is not None and batch.classes is not None
        assert part.classes.tolist() == [int(batch.classes[ids.index(i)]) for i in part.ids]
        seen += part.ids
        pieces = list(bank.scan_parts(spec.name, "pseudo_label", bucket, 4))
        assert [len(p.ids) for p in pieces] == [
            min(4, len(part.ids) - s) for s in range(0, len(part.ids), 4)
        ]
        joined = concat_reads("pseudo_label", 5, pieces)
        assert joined.ids == part.ids and joined.values.tobytes() == part.values.tobytes()
        assert joined.makers == part.makers and joined.steps.tolist() == part.steps.tolist()
    assert sorted(seen) == sorted(ids)
    everything = scan_all(bank, spec.name, "pseudo_label")
    assert sorted(everything.ids) == sorted(ids)
    assert bank.scan(spec.name, "embedding", 0).ids == []
    assert list(bank.scan_parts(spec.name, "embedding", 0, 4)) == []
    with pytest.raises(ValueRejectedError):
        bank.scan(spec.name, "pseudo_label", 3)
    for bad_rows in (0, -1, 2.0, True):
        with pytest.raises(ValueRejectedError, match="rows"):
            list(bank.scan_parts(spec.name, "pseudo_label", 0, bad_rows))  # type: ignore[arg-type]


def test_staleness_marks_old_rows_and_never_missing_ones(
    bank: KnowledgeBank, make_namespace: MakeNamespace
) -> None:
    ns = make_namespace().name
    for id_, step in (("fresh", 10), ("edge", 9), ("old", 5)):
        bank.write(ns, "embedding", batch_for("embedding", 8, [id_], step), lineage(step))
    ask = ["fresh", "edge", "old", "missing"]
    read = bank.read(ns, "embedding", ask, current_step=12, max_staleness=3)
    assert read.stale.tolist() == [False, False, True, False]
    assert read.missing.tolist() == [False, False, False, True]
    assert read.usable.tolist() == [True, True, False, False]
    assert read.steps.tolist() == [10, 9, 5, -1]
    assert not bank.read(ns, "embedding", ask).stale.any()
    assert bank.read(ns, "embedding", ask, current_step=12, max_staleness=0).stale.tolist() == [
        True,
        True,
        True,
        False,
    ]
    with pytest.raises(ValueRejectedError):
        bank.read(ns, "embedding", ask, current_step=12, max_staleness=-1)


# Bad input: a typed error, and nothing of the batch written ------------------------------

IDS = ["a", "b", "c"]


def _emb(values: np.ndarray, ids: list[str] = IDS) -> KnowledgeBatch:
    return KnowledgeBatch(list(ids), values)


def _with(row: int, value: float, dtype: type[np.floating] = np.float32) -> np.ndarray:
    v = vectors(5, 3, 8).astype(dtype)
    v[row, 3] = value
    return v


BAD_WRITES: dict[str, tuple[str, KnowledgeBatch, type[Exception]]] = {
    "wrong dimension": ("embedding", _emb(vectors(5, 3, 7)), DimensionError),
    "too many rows": ("embedding", _emb(vectors(5, 4, 8)), DimensionError),
    "one-dimensional": ("embedding", _emb(vectors(5, 1, 24)[0]), DimensionError),
    "nan": ("embedding", _emb(_with(2, np.nan)), ValueRejectedError),
    "inf": ("embedding", _emb(_with(1, np.inf)), ValueRejectedError),
    "float32 overflow": ("embedding", _emb(_with(2, 1e39, np.float64)), ValueRejectedError),
    "not numbers": ("embedding", _emb(np.full((3, 8), "x")), ValueRejectedError),
    "over-long id": (
        "embedding",
        _emb(vectors(5, 3, 8), ["a", "b", "x" * 257]),
        ValueRejectedError,
    ),
    "over-long id in bytes": (
        "embedding",
        _emb(vectors(5, 3, 8), ["a", "b", "é" * 129]),
        ValueRejectedError,
    ),
    "empty id": ("embedding", _emb(vectors(5, 3, 8), ["a", "b", ""]), ValueRejectedError),
    "duplicate ids": ("embedding", _emb(vectors(5, 3, 8), ["a", "b", "a"]), ValueRejectedError),
    "undeclared kind": ("prediction", _emb(vectors(5, 3, 5)), KnowledgeKindError),
    "unknown kind": ("bogus", _emb(vectors(5, 3, 8)), KnowledgeKindError),
    "pseudo_label without classes": ("pseudo_label", _emb(vectors(5, 3, 5)), ValueRejectedError),
    "class out of range": (
        "pseudo_label",
        KnowledgeBatch(
            IDS,
            vectors(5, 3, 5),
            classes=np.array([0, 1, 5], np.int32),
            confidence=np.ones(3, np.float32),
        ),
        ValueRejectedError,
    ),
    "nan confidence": (
        "pseudo_label",
        KnowledgeBatch(
            IDS,
            vectors(5, 3, 5),
            classes=np.array([0, 1, 2], np.int32),
            confidence=np.array([1, np.nan, 1], np.float32),
        ),
        ValueRejectedError,
    ),
    "more neighbours than k": (
        "neighbours",
        KnowledgeBatch(IDS, vectors(5, 3, 5), neighbour_ids=[list("vwxyz")] * 3),
        DimensionError,
    ),
    "neighbour ids do not match scores": (
        "neighbours",
        KnowledgeBatch(IDS, vectors(5, 3, 2), neighbour_ids=[["x", "y"], ["x", "y"], ["x"]]),
        DimensionError,
    ),
    "neighbours without ids": ("neighbours", _emb(vectors(5, 3, 2)), ValueRejectedError),
}


@pytest.mark.parametrize(("kind", "batch", "error"), BAD_WRITES.values(), ids=BAD_WRITES)
def test_bad_write_raises_and_writes_nothing(
    bank: KnowledgeBank,
    make_namespace: MakeNamespace,
    kind: str,
    batch: KnowledgeBatch,
    error: type[Exception],
) -> None:
    kinds = {k: v for k, v in CONTRACT_KINDS.items() if k != "prediction"}
    ns = make_namespace(kinds=kinds).name
    baseline = {k: batch_for(k, kinds[k], ["a", "b"], seed=1) for k in kinds}
    for k, b in baseline.items():
        bank.write(ns, k, b, lineage(1))

    with pytest.raises(error):
        bank.write(ns, kind, batch, lineage(2))

    for k, b in baseline.items():
        read = bank.read(ns, k, ["a", "b", "c"])
        assert_rows(read, [0, 1], b, [0, 1], step=1)
        assert_missing(read, [2])


def test_empty_batch_rejected(bank: KnowledgeBank, make_namespace: MakeNamespace) -> None:
    ns = make_namespace().name
    with pytest.raises(ValueRejectedError):
        bank.write(ns, "embedding", KnowledgeBatch([], np.zeros((0, 8), np.float32)), lineage(1))
    assert scan_all(bank, ns, "embedding").ids == []


def test_longest_id_is_accepted(bank: KnowledgeBank, make_namespace: MakeNamespace) -> None:
    ns = make_namespace().name
    ids = ["ü" * 128, "x" * 256]
    batch = batch_for("embedding", 8, ids, 1)
    bank.write(ns, "embedding", batch, lineage(1))
    assert_rows(bank.read(ns, "embedding", ids), [0, 1], batch, [0, 1], step=1)


BAD_READS: dict[str, tuple[Callable[[KnowledgeBank, str], object], type[Exception]]] = {
    "no ids": (lambda b, ns: b.read(ns, "embedding", []), ValueRejectedError),
    "one string": (lambda b, ns: b.read(ns, "embedding", "abc"), ValueRejectedError),
    "over-long id": (lambda b, ns: b.read(ns, "embedding", ["a", "x" * 257]), ValueRejectedError),
    "undeclared kind": (lambda b, ns: b.read(ns, "prediction", ["a"]), KnowledgeKindError),
    "unknown kind": (lambda b, ns: b.read(ns, "bogus", ["a"]), KnowledgeKindError),
    "unknown namespace": (lambda b, ns: b.read(ns + "_nope", "embedding", ["a"]), NamespaceError),
}


@pytest.mark.parametrize(("call", "error"), BAD_READS.values(), ids=BAD_READS)
def test_bad_read_raises(
    bank: KnowledgeBank,
    make_namespace: MakeNamespace,
    call: Callable[[KnowledgeBank, str], object],
    error: type[Exception],
) -> None:
    ns = make_namespace(kinds={"embedding": 8}).name
    with pytest.raises(error):
        call(bank, ns)


# TTL -------------------------------------------------------------------------------------


def test_rows_past_their_ttl_read_as_missing(
    harness: Harness, make_namespace: MakeNamespace
) -> None:
    bank, ttl = harness.bank, harness.short_ttl_s
    ns = make_namespace(kinds={"embedding": 8, "prediction": 5}, ttl_s={"embedding": ttl}).name
    emb = batch_for("embedding", 8, ["a", "b"], 1)
    pred = batch_for("prediction", 5, ["a", "b"], 1)
    bank.write(ns, "prediction", pred, lineage(1))
    read = _fresh_read(bank, ns, emb, ttl / 2, first_step=1)
    expired_step = int(read.steps[0])
    assert_rows(read, [0, 1], emb, [0, 1], step=expired_step)

    harness.let_time_pass(ttl + 1)
    deadline = time.monotonic() + 10
    while not bank.read(ns, "embedding", ["a", "b"]).missing.all():
        assert time.monotonic() < deadline, "rows outlived their TTL by 10 s"
        time.sleep(0.2)
    assert bank.scan(ns, "embedding", bucket_of("a", 8)).ids == []
    assert_rows(bank.read(ns, "prediction", ["a", "b"]), [0, 1], pred, [0, 1], step=1)

    read = _fresh_read(bank, ns, emb, ttl / 2, first_step=expired_step + 1)
    assert_rows(read, [0, 1], emb, [0, 1], step=int(read.steps[0]))


def _fresh_read(
    bank: KnowledgeBank, ns: str, batch: KnowledgeBatch, seconds: float, first_step: int
) -> KnowledgeRead:
    """Write ``batch`` of embeddings and read it back within ``seconds``, so rows with a
    short TTL are read before they can expire. A server's clock cannot be stopped: a slow
    machine writes again, one step newer (an expired row shadows its own step), and one
    that never manages it in 60 s fails the test rather than skipping the check."""
    deadline = time.monotonic() + 60
    step = first_step
    while True:
        started = time.monotonic()
        bank.write(ns, "embedding", batch, lineage(step))
        read = bank.read(ns, "embedding", ["a", "b"])
        if time.monotonic() - started < seconds:
            assert (read.steps == step).all()
            return read
        assert time.monotonic() < deadline, f"never read back within {seconds} s of writing"
        step += 1
