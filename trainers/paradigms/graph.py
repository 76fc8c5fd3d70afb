"""Graph regularization with neighbours' knowledge from the bank (no neighbour forward pass).

An example's prediction is pulled toward the score-weighted average of its neighbours'
stale class distributions (``target="probabilities"``; labeled neighbours count with their
label), or its embedding toward their stale embeddings (``target="embedding"``).
Neighbour lists come from the neighbours maker; until they arrive, from a kNN graph of the
input features (``bootstrap``) or a user-given graph file (``graph``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import Field, PrivateAttr

from carls.bank.ann import VectorIndex
from carls.trainers.fields import Flag, Int, Number, existing_file
from carls.trainers.paradigms.base import (
    F32,
    I64,
    Arrays,
    ArraySpec,
    Outputs,
    Plugin,
    Setup,
    Source,
    View,
    mean_over_batch,
    ramp,
)

DEFAULT_K = 8
"""Neighbours per example, for paradigms that do not set ``k`` themselves."""
BOOTSTRAP_MAX_EXAMPLES = 50_000
"""Above this many examples no exact feature kNN graph is built (it is quadratic)."""


Target = Literal["embedding", "probabilities"]
"""What the graph term pulls: the embedding, or the predicted class distribution."""


class Graph(Plugin):
    """Pull each example toward its neighbours' stale knowledge."""

    name: ClassVar[str] = "graph"
    weight: Number = Field(0.5, ge=0)
    """Weight of the graph term in the loss."""
    k: Int = Field(DEFAULT_K, ge=1, le=1024)
    """Neighbours per example (the neighbours maker's ``k``)."""
    temperature: Number = Field(0.1, gt=0)
    """Neighbour weights are softmax(score / temperature) over an example's neighbours."""
    bootstrap: Flag = True
    """Until the makers' neighbours arrive, use a kNN graph of the input features."""
    graph: Annotated[Path | None, existing_file(".npz", ".json")] = None
    """A user-given graph (.npz with ``ids`` and ``neighbours``, or JSON {id: [ids]})."""
    target: Target = "embedding"
    """Pull the embedding toward the neighbours' embeddings, or the prediction toward
    their class distributions (``probabilities``)."""
    burn_in: Number = Field(0.0, ge=0, le=1)
    """Fraction of training over which the term's weight ramps up from 0 (0: off)."""
    _neighbours: Source | None = PrivateAttr(None)
    _values: Source | None = PrivateAttr(None)
    _fallback: tuple[I64, F32] | None = PrivateAttr(None)
    _onehot: Any = PrivateAttr(None)
    _dim: int = PrivateAttr(0)

    def bind(self, setup: Setup) -> list[Source]:
        ns = setup.namespace
        self._neighbours = Source(ns, "neighbours", self.k)
        if self.target == "probabilities":
            self._values = Source(ns, "pseudo_label", setup.classes)
        else:
            self._values = Source(ns, "embedding", setup.embedding_dim)
        self._dim = self._values.dim
        self._onehot = np.eye(setup.classes, dtype=np.float32)
        if self.graph is not None:
            index = {i: n for n, i in enumerate(setup.ids)}
            self._fallback = user_graph(Path(self.graph), index, self.k)
        elif (
            self.bootstrap
            and setup.features is not None
            and 1 < len(setup.features) <= BOOTSTRAP_MAX_EXAMPLES
        ):
            self._fallback = feature_graph(setup.features.reshape(len(setup.features), -1), self.k)
        return [self._neighbours, self._values]

    def signature(self) -> dict[str, ArraySpec]:
        if self.target == "probabilities":
            return {"g_q": ArraySpec("float32", (self._dim,)), "g_w": ArraySpec("float32")}
        return {
            "g_emb": ArraySpec("float32", (self.k, self._dim)),
            "g_nw": ArraySpec("float32", (self.k,)),
        }

    def prepare(self, view: View, rows: I64, step: int) -> Arrays:
        assert self._neighbours is not None and self._values is not None, "bind() first"
        nb = view.get(self._neighbours, rows, step)
        assert nb.neighbours is not None
        k = self.k
        nbrs, scores = nb.neighbours[:, :k], nb.values[:, :k]
        have = nb.usable[:, None] & (nbrs >= 0)
        if self._fallback is not None:  # rows the makers have not covered yet
            b_nbrs, b_scores = self._fallback
            fill = ~nb.usable
            nbrs = np.where(fill[:, None], b_nbrs[rows][:, :k], nbrs)
            scores = np.where(fill[:, None], b_scores[rows][:, :k], scores)
            have = have | (fill[:, None] & (nbrs >= 0))
        safe = np.maximum(nbrs, 0)
        values, steps = view.rows(self._values, safe)
        if self.target == "probabilities":
            lab = view.labeled[safe]
            values = np.where(
                lab[..., None], self._onehot[np.maximum(view.labels[safe], 0)], values
            )
            have = have & ((steps >= 0) | lab)
        else:
            values = values / np.maximum(np.linalg.norm(values, axis=-1, keepdims=True), 1e-8)
            have = have & (steps >= 0)
        logits = np.where(have, scores / self.temperature, -np.inf)
        top = np.max(np.where(have, logits, -1e30), axis=1, keepdims=True)
        w = np.where(have, np.exp(logits - top), 0.0)
        total = w.sum(1, keepdims=True)
        w = np.divide(w, total, out=np.zeros_like(w), where=total > 0).astype(np.float32)
        row = (total[:, 0] > 0).astype(np.float32)
        view.note("graph_usable", float(row.mean()))
        scale = np.float32(ramp(view, self.burn_in))
        if self.target == "probabilities":
            q = np.matmul(w[:, None, :], values)[:, 0].astype(np.float32)
            return {"g_q": q, "g_w": row * scale}
        return {"g_emb": values.astype(np.float32), "g_nw": w * scale}

    def loss(self, knowledge: dict[str, Any], out: Outputs) -> dict[str, Any]:
        import tensorflow as tf

        if self.target == "probabilities":
            q = tf.stop_gradient(knowledge["g_q"])
            ce = tf.nn.softmax_cross_entropy_with_logits(q, out.logits)
            term = mean_over_batch(tf, knowledge["g_w"] * ce, out.logits)
        else:
            unit = tf.math.l2_normalize(out.embedding, 1)
            cos = tf.einsum("be,bke->bk", unit, knowledge["g_emb"])
            term = mean_over_batch(tf, knowledge["g_nw"] * (1.0 - cos), out.logits)
        return {"graph": self.weight * term}


