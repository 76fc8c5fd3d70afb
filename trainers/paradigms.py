"""The learning paradigms: what each reads from the bank and the loss terms it adds.

Knowledge is prepared on the host from the reader's cache (a gather, no waiting) into a
batch dict; ``loss_terms`` turns it into loss inside the compiled step. Every term is
masked where knowledge is missing or older than ``max_staleness``.

* **supervised** — cross-entropy on the labeled batch; no knowledge.
* **pseudo_label** — cross-entropy to the bank's pseudo labels on unlabeled examples whose
  confidence passes ``threshold``; ``class_balance`` weights classes by inverse frequency
  among the confident pseudo labels, so the majority guess does not take over.
* **graph** — graph regularization with no neighbour forward pass: an unlabeled example's
  prediction is pulled toward the score-weighted average of its neighbours' stale class
  distributions (``target: probabilities``; labeled neighbours count with their label), or
  its embedding toward their stale embeddings (``target: embedding``). Neighbours come from
  the neighbours maker; until they arrive, from a kNN graph of the input features
  (``bootstrap``) or a user-given graph file.
* **pseudo_label_graph** — both.
* **curriculum** — labeled batches sampled from the easiest fraction of examples by the
  maker's difficulty, the fraction growing with a pacing schedule.
* **codistillation** — KL divergence to a peer trainer's stale predictions (its namespace's
  ``prediction`` kind), on examples of both; the term ramps up linearly over the first half
  of training (burn-in), while the peer's predictions are still poor.
* **multimodal** — cosine alignment of this modality's embedding with the other modalities'
  stale embeddings (``embedding/<modality>`` in their namespaces).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from carls.bank.similarity import top_k
from carls.trainers.errors import SpecError
from carls.trainers.reader import KnowledgeReader
from carls.trainers.spec import (
    CodistillationParams,
    CurriculumParams,
    GraphParams,
    JobSpec,
    MultimodalParams,
    PseudoLabelGraphParams,
    PseudoLabelParams,
)

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


@dataclass(slots=True)
class Terms:
    """The knowledge terms of one paradigm, with their weights and what they read."""

    pseudo: PseudoLabelParams | None = None
    graph: GraphParams | None = None
    curriculum: CurriculumParams | None = None
    codistill: CodistillationParams | None = None
    multimodal: MultimodalParams | None = None
    peers: dict[str, str] = field(default_factory=dict)

    @property
    def uses_unlabeled(self) -> bool:
        return any(
            t is not None for t in (self.pseudo, self.graph, self.codistill, self.multimodal)
        )


def terms_of(spec: JobSpec) -> Terms:
    p = spec.paradigm.params
    t = Terms()
    if isinstance(p, PseudoLabelParams):
        t.pseudo = p
    elif isinstance(p, GraphParams):
        t.graph = p
    elif isinstance(p, PseudoLabelGraphParams):
        t.pseudo = PseudoLabelParams(p.threshold, p.pseudo_weight, p.class_balance)
        t.graph = GraphParams(p.graph_weight, p.k, p.temperature, p.bootstrap, p.graph, p.target)
    elif isinstance(p, CurriculumParams):
        t.curriculum = p
    elif isinstance(p, CodistillationParams):
        t.codistill = p
    elif isinstance(p, MultimodalParams):
        t.multimodal = p
        t.peers = {o: peer_namespace(spec.namespace, p.modality, o) for o in p.others}
    return t


def peer_namespace(namespace: str, modality: str, other: str) -> str:
    """Multimodal trainers of one task use ``<task>_<modality>`` namespaces."""
    suffix = f"_{modality}"
    if not namespace.endswith(suffix):
        raise SpecError(
            "namespace",
            f"a multimodal trainer's namespace ends with _{modality} "
            f"(e.g. task{suffix}), so its peers' are task_<other>",
        )
    return namespace[: -len(suffix)] + f"_{other}"


def sources(spec: JobSpec, terms: Terms, classes: int) -> list[tuple[str, str, int]]:
    """What the knowledge reader follows for this job: (namespace, kind, dim)."""
    ns, out = spec.namespace, []
    if terms.pseudo is not None or (
        terms.graph is not None and terms.graph.target == "probabilities"
    ):
        out.append((ns, "pseudo_label", classes))
    if terms.graph is not None:
        out.append((ns, "neighbours", terms.graph.k))
        if terms.graph.target == "embedding":
            out.append((ns, "embedding", spec.model.embedding_dim))
    if terms.curriculum is not None:
        out.append((ns, "difficulty", 1))
    if terms.codistill is not None:
        out.append((terms.codistill.peer, "prediction", classes))
    if terms.multimodal is not None:
        out += [
            (peer, f"embedding/{o}", spec.model.embedding_dim) for o, peer in terms.peers.items()
        ]
    return out


def feature_graph(x: F32, k: int) -> tuple[I64, F32]:
    """Exact cosine kNN of the input features (self excluded): the bootstrap graph."""
    n = len(x)
    return top_k(
        np.asarray(x, np.float32), np.asarray(x, np.float32), min(k, n - 1), self_index=np.arange(n)
    )


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


class KnowledgeBatcher:
    """Builds the knowledge part of each training batch from the reader's cache."""

    def __init__(
        self,
        spec: JobSpec,
        terms: Terms,
        reader: KnowledgeReader | None,
        labels: npt.NDArray[np.int32],
        labeled: npt.NDArray[np.bool_],
        classes: int,
        bootstrap: tuple[I64, F32] | None,
    ) -> None:
        self.spec, self.terms, self.reader = spec, terms, reader
        self.labels, self.labeled, self.classes = labels, labeled, classes
        self.bootstrap = bootstrap
        self.class_weights = np.ones(classes, np.float32)
        self.onehot = np.eye(classes, dtype=np.float32)
        self.stats: dict[str, float] = {}

    def refresh_class_weights(self, step: int) -> None:
        """Inverse-frequency class weights among confident, usable pseudo labels."""
        pseudo = self.terms.pseudo
        if pseudo is None or not pseudo.class_balance or self.reader is None:
            return
        ns = self.spec.namespace
        every = np.arange(len(self.labels))
        got = self.reader.get(ns, "pseudo_label", every, step, self.spec.train.max_staleness)
        assert got.classes is not None and got.confidence is not None
        ok = got.usable & (got.confidence >= pseudo.threshold) & ~self.labeled
        counts = np.bincount(got.classes[ok], minlength=self.classes).astype(np.float32)
        if counts.sum() == 0:
            return
        mean = counts[counts > 0].mean()
        self.class_weights = np.minimum(
            np.where(counts > 0, mean / np.maximum(counts, 1), 0), 3.0
        ).astype(np.float32)

    def knowledge(self, idx: I64, step: int) -> dict[str, Any]:
        """Tensors (as numpy) for the knowledge terms of the batch ``idx``."""
        out: dict[str, Any] = {}
        if self.reader is None:
            return out
        ns, ms = self.spec.namespace, self.spec.train.max_staleness
        t = self.terms
        if t.pseudo is not None:
            pl = self.reader.get(ns, "pseudo_label", idx, step, ms)
            assert pl.classes is not None and pl.confidence is not None
            ok = pl.usable & (pl.confidence >= t.pseudo.threshold) & ~self.labeled[idx]
            out["pl_class"] = np.where(ok, pl.classes, 0).astype(np.int32)
            out["pl_w"] = (ok * self.class_weights[np.maximum(pl.classes, 0)]).astype(np.float32)
            self.note("pseudo_usable", float(pl.usable.mean()))
            self.note("pseudo_used", float(ok.mean()))
        if t.graph is not None:
            out.update(self._graph(idx, step))
        if t.codistill is not None:
            peer = self.reader.get(t.codistill.peer, "prediction", idx, step, ms)
            out["peer_p"] = peer.values
            out["peer_w"] = peer.usable.astype(np.float32)
            self.note("peer_usable", float(peer.usable.mean()))
        if t.multimodal is not None:
            embs, masks = [], []
            for o, peer_ns in t.peers.items():
                got = self.reader.get(peer_ns, f"embedding/{o}", idx, step, ms)
                embs.append(got.values)
                masks.append(got.usable)
            out["other_e"] = np.stack(embs, 1)
            out["other_w"] = np.stack(masks, 1).astype(np.float32)
            self.note("other_usable", float(np.mean(masks)))
        return out

    def _graph(self, idx: I64, step: int) -> dict[str, Any]:
        assert self.reader is not None and self.terms.graph is not None
        g = self.terms.graph
        ns, ms = self.spec.namespace, self.spec.train.max_staleness
        nb = self.reader.get(ns, "neighbours", idx, step, ms)
        assert nb.neighbours is not None
        nbrs, scores = nb.neighbours[:, : g.k], nb.values[:, : g.k]
        have = nb.usable[:, None] & (nbrs >= 0)
        if self.bootstrap is not None:  # rows the makers have not covered yet
            b_nbrs, b_scores = self.bootstrap
            fill = ~nb.usable
            nbrs = np.where(fill[:, None], b_nbrs[idx][:, : g.k], nbrs)
            scores = np.where(fill[:, None], b_scores[idx][:, : g.k], scores)
            have = have | (fill[:, None] & (nbrs >= 0))
        safe = np.maximum(nbrs, 0)
        if g.target == "probabilities":
            probs, steps = self.reader.rows(ns, "pseudo_label", safe)
            known = steps >= 0
            lab = self.labeled[safe]
            probs = np.where(lab[..., None], self.onehot[self.labels[safe]], probs)
            have = have & (known | lab)
        else:
            vecs, steps = self.reader.rows(ns, "embedding", safe)
            vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=-1, keepdims=True), 1e-8)
            have = have & (steps >= 0)
        logits = np.where(have, scores / g.temperature, -np.inf)
        top = np.max(np.where(have, logits, -1e30), axis=1, keepdims=True)
        w = np.where(have, np.exp(logits - top), 0.0)
        total = w.sum(1, keepdims=True)
        w = np.divide(w, total, out=np.zeros_like(w), where=total > 0).astype(np.float32)
        row = (total[:, 0] > 0).astype(np.float32)
        self.note("graph_usable", float(row.mean()))
        if g.target == "probabilities":
            q = np.einsum("bk,bkc->bc", w, probs).astype(np.float32)
            return {"g_q": q, "g_w": row}
        return {"g_emb": vecs.astype(np.float32), "g_nw": w}

    def note(self, key: str, value: float) -> None:
        old = self.stats.get(key)
        self.stats[key] = value if old is None else 0.9 * old + 0.1 * value


