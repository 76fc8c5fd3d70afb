"""A Faust worker used by the integration tests: decodes every ``ExampleBatch`` on the
input topic and answers with a ``ProgressEvent`` on the output topic.

    python tests/integration/faust_relay.py worker   (topics from RELAY_IN / RELAY_OUT)
"""

from __future__ import annotations

import os
import time

from carls.schemas import ExampleBatch, ProgressEvent, decode, encode
from carls.streams.app import make_app
from carls.streams.config import KafkaConnection

conn = KafkaConnection(bootstrap_servers=(os.environ["RELAY_BOOTSTRAP"],))
app = make_app(os.environ["RELAY_APP_ID"], conn)
source = app.topic(os.environ["RELAY_IN"], value_type=bytes, value_serializer="raw")
sink = app.topic(os.environ["RELAY_OUT"], value_type=bytes, value_serializer="raw")


@app.agent(source)
async def relay(stream):  # type: ignore[no-untyped-def]
    async for raw in stream:
        batch = decode(raw, ExampleBatch)
        event = ProgressEvent(
            namespace=batch.namespace,
            kind="embedding",
            step=batch.step or 0,
            processed=len(batch.ids),
            total=len(batch.ids),
            worker="relay",
            campaign=batch.campaign,
            at=time.time(),
        )
        await sink.send(key=batch.namespace.encode(), value=encode(event))


if __name__ == "__main__":
    app.main()
