"""A namespace, a model and ``carls worker`` processes on the real stack, for maker tests."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from carls.bank.errors import BankUnavailableError
from carls.bank.protocol import coverage
from carls.bank.retry import past, retry_unavailable
from carls.bank.types import Coverage, NamespaceSpec, default_kinds
from carls.schemas import CheckpointManifest
from carls.trainers.checkpoints import save_artifact
from tests.stack_support import StackEnv, committed_offsets

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


class MakerEnv(StackEnv):
    """A namespace of random examples on a prefix of its own, and the workers making its
    knowledge; cleaned up by close()."""

    def __init__(self, tmp: Path, examples: int = 2000, buckets: int = 8) -> None:
        super().__init__(tmp, "m")
        self.ns = self.prefix
        self.namespaces.append(self.ns)
        self.bank.create_namespace(
            NamespaceSpec(self.ns, default_kinds(EMBED, CLASSES, K), buckets=buckets)
        )
        rng = np.random.default_rng(0)
        self.ids = [f"x{i:06d}" for i in range(examples)]
        self.features = rng.standard_normal((examples, FEATURES)).astype(np.float32)
        labels = np.where(rng.random(examples) < 0.2, rng.integers(0, CLASSES, examples), -1)
        deadline = time.monotonic() + 300  # a loaded server's timeouts are waited out
        for s in range(0, examples, 5000):
            part = slice(s, s + 5000)
            retry_unavailable(
                lambda part=part: self.bank.register_examples(
                    self.ns, self.ids[part], self.features[part], labels[part]
                ),
                "registering the test's examples",
                stop=past(deadline),
            )

    def save(self, step: int, **model_kw: Any) -> CheckpointManifest:
        return save_artifact(tiny_model(step, **model_kw), self.checkpoints, self.ns, step)

    def coverage(self, kind: str = "embedding") -> Coverage:
        return coverage(self.bank, self.ns, kind)

    def wait_coverage(
        self, step: int, kinds: tuple[str, ...] = ("embedding",), timeout: float = 120.0
    ) -> dict[str, Coverage]:
        """Wait until every id of ``kinds`` is at ``step``; a bank that does not answer
        meanwhile (just back from an outage) is asked again until the deadline."""
        deadline = time.monotonic() + timeout
        got: dict[str, Coverage] | str = "none read"
        while time.monotonic() < deadline:
            self.assert_workers_alive()
            try:
                got = {k: self.coverage(k) for k in kinds}
            except BankUnavailableError as exc:
                got = f"the bank did not answer: {exc}"
            else:
                if all(c.newest_step == step and c.at_newest == c.total for c in got.values()):
                    return got
            time.sleep(0.5)
        raise AssertionError(f"coverage at step {step} incomplete: {got}\n{self.worker_logs()}")

    def wait_steps(self, ids: list[str], step: int, timeout: float = 120.0) -> None:
        """Wait until the embeddings of ``ids`` are all at ``step``."""
        deadline = time.monotonic() + timeout
        steps: set[int] = set()
        while time.monotonic() < deadline and steps != {step}:
            self.assert_workers_alive()
            steps = set(self.bank.read(self.ns, "embedding", ids, lineage=True).steps.tolist())
            time.sleep(0.25)
        assert steps == {step}, f"{steps}\n{self.worker_logs()}"

    def committed(self, topic: str) -> dict[int, int]:
        """The workers' committed offsets on ``topic`` (checkpoints are read in the app's
        group, id batches in ``<group>-ids``)."""
        group = self.group if topic == self.settings.topics.checkpoints else f"{self.group}-ids"
        offsets = committed_offsets(self.settings, group)
        return {part: offset for (t, part), offset in offsets.items() if t == topic}

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

    def produce_raw(
        self, topic: str, value: bytes | None, key: bytes = b"poison"
    ) -> tuple[int, int]:
        """Send one record as is (``value=None``: a tombstone); its partition and offset."""
        from kafka import KafkaProducer

        producer = KafkaProducer(**self.settings.kafka.kafka_python())
        try:
            meta = producer.send(topic, key=key, value=value).get(timeout=30)
        finally:
            producer.close()
        return meta.partition, meta.offset
