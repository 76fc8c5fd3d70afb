"""Wiring the layers together: the stack with its topics and schema, and the smoke check."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from carls.bank.session import apply_schema
from carls.bank.session import echo as cassandra_echo
from carls.infra import UpReport, up
from carls.schemas import ProgressEvent, decode, encode
from carls.settings import Settings
from carls.streams.producer import echo as kafka_echo
from carls.streams.topics import ensure_topics, topic_specs


@dataclass(slots=True)
class StackReport:
    up: UpReport
    topics_created: list[str] = field(default_factory=list)
    schema_statements: int = 0
    wall_s: float = 0.0


def bring_up(settings: Settings, say: Callable[[str], None] = lambda _: None) -> StackReport:
    """Start both servers, then create the topics and apply the CQL schema (idempotent)."""
    t0 = time.monotonic()
    report = StackReport(up=up(settings.infra))
    for name, already in report.up.already_running.items():
        say(
            f"{name}: already running"
            if already
            else f"{name}: ready in {report.up.ready_s[name]:.1f} s"
        )
    report.topics_created = ensure_topics(
        settings.kafka,
        topic_specs(settings.topics, settings.partitions, settings.topic_replication),
    )
    say(
        f"topics: {len(report.topics_created)} created"
        + (f" ({', '.join(report.topics_created)})" if report.topics_created else " (all present)")
    )
    report.schema_statements = apply_schema(settings.cassandra)
    say(f"cassandra schema: keyspace {settings.keyspace} ready")
    report.wall_s = round(time.monotonic() - t0, 2)
    return report


@dataclass(slots=True)
class RoundTrip:
    kafka_ms: float
    cassandra_ms: float
    record: ProgressEvent


def round_trip(settings: Settings, timeout_s: float = 30.0) -> RoundTrip:
    """Produce a record with kafka-python, consume it back, store it in Cassandra, read it back.

    Raises ``RuntimeError`` when anything does not come back intact.
    """
    record = ProgressEvent(
        namespace="smoke",
        kind="embedding",
        step=1,
        processed=1,
        total=1,
        worker=f"smoke-{uuid.uuid4().hex[:8]}",
        at=time.time(),
    )
    t0 = time.monotonic()
    got = kafka_echo(settings.kafka, settings.topics.progress, b"smoke", encode(record), timeout_s)
    back = decode(got, ProgressEvent)
    if back != record:
        raise RuntimeError("the record read back from Kafka differs from the one produced")
    kafka_ms = (time.monotonic() - t0) * 1000

    t1 = time.monotonic()
    row = cassandra_echo(settings.cassandra, record.worker, got)
    if row is None or decode(row, ProgressEvent) != record:
        raise RuntimeError("the row read back from Cassandra differs from the one written")
    return RoundTrip(
        kafka_ms=round(kafka_ms, 1),
        cassandra_ms=round((time.monotonic() - t1) * 1000, 1),
        record=back,
    )
