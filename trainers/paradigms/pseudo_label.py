"""Pseudo-label semi-supervised learning.

Cross-entropy to the bank's pseudo labels (the makers' predictions at the latest
checkpoint) on unlabeled examples whose confidence passes a threshold. Labels improve as
checkpoints improve: the reader follows the namespace's newest knowledge.

* ``thresholds: fixed`` uses a pseudo label from ``threshold`` on. ``adaptive`` sets one
  per class from the unlabeled examples' pseudo labels themselves, as FreeMatch's
  self-adaptive thresholds do (Wang et al., 2023): the global threshold is their mean
  confidence, scaled per class by the class's mean probability over the largest class
  mean. A model confident about everything (small tabular sets) then uses its most
  confident pseudo labels, not all of them; an unsure class gets a lower bar.
* ``align`` (distribution alignment, ReMixMatch: Berthelot et al., 2020) multiplies each
  pseudo-label distribution by the labeled examples' class frequencies over the mean
  pseudo-label distribution, then normalizes: the pseudo labels' class proportions follow
  the labels' instead of drifting to the classes the model favours.
* ``class_balance`` weights each class by its inverse frequency among the used pseudo
  labels (at most 3x), so the majority guess does not take over.

Both adaptive statistics are computed over every unlabeled example of the reader's cache
every ``refresh_every`` steps (no running average needed: the bank holds them all).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

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
    source: Literal["pseudo_label", "propagated"] = "pseudo_label"
    """The knowledge used as pseudo labels: the makers' predictions (``pseudo_label``), or
    the labels spread over the namespace's neighbour graph (``propagated``, label
    spreading by the makers at every checkpoint: needs nothing from this model but its
    embeddings)."""
    thresholds: Literal["fixed", "adaptive"] = "fixed"
    """How a pseudo label is chosen for use: ``fixed`` from ``threshold`` on;
    ``adaptive``: per-class thresholds from the pseudo labels' own confidence."""
    threshold: Number = Field(0.9, ge=0, le=1)
    """Confidence a pseudo label needs to be used (``thresholds: fixed``; with
    ``adaptive``, the bar until the first pseudo labels arrive)."""
    align: Flag = False
    """Distribution alignment of the pseudo labels to the labeled class frequencies."""
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
    _align: Any = PrivateAttr(None)
    """Per class: labeled frequency / mean pseudo-label probability (``align``)."""
    _bars: Any = PrivateAttr(None)
    """Per class: the confidence a pseudo label of that class needs."""

    def bind(self, setup: Setup) -> list[Source]:
        self._source = Source(setup.namespace, self.source, setup.classes)
        self._class_weights = np.ones(setup.classes, np.float32)
        self._align = np.ones(setup.classes, np.float32)
        self._bars = np.full(setup.classes, self.threshold, np.float32)
        return [self._source]

    def _choose(self, values: Any, usable: Any, unlabeled: Any) -> tuple[Any, Any]:
        """``(classes, used)`` of pseudo-label rows: aligned, then past their class's bar."""
        q = values * self._align if self.align else values
        q = q / np.maximum(q.sum(axis=1, keepdims=True), 1e-12)
        classes = q.argmax(axis=1).astype(np.int32)
        confidence = q.max(axis=1)
        return classes, usable & unlabeled & (confidence >= self._bars[classes])

    def signature(self) -> dict[str, ArraySpec]:
        return {"pl_class": ArraySpec("int32"), "pl_w": ArraySpec("float32")}

    def refresh(self, view: View, step: int) -> None:
        """Alignment factors, adaptive per-class bars and inverse-frequency class weights,
        from the pseudo labels of every unlabeled example."""
        adaptive = self.thresholds == "adaptive"
        if not (self.class_balance or self.align or adaptive) or self._source is None:
            return
        if view.reader is None:
            return
        got = view.get(self._source, np.arange(len(view.labels)), step)
        pool = got.usable & ~view.labeled
        classes = len(self._class_weights)
        if not pool.any():
            return
        values = np.asarray(got.values, np.float64)
        if self.align:
            labeled = view.labels[view.labeled]
            prior = np.bincount(labeled, minlength=classes) + 1.0  # smoothed, never 0
            mean = values[pool].mean(axis=0)
            self._align = (prior / prior.sum() / np.maximum(mean, 1e-6)).astype(np.float32)
        if adaptive:
            q = values[pool] * (self._align if self.align else 1.0)
            q = q / np.maximum(q.sum(axis=1, keepdims=True), 1e-12)
            per_class = q.mean(axis=0)
            self._bars = (q.max(axis=1).mean() * per_class / per_class.max()).astype(np.float32)
        if self.class_balance:
            chosen, ok = self._choose(values, got.usable, ~view.labeled)
            counts = np.bincount(chosen[ok], minlength=classes).astype(np.float32)
            if counts.sum() > 0:
                mean_count = counts[counts > 0].mean()
                self._class_weights = np.minimum(
                    np.where(counts > 0, mean_count / np.maximum(counts, 1), 0),
                    MAX_CLASS_WEIGHT,
                ).astype(np.float32)

    def prepare(self, view: View, rows: I64, step: int) -> Arrays:
        assert self._source is not None, "bind() first"
        pl = view.get(self._source, rows, step)
        classes, ok = self._choose(np.asarray(pl.values), pl.usable, ~view.labeled[rows])
        view.note("pseudo_usable", float(pl.usable.mean()))
        view.note("pseudo_used", float(ok.mean()))
        return {
            "pl_class": np.where(ok, classes, 0).astype(np.int32),
            "pl_w": (ok * self._class_weights[classes] * ramp(view, self.burn_in)).astype(
                np.float32
            ),
        }

    def loss(self, knowledge: dict[str, Any], out: Outputs) -> dict[str, Any]:
        import tensorflow as tf

        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(knowledge["pl_class"], out.logits)
        return {"pseudo": self.weight * mean_over_batch(tf, knowledge["pl_w"] * ce, out.logits)}
