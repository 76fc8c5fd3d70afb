"""A Faust worker that only counts records, for ``carls bench makers``.

    python -m carls.benches.makers_faust worker   (BENCH_TOPIC, BENCH_COUNT, BENCH_OUT,
                                                   BENCH_APP, BENCH_MODE = batches | events)

``batches`` consumes the way the makers' hot path does (``streams.batches``: a Faust
service handing whole fetches to the handler); ``events`` consumes with Faust's own
per-record streams (``take_events``), for comparison. When it has seen BENCH_COUNT records
it writes its steady rate (``benches.rate.SteadyRate``) to BENCH_OUT. The environment is
read when it runs, never on import.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from carls.benches.rate import SteadyRate
from carls.streams.app import make_app
from carls.streams.batches import BatchConsumer
from carls.streams.config import KafkaConnection


def build(env: Mapping[str, str]) -> Any:
    """The counting Faust app the ``BENCH_*`` variables of ``env`` describe."""
    conn = KafkaConnection(bootstrap_servers=tuple(env["BENCH_BOOTSTRAP"].split(",")))
    app_id, topic_name, out = env["BENCH_APP"], env["BENCH_TOPIC"], Path(env["BENCH_OUT"])
    app = make_app(app_id, conn, datadir=env.get("BENCH_DATADIR", "."))
    rate = SteadyRate(int(env["BENCH_COUNT"]))
    reported: list[bool] = []

    async def count_values(values: list[Any]) -> None:
        if rate.add(sum(len(v) > 0 for v in values)) and not reported:
            reported.append(True)
            report = {"records": rate.timed, "seconds": rate.seconds, "per_s": rate.per_s}
            await asyncio.get_running_loop().run_in_executor(
                None, out.write_text, json.dumps(report)
            )

    if env.get("BENCH_MODE", "batches") == "batches":

        async def on_fetch(records: list[Any]) -> None:
            await count_values([r.value for r in records])

        app.service(BatchConsumer(conn, [topic_name], f"{app_id}-batches", on_fetch))
    else:
        topic = app.topic(topic_name, value_serializer="raw", key_serializer="raw")

        @app.agent(topic)
        async def count(stream: Any) -> None:
            async for events in stream.take_events(1000, 0.05):
                await count_values([e.value for e in events])

    return app


if __name__ == "__main__":
    bench_app = build(os.environ)
    gc.freeze()  # as ``carls worker`` does once it is set up
    bench_app.main()
