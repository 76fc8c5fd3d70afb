"""One contract suite, every bank: the ``bank`` fixture is parametrized over backends.

Each backend comes as a ``Harness``: the bank plus what the suite needs to know about it
(whether other processes share it, how to make time pass for TTL tests). Tests create their
namespaces with ``make_namespace``, which gives each a unique name and drops it afterwards.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from bank_contract_support import CONTRACT_KINDS, FakeClock, Harness, MakeNamespace, unique_name

from carls.bank.errors import BankUnavailableError, NamespaceError
from carls.bank.memory import MemoryBank
from carls.bank.protocol import KnowledgeBank
from carls.bank.session import CassandraConfig, apply_schema
from carls.bank.types import NamespaceSpec
from tests.conftest import absent


def _cassandra_config() -> CassandraConfig:
    host = os.environ.get("CARLS_HOST", "127.0.0.1")
    port = int(os.environ.get("CARLS_CASSANDRA_PORT", "9042"))
    return CassandraConfig(hosts=(host,), port=port, keyspace="carls_test")


def _unreachable(reason: str) -> None:
    absent(f"Cassandra is not reachable ({reason}); start it with `carls infra up`")


@pytest.fixture(scope="session")
def cassandra_harness() -> Iterator[Harness]:
    config = _cassandra_config()
    try:
        socket.create_connection((config.hosts[0], config.port), timeout=2).close()
        apply_schema(config)
    except (OSError, BankUnavailableError) as exc:
        _unreachable(f"{config.hosts[0]}:{config.port}: {exc}")
    from carls.bank.cassandra import CassandraBank
    from carls.bank.session import Connection

    connection = Connection(config).start()
    bank = CassandraBank(connection).start()
    try:
        yield Harness(
            "cassandra", bank, shared_across_processes=True, config=config, connection=connection
        )
    finally:
        bank.close()
        connection.close()


def _memory_harness() -> Harness:
    clock = FakeClock()
    return Harness(
        "memory",
        MemoryBank(clock=clock),
        shared_across_processes=False,
        clock=clock,
        short_ttl_s=60,
    )


BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("cassandra", id="cassandra", marks=pytest.mark.integration),
]
SHARED_BACKENDS = [p for p in BACKENDS if p.id == "cassandra"]


def _harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    if request.param == "memory":
        harness = _memory_harness()
        yield harness
        harness.bank.close()
    else:
        yield request.getfixturevalue("cassandra_harness")


@pytest.fixture(params=BACKENDS)
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    yield from _harness(request)


@pytest.fixture(params=SHARED_BACKENDS)
def shared_harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    """Only the banks that several processes can share."""
    yield from _harness(request)


@pytest.fixture
def bank(harness: Harness) -> KnowledgeBank:
    return harness.bank


def _namespace_maker(bank: KnowledgeBank) -> tuple[MakeNamespace, list[str]]:
    created: list[str] = []

    def make(**kw: Any) -> NamespaceSpec:
        kw.setdefault("name", unique_name())
        kw.setdefault("kinds", CONTRACT_KINDS)
        kw.setdefault("buckets", 8)
        spec = bank.create_namespace(NamespaceSpec(**kw))
        created.append(spec.name)
        return spec

    return make, created


def _drop_all(bank: KnowledgeBank, names: list[str]) -> None:
    for name in names:
        with contextlib.suppress(NamespaceError):  # the test dropped it itself
            bank.drop_namespace(name)


@pytest.fixture
def make_namespace(harness: Harness) -> Iterator[MakeNamespace]:
    """``make_namespace(**NamespaceSpec fields)``: a created namespace, dropped afterwards."""
    make, created = _namespace_maker(harness.bank)
    yield make
    _drop_all(harness.bank, created)


@pytest.fixture
def make_shared_namespace(shared_harness: Harness) -> Iterator[MakeNamespace]:
    make, created = _namespace_maker(shared_harness.bank)
    yield make
    _drop_all(shared_harness.bank, created)
