"""Paradigm names -> classes: how a job spec's ``paradigm.name`` finds its plug-in.

Adding a paradigm: write its module in this package (a class following
``base.Paradigm``) and add one line to ``PARADIGMS``.
"""

from __future__ import annotations

from typing import Final

from carls.trainers.paradigms.base import Paradigm
from carls.trainers.paradigms.codistillation import Codistillation
from carls.trainers.paradigms.curriculum import Curriculum
from carls.trainers.paradigms.graph import Graph
from carls.trainers.paradigms.multimodal import Multimodal
from carls.trainers.paradigms.pseudo_label import PseudoLabel
from carls.trainers.spec import (
    CodistillationParams,
    CurriculumParams,
    GraphParams,
    JobSpec,
    MultimodalParams,
    PseudoLabelGraphParams,
    PseudoLabelParams,
)

PARADIGMS: Final[dict[str, type[Paradigm]]] = {
    PseudoLabel.name: PseudoLabel,
    Graph.name: Graph,
    Curriculum.name: Curriculum,
    Codistillation.name: Codistillation,
    Multimodal.name: Multimodal,
}


def paradigm_class(name: str) -> type[Paradigm]:
    """The plug-in registered under ``name``."""
    try:
        return PARADIGMS[name]
    except KeyError:
        raise KeyError(
            f"unknown paradigm {name!r}; registered: {', '.join(sorted(PARADIGMS))}"
        ) from None


def from_spec(spec: JobSpec) -> list[Paradigm]:
    """The plug-ins a job spec's ``paradigm`` names, with its parameters."""
    p = spec.paradigm.params
    if isinstance(p, PseudoLabelParams):
        return [PseudoLabel(p.threshold, p.weight, p.class_balance)]
    if isinstance(p, GraphParams):
        return [Graph(p.weight, p.k, p.temperature, p.bootstrap, p.graph, p.target)]
    if isinstance(p, PseudoLabelGraphParams):
        return [
            PseudoLabel(p.threshold, p.pseudo_weight, p.class_balance),
            Graph(p.graph_weight, p.k, p.temperature, p.bootstrap, p.graph, p.target),
        ]
    if isinstance(p, CurriculumParams):
        return [Curriculum(p.pacing, p.start_fraction, p.full_at)]
    if isinstance(p, CodistillationParams):
        return [Codistillation(p.peer, p.weight, p.temperature)]
    if isinstance(p, MultimodalParams):
        return [Multimodal(p.modality, p.others, p.weight)]
    return []