def curriculum_pool(
    difficulty: F32, usable: npt.NDArray[np.bool_], candidates: I64, fraction: float
) -> I64:
    """The easiest ``fraction`` of ``candidates`` by difficulty (unknown = median);
    ``difficulty`` and ``usable`` are the candidates' own rows."""
    d = difficulty.reshape(-1)
    known = usable
    fill = float(np.median(d[known])) if known.any() else 0.0
    d = np.where(known, d, fill)
    keep = max(1, round(fraction * len(candidates)))
    return candidates[np.argsort(d, kind="stable")[:keep]]


def pacing(p: CurriculumParams, progress: float) -> float:
    """Fraction of examples eligible at ``progress`` (0..1 of training)."""
    x = min(1.0, progress / p.full_at)
    if p.pacing == "linear":
        f = x
    elif p.pacing == "root":
        f = x**0.5
    else:
        f = 0.0 if x < 0.5 else 1.0
    return p.start_fraction + (1 - p.start_fraction) * f


def loss_terms(
    tf: Any, batch: dict[str, Any], emb_u: Any, logits_u: Any, terms: Terms
) -> dict[str, Any]:
    """The knowledge loss terms, inside the compiled step (``tf`` is TensorFlow)."""
    out: dict[str, Any] = {}
    n = tf.cast(tf.shape(logits_u)[0], tf.float32)
    weights = {
        "pseudo": terms.pseudo.weight if terms.pseudo else 0.0,
        "graph": terms.graph.weight if terms.graph else 0.0,
        "codistill": terms.codistill.weight if terms.codistill else 0.0,
        "align": terms.multimodal.weight if terms.multimodal else 0.0,
    }
    temperature = terms.codistill.temperature if terms.codistill else 1.0
    if "pl_class" in batch:
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(batch["pl_class"], logits_u)
        out["pseudo"] = weights["pseudo"] * tf.reduce_sum(batch["pl_w"] * ce) / n
    if "g_q" in batch:
        ce = tf.nn.softmax_cross_entropy_with_logits(tf.stop_gradient(batch["g_q"]), logits_u)
        out["graph"] = weights["graph"] * tf.reduce_sum(batch["g_w"] * ce) / n
    if "g_emb" in batch:
        unit = tf.math.l2_normalize(emb_u, 1)
        cos = tf.einsum("be,bke->bk", unit, batch["g_emb"])
        out["graph"] = weights["graph"] * tf.reduce_sum(batch["g_nw"] * (1.0 - cos)) / n
    if "peer_p" in batch:
        own = tf.nn.log_softmax(logits_u / temperature)
        peer = tf.clip_by_value(batch["peer_p"], 1e-7, 1.0)
        kl = tf.reduce_sum(peer * (tf.math.log(peer) - own), 1)
        out["codistill"] = weights["codistill"] * tf.reduce_sum(batch["peer_w"] * kl) / n
    if "other_e" in batch:
        unit = tf.math.l2_normalize(emb_u, 1)
        others = tf.math.l2_normalize(batch["other_e"], 2)
        cos = tf.einsum("be,bme->bm", unit, others)
        w = batch["other_w"]
        out["align"] = (
            weights["align"] * tf.reduce_sum(w * (1.0 - cos)) / tf.maximum(tf.reduce_sum(w), 1.0)
        )
    return out
