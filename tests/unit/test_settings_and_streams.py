"""Settings come from CARLS_* variables; one Kafka config feeds every client."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from carls.settings import Settings
from carls.streams.config import KafkaConnection
from carls.streams.topics import Topics, topic_specs


def test_defaults_point_at_the_local_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("CARLS_KAFKA_PORT", "CARLS_KAFKA_BOOTSTRAP_SERVERS", "CARLS_CASSANDRA_HOSTS"):
        monkeypatch.delenv(key, raising=False)
    s = Settings()
    assert s.kafka.bootstrap_servers == ("127.0.0.1:9092",)
    assert s.cassandra.hosts == ("127.0.0.1",)
    assert s.cassandra.keyspace == "carls"


def test_environment_overrides_ports_servers_and_replication(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CARLS_KAFKA_PORT", "19092")
    monkeypatch.setenv("CARLS_CASSANDRA_HOSTS", "10.0.0.1, 10.0.0.2")
    monkeypatch.setenv(
        "CARLS_CASSANDRA_REPLICATION", '{"class": "NetworkTopologyStrategy", "dc1": 3}'
    )
    monkeypatch.setenv("CARLS_PARTITIONS_EXAMPLES", "12")
    monkeypatch.setenv("CARLS_KAFKA_SASL_PASSWORD", "s3cret")
    s = Settings()
    assert s.kafka.bootstrap_servers == ("127.0.0.1:19092",)
    assert s.infra.kafka_port == 19092
    assert s.cassandra.hosts == ("10.0.0.1", "10.0.0.2")
    assert s.cassandra.replication == {"class": "NetworkTopologyStrategy", "dc1": 3}
    assert s.partitions["examples"] == 12
    assert "s3cret" not in repr(s)


def test_an_invalid_keyspace_is_rejected_with_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARLS_KEYSPACE", "Bad-Name")
    with pytest.raises(ValidationError, match="keyspace"):
        Settings()


@pytest.mark.parametrize(
    ("variable", "value"),
    [("CARLS_CASSANDRA_WRITES_IN_FLIGHT", "1"), ("CARLS_CASSANDRA_IDS_PER_QUERY", "0")],
)
def test_bank_tuning_that_cannot_work_is_rejected(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=variable.removeprefix("CARLS_").lower()):
        Settings()


def test_bank_tuning_reaches_the_bank_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARLS_CASSANDRA_BATCH_ROWS", "32")
    assert Settings().cassandra.batch_rows == 32
    assert Settings().cassandra.ids_per_query == 192  # the default, declared in the bank


def test_one_connection_translates_to_every_client() -> None:
    conn = KafkaConnection(
        bootstrap_servers=("b1:9093", "b2:9093"),
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="u",
        sasl_password="p",
    )
    kp = conn.kafka_python()
    assert kp["bootstrap_servers"] == ["b1:9093", "b2:9093"]
    assert (kp["security_protocol"], kp["sasl_mechanism"]) == ("SASL_SSL", "SCRAM-SHA-512")
    assert (kp["sasl_plain_username"], kp["sasl_plain_password"]) == ("u", "p")
    ak = conn.aiokafka()
    assert ak["ssl_context"] is not None
    assert ak["sasl_plain_password"] == "p"
    fa = conn.faust()
    assert fa["broker"] == "kafka://b1:9093;kafka://b2:9093"
    assert fa["broker_credentials"].username == "u"
    plain = KafkaConnection().kafka_python()
    assert "sasl_mechanism" not in plain
    assert "ssl_cafile" not in plain


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"security_protocol": "TLS"}, "security_protocol"),
        ({"security_protocol": "SASL_PLAINTEXT"}, "sasl_mechanism"),
        ({"bootstrap_servers": ()}, "bootstrap_servers"),
    ],
)
def test_bad_connection_options_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        KafkaConnection(**kwargs)  # type: ignore[arg-type]


def test_declared_topics_checkpoints_compacted_and_partition_counts_from_settings() -> None:
    specs = {s.name: s for s in topic_specs(Topics("x"), {"examples": 6}, replication=1)}
    assert set(specs) == {
        "x.jobs",
        "x.checkpoints",
        "x.examples",
        "x.demand",
        "x.progress",
        "x.deadletter",
    }
    assert specs["x.checkpoints"].configs["cleanup.policy"] == "compact"
    assert specs["x.examples"].partitions == 6
    assert specs["x.jobs"].partitions == 1
    assert "cleanup.policy" not in specs["x.examples"].configs


def test_a_dead_letter_always_fits_on_its_topic_and_describes_the_whole_record() -> None:
    import hashlib

    from carls.schemas import DeadLetter, decode, encode
    from carls.streams.deadletter import MAX_RAW_BYTES, dead_letter, without_raw

    small = dead_letter("bad", ValueError("x"), "t", 0, 7, b"\xff not json")
    assert small.raw == b"\xff not json" and not small.raw_truncated
    assert small.raw_size == 10 and small.raw_sha256 == hashlib.sha256(b"\xff not json").hexdigest()

    huge = bytes(range(256)) * 4000  # 1,024,000 bytes: at Kafka's default limit
    letter = dead_letter("x" * 50_000, "SchemaError", "t", 1, 8, huge)
    wire = encode(letter)
    assert len(wire) < 200_000  # far under the 1 MB default, base64 and all
    back = decode(wire, DeadLetter)
    assert back.raw_truncated and back.raw == huge[:MAX_RAW_BYTES]
    assert back.raw_size == len(huge) and back.raw_sha256 == hashlib.sha256(huge).hexdigest()
    assert len(back.reason) < 5_000 and back.reason.endswith("(50000 chars)")

    bare = without_raw(letter, "MessageSizeTooLargeError")
    assert bare.raw == b"" and bare.raw_sha256 == letter.raw_sha256
    assert "raw bytes left out: MessageSizeTooLargeError" in bare.reason


def test_commits_stop_short_of_a_held_record_until_it_is_released() -> None:
    import asyncio
    from types import SimpleNamespace

    from aiokafka import TopicPartition

    from carls.streams.batches import BatchConsumer
    from carls.streams.config import KafkaConnection

    class Consumer:
        def __init__(self) -> None:
            self.commits: list[dict[TopicPartition, int]] = []

        def assignment(self) -> set[TopicPartition]:
            return {TopicPartition("t", 0), TopicPartition("t", 1)}

        async def commit(self, offsets: dict[TopicPartition, int]) -> None:
            self.commits.append(dict(offsets))

    async def handle(records: list[object]) -> None:
        return None

    svc = BatchConsumer(KafkaConnection(bootstrap_servers=("unused:9092",)), ["t"], "g", handle)
    consumer = Consumer()
    p0, p1 = TopicPartition("t", 0), TopicPartition("t", 1)
    waiting = SimpleNamespace(topic="t", partition=0, offset=5)

    async def run() -> None:
        svc.hold(waiting)
        svc._done.update({p0: 9, p1: 4})  # handled up to offsets 8 and 3
        await svc._commit(consumer)  # type: ignore[arg-type]
        svc._done[p1] = 6
        await svc._commit(consumer)  # type: ignore[arg-type]
        svc.release(waiting)
        await svc._commit(consumer)  # type: ignore[arg-type]
        await svc._commit(consumer)  # type: ignore[arg-type]

    asyncio.run(run())
    assert consumer.commits == [
        {p0: 5, p1: 4},  # partition 0 stops at the held record; 1 goes on
        {p0: 5, p1: 6},  # still held: asked again, never past it
        {p0: 9},  # released: the rest of partition 0 is committed
    ]
