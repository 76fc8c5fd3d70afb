"""Multimodal alignment: one trainer per modality, each aligned with the others' stale
embeddings from the bank.

Trainers of one task use namespaces ``<task>_<modality>``; this one pulls its embedding
toward the other modalities' ``embedding/<modality>`` knowledge by cosine distance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from carls.trainers.errors import SpecError
from carls.trainers.paradigms.base import I64, Arrays, ArraySpec, Outputs, Setup, Source, View


@dataclass(slots=True)
class Multimodal:
    """Align this modality's embedding with the other modalities' embeddings."""

    modality: str
    others: tuple[str, ...]
    weight: float = 1.0
    name: ClassVar[str] = "multimodal"
    _sources: list[Source] = field(default_factory=list, init=False, repr=False)

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
