"""An in-memory knowledge bank: the ``KnowledgeBank`` rules without a server.

Unit tests and trainers' tests use it in place of Cassandra. It keeps the rules a
Cassandra bank gets from ``USING TIMESTAMP step``:

* a row is replaced only by a write whose step is >= the stored one; at equal steps the
  value whose raw float32 bytes compare greater wins (Cassandra's tie-break), so the
  outcome does not depend on the order of the writes;
* a quarantined row leaves a tombstone at its step: later writes at that step or older are
  ignored, newer ones land;
* a row older than its kind's ``ttl_s`` reads as missing, and, like an expired Cassandra
  cell, still shadows writes from older steps.

All state sits behind one lock; every argument is validated before anything changes.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from carls.bank.errors import DimensionError, NamespaceError
from carls.bank.rows import (
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
    stored_rows,
)
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

__all__ = ["MemoryBank"]


@dataclass(frozen=True, slots=True)
class _Row:
    stored: Stored
    stored_at: float  # when this bank got it: TTL counts from here, as in Cassandra

    def beats(self, old: _Row, old_expired: bool) -> bool:
        """Whether this write replaces ``old`` under Cassandra's reconciliation."""
        if self.stored.step != old.stored.step:
            return self.stored.step > old.stored.step
        if old_expired:
            return False
        return self.stored.value >= old.stored.value


@dataclass(frozen=True, slots=True)
class _Example:
    features: F32
    label: int
    modality: str


@dataclass(slots=True)
class _Namespace:
    spec: NamespaceSpec
    feature_dim: int | None = None
    examples: list[dict[str, _Example]] = field(default_factory=list)
    # kind -> bucket -> id -> row / tombstone step
    rows: dict[str, list[dict[str, _Row]]] = field(default_factory=dict)
    tombstones: dict[str, dict[str, int]] = field(default_factory=dict)

    def kind_rows(self, kind: str) -> list[dict[str, _Row]]:
        if kind not in self.rows:
            self.rows[kind] = [{} for _ in range(self.spec.buckets)]
        return self.rows[kind]


def _copy_spec(spec: NamespaceSpec) -> NamespaceSpec:
    return dataclasses.replace(spec, kinds=dict(spec.kinds), ttl_s=dict(spec.ttl_s))


def _frozen(arr: F32) -> F32:
    out = np.array(arr, dtype=np.float32, copy=True)
    out.setflags(write=False)
    return out


