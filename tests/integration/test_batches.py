"""The makers' batch consumer on real Kafka: in-order commits, priority, failures."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from kafka import KafkaProducer

from carls.settings import Settings
from carls.streams.batches import BatchConsumer
from carls.streams.topics import TopicSpec, ensure_topics
from tests.stack_support import committed_offsets

pytestmark = pytest.mark.integration


def _produce(stack: Settings, topic: str, values: list[bytes]) -> None:
    """Send ``values`` to partition 0 as one batch (lingering so that they go together:
    a consumer then fetches all of them or none)."""
    producer = KafkaProducer(**stack.kafka.kafka_python(), linger_ms=200)
    try:
        for v in values:
            producer.send(topic, value=v, partition=0)
        producer.flush(30)
    finally:
        producer.close()


def _committed(stack: Settings, group: str) -> dict[str, int]:
    return {topic: offset for (topic, _), offset in committed_offsets(stack, group).items()}


async def _until(cond: Callable[[], bool], what: str, within: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def _committed_async(stack: Settings, group: str) -> dict[str, int]:
    return await asyncio.get_running_loop().run_in_executor(None, _committed, stack, group)


def _run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 120))  # type: ignore[arg-type]


def test_a_slow_fetch_holds_back_the_commits_of_later_ones(stack: Settings, unique: str) -> None:
    topic, group = f"{unique}.ids", f"{unique}-g"
    ensure_topics(stack.kafka, [TopicSpec(topic, 1)])
    _produce(stack, topic, [b"r%d" % i for i in range(10)])
    gate = asyncio.Event()
    handled: list[list[bytes]] = []

    async def handle(records: list[Any]) -> None:
        if records[0].offset == 0:
            await gate.wait()
        handled.append([r.value for r in records])

    async def scenario() -> None:
        svc = BatchConsumer(
            stack.kafka, [topic], group, handle, max_records=2, concurrency=3,
            commit_interval_s=0.05,
        )  # fmt: skip
        commits = 0
        real_commit = svc._commit

        async def counted(consumer: Any) -> None:
            nonlocal commits
            commits += 1
            await real_commit(consumer)

        svc._commit = counted  # type: ignore[method-assign]
        await svc.start()
        try:
            await _until(lambda: len(handled) >= 2, "the fetches behind the slow one")
            seen = commits
            await _until(lambda: commits >= seen + 5, "several commit rounds")
            assert topic not in await _committed_async(stack, group)  # nothing skips it
            gate.set()
            await _until(lambda: sum(map(len, handled)) == 10, "every record")
            for _ in range(100):
                if (await _committed_async(stack, group)).get(topic) == 10:
                    break
                await asyncio.sleep(0.1)
            assert (await _committed_async(stack, group)).get(topic) == 10
        finally:
            await svc.stop()

    _run(scenario())
    assert sorted(v for batch in handled for v in batch) == sorted(b"r%d" % i for i in range(10))


def test_priority_records_go_ahead_of_records_waiting_in_other_topics(
    stack: Settings, unique: str
) -> None:
    low, high, group = f"{unique}.examples", f"{unique}.demand", f"{unique}-g"
    ensure_topics(stack.kafka, [TopicSpec(low, 1), TopicSpec(high, 1)])
    _produce(stack, low, [b"first"])
    gate = asyncio.Event()
    handled: list[list[str]] = []

    async def handle(records: list[Any]) -> None:
        if records[0].value == b"first":
            await gate.wait()
        handled.append([r.topic for r in records])
        await asyncio.sleep(0.2)  # the makers' work on a fetch takes a while

    async def scenario() -> None:
        svc = BatchConsumer(
            stack.kafka, [low, high], group, handle, priority=[high], max_records=100
        )
        await svc.start()
        try:
            await _until(lambda: svc.stats.records >= 1, "the first record")
            # While the worker is busy, refresh work queues up, then demand arrives.
            await asyncio.to_thread(_produce, stack, low, [b"later-%d" % i for i in range(20)])
            await asyncio.to_thread(_produce, stack, high, [b"urgent-%d" % i for i in range(3)])
            await _until(  # all demand, and refresh work, is fetched into the buffers
                lambda: svc.fetched_up_to(high, 0) == 3 and (svc.fetched_up_to(low, 0) or 0) > 1,
                "the queued records in the consumer's buffers",
            )
            gate.set()
            await _until(lambda: sum(map(len, handled)) == 24, "every record")
        finally:
            await svc.stop()

    _run(scenario())
    assert handled[0] == [low]
    after = [t for batch in handled[1:] for t in batch]
    assert after == [high] * 3 + [low] * 20, handled


def test_a_failing_handler_stops_the_consumer_and_its_fetch_is_not_committed(
    stack: Settings, unique: str
) -> None:
    topic, group = f"{unique}.ids", f"{unique}-g"
    ensure_topics(stack.kafka, [TopicSpec(topic, 1)])
    _produce(stack, topic, [b"ok-0", b"ok-1", b"bug", b"ok-3", b"after-4", b"after-5"])
    seen: list[bytes] = []

    async def handle(records: list[Any]) -> None:
        seen.extend(r.value for r in records)
        if any(r.value == b"bug" for r in records):
            raise RuntimeError("a bug in the handler")

    async def scenario() -> None:
        svc = BatchConsumer(stack.kafka, [topic], group, handle, max_records=2)
        await svc.start()
        try:
            await _until(lambda: svc.crashed, "the consumer to stop on the failure")
            assert isinstance(svc.crash_reason, RuntimeError)
        finally:
            await svc.stop()

    _run(scenario())
    assert seen == [b"ok-0", b"ok-1", b"bug", b"ok-3"]  # nothing after the failing fetch
    # The fetch before the failure is committed; the failing one will be read again.
    assert _committed(stack, group).get(topic) == 2
