"""The knowledge reader: the bank's knowledge for a trainer's examples, without waiting.

A background thread keeps a dense local copy (one row per training example) of the kinds a
paradigm needs, refreshing the rows of upcoming batches first and sweeping the rest; the
training step reads that copy with a numpy gather and never touches the network. Rows that
are missing, or more than ``max_staleness`` steps behind their source's clock, are masked
out; every read records the staleness it saw (a histogram).

Staleness is measured on the source's own step clock, which the caller passes to ``get``:
the trainer's step for its own namespace's knowledge, and for another namespace's (a peer,
a teacher) the newest step of that kind the reader has seen (``clock``), since another
run's steps say nothing about this one's.

A bank that is away is retried with backoff: training goes on with the cached knowledge
and reports growing staleness.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from carls.bank.protocol import KnowledgeSource
from carls.bank.rows import stale_mask
from carls.schemas.errors import CarlsError
from carls.streams import metrics

log = logging.getLogger(__name__)
I64 = npt.NDArray[np.int64]


@dataclass(slots=True)
class Slice:
    """Knowledge of one kind for a batch: values, steps, and the mask a loss applies."""

    values: npt.NDArray[np.float32]
    steps: I64
    usable: npt.NDArray[np.bool_]
    classes: npt.NDArray[np.int32] | None = None
    confidence: npt.NDArray[np.float32] | None = None
    neighbours: I64 | None = None  # indices into the reader's ids, -1 = none


@dataclass(slots=True)
class _Table:
    values: npt.NDArray[np.float32]
    steps: I64
    classes: npt.NDArray[np.int32] | None = None
    confidence: npt.NDArray[np.float32] | None = None
    neighbours: I64 | None = None


@dataclass(frozen=True, slots=True)
class Read:
    """One read's staleness: histogram counts, rows missing and too stale, rows, sum."""

    counts: list[int]
    missing: int
    too_stale: int
    total: int
    sum: float


@dataclass(slots=True)
class Staleness:
    """Staleness (trainer step - knowledge step) seen by reads, as a histogram."""

    edges: tuple[int, ...] = (0, 50, 100, 200, 500, 1000, 2000, 5000)
    counts: list[int] = field(default_factory=lambda: [0] * 9)
    missing: int = 0
    too_stale: int = 0
    total: int = 0
    sum: float = 0.0
    recent: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    """The staleness of the latest rows read that had knowledge (up to ``RECENT``)."""
    RECENT: ClassVar[int] = 4096

    def record(
        self, staleness: I64, missing: npt.NDArray[np.bool_], too_stale: npt.NDArray[np.bool_]
    ) -> Read:
        """Add one read (and keep its latest rows); returns it, for ``add`` elsewhere."""
        present = staleness[~missing]
        idx = np.searchsorted(self.edges, present, side="right")
        read = Read(
            np.bincount(idx, minlength=len(self.counts)).tolist(),
            int(missing.sum()),
            int(too_stale.sum()),
            int(staleness.size),
            float(present.sum()),
        )
        self.add(read)
        self.recent = np.concatenate([self.recent, present])[-self.RECENT :]
        return read

    def add(self, read: Read) -> None:
        """Count a read another histogram recorded (same edges)."""
        for i, c in enumerate(read.counts):
            self.counts[i] += c
        self.missing += read.missing
        self.too_stale += read.too_stale
        self.total += read.total
        self.sum += read.sum

    @property
    def mean(self) -> float | None:
        seen = self.total - self.missing
        return self.sum / seen if seen else None

    def as_dict(self) -> dict[str, object]:
        labels = (
            [f"<{self.edges[0]}"]
            + [f"{a}-{b}" for a, b in zip(self.edges, self.edges[1:], strict=False)]
            + [f">={self.edges[-1]}"]
        )
        return {
            "histogram": dict(zip(labels, self.counts, strict=True)),
            "mean": self.mean,
            "missing": self.missing,
            "too_stale": self.too_stale,
            "reads": self.total,
        }


