"""Paradigm names -> spec entries: the one place a paradigm is registered.

A job spec's ``paradigm.name`` picks an entry here; its ``params`` are validated by that
entry's model (``carls.trainers.spec`` builds its discriminated union from this dict), and
``from_spec`` turns them into fresh plug-ins. A plug-in is its own entry; ``supervised``
and ``pseudo_label_graph`` are entries that only job specs use.

Adding a paradigm: write its module in this package (a ``base.Plugin`` subclass) and add
one line to ``PARADIGMS``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from carls.trainers.paradigms.base import Paradigm, ParadigmParams
from carls.trainers.paradigms.codistillation import Codistillation
from carls.trainers.paradigms.curriculum import Curriculum
from carls.trainers.paradigms.graph import Graph
from carls.trainers.paradigms.hypergraph import HyperLearn
from carls.trainers.paradigms.message import Message
from carls.trainers.paradigms.multimodal import Multimodal
from carls.trainers.paradigms.pseudo_label import PseudoLabel
from carls.trainers.paradigms.pseudo_label_graph import PseudoLabelGraph
from carls.trainers.paradigms.supervised import Supervised
from carls.trainers.paradigms.teacher import Teacher

if TYPE_CHECKING:
    from carls.trainers.spec import JobSpec

PARADIGMS: Final[dict[str, type[ParadigmParams]]] = {
    Supervised.name: Supervised,
    PseudoLabel.name: PseudoLabel,
    Graph.name: Graph,
    PseudoLabelGraph.name: PseudoLabelGraph,
    Curriculum.name: Curriculum,
    Codistillation.name: Codistillation,
    Multimodal.name: Multimodal,
    Teacher.name: Teacher,
    Message.name: Message,
    HyperLearn.name: HyperLearn,
}


def paradigm_class(name: str) -> type[ParadigmParams]:
    """The entry registered under ``name``."""
    try:
        return PARADIGMS[name]
    except KeyError:
        raise KeyError(f"unknown paradigm {name!r}; registered: {', '.join(PARADIGMS)}") from None


def from_spec(spec: JobSpec) -> list[Paradigm]:
    """Fresh plug-ins for a job spec's ``paradigm`` (none for ``supervised``); the spec's
    own params objects are never handed out, so binding a plug-in leaves the spec as is."""
    return spec.paradigm.params.plugins()
