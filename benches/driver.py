"""The cassandra-driver's own best on the bank's ``knowledge`` table: the ceiling that
``carls bench bank`` holds the bank's batch lookup and bulk write against.

Each way below is what a careful user of the driver would write by hand for the same
work, with prepared statements and no carls code in the path: the same rows, the same
columns, the same timestamps. A lookup returns what the bank's read returns (the vectors,
in the order asked, as one float32 matrix), so both do the same work.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
from cassandra.cluster import ResponseFuture, Session
from cassandra.concurrent import execute_concurrent_with_args
from cassandra.query import BatchStatement, BatchType

from carls.bank.types import F32, bucket_of

Lookup = Callable[[list[str]], F32]
Write = Callable[[uuid.UUID, list[str], F32], None]
CONCURRENCY = 128
"""Requests in flight for ``execute_concurrent``: past ~100 the driver gains nothing more
on one host (its own default is 100)."""


def namespace_uid(session: Session, name: str) -> uuid.UUID:
    row = session.execute("SELECT uid FROM namespaces WHERE name = %s", (name,)).one()
    if row is None:
        raise RuntimeError(f"namespace {name} is not in the bank")
    return uuid.UUID(str(row[0]))


def lookups(
    session: Session, uid: uuid.UUID, kind: str, buckets: int, dim: int
) -> dict[str, Lookup]:
    """Ways to fetch the vectors of a batch of ids with the driver alone."""
    one = session.prepare(
        "SELECT value FROM knowledge WHERE ns = ? AND kind = ? AND bucket = ? AND id = ?"
    )
    many = session.prepare(
        "SELECT id, value FROM knowledge WHERE ns = ? AND kind = ? AND bucket = ? AND id IN ?"
    )

    def per_id(ids: list[str]) -> F32:
        """One prepared single-row query per id, ``execute_concurrent``."""
        params = [(uid, kind, bucket_of(i, buckets), i) for i in ids]
        results = execute_concurrent_with_args(
            session, one, params, concurrency=CONCURRENCY, raise_on_first_error=True
        )
        blobs = [r.result_or_exc.one()[0] for r in results]
        return np.frombuffer(b"".join(blobs), "<f4").reshape(len(ids), dim)

    def in_per_bucket(chunk: int | None) -> Lookup:
        def run(ids: list[str]) -> F32:
            """``IN`` queries per bucket (at most ``chunk`` ids each), all in flight."""
            groups: dict[int, list[str]] = defaultdict(list)
            for i in ids:
                groups[bucket_of(i, buckets)].append(i)
            size = chunk or len(ids)
            futures: list[ResponseFuture] = [
                session.execute_async(many, (uid, kind, b, g[s : s + size]))
                for b, g in groups.items()
                for s in range(0, len(g), size)
            ]
            found = {r[0]: r[1] for f in futures for r in f.result()}
            return np.frombuffer(b"".join(found[i] for i in ids), "<f4").reshape(len(ids), dim)

        return run

    return {
        "execute_concurrent per id": per_id,
        "IN per bucket": in_per_bucket(None),
        "IN per bucket, 128 ids a query": in_per_bucket(128),
        "IN per bucket, 64 ids a query": in_per_bucket(64),
    }


def writes(session: Session, kind: str, buckets: int, step: int) -> dict[str, Write]:
    """Ways to write a batch of vectors (the bank's columns, ``USING TIMESTAMP step``)."""
    insert = session.prepare(
        "INSERT INTO knowledge (ns, kind, bucket, id, value, step, maker, fingerprint,"
        " written_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
    )

    def rows(uid: uuid.UUID, ids: list[str], values: F32) -> list[tuple[object, ...]]:
        now = datetime.now(UTC)
        return [
            (uid, kind, bucket_of(i, buckets), i, values[k].tobytes(), step, "bench", "", now, step)
            for k, i in enumerate(ids)
        ]

    def per_row(uid: uuid.UUID, ids: list[str], values: F32) -> None:
        """One prepared insert per row, ``execute_concurrent``."""
        execute_concurrent_with_args(
            session,
            insert,
            rows(uid, ids, values),
            concurrency=CONCURRENCY,
            raise_on_first_error=True,
        )

    def batched(size: int, in_flight: int) -> Write:
        def run(uid: uuid.UUID, ids: list[str], values: F32) -> None:
            """Unlogged batches of ``size`` rows of one partition, ``in_flight`` at once."""
            groups: dict[int, list[tuple[object, ...]]] = defaultdict(list)
            for r in rows(uid, ids, values):
                groups[r[2]].append(r)  # type: ignore[index]
            pending: list[ResponseFuture] = []
            for group in groups.values():
                for s in range(0, len(group), size):
                    batch = BatchStatement(batch_type=BatchType.UNLOGGED)
                    for r in group[s : s + size]:
                        batch.add(insert, r)
                    pending.append(session.execute_async(batch))
                    if len(pending) >= in_flight:
                        for f in pending:
                            f.result()
                        pending = []
            for f in pending:
                f.result()

        return run

    return {
        "execute_concurrent per row": per_row,
        "unlogged batches of 32": batched(32, 64),
        "unlogged batches of 64": batched(64, 64),
        "unlogged batches of 128": batched(128, 32),
    }


def drop(session: Session, uid: uuid.UUID, kind: str, buckets: int) -> None:
    """Remove what a write baseline wrote (its namespace uid is registered nowhere)."""
    stmt = session.prepare("DELETE FROM knowledge WHERE ns = ? AND kind = ? AND bucket = ?")
    for f in [session.execute_async(stmt, (uid, kind, b)) for b in range(buckets)]:
        f.result()
