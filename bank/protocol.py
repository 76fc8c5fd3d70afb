"""The bank as small protocols, and the rules every bank keeps.

A consumer depends on the protocol it uses: a trainer's reader on ``KnowledgeSource``
(``read``), a maker on ``ExampleStore`` and ``KnowledgeStore``, the admin tool on the whole
``KnowledgeBank``. Both banks (``memory``, ``cassandra``) implement all of them.

Rules every implementation keeps (``tests/contract`` checks them on each):

* **Step order.** A write never replaces knowledge from a newer step, whatever the
  interleaving of writers, threads or processes; writing the same batch twice is harmless.
* **Reads are honest.** A read returns values in the order asked with an explicit
  ``missing`` mask; a backend failure raises ``BankUnavailableError``, never "missing".
* **Quarantine respects the clock.** Removing steps ``a..b`` removes exactly the rows whose
  step lies there; a later write at a newer step lands normally.
* **Validation before I/O.** Bad input raises before anything is written, and both banks
  reject exactly the same input: they run the same checks (``bank.rows``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from carls.bank.errors import DimensionError, ValueRejectedError
from carls.bank.similarity import top_k
from carls.bank.types import (
    F32,
    I64,
    Coverage,
    Examples,
    KnowledgeBatch,
    KnowledgeRead,
    Lineage,
    NamespaceSpec,
    Neighbour,
)


@runtime_checkable
class NamespaceLookup(Protocol):
    def namespace(self, name: str) -> NamespaceSpec:
        """The namespace's spec; ``NamespaceError`` if unknown."""


@runtime_checkable
class KnowledgeSource(NamespaceLookup, Protocol):
    """What a trainer needs: knowledge of its examples."""

    def read(
        self,
        namespace: str,
        kind: str,
        ids: Sequence[str],
        *,
        current_step: int | None = None,
        max_staleness: int | None = None,
        lineage: bool = False,
    ) -> KnowledgeRead: ...


@runtime_checkable
class KnowledgeStore(NamespaceLookup, Protocol):
    """What makers and admin work write and enumerate."""

    def write(self, namespace: str, kind: str, batch: KnowledgeBatch, lineage: Lineage) -> int:
        """Write knowledge unless a newer step is already there; returns rows submitted."""

    def scan(self, namespace: str, kind: str, bucket: int) -> KnowledgeRead:
        """All knowledge rows of a kind in one bucket (for export, coverage, neighbours)."""

    def scan_parts(
        self, namespace: str, kind: str, bucket: int, rows: int
    ) -> Iterator[KnowledgeRead]:
        """The rows of ``scan``, in the same order, in parts of at most ``rows``: memory
        bounded by a part however large the bucket (export)."""

    def quarantine(
        self, namespace: str, from_step: int, to_step: int, kinds: Sequence[str] | None = None
    ) -> int:
        """Remove knowledge whose step lies in ``from_step..to_step``; returns rows removed."""


@runtime_checkable
class ExampleStore(NamespaceLookup, Protocol):
    """Registered examples: features and labels by id."""

    def register_examples(
        self,
        namespace: str,
        ids: Sequence[str],
        features: F32,
        labels: Sequence[int] | None = None,
        modality: str | None = None,
    ) -> int:
        """Store features (and labels, -1 = unlabeled) by id; returns rows written."""

    def fetch_examples(self, namespace: str, ids: Sequence[str]) -> Examples: ...

    def example_ids(self, namespace: str, bucket: int) -> list[str]:
        """The registered ids of one bucket, sorted: enumerate a namespace bucket by bucket."""


@runtime_checkable
class NamespaceAdmin(NamespaceLookup, Protocol):
    def create_namespace(self, spec: NamespaceSpec) -> NamespaceSpec:
        """Create a namespace; ``NamespaceError`` if it exists. Returns it with created_at."""

    def namespaces(self) -> list[NamespaceSpec]: ...

    def drop_namespace(self, name: str) -> None:
        """Remove the namespace with its examples and knowledge."""


@runtime_checkable
class KnowledgeBank(NamespaceAdmin, ExampleStore, KnowledgeStore, KnowledgeSource, Protocol):
    """Every part of a bank, and ``close``."""

    def close(self) -> None: ...


class MakerBank(ExampleStore, KnowledgeStore, Protocol):
    """What a knowledge maker uses: examples in, knowledge out."""


# ---------------------------------------------------------------------------------------
# Operations built on the protocol, shared by every implementation.


