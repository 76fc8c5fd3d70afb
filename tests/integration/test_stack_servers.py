"""The local stack's servers behave as declared: topics, their configs, Cassandra rows."""

from __future__ import annotations

import pytest

from carls.bank.session import apply_schema, connect
from carls.settings import Settings
from carls.streams.topics import ROLES, ensure_topics, topic_configs, topic_specs
from carls.wiring import round_trip

pytestmark = pytest.mark.integration


def test_declared_topics_exist_with_their_configs(stack: Settings) -> None:
    specs = topic_specs(stack.topics, stack.partitions, stack.topic_replication)
    assert ensure_topics(stack.kafka, specs) == []  # `carls infra up` created them all
    configs = topic_configs(stack.kafka, [s.name for s in specs])
    assert configs[stack.topics.checkpoints]["cleanup.policy"] == "compact"
    assert configs[stack.topics.examples].get("cleanup.policy", "delete") == "delete"
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(**stack.kafka.kafka_python())
    try:
        described = {
            t["name"]: len(t["partitions"]) for t in admin.describe_topics([s.name for s in specs])
        }
    finally:
        admin.close()
    assert described == {getattr(stack.topics, r): stack.partitions[r] for r in ROLES}


def test_topic_creation_is_idempotent_and_new_prefix_gets_its_own(
    stack: Settings, unique: str
) -> None:
    from carls.streams.topics import Topics

    specs = topic_specs(Topics(unique), {"examples": 3}, stack.topic_replication)
    assert sorted(ensure_topics(stack.kafka, specs)) == sorted(s.name for s in specs)
    assert ensure_topics(stack.kafka, specs) == []
    configs = topic_configs(stack.kafka, [f"{unique}.checkpoints"])
    assert configs[f"{unique}.checkpoints"]["cleanup.policy"] == "compact"


def test_a_row_written_to_cassandra_is_read_back(stack: Settings, unique: str) -> None:
    assert apply_schema(stack.cassandra) > 1  # idempotent: the schema exists already
    cluster, session = connect(stack.cassandra)
    try:
        session.execute(
            "INSERT INTO roundtrip (id, payload) VALUES (%s, %s)", (unique, b"\x00\x01payload")
        )
        row = session.execute("SELECT payload FROM roundtrip WHERE id = %s", (unique,)).one()
        session.execute("DELETE FROM roundtrip WHERE id = %s", (unique,))
    finally:
        cluster.shutdown()
    assert row is not None and bytes(row[0]) == b"\x00\x01payload"


def test_smoke_round_trip_through_kafka_and_cassandra(stack: Settings) -> None:
    trip = round_trip(stack)
    assert trip.record.namespace == "smoke"
