"""The jobs topic as trainers read it: records handed out while a trainer has room, and
offsets committed per partition only up to the first record whose job has not ended."""

from __future__ import annotations

import logging
import threading
from typing import Any

from kafka import TopicPartition
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata

from carls.streams.config import KafkaConnection
from carls.streams.groups import job_consumer

log = logging.getLogger(__name__)

Ref = tuple[str, int, int]
"""A record's (topic, partition, offset)."""


def ref_of(record: Any) -> Ref:
    return (record.topic, record.partition, record.offset)


class JobQueue:
    """One trainer's consumer of the jobs topic in the trainers' group.

    ``poll(take=False)`` keeps the trainer in its group without handing out records (its
    slots are full). Every record handed out is pending until ``done``; ``commit`` commits
    each partition up to its first pending record. Partitions a rebalance took away are
    forgotten: their new owner goes on from the last commit. ``done`` may be called from
    any thread; the rest from the one that polls."""

    def __init__(self, conn: KafkaConnection, topic: str, group: str) -> None:
        self._consumer = job_consumer(conn, topic, group)
        self._pending: dict[TopicPartition, dict[int, bool]] = {}
        self._lock = threading.Lock()

    def poll(self, timeout_s: float, take: bool = True) -> list[Any]:
        assigned = self._consumer.assignment()
        if take:
            self._consumer.resume(*assigned)
        else:
            self._consumer.pause(*assigned)
        polled = self._consumer.poll(timeout_ms=int(timeout_s * 1000))
        records = [rec for batch in polled.values() for rec in batch]
        with self._lock:
            for rec in records:
                tp = TopicPartition(rec.topic, rec.partition)
                self._pending.setdefault(tp, {})[rec.offset] = False
        return records

    def done(self, ref: Ref | None) -> None:
        """The job of record ``ref`` has ended (or the record needs nothing more)."""
        if ref is None:
            return
        topic, partition, offset = ref
        with self._lock:
            offsets = self._pending.get(TopicPartition(topic, partition), {})
            if offset in offsets:
                offsets[offset] = True

    def commit(self) -> None:
        assigned = self._consumer.assignment()
        commits = {}
        with self._lock:
            for tp in list(self._pending):
                if tp not in assigned:
                    del self._pending[tp]
                    continue
                offsets = self._pending[tp]
                upto = None
                for offset in sorted(offsets):
                    if not offsets[offset]:
                        break
                    upto = offset
                    del offsets[offset]
                if upto is not None:
                    commits[tp] = OffsetAndMetadata(upto + 1, "", -1)
        if commits:
            try:
                self._consumer.commit(commits)
            except (CommitFailedError, KafkaError) as exc:  # a rebalance: replayed, skipped
                log.warning("could not commit job offsets (%s); they will be replayed", exc)

    def close(self) -> None:
        try:
            self.commit()
        finally:
            self._consumer.close()
