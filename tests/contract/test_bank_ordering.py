"""Contract: a write never replaces a newer step, whoever writes; quarantine keeps the clock."""

from __future__ import annotations

import multiprocessing
import random
import threading

import numpy as np
import pytest
from bank_contract_support import (
    Harness,
    MakeNamespace,
    assert_missing,
    assert_rows,
    batch_for,
    lineage,
    vectors,
    write_in_child,
    write_shuffled,
)

from carls.bank.errors import KnowledgeKindError, ValueRejectedError
from carls.bank.protocol import KnowledgeBank, scan_all
from carls.bank.types import KnowledgeBatch


def _ids(n: int, prefix: str = "id") -> list[str]:
    return [f"{prefix}{i:03d}" for i in range(n)]


def test_older_step_never_replaces_newer(
    bank: KnowledgeBank, make_namespace: MakeNamespace
) -> None:
    ns = make_namespace().name
    new = batch_for("embedding", 8, ["a", "b"], seed=5)
    old = batch_for("embedding", 8, ["a", "b"], seed=3)
    bank.write(ns, "embedding", new, lineage(5, maker="new"))
    assert bank.write(ns, "embedding", old, lineage(3, maker="old")) == 2
    read = bank.read(ns, "embedding", ["a", "b"], lineage=True)
    assert_rows(read, [0, 1], new, [0, 1], step=5)
    assert read.makers == ["new", "new"]
    assert read.fingerprints == ["fp5", "fp5"]

    newer = batch_for("embedding", 8, ["a", "b"], seed=6)
    bank.write(ns, "embedding", newer, lineage(6))
    assert_rows(bank.read(ns, "embedding", ["a", "b"]), [0, 1], newer, [0, 1], step=6)


def test_writing_the_same_batch_twice_is_harmless(
    bank: KnowledgeBank, make_namespace: MakeNamespace
) -> None:
    ns = make_namespace().name
    batch = batch_for("pseudo_label", 5, _ids(20), seed=2)
    assert bank.write(ns, "pseudo_label", batch, lineage(7)) == 20
    assert bank.write(ns, "pseudo_label", batch, lineage(7)) == 20
    read = bank.read(ns, "pseudo_label", _ids(20))
    assert_rows(read, range(20), batch, range(20), step=7)
    assert read.classes is not None and batch.classes is not None
    assert read.classes.tolist() == batch.classes.tolist()
    assert len(scan_all(bank, ns, "pseudo_label").ids) == 20


def test_equal_step_writes_converge_whatever_their_order(
    bank: KnowledgeBank, make_namespace: MakeNamespace
) -> None:
    ns = make_namespace(kinds={"embedding": 8}).name
    first, second = vectors(1, 1, 8), vectors(2, 1, 8)
    for id_, order in (("x", (first, second)), ("y", (second, first))):
        for values in order:
            bank.write(ns, "embedding", KnowledgeBatch([id_], values), lineage(5))
    read = bank.read(ns, "embedding", ["x", "y"])
    assert read.steps.tolist() == [5, 5]
    np.testing.assert_array_equal(read.values[0], read.values[1])


def test_out_of_order_steps_end_at_the_newest(
    bank: KnowledgeBank, make_namespace: MakeNamespace
) -> None:
    ns = make_namespace().name
    ids = _ids(50)
    steps = list(range(1, 21))
    random.Random(1234).shuffle(steps)
    for step in steps:
        bank.write(ns, "embedding", KnowledgeBatch(ids, vectors(step, 50, 8)), lineage(step))
    read = bank.read(ns, "embedding", ids)
    assert_rows(read, range(50), KnowledgeBatch(ids, vectors(20, 50, 8)), range(50), step=20)


def test_order_is_kept_per_id(bank: KnowledgeBank, make_namespace: MakeNamespace) -> None:
    ns = make_namespace().name
    ids = _ids(100)
    bank.write(ns, "embedding", KnowledgeBatch(ids[:50], vectors(10, 50, 8)), lineage(10))
    bank.write(ns, "embedding", KnowledgeBatch(ids[25:75], vectors(12, 50, 8)), lineage(12))
    all_11 = KnowledgeBatch(ids, vectors(11, 100, 8))
    bank.write(ns, "embedding", all_11, lineage(11))
    read = bank.read(ns, "embedding", ids)
    assert read.steps.tolist() == [11] * 25 + [12] * 50 + [11] * 25
    assert_rows(read, range(25), all_11, range(25), step=11)
    assert_rows(read, range(75, 100), all_11, range(75, 100), step=11)
    assert_rows(
        read, range(25, 75), KnowledgeBatch(ids[25:75], vectors(12, 50, 8)), range(50), step=12
    )


def _expect_step(bank: KnowledgeBank, ns: str, ids: list[str], step: int) -> None:
    read = bank.read(ns, "embedding", ids)
    assert read.steps.tolist() == [step] * len(ids)
    assert_rows(
        read,
        range(len(ids)),
        KnowledgeBatch(ids, vectors(step, len(ids), 8)),
        range(len(ids)),
        step=step,
    )


