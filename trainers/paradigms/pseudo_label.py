"""Pseudo-label semi-supervised learning.

Cross-entropy to pseudo labels from the bank on unlabeled examples, weighted by their
confidence. The reader follows the namespace's newest knowledge.

* ``source: propagated`` (the default) reads the labels the makers spread over the inputs'
  kNN graph (``makers.compute.spread_labels``, class mass normalized: the classes keep the
  labels' proportions); ``pseudo_label`` reads the makers' predictions with the newest
  checkpoint, which sharpen as the model learns (images with augmentation: the demo).
* ``thresholds: soft`` (the default) uses every pseudo label, weighted 1 from its class's
  mean confidence up and by a Gaussian of the shortfall below it, with the class's
  confidence variance (SoftMatch: Chen et al., 2023, with per-class statistics): nothing
  is thrown away, the unsure pseudo labels of a class count less. ``fixed`` uses a pseudo
  label from ``threshold`` on. ``adaptive`` sets a bar per class from the pseudo labels
  themselves, as FreeMatch's self-adaptive thresholds do (Wang et al., 2023): the global
  bar is their mean confidence, scaled per class by the class's mean probability over the
  largest class mean.
* ``align`` (distribution alignment, ReMixMatch: Berthelot et al., 2020) multiplies each
  pseudo-label distribution by the labeled examples' class frequencies over the mean
  pseudo-label distribution, then normalizes: the pseudo labels' class proportions follow
  the labels' instead of drifting to the classes the model favours. Propagated labels
  are aligned by the maker already; for the makers' predictions, turn it on.
* ``class_balance`` weights each class by its inverse frequency among the used pseudo
  labels (at most 3x), so the majority guess does not take over.

The statistics are computed over every unlabeled example of the reader's cache every
``refresh_every`` steps (no running average needed: the bank holds them all). With
``train.holdout``, the same refresh measures the pseudo labels' accuracy on the held-out
labeled examples (``View.held_out``): ``pseudo_accuracy`` (every one that has a pseudo
label), ``pseudo_used_accuracy`` (those past their bar), in the job's history.
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
    source: Literal["pseudo_label", "propagated"] = "propagated"
    """The knowledge used as pseudo labels: the registered labels spread over the inputs'
    kNN graph by the makers (``propagated``: needs nothing from this model), or the
    makers' predictions with the newest checkpoint (``pseudo_label``)."""
    thresholds: Literal["fixed", "adaptive", "soft"] = "soft"
    """How pseudo labels are chosen and weighed: ``soft`` every one, the unsure ones of
    a class weighing less; ``fixed`` from ``threshold`` on; ``adaptive`` past per-class
    bars from the pseudo labels' own confidence."""
    threshold: Number = Field(0.9, ge=0, le=1)
    """Confidence a pseudo label needs to be used (``thresholds: fixed``; with
    ``adaptive``, the bar until the first pseudo labels arrive; unused by ``soft``)."""
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
    _soft: Any = PrivateAttr(None)
    """Per class: ``(means, variances)`` of the confidence of the pseudo labels of that
    class (``soft``)."""

    def bind(self, setup: Setup) -> list[Source]:
        self._source = Source(setup.namespace, self.source, setup.classes)
        self._class_weights = np.ones(setup.classes, np.float32)
        self._align = np.ones(setup.classes, np.float32)
        bar = 0.0 if self.thresholds == "soft" else self.threshold
        self._bars = np.full(setup.classes, bar, np.float32)
        return [self._source]

    def _choose(self, values: Any, usable: Any, unlabeled: Any) -> tuple[Any, Any, Any]:
        """``(classes, used, weights)`` of pseudo-label rows: aligned, then past their
        class's bar; weighted 1, or under ``soft`` by a Gaussian of how far their
        confidence falls below the mean."""
        q = values * self._align if self.align else values
        q = q / np.maximum(q.sum(axis=1, keepdims=True), 1e-12)
        classes = q.argmax(axis=1).astype(np.int32)
        confidence = q.max(axis=1)
        used = usable & unlabeled & (confidence >= self._bars[classes])
        weights = np.ones(len(classes), np.float32)
        if self.thresholds == "soft" and self._soft is not None:
            mean, var = self._soft[0][classes], self._soft[1][classes]
            below = np.exp(-((confidence - mean) ** 2) / (2 * np.maximum(var, 1e-6)))
            weights = np.where(confidence >= mean, 1.0, below).astype(np.float32)
        return classes, used, weights

    def signature(self) -> dict[str, ArraySpec]:
        return {"pl_class": ArraySpec("int32"), "pl_w": ArraySpec("float32")}

    def refresh(self, view: View, step: int) -> None:
        """Alignment factors, adaptive per-class bars and inverse-frequency class weights,
        from the pseudo labels of every unlabeled example."""
        adaptive = self.thresholds == "adaptive"
        held = view.held_out is not None and bool((view.held_out >= 0).any())
        statistics = self.class_balance or self.align or self.thresholds != "fixed" or held
        if not statistics or self._source is None:
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
        if self.thresholds == "soft":
            q = values[pool] * (self._align if self.align else 1.0)
            q = q / np.maximum(q.sum(axis=1, keepdims=True), 1e-12)
            confidence, chosen = q.max(axis=1), q.argmax(axis=1)
            mean = np.full(classes, confidence.mean())
            var = np.full(classes, confidence.var())
            for c in np.unique(chosen):
                mean[c], var[c] = confidence[chosen == c].mean(), confidence[chosen == c].var()
            self._soft = (mean, var)
        if held:
            self._measure(view, values, got.usable)
        if self.class_balance:
            chosen, ok, _ = self._choose(values, got.usable, ~view.labeled)
            counts = np.bincount(chosen[ok], minlength=classes).astype(np.float32)
            if counts.sum() > 0:
                mean_count = counts[counts > 0].mean()
                self._class_weights = np.minimum(
                    np.where(counts > 0, mean_count / np.maximum(counts, 1), 0),
                    MAX_CLASS_WEIGHT,
                ).astype(np.float32)

    def _measure(self, view: View, values: Any, usable: Any) -> None:
        """Accuracy of the pseudo labels on the held-out labeled examples that have one:
        of every such pseudo label, and of those past their class's bar (the ones used)."""
        assert view.held_out is not None
        truth = view.held_out
        classes, used, _ = self._choose(values, usable, truth >= 0)
        have = usable & (truth >= 0)
        if have.any():
            view.stats["pseudo_accuracy"] = float((classes[have] == truth[have]).mean())
            view.stats["pseudo_held_out"] = float(have.sum())
        if used.any():
            view.stats["pseudo_used_accuracy"] = float((classes[used] == truth[used]).mean())

    def prepare(self, view: View, rows: I64, step: int) -> Arrays:
        assert self._source is not None, "bind() first"
        pl = view.get(self._source, rows, step)
        classes, ok, soft = self._choose(np.asarray(pl.values), pl.usable, ~view.labeled[rows])
        view.note("pseudo_usable", float(pl.usable.mean()))
        view.note("pseudo_used", float(ok.mean()))
        weights = ok * soft * self._class_weights[classes] * ramp(view, self.burn_in)
        return {
            "pl_class": np.where(ok, classes, 0).astype(np.int32),
            "pl_w": weights.astype(np.float32),
        }

    def loss(self, knowledge: dict[str, Any], out: Outputs) -> dict[str, Any]:
        import tensorflow as tf

        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(knowledge["pl_class"], out.logits)
        return {"pseudo": self.weight * mean_over_batch(tf, knowledge["pl_w"] * ce, out.logits)}
