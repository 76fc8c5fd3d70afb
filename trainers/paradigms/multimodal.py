"""Multimodal alignment: one trainer per modality, each aligned with the others' stale
embeddings from the bank.

Trainers of one task use namespaces ``<task>_<modality>``; this one pulls its embedding
toward the other modalities' ``embedding/<modality>`` knowledge by cosine distance.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, PrivateAttr, ValidationInfo, field_validator

from carls.trainers.errors import SpecError
from carls.trainers.fields import FieldProblem, Modality, Number, unique
from carls.trainers.paradigms.base import (
    I64,
    Arrays,
    ArraySpec,
    Outputs,
    Plugin,
    Setup,
    Source,
    View,
)


class Multimodal(Plugin):
    """Align this modality's embedding with the other modalities' embeddings."""

    name: ClassVar[str] = "multimodal"
    modality: Modality
    """This trainer's modality (in a job spec: a key of ``dataset.modalities``)."""
    others: tuple[Modality, ...] = Field(min_length=1)
    """The modalities whose embeddings this trainer aligns with, each once."""
    weight: Number = Field(1.0, ge=0)
    """Weight of the alignment term in the loss."""
    _sources: list[Source] = PrivateAttr(default_factory=list)

    @field_validator("others")
    @classmethod
    def _not_own_nor_twice(cls, others: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        own = info.data.get("modality")
        if own in others:
            raise FieldProblem((others.index(own),), f"{own!r} is this trainer's own modality")
        unique(others)
        return others

    def check_against(self, namespace: str, modalities: Collection[str]) -> None:
        known = sorted(modalities)
        declared = f"dataset.modalities declares {', '.join(known) or 'none'}"
        if self.modality not in modalities:
            raise FieldProblem(("modality",), f"unknown modality {self.modality!r}; {declared}")
        for i, other in enumerate(self.others):
            if other not in modalities:
                raise FieldProblem(("others", i), f"unknown modality {other!r}; {declared}")

    def bind(self, setup: Setup) -> list[Source]:
        self._sources = [
            Source(
                peer_namespace(setup.namespace, self.modality, o),
                f"embedding/{o}",
                setup.embedding_dim,
            )
            for o in self.others
        ]
        return list(self._sources)

    def signature(self) -> dict[str, ArraySpec]:
        m, dim = len(self._sources), self._sources[0].dim
        return {"other_e": ArraySpec("float32", (m, dim)), "other_w": ArraySpec("float32", (m,))}

    def prepare(self, view: View, rows: I64, step: int) -> Arrays:
        got = [view.get(s, rows, step) for s in self._sources]
        masks = [g.usable for g in got]
        view.note("other_usable", float(np.mean(masks)))
        return {
            "other_e": np.stack([g.values for g in got], 1).astype(np.float32),
            "other_w": np.stack(masks, 1).astype(np.float32),
        }

    def loss(self, knowledge: dict[str, Any], out: Outputs) -> dict[str, Any]:
        import tensorflow as tf

        unit = tf.math.l2_normalize(out.embedding, 1)
        others = tf.math.l2_normalize(knowledge["other_e"], 2)
        cos = tf.einsum("be,bme->bm", unit, others)
        w = knowledge["other_w"]
        term = tf.reduce_sum(w * (1.0 - cos)) / tf.maximum(tf.reduce_sum(w), 1.0)
        return {"align": self.weight * term}


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
