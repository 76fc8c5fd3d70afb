"""The work of one id batch, as plain synchronous code: fetch, infer, write.

Faust agents call :meth:`Maker.process` in an executor. Everything that can be wrong with
the batch itself raises a ``CarlsError`` that is not retriable (the agent dead-letters the
record); a backend that is away raises a retriable one (the agent backs off and retries,
committing nothing). The time of each stage is kept for ``carls bench makers``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from carls.bank.ann import EXACT_BELOW, HnswParams, VectorIndex
from carls.bank.errors import DimensionError
from carls.bank.indexes import SharedIndexes
from carls.bank.protocol import MakerBank
from carls.bank.rows import check_batch
from carls.bank.types import NO_LABEL, Examples, KnowledgeBatch, Lineage, NamespaceSpec
from carls.makers.checkpoints import LoadedModel, ModelCache
from carls.makers.compute import (
    feature_graph,
    index_neighbours,
    knowledge_batch,
    neighbours_batch,
    spread_labels,
)
from carls.schemas import CheckpointManifest

log = logging.getLogger(__name__)
MAKERS = (
    "embedding",
    "pseudo_label",
    "difficulty",
    "prediction",
    "instruction",
    "neighbours",
    "propagated",
)
PROPAGATION_KS = (5, 10)
"""Neighbours per example in the input graphs whose label spreads are averaged: no one
width suits every density (on the learning bench 5 alone lost on moons, 5-10-20 on iris)."""
POOL_CHUNK = 5000
POOL_FETCHES = 4
"""Example fetches in flight while a pool is built (each of ``POOL_CHUNK`` ids)."""
POOL_STALL_S = 15.0
"""A pool collecting a campaign's embeddings fetches the rest once none came for this long."""


@dataclass(slots=True)
class Outcome:
    """What one batch produced: ids processed, ids not registered, rows written per kind."""

    namespace: str
    step: int
    processed: int = 0
    unregistered: list[str] = field(default_factory=list)
    written: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class StageTimes:
    fetch_s: float = 0.0
    infer_s: float = 0.0
    write_s: float = 0.0
    examples: int = 0
    pool_s: float = 0.0
    """Building or loading neighbour indexes (``Maker.pool``, also ahead of a campaign's
    neighbour batches)."""
    search_s: float = 0.0
    """Neighbour queries against them."""

    def add(self, other: StageTimes) -> None:
        self.fetch_s += other.fetch_s
        self.infer_s += other.infer_s
        self.write_s += other.write_s
        self.examples += other.examples
        self.pool_s += other.pool_s
        self.search_s += other.search_s


class _Collected:
    """A campaign's embeddings, gathered from its own batches for the neighbour pool."""

    def __init__(self, ids: list[str], dim: int) -> None:
        self.ids = ids
        self.position = {pid: j for j, pid in enumerate(ids)}
        self.vectors = np.zeros((len(ids), dim), np.float32)
        self.filled = np.zeros(len(ids), bool)
        self.count = 0
        self.changed = threading.Condition()
        self.grew_at = time.monotonic()

    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        rows = np.fromiter((self.position.get(i, -1) for i in ids), np.int64, len(ids))
        hit = rows >= 0
        with self.changed:
            self.vectors[rows[hit]] = vectors[hit]
            self.count += int((~self.filled[rows[hit]]).sum())  # a batch's ids are distinct
            self.filled[rows[hit]] = True
            self.grew_at = time.monotonic()
            self.changed.notify_all()

    def wait(self, stall_s: float) -> None:
        """Until every id is in, or none came for ``stall_s`` (the rest went elsewhere)."""
        with self.changed:
            while self.count < len(self.ids) and time.monotonic() - self.grew_at < stall_s:
                self.changed.wait(timeout=0.5)


