"""The newest checkpoint manifest of a namespace, read once from the compacted topic."""

from __future__ import annotations

import time

from kafka import KafkaConsumer, TopicPartition

from carls.schemas import CheckpointManifest, decode
from carls.schemas.errors import SchemaError
from carls.streams.config import KafkaConnection


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
                    if rec.value is None:
                        if rec.key is not None and rec.key.decode("utf-8", "replace") == namespace:
                            best = None
                        continue
                    try:
                        m = decode(rec.value, CheckpointManifest)
                    except SchemaError:
                        continue
                    if (
                        m.namespace == namespace
                        and m.created_at >= since
                        and (best is None or m.step > best.step)
                    ):
                        best = m
        return best
    finally:
        consumer.close()
