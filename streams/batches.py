"""Whole Kafka fetches as the unit of work: a Faust service around aiokafka's ``getmany``.

Faust's streams hand an agent one record at a time, and each record costs tens of
microseconds of Faust machinery (a task pair per record in the fetcher, an ``Event``, a
queue hop, acknowledgement bookkeeping). ``carls bench makers`` measures it: about 13k
records/s through ``take_events`` against some 570k/s for aiokafka's ``getmany`` on the
same records. The makers' hot topics (``examples`` and ``demand``) are therefore read by
this service instead: it runs inside the worker's Faust app (started, supervised and
stopped with it, next to the per-record ``campaigns`` agent) and passes each fetch to the
handler as one list, so per-record cost is aiokafka's alone.

Semantics, the same as the agents it replaces:

* **At least once.** A record's offset is committed only after the handler returned for
  the fetch that held it; commits go in fetch order even with ``concurrency`` > 1, so a
  slow fetch holds back the commits of later ones rather than letting them skip it.
* **Priority.** Partitions of the ``priority`` topics are drained before any other fetch.
* **Rebalance.** Before partitions are taken away, in-flight fetches finish and their
  offsets are committed, so the next owner starts where this one stopped.
* A handler that raises crashes the service (and so the worker) with nothing committed for
  that fetch: handlers dead-letter bad records themselves and raise only on bugs.
* **Holding.** A handler may ``hold`` a record it cannot handle yet (and come back to it
  later, without holding up the fetches after it): its partition's commits stop short of
  it until it is released, so a crash meanwhile replays it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import ConsumerStoppedError, KafkaError
from mode import Service

from carls.streams.config import KafkaConnection

log = logging.getLogger(__name__)

Handler = Callable[[list[Any]], Coroutine[Any, Any, None]]


@dataclass(slots=True)
class _Fetch:
    task: asyncio.Task[None]
    next_offsets: dict[TopicPartition, int]


@dataclass(slots=True)
class BatchStats:
    fetches: int = 0
    records: int = 0
    wait_s: float = 0.0
    """Seconds spent waiting on Kafka for records (fetches that found some or none)."""


MAX_POLL_INTERVAL_MS = 30 * 60 * 1000
"""How long one fetch may be in hand before the group takes its partitions away."""


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: BatchConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.owner.drain()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.info(
            "%s: assigned %s",
            self.owner.group,
            sorted(f"{t.topic}[{t.partition}]" for t in assigned),
        )


class BatchConsumer(Service):
    """Consume ``topics`` in group ``group``, one handler call per fetch of records.

    ``max_records`` bounds a fetch; ``concurrency`` bounds the fetches in flight;
    ``commit_interval_s`` bounds how much finished work a crash may replay.
    """

    def __init__(
        self,
        conn: KafkaConnection,
        topics: Sequence[str],
        group: str,
        handle: Handler,
        *,
        priority: Sequence[str] = (),
        max_records: int = 1000,
        concurrency: int = 1,
        poll_s: float = 0.2,
        commit_interval_s: float = 1.0,
        session_timeout_s: float = 10.0,
        auto_offset_reset: str = "earliest",
        **kwargs: Any,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if max_records < 1:
            raise ValueError(f"max_records must be at least 1, got {max_records}")
        self.conn = conn
        self.topics = tuple(topics)
        self.group = group
        self.handle = handle
        self.priority = frozenset(priority)
        self.max_records = max_records
        self.concurrency = concurrency
        self.poll_ms = max(1, int(poll_s * 1000))
        self.commit_interval_s = commit_interval_s
        self.session_timeout_s = session_timeout_s
        self.auto_offset_reset = auto_offset_reset
        self.stats = BatchStats()
        self._consumer: AIOKafkaConsumer | None = None
        self._inflight: deque[_Fetch] = deque()
        self._done: dict[TopicPartition, int] = {}
        self._first: dict[TopicPartition, int] = {}  # the first offset handed out
        self._handled: dict[TopicPartition, int] = {}  # next offset after what is handled
        self._held: dict[TopicPartition, set[int]] = {}
        self._last_commit = time.monotonic()
        super().__init__(**kwargs)

    @property
    def label(self) -> str:
        return f"BatchConsumer({self.group}: {', '.join(self.topics)})"

    async def on_start(self) -> None:
        session_ms = int(self.session_timeout_s * 1000)
        consumer = AIOKafkaConsumer(
            **self.conn.aiokafka(),
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset=self.auto_offset_reset,
            max_poll_records=self.max_records,
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(1000, session_ms // 5),
            rebalance_timeout_ms=session_ms * 3,
            # A fetch may wait on a neighbour index of a large namespace (minutes): a dead
            # worker is found by its heartbeats (session timeout), not by this.
            max_poll_interval_ms=MAX_POLL_INTERVAL_MS,
        )
        consumer.subscribe(list(self.topics), listener=_Listener(self))
        await consumer.start()
        self._consumer = consumer

    async def on_stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        try:
            await self.drain(consumer)
        finally:
            await consumer.stop()

    @Service.task
    async def _consume(self) -> None:
        while not self.should_stop:
            consumer = self._consumer
            if consumer is None:
                return
            if len(self._inflight) >= self.concurrency:
                # Fetch only when a fetch can start: demand that arrives meanwhile then
                # goes ahead of refresh records that would otherwise wait in hand.
                await asyncio.wait({self._inflight[0].task}, timeout=self.poll_ms / 1000)
            else:
                try:
                    got = await self._fetch(consumer)
                except ConsumerStoppedError:
                    return
                if got:
                    self._dispatch(got)
            await self._reap(consumer)
            if time.monotonic() - self._last_commit >= self.commit_interval_s:
                await self._commit(consumer)

    async def _fetch(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, list[Any]]:
        got: dict[TopicPartition, list[Any]]
        started = time.monotonic()
        try:
            urgent = [tp for tp in consumer.assignment() if tp.topic in self.priority]
            if urgent:
                got = await consumer.getmany(*urgent, timeout_ms=0, max_records=self.max_records)
                if got:
                    return got
            got = await consumer.getmany(timeout_ms=self.poll_ms, max_records=self.max_records)
            return got
        finally:
            self.stats.wait_s += time.monotonic() - started

    def _dispatch(self, got: dict[TopicPartition, list[Any]]) -> None:
        records: list[Any] = []
        nxt: dict[TopicPartition, int] = {}
        for tp, batch in got.items():
            records.extend(batch)
            self._first.setdefault(tp, batch[0].offset)
            nxt[tp] = batch[-1].offset + 1  # a partition's records come in offset order
        self.stats.fetches += 1
        self.stats.records += len(records)
        task = asyncio.create_task(self.handle(records), name=f"{self.group}-fetch")
        self._inflight.append(_Fetch(task, nxt))

    async def _reap(self, consumer: AIOKafkaConsumer) -> None:
        """Move finished fetches, in order, into the offsets to commit."""
        while self._inflight and self._inflight[0].task.done():
            fetch = self._inflight.popleft()
            exc = fetch.task.exception()
            if exc is not None:
                log.error("%s: a fetch handler failed; nothing of it is committed", self.group)
                await self._commit(consumer)  # what finished before it is safe
                raise exc
            for tp, off in fetch.next_offsets.items():
                self._done[tp] = max(self._done.get(tp, 0), off)
                self._handled[tp] = max(self._handled.get(tp, 0), off)

    async def drain(self, consumer: AIOKafkaConsumer | None = None) -> None:
        """Finish the fetches in flight and commit them (before a rebalance or a stop)."""
        consumer = consumer or self._consumer
        if consumer is None:
            return
        while self._inflight:
            await asyncio.wait({self._inflight[0].task})
            await self._reap(consumer)
        await self._commit(consumer)

    # Holding ------------------------------------------------------------------------------
    def hold(self, record: Any) -> None:
        """Commit nothing of ``record``'s partition from its offset on until ``release``."""
        tp = TopicPartition(record.topic, record.partition)
        self._held.setdefault(tp, set()).add(record.offset)

    def release(self, record: Any) -> None:
        """``record`` is handled (or given up on): its partition's commits may pass it."""
        held = self._held.get(TopicPartition(record.topic, record.partition))
        if held is not None:
            held.discard(record.offset)

    def fetched_up_to(self, topic: str, partition: int) -> int | None:
        """The partition's end offset as of the consumer's last fetch of it (its records
        below that are in hand or buffered); ``None`` before a fetch, or when not owned."""
        consumer = self._consumer
        if consumer is None:
            return None
        tp = TopicPartition(topic, partition)
        return consumer.highwater(tp) if tp in consumer.assignment() else None

    def lag(self) -> dict[str, int]:
        """Records not handled yet, per topic, on the partitions this consumer owns: the
        end offset as of its last fetch minus the next offset to handle (what is in hand
        counts until its handler finishes). Never raises (a rebalance may be under way)."""
        consumer = self._consumer
        out = dict.fromkeys(self.topics, 0)
        if consumer is None:
            return out
        owned = set(consumer.assignment())
        for known in (self._first, self._handled):
            for tp in [tp for tp in known if tp not in owned]:
                known.pop(tp, None)  # taken away: counted afresh if it comes back
        for tp in owned:
            try:
                end = consumer.highwater(tp)
            except Exception:  # unassigned meanwhile
                continue
            handled = self._handled.get(tp, self._first.get(tp))
            if end is not None and handled is not None:
                out[tp.topic] = out.get(tp.topic, 0) + max(0, end - handled)
        return out

    def owns_all(self, topic: str) -> bool:
        """Whether every partition of ``topic`` is this consumer's now (it is the only
        member of its group reading it)."""
        consumer = self._consumer
        if consumer is None:
            return False
        partitions = consumer.partitions_for_topic(topic)
        mine = {tp.partition for tp in consumer.assignment() if tp.topic == topic}
        return bool(partitions) and mine == set(partitions)

    def owns(self, record: Any) -> bool:
        """Whether ``record``'s partition is still this consumer's (not rebalanced away)."""
        consumer = self._consumer
        tp = TopicPartition(record.topic, record.partition)
        return consumer is not None and tp in consumer.assignment()

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        self._last_commit = time.monotonic()
        owned = consumer.assignment()
        for tp in [tp for tp in self._held if tp not in owned]:
            del self._held[tp]  # rebalanced away: the new owner replays from the commit
        offsets: dict[TopicPartition, int] = {}
        for tp, off in list(self._done.items()):
            if tp not in owned:
                del self._done[tp]
                continue
            held = self._held.get(tp)
            if held:  # stop short of the oldest held record; the rest waits for release
                offsets[tp] = min(off, *held)
            else:
                offsets[tp] = off
                del self._done[tp]
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:  # rebalanced meanwhile: the new owner replays them
            log.warning("%s: commit of %d partitions failed (%s)", self.group, len(offsets), exc)
