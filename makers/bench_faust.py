"""A Faust worker that only counts records, for ``carls bench makers``.

    python -m carls.makers.bench_faust worker   (BENCH_TOPIC, BENCH_COUNT, BENCH_OUT, BENCH_APP,
                                           BENCH_MODE = batches | events)

``batches`` consumes the way the makers' hot path does (``streams.batches``: a Faust
service handing whole fetches to the handler); ``events`` consumes with Faust's own
per-record streams (``take_events``), for comparison. When it has seen BENCH_COUNT records
it writes its steady rate (``makers.rate.SteadyRate``) to BENCH_OUT.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
from pathlib import Path
from typing import Any

from carls.makers.rate import SteadyRate
from carls.streams.app import make_app
from carls.streams.batches import BatchConsumer
from carls.streams.config import KafkaConnection

conn = KafkaConnection(bootstrap_servers=tuple(os.environ["BENCH_BOOTSTRAP"].split(",")))
app_id = os.environ["BENCH_APP"]
app = make_app(app_id, conn, datadir=os.environ.get("BENCH_DATADIR", "."))
want = int(os.environ["BENCH_COUNT"])
rate = SteadyRate(want)
reported: list[bool] = []


async def _count(values: list[Any]) -> None:
    if rate.add(sum(len(v) > 0 for v in values)) and not reported:
        reported.append(True)
        report = json.dumps({"records": rate.timed, "seconds": rate.seconds, "per_s": rate.per_s})
        out = Path(os.environ["BENCH_OUT"])
        await asyncio.get_running_loop().run_in_executor(None, out.write_text, report)


if os.environ.get("BENCH_MODE", "batches") == "batches":

    async def _on_fetch(records: list[Any]) -> None:
        await _count([r.value for r in records])

    app.service(
        BatchConsumer(conn, [os.environ["BENCH_TOPIC"]], f"{app_id}-batches", _on_fetch),
    )
else:
    topic = app.topic(os.environ["BENCH_TOPIC"], value_serializer="raw", key_serializer="raw")

    @app.agent(topic)
    async def count(stream: Any) -> None:
        async for events in stream.take_events(1000, 0.05):
            await _count([e.value for e in events])


if __name__ == "__main__":
    gc.freeze()  # as ``carls worker`` does once it is set up
    app.main()
