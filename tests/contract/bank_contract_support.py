"""Batches and checks the contract tests share, and the writer a spawned process runs."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from carls.bank.protocol import KnowledgeBank
from carls.bank.session import CassandraConfig
from carls.bank.types import KnowledgeBatch, KnowledgeRead, Lineage, NamespaceSpec

CONTRACT_KINDS = {
    "embedding": 8,
    "embedding/text": 3,
    "pseudo_label": 5,
    "prediction": 5,
    "difficulty": 1,
    "neighbours": 4,
}


class FakeClock:
    """Wall-clock seconds that only move when a test says so."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Harness:
    name: str
    bank: KnowledgeBank
    shared_across_processes: bool
    config: CassandraConfig | None = None
    connection: Any = None
    """The session's one Cassandra connection, which every Cassandra store of a test
    shares (a connection per test timed out in a loaded CI)."""
    clock: FakeClock | None = None
    """Set when the bank's clock is injected: TTL tests advance it instead of waiting."""
    short_ttl_s: int = 2
    """The TTL a test should use: real seconds for a server, anything for a fake clock."""

    def let_time_pass(self, seconds: float) -> None:
        if self.clock is not None:
            self.clock.advance(seconds)


def unique_name() -> str:
    return "t_" + uuid.uuid4().hex[:12]


MakeNamespace = Callable[..., NamespaceSpec]
"""``make_namespace(**NamespaceSpec fields)`` -> the created spec."""


def vectors(seed: int, n: int, dim: int) -> npt.NDArray[np.float32]:
    """Random float32 rows; the same seed gives the same rows (a step's "model output")."""
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def lineage(step: int, maker: str = "contract") -> Lineage:
    return Lineage(step=step, maker=maker, fingerprint=f"fp{step}")


def batch_for(kind: str, dim: int, ids: Sequence[str], seed: int) -> KnowledgeBatch:
    """A valid batch of ``kind`` for ``ids``; its content depends only on ``seed``."""
    n = len(ids)
    values = vectors(seed, n, dim)
    if kind in ("pseudo_label", "prediction"):
        e = np.exp(values)
        values = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    if kind == "pseudo_label":
        return KnowledgeBatch(
            list(ids),
            values,
            classes=values.argmax(axis=1).astype(np.int32),
            confidence=values.max(axis=1),
        )
    if kind == "neighbours":
        names = [[f"nb{seed}_{i}_{j}" for j in range(dim)] for i in range(n)]
        return KnowledgeBatch(list(ids), values, neighbour_ids=names)
    return KnowledgeBatch(list(ids), values)


def bits(a: npt.NDArray[Any]) -> npt.NDArray[np.uint32]:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def assert_rows(
    read: KnowledgeRead,
    positions: Sequence[int],
    batch: KnowledgeBatch,
    rows: Sequence[int],
    step: int,
) -> None:
    """``read`` at ``positions`` holds exactly ``batch`` rows ``rows`` written at ``step``."""
    pos, src = list(positions), list(rows)
    width = np.asarray(batch.values).reshape(len(batch.ids), -1).shape[1]
    got = read.values[pos]
    want = np.asarray(batch.values, dtype=np.float32).reshape(len(batch.ids), -1)[src]
    np.testing.assert_array_equal(bits(got[:, :width]), bits(want))
    assert not got[:, width:].any(), "columns beyond the written width must read as zeros"
    assert not read.missing[pos].any()
    assert (read.steps[pos] == step).all(), read.steps[pos]


def assert_missing(read: KnowledgeRead, positions: Sequence[int]) -> None:
    pos = list(positions)
    assert read.missing[pos].all(), read.missing[pos]
    assert (read.steps[pos] == -1).all()
    assert not read.values[pos].any()
    assert not read.stale[pos].any()


def write_shuffled(
    bank: KnowledgeBank,
    namespace: str,
    ids: list[str],
    dim: int,
    step: int,
    seed: int,
    repeats: int,
    chunks: int,
) -> None:
    """Write ``step``'s embeddings for ``ids`` ``repeats`` times, in shuffled chunks."""
    values = vectors(step, len(ids), dim)
    order = list(range(len(ids)))
    rnd = random.Random(seed)
    for _ in range(repeats):
        rnd.shuffle(order)
        for part in np.array_split(np.asarray(order), chunks):
            sel = [int(i) for i in part]
            bank.write(
                namespace,
                "embedding",
                KnowledgeBatch([ids[i] for i in sel], values[sel]),
                lineage(step),
            )


def write_in_child(
    config: Any, namespace: str, ids: list[str], dim: int, step: int, barrier: Any
) -> None:
    """Run in a spawned process: its own bank, then the same writes as a thread does."""
    from carls.bank.cassandra import CassandraBank

    bank = CassandraBank(config).start()
    try:
        barrier.wait(timeout=60)
        write_shuffled(bank, namespace, ids, dim, step, seed=step, repeats=3, chunks=4)
    finally:
        bank.close()
