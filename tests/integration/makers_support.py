"""A namespace, a model and ``carls worker`` processes on the real stack, for maker tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from bank.cassandra import CassandraBank
from bank.protocol import coverage
from bank.types import Coverage, NamespaceSpec, default_kinds
from carls.settings import Settings
from schemas import CheckpointManifest, DeadLetter, decode
from streams.groups import wait_stable
from streams.producer import Publisher
from streams.topics import ensure_topics, topic_specs
from trainers.checkpoints import save_artifact

FEATURES, EMBED, CLASSES, K = 16, 8, 3, 5


def tiny_model(seed: int, embed: int = EMBED, nan: bool = False) -> Any:
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((FEATURES,))
    emb = keras.layers.Dense(embed, name="embedding")(inp)
    probs = keras.layers.Dense(CLASSES, activation="softmax", name="probabilities")(emb)
    model = keras.Model(inp, [emb, probs])
    if nan:
        layer = model.get_layer("embedding")
        kernel, bias = layer.get_weights()
        layer.set_weights([np.full_like(kernel, np.nan), bias])
    return model


def read_dead_letters(settings: Settings, count: int, timeout: float) -> list[DeadLetter]:
    """The dead letters under ``settings``' prefix, from the start, until ``count`` arrived
    or ``timeout`` passed."""
    topic = settings.topics.deadletter
    consumer = KafkaConsumer(**settings.kafka.kafka_python(), enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        letters: list[DeadLetter] = []
        deadline = time.monotonic() + timeout
        while len(letters) < count and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                letters += [decode(r.value, DeadLetter) for r in records]
        return letters
    finally:
        consumer.close()


class MakerEnv:
    """Unique topics, group and namespace; workers as subprocesses; cleaned up by close()."""

    def __init__(self, tmp: Path, examples: int = 2000, buckets: int = 8) -> None:
        self.tmp = tmp
        self.prefix = "m" + uuid.uuid4().hex[:10]
        self.settings = Settings(topic_prefix=self.prefix)
        self.group = f"{self.prefix}-makers"
        ensure_topics(
            self.settings.kafka, topic_specs(self.settings.topics, self.settings.partitions)
        )
        self.bank = CassandraBank(self.settings.cassandra)
        self.ns = self.prefix
        self.bank.create_namespace(
            NamespaceSpec(self.ns, default_kinds(EMBED, CLASSES, K), buckets=buckets)
        )
        rng = np.random.default_rng(0)
        self.ids = [f"x{i:06d}" for i in range(examples)]
        self.features = rng.standard_normal((examples, FEATURES)).astype(np.float32)
        labels = np.where(rng.random(examples) < 0.2, rng.integers(0, CLASSES, examples), -1)
        for s in range(0, examples, 5000):
            self.bank.register_examples(
                self.ns, self.ids[s : s + 5000], self.features[s : s + 5000], labels[s : s + 5000]
            )
        self.publisher = Publisher(self.settings.kafka, self.settings.topics)
        self.workers: list[subprocess.Popen[bytes]] = []

    def save(self, step: int, **model_kw: Any) -> CheckpointManifest:
        return save_artifact(tiny_model(step, **model_kw), self.tmp / "ckpt", self.ns, step)

    def start_worker(self, *extra: str) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"worker-{len(self.workers)}.log").open("wb")
        env = {**os.environ, "CARLS_TOPIC_PREFIX": self.prefix}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "carls",
                "worker",
                "--app-id",
                self.group,
                "--session-timeout",
                "6",
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        self.workers.append(proc)
        return proc

    def worker_logs(self) -> str:
        return "\n".join(
            (self.tmp / f"worker-{i}.log").read_text(errors="replace")[-2000:]
            for i in range(len(self.workers))
        )

    def wait_members(self, n: int, timeout: float = 90.0) -> None:
        """Wait until ``n`` workers share the id batches (and the checkpoints are read)."""
        try:
            wait_stable(
                self.settings.kafka,
                {self.group: 1, f"{self.group}-ids": n},
                timeout=timeout,
                check=self.assert_workers_alive,
            )
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{self.worker_logs()}") from exc

    def assert_workers_alive(self) -> None:
        for proc in self.workers:
            if proc.poll() is not None and proc.returncode != -signal.SIGKILL:
                raise AssertionError(f"a worker exited ({proc.returncode}):\n{self.worker_logs()}")

    def coverage(self, kind: str = "embedding") -> Coverage:
        return coverage(self.bank, self.ns, kind)

    def wait_coverage(
        self, step: int, kinds: tuple[str, ...] = ("embedding",), timeout: float = 120.0
    ) -> dict[str, Coverage]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.assert_workers_alive()
            got = {k: self.coverage(k) for k in kinds}
            if all(c.newest_step == step and c.at_newest == c.total for c in got.values()):
                return got
            time.sleep(0.5)
        raise AssertionError(f"coverage at step {step} incomplete: {got}\n{self.worker_logs()}")

    def committed(self, topic: str) -> dict[int, int]:
        """The workers' committed offsets on ``topic`` (checkpoints are read in the app's
        group, id batches in ``<group>-ids``)."""
        group = self.group if topic == self.settings.topics.checkpoints else f"{self.group}-ids"
        admin = KafkaAdminClient(**self.settings.kafka.kafka_python())
        try:
            offsets = admin.list_group_offsets(group).get(group, {})
        finally:
            admin.close()
        return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}

    def wait_committed(
        self, topic: str, partition: int, offset: int, timeout: float = 60.0
    ) -> None:
        """Wait until the workers committed past ``offset`` (they processed that record)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.committed(topic).get(partition, -1) > offset:
                return
            time.sleep(0.5)
        raise AssertionError(f"{topic}[{partition}]@{offset} not processed in {timeout} s")

    def produce_raw(self, topic: str, value: bytes) -> tuple[int, int]:
        from kafka import KafkaProducer

        producer = KafkaProducer(**self.settings.kafka.kafka_python())
        try:
            meta = producer.send(topic, key=b"poison", value=value).get(timeout=30)
        finally:
            producer.close()
        return meta.partition, meta.offset

    def dead_letters(self, count: int, timeout: float = 60.0) -> list[DeadLetter]:
        return read_dead_letters(self.settings, count, timeout)

    def close(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.workers:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.publisher.close()
        try:
            self.bank.drop_namespace(self.ns)
        finally:
            self.bank.close()