class MemoryBank:
    """A thread-safe, in-process ``KnowledgeBank``.

    ``clock`` (seconds since the epoch) stamps ``created_at`` and ``written_at`` and decides
    TTL expiry; tests inject one to expire rows without waiting.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._namespaces: dict[str, _Namespace] = {}

    def __enter__(self) -> MemoryBank:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release: the data stays in memory until the bank is collected."""

    # Namespaces ---------------------------------------------------------------------------

    def create_namespace(self, spec: NamespaceSpec) -> NamespaceSpec:
        check_spec(spec)
        with self._lock:
            if spec.name in self._namespaces:
                raise NamespaceError(f"namespace {spec.name} already exists")
            created = dataclasses.replace(_copy_spec(spec), created_at=self._clock())
            self._namespaces[spec.name] = _Namespace(
                created, examples=[{} for _ in range(created.buckets)]
            )
        return _copy_spec(created)

    def namespace(self, name: str) -> NamespaceSpec:
        with self._lock:
            return _copy_spec(self._get(name).spec)

    def namespaces(self) -> list[NamespaceSpec]:
        with self._lock:
            return [_copy_spec(self._namespaces[n].spec) for n in sorted(self._namespaces)]

    def drop_namespace(self, name: str) -> None:
        with self._lock:
            self._get(name)
            del self._namespaces[name]

    # Examples -----------------------------------------------------------------------------

    def register_examples(
        self,
        namespace: str,
        ids: Sequence[str],
        features: F32,
        labels: Sequence[int] | None = None,
        modality: str | None = None,
    ) -> int:
        spec = self._spec(namespace)
        with self._lock:
            dim = self._current(spec).feature_dim
        ids, feats, labs, mod = check_examples(ids, features, labels, modality, dim)
        with self._lock:
            ns = self._current(spec)
            if ns.feature_dim is not None and ns.feature_dim != feats.shape[1]:
                raise DimensionError(
                    f"features: dimension {feats.shape[1]} does not match the "
                    f"{ns.feature_dim} registered in {spec.name}"
                )
            ns.feature_dim = feats.shape[1]
            for i, id_ in enumerate(ids):
                ns.examples[bucket_of(id_, spec.buckets)][id_] = _Example(
                    _frozen(feats[i]), int(labs[i]), mod
                )
        return len(ids)

    def fetch_examples(self, namespace: str, ids: Sequence[str]) -> Examples:
        spec = self._spec(namespace)
        ids = check_ids(ids)
        with self._lock:
            ns = self._current(spec)
            dim = ns.feature_dim or 0
            found = [ns.examples[bucket_of(i, spec.buckets)].get(i) for i in ids]
        features = np.zeros((len(ids), dim), dtype=np.float32)
        labels = np.full(len(ids), NO_LABEL, dtype=np.int32)
        missing = np.ones(len(ids), dtype=bool)
        modalities = [""] * len(ids)
        for i, ex in enumerate(found):
            if ex is not None:
                features[i] = ex.features
                labels[i] = ex.label
                missing[i] = False
                modalities[i] = ex.modality
        return Examples(ids, features, labels, missing, modalities)

    def example_ids(self, namespace: str, bucket: int) -> list[str]:
        with self._lock:
            ns = self._get(namespace)
            return sorted(ns.examples[check_bucket(ns.spec, bucket)])

    # Knowledge ----------------------------------------------------------------------------

    def write(self, namespace: str, kind: str, batch: KnowledgeBatch, lineage: Lineage) -> int:
        spec = self._spec(namespace)
        check_lineage(lineage)
        checked = check_batch(spec, kind, batch)
        with self._lock:
            ns = self._current(spec)
            now = self._clock()
            ttl = spec.ttl_s.get(kind)
            buckets = ns.kind_rows(kind)
            tombs = ns.tombstones.setdefault(kind, {})
            for stored in stored_rows(encode(checked, lineage, now)):
                if lineage.step <= tombs.get(stored.id, -1):
                    continue
                row = _Row(stored, now)
                rows = buckets[bucket_of(stored.id, spec.buckets)]
                old = rows.get(stored.id)
                if old is None or row.beats(old, _expired(old, ttl, now)):
                    rows[stored.id] = row
        return len(checked.ids)

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
        spec = self._spec(namespace)
        ids = check_read(spec, kind, ids, max_staleness)
        with self._lock:
            ns = self._current(spec)
            now = self._clock()
            ttl = spec.ttl_s.get(kind)
            buckets = ns.rows.get(kind)
            found: list[Stored | None] = []
            for id_ in ids:
                row = buckets[bucket_of(id_, spec.buckets)].get(id_) if buckets else None
                found.append(None if row is None or _expired(row, ttl, now) else row.stored)
        return assemble(kind, spec.dim(kind), ids, found, lineage, current_step, max_staleness)

    def scan(self, namespace: str, kind: str, bucket: int) -> KnowledgeRead:
        dim, live = self._live(namespace, kind, bucket)
        return assemble(kind, dim, [r.id for r in live], live, True)

    def scan_parts(
        self, namespace: str, kind: str, bucket: int, rows: int
    ) -> Iterator[KnowledgeRead]:
        rows = check_part_rows(rows)
        dim, live = self._live(namespace, kind, bucket)
        for start in range(0, len(live), rows):
            part = live[start : start + rows]
            yield assemble(kind, dim, [r.id for r in part], part, True)

    def _live(self, namespace: str, kind: str, bucket: int) -> tuple[int, list[Stored]]:
        spec = self._spec(namespace)
        dim = spec.dim(kind)
        bucket = check_bucket(spec, bucket)
        with self._lock:
            ns = self._current(spec)
            now = self._clock()
            ttl = spec.ttl_s.get(kind)
            rows = ns.rows[kind][bucket] if kind in ns.rows else {}
            return dim, [r.stored for i, r in sorted(rows.items()) if not _expired(r, ttl, now)]

    def quarantine(
        self, namespace: str, from_step: int, to_step: int, kinds: Sequence[str] | None = None
    ) -> int:
        spec = self._spec(namespace)
        chosen = check_quarantine(spec, from_step, to_step, kinds)
        removed = 0
        with self._lock:
            ns = self._current(spec)
            now = self._clock()
            for kind in chosen:
                ttl = spec.ttl_s.get(kind)
                tombs = ns.tombstones.setdefault(kind, {})
                for rows in ns.rows.get(kind, []):
                    doomed = [i for i, r in rows.items() if from_step <= r.stored.step <= to_step]
                    for id_ in doomed:
                        row = rows.pop(id_)
                        tombs[id_] = max(tombs.get(id_, -1), row.stored.step)
                        removed += not _expired(row, ttl, now)
        return removed

    # --------------------------------------------------------------------------------------

    def _spec(self, name: str) -> NamespaceSpec:
        """The stored spec, uncopied: for validation inside the bank only."""
        with self._lock:
            return self._get(name).spec

    def _current(self, spec: NamespaceSpec) -> _Namespace:
        """The namespace a call validated against; it may have been dropped since."""
        ns = self._get(spec.name)
        if ns.spec is not spec:
            raise NamespaceError(
                f"namespace {spec.name} was dropped and created again during the call"
            )
        return ns

    def _get(self, name: str) -> _Namespace:
        validate_name(name, "namespace")
        try:
            return self._namespaces[name]
        except KeyError:
            raise NamespaceError(f"namespace {name} does not exist") from None


def _expired(row: _Row, ttl: int | None, now: float) -> bool:
    return ttl is not None and now >= row.stored_at + ttl
