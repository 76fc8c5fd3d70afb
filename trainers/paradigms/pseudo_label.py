"""Pseudo-label semi-supervised learning.

Cross-entropy to the bank's pseudo labels (the makers' predictions at the latest
checkpoint) on unlabeled examples whose confidence passes ``threshold``. With
``class_balance`` each class is weighted by its inverse frequency among the confident
pseudo labels (at most 3x), so the majority guess does not take over. Labels improve as
checkpoints improve: the reader follows the namespace's newest knowledge.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from pydantic import Field, PrivateAttr

from carls.trainers.fields import Flag, Int, Number
from carls.trainers.paradigms.base import (
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

MAX_CLASS_WEIGHT = 3.0


class PseudoLabel(Plugin):
    """Learn from confident pseudo labels of unlabeled examples."""

    name: ClassVar[str] = "pseudo_label"
    threshold: Number = Field(0.9, ge=0, le=1)
    """Confidence a pseudo label needs to be used."""
    weight: Number = Field(1.0, ge=0)
    """Weight of the pseudo-label term in the loss."""
    class_balance: Flag = True
    """Weight classes by inverse frequency among the confident pseudo labels."""
    refresh_every: Int = Field(50, ge=1)
    """Steps between recomputations of the class weights."""
    burn_in: Number = Field(0.0, ge=0, le=1)
    """Fraction of training over which the term's weight ramps up from 0 (0: off)."""
    _source: Source | None = PrivateAttr(None)
    _class_weights: Any = PrivateAttr(None)

    def bind(self, setup: Setup) -> list[Source]:
        self._source = Source(setup.namespace, "pseudo_label", setup.classes)
        self._class_weights = np.ones(setup.classes, np.float32)
        return [self._source]

    def signature(self) -> dict[str, ArraySpec]:
        return {"pl_class": ArraySpec("int32"), "pl_w": ArraySpec("float32")}

    def refresh(self, view: View, step: int) -> None:
        """Inverse-frequency class weights among confident, usable pseudo labels."""
        if not self.class_balance or view.reader is None or self._source is None:
            return
        got = view.get(self._source, np.arange(len(view.labels)), step)
        assert got.classes is not None and got.confidence is not None
        ok = got.usable & (got.confidence >= self.threshold) & ~view.labeled
        classes = len(self._class_weights)
        counts = np.bincount(got.classes[ok], minlength=classes).astype(np.float32)
        if counts.sum() == 0:
            return
        mean = counts[counts > 0].mean()
        self._class_weights = np.minimum(
            np.where(counts > 0, mean / np.maximum(counts, 1), 0), MAX_CLASS_WEIGHT
        ).astype(np.float32)

    def prepare(self, view: View, rows: I64, step: int) -> Arrays:
        assert self._source is not None, "bind() first"
        pl = view.get(self._source, rows, step)
        assert pl.classes is not None and pl.confidence is not None
        ok = pl.usable & (pl.confidence >= self.threshold) & ~view.labeled[rows]
        view.note("pseudo_usable", float(pl.usable.mean()))
        view.note("pseudo_used", float(ok.mean()))
        return {
            "pl_class": np.where(ok, pl.classes, 0).astype(np.int32),
            "pl_w": (
                ok * self._class_weights[np.maximum(pl.classes, 0)] * ramp(view, self.burn_in)
            ).astype(np.float32),
        }

    def loss(self, knowledge: dict[str, Any], out: Outputs) -> dict[str, Any]:
        import tensorflow as tf

        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(knowledge["pl_class"], out.logits)
        return {"pseudo": self.weight * mean_over_batch(tf, knowledge["pl_w"] * ce, out.logits)}
