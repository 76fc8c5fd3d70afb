"""Exact top-k similarity search in numpy: the one implementation behind the makers'
``neighbours`` kind and the trainers' bootstrap graph of input features (both may import
``bank``; they never import each other)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from carls.bank.types import F32, I64

MAX_SCORE_ELEMENTS = 1 << 25
"""Score at most this many query x pool pairs at a time (128 MiB of float32)."""


def unit_rows(x: F32) -> F32:
    """Rows scaled to length 1; zero rows stay zero (they score 0 under cosine)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms == 0, 1.0, norms)).astype(np.float32)


def top_k(
    queries: F32,
    pool: F32,
    width: int,
    *,
    cosine: bool = True,
    self_index: I64 | None = None,
    max_elements: int = MAX_SCORE_ELEMENTS,
    check: Callable[[F32], None] | None = None,
) -> tuple[I64, F32]:
    """Per query row the ``width`` best pool rows and their scores, best first.

    Scores are cosine similarities (``cosine``) or dot products. ``self_index[i] >= 0``
    names a pool row query ``i`` may not pick (itself); ``width`` must leave enough rows
    eligible. Equal scores go to the lower pool row, so results are deterministic.
    Queries are scored a chunk at a time, under ``max_elements`` scores whatever the pool
    size; ``check`` sees each chunk's raw scores (to refuse overflow, say).
    """
    n = queries.shape[0]
    index_out = np.zeros((n, width), dtype=np.int64)
    scores_out = np.zeros((n, width), dtype=np.float32)
    if width <= 0 or n == 0:
        return index_out, scores_out
    if cosine:
        queries, pool = unit_rows(queries), unit_rows(pool)
    selves = np.full(n, -1, np.int64) if self_index is None else self_index
    pool_t = np.ascontiguousarray(pool.T)
    chunk = max(1, min(1024, max_elements // pool.shape[0]))
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        with np.errstate(over="ignore", invalid="ignore"):
            scores = queries[start:stop] @ pool_t
        if check is not None:
            check(scores)
        index_out[start:stop], scores_out[start:stop] = _top_k_rows(
            scores, selves[start:stop], width
        )
    return index_out, scores_out


def _top_k_rows(scores: F32, self_index: I64, width: int) -> tuple[I64, F32]:
    """Per row the ``width`` best columns (ties to the lower column), best first."""
    rows = np.arange(scores.shape[0])
    eligible = np.ones(scores.shape, dtype=bool)
    has_self = self_index >= 0
    eligible[rows[has_self], self_index[has_self]] = False
    masked = np.where(eligible, scores, -np.inf)
    # The width-th best score per row; everything above it is in, ties at it by column.
    threshold = -np.partition(-masked, width - 1, axis=1)[:, width - 1 : width]
    above = eligible & (masked > threshold)
    at = eligible & (masked == threshold)
    need = width - above.sum(axis=1, keepdims=True)
    chosen = above | (at & (np.cumsum(at, axis=1) <= need))
    columns: npt.NDArray[np.int64] = np.nonzero(chosen)[1].reshape(scores.shape[0], width)
    picked = np.take_along_axis(masked, columns, axis=1)
    order = np.argsort(-picked, axis=1, kind="stable")
    return (
        np.take_along_axis(columns, order, axis=1),
        np.take_along_axis(picked, order, axis=1).astype(np.float32),
    )
