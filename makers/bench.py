"""``carls bench makers``: the makers measured side by side with raw baselines, one run.

(a) Faust consumption (``take_events`` batches) against a raw aiokafka consumer on the same
    records; (b) maker examples/s end to end (one ``carls worker``, publish -> all ids at
    the new step) against raw compiled TensorFlow inference at the same batch size and raw
    bank writes of the same kinds, with the worker's time split into consume / fetch /
    infer / write; (c) freshness: seconds from checkpoint publish until 50 / 99 / 100 % of
    the ids carry the new step, against the lower bound N / min(inference, bank write).

The neighbours maker is left out of (b) and (c): exact top-k over the namespace is
quadratic in its size and is reported on its own elsewhere; the other four kinds are made.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bank.cassandra import CassandraBank
from bank.session import CassandraConfig
from bank.types import Lineage, NamespaceSpec, default_kinds
from makers.checkpoints import INFER_CHUNK, load_model, save_artifact
from makers.compute import knowledge_batch
from schemas import ProgressEvent, decode
from streams.config import KafkaConnection
from streams.producer import Publisher
from streams.topics import Topics, TopicSpec, ensure_topics, topic_specs

Say = Callable[[str], None]
MAKERS = ("embedding", "pseudo_label", "difficulty", "prediction")
FEATURES, HIDDEN, EMBED, CLASSES = 64, 256, 64, 10


def _model(seed: int = 0) -> Any:
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((FEATURES,))
    h = keras.layers.Dense(HIDDEN, activation="relu")(inp)
    emb = keras.layers.Dense(EMBED, name="embedding")(h)
    probs = keras.layers.Dense(CLASSES, activation="softmax", name="probabilities")(emb)
    return keras.Model(inp, [emb, probs])


def _consume_raw(conn: KafkaConnection, topic: str, count: int, partitions: int) -> float:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def run() -> float:
        consumer = AIOKafkaConsumer(
            **conn.aiokafka(), enable_auto_commit=False, max_poll_records=1000
        )
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            seen, first = 0, None
            while seen < count:
                batch = await consumer.getmany(timeout_ms=1000, max_records=1000)
                for records in batch.values():
                    if first is None:
                        first = time.perf_counter()
                    seen += len(records)
            return time.perf_counter() - (first or time.perf_counter())
        finally:
            await consumer.stop()

    return asyncio.run(run())


def _consume_faust(conn: KafkaConnection, topic: str, count: int, tmp: Path) -> float:
    out = tmp / "faust.json"
    env = {
        **os.environ,
        "BENCH_BOOTSTRAP": ",".join(conn.bootstrap_servers),
        "BENCH_TOPIC": topic,
        "BENCH_COUNT": str(count),
        "BENCH_OUT": str(out),
        "BENCH_APP": f"bench-{uuid.uuid4().hex[:8]}",
        "BENCH_DATADIR": str(tmp / "faust"),
    }
    log = (tmp / "faust.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "makers.bench_faust", "worker", "-l", "warn", "--without-web"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 300
        while not out.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "the Faust bench worker failed:\n" + (tmp / "faust.log").read_text()[-3000:]
                )
            time.sleep(0.2)
        return float(json.loads(out.read_text())["seconds"])
    finally:
        proc.terminate()
        proc.wait(timeout=30)


class _Progress(threading.Thread):
    """Counts processed ids of one namespace/kind/step from the progress topic."""

    def __init__(self, conn: KafkaConnection, topic: str, ns: str, step: int) -> None:
        super().__init__(daemon=True)
        from kafka import KafkaConsumer

        self.consumer = KafkaConsumer(
            topic,
            **conn.kafka_python(),
            auto_offset_reset="latest",
            group_id=f"bench-{uuid.uuid4().hex[:8]}",
        )
        self.ns, self.step = ns, step
        self.done = 0
        self.times: list[tuple[float, int]] = []
        self.stop = threading.Event()
        while not self.consumer.assignment():  # joined: it will see everything from now
            self.consumer.poll(timeout_ms=200)

    def run(self) -> None:
        while not self.stop.is_set():
            for records in self.consumer.poll(timeout_ms=200).values():
                for r in records:
                    ev = decode(r.value, ProgressEvent)
                    if (ev.namespace, ev.kind, ev.step) == (self.ns, "embedding", self.step):
                        self.done += ev.processed
                        self.times.append((time.time(), self.done))
        self.consumer.close()


def run(
    conn: KafkaConnection,
    cassandra: CassandraConfig,
    *,
    examples: int = 100_000,
    records: int = 100_000,
    say: Say = lambda _: None,
) -> dict[str, Any]:
    prefix = "bench" + uuid.uuid4().hex[:8]
    topics = Topics(prefix)
    ensure_topics(
        conn,
        [*topic_specs(topics, {"examples": 4, "demand": 2}), TopicSpec(f"{prefix}.consume", 4)],
    )
    result: dict[str, Any] = {"examples": examples, "records": records, "makers": list(MAKERS)}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        # (a) consumption ------------------------------------------------------------------
        say(f"producing {records:,} records")
        with Publisher(conn, topics, linger_ms=20, batch_size=256 * 1024) as pub:
            payload = b"x" * 100
            for i in range(records):
                pub._producer.send(f"{prefix}.consume", key=str(i).encode(), value=payload)
            pub.flush(120)
        say("consuming with raw aiokafka, then with Faust")
        raw_s = _consume_raw(conn, f"{prefix}.consume", records, 4)
        faust_s = _consume_faust(conn, f"{prefix}.consume", records, tmp)
        result["consume"] = {"aiokafka_per_s": records / raw_s, "faust_per_s": records / faust_s}
        result["consume"]["faust_vs_aiokafka"] = raw_s / faust_s

        # (b) baselines --------------------------------------------------------------------
        bank = CassandraBank(cassandra)
        ns = prefix
        try:
            bank.create_namespace(NamespaceSpec(ns, default_kinds(EMBED, CLASSES, 16)))
            rng = np.random.default_rng(0)
            ids = [f"e{i:07d}" for i in range(examples)]
            feats = rng.standard_normal((examples, FEATURES)).astype(np.float32)
            labels = np.where(rng.random(examples) < 0.1, rng.integers(0, CLASSES, examples), -1)
            say(f"registering {examples:,} examples")
            for s in range(0, examples, 10_000):
                bank.register_examples(
                    ns, ids[s : s + 10_000], feats[s : s + 10_000], labels[s : s + 10_000].tolist()
                )
            manifest = save_artifact(_model(), tmp / "ckpt", ns, 1)
            loaded = load_model(manifest)
            say("raw inference and raw bank writes")
            t = time.perf_counter()
            for s in range(0, examples, INFER_CHUNK):
                loaded.function(feats[s : s + INFER_CHUNK])
            infer_per_s = examples / (time.perf_counter() - t)
            emb, probs = loaded.infer(feats)
            t = time.perf_counter()
            for s in range(0, examples, 16_384):
                sl = slice(s, s + 16_384)
                for kind in MAKERS:
                    bank.write(
                        ns,
                        kind,
                        knowledge_batch(kind, ids[sl], emb[sl], probs[sl], labels[sl]),
                        Lineage(1, "bench"),
                    )
            write_per_s = examples / (time.perf_counter() - t)
            result["raw"] = {
                "inference_per_s": infer_per_s,
                "inference_batch": INFER_CHUNK,
                "bank_write_ids_per_s": write_per_s,
                "kinds_per_id": len(MAKERS),
            }

            # (b, c) the worker ----------------------------------------------------------
            stats = tmp / "stats.json"
            wlog = (tmp / "worker.log").open("wb")
            env = {
                **os.environ,
                "CARLS_TOPIC_PREFIX": prefix,
                "CARLS_KAFKA_BOOTSTRAP_SERVERS": ",".join(conn.bootstrap_servers),
            }
            worker = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "carls",
                    "worker",
                    "--makers",
                    ",".join(MAKERS),
                    "--app-id",
                    f"{prefix}-makers",
                    "--stats",
                    str(stats),
                ],
                env=env,
                stdout=wlog,
                stderr=subprocess.STDOUT,
            )
            try:
                say("waiting for the worker to join its group")
                _wait_group(conn, f"{prefix}-makers", worker, tmp)
                progress = _Progress(conn, topics.progress, ns, 2)
                progress.start()
                new = save_artifact(_model(1), tmp / "ckpt", ns, 2)
                with Publisher(conn, topics) as pub:
                    t0 = time.time()
                    pub.manifest(new)
                say("refresh campaign running")
                deadline = time.monotonic() + 900
                while progress.done < examples and time.monotonic() < deadline:
                    if worker.poll() is not None:
                        raise RuntimeError(
                            "worker died:\n" + (tmp / "worker.log").read_text()[-3000:]
                        )
                    time.sleep(0.2)
                progress.stop.set()
                t100 = progress.times[-1][0] if progress.times else float("nan")
                time.sleep(1.5)  # one more stats write
                st = json.loads(stats.read_text()) if stats.exists() else {}
            finally:
                worker.terminate()
                worker.wait(timeout=60)
            marks = {}
            for pct in (50, 99, 100):
                need = examples * pct / 100
                hit = next((t for t, d in progress.times if d >= need), float("nan"))
                marks[f"p{pct}_s"] = hit - t0
            e2e = examples / (t100 - t0)
            bound = min(infer_per_s, write_per_s)
            result["maker"] = {
                "examples_per_s": e2e,
                "vs_min_raw": e2e / bound,
                "stages_s": {k: st.get(k) for k in ("consume_s", "fetch_s", "infer_s", "write_s")},
            }
            lower = examples / bound
            result["freshness"] = {
                **marks,
                "lower_bound_s": lower,
                "p99_vs_lower_bound": marks["p99_s"] / lower,
            }
        finally:
            bank.drop_namespace(ns)
            bank.close()
    result["targets"] = {
        "faust_vs_aiokafka >= 0.8": result["consume"]["faust_vs_aiokafka"] >= 0.8,
        "maker_vs_min_raw >= 0.3": result["maker"]["vs_min_raw"] >= 0.3,
        "p99_freshness <= 2x lower bound": result["freshness"]["p99_vs_lower_bound"] <= 2.0,
    }
    return result


def _wait_group(
    conn: KafkaConnection, group: str, proc: subprocess.Popen[bytes], tmp: Path
) -> None:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(**conn.kafka_python())
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError("worker died:\n" + (tmp / "worker.log").read_text()[-3000:])
            g = admin.describe_groups([group]).get(group, {})
            if g.get("members") and g.get("group_state") == "Stable":
                return
            time.sleep(0.5)
    finally:
        admin.close()
    raise RuntimeError("the worker did not join its group in 120 s")