def feature_graph(x: F32, k: int) -> tuple[I64, F32]:
    """Cosine kNN of the input features (self excluded): the bootstrap graph. Exact for
    small datasets, from an HNSW index above ``ann.EXACT_BELOW`` examples."""
    n = len(x)
    x = np.asarray(x, np.float32).reshape(n, -1)
    return VectorIndex(x).search(x, min(k, n - 1), self_index=np.arange(n))


def user_graph(path: Path, index: dict[str, int], k: int) -> tuple[I64, F32]:
    """A user-given graph: ``.npz`` (``ids``, ``neighbours`` [, ``scores``]) or JSON
    ``{id: [neighbour ids]}``; unknown ids are ignored."""
    n = len(index)
    nbrs = np.full((n, k), -1, np.int64)
    scores = np.zeros((n, k), np.float32)
    if path.suffix == ".npz":
        data = np.load(path, allow_pickle=False)
        rows = [
            (str(i), [str(x) for x in nb])
            for i, nb in zip(data["ids"], data["neighbours"], strict=True)
        ]
        given = data.get("scores", None)
    else:
        rows = [(str(i), [str(x) for x in nb]) for i, nb in json.loads(path.read_text()).items()]
        given = None
    for r, (id_, nb) in enumerate(rows):
        if id_ not in index:
            continue
        mapped = [index[x] for x in nb if x in index][:k]
        nbrs[index[id_], : len(mapped)] = mapped
        scores[index[id_], : len(mapped)] = given[r][: len(mapped)] if given is not None else 1.0
    return nbrs, scores
