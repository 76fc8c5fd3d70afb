"""The makers' arithmetic: pure numpy functions from model outputs to knowledge.

No I/O and no TensorFlow here: a maker runs the model (``makers.checkpoints``), hands the
``(n, e)`` embeddings and ``(n, c)`` probabilities to these functions and writes the
``KnowledgeBatch`` they build. Every function checks its shapes and raises
``InvalidInputError`` (a ``ValueError``) for a caller's mistake, ``BadModelOutputError``
for NaN/Inf in model outputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from carls.bank.ann import EXACT_BELOW, HnswParams, VectorIndex
from carls.bank.similarity import MAX_SCORE_ELEMENTS, top_k
from carls.bank.types import F32, NO_LABEL, KnowledgeBatch
from carls.makers.errors import BadModelOutputError, InvalidInputError

I32 = npt.NDArray[np.int32]

LOG_FLOOR = 1e-7
"""``difficulty`` takes ``-log(max(p, LOG_FLOOR))``, so a zero probability costs about 16.1."""

METRICS = ("cosine", "dot")


def check_finite(name: str, arr: npt.ArrayLike) -> None:
    """Raise ``BadModelOutputError`` naming ``name`` and its first row holding NaN or Inf."""
    values = np.asarray(arr)
    if values.size == 0 or np.isfinite(values).all():
        return
    rows = values.reshape(values.shape[0], -1) if values.ndim else values.reshape(1, 1)
    first = int(np.argmax(~np.isfinite(rows).all(axis=1)))
    raise BadModelOutputError(f"{name}: NaN or Inf in row {first} of {rows.shape[0]}")


def _matrix(name: str, arr: object, rows: int | None = None) -> F32:
    values = np.asarray(arr)
    if values.ndim != 2:
        raise InvalidInputError(f"{name}: expected a 2-d array, got shape {values.shape}")
    if rows is not None and values.shape[0] != rows:
        raise InvalidInputError(f"{name}: expected {rows} rows, got {values.shape[0]}")
    if not np.issubdtype(values.dtype, np.number):
        raise InvalidInputError(f"{name}: expected numbers, got dtype {values.dtype}")
    out = np.ascontiguousarray(values, dtype=np.float32)
    check_finite(name, out)
    return out


def _probabilities(probs: object, rows: int | None = None) -> F32:
    out = _matrix("probabilities", probs, rows)
    if out.shape[1] < 1:
        raise InvalidInputError("probabilities: need at least one class")
    return out


def _labels(labels: object, rows: int, classes: int) -> I32:
    values = np.asarray(labels)
    if values.shape != (rows,) or not (np.issubdtype(values.dtype, np.integer) or values.size == 0):
        raise InvalidInputError(
            f"labels: expected {rows} ints, got shape {values.shape} of {values.dtype}"
        )
    out = values.astype(np.int32)
    bad = (out < NO_LABEL) | (out >= classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise InvalidInputError(
            f"labels: row {i} holds {int(out[i])}; expected {NO_LABEL} (unlabeled) "
            f"or a class in 0..{classes - 1}"
        )
    return out


def pseudo_labels(probs: npt.ArrayLike) -> tuple[I32, F32, F32]:
    """The argmax class (int32), its probability (the confidence, float32) and the
    probabilities themselves as float32, for ``(n, c)`` class probabilities."""
    p = _probabilities(probs)
    classes = np.argmax(p, axis=1).astype(np.int32)
    confidence = p[np.arange(p.shape[0]), classes].astype(np.float32)
    return classes, confidence, p


def difficulty(probs: npt.ArrayLike, labels: npt.ArrayLike) -> F32:
    """How hard each example is for the model, float32 ``(n,)``; higher is harder.

    * labeled rows (``labels[i] >= 0``): the cross-entropy loss
      ``-log(max(p[label], 1e-7))``, in ``[0, ~16.1]``;
    * unlabeled rows (``labels[i] == -1``): one minus the margin between the two most
      probable classes, ``1 - (p_top1 - p_top2)``, in ``[0, 1]`` (with a single class,
      ``p_top2`` is 0).

    The two scales differ; a curriculum sampler should rank the two groups separately or
    accept that confidently wrong labeled examples rank hardest.
    """
    p = _probabilities(probs)
    n, c = p.shape
    y = _labels(labels, n, c)
    out = np.empty(n, dtype=np.float32)
    labeled = y >= 0
    if labeled.any():
        picked = p[np.flatnonzero(labeled), y[labeled]]
        out[labeled] = -np.log(np.maximum(picked, np.float32(LOG_FLOOR)))
    if (~labeled).any():
        rest = p[~labeled]
        if c == 1:
            top1, top2 = rest[:, 0], np.zeros(rest.shape[0], np.float32)
        else:
            part = np.partition(rest, c - 2, axis=1)
            top1, top2 = part[:, c - 1], part[:, c - 2]
        out[~labeled] = 1.0 - (top1 - top2)
    return out


def top_k_neighbours(
    query_ids: Sequence[str],
    query_vecs: npt.ArrayLike,
    pool_ids: Sequence[str],
    pool_vecs: npt.ArrayLike,
    k: int,
    metric: str = "cosine",
) -> tuple[list[list[str]], F32]:
    """Exact top-k neighbours of each query among the pool, by cosine or dot product.

    A query is never its own neighbour (matched by id). Every row has the same width
    ``k' = min(k, len(pool) - 1)`` when some query id is in the pool, else
    ``min(k, len(pool))``. Neighbours come best first; equal scores go to the lower pool
    index, so results are deterministic. Queries are scored a chunk at a time so memory
    stays below ``MAX_SCORE_ELEMENTS`` scores whatever the pool size. Zero vectors score 0
    under cosine.

    Returns the neighbour ids per query and their scores, float32 ``(n, k')``.
    """
    if metric not in METRICS:
        raise InvalidInputError(f"metric: {metric!r} is not one of {', '.join(METRICS)}")
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise InvalidInputError(f"k: must be an int >= 1, got {k!r}")
    q_ids, p_ids = list(query_ids), list(pool_ids)
    q = _matrix("query_vecs", query_vecs, len(q_ids))
    pool = _matrix("pool_vecs", pool_vecs, len(p_ids))
    if q.shape[1] != pool.shape[1]:
        raise InvalidInputError(
            f"query_vecs have dimension {q.shape[1]}, pool_vecs {pool.shape[1]}"
        )
    position = {pid: j for j, pid in enumerate(p_ids)}
    if len(position) != len(p_ids):
        raise InvalidInputError("pool_ids: an id appears twice")
    self_index = np.array([position.get(qid, -1) for qid in q_ids], dtype=np.int64)
    width = max(0, min(int(k), len(p_ids) - (1 if (self_index >= 0).any() else 0)))
    index_out, scores_out = top_k(
        q,
        pool,
        width,
        cosine=metric == "cosine",
        self_index=self_index,
        max_elements=MAX_SCORE_ELEMENTS,
        check=lambda scores: check_finite("neighbour scores (overflow)", scores),
    )
    return [[p_ids[j] for j in row] for row in index_out.tolist()], scores_out


def index_neighbours(
    query_ids: Sequence[str],
    query_vecs: npt.ArrayLike,
    pool_ids: Sequence[str],
    index: VectorIndex,
    k: int,
    position: Mapping[str, int] | None = None,
) -> tuple[list[list[str]], F32]:
    """``top_k_neighbours`` against a ``VectorIndex`` of the pool (``pool_ids`` name its
    rows, in order): exact when the index is, approximate above its threshold. Widths and
    self-exclusion are ``top_k_neighbours``'s. ``position`` (id -> pool row), when the
    caller keeps one, saves building it per call (a million ids take a fifth of a second)."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise InvalidInputError(f"k: must be an int >= 1, got {k!r}")
    q_ids = list(query_ids)
    p_ids = pool_ids if isinstance(pool_ids, list) else list(pool_ids)
    if len(p_ids) != index.size:
        raise InvalidInputError(f"pool_ids: {len(p_ids)} ids for an index of {index.size}")
    q = _matrix("query_vecs", query_vecs, len(q_ids))
    if q.shape[1] != index.dim:
        raise InvalidInputError(f"query_vecs have dimension {q.shape[1]}, the index {index.dim}")
    if position is None:
        position = {pid: j for j, pid in enumerate(p_ids)}
    self_index = np.array([position.get(qid, -1) for qid in q_ids], dtype=np.int64)
    rows, scores = index.search(q, int(k), self_index=self_index)
    check_finite("neighbour scores (overflow)", scores)
    return [[p_ids[j] for j in row] for row in rows.tolist()], scores


def feature_graph(
    features: npt.ArrayLike,
    k: int,
    *,
    exact_below: int = EXACT_BELOW,
    params: HnswParams | None = None,
) -> npt.NDArray[np.int64]:
    """The ``(n, k')`` row numbers of each row's ``k`` nearest rows of ``features`` by
    Euclidean distance after standardizing each column over the rows (constant columns
    drop out), itself excluded; ``k' = min(k, n - 1)``. The kNN graph of the inputs, which
    label spreading uses where a model's embeddings do not yet separate the classes (few
    labels, data on a low-dimensional manifold).

    Exact under ``exact_below`` rows (the nearest by distance is the best by the inner
    product of ``[z, -|z|^2/2]`` with ``[q, 1]``), from an HNSW graph under the L2 metric
    above (``params``; a row it finds fewer than ``k'`` neighbours for is padded with -1).
    """
    raw = np.asarray(features)
    x = _matrix("features", raw.reshape(len(raw), -1))
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise InvalidInputError(f"k: must be an int >= 1, got {k!r}")
    n = x.shape[0]
    width = min(int(k), n - 1)
    selves = np.arange(n, dtype=np.int64)
    if width < 1:
        return np.zeros((n, 0), np.int64)
    spread = x.std(axis=0, dtype=np.float64)
    scale = np.where(spread > 0, 1.0 / np.where(spread > 0, spread, 1.0), 0.0)
    z = ((x - x.mean(axis=0, dtype=np.float64)) * scale).astype(np.float32)
    if n < exact_below:
        pool = np.hstack([z, -0.5 * (z * z).sum(axis=1, keepdims=True)]).astype(np.float32)
        queries = np.hstack([z, np.ones((n, 1))]).astype(np.float32)
        graph, _ = top_k(queries, pool, width, cosine=False, self_index=selves)
        return graph
    import faiss

    hnsw = params or HnswParams()
    vectors = np.ascontiguousarray(z)
    index = faiss.IndexHNSWFlat(vectors.shape[1], hnsw.connectivity)  # L2
    index.hnsw.efConstruction = hnsw.expansion_add
    index.add(vectors)
    index.hnsw.efSearch = max(2 * hnsw.expansion_search, width + 1)
    _, keys = index.search(vectors, width + 1)
    valid = (keys >= 0) & (keys != selves[:, None])
    take = valid & (np.cumsum(valid, axis=1) <= width)
    out = np.full((n, width), -1, np.int64)
    rows, cols = np.nonzero(take)
    slot = np.cumsum(take, axis=1)[rows, cols] - 1
    out[rows, slot] = keys[rows, cols]
    return out


def spread_labels(
    neighbours: npt.ArrayLike,
    labels: npt.ArrayLike,
    classes: int,
    alpha: float = 0.99,
    iterations: int = 200,
    class_mass: bool = True,
    tolerance: float = 1e-6,
) -> tuple[F32, npt.NDArray[np.bool_]]:
    """Label spreading (Zhou et al., 2004) over a kNN graph: ``(distributions, reached)``.

    ``neighbours`` ``(n, k)`` holds row numbers of each row's neighbours (``-1``: none);
    the graph is their connectivity, made symmetric, normalized as ``D^-1/2 W D^-1/2``.
    ``labels`` ``(n,)`` holds class indices, ``NO_LABEL`` (-1) for unlabeled rows. Each
    iteration sets ``F = alpha S F + (1 - alpha) Y``, until no entry moves by more than
    ``tolerance`` or after ``iterations``. With ``class_mass`` each class's column is then
    scaled so that the classes' total mass follows their share among the labels (class
    mass normalization, Zhu et al., 2003): with ``alpha`` near 1 a class whose labels sit
    in a dense region would otherwise flood its neighbours'. The rows are returned
    normalized to class distributions, ``reached`` False (and the row uniform) where no
    label's path arrives. Sparse throughout: memory and time grow with ``n k``.
    """
    from scipy import sparse

    nb = np.asarray(neighbours)
    if nb.ndim != 2 or nb.dtype.kind not in "iu":
        raise InvalidInputError(f"neighbours: expected an (n, k) int array, got {nb.shape}")
    n = nb.shape[0]
    y = _labels(labels, n, classes)
    if not 0 < alpha < 1:
        raise InvalidInputError(f"alpha: must be in (0, 1), got {alpha}")
    if iterations < 1:
        raise InvalidInputError(f"iterations: must be at least 1, got {iterations}")
    if nb.size and (nb.max(initial=-1) >= n or nb.min(initial=0) < -1):
        raise InvalidInputError(f"neighbours: row numbers must be in [-1, {n})")
    rows = np.repeat(np.arange(n), nb.shape[1])
    cols = nb.reshape(-1)
    keep = (cols >= 0) & (cols != rows)
    w = sparse.csr_matrix(
        (np.ones(int(keep.sum()), np.float32), (rows[keep], cols[keep])), shape=(n, n)
    )
    w = (w.maximum(w.T) > 0).astype(np.float32)  # an edge either way, once, is an edge
    degree = np.asarray(w.sum(axis=1)).reshape(-1)
    inv = np.where(degree > 0, 1.0 / np.sqrt(np.maximum(degree, 1e-12)), 0.0)
    s = sparse.diags(inv) @ w @ sparse.diags(inv)
    seed = np.zeros((n, classes), np.float32)
    known = y >= 0
    seed[np.flatnonzero(known), y[known]] = 1.0
    f = seed.copy()
    for _ in range(iterations):
        moved = alpha * (s @ f) + (1 - alpha) * seed
        done = float(np.abs(moved - f).max(initial=0.0)) <= tolerance
        f = moved
        if done:
            break
    reached = f.sum(axis=1) > 0
    if class_mass and known.any():
        share = np.bincount(y[known], minlength=classes) / known.sum()
        mass = f.sum(axis=0)
        f = f * np.where(mass > 0, share / np.maximum(mass, 1e-30), 0.0)[None, :]
    total = f.sum(axis=1, keepdims=True)
    reached &= total[:, 0] > 0
    out = np.where(reached[:, None], f / np.maximum(total, 1e-30), 1.0 / classes)
    return out.astype(np.float32), reached


# ---------------------------------------------------------------------------------------
# Knowledge batches: one per kind, in the shapes ``bank.types`` documents.


def _ids(ids: Sequence[str], rows: int, what: str) -> list[str]:
    out = list(ids)
    if len(out) != rows:
        raise InvalidInputError(f"{what}: {len(out)} ids for {rows} rows")
    return out


def embedding_batch(ids: Sequence[str], embeddings: npt.ArrayLike) -> KnowledgeBatch:
    """``embedding`` (or ``embedding/<modality>``): the ``(n, e)`` embeddings."""
    values = _matrix("embeddings", embeddings)
    return KnowledgeBatch(_ids(ids, values.shape[0], "embeddings"), values)


def prediction_batch(ids: Sequence[str], probs: npt.ArrayLike) -> KnowledgeBatch:
    """``prediction``: the ``(n, c)`` class probabilities."""
    values = _probabilities(probs)
    return KnowledgeBatch(_ids(ids, values.shape[0], "probabilities"), values)


def pseudo_label_batch(ids: Sequence[str], probs: npt.ArrayLike) -> KnowledgeBatch:
    """``pseudo_label``: probabilities plus the argmax ``classes`` and ``confidence``."""
    classes, confidence, values = pseudo_labels(probs)
    return KnowledgeBatch(
        _ids(ids, values.shape[0], "probabilities"),
        values,
        classes=classes,
        confidence=confidence,
    )


def difficulty_batch(
    ids: Sequence[str], probs: npt.ArrayLike, labels: npt.ArrayLike
) -> KnowledgeBatch:
    """``difficulty``: one float per id, ``(n, 1)`` (see ``difficulty``)."""
    values = difficulty(probs, labels).reshape(-1, 1)
    return KnowledgeBatch(_ids(ids, values.shape[0], "probabilities"), values)


def instructions(probs: npt.ArrayLike, labels: npt.ArrayLike) -> F32:
    """A teacher's instructions to a student, ``(n, 2)`` float32 in ``[0, 1]``: per example
    a ``weight`` and an ``admit_at``.

    * ``weight``: how much the student should count the example: for a labeled row the
      teacher's probability of the label over its top probability (1 when the teacher
      agrees with the label, small for a label it disputes: a suspected mistake); for an
      unlabeled row, the teacher's confidence (its top probability);
    * ``admit_at``: when to show it, as a fraction of the student's schedule: the
      teacher's difficulty on a common 0..1 scale (a labeled row ``1 - p[label]``, an
      unlabeled one ``1 - (p_top1 - p_top2)``): easy examples from the start, hard ones
      later.
    """
    p = _probabilities(probs)
    n, c = p.shape
    y = _labels(labels, n, c)
    out = np.empty((n, 2), np.float32)
    top = p.max(axis=1)
    labeled = y >= 0
    rows = np.flatnonzero(labeled)
    if rows.size:
        picked = p[rows, y[labeled]]
        out[labeled, 0] = picked / np.maximum(top[labeled], np.float32(LOG_FLOOR))
        out[labeled, 1] = 1.0 - picked
    if (~labeled).any():
        out[~labeled, 0] = top[~labeled]
        out[~labeled, 1] = difficulty(p[~labeled], np.full(int((~labeled).sum()), NO_LABEL))
    return np.clip(out, 0.0, 1.0)


def instruction_batch(
    ids: Sequence[str], probs: npt.ArrayLike, labels: npt.ArrayLike
) -> KnowledgeBatch:
    """``instruction``: ``(n, 2)`` weights and admission points (see ``instructions``)."""
    values = instructions(probs, labels)
    return KnowledgeBatch(_ids(ids, values.shape[0], "probabilities"), values)


def neighbours_batch(
    ids: Sequence[str], neighbour_ids: list[list[str]], scores: npt.ArrayLike
) -> KnowledgeBatch:
    """``neighbours``: the ``(n, k')`` scores and ids from ``top_k_neighbours``."""
    values = _matrix("neighbour scores", scores)
    out_ids = _ids(ids, values.shape[0], "neighbour scores")
    if len(neighbour_ids) != len(out_ids) or any(
        len(row) != values.shape[1] for row in neighbour_ids
    ):
        raise InvalidInputError(f"neighbour_ids: expected {len(out_ids)} rows of {values.shape[1]}")
    return KnowledgeBatch(out_ids, values, neighbour_ids=[list(row) for row in neighbour_ids])


def knowledge_batch(
    kind: str,
    ids: Sequence[str],
    embeddings: npt.ArrayLike,
    probs: npt.ArrayLike,
    labels: npt.ArrayLike | None = None,
) -> KnowledgeBatch:
    """The batch of one kind from one inference's outputs.

    ``embedding``/``embedding/<modality>``, ``prediction``, ``pseudo_label``,
    ``difficulty`` and ``instruction`` (which need ``labels``, ``-1`` = unlabeled).
    ``neighbours`` needs a pool: use ``top_k_neighbours`` and ``neighbours_batch``.
    """
    if kind == "embedding" or kind.startswith("embedding/"):
        return embedding_batch(ids, embeddings)
    if kind == "prediction":
        return prediction_batch(ids, probs)
    if kind == "pseudo_label":
        return pseudo_label_batch(ids, probs)
    if kind == "difficulty":
        if labels is None:
            raise InvalidInputError("difficulty: needs labels (-1 where unlabeled)")
        return difficulty_batch(ids, probs, labels)
    if kind == "instruction":
        if labels is None:
            raise InvalidInputError("instruction: needs labels (-1 where unlabeled)")
        return instruction_batch(ids, probs, labels)
    if kind == "neighbours":
        raise InvalidInputError(
            "neighbours: needs a pool of embeddings; use top_k_neighbours and neighbours_batch"
        )
    raise InvalidInputError(f"kind: {kind!r} is not a kind makers compute from one inference")


def knowledge_batches(
    kinds: Sequence[str],
    ids: Sequence[str],
    embeddings: npt.ArrayLike,
    probs: npt.ArrayLike,
    labels: npt.ArrayLike | None = None,
) -> dict[str, KnowledgeBatch]:
    """``knowledge_batch`` for each of ``kinds``, keyed by kind."""
    if isinstance(kinds, str):
        raise InvalidInputError("kinds: expected a sequence of kinds, got one string")
    return {kind: knowledge_batch(kind, ids, embeddings, probs, labels) for kind in kinds}
