"""The knowledge bank on Cassandra.

Layout (see ``schemas.cql``): knowledge rows live in partitions
``((ns, kind, bucket), id)``, so a batch lookup is one ``IN`` query per bucket touched,
all in flight at once, and a namespace is enumerated bucket by bucket. Vectors are raw
little-endian float32 blobs decoded with one ``numpy.frombuffer`` per batch.

Step order is Cassandra's own: every knowledge cell is written ``USING TIMESTAMP step`` and
quarantine writes a row tombstone at the row's step, so the newest step wins in any
interleaving of writers, replays are idempotent, and a quarantined step stays removed.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np
from cassandra import DriverException, RequestExecutionException
from cassandra.cluster import NoHostAvailable, ResponseFuture, Session
from cassandra.query import UNSET_VALUE, BatchStatement, BatchType, PreparedStatement

from carls.bank.errors import (
    BankUnavailableError,
    DimensionError,
    NamespaceError,
    ValueRejectedError,
)
from carls.bank.session import CassandraConfig, connect
from carls.bank.types import (
    F32,
    NO_LABEL,
    Examples,
    KnowledgeBatch,
    KnowledgeRead,
    Lineage,
    NamespaceSpec,
    bucket_of,
    check_batch,
    check_ids,
    check_matrix,
    stale_mask,
    validate_name,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
SEP = "\x1f"
_CACHE_S = 5.0
_IN_FLIGHT = 64
_BATCH_ROWS = 64
# Responses much over ~100 KB take ~40 ms longer on loopback (measured: 128 ids x 128-d per
# query ~2 ms, 256 ids ~50 ms), so one query asks for at most this many ids.
_IDS_PER_QUERY = 128


@dataclass(frozen=True, slots=True)
class _Ns:
    spec: NamespaceSpec
    uid: uuid.UUID
    feature_dim: int | None
    seen_at: float


def _backend(what: str, fn: Callable[[], T]) -> T:
    """Run a driver call; any backend failure becomes a retriable BankUnavailableError."""
    try:
        return fn()
    except (NoHostAvailable, RequestExecutionException, DriverException, OSError) as exc:
        raise BankUnavailableError(f"cassandra {what} failed: {type(exc).__name__}: {exc}") from exc


class CassandraBank:
    """A ``KnowledgeBank`` on a Cassandra keyspace created by ``bank.session.apply_schema``."""

    def __init__(self, config: CassandraConfig) -> None:
        self.config = config
        self._cluster, self._session = connect(config)
        self._session.default_fetch_size = 5000
        self._ns: dict[str, _Ns] = {}
        self._prepare(self._session)

    def _prepare(self, s: Session) -> None:
        p: Callable[[str], PreparedStatement] = s.prepare
        cols = "id, value, step, klass, confidence, extra"
        lin = ", maker, fingerprint, written_at"
        self._q_ns = p(
            "SELECT name, uid, buckets, kinds, ttl, feature_dim, created_at "
            "FROM namespaces WHERE name = ?"
        )
        self._q_all_ns = p(
            "SELECT name, uid, buckets, kinds, ttl, feature_dim, created_at FROM namespaces"
        )
        self._q_create = p(
            "INSERT INTO namespaces (name, uid, buckets, kinds, ttl, created_at,"
            " settings) VALUES (?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS"
        )
        self._q_set_dim = p(
            "UPDATE namespaces SET feature_dim = ? WHERE name = ? IF feature_dim = null"
        )
        self._q_drop = p("DELETE FROM namespaces WHERE name = ?")
        self._q_drop_k = p("DELETE FROM knowledge WHERE ns = ? AND kind = ? AND bucket = ?")
        self._q_drop_e = p("DELETE FROM examples WHERE ns = ? AND bucket = ?")
        self._q_ins_ex = p(
            "INSERT INTO examples (ns, bucket, id, features, label, modality) "
            "VALUES (?, ?, ?, ?, ?, ?)"
        )
        self._q_get_ex = p(
            "SELECT id, features, label, modality FROM examples "
            "WHERE ns = ? AND bucket = ? AND id IN ?"
        )
        self._q_ids = p("SELECT id FROM examples WHERE ns = ? AND bucket = ?")
        self._q_ins = p(
            "INSERT INTO knowledge (ns, kind, bucket, id, value, step, klass, "
            "confidence, extra, maker, fingerprint, written_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ? AND TTL ?"
        )
        self._q_read = p(
            f"SELECT {cols} FROM knowledge WHERE ns = ? AND kind = ? AND bucket = ? AND id IN ?"
        )
        self._q_read_lin = p(
            f"SELECT {cols}{lin} FROM knowledge "
            "WHERE ns = ? AND kind = ? AND bucket = ? AND id IN ?"
        )
        self._q_scan = p(
            f"SELECT {cols}{lin} FROM knowledge WHERE ns = ? AND kind = ? AND bucket = ?"
        )
        self._q_del = p(
            "DELETE FROM knowledge USING TIMESTAMP ? "
            "WHERE ns = ? AND kind = ? AND bucket = ? AND id = ?"
        )

    def close(self) -> None:
        self._cluster.shutdown()

    def __enter__(self) -> CassandraBank:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Namespaces -------------------------------------------------------------------------

    def create_namespace(self, spec: NamespaceSpec) -> NamespaceSpec:
        created = replace(spec, created_at=time.time())
        uid = uuid.uuid4()
        row = _backend(
            "create namespace",
            lambda: self._session.execute(
                self._q_create,
                (
                    spec.name,
                    uid,
                    spec.buckets,
                    dict(spec.kinds),
                    dict(spec.ttl_s),
                    datetime.fromtimestamp(created.created_at, UTC),
                    "{}",
                ),
            ).one(),
        )
        if not row[0]:
            raise NamespaceError(f"namespace {spec.name} already exists")
        self._ns.pop(spec.name, None)
        return created

    def _lookup(self, name: str, fresh: bool = False) -> _Ns:
        validate_name(name, "namespace")
        hit = self._ns.get(name)
        if hit is not None and not fresh and time.monotonic() - hit.seen_at < _CACHE_S:
            return hit
        row = _backend("namespace lookup", lambda: self._session.execute(self._q_ns, (name,)).one())
        if row is None:
            self._ns.pop(name, None)
            raise NamespaceError(
                f"namespace {name} does not exist (create it first: "
                f"carls bank create {name} --dim D)"
            )
        ns = _row_to_ns(row)
        self._ns[name] = ns
        return ns

    def namespace(self, name: str) -> NamespaceSpec:
        return self._lookup(name, fresh=True).spec

    def namespaces(self) -> list[NamespaceSpec]:
        rows = _backend("namespace list", lambda: list(self._session.execute(self._q_all_ns)))
        return sorted((_row_to_ns(r).spec for r in rows), key=lambda s: s.name)

    def drop_namespace(self, name: str) -> None:
        ns = self._lookup(name, fresh=True)
        _backend("drop namespace", lambda: self._session.execute(self._q_drop, (name,)))
        self._ns.pop(name, None)
        futures = [
            self._session.execute_async(self._q_drop_e, (ns.uid, b)) for b in range(ns.spec.buckets)
        ]
        futures += [
            self._session.execute_async(self._q_drop_k, (ns.uid, k, b))
            for k in ns.spec.kinds
            for b in range(ns.spec.buckets)
        ]
        _wait_all("drop namespace data", futures)

    # Examples ---------------------------------------------------------------------------

    def register_examples(
        self,
        namespace: str,
        ids: Sequence[str],
        features: F32,
        labels: Sequence[int] | None = None,
        modality: str | None = None,
    ) -> int:
        ns = self._lookup(namespace)
        id_list = check_ids(ids)
        if len(set(id_list)) != len(id_list):
            raise ValueRejectedError("ids: the batch names an id twice")
        feats = np.asarray(features)
        if feats.ndim != 2 or feats.shape[0] != len(id_list):
            raise DimensionError(f"features: expected shape ({len(id_list)}, d), got {feats.shape}")
        dim = ns.feature_dim or self._lookup(namespace, fresh=True).feature_dim
        feats = check_matrix(feats, len(id_list), dim or feats.shape[1], "features")
        labs = _labels(labels, len(id_list))
        if modality is not None:
            validate_name(modality, "modality")
        if dim is None:
            row = _backend(
                "set feature dim",
                lambda: self._session.execute(self._q_set_dim, (feats.shape[1], namespace)).one(),
            )
            if not row[0] and row[1] != feats.shape[1]:  # someone else fixed another dim
                raise DimensionError(
                    f"features: dimension {feats.shape[1]} does not match the namespace's {row[1]}"
                )
            self._ns.pop(namespace, None)
        rows = [
            (ns.uid, bucket_of(i, ns.spec.buckets), i, feats[k].tobytes(), int(labs[k]), modality)
            for k, i in enumerate(id_list)
        ]
        self._run_batched(self._q_ins_ex, rows, key=lambda r: r[1], what="register examples")
        return len(rows)

    def fetch_examples(self, namespace: str, ids: Sequence[str]) -> Examples:
        ns = self._lookup(namespace)
        id_list = check_ids(ids)
        dim = ns.feature_dim or self._lookup(namespace, fresh=True).feature_dim or 0
        found: dict[str, tuple[Any, ...]] = {}
        for rows in self._by_bucket(self._q_get_ex, ns, None, id_list, "fetch examples"):
            for r in rows:
                found[r[0]] = r
        n = len(id_list)
        feats = np.zeros((n, dim), np.float32)
        labels = np.full(n, NO_LABEL, np.int32)
        missing = np.ones(n, bool)
        mods: list[str] = [""] * n
        for k, i in enumerate(id_list):
            hit = found.get(i)
            if hit is None:
                continue
            r = hit
            missing[k] = False
            feats[k] = np.frombuffer(r[1], "<f4")
            labels[k] = NO_LABEL if r[2] is None else r[2]
            mods[k] = r[3] or ""
        return Examples(id_list, feats, labels, missing, mods)

    def example_ids(self, namespace: str, bucket: int) -> list[str]:
        ns = self._lookup(namespace)
        _check_bucket(ns.spec, bucket)
        rows = _backend(
            "enumerate ids", lambda: list(self._session.execute(self._q_ids, (ns.uid, bucket)))
        )
        return [r[0] for r in rows]

    # Knowledge --------------------------------------------------------------------------

    def write(self, namespace: str, kind: str, batch: KnowledgeBatch, lineage: Lineage) -> int:
        ns = self._lookup(namespace)
        b = check_batch(ns.spec, kind, batch)
        ttl = int(ns.spec.ttl_s.get(kind, 0))
        now = datetime.now(UTC)
        values = b.values
        rows = []
        for k, i in enumerate(b.ids):
            # Absent columns are left unset: a bound None would write a tombstone per cell.
            klass = int(b.classes[k]) if b.classes is not None else UNSET_VALUE
            conf = float(b.confidence[k]) if b.confidence is not None else UNSET_VALUE
            extra = (
                SEP.join(b.neighbour_ids[k]).encode()
                if b.neighbour_ids is not None
                else UNSET_VALUE
            )
            at = (
                datetime.fromtimestamp(float(b.written_at[k]), UTC)
                if b.written_at is not None
                else now
            )
            rows.append(
                (
                    ns.uid,
                    kind,
                    bucket_of(i, ns.spec.buckets),
                    i,
                    values[k].tobytes(),
                    lineage.step,
                    klass,
                    conf,
                    extra,
                    lineage.maker,
                    lineage.fingerprint,
                    at,
                    lineage.step,
                    ttl,
                )
            )
        self._run_batched(self._q_ins, rows, key=lambda r: r[2], what="write knowledge")
        return len(rows)

    def read(
        self,
        namespace: str,
        kind: str,
        ids: Sequence[str],
        *,
        current_step: int | None = None,
        max_staleness: int | None = None,
        lineage: bool = False,
    ) -> KnowledgeRead:
        ns = self._lookup(namespace)
        dim = ns.spec.dim(kind)
        id_list = check_ids(ids)
        query = self._q_read_lin if lineage else self._q_read
        found: dict[str, tuple[Any, ...]] = {}
        for rows in self._by_bucket(query, ns, kind, id_list, "read knowledge"):
            for r in rows:
                found[r[0]] = r
        return _assemble(
            kind,
            dim,
            id_list,
            [found.get(i) for i in id_list],
            lineage,
            current_step,
            max_staleness,
        )

    def scan(self, namespace: str, kind: str, bucket: int) -> KnowledgeRead:
        ns = self._lookup(namespace)
        dim = ns.spec.dim(kind)
        _check_bucket(ns.spec, bucket)
        rows = _backend(
            "scan knowledge",
            lambda: list(self._session.execute(self._q_scan, (ns.uid, kind, bucket))),
        )
        return _assemble(kind, dim, [r[0] for r in rows], rows, True, None, None)

    def quarantine(
        self, namespace: str, from_step: int, to_step: int, kinds: Sequence[str] | None = None
    ) -> int:
        ns = self._lookup(namespace)
        if from_step > to_step or from_step < 0:
            raise ValueRejectedError(f"step range {from_step}..{to_step} is empty or negative")
        chosen = list(kinds) if kinds is not None else list(ns.spec.kinds)
        for k in chosen:
            ns.spec.dim(k)
        doomed = []
        for kind in chosen:
            for bucket in range(ns.spec.buckets):
                part = self.scan(namespace, kind, bucket)
                doomed += [
                    (int(s), ns.uid, kind, bucket, i)
                    for i, s in zip(part.ids, part.steps, strict=True)
                    if from_step <= s <= to_step
                ]
        self._run_batched(self._q_del, doomed, key=lambda r: (r[2], r[3]), what="quarantine")
        return len(doomed)

    # Plumbing ---------------------------------------------------------------------------

    def _by_bucket(
        self, query: PreparedStatement, ns: _Ns, kind: str | None, ids: list[str], what: str
    ) -> list[list[tuple[Any, ...]]]:
        groups: dict[int, list[str]] = defaultdict(list)
        for i in dict.fromkeys(ids):
            groups[bucket_of(i, ns.spec.buckets)].append(i)
        futures = [
            self._session.execute_async(
                query, (ns.uid, b, part) if kind is None else (ns.uid, kind, b, part)
            )
            for b, g in groups.items()
            for part in (g[s : s + _IDS_PER_QUERY] for s in range(0, len(g), _IDS_PER_QUERY))
        ]
        return _wait_all(what, futures)

    def _run_batched(
        self,
        stmt: PreparedStatement,
        rows: list[tuple[Any, ...]],
        key: Callable[[tuple[Any, ...]], object],
        what: str,
    ) -> None:
        """Unlogged batches of rows sharing a partition, many in flight at once."""
        groups: dict[object, list[tuple[Any, ...]]] = defaultdict(list)
        for r in rows:
            groups[key(r)].append(r)
        batches = []
        for group in groups.values():
            for start in range(0, len(group), _BATCH_ROWS):
                batch = BatchStatement(batch_type=BatchType.UNLOGGED)
                for r in group[start : start + _BATCH_ROWS]:
                    batch.add(stmt, r)
                batches.append(batch)
        in_flight: list[ResponseFuture] = []
        for batch in batches:
            in_flight.append(self._session.execute_async(batch))
            if len(in_flight) >= _IN_FLIGHT:
                _wait_all(what, in_flight[: _IN_FLIGHT // 2])
                in_flight = in_flight[_IN_FLIGHT // 2 :]
        _wait_all(what, in_flight)


def _wait_all(what: str, futures: list[ResponseFuture]) -> list[list[tuple[Any, ...]]]:
    out = []
    for f in futures:
        result = _backend(what, f.result)
        rows = list(result.current_rows)
        while result.has_more_pages:
            result.fetch_next_page()
            rows += result.current_rows
        out.append(rows)
    return out


def _row_to_ns(r: tuple[Any, ...]) -> _Ns:
    name, uid, buckets, kinds, ttl, feature_dim, created = r
    spec = NamespaceSpec(
        name=name,
        kinds=dict(kinds or {}),
        buckets=buckets,
        ttl_s=dict(ttl or {}),
        created_at=created.replace(tzinfo=UTC).timestamp() if created else 0.0,
    )
    return _Ns(spec, uid, feature_dim, time.monotonic())


def _check_bucket(spec: NamespaceSpec, bucket: int) -> None:
    if not 0 <= bucket < spec.buckets:
        raise ValueRejectedError(f"bucket: {bucket} is outside 0..{spec.buckets - 1}")


def _labels(labels: Sequence[int] | None, n: int) -> np.ndarray[Any, np.dtype[np.int32]]:
    if labels is None:
        return np.full(n, NO_LABEL, np.int32)
    arr = np.asarray(labels)
    if arr.shape != (n,) or not np.issubdtype(arr.dtype, np.integer):
        raise ValueRejectedError(f"labels: expected {n} ints (-1 = unlabeled)")
    if (arr < NO_LABEL).any():
        raise ValueRejectedError("labels: must be >= -1 (-1 = unlabeled)")
    return arr.astype(np.int32)


def _assemble(
    kind: str,
    dim: int,
    ids: list[str],
    rows: Sequence[tuple[Any, ...] | None],
    lineage: bool,
    current_step: int | None,
    max_staleness: int | None,
) -> KnowledgeRead:
    n = len(ids)
    values = np.zeros((n, dim), np.float32)
    steps = np.full(n, -1, np.int64)
    missing = np.ones(n, bool)
    present = [k for k, r in enumerate(rows) if r is not None]
    if present:
        idx = np.asarray(present)
        missing[idx] = False
        steps[idx] = [rows[k][2] for k in present]  # type: ignore[index]
        blobs = [rows[k][1] for k in present]  # type: ignore[index]
        if kind == "neighbours":
            for k, blob in zip(present, blobs, strict=True):
                v = np.frombuffer(blob, "<f4")
                values[k, : v.shape[0]] = v
        else:
            values[idx] = np.frombuffer(b"".join(blobs), "<f4").reshape(len(present), dim)
    read = KnowledgeRead(
        kind, ids, values, steps, missing, stale_mask(steps, missing, current_step, max_staleness)
    )
    if kind == "pseudo_label":
        read.classes = np.array([r[3] if r is not None else -1 for r in rows], np.int32)
        read.confidence = np.array([r[4] if r is not None else 0.0 for r in rows], np.float32)
    if kind == "neighbours":
        read.neighbour_ids = [
            (r[5].decode().split(SEP) if r[5] else []) if r is not None else [] for r in rows
        ]
    if lineage:
        read.makers = [r[6] if r is not None else "" for r in rows]
        read.fingerprints = [r[7] or "" if r is not None else "" for r in rows]
        read.written_at = np.array(
            [r[8].replace(tzinfo=UTC).timestamp() if r is not None and r[8] else 0.0 for r in rows],
            np.float64,
        )
    return read


def settings_json(spec: NamespaceSpec) -> str:
    return json.dumps({"kinds": dict(spec.kinds), "buckets": spec.buckets})
