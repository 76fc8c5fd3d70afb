"""Nearest-neighbour search over one model generation's vectors: exact below a size
threshold, an HNSW graph (faiss) above it.

``VectorIndex`` is what the neighbours maker builds once per (namespace, step) and queries
for every id batch. Exact search (``similarity.top_k``) stays the reference: small pools use
it (``exact_below``), and the recall of the approximate index is measured against it.
Memory is the vectors (4 bytes x dim per id) plus the graph (4 bytes x 2 x
``connectivity`` links per id at the base layer, a few more above): 64-d at connectivity 16
is about 0.4 GB per million ids; nothing is N x N.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from carls.bank.similarity import top_k, unit_rows
from carls.bank.types import F32, I64

MAGIC = b"carls-vector-index\n"
"""The first bytes of a saved index (``VectorIndex.save``)."""
EXACT_BELOW = 20_000
"""Pools smaller than this are searched exactly (and deterministically)."""
CALIBRATION_QUERIES = 256
"""Pool rows whose exact neighbours measure an index's recall after its build."""
MAX_EXPANSION = 1024
"""The most candidates per query calibration raises ef to."""


@dataclass(frozen=True)
class HnswParams:
    """The HNSW graph's parameters (the original paper's M, efConstruction, ef)."""

    connectivity: int = 16
    """Links per node and layer (M): more is better recall, more memory and build time."""
    expansion_add: int = 40
    """Candidates considered when linking a new vector (efConstruction)."""
    expansion_search: int = 24
    """The fewest candidates considered per query (ef); raised to k when k is larger, and
    by calibration until ``recall_target`` is met."""
    recall_target: float = 0.97
    """After the build, recall@10 is measured on ``CALIBRATION_QUERIES`` pool rows against
    exact search, and ef raised (x1.5 a time, up to ``MAX_EXPANSION``) until it reaches
    this: easy data are searched cheaply, hard data (overlapping clusters) still well.
    0 turns calibration off.

    The defaults were measured on 1M 64-d embeddings of features near a 16-d subspace
    (README, "Neighbours"): efConstruction 40 builds in 41 s on two cores (100: 97 s), and
    ef 24 / 36 / 48 reach recall@10 0.961 / ~0.975 / 0.980 with all 1M queried in
    20 / ~30 / 38 s (100 and 64: 0.998 in 84 s)."""