class Maker:
    """Turns id batches into knowledge with the checkpoint a manifest names."""

    def __init__(
        self,
        bank: MakerBank,
        cache: ModelCache,
        makers: Sequence[str] = MAKERS,
        worker: str = "maker",
        exact_below: int = EXACT_BELOW,
        indexes: SharedIndexes | None = None,
        hnsw: HnswParams | None = None,
    ) -> None:
        self.bank = bank
        self.exact_below = exact_below
        """Namespaces with fewer ids get exact neighbours; larger ones an HNSW index."""
        self.hnsw = hnsw or HnswParams()
        """The HNSW index's parameters."""
        self.indexes = indexes
        """Where indexes are shared with the other workers (None: each builds its own)."""
        self.cache = cache
        self.makers = tuple(makers)
        self.worker = worker
        self.times = StageTimes()
        self._pools: dict[tuple[str, int, str], tuple[list[str], VectorIndex]] = {}
        self._positions: dict[tuple[str, int, str], dict[str, int]] = {}
        self._pool_lock = threading.Lock()
        self._collected: dict[tuple[str, int, str], _Collected] = {}
        self._spread: dict[str, tuple[Any, np.ndarray, np.ndarray]] = {}
        """Per namespace: the last label spread, and the examples and labels it came from."""
        self.pool_stall_s = POOL_STALL_S
        """How long a pool waits for a campaign's next embeddings before fetching the
        missing ones."""
        self._writers = ThreadPoolExecutor(max_workers=len(MAKERS), thread_name_prefix="write")

    def kinds_for(self, spec: NamespaceSpec, wanted: Sequence[str]) -> list[str]:
        """The kinds this worker makes for ``spec``: declared by it, asked for (all when
        ``wanted`` is empty), and among this worker's makers (``embedding`` also covers
        ``embedding/<modality>``)."""
        kinds = []
        for kind in spec.kinds:
            base = "embedding" if kind.startswith("embedding/") else kind
            if base in self.makers and (not wanted or kind in wanted or base in wanted):
                kinds.append(kind)
        return kinds

    def probe(self, spec: NamespaceSpec, manifest: CheckpointManifest, sample: int = 32) -> None:
        """Try a new checkpoint on a few registered examples of namespace ``spec`` without
        writing anything: a model that cannot serve the namespace (wrong dimensions, NaN
        outputs) raises here, once, instead of failing every batch of a campaign."""
        model = self.cache.get(manifest)
        ids: list[str] = []
        for bucket in range(spec.buckets):
            ids += self.bank.example_ids(manifest.namespace, bucket)[:sample]
            if len(ids) >= sample:
                break
        if not ids:
            return
        ex = self.bank.fetch_examples(manifest.namespace, ids[:sample])
        self._check_features(manifest, model, ex.features.shape[1])
        emb, probs = model.infer(ex.features)
        for kind in self.kinds_for(spec, ()):
            if kind not in ("neighbours", "propagated"):
                check_batch(spec, kind, knowledge_batch(kind, ex.ids, emb, probs, ex.labels))

    @staticmethod
    def _check_features(manifest: CheckpointManifest, model: LoadedModel, dim: int) -> None:
        if dim != model.feature_dim:
            raise DimensionError(
                f"{manifest.namespace}: examples have {dim} features, the step "
                f"{manifest.step} model takes {model.feature_dim}"
            )

    def process(
        self,
        spec: NamespaceSpec,
        manifest: CheckpointManifest,
        ids: Sequence[str],
        wanted: Sequence[str] = (),
    ) -> Outcome:
        """Make ``wanted`` kinds (default: all the namespace ``spec`` has that this maker
        makes) of ``ids`` with ``manifest``'s model and write them."""
        model = self.cache.get(manifest)
        kinds = [k for k in self.kinds_for(spec, wanted) if k != "propagated"]
        out = Outcome(manifest.namespace, manifest.step)
        if kinds == ["neighbours"] and self._pooled_neighbours(spec, model, ids, out):
            return out
        t0 = time.perf_counter()
        ex = self.bank.fetch_examples(manifest.namespace, list(dict.fromkeys(ids)))
        t1 = time.perf_counter()
        present = np.flatnonzero(~ex.missing)
        out.unregistered = [ex.ids[i] for i in np.flatnonzero(ex.missing)]
        if present.size == 0 or not kinds:
            return out
        pids = [ex.ids[i] for i in present]
        self._check_features(manifest, model, ex.features.shape[1])
        emb, probs = model.infer(ex.features[present])
        collected = self._collected.get((spec.name, model.step, model.manifest.sha256))
        if collected is not None:
            collected.add(pids, emb)
        t2 = time.perf_counter()
        lineage = Lineage(manifest.step, f"{self.worker}", model.fingerprint)
        labels = ex.labels[present]
        modalities = [(ex.modalities or [""] * len(ex.ids))[i] for i in present]
        batches: dict[str, KnowledgeBatch] = {}
        pool_s = search_s = 0.0
        for kind in kinds:
            if kind.startswith("embedding/"):
                sel = [j for j, m in enumerate(modalities) if m == kind.split("/", 1)[1]]
                if sel:
                    batches[kind] = knowledge_batch(
                        kind, [pids[j] for j in sel], emb[sel], probs[sel]
                    )
            elif kind == "neighbours":
                ta = time.perf_counter()
                pool_ids, index = self.pool(spec, model)
                tb = time.perf_counter()
                position = self._positions[(spec.name, model.step, model.manifest.sha256)]
                nids, scores = index_neighbours(
                    pids, emb, pool_ids, index, spec.dim(kind), position
                )
                batches[kind] = neighbours_batch(pids, nids, scores)
                pool_s, search_s = tb - ta, time.perf_counter() - tb
            else:
                batches[kind] = knowledge_batch(kind, pids, emb, probs, labels)
        # Kinds are written concurrently: one kind's rows are bound while another's are
        # in flight to Cassandra.
        t_made = time.perf_counter()
        futures = {
            kind: self._writers.submit(self.bank.write, manifest.namespace, kind, batch, lineage)
            for kind, batch in batches.items()
        }
        for kind, future in futures.items():
            out.written[kind] = future.result()
        t3 = time.perf_counter()
        out.processed = len(pids)
        made_s = t_made - t2 - pool_s - search_s  # the other kinds' arithmetic
        write_s = t3 - t_made + made_s
        self.times.add(StageTimes(t1 - t0, t2 - t1, write_s, len(pids), 0.0, search_s))
        return out

    def _pooled_neighbours(
        self, spec: NamespaceSpec, model: LoadedModel, ids: Sequence[str], out: Outcome
    ) -> bool:
        """Neighbours of ``ids`` written from the pool alone (its vectors are the queries:
        no example fetch, no inference), when the pool is built and holds every one of
        them; False (nothing done) otherwise."""
        key = (spec.name, model.step, model.manifest.sha256)
        with self._pool_lock:
            pool, position = self._pools.get(key), self._positions.get(key)
        if pool is None or position is None:
            return False
        unique = list(dict.fromkeys(ids))
        rows = [position.get(i, -1) for i in unique]
        if not unique or min(rows) < 0:
            return False
        pool_ids, index = pool
        t0 = time.perf_counter()
        queries = index.vectors(np.asarray(rows, np.int64))
        nids, scores = index_neighbours(
            unique, queries, pool_ids, index, spec.dim("neighbours"), position
        )
        batch = neighbours_batch(unique, nids, scores)
        t1 = time.perf_counter()
        lineage = Lineage(model.step, f"{self.worker}", model.fingerprint)
        out.written["neighbours"] = self.bank.write(spec.name, "neighbours", batch, lineage)
        out.processed = len(unique)
        self.times.add(StageTimes(0.0, 0.0, time.perf_counter() - t1, len(unique), 0.0, t1 - t0))
        return True

    def propagate(self, spec: NamespaceSpec, manifest: CheckpointManifest) -> int:
        """Write the ``propagated`` kind of every example in ``manifest``'s step pool, at
        that step: the registered labels spread (``spread_labels``) over the inputs' kNN
        graph (``feature_graph``), averaged over ``PROPAGATION_KS`` neighbours; a class
        distribution per id that some label reaches (the others get no row). The spread is
        kept while the namespace's examples and labels stay the same: a later step only
        writes it again, fresh. Rows written.

        Why the inputs' graph and not the embeddings' (the neighbours kind): the model's
        embeddings are trained on the same few labels, so their graph puts each labeled
        example among examples the model already gives its class, and spreading over it
        returns the model's own guesses (on two moons with 10 labels, 0.72-0.86 of the
        spread labels right against 0.88-0.93 over the inputs)."""
        model = self.cache.get(manifest)
        ids, _ = self.pool(spec, model)
        if not ids:
            return 0
        t0 = time.perf_counter()
        labels = np.full(len(ids), NO_LABEL, np.int32)
        features: list[np.ndarray] = []
        for at in range(0, len(ids), POOL_CHUNK):
            got = self.bank.fetch_examples(spec.name, ids[at : at + POOL_CHUNK])
            labels[at : at + POOL_CHUNK] = got.labels
            features.append(got.features.reshape(len(got.labels), -1))
        classes = spec.dim("propagated")
        if labels.max(initial=NO_LABEL) >= classes:
            raise DimensionError(
                f"{spec.name}: a label of class {int(labels.max())}; propagated keeps {classes}"
            )
        key = (spec.name, spec.created_at, hash((tuple(ids), labels.tobytes())))
        kept = self._spread.get(spec.name)
        if kept is not None and kept[0] == key:
            distributions, reached, how = kept[1], kept[2], "kept from the last step"
        else:
            widths = sorted({min(k, len(ids) - 1) for k in PROPAGATION_KS} - {0})
            if widths:
                graph = feature_graph(
                    np.concatenate(features), widths[-1], exact_below=self.exact_below,
                    params=self.hnsw,
                )  # fmt: skip
                runs = [spread_labels(graph[:, :w], labels, classes) for w in widths]
                distributions = np.mean([d for d, _ in runs], axis=0)
                reached = np.logical_or.reduce([r for _, r in runs])
            else:  # one example: only its own label
                distributions, reached = spread_labels(np.full((1, 1), -1), labels, classes)
            self._spread[spec.name] = (key, distributions, reached)
            how = f"spread over the inputs' {'/'.join(map(str, widths))}-NN graphs"
        lineage = Lineage(model.step, f"{self.worker}", model.fingerprint)
        written = 0
        keep = np.flatnonzero(reached)  # no label reaches the others: nothing to say there
        for at in range(0, len(keep), POOL_CHUNK):
            part = keep[at : at + POOL_CHUNK]
            batch = KnowledgeBatch([ids[j] for j in part], distributions[part])
            written += self.bank.write(spec.name, "propagated", batch, lineage)
        log.info(
            "labels of %s step %d propagated (%s): %d labeled, %d of %d reached (%.1f s)",
            spec.name,
            model.step,
            how,
            int((labels >= 0).sum()),
            int(reached.sum()),
            len(ids),
            time.perf_counter() - t0,
        )
        return written

    def collect(self, spec: NamespaceSpec, manifest: CheckpointManifest, ids: list[str]) -> None:
        """Keep the embeddings of ``ids`` that this maker makes with ``manifest``'s model,
        for ``prepare_pool``: a campaign whose every batch comes here builds its pool
        without fetching and inferring its examples a second time."""
        model = self.cache.get(manifest)
        key = (spec.name, model.step, model.manifest.sha256)
        self._collected[key] = _Collected(ids, model.embedding_dim)

    def prepare_pool(self, spec: NamespaceSpec, manifest: CheckpointManifest) -> None:
        """Build (or load) the pool of ``manifest``'s step ahead of its neighbour batches."""
        model = self.cache.get(manifest)
        key = (spec.name, model.step, model.manifest.sha256)
        collected = self._collected.get(key)
        try:
            if collected is not None:  # outside the pool lock: other pools stay served
                collected.wait(self.pool_stall_s)
            self.pool(spec, model)
        finally:
            self._collected.pop(key, None)

    def pool(self, spec: NamespaceSpec, model: LoadedModel) -> tuple[list[str], VectorIndex]:
        """The embeddings of every registered example under ``model``, indexed once per
        (namespace, step): neighbours come from one model generation, complete even while a
        refresh campaign is still writing that generation's embeddings; exact under
        ``exact_below`` ids, from an HNSW index above. With ``indexes``, one worker builds
        it and the others load it from the bank."""
        key = (spec.name, model.step, model.manifest.sha256)
        with self._pool_lock:
            hit = self._pools.get(key)
            if hit is not None:
                return hit
            t0 = time.perf_counter()
            if self.indexes is None:
                pool, source = self._build_pool(spec, model), "built"
            else:
                pool, source = self.indexes.get(
                    spec.name,
                    spec.created_at,
                    model.step,
                    model.manifest.sha256,
                    lambda: self._build_pool(spec, model),
                )
            for old in [k for k in self._pools if k[0] == spec.name]:
                del self._pools[old], self._positions[old]
            self._pools[key] = pool
            self._positions[key] = {pid: j for j, pid in enumerate(pool[0])}
            self.times.pool_s += time.perf_counter() - t0
            ids, index = pool
            log.info(
                "neighbour pool for %s step %d: %d embeddings, %s, %s (%.1f s, %.0f MiB%s)",
                spec.name,
                model.step,
                len(ids),
                "exact" if index.exact else "HNSW index",
                source,
                time.perf_counter() - t0,
                index.memory_bytes / 2**20,
                "" if index.recall is None else f", ef {index.ef}, recall@10 {index.recall:.3f}",
            )
            return pool

    def _build_pool(self, spec: NamespaceSpec, model: LoadedModel) -> tuple[list[str], VectorIndex]:
        t0 = time.perf_counter()
        # Taken out first: a late batch no longer writes into the vectors built from.
        collected = self._collected.pop((spec.name, model.step, model.manifest.sha256), None)
        if collected is None:
            ids: list[str] = []
            for bucket in range(spec.buckets):
                ids += self.bank.example_ids(spec.name, bucket)
            vectors = np.zeros((len(ids), model.embedding_dim), np.float32)
            self._fetch_vectors(spec, model, ids, np.arange(len(ids)), vectors)
            how = f"{len(ids)} embeddings fetched and inferred"
        else:
            ids, vectors = collected.ids, collected.vectors
            with collected.changed:
                missing = np.flatnonzero(~collected.filled)
            self._fetch_vectors(spec, model, ids, missing, vectors)
            how = (
                f"{len(ids) - missing.size} embeddings from the campaign's batches, "
                f"{missing.size} fetched and inferred"
            )
        log.info(
            "neighbour pool for %s step %d: %s (%.1f s)",
            spec.name,
            model.step,
            how,
            time.perf_counter() - t0,
        )
        return ids, VectorIndex(vectors, exact_below=self.exact_below, params=self.hnsw)

    def _fetch_vectors(
        self,
        spec: NamespaceSpec,
        model: LoadedModel,
        ids: list[str],
        rows: np.ndarray,
        vectors: np.ndarray,
    ) -> None:
        """``vectors[rows]``: the embeddings of ``ids[rows]``, fetched and inferred. Several
        fetches are in flight, inferred in order as they land: under a campaign's load the
        reads are latency-bound."""

        def fetch(at: int) -> tuple[np.ndarray, Examples]:
            part = rows[at : at + POOL_CHUNK]
            return part, self.bank.fetch_examples(spec.name, [ids[j] for j in part])

        def infer(done: Future[tuple[np.ndarray, Examples]]) -> None:
            part, got = done.result()
            vectors[part] = model.infer(got.features)[0]

        with ThreadPoolExecutor(POOL_FETCHES, thread_name_prefix="pool-fetch") as fetches:
            pending: deque[Future[tuple[np.ndarray, Examples]]] = deque()
            for at in range(0, len(rows), POOL_CHUNK):
                pending.append(fetches.submit(fetch, at))
                if len(pending) > POOL_FETCHES:
                    infer(pending.popleft())
            while pending:
                infer(pending.popleft())
