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
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from carls.bank.errors import DimensionError
from carls.bank.protocol import MakerBank
from carls.bank.rows import check_batch
from carls.bank.types import F32, KnowledgeBatch, Lineage, NamespaceSpec
from carls.makers.checkpoints import LoadedModel, ModelCache
from carls.makers.compute import knowledge_batch, neighbours_batch, top_k_neighbours
from carls.schemas import CheckpointManifest

log = logging.getLogger(__name__)
MAKERS = ("embedding", "pseudo_label", "difficulty", "prediction", "neighbours")
POOL_CHUNK = 5000


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

    def add(self, other: StageTimes) -> None:
        self.fetch_s += other.fetch_s
        self.infer_s += other.infer_s
        self.write_s += other.write_s
        self.examples += other.examples


class Maker:
    """Turns id batches into knowledge with the checkpoint a manifest names."""

    def __init__(
        self,
        bank: MakerBank,
        cache: ModelCache,
        makers: Sequence[str] = MAKERS,
        worker: str = "maker",
    ) -> None:
        self.bank = bank
        self.cache = cache
        self.makers = tuple(makers)
        self.worker = worker
        self.times = StageTimes()
        self._pools: dict[tuple[str, int, str], tuple[list[str], F32]] = {}
        self._pool_lock = threading.Lock()
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
            if kind != "neighbours":
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
        kinds = self.kinds_for(spec, wanted)
        out = Outcome(manifest.namespace, manifest.step)
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
        t2 = time.perf_counter()
        lineage = Lineage(manifest.step, f"{self.worker}", model.fingerprint)
        labels = ex.labels[present]
        modalities = [(ex.modalities or [""] * len(ex.ids))[i] for i in present]
        batches: dict[str, KnowledgeBatch] = {}
        for kind in kinds:
            if kind.startswith("embedding/"):
                sel = [j for j, m in enumerate(modalities) if m == kind.split("/", 1)[1]]
                if sel:
                    batches[kind] = knowledge_batch(
                        kind, [pids[j] for j in sel], emb[sel], probs[sel]
                    )
            elif kind == "neighbours":
                batches[kind] = self._neighbours(spec, model, pids, emb)
            else:
                batches[kind] = knowledge_batch(kind, pids, emb, probs, labels)
        # Kinds are written concurrently: one kind's rows are bound while another's are
        # in flight to Cassandra.
        futures = {
            kind: self._writers.submit(self.bank.write, manifest.namespace, kind, batch, lineage)
            for kind, batch in batches.items()
        }
        for kind, future in futures.items():
            out.written[kind] = future.result()
        t3 = time.perf_counter()
        out.processed = len(pids)
        self.times.add(StageTimes(t1 - t0, t2 - t1, t3 - t2, len(pids)))
        return out

    def _neighbours(
        self, spec: NamespaceSpec, model: LoadedModel, ids: list[str], emb: F32
    ) -> KnowledgeBatch:
        pool_ids, pool = self.pool(spec, model)
        k = spec.dim("neighbours")
        nids, scores = top_k_neighbours(ids, emb, pool_ids, pool, k)
        return neighbours_batch(ids, nids, scores)

    def pool(self, spec: NamespaceSpec, model: LoadedModel) -> tuple[list[str], F32]:
        """The embeddings of every registered example under ``model``, computed once per
        (namespace, step): neighbours are exact among one model generation, complete even
        while a refresh campaign is still writing that generation's embeddings."""
        key = (spec.name, model.step, model.manifest.sha256)
        with self._pool_lock:
            hit = self._pools.get(key)
            if hit is not None:
                return hit
            ids: list[str] = []
            for bucket in range(spec.buckets):
                ids += self.bank.example_ids(spec.name, bucket)
            parts = []
            for s in range(0, len(ids), POOL_CHUNK):
                ex = self.bank.fetch_examples(spec.name, ids[s : s + POOL_CHUNK])
                parts.append(model.infer(ex.features)[0])
            pool = (
                np.concatenate(parts) if parts else np.zeros((0, model.embedding_dim), np.float32)
            )
            for old in [k for k in self._pools if k[0] == spec.name]:
                del self._pools[old]
            self._pools[key] = (ids, pool)
            log.info(
                "neighbour pool for %s step %d: %d embeddings", spec.name, model.step, len(ids)
            )
            return ids, pool
