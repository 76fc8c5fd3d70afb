"""Curriculum learning: easy examples first, by the makers' difficulty.

The eligible set is the easiest ``fraction`` of the labeled examples by their latest
difficulty (unknown difficulty counts as the median), the fraction growing from
``start_fraction`` to 1 by ``full_at`` of training along a ``pacing`` schedule. Inside
``fit`` (the library, and ``carls trainer``) the paradigm weights the supervised term
(``supervised_weights``: 1 for eligible rows, 0 for the others), the objective of
sampling batches from the eligible set in expectation; a loop of one's own can draw its
labeled batches from ``pool`` instead.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field, PrivateAttr

from carls.trainers.fields import Number
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
)


class Curriculum(Plugin):
    """Train on the easiest examples first, admitting harder ones on a schedule."""

    name: ClassVar[str] = "curriculum"
    pacing: Literal["linear", "root", "step"] = "linear"
    """How the eligible fraction grows: linearly, as a square root, or in one step."""
    start_fraction: Number = Field(0.3, gt=0, le=1)
    """Fraction of the data (easiest first) available at step 0."""
    full_at: Number = Field(0.7, gt=0, le=1)
    """Fraction of the steps after which all the data is available."""
    _source: Source | None = PrivateAttr(None)

    def bind(self, setup: Setup) -> list[Source]:
        self._source = Source(setup.namespace, "difficulty", 1)
        return [self._source]

    def signature(self) -> dict[str, ArraySpec]:
        return {}

    def prepare(self, view: View, rows: I64, step: int) -> Arrays:
        return {}

    def loss(self, knowledge: dict[str, Any], out: Outputs) -> dict[str, Any]:
        return {}

    def fraction(self, progress: float) -> float:
        """Fraction of examples eligible at ``progress`` (0..1 of training)."""
        x = min(1.0, progress / self.full_at)
        if self.pacing == "linear":
            f = x
        elif self.pacing == "root":
            f = x**0.5
        else:
            f = 0.0 if x < 0.5 else 1.0
        return self.start_fraction + (1 - self.start_fraction) * f

    def pool(self, view: View, candidates: I64, step: int) -> I64:
        """The eligible ``candidates`` now: the easiest fraction by difficulty."""
        assert self._source is not None, "bind() first"
        diff = view.get(self._source, candidates, step)
        view.note("difficulty_usable", float(diff.usable.mean()))
        return easiest(diff.values, diff.usable, candidates, self.fraction(view.progress))

    def supervised_weights(self, view: View, rows: I64, step: int) -> F32:
        eligible = self.pool(view, np.flatnonzero(view.labeled), step)
        return np.isin(rows, eligible).astype(np.float32)


def easiest(
    difficulty: F32, usable: npt.NDArray[np.bool_], candidates: I64, fraction: float
) -> I64:
    """The easiest ``fraction`` of ``candidates`` by difficulty (unknown = median);
    ``difficulty`` and ``usable`` are the candidates' own rows."""
    d = difficulty.reshape(-1)
    fill = float(np.median(d[usable])) if usable.any() else 0.0
    d = np.where(usable, d, fill)
    keep = max(1, round(fraction * len(candidates)))
    return candidates[np.argsort(d, kind="stable")[:keep]]
