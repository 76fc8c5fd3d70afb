"""kafka-python producers for trainers and the CLI: records out, keyed so order holds.

Checkpoint manifests are keyed by namespace (the compacted topic keeps the newest per
namespace); example batches by namespace and campaign; progress by namespace.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError, MessageSizeTooLargeError

from carls.schemas import CheckpointManifest, DeadLetter, ExampleBatch, ProgressEvent, TrainingJob
from carls.schemas.codec import encode
from carls.schemas.records import Record
from carls.streams.config import KafkaConnection
from carls.streams.deadletter import without_raw
from carls.streams.errors import PublishError
from carls.streams.topics import Topics

log = logging.getLogger(__name__)


class Publisher:
    """Produces carls records to their topics; ``flush``/``close`` or use as a context."""

    def __init__(self, conn: KafkaConnection, topics: Topics, **overrides: Any) -> None:
        self.topics = topics
        self.conn = conn
        opts: dict[str, Any] = {"linger_ms": 5, "acks": "all", **conn.kafka_python(), **overrides}
        try:
            self._producer = KafkaProducer(**opts)
        except KafkaError as exc:
            raise PublishError(
                f"cannot connect to Kafka at {conn.bootstrap_servers}: {exc}"
            ) from exc

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, topic: str, key: str, record: Record, wait: bool = False) -> None:
        try:
            future = self._producer.send(topic, key=key.encode(), value=encode(record))
            if wait:
                future.get(timeout=30)
        except KafkaError as exc:
            raise PublishError(f"could not produce {record.SCHEMA} to {topic}: {exc}") from exc

    def manifest(self, m: CheckpointManifest, wait: bool = True) -> None:
        self.send(self.topics.checkpoints, m.namespace, m, wait)

    def examples(self, batch: ExampleBatch, wait: bool = False) -> None:
        """Demand batches go to the demand topic, refresh batches to the examples topic."""
        topic = self.topics.demand if batch.priority == "demand" else self.topics.examples
        key = f"{batch.namespace}/{batch.campaign}/{batch.ids[0]}"
        self.send(topic, key, batch, wait)

    def job(self, job: TrainingJob, wait: bool = True) -> None:
        self.send(self.topics.jobs, job.job_id, job, wait)

    def progress(self, event: ProgressEvent) -> None:
        self.send(self.topics.progress, event.namespace, event)

    def dead_letter(self, letter: DeadLetter, max_backoff_s: float = 10.0) -> None:
        """Produce ``letter`` and wait until it is delivered, retrying with backoff while
        Kafka is away (the record it stands for is not committed meanwhile); a letter the
        broker refuses as too large goes again without its raw bytes."""
        delay = 0.2
        while True:
            try:
                self.send(self.topics.deadletter, letter.source_topic, letter, wait=True)
                return
            except PublishError as exc:
                if letter.raw and isinstance(exc.__cause__, MessageSizeTooLargeError):
                    letter = without_raw(letter, "MessageSizeTooLargeError")
                    continue
                log.warning("dead letter not delivered (%s); retrying in %.1f s", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, max_backoff_s)

    def flush(self, timeout_s: float = 30.0) -> None:
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError as exc:
            raise PublishError(f"flush failed: {exc}") from exc

    def close(self) -> None:
        self._producer.close(timeout=30)


def echo(conn: KafkaConnection, topic: str, key: bytes, value: bytes, timeout_s: float) -> bytes:
    """Produce ``value`` to ``topic`` and consume it back from where it landed (the
    stack's smoke check); ``RuntimeError`` when it never comes back."""
    from kafka import KafkaConsumer, TopicPartition

    producer = KafkaProducer(**conn.kafka_python())
    try:
        meta = producer.send(topic, key=key, value=value).get(timeout=timeout_s)
    finally:
        producer.close()
    consumer = KafkaConsumer(
        **conn.kafka_python(), enable_auto_commit=False, consumer_timeout_ms=int(timeout_s * 1000)
    )
    try:
        tp = TopicPartition(topic, meta.partition)
        consumer.assign([tp])
        consumer.seek(tp, meta.offset)
        return bytes(next(iter(consumer)).value)
    except StopIteration as exc:
        raise RuntimeError(
            f"record at {topic}[{meta.partition}]@{meta.offset} never came back"
        ) from exc
    finally:
        consumer.close()
