"""The makers' failure policy without servers: a bug crashes the worker with its records
counted in the bank, records in hand at a crash are then handled one at a time, and a
record that crashed ``max_crashes`` workers is dead-lettered as a suspected poison pill.
Each "worker" here is a fresh ``Makers`` sharing one crash store, as restarted processes
share the bank."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from carls.bank.artifacts import ArtifactStore
from carls.bank.memory import MemoryBank
from carls.bank.verdicts import MemoryCrashes, MemoryVerdicts
from carls.makers import worker as worker_module
from carls.makers.worker import Makers, WorkerConfig
from carls.settings import Settings


def record(offset: int, value: bytes = b"ok") -> Any:
    return SimpleNamespace(topic="ids", partition=0, offset=offset, value=value)


def new_worker(crashes: MemoryCrashes, letters: list[tuple[int, str]]) -> Makers:
    s = Settings()
    cfg = WorkerConfig(kafka=s.kafka, topics=s.topics, max_crashes=3)
    w = Makers(
        cfg,
        bank=MemoryBank(),
        verdicts=MemoryVerdicts(),
        crashes=crashes,
        artifacts=ArtifactStore(Path(tempfile.gettempdir()), "file"),
    )

    async def dead_letter(rec: Any, reason: str, error: Any) -> None:
        letters.append((rec.offset, reason))

    w._dead_letter = dead_letter  # type: ignore[method-assign]
    return w


def test_a_record_that_crashes_every_worker_is_set_aside_after_max_crashes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker_module, "CRASHES_TTL_S", 0.0)
    crashes, letters, handled = MemoryCrashes(), [], []
    fetch = [record(0), record(1, b"bug"), record(2)]

    async def handle(records: Sequence[Any]) -> None:
        if any(r.value == b"bug" for r in records):
            raise ZeroDivisionError("a bug")
        handled.extend(r.offset for r in records)

    def attempt() -> BaseException | None:
        w = new_worker(crashes, letters)
        try:
            asyncio.run(w.guarded(w.ids_group, fetch, handle))
        except ZeroDivisionError as exc:
            return exc
        finally:
            w.close()
        return None

    assert attempt() is not None  # the first crash blames the whole fetch
    assert crashes.crashes("carls-makers-ids") == {"ids/0/0": 1, "ids/0/1": 1, "ids/0/2": 1}
    assert handled == []
    # replayed after restarts: one at a time, so only the culprit gains crashes
    assert attempt() is not None and attempt() is not None
    assert crashes.crashes("carls-makers-ids") == {"ids/0/0": 1, "ids/0/1": 3, "ids/0/2": 1}
    assert handled == [0, 0] and letters == []
    # the next worker sets it aside and goes on
    assert attempt() is None
    assert letters == [(1, "suspected poison pill: 3 workers crashed while handling it")]
    assert handled == [0, 0, 0, 2]


def test_bad_data_is_dead_lettered_without_a_crash_and_without_counting() -> None:
    crashes, letters = MemoryCrashes(), []
    w = new_worker(crashes, letters)
    try:
        asyncio.run(w._process_records([record(7, b"\xff not a record")]))
    finally:
        w.close()
    assert [o for o, _ in letters] == [7] and "undecodable example batch" in letters[0][1]
    assert crashes.crashes("carls-makers-ids") == {}


def test_a_tombstone_among_id_batches_is_skipped() -> None:
    crashes, letters = MemoryCrashes(), []
    w = new_worker(crashes, letters)
    try:
        asyncio.run(w._process_records([record(3, None)]))  # type: ignore[arg-type]
    finally:
        w.close()
    assert letters == [] and crashes.crashes("carls-makers-ids") == {}


def test_ids_that_are_not_registered_are_dead_lettered_and_the_others_made(
    tmp_path: Any,
) -> None:
    import numpy as np

    from carls.bank.types import NamespaceSpec, default_kinds
    from carls.schemas import ExampleBatch, encode
    from carls.trainers.checkpoints import save_artifact
    from tests.integration.makers_support import CLASSES, EMBED, FEATURES, K, tiny_model

    crashes, letters = MemoryCrashes(), []
    s = Settings()
    cfg = WorkerConfig(kafka=s.kafka, topics=s.topics)
    bank = MemoryBank()
    store = ArtifactStore(tmp_path, "file")
    w = Makers(cfg, bank=bank, verdicts=MemoryVerdicts(), crashes=crashes, artifacts=store)

    async def dead_letter(rec: Any, reason: str, error: Any) -> None:
        letters.append((rec.offset, reason))

    async def progress(*args: Any) -> None:
        return None

    w._dead_letter = dead_letter  # type: ignore[method-assign]
    w._progress = progress  # type: ignore[method-assign]
    bank.create_namespace(NamespaceSpec("ns", default_kinds(EMBED, CLASSES, K)))
    ids = [f"x{i}" for i in range(20)]
    bank.register_examples("ns", ids, np.ones((20, FEATURES), np.float32))
    w.view.offer(save_artifact(tiny_model(1), tmp_path, "ns", 1))
    batch = ExampleBatch(namespace="ns", ids=[*ids[:5], "ghost"], priority="demand")
    try:
        asyncio.run(w._process_records([record(4, encode(batch))]))
    finally:
        w.close()
    assert len(letters) == 1 and letters[0][0] == 4
    assert "1 of its 6 ids are not registered examples of namespace ns" in letters[0][1]
    got = bank.read("ns", "embedding", ids[:5], lineage=True)
    assert set(got.steps.tolist()) == {1}
