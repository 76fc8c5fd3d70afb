"""Codistillation: two or more trainers on one task learn from each other's stale
predictions through the bank.

KL divergence from a peer trainer's predictions (its namespace's ``prediction`` kind) to
this model's, at ``temperature``. The term ramps up linearly over the first half of
training (burn-in), while the peer's predictions are still poor.
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

    def check_against(self, namespace: str, modalities: Collection[str]) -> None:
        if self.peer == namespace:
            raise FieldProblem(("peer",), _NOT_OWN)

    def bind(self, setup: Setup) -> list[Source]:
        if self.peer == setup.namespace:
            raise SpecError("peer", _NOT_OWN)
        self._source = Source(self.peer, "prediction", setup.classes)
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
        view.note("peer_usable", float(peer.usable.mean()))
        return {
            "peer_p": peer.values.astype(np.float32),
            "peer_w": (peer.usable * ramp(view, self.burn_in)).astype(np.float32),
        }

    def loss(self, knowledge: dict[str, Any], out: Outputs) -> dict[str, Any]:
        import tensorflow as tf

        own = tf.nn.log_softmax(out.logits / self.temperature)
        peer = tf.clip_by_value(knowledge["peer_p"], 1e-7, 1.0)
        kl = tf.reduce_sum(peer * (tf.math.log(peer) - own), 1)
        return {
            "codistill": self.weight * mean_over_batch(tf, knowledge["peer_w"] * kl, out.logits)
        }
