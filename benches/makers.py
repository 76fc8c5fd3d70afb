"""``carls bench makers``: the makers measured side by side with raw baselines, one run.

(a) Faust consumption (``take_events`` batches) against a raw aiokafka consumer on the same
    records; (b) maker examples/s end to end (one ``carls worker``, publish -> all ids at
    the new step) against raw compiled TensorFlow inference at the same batch size and raw
    bank writes of the same kinds, with the worker's time split into consume / fetch /
    infer / write; (c) freshness: seconds from checkpoint publish until 50 / 99 / 100 % of
    the ids carry the new step, per kind, against the lower bound N / min(inference, bank
    writes of all five kinds); (d) the neighbours' recall@10 against exact search on a
    sample of 10k ids.

All five kinds are made, neighbours from the worker's HNSW index above
``neighbours_exact_below`` ids. The features are synthetic: points near a random
``intrinsic_dim``-dimensional subspace of the 64 features (data with structure, as real
embeddings have; ``intrinsic_dim = 64`` gives isotropic noise, the hardest case for any
approximate search, whose recall the README reports too).
"""

from __future__ import annotations

import json
import os
import re
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

from carls.bank.cassandra import CassandraBank
from carls.bank.session import CassandraConfig
from carls.bank.similarity import top_k
from carls.bank.types import Lineage, NamespaceSpec, default_kinds
from carls.makers.checkpoints import INFER_CHUNK, load_model
from carls.makers.compute import knowledge_batch, neighbours_batch
from carls.schemas import CheckpointManifest, ExampleBatch, ProgressEvent, decode, encode
from carls.streams.config import KafkaConnection
from carls.streams.groups import wait_stable
from carls.streams.producer import Publisher
from carls.streams.topics import Topics, TopicSpec, ensure_topics, topic_specs

Say = Callable[[str], None]
SaveArtifact = Callable[[Any, Path, str, int], CheckpointManifest]
"""Writes a model as a checkpoint artifact (the trainers' writer, passed in by ``carls``)."""
MAKERS = ("embedding", "pseudo_label", "difficulty", "prediction", "neighbours")
ROUNDS = 3
FEATURES, HIDDEN, EMBED, CLASSES, K = 64, 256, 64, 10, 10
RECALL_SAMPLE = 10_000


def _model(seed: int = 0) -> Any:
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((FEATURES,))
    h = keras.layers.Dense(HIDDEN, activation="relu")(inp)
    emb = keras.layers.Dense(EMBED, name="embedding")(h)
    probs = keras.layers.Dense(CLASSES, activation="softmax", name="probabilities")(emb)
    return keras.Model(inp, [emb, probs])


