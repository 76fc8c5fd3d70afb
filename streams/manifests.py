"""Reading the compacted checkpoints topic: the newest manifest of a namespace, once
(``latest_manifest``), or every record from the start, forever (``follow_from_start``,
which the makers' manifest view runs in a thread)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from carls.schemas import CheckpointManifest, decode
from carls.schemas.errors import SchemaError
from carls.streams.config import KafkaConnection


def manifest_of(rec: Any) -> tuple[str | None, CheckpointManifest | None]:
    """A checkpoints-topic record as ``(namespace, manifest)``; a tombstone (a null value
    under a namespace's key) is ``(namespace, None)``, an undecodable record
    ``(None, None)``: both readers of the topic skip what they cannot read."""
    if rec.value is None:
        return (None if rec.key is None else rec.key.decode("utf-8", "replace")), None
    try:
        m = decode(rec.value, CheckpointManifest)
    except SchemaError:
        return None, None
    return m.namespace, m


def latest_manifest(
    conn: KafkaConnection, topic: str, namespace: str, since: float = 0.0, timeout_s: float = 15.0
) -> CheckpointManifest | None:
    """The highest-step manifest of ``namespace`` made at or after ``since`` (the namespace's
    creation: an older generation of a re-created namespace does not count). Reads the
    topic from the beginning to its current end; undecodable records are skipped, and a
    tombstone of the namespace (a null value under its key) forgets what came before."""
    consumer = KafkaConsumer(**conn.kafka_python(), enable_auto_commit=False, group_id=None)
    best: CheckpointManifest | None = None
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            return None
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in tps):
            if time.monotonic() > deadline:
                break
            for records in consumer.poll(timeout_ms=500).values():
                for rec in records:
                    ns, m = manifest_of(rec)
                    if ns != namespace:
                        continue
                    if m is None:  # the namespace's tombstone
                        best = None
                    elif m.created_at >= since and (best is None or m.step > best.step):
                        best = m
        return best
    finally:
        consumer.close()


log = logging.getLogger(__name__)


def follow_from_start(
    conn: KafkaConnection,
    topic: str,
    handle: Callable[[Any], None],
    stop: threading.Event,
    retry_s: float = 2.0,
    *,
    from_end: bool = False,
) -> None:
    """Call ``handle(record)`` for every record of ``topic`` (kafka-python records:
    ``key``, ``value`` — None for a tombstone —, ``partition``, ``offset``), from the
    beginning of every partition (``from_end``: from what comes next), without a consumer
    group, until ``stop`` is set. When Kafka is away it starts over after ``retry_s`` (the
    compacted topic replays the current map, so a handler that keeps the newest per key
    loses nothing)."""
    while not stop.is_set():
        try:
            _follow(conn, topic, handle, stop, from_end)
        except KafkaError as exc:
            log.warning("following %s: lost Kafka (%s); retrying", topic, exc)
            stop.wait(retry_s)


def _follow(
    conn: KafkaConnection,
    topic: str,
    handle: Callable[[Any], None],
    stop: threading.Event,
    from_end: bool = False,
) -> None:
    consumer = KafkaConsumer(**conn.kafka_python(), enable_auto_commit=False, group_id=None)
    try:
        parts = None
        while parts is None and not stop.is_set():
            parts = consumer.partitions_for_topic(topic)
            if parts is None:
                stop.wait(1.0)
        if parts is None:
            return
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        if from_end:
            consumer.seek_to_end(*tps)
        else:
            consumer.seek_to_beginning(*tps)
        while not stop.is_set():
            for records in consumer.poll(timeout_ms=500).values():
                for rec in records:
                    handle(rec)
    finally:
        consumer.close()
