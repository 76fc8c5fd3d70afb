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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from carls.bank.errors import DimensionError, NamespaceError, ValueRejectedError
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

__all__ = ["MemoryBank"]


@dataclass(frozen=True, slots=True)
class _Row:
    step: int
    value: F32
    klass: int
    confidence: float
    neighbour_ids: tuple[str, ...]
    maker: str
    fingerprint: str
    written_at: float
    stored_at: float  # when this bank got it: TTL counts from here, as in Cassandra

    def beats(self, old: _Row, old_expired: bool) -> bool:
        """Whether this write replaces ``old`` under Cassandra's reconciliation."""
        if self.step != old.step:
            return self.step > old.step
        if old_expired:
            return False
        return self.value.tobytes() >= old.value.tobytes()


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
        if not isinstance(spec, NamespaceSpec):
            raise ValueRejectedError(f"spec: expected a NamespaceSpec, got {type(spec).__name__}")
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
        ids = _unique(check_ids(ids))
        arr = np.asarray(features)
        if arr.ndim != 2 or arr.shape[1] < 1:
            raise DimensionError(f"features: expected shape ({len(ids)}, dim), got {arr.shape}")
        feats = check_matrix(arr, len(ids), arr.shape[1], "features")
        labs = _check_labels(labels, len(ids))
        mod = _check_modality(modality)
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
            _check_bucket(bucket, ns.spec.buckets)
            return sorted(ns.examples[bucket])

    # Knowledge ----------------------------------------------------------------------------

    def write(self, namespace: str, kind: str, batch: KnowledgeBatch, lineage: Lineage) -> int:
        spec = self._spec(namespace)
        if not isinstance(lineage, Lineage):
            raise ValueRejectedError(f"lineage: expected a Lineage, got {type(lineage).__name__}")
        checked = check_batch(spec, kind, batch)
        n = len(checked.ids)
        classes = checked.classes if checked.classes is not None else np.full(n, -1, np.int32)
        confidence = (
            checked.confidence if checked.confidence is not None else np.zeros(n, np.float32)
        )
        neighbours = checked.neighbour_ids or [[] for _ in range(n)]
        written_at = checked.written_at
        with self._lock:
            ns = self._current(spec)
            now = self._clock()
            ttl = spec.ttl_s.get(kind)
            buckets = ns.kind_rows(kind)
            tombs = ns.tombstones.setdefault(kind, {})
            for i, id_ in enumerate(checked.ids):
                if lineage.step <= tombs.get(id_, -1):
                    continue
                row = _Row(
                    lineage.step,
                    _frozen(checked.values[i]),
                    int(classes[i]),
                    float(confidence[i]),
                    tuple(neighbours[i]),
                    lineage.maker,
                    lineage.fingerprint,
                    now if written_at is None else float(written_at[i]),
                    now,
                )
                rows = buckets[bucket_of(id_, spec.buckets)]
                old = rows.get(id_)
                if old is None or row.beats(old, _expired(old, ttl, now)):
                    rows[id_] = row
        return n

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
        spec.dim(kind)
        ids = check_ids(ids)
        if max_staleness is not None and max_staleness < 0:
            raise ValueRejectedError("max_staleness: must be >= 0")
        with self._lock:
            ns = self._current(spec)
            now = self._clock()
            ttl = spec.ttl_s.get(kind)
            buckets = ns.rows.get(kind)
            found: list[_Row | None] = []
            for id_ in ids:
                row = buckets[bucket_of(id_, spec.buckets)].get(id_) if buckets else None
                found.append(None if row is None or _expired(row, ttl, now) else row)
        out = _assemble(spec, kind, ids, found, lineage)
        out.stale = stale_mask(out.steps, out.missing, current_step, max_staleness)
        return out

    def scan(self, namespace: str, kind: str, bucket: int) -> KnowledgeRead:
        spec = self._spec(namespace)
        spec.dim(kind)
        _check_bucket(bucket, spec.buckets)
        with self._lock:
            ns = self._current(spec)
            now = self._clock()
            ttl = spec.ttl_s.get(kind)
            rows = ns.rows[kind][bucket] if kind in ns.rows else {}
            live = sorted((i, r) for i, r in rows.items() if not _expired(r, ttl, now))
        return _assemble(spec, kind, [i for i, _ in live], [r for _, r in live], True)

    def quarantine(
        self, namespace: str, from_step: int, to_step: int, kinds: Sequence[str] | None = None
    ) -> int:
        spec = self._spec(namespace)
        for name, step in (("from_step", from_step), ("to_step", to_step)):
            if not isinstance(step, int) or isinstance(step, bool):
                raise ValueRejectedError(f"{name}: must be an int, got {step!r}")
        if from_step > to_step or from_step < 0:
            raise ValueRejectedError(f"step range {from_step}..{to_step} is empty or negative")
        if isinstance(kinds, str):
            raise ValueRejectedError("kinds: expected a sequence of kinds, got one string")
        chosen = list(spec.kinds) if kinds is None else list(kinds)
        for kind in chosen:
            spec.dim(kind)
        removed = 0
        with self._lock:
            ns = self._current(spec)
            now = self._clock()
            for kind in chosen:
                ttl = spec.ttl_s.get(kind)
                tombs = ns.tombstones.setdefault(kind, {})
                for rows in ns.rows.get(kind, []):
                    doomed = [i for i, r in rows.items() if from_step <= r.step <= to_step]
                    for id_ in doomed:
                        row = rows.pop(id_)
                        tombs[id_] = max(tombs.get(id_, -1), row.step)
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