def test_concurrent_writers_leave_the_newest_step(
    bank: KnowledgeBank, make_namespace: MakeNamespace
) -> None:
    ns = make_namespace().name
    ids = _ids(200)
    rnd = random.Random(99)
    for round_ in range(3):
        steps = [100 * (round_ + 1) + s for s in range(8)]
        rnd.shuffle(steps)
        barrier = threading.Barrier(len(steps))
        errors: list[BaseException] = []

        def writer(
            step: int, barrier: threading.Barrier = barrier, errors: list[BaseException] = errors
        ) -> None:
            try:
                barrier.wait(timeout=30)
                write_shuffled(bank, ns, ids, 8, step, seed=step, repeats=2, chunks=4)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(s,)) for s in steps]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        _expect_step(bank, ns, ids, max(steps))


def test_concurrent_processes_leave_the_newest_step(
    shared_harness: Harness, make_shared_namespace: MakeNamespace
) -> None:
    bank = shared_harness.bank
    ns = make_shared_namespace().name
    ids = _ids(200)
    steps = [41, 44, 42, 43]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(steps))
    procs = [
        ctx.Process(target=write_in_child, args=(shared_harness.config, ns, ids, 8, step, barrier))
        for step in steps
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert codes == [0] * len(steps)
    _expect_step(bank, ns, ids, 44)


# Quarantine ------------------------------------------------------------------------------

ROWS = {f"r{s}": s for s in range(1, 7)}  # id -> the step that wrote it


def _write_rows(bank: KnowledgeBank, ns: str, kind: str, dim: int) -> dict[str, KnowledgeBatch]:
    batches = {}
    for id_, step in ROWS.items():
        batches[id_] = batch_for(kind, dim, [id_], seed=step)
        bank.write(ns, kind, batches[id_], lineage(step))
    return batches


def test_quarantine_removes_exactly_the_steps_in_range(
    bank: KnowledgeBank, make_namespace: MakeNamespace
) -> None:
    ns = make_namespace(kinds={"embedding": 8, "prediction": 5}).name
    emb = _write_rows(bank, ns, "embedding", 8)
    pred = _write_rows(bank, ns, "prediction", 5)

    assert bank.quarantine(ns, 2, 4) == 6
    ids = list(ROWS)
    for kind, batches in (("embedding", emb), ("prediction", pred)):
        read = bank.read(ns, kind, ids)
        assert_missing(read, [1, 2, 3])
        for pos in (0, 4, 5):
            assert_rows(read, [pos], batches[ids[pos]], [0], step=ROWS[ids[pos]])
    assert bank.quarantine(ns, 2, 4) == 0


def test_quarantined_step_stays_removed_and_newer_writes_land(
    bank: KnowledgeBank, make_namespace: MakeNamespace
) -> None:
    ns = make_namespace(kinds={"embedding": 8}).name
    batches = _write_rows(bank, ns, "embedding", 8)
    assert bank.quarantine(ns, 3, 3) == 1

    bank.write(ns, "embedding", batches["r3"], lineage(3))  # an at-least-once replay
    bank.write(ns, "embedding", batch_for("embedding", 8, ["r3"], seed=2), lineage(2))
    assert_missing(bank.read(ns, "embedding", ["r3"]), [0])

    fresh = batch_for("embedding", 8, ["r3"], seed=70)
    bank.write(ns, "embedding", fresh, lineage(7))
    assert_rows(bank.read(ns, "embedding", ["r3"]), [0], fresh, [0], step=7)
    assert sorted(scan_all(bank, ns, "embedding").ids) == sorted(ROWS)


def test_quarantine_of_some_kinds_leaves_the_others(
    bank: KnowledgeBank, make_namespace: MakeNamespace
) -> None:
    ns = make_namespace(kinds={"embedding": 8, "prediction": 5}).name
    _write_rows(bank, ns, "embedding", 8)
    pred = _write_rows(bank, ns, "prediction", 5)
    assert bank.quarantine(ns, 1, 6, kinds=["embedding"]) == 6
    assert bank.read(ns, "embedding", list(ROWS)).missing.all()
    read = bank.read(ns, "prediction", list(ROWS))
    for pos, id_ in enumerate(ROWS):
        assert_rows(read, [pos], pred[id_], [0], step=ROWS[id_])


def test_quarantine_rejects_bad_ranges_and_kinds(
    bank: KnowledgeBank, make_namespace: MakeNamespace
) -> None:
    ns = make_namespace(kinds={"embedding": 8}).name
    _write_rows(bank, ns, "embedding", 8)
    with pytest.raises(ValueRejectedError):
        bank.quarantine(ns, 5, 4)
    with pytest.raises(KnowledgeKindError):
        bank.quarantine(ns, 1, 6, kinds=["prediction"])
    assert not bank.read(ns, "embedding", list(ROWS)).missing.any()


def test_quarantine_counts_only_rows_in_range(
    bank: KnowledgeBank, make_namespace: MakeNamespace
) -> None:
    ns = make_namespace(kinds={"embedding": 8}).name
    ids = _ids(120)
    steps = np.random.default_rng(3).integers(1, 30, size=120)
    for step in np.unique(steps):
        sel = [i for i, s in zip(ids, steps, strict=True) if s == step]
        bank.write(
            ns,
            "embedding",
            KnowledgeBatch(sel, vectors(int(step), len(sel), 8)),
            lineage(int(step)),
        )
    in_range = (steps >= 10) & (steps <= 19)
    assert bank.quarantine(ns, 10, 19) == int(in_range.sum())
    read = bank.read(ns, "embedding", ids)
    assert read.missing.tolist() == in_range.tolist()
    assert read.steps[~in_range].tolist() == steps[~in_range].tolist()
