"""The broken-checkpoint records, held to one contract in both stores: what one worker
records, another (or the same one after a restart) reads back."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from bank_contract_support import Harness, unique_name

from carls.bank.verdicts import CassandraVerdicts, CheckpointVerdicts, MemoryVerdicts


@pytest.fixture
def stores(harness: Harness) -> Iterator[tuple[CheckpointVerdicts, CheckpointVerdicts]]:
    """Two handles on one store: a worker and, for Cassandra, another process's view."""
    if harness.config is None:
        memory = MemoryVerdicts()
        yield memory, memory
        return
    writer, reader = (
        CassandraVerdicts(harness.connection).start(),
        CassandraVerdicts(harness.connection).start(),
    )
    try:
        yield writer, reader
    finally:
        writer.close()
        reader.close()


def test_a_broken_checkpoint_recorded_by_one_worker_is_known_to_the_next(
    stores: tuple[CheckpointVerdicts, CheckpointVerdicts],
) -> None:
    writer, reader = stores
    ns = unique_name()
    assert reader.broken(ns, 5.0) == {}
    writer.mark_broken(ns, 5.0, "a" * 64, 1_000_000, "checkpoint is not a model")
    writer.mark_broken(ns, 5.0, "b" * 64, 30, "NaN in the embedding")
    writer.mark_broken(ns, 4.0, "c" * 64, 7, "an earlier generation's")
    writer.mark_broken(unique_name(), 5.0, "d" * 64, 7, "another namespace's")
    assert reader.broken(ns, 5.0) == {
        "a" * 64: "checkpoint is not a model",
        "b" * 64: "NaN in the embedding",
    }
    writer.mark_broken(ns, 5.0, "a" * 64, 1_000_000, "seen again")  # idempotent per sha256
    assert len(reader.broken(ns, 5.0)) == 2