def _check_bucket(bucket: int, buckets: int) -> None:
    if not isinstance(bucket, int) or isinstance(bucket, bool) or not 0 <= bucket < buckets:
        raise ValueRejectedError(f"bucket: must be an int in 0..{buckets - 1}, got {bucket!r}")


def _unique(ids: list[str]) -> list[str]:
    if len(set(ids)) != len(ids):
        raise ValueRejectedError("ids: the batch names an id twice")
    return ids


def _check_labels(labels: Sequence[int] | None, n: int) -> npt.NDArray[np.int32]:
    if labels is None:
        return np.full(n, NO_LABEL, dtype=np.int32)
    arr = np.asarray(labels)
    if arr.shape != (n,) or not np.issubdtype(arr.dtype, np.integer):
        raise ValueRejectedError(f"labels: expected {n} ints, got {arr.dtype} {arr.shape}")
    if (arr < NO_LABEL).any() or (arr > np.iinfo(np.int32).max).any():
        raise ValueRejectedError(f"labels: must be class indices, or {NO_LABEL} for unlabeled")
    return arr.astype(np.int32)


def _check_modality(modality: str | None) -> str:
    return "" if modality is None else validate_name(modality, "modality")


def _assemble(
    spec: NamespaceSpec, kind: str, ids: list[str], rows: Sequence[_Row | None], lineage: bool
) -> KnowledgeRead:
    n, dim = len(ids), spec.dim(kind)
    values = np.zeros((n, dim), dtype=np.float32)
    steps = np.full(n, -1, dtype=np.int64)
    missing = np.ones(n, dtype=bool)
    for i, row in enumerate(rows):
        if row is not None:
            values[i, : row.value.shape[0]] = row.value
            steps[i] = row.step
            missing[i] = False
    out = KnowledgeRead(kind, list(ids), values, steps, missing, np.zeros(n, dtype=bool))
    if kind == "pseudo_label":
        out.classes = np.array([-1 if r is None else r.klass for r in rows], dtype=np.int32)
        out.confidence = np.array(
            [0.0 if r is None else r.confidence for r in rows], dtype=np.float32
        )
    if kind == "neighbours":
        out.neighbour_ids = [[] if r is None else list(r.neighbour_ids) for r in rows]
    if lineage:
        out.makers = ["" if r is None else r.maker for r in rows]
        out.fingerprints = ["" if r is None else r.fingerprint for r in rows]
        out.written_at = np.array(
            [0.0 if r is None else r.written_at for r in rows], dtype=np.float64
        )
    return out
