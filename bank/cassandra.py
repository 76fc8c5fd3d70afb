"""The knowledge bank on Cassandra.

Layout (see ``schemas.cql``): knowledge rows live in partitions
``((ns, kind, bucket), id)``, so a batch lookup is one ``IN`` query per bucket touched,
all in flight at once, and a namespace is enumerated bucket by bucket. Vectors are raw
little-endian float32 blobs decoded with one ``numpy.frombuffer`` per batch. Rows are
``bank.rows.Stored``, selected by column name; every argument passes the checks of
``bank.rows`` first, the same checks the in-memory bank runs.

Step order is Cassandra's own: every knowledge cell is written ``USING TIMESTAMP step`` and
quarantine writes a row tombstone at the row's step, so the newest step wins in any
interleaving of writers, replays are idempotent, and a quarantined step stays removed.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from itertools import repeat
from typing import Any, NamedTuple

import numpy as np
from cassandra.cluster import Session
from cassandra.query import BatchStatement, BatchType, PreparedStatement

from carls.bank.errors import DimensionError, NamespaceError
from carls.bank.rows import (
    LINEAGE_COLUMNS,
    READ_COLUMNS,
    Stored,
    assemble,
    check_batch,
    check_bucket,
    check_examples,
    check_ids,
    check_lineage,
    check_part_rows,
    check_quarantine,
    check_read,
    check_spec,
    encode,
)
from carls.bank.session import Call, CassandraConfig, Connection, Store, backend, prepare
from carls.bank.types import (
    F32,
    NO_LABEL,
    Examples,
    KnowledgeBatch,
    KnowledgeRead,
    Lineage,
    NamespaceSpec,
    bucket_of,
    validate_name,
)

DROP_TIMEOUTS = 3
"""How many times a dropped namespace's partition delete is sent again after a timeout."""


class _NsRow(NamedTuple):
    name: str
    uid: uuid.UUID
    buckets: int
    kinds: dict[str, int] | None
    ttl: dict[str, int] | None
    feature_dim: int | None
    created_at: datetime | None


class _ExampleRow(NamedTuple):
    id: str
    features: bytes
    label: int | None
    modality: str | None


@dataclass(frozen=True, slots=True)
class _Ns:
    spec: NamespaceSpec
    uid: uuid.UUID
    feature_dim: int | None
    seen_at: float

    @classmethod
    def of(cls, r: _NsRow) -> _Ns:
        spec = NamespaceSpec(
            name=r.name,
            kinds=dict(r.kinds or {}),
            buckets=r.buckets,
            ttl_s=dict(r.ttl or {}),
            created_at=r.created_at.replace(tzinfo=UTC).timestamp() if r.created_at else 0.0,
        )
        return cls(spec, r.uid, r.feature_dim, time.monotonic())


