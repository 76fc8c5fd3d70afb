"""Codistillation: two or more trainers on one task learn from each other's stale
predictions through the bank.

KL divergence from a peer trainer's predictions (its namespace's ``prediction`` kind) to
this model's, at ``temperature``. The term ramps up linearly over the first ``burn_in`` of
training, while the peer's predictions are still poor.

A prediction is used while it is fresh on the peer's own clock (at most
``train.max_staleness`` steps behind the peer's newest), and while the peer's predictions
keep moving: once its newest step has not changed for ``train.max_staleness`` of this
trainer's steps (the peer stopped, or the worker making its predictions stalled), none is
used until a newer one comes. Otherwise a trainer would go on distilling
a checkpoint of the peer's first few hundred steps for the rest of its training. The two
namespaces' step numbers are never compared (either may have been trained before).
Measured on digits (the demo's peer a, 50 labels; peer b's predictions frozen at its step
100, one run each): splits 0/1/2 ended at 0.837/0.802/0.763 distilling them throughout,
0.852/0.852/0.835 with them left out after 1,000 still steps, the model alone at
0.857/0.854/0.848. A peer that is slower but moving is still distilled.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, PrivateAttr

from carls.trainers.errors import SpecError
from carls.trainers.fields import FieldProblem, Name, Number
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

_NOT_OWN = "the peer is another trainer's namespace, not this one"


class Codistillation(Plugin):
    """Distil a peer trainer's stale predictions."""

    name: ClassVar[str] = "codistillation"
    peer: Name
    """The peer trainer's namespace, whose predictions this trainer distils."""
    weight: Number = Field(0.5, ge=0)
    """Weight of the distillation term in the loss."""
    temperature: Number = Field(1.0, gt=0)
    """Softmax temperature of this model's logits in the KL term."""
    burn_in: Number = Field(0.5, ge=0, le=1)
    """Fraction of training over which the term ramps up from 0 (0: full weight at once)."""
    _source: Source | None = PrivateAttr(None)
    _moved: tuple[int, int] = PrivateAttr((-1, 0))
    """The peer's newest step, and this trainer's step when it was first seen."""

    def check_against(self, namespace: str, modalities: Collection[str]) -> None:
        if self.peer == namespace:
            raise FieldProblem(("peer",), _NOT_OWN)

    def bind(self, setup: Setup) -> list[Source]:
        if self.peer == setup.namespace:
            raise SpecError("peer", _NOT_OWN)
        self._source = Source(self.peer, "prediction", setup.classes)
        self._moved = (-1, 0)
        return [self._source]

    def signature(self) -> dict[str, ArraySpec]:
        assert self._source is not None, "bind() first"
        return {
            "peer_p": ArraySpec("float32", (self._source.dim,)),
            "peer_w": ArraySpec("float32"),
        }

    def prepare(self, view: View, rows: I64, step: int) -> Arrays:
        assert self._source is not None, "bind() first"
        peer = view.get(self._source, rows, step)
        usable = peer.usable
        newest = view.newest(self._source)
        if newest > self._moved[0]:
            self._moved = (newest, step)
        if view.max_staleness is not None and step - self._moved[1] > view.max_staleness:
            usable = np.zeros_like(usable)  # the peer has not moved for too long
        view.note("peer_usable", float(usable.mean()))
        return {
            "peer_p": peer.values.astype(np.float32),
            "peer_w": (usable * ramp(view, self.burn_in)).astype(np.float32),
        }

    def loss(self, knowledge: dict[str, Any], out: Outputs) -> dict[str, Any]:
        import tensorflow as tf

        own = tf.nn.log_softmax(out.logits / self.temperature)
        peer = tf.clip_by_value(knowledge["peer_p"], 1e-7, 1.0)
        kl = tf.reduce_sum(peer * (tf.math.log(peer) - own), 1)
        return {
            "codistill": self.weight * mean_over_batch(tf, knowledge["peer_w"] * kl, out.logits)
        }
