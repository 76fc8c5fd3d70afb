"""``carls bench bank``: the bank measured side by side with in-process baselines.

Everything runs in one process, one after another, so the ratios compare like with like on
the same (noisy) machine. Nothing here asserts: the figures and the targets are reported.
"""

from __future__ import annotations

import contextlib
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from carls.bank.errors import NamespaceError
from carls.bank.protocol import KnowledgeBank
from carls.bank.transfer import export_namespace, import_namespace
from carls.bank.types import KnowledgeBatch, Lineage, NamespaceSpec, default_kinds

Say = Callable[[str], None]
TARGETS = {
    "lookup_median_ms": 15.0,
    "write_rows_per_s": 30_000.0,
    "export_s": 30.0,
    "import_s": 30.0,
}


def _pct(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples), q))


def loopback_bytes_per_s(total: int = 256 << 20, chunk: int = 1 << 20) -> float:
    """Bytes/s one TCP stream moves over 127.0.0.1 (a Python sender and receiver)."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    received = 0

    def sink() -> None:
        nonlocal received
        conn, _ = server.accept()
        with conn:
            while received < total:
                data = conn.recv(chunk)
                if not data:
                    break
                received += len(data)

    thread = threading.Thread(target=sink)
    thread.start()
    payload = b"\0" * chunk
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as client:
        for _ in range(total // chunk):
            client.sendall(payload)
    thread.join()
    elapsed = time.perf_counter() - start
    server.close()
    return received / elapsed


def run(
    bank: KnowledgeBank,
    *,
    rows: int = 100_000,
    dim: int = 128,
    batch: int = 1024,
    lookups: int = 100,
    buckets: int = 8,
    say: Say = lambda _: None,
) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    name = f"bench_{uuid.uuid4().hex[:10]}"
    copy = name + "_import"
    ids = [f"example-{i:07d}" for i in range(rows)]
    vectors = rng.standard_normal((rows, dim)).astype(np.float32)
    result: dict[str, Any] = {
        "rows": rows,
        "dim": dim,
        "batch": batch,
        "lookups": lookups,
        "buckets": buckets,
    }
    bank.create_namespace(NamespaceSpec(name, default_kinds(dim), buckets=buckets))
    try:
        say(f"writing {rows:,} x {dim}-d embeddings")
        chunk = 10_000
        start = time.perf_counter()
        for s in range(0, rows, chunk):
            bank.write(
                name,
                "embedding",
                KnowledgeBatch(ids[s : s + chunk], vectors[s : s + chunk]),
                Lineage(1, "bench"),
            )
        result["write_rows_per_s"] = rows / (time.perf_counter() - start)
        say(f"  {result['write_rows_per_s']:,.0f} rows/s")

        say(f"looking up {lookups} x {batch} random ids")
        queries = [rng.choice(rows, batch, replace=False) for _ in range(lookups + 5)]
        for q in queries[:5]:  # warm up connections and caches
            bank.read(name, "embedding", [ids[i] for i in q])
        lat = []
        for q in queries[5:]:
            qids = [ids[i] for i in q]
            t = time.perf_counter()
            got = bank.read(name, "embedding", qids)
            lat.append((time.perf_counter() - t) * 1000)
            if got.missing.any() or not np.array_equal(got.values, vectors[q]):
                raise RuntimeError("bench lookup returned wrong or missing rows")
        table = dict(zip(ids, vectors, strict=True))
        np_lat, dict_lat = [], []
        for q in queries[5:]:
            qids = [ids[i] for i in q]
            t = time.perf_counter()
            vectors[q]
            np_lat.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            np.stack([table[i] for i in qids])
            dict_lat.append((time.perf_counter() - t) * 1000)
        med = _pct(lat, 50)
        result |= {
            "lookup_median_ms": med,
            "lookup_p99_ms": _pct(lat, 99),
            "lookup_rows_per_s": batch / (med / 1000),
            "numpy_gather_median_ms": _pct(np_lat, 50),
            "dict_median_ms": _pct(dict_lat, 50),
        }
        result["lookup_vs_numpy"] = med / result["numpy_gather_median_ms"]
        result["lookup_vs_dict"] = med / result["dict_median_ms"]
        payload = batch * dim * 4
        result["lookup_bytes_per_s"] = payload / (med / 1000)
        say("measuring loopback bandwidth")
        result["loopback_bytes_per_s"] = loopback_bytes_per_s()
        result["lookup_vs_loopback"] = result["lookup_bytes_per_s"] / result["loopback_bytes_per_s"]

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "bench.carls"
            say("exporting")
            t = time.perf_counter()
            export_namespace(bank, name, path)
            result["export_s"] = time.perf_counter() - t
            result["export_bytes"] = path.stat().st_size
            say("importing")
            t = time.perf_counter()
            import_namespace(bank, path, copy)
            result["import_s"] = time.perf_counter() - t
    finally:
        for ns in (name, copy):
            with contextlib.suppress(NamespaceError):  # the import may not have happened
                bank.drop_namespace(ns)
    result["targets"] = {
        k: {
            "target": v,
            "value": result.get(k),
            "met": (
                result.get(k, float("inf")) <= v
                if not k.endswith("per_s")
                else result.get(k, 0.0) >= v
            ),
        }
        for k, v in TARGETS.items()
    }
    return result
