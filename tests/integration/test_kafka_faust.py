"""Records cross between kafka-python and a Faust agent in both directions, on real Kafka."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer

from carls.schemas import ExampleBatch, ProgressEvent, decode, encode
from carls.settings import Settings
from carls.streams.topics import TopicSpec, ensure_topics

pytestmark = pytest.mark.integration
RELAY = Path(__file__).with_name("faust_relay.py")


def test_kafka_python_to_faust_and_back(stack: Settings, unique: str, tmp_path: Path) -> None:
    source, sink = f"{unique}.in", f"{unique}.out"
    ensure_topics(stack.kafka, [TopicSpec(source, 2), TopicSpec(sink, 1)])
    env = {
        **os.environ,
        "RELAY_BOOTSTRAP": stack.kafka.bootstrap_servers[0],
        "RELAY_APP_ID": f"relay-{unique}",
        "RELAY_IN": source,
        "RELAY_OUT": sink,
    }
    log = (tmp_path / "relay.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, str(RELAY), "worker", "-l", "warn", "--without-web"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    producer = KafkaProducer(**stack.kafka.kafka_python())
    consumer = KafkaConsumer(
        sink,
        **stack.kafka.kafka_python(),
        group_id=f"g-{unique}",
        auto_offset_reset="earliest",
        consumer_timeout_ms=1000,
    )
    sent = [
        ExampleBatch(
            namespace="relay",
            ids=[f"id{i}-{j}" for j in range(i + 1)],
            priority="refresh",
            step=7,
            campaign=f"c{i}",
        )
        for i in range(5)
    ]
    try:
        for batch in sent:
            producer.send(source, key=batch.campaign.encode(), value=encode(batch))
        producer.flush(timeout=30)
        received: dict[str, ProgressEvent] = {}
        deadline = time.monotonic() + 90
        while len(received) < len(sent) and time.monotonic() < deadline:
            assert worker.poll() is None, (tmp_path / "relay.log").read_text()[-3000:]
            for message in consumer:
                event = decode(message.value, ProgressEvent)
                received[event.campaign] = event
    finally:
        producer.close()
        consumer.close()
        worker.terminate()
        worker.wait(timeout=30)
        log.close()
    assert sorted(received) == sorted(b.campaign for b in sent), (
        tmp_path / "relay.log"
    ).read_text()[-3000:]
    for batch in sent:
        event = received[batch.campaign]
        assert (event.namespace, event.step, event.processed) == ("relay", 7, len(batch.ids))