class KnowledgeReader:
    """Prefetches ``(namespace, kind)`` knowledge for ``ids`` into local arrays.

    ``source`` lists what to follow: ``[(namespace, kind, dim), ...]`` (another trainer's
    namespace for codistillation or multimodal alignment). ``hint(indices)`` names the rows
    of upcoming batches: they are read first (unless read in the last ``fresh_s`` seconds),
    and ``demand`` (if given) is called with those ids that have no knowledge yet, so
    makers can make them ahead of refresh work.
    """

    def __init__(
        self,
        bank: KnowledgeSource,
        ids: Sequence[str],
        source: Sequence[tuple[str, str, int]],
        *,
        chunk: int = 1024,
        sweep_pause_s: float = 0.25,
        fresh_s: float = 1.0,
        demand: Callable[[list[str]], None] | None = None,
    ) -> None:
        self.bank = bank
        self.ids = list(ids)
        self.index = {i: n for n, i in enumerate(self.ids)}
        self.source = list(source)
        self.chunk = chunk
        self.sweep_pause_s = sweep_pause_s
        self.fresh_s = fresh_s
        self.demand = demand
        n = len(self.ids)
        self._tables = {
            (ns, kind): _Table(
                np.zeros((n, dim), np.float32),
                np.full(n, -1, np.int64),
                np.full(n, -1, np.int32) if kind == "pseudo_label" else None,
                np.zeros(n, np.float32) if kind == "pseudo_label" else None,
                np.full((n, dim), -1, np.int64) if kind == "neighbours" else None,
            )
            for ns, kind, dim in self.source
        }
        self._clock = dict.fromkeys(self._tables, -1)  # newest step seen, per source
        self._read_at = np.full(n, -np.inf)  # when each row was last read (all kinds)
        self._cursor = 0  # where the sweep goes on
        self._lock = threading.Lock()
        self._hints: deque[np.ndarray] = deque(maxlen=64)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="knowledge-reader", daemon=True)
        self.staleness = Staleness()
        """Every read's staleness, of all the kinds followed (its ``recent`` rows are kept
        per kind only, in ``by_kind``)."""
        self.by_kind: dict[str, Staleness] = {}
        """The same, per kind."""
        self.reads_from_bank = 0

    # Lifecycle ---------------------------------------------------------------------------
    def start(self) -> KnowledgeReader:
        """Start the background refresh (again, after a ``stop``: the cache is kept)."""
        if self._thread.is_alive() and not self._stop.is_set():
            return self
        if self._thread.is_alive():  # still stopping
            self._thread.join()
        if self._thread.ident is not None:  # ran before: a thread runs once
            self._thread = threading.Thread(target=self._run, name="knowledge-reader", daemon=True)
        self._stop.clear()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        if self._thread.is_alive():
            log.warning("knowledge reader: still in a bank read after 30 s; it stops after it")

    def __enter__(self) -> KnowledgeReader:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # The training step's side ------------------------------------------------------------
    def hint(self, indices: npt.ArrayLike) -> None:
        """Rows the next batches will need: refreshed first."""
        self._hints.append(np.asarray(indices, np.int64))

    def get(
        self,
        namespace: str,
        kind: str,
        indices: npt.ArrayLike,
        current_step: int,
        max_staleness: int | None,
    ) -> Slice:
        """The cached knowledge for ``indices`` (a gather; never waits on the bank)."""
        idx = np.asarray(indices, np.int64)
        t = self._tables[(namespace, kind)]
        with self._lock:
            values, steps = t.values[idx], t.steps[idx]
            classes = t.classes[idx] if t.classes is not None else None
            conf = t.confidence[idx] if t.confidence is not None else None
            nbrs = t.neighbours[idx] if t.neighbours is not None else None
        missing = steps < 0
        too_stale = stale_mask(steps, missing, current_step, max_staleness)
        by_kind = self.by_kind.setdefault(kind, Staleness())
        read = by_kind.record(current_step - steps, missing, too_stale)
        self.staleness.add(read)  # all kinds together: the same read, counted once
        metrics.READER_HITS.labels(kind).inc(read.total - read.missing)
        metrics.READER_MISSES.labels(kind).inc(read.missing)
        metrics.STALENESS.add(kind, by_kind.edges, read.counts, read.sum)
        return Slice(values, steps, ~missing & ~too_stale, classes, conf, nbrs)

    def clock(self, namespace: str, kind: str) -> int:
        """The source's step clock as the reader knows it: the newest step of its
        knowledge of this kind read so far (-1: none yet)."""
        with self._lock:
            return self._clock[(namespace, kind)]

    def rows(
        self, namespace: str, kind: str, indices: npt.ArrayLike
    ) -> tuple[npt.NDArray[np.float32], I64]:
        """The cached values and steps (-1: none yet) of any rows, e.g. an example's
        neighbours; unlike ``get``, no staleness policy and no record of it."""
        idx = np.asarray(indices, np.int64)
        t = self._tables[(namespace, kind)]
        with self._lock:
            return t.values[idx], t.steps[idx]

    def coverage(self) -> dict[str, float]:
        with self._lock:
            return {
                f"{ns}/{kind}": float((t.steps >= 0).mean()) if len(t.steps) else 0.0
                for (ns, kind), t in self._tables.items()
            }

    # The background side -----------------------------------------------------------------
    def refresh(self, indices: npt.ArrayLike, only: tuple[str, str] | None = None) -> None:
        """Read ``indices`` of every followed kind (or of ``only``: namespace, kind) from
        the bank into the cache (blocking)."""
        idx = np.unique(np.asarray(indices, np.int64))
        tables = self._tables if only is None else {only: self._tables[only]}
        for s in range(0, idx.size, self.chunk):
            part = idx[s : s + self.chunk]
            started = time.monotonic()
            ids = [self.ids[i] for i in part]
            for (ns, kind), t in tables.items():
                got = self.bank.read(ns, kind, ids)
                self.reads_from_bank += 1
                metrics.READER_BANK_ROWS.labels(kind).inc(len(ids))
                have = ~got.missing
                rows = part[have]
                nbr_idx = None
                if t.neighbours is not None and got.neighbour_ids is not None:
                    width = t.neighbours.shape[1]
                    nbr_idx = np.full((len(ids), width), -1, np.int64)
                    for r, nids in enumerate(got.neighbour_ids):
                        mapped = [self.index.get(x, -1) for x in nids[:width]]
                        nbr_idx[r, : len(mapped)] = mapped
                with self._lock:
                    if have.any():
                        key = (ns, kind)
                        self._clock[key] = max(self._clock[key], int(got.steps[have].max()))
                    # Never let an older read overwrite newer cached knowledge.
                    newer = got.steps[have] >= t.steps[rows]
                    rows_new = rows[newer]
                    sel = np.flatnonzero(have)[newer]
                    t.values[rows_new] = got.values[sel]
                    t.steps[rows_new] = got.steps[sel]
                    if t.classes is not None and got.classes is not None:
                        t.classes[rows_new] = got.classes[sel]
                    if t.confidence is not None and got.confidence is not None:
                        t.confidence[rows_new] = got.confidence[sel]
                    if t.neighbours is not None and nbr_idx is not None:
                        t.neighbours[rows_new] = nbr_idx[sel]
            if only is None:
                self._read_at[part] = started

    def _run(self) -> None:
        delay = 0.2
        while not self._stop.is_set():
            try:
                self.read_pass()
                delay = 0.2
                self._stop.wait(self.sweep_pause_s)
            except CarlsError as exc:  # bank away: keep the cache, retry with backoff
                log.warning("knowledge reader: %s; retrying in %.1f s", exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)
            except Exception:  # a bug: said loudly, and the reader keeps its thread
                log.exception("knowledge reader: a read failed; retrying in %.1f s", delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)

    def read_pass(self) -> None:
        """One pass of the background refresh (the thread runs one every
        ``sweep_pause_s``): the rows hinted since the last pass that were not read in the
        last ``fresh_s`` seconds, then the next ``chunk`` rows of the sweep over all."""
        if self._hints:
            wanted = self._take_hints()
            stale = time.monotonic() - self._read_at[wanted] >= self.fresh_s
            self.refresh(wanted[stale])
            self._ask_for_missing(wanted)
        n = len(self.ids)
        if n:
            self.refresh(np.arange(self._cursor, min(self._cursor + self.chunk, n)))
            self._cursor = self._cursor + self.chunk if self._cursor + self.chunk < n else 0

    def _take_hints(self) -> np.ndarray:
        """The rows hinted since the last pass, newest first, at most ``chunk`` of them:
        however fast training runs, hints add at most one chunk per pass to the reads."""
        hints = []
        while self._hints:
            hints.append(self._hints.pop())
        rows = np.concatenate(hints)
        _, first = np.unique(rows, return_index=True)
        return rows[np.sort(first)][: self.chunk]

    def _ask_for_missing(self, indices: np.ndarray) -> None:
        if self.demand is None or not self._tables:
            return
        first = next(iter(self._tables.values()))
        with self._lock:
            missing = indices[first.steps[indices] < 0]
        if missing.size:
            self.demand([self.ids[i] for i in np.unique(missing)])
