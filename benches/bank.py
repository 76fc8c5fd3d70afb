"""``carls bench bank``: the bank measured side by side with the ceiling of its own tools.

The bank's bulk write and batch lookup run interleaved with the cassandra-driver's own
best ways to do the same work on the same table and rows (``benches.driver``), chunk by
chunk and query by query, so the ratios compare like with like on the same (noisy)
machine; in-process numpy and dict lookups and the loopback bandwidth give the floor.
Nothing here asserts: the figures and the targets are reported.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from cassandra.cluster import Session

from carls.bank.errors import NamespaceError
from carls.bank.protocol import KnowledgeBank
from carls.bank.transfer import export_namespace, import_namespace
from carls.bank.types import KnowledgeBatch, Lineage, NamespaceSpec, default_kinds
from carls.benches import driver

Say = Callable[[str], None]
TARGETS: dict[str, tuple[str, float]] = {
    "lookup_vs_driver_best": ("<=", 1.2),
    "write_vs_driver_best": (">=", 0.9),
    "lookup_median_ms": ("<=", 15.0),
    "write_rows_per_s": (">=", 30_000.0),
    "export_s": ("<=", 30.0),
    "import_s": ("<=", 30.0),
}
"""The ratios to the driver are the targets that travel between machines; the absolute
figures move about 2x between the machines measured (see the README)."""


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
    session: Session,
    *,
    rows: int = 100_000,
    dim: int = 128,
    batch: int = 1024,
    lookups: int = 100,
    buckets: int = 8,
    say: Say = lambda _: None,
) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    turn_order = np.random.default_rng(1)
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
    # What the bench holds for the whole run never moves again: out of the collector's scans
    # (as ``carls worker`` does once it is set up), so a collection costs the same to all.
    gc.collect()
    gc.freeze()
    bank.create_namespace(NamespaceSpec(name, default_kinds(dim), buckets=buckets))
    try:
        say(f"writing {rows:,} x {dim}-d embeddings, the bank and the driver's ways in turn")
        chunk = 10_000
        ways = driver.writes(session, "embedding", buckets, step=1)
        uids = {w: uuid.uuid4() for w in ways}
        spent = dict.fromkeys(["bank", *ways], 0.0)
        try:
            lineage = Lineage(1, "bench")
            for s in range(0, rows, chunk):
                part_ids, part = ids[s : s + chunk], vectors[s : s + chunk]
                ours = functools.partial(
                    bank.write, name, "embedding", KnowledgeBatch(part_ids, part), lineage
                )
                turns: list[tuple[str, Callable[[], object]]] = [("bank", ours)] + [
                    (w, functools.partial(f, uids[w], part_ids, part)) for w, f in ways.items()
                ]
                # A fresh order every chunk: no way always first, or always right after
                # the same other way (the server may still be busy with that one's writes).
                for k in turn_order.permutation(len(turns)):
                    way, write = turns[k]
                    gc.collect()  # no way pays for the garbage of the one before
                    start = time.perf_counter()
                    write()
                    spent[way] += time.perf_counter() - start
        finally:
            for uid in uids.values():
                driver.drop(session, uid, "embedding", buckets)
        result["write_rows_per_s"] = rows / spent["bank"]
        driver_writes = {w: rows / spent[w] for w in ways}
        best_write = max(driver_writes, key=driver_writes.__getitem__)
        result["driver_write_rows_per_s"] = driver_writes
        result["write_vs_driver_best"] = result["write_rows_per_s"] / driver_writes[best_write]
        result["driver_best_write"] = best_write
        say(
            f"  {result['write_rows_per_s']:,.0f} rows/s; the driver's best ({best_write}) "
            f"{driver_writes[best_write]:,.0f} rows/s"
        )

        say(f"looking up {lookups} x {batch} random ids, the bank and the driver's ways in turn")
        reads = driver.lookups(
            session, driver.namespace_uid(session, name), "embedding", buckets, dim
        )
        queries = [rng.choice(rows, batch, replace=False) for _ in range(lookups + 5)]
        for q in queries[:5]:  # warm up connections and caches
            bank.read(name, "embedding", [ids[i] for i in q])
            for read in reads.values():
                read([ids[i] for i in q])
        lat: list[float] = []
        driver_lat: dict[str, list[float]] = {w: [] for w in reads}
        for q in queries[5:]:
            qids = [ids[i] for i in q]
            order = ["bank", *reads]
            for way in turn_order.permutation(order):  # a fresh order every query
                gc.collect()
                t = time.perf_counter()
                if way == "bank":
                    got = bank.read(name, "embedding", qids)
                    lat.append((time.perf_counter() - t) * 1000)
                    values = got.values if not got.missing.any() else None
                else:
                    values = reads[way](qids)
                    driver_lat[way].append((time.perf_counter() - t) * 1000)
                if values is None or not np.array_equal(values, vectors[q]):
                    raise RuntimeError(f"lookup ({way}) returned wrong or missing rows")
        result["driver_lookup_ms"] = {
            w: {"median": _pct(v, 50), "p99": _pct(v, 99)} for w, v in driver_lat.items()
        }
        best_read = min(reads, key=lambda w: result["driver_lookup_ms"][w]["median"])
        result["driver_best_lookup"] = best_read
        result["lookup_vs_driver_best"] = (
            _pct(lat, 50) / result["driver_lookup_ms"][best_read]["median"]
        )
        result["lookup_p99_vs_driver_best"] = (
            _pct(lat, 99) / result["driver_lookup_ms"][best_read]["p99"]
        )
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
        gc.unfreeze()
        for ns in (name, copy):
            with contextlib.suppress(NamespaceError):  # the import may not have happened
                bank.drop_namespace(ns)
    result["targets"] = {
        k: {
            "target": f"{op} {v:g}",
            "value": result.get(k),
            "met": result[k] <= v if op == "<=" else result[k] >= v,
        }
        for k, (op, v) in TARGETS.items()
    }
    return result
