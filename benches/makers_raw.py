"""A bare aiokafka consumer that only counts records, for ``carls bench makers``.

    python -m carls.benches.makers_raw BOOTSTRAP TOPIC COUNT PARTITIONS   (prints records/s)

It runs in a process of its own, as the Faust bench worker does, so neither pays for the
other's imports (a large heap slows Python's collector on every allocation-heavy fetch).
"""

from __future__ import annotations

import asyncio
import sys

from aiokafka import AIOKafkaConsumer, TopicPartition

from carls.benches.rate import SteadyRate


async def consume(bootstrap: str, topic: str, count: int, partitions: int) -> float:
    """Records/s of aiokafka's ``getmany`` over ``topic`` from its start (assigned)."""
    rate = SteadyRate(count)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap.split(","), enable_auto_commit=False, max_poll_records=1000
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while rate.seconds is None:
            batch = await consumer.getmany(timeout_ms=1000, max_records=1000)
            for records in batch.values():
                rate.add(sum(len(r.value) > 0 for r in records))
        return rate.per_s
    finally:
        await consumer.stop()


if __name__ == "__main__":
    bootstrap, topic, count, partitions = sys.argv[1:5]
    print(asyncio.run(consume(bootstrap, topic, int(count), int(partitions))))
