"""Every worker's global view of the newest checkpoint manifest of every namespace.

The checkpoints topic is compacted and keyed by namespace, so reading it from the
beginning, without a consumer group, on every worker gives each one the full, current
map; a manifest older than the one already known is ignored, so late arrivals change
nothing. A tombstone (a null value, the way to delete a key of a compacted topic) forgets
the namespace's manifest. Records that do not decode are skipped here: the campaign agent,
which reads the same topic in the worker group, dead-letters them once.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from carls.schemas import CheckpointManifest, decode
from carls.schemas.errors import SchemaError
from carls.streams.config import KafkaConnection

log = logging.getLogger(__name__)


class ManifestView:
    """A background thread following the checkpoints topic; ``latest`` is thread-safe."""

    def __init__(self, conn: KafkaConnection, topic: str) -> None:
        self._conn = conn
        self._topic = topic
        self._latest: dict[str, CheckpointManifest] = {}
        self._positions: dict[int, int] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="manifest-view", daemon=True)

    def start(self) -> ManifestView:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def latest(self, namespace: str) -> CheckpointManifest | None:
        with self._cond:
            return self._latest.get(namespace)

    def wait_for(self, namespace: str, step: int, timeout_s: float) -> CheckpointManifest | None:
        """The newest manifest once it is at least ``step`` (or whatever is known at timeout)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                m = self._latest.get(namespace)
                if (m is not None and m.step >= step) or time.monotonic() >= deadline:
                    return m
                self._cond.wait(timeout=max(0.0, min(0.5, deadline - time.monotonic())))

    def wait_offset(self, partition: int, offset: int, timeout_s: float = 30.0) -> bool:
        """Wait until the view has read ``offset`` of ``partition``; return whether it has."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._positions.get(partition, 0) <= offset:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(timeout=min(0.5, left))
            return True

    def forget_before(self, namespace: str, created_at: float) -> bool:
        """Forget the known manifest if it predates ``created_at`` (the namespace was dropped
        and created again since: its old checkpoints must not outrank the new ones)."""
        with self._cond:
            known = self._latest.get(namespace)
            if known is not None and known.created_at < created_at:
                del self._latest[namespace]
                return True
            return False

    def forget(self, namespace: str) -> bool:
        """Forget the namespace's manifest (a tombstone); return whether one was known."""
        with self._cond:
            return self._latest.pop(namespace, None) is not None

    def offer(self, manifest: CheckpointManifest) -> bool:
        """Take a manifest if it is newer than the known one; return whether it was."""
        with self._cond:
            known = self._latest.get(manifest.namespace)
            if known is not None and known.step >= manifest.step:
                return False
            self._latest[manifest.namespace] = manifest
            self._cond.notify_all()
            return True

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow()
            except KafkaError as exc:  # broker away: retry with a pause, keep what we know
                log.warning("manifest view lost Kafka (%s); retrying", exc)
                self._stop.wait(2.0)

    def _follow(self) -> None:
        consumer = KafkaConsumer(
            **self._conn.kafka_python(), enable_auto_commit=False, group_id=None
        )
        try:
            parts = None
            while parts is None and not self._stop.is_set():
                parts = consumer.partitions_for_topic(self._topic)
                if parts is None:
                    self._stop.wait(1.0)
            if parts is None:
                return
            tps = [TopicPartition(self._topic, p) for p in sorted(parts)]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            while not self._stop.is_set():
                for records in consumer.poll(timeout_ms=500).values():
                    for rec in records:
                        if rec.value is None:  # a tombstone: forget the key's manifest
                            if rec.key is not None:
                                self.forget(rec.key.decode("utf-8", "replace"))
                        else:
                            with contextlib.suppress(SchemaError):
                                self.offer(decode(rec.value, CheckpointManifest))
                        with self._cond:
                            self._positions[rec.partition] = rec.offset + 1
                            self._cond.notify_all()
        finally:
            consumer.close()