def _consume_raw(conn: KafkaConnection, topic: str, count: int, partitions: int) -> float:
    """Records/s of a bare aiokafka consumer (``benches.makers_raw``, its own process)."""
    args = [",".join(conn.bootstrap_servers), topic, str(count), str(partitions)]
    done = subprocess.run(
        [sys.executable, "-m", "carls.benches.makers_raw", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError("the aiokafka bench consumer failed:\n" + done.stderr[-3000:])
    return float(done.stdout.strip().splitlines()[-1])


def _consume_faust(
    conn: KafkaConnection, topic: str, count: int, tmp: Path, mode: str = "batches"
) -> float:
    out = tmp / f"faust-{mode}.json"
    out.unlink(missing_ok=True)  # a report from an earlier round must not count
    env = {
        "BENCH_MODE": mode,
        **os.environ,
        "BENCH_BOOTSTRAP": ",".join(conn.bootstrap_servers),
        "BENCH_TOPIC": topic,
        "BENCH_COUNT": str(count),
        "BENCH_OUT": str(out),
        "BENCH_APP": f"bench-{uuid.uuid4().hex[:8]}",
        "BENCH_DATADIR": str(tmp / f"faust-{mode}"),
    }
    log = (tmp / f"faust-{mode}.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "carls.benches.makers_faust",
            "worker",
            "-l",
            "warn",
            "--without-web",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 300
        while not out.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "the Faust bench worker failed:\n"
                    + (tmp / f"faust-{mode}.log").read_text()[-3000:]
                )
            time.sleep(0.2)
        return float(json.loads(out.read_text())["per_s"])
    finally:
        proc.terminate()
        proc.wait(timeout=30)


class _Progress(threading.Thread):
    """Counts processed ids of one namespace and step, per kind, from the progress topic."""

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
        self.done: dict[str, int] = dict.fromkeys(MAKERS, 0)
        self.times: dict[str, list[tuple[float, int]]] = {k: [] for k in MAKERS}
        self.stop = threading.Event()
        while not self.consumer.assignment():  # joined: it will see everything from now
            self.consumer.poll(timeout_ms=200)

    def least(self) -> int:
        return min(self.done.values())

    def run(self) -> None:
        while not self.stop.is_set():
            for records in self.consumer.poll(timeout_ms=200).values():
                for r in records:
                    ev = decode(r.value, ProgressEvent)
                    ours = (ev.namespace, ev.step) == (self.ns, self.step)
                    if ours and ev.total is None and ev.kind in self.done:
                        self.done[ev.kind] += ev.processed
                        self.times[ev.kind].append((ev.at, self.done[ev.kind]))
        self.consumer.close()


def _features(n: int, intrinsic_dim: int, seed: int = 0) -> np.ndarray:
    """``n`` points near a random ``intrinsic_dim``-dimensional subspace of the features."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((intrinsic_dim, FEATURES)).astype(np.float32)
    basis /= np.sqrt(intrinsic_dim)
    out = np.empty((n, FEATURES), np.float32)
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        z = rng.standard_normal((m, intrinsic_dim)).astype(np.float32)
        out[s : s + m] = z @ basis + 0.05 * rng.standard_normal((m, FEATURES)).astype(np.float32)
    return out


def _index_events(log_text: str, t0: float) -> list[str]:
    """The worker's log lines about the neighbour index (built, saved), each with its time
    since the checkpoint was published."""
    out = []
    for line in log_text.splitlines():
        if "neighbour pool for" not in line and "saved to the bank" not in line:
            continue
        stamp = re.match(r"\[?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})\]?\s*(.*)", line)
        if stamp is None:
            out.append(line.strip())
            continue
        at = time.mktime(time.strptime(stamp[1], "%Y-%m-%d %H:%M:%S")) + int(stamp[2]) / 1e3
        out.append(f"at {at - t0:6.1f} s: {stamp[3].strip()}")
    return out


def _recall(
    bank: CassandraBank, ns: str, ids: list[str], emb: np.ndarray, sample: int
) -> dict[str, Any]:
    """recall@K of the bank's neighbours of ``sample`` random ids against exact search."""
    rng = np.random.default_rng(1)
    rows = np.sort(rng.choice(len(ids), size=min(sample, len(ids)), replace=False))
    asked = [ids[i] for i in rows]
    got = bank.read(ns, "neighbours", asked, lineage=True)
    exact, _ = top_k(emb[rows], emb, K, cosine=True, self_index=rows.astype(np.int64))
    assert got.neighbour_ids is not None
    hits = total = 0
    for i, mine in enumerate(got.neighbour_ids):
        want = {ids[j] for j in exact[i]}
        hits += len(want & set(mine or []))
        total += len(want)
    return {
        "sample": len(asked),
        "k": K,
        "recall": hits / total if total else float("nan"),
        "steps": sorted({int(x) for x in got.steps[~got.missing]}),
    }


def run(
    conn: KafkaConnection,
    cassandra: CassandraConfig,
    save_artifact: SaveArtifact,
    *,
    examples: int = 100_000,
    records: int = 100_000,
    intrinsic_dim: int = 16,
    say: Say = lambda _: None,
) -> dict[str, Any]:
    prefix = "bench" + uuid.uuid4().hex[:8]
    topics = Topics(prefix)
    ensure_topics(
        conn,
        [
            *topic_specs(topics, {"examples": 4, "demand": 2}, 1),  # gone after the run
            TopicSpec(f"{prefix}.consume", 4),
            TopicSpec(f"{prefix}.consume-ids", 4),
        ],
    )
    result: dict[str, Any] = {
        "examples": examples,
        "records": records,
        "makers": list(MAKERS),
        "intrinsic_dim": intrinsic_dim,
    }
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        # (a) consumption ------------------------------------------------------------------
        say(f"producing {records:,} records of 100 B and {records // 2:,} id batches")
        id_batch = encode(
            ExampleBatch(
                namespace=prefix,
                ids=[f"e{i:07d}" for i in range(512)],
                priority="refresh",
                step=1,
                campaign=f"{prefix}@1-abcdef",
            )
        )
        small, large = f"{prefix}.consume", f"{prefix}.consume-ids"
        with Publisher(conn, topics, linger_ms=20, batch_size=1024 * 1024) as pub:
            for topic, payload, n in (
                (small, b"x" * 100, records),
                (large, id_batch, records // 2),
            ):
                for i in range(n):
                    pub._producer.send(topic, key=str(i).encode(), value=payload)
            pub.flush(120)
        consume: dict[str, Any] = {}
        for label, topic, payload, n in (
            ("small_records", small, b"x" * 100, records),
            ("id_batches", large, id_batch, records // 2),
        ):
            say(f"consuming {label}: raw aiokafka and the worker's Faust path, {ROUNDS} rounds")
            raw, faust = [], []
            for _ in range(ROUNDS):  # interleaved, so drift hits both alike
                raw.append(_consume_raw(conn, topic, n, 4))
                faust.append(_consume_faust(conn, topic, n, tmp))
            consume[label] = {
                "records": n,
                "record_bytes": len(payload),
                "aiokafka_per_s": max(raw),
                "faust_per_s": max(faust),
                "faust_vs_aiokafka": max(faust) / max(raw),
                "rounds": {"aiokafka_per_s": raw, "faust_per_s": faust},
            }
        say("consuming small_records with Faust's per-record streams (take_events)")
        events = _consume_faust(conn, small, records, tmp, mode="events")
        consume["small_records"]["faust_streams_per_s"] = events
        consume["small_records"]["faust_streams_vs_aiokafka"] = (
            events / consume["small_records"]["aiokafka_per_s"]
        )
        result["consume"] = consume

        # (b) baselines --------------------------------------------------------------------
        bank = CassandraBank(cassandra).start()
        ns = prefix
        try:
            bank.create_namespace(NamespaceSpec(ns, default_kinds(EMBED, CLASSES, K)))
            rng = np.random.default_rng(0)
            ids = [f"e{i:07d}" for i in range(examples)]
            feats = _features(examples, intrinsic_dim)
            labels = np.where(rng.random(examples) < 0.1, rng.integers(0, CLASSES, examples), -1)
            say(f"registering {examples:,} examples")
            for s in range(0, examples, 10_000):
                bank.register_examples(
                    ns, ids[s : s + 10_000], feats[s : s + 10_000], labels[s : s + 10_000].tolist()
                )
                if s and s % 200_000 == 0:
                    say(f"  {s:,} registered")
            manifest = save_artifact(_model(), tmp / "ckpt", ns, 1)
            loaded = load_model(manifest, tmp / "ckpt")
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
                    if kind == "neighbours":  # rows of the same size as the maker's
                        chunk = ids[sl]
                        near = [
                            [ids[(s + i + j) % examples] for j in range(1, K + 1)]
                            for i in range(len(chunk))
                        ]
                        batch = neighbours_batch(chunk, near, np.ones((len(chunk), K), np.float32))
                    else:
                        batch = knowledge_batch(kind, ids[sl], emb[sl], probs[sl], labels[sl])
                    bank.write(ns, kind, batch, Lineage(1, "bench"))
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
                "CARLS_CHECKPOINT_ROOT": str(tmp / "ckpt"),  # the bench's checkpoints
                "CARLS_LOG_LEVEL": "INFO",  # the neighbour index's build in the log
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
                deadline = time.monotonic() + max(900, examples / 500)
                while progress.least() < examples and time.monotonic() < deadline:
                    if worker.poll() is not None:
                        raise RuntimeError(
                            "worker died:\n" + (tmp / "worker.log").read_text()[-3000:]
                        )
                    time.sleep(0.2)
                progress.stop.set()
                time.sleep(1.5)  # one more stats write
                st = json.loads(stats.read_text()) if stats.exists() else {}
            finally:
                worker.terminate()
                worker.wait(timeout=60)
            result["index_log"] = _index_events((tmp / "worker.log").read_text(), t0)
            for event in result["index_log"]:
                say(f"  {event}")
            marks: dict[str, dict[str, float]] = {}
            for kind in MAKERS:
                marks[kind] = {}
                for pct in (50, 99, 100):
                    need = examples * pct / 100
                    hit = next((t for t, d in progress.times[kind] if d >= need), float("nan"))
                    marks[kind][f"p{pct}_s"] = hit - t0
            t100 = max(m["p100_s"] for m in marks.values()) + t0
            e2e = examples / (t100 - t0)
            bound = min(infer_per_s, write_per_s)
            result["maker"] = {
                "examples_per_s": e2e,
                "vs_min_raw": e2e / bound,
                "stages_s": {
                    k: st.get(k)
                    for k in ("consume_s", "fetch_s", "infer_s", "write_s", "pool_s", "search_s")
                },
            }
            lower = examples / bound
            p99 = max(m["p99_s"] for m in marks.values())
            result["freshness"] = {
                "kinds": marks,
                "p99_s": p99,
                "lower_bound_s": lower,
                "p99_vs_lower_bound": p99 / lower,
            }
            say(f"recall@{K} of the neighbours on {RECALL_SAMPLE:,} ids against exact search")
            new_model = load_model(new, tmp / "ckpt")
            pool = new_model.infer(feats)[0]
            result["recall"] = _recall(bank, ns, ids, pool, RECALL_SAMPLE)
        finally:
            bank.drop_namespace(ns)
            bank.close()
    result["targets"] = {
        "faust_vs_aiokafka >= 0.8": all(
            c["faust_vs_aiokafka"] >= 0.8 for c in result["consume"].values()
        ),
        "maker_vs_min_raw >= 0.3": result["maker"]["vs_min_raw"] >= 0.3,
        "p99_freshness <= 2x lower bound": result["freshness"]["p99_vs_lower_bound"] <= 2.0,
        "p99_freshness <= 10 min": result["freshness"]["p99_s"] <= 600,
        "recall@10 >= 0.95": result["recall"]["recall"] >= 0.95,
    }
    return result


def _wait_group(
    conn: KafkaConnection, group: str, proc: subprocess.Popen[bytes], tmp: Path
) -> None:
    def alive() -> None:
        if proc.poll() is not None:
            raise RuntimeError("worker died:\n" + (tmp / "worker.log").read_text()[-3000:])

    wait_stable(conn, {group: 1, f"{group}-ids": 1}, timeout=120, check=alive)
