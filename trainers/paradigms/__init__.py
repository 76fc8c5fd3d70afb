"""The learning paradigms, one plug-in module each (see ``base`` for the protocol).

* ``PseudoLabel`` (``pseudo_label``) — confident pseudo labels of unlabeled examples;
* ``Graph`` (``graph``) — graph regularization with neighbours' stale knowledge;
* ``Curriculum`` (``curriculum``) — easy examples first, by the makers' difficulty;
* ``Codistillation`` (``codistillation``) — a peer trainer's stale predictions;
* ``Multimodal`` (``multimodal``) — alignment with the other modalities' embeddings;
* ``Message`` (``message``) — a learned message channel: one trainer's message as the
  other's input, the other's feedback as the first's loss;
* ``Teacher`` (``teacher``) — a finished job's or a pre-trained model's predictions,
  per-example instructions and difficulty guide a student;
* ``HyperLearn`` (``hypergraph``) — one learner per modality, a hypergraph convolution over
  its features and the other modalities' latest embeddings (HyperLearn).

Each is a pydantic model whose fields are its parameters, so ``PseudoLabel(threshold=1.5)``
fails as a job spec's ``threshold: 1.5`` does. A job spec's ``paradigm.params`` is one of
them, or a spec-only entry (``PseudoLabelGraph``, ``Supervised``); ``from_spec`` returns
fresh plug-ins for it (``pseudo_label_graph`` is ``[PseudoLabel, Graph]``; ``supervised``
is none).
"""

from __future__ import annotations

from carls.trainers.paradigms.base import (
    ArraySpec,
    Following,
    Outputs,
    Paradigm,
    ParadigmParams,
    Plugin,
    Publishing,
    Refreshing,
    Requirement,
    Setup,
    Source,
    View,
    Weighting,
)
from carls.trainers.paradigms.codistillation import Codistillation
from carls.trainers.paradigms.curriculum import Curriculum
from carls.trainers.paradigms.graph import Graph, feature_graph, user_graph
from carls.trainers.paradigms.hypergraph import HyperLearn
from carls.trainers.paradigms.message import Message
from carls.trainers.paradigms.multimodal import Multimodal, peer_namespace
from carls.trainers.paradigms.pseudo_label import PseudoLabel
from carls.trainers.paradigms.pseudo_label_graph import PseudoLabelGraph
from carls.trainers.paradigms.registry import PARADIGMS, from_spec, paradigm_class
from carls.trainers.paradigms.supervised import Supervised
from carls.trainers.paradigms.teacher import Teacher

__all__ = [
    "PARADIGMS",
    "ArraySpec",
    "Codistillation",
    "Curriculum",
    "Following",
    "Graph",
    "HyperLearn",
    "Message",
    "Multimodal",
    "Outputs",
    "Paradigm",
    "ParadigmParams",
    "Plugin",
    "PseudoLabel",
    "PseudoLabelGraph",
    "Publishing",
    "Refreshing",
    "Requirement",
    "Setup",
    "Source",
    "Supervised",
    "Teacher",
    "View",
    "Weighting",
    "feature_graph",
    "from_spec",
    "paradigm_class",
    "peer_namespace",
    "user_graph",
]
