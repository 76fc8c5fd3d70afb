"""Pseudo labels and graph regularization together, with one flat set of parameters.

A job spec entry, not a plug-in: ``plugins()`` is ``[PseudoLabel, Graph]``. Each parameter
is the plug-in's own field (its type checks, bounds, default and docs), under the flat
name the spec uses: ``pseudo_weight`` is ``PseudoLabel.weight``, ``graph_weight`` is
``Graph.weight``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel

from carls.trainers.paradigms.base import Paradigm, ParadigmParams
from carls.trainers.paradigms.graph import Graph, Target
from carls.trainers.paradigms.pseudo_label import PseudoLabel


def field_of(model: type[BaseModel], name: str) -> Any:
    """``model``'s declaration of field ``name``, to declare the same parameter again."""
    return copy.copy(model.model_fields[name])


class PseudoLabelGraph(ParadigmParams):
    """``PseudoLabel`` and ``Graph`` with the parameters of both in one mapping."""

    name: ClassVar[str] = "pseudo_label_graph"
    pseudo_weight: float = field_of(PseudoLabel, "weight")
    source: Literal["pseudo_label", "propagated"] = field_of(PseudoLabel, "source")
    thresholds: Literal["fixed", "adaptive", "soft"] = field_of(PseudoLabel, "thresholds")
    threshold: float = field_of(PseudoLabel, "threshold")
    align: bool = field_of(PseudoLabel, "align")
    class_balance: bool = field_of(PseudoLabel, "class_balance")
    graph_weight: float = field_of(Graph, "weight")
    k: int = field_of(Graph, "k")
    temperature: float = field_of(Graph, "temperature")
    bootstrap: bool = field_of(Graph, "bootstrap")
    graph: Path | None = field_of(Graph, "graph")
    target: Target = field_of(Graph, "target")

    def plugins(self) -> list[Paradigm]:
        return [
            PseudoLabel(
                source=self.source,
                thresholds=self.thresholds,
                threshold=self.threshold,
                align=self.align,
                weight=self.pseudo_weight,
                class_balance=self.class_balance,
            ),
            Graph(
                weight=self.graph_weight,
                k=self.k,
                temperature=self.temperature,
                bootstrap=self.bootstrap,
                graph=self.graph,
                target=self.target,
            ),
        ]
