"""A Faust worker that only counts records, for ``carls bench makers``.

    python -m makers.bench_faust worker   (BENCH_TOPIC, BENCH_COUNT, BENCH_OUT, BENCH_APP)

It consumes with ``take_events`` (the batching the makers use) and, when it has seen
BENCH_COUNT records, writes the seconds from the first to the last record to BENCH_OUT.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from streams.app import make_app
from streams.config import KafkaConnection

conn = KafkaConnection(bootstrap_servers=tuple(os.environ["BENCH_BOOTSTRAP"].split(",")))
app = make_app(os.environ["BENCH_APP"], conn, datadir=os.environ.get("BENCH_DATADIR", "."))
topic = app.topic(os.environ["BENCH_TOPIC"], value_serializer="raw", key_serializer="raw")
want = int(os.environ["BENCH_COUNT"])
state: dict[str, Any] = {"seen": 0, "first": None}


@app.agent(topic)
async def count(stream: Any) -> None:
    async for events in stream.take_events(1000, 0.05):
        if state["first"] is None:
            state["first"] = time.perf_counter()
        state["seen"] += sum(len(e.value) > 0 for e in events)
        if state["seen"] >= want:
            elapsed = time.perf_counter() - state["first"]
            report = json.dumps({"records": state["seen"], "seconds": elapsed})
            out = Path(os.environ["BENCH_OUT"])
            await asyncio.get_running_loop().run_in_executor(None, out.write_text, report)
            state["first"] = float("inf")  # report once


if __name__ == "__main__":
    app.main()