class VectorIndex:
    """The pool rows of one model generation, searchable by cosine or dot product.

    ``search`` returns, per query, pool row numbers and scores, best first, like
    ``similarity.top_k``: exact when the pool is under ``exact_below`` rows, else from an
    HNSW graph (approximate: measured recall@10 against exact search is in the README)."""

    def __init__(
        self,
        vectors: F32,
        *,
        cosine: bool = True,
        exact_below: int = EXACT_BELOW,
        params: HnswParams | None = None,
        threads: int = 0,
    ) -> None:
        pool = np.ascontiguousarray(vectors, dtype=np.float32)
        if pool.ndim != 2:
            raise ValueError(f"vectors: expected a 2-d array, got shape {pool.shape}")
        self.cosine = cosine
        self.params = params or HnswParams()
        self.threads = threads
        self.size: int = int(pool.shape[0])
        self.dim: int = int(pool.shape[1])
        self.exact = self.size < exact_below
        self._pool = unit_rows(pool) if cosine else pool
        self._graph: Any = None
        self.ef = self.params.expansion_search
        """Candidates per query the search uses (``HnswParams.expansion_search``, raised by
        calibration)."""
        self.recall: float | None = None
        """recall@10 measured by calibration on a sample of the pool (None: exact, or not
        calibrated)."""
        if not self.exact:
            self._graph = self._build()

    def _build(self) -> Any:
        import faiss

        if self.threads > 0:
            faiss.omp_set_num_threads(self.threads)
        graph = faiss.IndexHNSWFlat(self.dim, self.params.connectivity, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = self.params.expansion_add
        graph.add(self._pool)
        if self.params.recall_target > 0:
            self._calibrate(graph)
        self._pool = np.zeros((0, self.dim), np.float32)  # the graph holds the vectors
        return graph

    def _calibrate(self, graph: Any) -> None:
        """Raise ``ef`` until recall@10 on a fixed sample of pool rows reaches the target."""
        rows = np.random.default_rng(0).choice(
            self.size, size=min(CALIBRATION_QUERIES, self.size), replace=False
        )
        k = min(10, self.size - 1)
        if k < 1:  # a one-row pool: nothing to find
            return
        truth, _ = top_k(self._pool[rows], self._pool, k, cosine=False, self_index=rows)
        ef = self.ef
        while True:
            graph.hnsw.efSearch = max(ef, k + 1)
            _, keys = graph.search(self._pool[rows], k + 1)
            found = [set(r[r != s][:k].tolist()) for r, s in zip(keys, rows, strict=True)]
            self.recall = float(
                np.mean([len(f & set(t.tolist())) / k for f, t in zip(found, truth, strict=True)])
            )
            self.ef = ef
            if self.recall >= self.params.recall_target or ef >= MAX_EXPANSION:
                return
            ef = min(MAX_EXPANSION, max(ef + 1, int(ef * 1.5)))

    def _vectors(self) -> F32:
        """The pool's (unit, under cosine) vectors, from the graph when there is one."""
        if self._graph is None:
            return self._pool
        return np.asarray(self._graph.reconstruct_n(0, self.size), dtype=np.float32)

    def vectors(self, rows: I64) -> F32:
        """The pool's vectors at ``rows`` (unit vectors, under cosine)."""
        picked = np.asarray(rows, dtype=np.int64)
        if self._graph is None:
            return self._pool[picked]
        return np.asarray(self._graph.reconstruct_batch(picked), dtype=np.float32)

    @property
    def memory_bytes(self) -> int:
        """Bytes held: the vectors, and the graph's links when there is one."""
        if self._graph is None:
            return int(self._pool.nbytes)
        hnsw = self._graph.hnsw
        links = 4 * (hnsw.neighbors.size() + hnsw.levels.size()) + 8 * hnsw.offsets.size()
        return 4 * self.size * self.dim + int(links)

    def save(self, path: Path, ids: list[str]) -> None:
        """Write the index and the ids naming its rows to ``path``, in one file: ``MAGIC``,
        a length-prefixed JSON header, the ids (UTF-8, one per line), then the vectors
        (exact) or the faiss graph, streamed (no second copy in memory)."""
        if len(ids) != self.size:
            raise ValueError(f"ids: {len(ids)} for an index of {self.size}")
        names = "\n".join(ids).encode()
        header = json.dumps(
            {
                "size": self.size,
                "dim": self.dim,
                "cosine": self.cosine,
                "exact": self.exact,
                "params": asdict(self.params),
                "ef": self.ef,
                "recall": self.recall,
                "ids_bytes": len(names),
            }
        ).encode()
        with Path(path).open("wb") as f:
            f.write(MAGIC + struct.pack("<Q", len(header)) + header + names)
            if self._graph is None:
                f.write(self._pool.tobytes())  # exact pools are small
            else:
                import faiss

                sink = faiss.PyCallbackIOWriter(f.write)  # type: ignore[attr-defined]
                faiss.write_index(self._graph, sink)

    @classmethod
    def load(cls, path: Path, threads: int = 0) -> tuple[list[str], VectorIndex]:
        """The ids and the index ``save`` wrote to ``path``; ``ValueError`` if it is not one."""
        with Path(path).open("rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                raise ValueError(f"{path}: not a saved vector index")
            (length,) = struct.unpack("<Q", f.read(8))
            head = json.loads(f.read(length))
            raw = f.read(head["ids_bytes"])
            ids = raw.decode().split("\n") if head["size"] else []
            if len(ids) != head["size"]:
                raise ValueError(f"{path}: {len(ids)} ids for an index of {head['size']}")
            index = cls.__new__(cls)
            index.cosine, index.exact = bool(head["cosine"]), bool(head["exact"])
            index.params, index.threads = HnswParams(**head["params"]), threads
            index.ef = int(head.get("ef", index.params.expansion_search))
            index.recall = head.get("recall")
            index.size, index.dim = int(head["size"]), int(head["dim"])
            index._graph = None
            if index.exact:
                data = f.read(4 * index.size * index.dim)
                pool = np.frombuffer(data, np.float32)
                if pool.size != index.size * index.dim:
                    raise ValueError(f"{path}: truncated")
                index._pool = pool.reshape(index.size, index.dim).copy()
            else:
                import faiss

                if threads > 0:
                    faiss.omp_set_num_threads(threads)
                index._pool = np.zeros((0, index.dim), np.float32)
                index._graph = faiss.read_index(
                    faiss.PyCallbackIOReader(f.read)  # type: ignore[attr-defined]
                )
                if index._graph.ntotal != index.size or index._graph.d != index.dim:
                    raise ValueError(f"{path}: the graph does not match its header")
        return ids, index

    def search(self, queries: F32, k: int, *, self_index: I64 | None = None) -> tuple[I64, F32]:
        """Per query row the ``width`` best pool rows and their scores, best first, where
        ``width = min(k, size - 1)`` if some ``self_index[i] >= 0`` (query ``i`` is pool row
        ``self_index[i]`` and may not pick itself), else ``min(k, size)``."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        n = q.shape[0]
        selves = np.full(n, -1, np.int64) if self_index is None else np.asarray(self_index)
        width = max(0, min(k, self.size - (1 if (selves >= 0).any() else 0)))
        if self._graph is None or width == 0 or n == 0:
            return top_k(q, self._vectors(), width, cosine=self.cosine, self_index=selves)
        if self.cosine:
            q = unit_rows(q)
        ask = width + 1  # one more, in case a query finds itself
        self._graph.hnsw.efSearch = max(self.ef, ask)
        scores, keys = self._graph.search(q, ask)
        valid = (keys >= 0) & (keys != selves[:, None])
        # keep the first ``width`` valid columns of each row, in the graph's (best first) order
        take = valid & (np.cumsum(valid, axis=1) <= width)
        short = take.sum(axis=1) < width
        index_out = np.zeros((n, width), np.int64)
        scores_out = np.zeros((n, width), np.float32)
        full = ~short
        if full.any():
            cols = np.nonzero(take[full])[1].reshape(-1, width)
            index_out[full] = np.take_along_axis(keys[full], cols, axis=1)
            scores_out[full] = np.take_along_axis(scores[full], cols, axis=1)
        if short.any():  # the graph returned too few (tiny or disconnected): exact for these
            rows = np.flatnonzero(short)
            index_out[rows], scores_out[rows] = top_k(
                q[rows], self._vectors(), width, cosine=False, self_index=selves[rows]
            )
        return index_out, scores_out
