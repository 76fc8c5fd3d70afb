"""The knowledge reader's background reads: what a pass reads from the bank, so that the
bank's load stays bounded however fast training runs. The bank is the in-memory one."""

from __future__ import annotations

from typing import Any

import numpy as np

from carls.bank.memory import MemoryBank
from carls.bank.types import KnowledgeBatch, Lineage, NamespaceSpec, default_kinds
from carls.trainers.reader import KnowledgeReader

N = 40


class Recording(MemoryBank):
    """The in-memory bank, noting the ids of every read."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[list[str]] = []

    def read(self, namespace: str, kind: str, ids: Any) -> Any:
        self.reads.append(list(ids))
        return super().read(namespace, kind, ids)


def reader(chunk: int = 8, fresh_s: float = 60.0) -> tuple[KnowledgeReader, Recording, list[str]]:
    bank = Recording()
    ids = [f"e{i:02d}" for i in range(N)]
    bank.create_namespace(NamespaceSpec("ns", default_kinds(4, 3, 2)))
    bank.register_examples("ns", ids, np.zeros((N, 4), np.float32), [0] * N)
    known = ids[: N // 2]  # the makers made the first half
    probs = np.full((len(known), 3), 1 / 3, np.float32)
    bank.write(
        "ns",
        "pseudo_label",
        KnowledgeBatch(known, probs, np.zeros(len(known), np.int32), probs.max(1)),
        Lineage(3, "test"),
    )
    asked: list[str] = []
    r = KnowledgeReader(
        bank, ids, [("ns", "pseudo_label", 3)], chunk=chunk, fresh_s=fresh_s, demand=asked.extend
    )
    r.asked = asked  # type: ignore[attr-defined]
    return r, bank, ids


def test_a_pass_reads_the_hinted_rows_first_then_the_next_chunk_of_the_sweep() -> None:
    r, bank, ids = reader()
    r.hint([30, 31])
    r.read_pass()
    assert bank.reads == [[ids[30], ids[31]], ids[0:8]]
    bank.reads.clear()
    r.read_pass()
    assert bank.reads == [ids[8:16]]  # no hints: the sweep goes on
    for _ in range(4):
        r.read_pass()
    assert bank.reads[-2:] == [ids[32:40], ids[0:8]]  # and starts again after the last row
    slice_ = r.get("ns", "pseudo_label", [0, 30], current_step=3, max_staleness=None)
    np.testing.assert_array_equal(slice_.usable, [True, False])


def test_hints_from_many_fast_steps_read_each_row_once_and_at_most_a_chunk() -> None:
    r, bank, ids = reader(chunk=8)
    for step in range(7):  # seven steps' hints arrive between two passes
        r.hint([19 + step, 20 + step, 21 + step])
    r.read_pass()
    # each row once, no more than a chunk: the newest steps' rows, 20..27, not 19
    assert bank.reads[0] == ids[20:28]
    # demand asks the makers for every hinted row they have not made yet
    assert sorted(r.asked) == ids[20:28]  # type: ignore[attr-defined]


def test_hinted_rows_read_moments_ago_are_not_read_again() -> None:
    r, bank, ids = reader(chunk=8, fresh_s=60.0)
    r.read_pass()  # the sweep reads rows 0..7
    bank.reads.clear()
    r.hint([2, 3, 30])
    r.read_pass()
    assert bank.reads[0] == [ids[30]]  # 2 and 3 are fresh from the sweep
    stale, bank_stale, ids_stale = reader(chunk=8, fresh_s=0.0)
    stale.read_pass()
    bank_stale.reads.clear()
    stale.hint([2, 3])
    stale.read_pass()
    assert bank_stale.reads[0] == [ids_stale[2], ids_stale[3]]
