"""Leases on shared work (a neighbour index being built), held to one contract in memory
and in Cassandra: one holder at a time across processes, renewed by its holder, free
again once released or run out."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from bank_contract_support import Harness, unique_name

from carls.bank.indexes import CassandraLeases, Leases, MemoryLeases


@pytest.fixture
def leases(harness: Harness) -> Iterator[tuple[Leases, Leases]]:
    """Two handles on one store (two workers' processes, for Cassandra)."""
    if harness.config is None:
        memory = MemoryLeases()
        yield memory, memory
        return
    a = CassandraLeases(harness.connection).start()
    b = CassandraLeases(harness.connection).start()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def test_one_holder_at_a_time_renewed_by_it_and_free_once_released(
    leases: tuple[Leases, Leases],
) -> None:
    a, b = leases
    scope, name = f"indexes/{unique_name()}", "step-1"
    assert b.holder(scope, name) is None
    assert a.claim(scope, name, "worker-a", 60.0)
    assert not b.claim(scope, name, "worker-b", 60.0)
    assert b.holder(scope, name) == "worker-a"
    assert a.claim(scope, name, "worker-a", 60.0)  # renewed
    b.release(scope, name, "worker-b")  # not its lease: nothing happens
    assert b.holder(scope, name) == "worker-a"
    a.release(scope, name, "worker-a")
    assert b.holder(scope, name) is None
    assert b.claim(scope, name, "worker-b", 60.0)
    assert not a.claim(scope, name, "worker-a", 60.0)
    assert a.claim(scope, "step-2", "worker-a", 60.0)  # another name is another lease


def test_a_lease_that_ran_out_goes_to_the_next_claimer(leases: tuple[Leases, Leases]) -> None:
    a, b = leases
    scope, name = f"indexes/{unique_name()}", "step-1"
    assert a.claim(scope, name, "worker-a", 0.5)
    deadline = time.monotonic() + 10
    while b.holder(scope, name) is not None:
        assert time.monotonic() < deadline, "the lease never ran out"
        time.sleep(0.05)
    assert b.claim(scope, name, "worker-b", 60.0)
    assert a.holder(scope, name) == "worker-b"