def iter_example_ids(bank: ExampleStore, namespace: str) -> Iterator[tuple[int, list[str]]]:
    """(bucket, ids) for every bucket of the namespace, in bucket order."""
    spec = bank.namespace(namespace)
    for bucket in range(spec.buckets):
        yield bucket, bank.example_ids(namespace, bucket)


def scan_all(bank: KnowledgeStore, namespace: str, kind: str) -> KnowledgeRead:
    """Every row of a kind, concatenated over buckets."""
    spec = bank.namespace(namespace)
    parts = [bank.scan(namespace, kind, b) for b in range(spec.buckets)]
    return concat_reads(kind, spec.dim(kind), parts)


def concat_reads(kind: str, dim: int, parts: list[KnowledgeRead]) -> KnowledgeRead:
    parts = [p for p in parts if p.ids]
    if not parts:
        empty = np.zeros((0, dim), dtype=np.float32)
        return KnowledgeRead(
            kind, [], empty, np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0, bool)
        )

    def cat_opt(name: str) -> Any:
        vals = [getattr(p, name) for p in parts]
        if any(v is None for v in vals):
            return None
        if isinstance(vals[0], list):
            return [x for v in vals for x in v]
        return np.concatenate(vals)

    return KnowledgeRead(
        kind=kind,
        ids=[i for p in parts for i in p.ids],
        values=np.concatenate([p.values for p in parts]),
        steps=np.concatenate([p.steps for p in parts]),
        missing=np.concatenate([p.missing for p in parts]),
        stale=np.concatenate([p.stale for p in parts]),
        classes=cat_opt("classes"),
        confidence=cat_opt("confidence"),
        neighbour_ids=cat_opt("neighbour_ids"),
        makers=cat_opt("makers"),
        fingerprints=cat_opt("fingerprints"),
        written_at=cat_opt("written_at"),
    )


def coverage(bank: MakerBank, namespace: str, kind: str) -> Coverage:
    """How many registered ids have knowledge at the newest step, at older steps, or none."""
    spec = bank.namespace(namespace)
    spec.dim(kind)
    total = 0
    steps_of_known: list[I64] = []
    for bucket in range(spec.buckets):
        registered = set(bank.example_ids(namespace, bucket))
        total += len(registered)
        rows = bank.scan(namespace, kind, bucket)
        keep = np.fromiter((i in registered for i in rows.ids), bool, len(rows.ids))
        steps_of_known.append(rows.steps[keep])
    steps = np.concatenate(steps_of_known) if steps_of_known else np.zeros(0, np.int64)
    if steps.size == 0:
        return Coverage(namespace, kind, total, None, 0, 0, total)
    newest = int(steps.max())
    uniq, counts = np.unique(steps, return_counts=True)
    at_newest = int((steps == newest).sum())
    return Coverage(
        namespace,
        kind,
        total,
        newest,
        at_newest,
        int(steps.size) - at_newest,
        total - int(steps.size),
        {int(s): int(c) for s, c in zip(uniq, counts, strict=True)},
    )


def nearest(
    bank: KnowledgeStore,
    namespace: str,
    kind: str,
    query: F32,
    k: int,
    *,
    metric: str = "cosine",
    steps: tuple[int, int] | None = None,
    exclude: Sequence[str] = (),
) -> list[Neighbour]:
    """Exact top-k by cosine or dot product among the kind's vectors.

    ``steps`` (inclusive range) picks the model generation; by default only vectors of the
    newest step present are compared, so generations are never mixed silently."""
    if metric not in ("cosine", "dot"):
        raise ValueRejectedError(f"metric: {metric!r} is not 'cosine' or 'dot'")
    if k < 1:
        raise ValueRejectedError("k: must be >= 1")
    rows = scan_all(bank, namespace, kind)
    q = np.asarray(query, dtype=np.float32).reshape(-1)
    if q.shape[0] != rows.values.shape[1] or not np.isfinite(q).all():
        raise DimensionError(
            f"query: expected {rows.values.shape[1]} finite floats, got {q.shape[0]}"
        )
    if not rows.ids:
        return []
    lo, hi = steps if steps is not None else (int(rows.steps.max()), int(rows.steps.max()))
    mask = (rows.steps >= lo) & (rows.steps <= hi)
    if exclude:
        ex = set(exclude)
        mask &= np.fromiter((i not in ex for i in rows.ids), bool, len(rows.ids))
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return []
    best, scores = top_k(q[None, :], rows.values[idx], min(k, idx.size), cosine=metric == "cosine")
    return [
        Neighbour(rows.ids[idx[t]], float(score), int(rows.steps[idx[t]]))
        for t, score in zip(best[0], scores[0], strict=True)
    ]