class CassandraBank(Store):
    """A ``KnowledgeBank`` on a Cassandra keyspace created by ``bank.session.apply_schema``.

    Give it the process's shared ``Connection`` (or a ``CassandraConfig`` to own one);
    ``start()`` (or ``with``) connects and prepares the statements."""

    def __init__(self, connection: Connection | CassandraConfig) -> None:
        super().__init__(connection)
        self._ns: dict[str, _Ns] = {}

    def prepare(self, s: Session) -> None:
        p: Callable[[str], PreparedStatement] = partial(prepare, s)
        cols = ", ".join(READ_COLUMNS)
        lin = ", ".join(LINEAGE_COLUMNS)
        ns_cols = ", ".join(_NsRow._fields)
        self._q_ns = p(f"SELECT {ns_cols} FROM namespaces WHERE name = ?")
        self._q_all_ns = p(f"SELECT {ns_cols} FROM namespaces")
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
            f"SELECT {', '.join(_ExampleRow._fields)} FROM examples "
            "WHERE ns = ? AND bucket = ? AND id IN ?"
        )
        self._q_ids = p("SELECT id FROM examples WHERE ns = ? AND bucket = ?")
        self._q_ins: dict[tuple[str, ...], PreparedStatement] = {}
        self._q_read = p(
            f"SELECT {cols} FROM knowledge WHERE ns = ? AND kind = ? AND bucket = ? AND id IN ?"
        )
        self._q_read_lin = p(
            f"SELECT {lin} FROM knowledge WHERE ns = ? AND kind = ? AND bucket = ? AND id IN ?"
        )
        self._q_scan = p(f"SELECT {lin} FROM knowledge WHERE ns = ? AND kind = ? AND bucket = ?")
        self._q_scan.fetch_size = self.config.fetch_size
        self._q_del = p(
            "DELETE FROM knowledge USING TIMESTAMP ? "
            "WHERE ns = ? AND kind = ? AND bucket = ? AND id = ?"
        )

    # Namespaces -------------------------------------------------------------------------

    def create_namespace(self, spec: NamespaceSpec) -> NamespaceSpec:
        check_spec(spec)
        created = replace(spec, created_at=time.time())
        uid = uuid.uuid4()
        row = backend(
            "create namespace",
            lambda: self.session.execute(
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
        if (
            hit is not None
            and not fresh
            and time.monotonic() - hit.seen_at < self.config.namespace_cache_s
        ):
            return hit
        row = backend("namespace lookup", lambda: self.session.execute(self._q_ns, (name,)).one())
        if row is None:
            self._ns.pop(name, None)
            raise NamespaceError(
                f"namespace {name} does not exist (create it first: "
                f"carls bank create {name} --dim D)"
            )
        ns = _Ns.of(_NsRow(*row))
        self._ns[name] = ns
        return ns

    def namespace(self, name: str) -> NamespaceSpec:
        return self._lookup(name, fresh=True).spec

    def namespaces(self) -> list[NamespaceSpec]:
        rows = backend("namespace list", lambda: list(self.session.execute(self._q_all_ns)))
        return sorted((_Ns.of(_NsRow(*r)).spec for r in rows), key=lambda s: s.name)

    def drop_namespace(self, name: str) -> None:
        ns = self._lookup(name, fresh=True)
        backend("drop namespace", lambda: self.session.execute(self._q_drop, (name,)))
        self._ns.pop(name, None)
        # the uid is gone with the namespace row: nothing writes under it again, so a
        # partition delete that timed out (a loaded node) is safe to send again
        again = DROP_TIMEOUTS
        futures = [
            Call(self.session, self._q_drop_e, (ns.uid, b), again) for b in range(ns.spec.buckets)
        ]
        futures += [
            Call(self.session, self._q_drop_k, (ns.uid, k, b), again)
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
        dim = ns.feature_dim or self._lookup(namespace, fresh=True).feature_dim
        id_list, feats, labs, mod = check_examples(ids, features, labels, modality, dim)
        if dim is None:
            row = backend(
                "set feature dim",
                lambda: self.session.execute(self._q_set_dim, (feats.shape[1], namespace)).one(),
            )
            if not row[0] and row[1] != feats.shape[1]:  # someone else fixed another dim
                raise DimensionError(
                    f"features: dimension {feats.shape[1]} does not match the namespace's {row[1]}"
                )
            self._ns.pop(namespace, None)
        rows = [
            (
                ns.uid,
                bucket_of(i, ns.spec.buckets),
                i,
                feats[k].tobytes(),
                int(labs[k]),
                mod or None,
            )
            for k, i in enumerate(id_list)
        ]
        self._run_batched(self._q_ins_ex, rows, key=lambda r: r[1], what="register examples")
        return len(rows)

    def fetch_examples(self, namespace: str, ids: Sequence[str]) -> Examples:
        ns = self._lookup(namespace)
        id_list = check_ids(ids)
        dim = ns.feature_dim or self._lookup(namespace, fresh=True).feature_dim or 0
        found: dict[str, _ExampleRow] = {}
        for rows in self._by_bucket(self._q_get_ex, ns, None, id_list, "fetch examples"):
            for r in map(_ExampleRow._make, rows):
                found[r.id] = r
        n = len(id_list)
        feats = np.zeros((n, dim), np.float32)
        labels = np.full(n, NO_LABEL, np.int32)
        missing = np.ones(n, bool)
        mods: list[str] = [""] * n
        for k, i in enumerate(id_list):
            hit = found.get(i)
            if hit is None:
                continue
            missing[k] = False
            feats[k] = np.frombuffer(hit.features, "<f4")
            labels[k] = NO_LABEL if hit.label is None else hit.label
            mods[k] = hit.modality or ""
        return Examples(id_list, feats, labels, missing, mods)

    def example_ids(self, namespace: str, bucket: int) -> list[str]:
        ns = self._lookup(namespace)
        bucket = check_bucket(ns.spec, bucket)
        rows = backend(
            "enumerate ids", lambda: list(self.session.execute(self._q_ids, (ns.uid, bucket)))
        )
        return [r[0] for r in rows]

    # Knowledge --------------------------------------------------------------------------

    def write(self, namespace: str, kind: str, batch: KnowledgeBatch, lineage: Lineage) -> int:
        check_lineage(lineage)
        ns = self._lookup(namespace)
        b = check_batch(ns.spec, kind, batch)
        ttl = int(ns.spec.ttl_s.get(kind, 0))
        buckets, step = ns.spec.buckets, lineage.step
        # Only the columns the batch has values for: a bound None would write a tombstone.
        cols = encode(b, lineage, time.time())
        n = len(b.ids)
        rows = list(
            zip(
                repeat(ns.uid, n),
                repeat(kind, n),
                [bucket_of(i, buckets) for i in b.ids],
                *cols.values(),
                repeat(step, n),
                repeat(ttl, n),
                strict=True,
            )
        )
        stmt = self._insert(tuple(cols))
        self._run_batched(stmt, rows, key=lambda r: r[2], what="write knowledge")
        return n

    def _insert(self, cols: tuple[str, ...]) -> PreparedStatement:
        """The insert of these knowledge columns, prepared once."""
        stmt = self._q_ins.get(cols)
        if stmt is None:
            stmt = self._q_ins[cols] = backend(
                "prepare a write",
                lambda: prepare(
                    self.session,
                    f"INSERT INTO knowledge (ns, kind, bucket, {', '.join(cols)}) "
                    f"VALUES (?, ?, ?, {', '.join('?' * len(cols))}) USING TIMESTAMP ? AND TTL ?",
                ),
            )
        return stmt

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
        id_list = check_read(ns.spec, kind, ids, max_staleness)
        query = self._q_read_lin if lineage else self._q_read
        # Rows come back as plain tuples of Stored's columns, in its order.
        found = {
            r[0]: r
            for rows in self._by_bucket(query, ns, kind, id_list, "read knowledge")
            for r in rows
        }
        return assemble(
            kind,
            ns.spec.dim(kind),
            id_list,
            [found.get(i) for i in id_list],
            lineage,
            current_step,
            max_staleness,
        )

    def scan(self, namespace: str, kind: str, bucket: int) -> KnowledgeRead:
        ns = self._lookup(namespace)
        dim = ns.spec.dim(kind)
        bucket = check_bucket(ns.spec, bucket)
        rows = backend(
            "scan knowledge",
            lambda: [
                Stored(*r) for r in self.session.execute(self._q_scan, (ns.uid, kind, bucket))
            ],
        )
        return assemble(kind, dim, [r.id for r in rows], rows, True)

    def scan_parts(
        self, namespace: str, kind: str, bucket: int, rows: int
    ) -> Iterator[KnowledgeRead]:
        ns = self._lookup(namespace)
        dim = ns.spec.dim(kind)
        bucket = check_bucket(ns.spec, bucket)
        rows = check_part_rows(rows)
        result = backend(
            "scan knowledge", lambda: self.session.execute(self._q_scan, (ns.uid, kind, bucket))
        )
        part: list[Stored] = []
        while True:  # the driver's pages, one at a time
            for r in result.current_rows:
                part.append(Stored(*r))
                if len(part) == rows:
                    yield assemble(kind, dim, [s.id for s in part], part, True)
                    part = []
            if not result.has_more_pages:
                break
            backend("scan knowledge", result.fetch_next_page)
        if part:
            yield assemble(kind, dim, [s.id for s in part], part, True)

    def quarantine(
        self, namespace: str, from_step: int, to_step: int, kinds: Sequence[str] | None = None
    ) -> int:
        ns = self._lookup(namespace)
        chosen = check_quarantine(ns.spec, from_step, to_step, kinds)
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
        per = self.config.ids_per_query
        groups: dict[int, list[str]] = defaultdict(list)
        for i in dict.fromkeys(ids):
            groups[bucket_of(i, ns.spec.buckets)].append(i)
        futures = [
            Call(
                self.session, query, (ns.uid, b, part) if kind is None else (ns.uid, kind, b, part)
            )
            for b, g in groups.items()
            for part in (g[s : s + per] for s in range(0, len(g), per))
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
        size, in_flight_max = self.config.batch_rows, self.config.writes_in_flight
        groups: dict[object, list[tuple[Any, ...]]] = defaultdict(list)
        for r in rows:
            groups[key(r)].append(r)
        batches = []
        for group in groups.values():
            for start in range(0, len(group), size):
                batch = BatchStatement(batch_type=BatchType.UNLOGGED)
                for r in group[start : start + size]:
                    batch.add(stmt, r)
                batches.append(batch)
        in_flight: list[Call] = []
        for batch in batches:
            in_flight.append(Call(self.session, batch))
            if len(in_flight) >= in_flight_max:
                _wait_all(what, in_flight[: in_flight_max // 2])
                in_flight = in_flight[in_flight_max // 2 :]
        _wait_all(what, in_flight)


def _wait_all(what: str, futures: list[Call]) -> list[list[tuple[Any, ...]]]:
    out = []
    for f in futures:
        result = f.result(what)
        rows = list(result.current_rows)
        while result.has_more_pages:
            result.fetch_next_page()
            rows += result.current_rows
        out.append(rows)
    return out
