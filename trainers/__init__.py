"""carls for your own Keras training code.

Wrap any Keras 3 model, keep ``compile``/``fit``/``evaluate``, and add knowledge that
``carls worker`` processes compute from your checkpoints::

    import carls
    from carls.trainers import KnowledgeModel, PublishCheckpoints, example_batches
    from carls.trainers.paradigms import Graph, PseudoLabel

    conn = carls.connect()                      # bank, Kafka publisher, checkpoint store
    km = KnowledgeModel(
        model,                                  # returns {"embedding": ..., "logits": ...}
        [PseudoLabel(), Graph(target="probabilities")],
        bank=conn.bank, namespace="my_run", ids=ids, labels=labels, features=x,
    )
    km.register_examples()                      # the makers read features from the bank
    km.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), metrics=["accuracy"])
    with km:                                    # stops the knowledge reader afterwards
        km.fit(example_batches(ids, x, labels, labeled_batch_size=50), steps_per_epoch=100,
               epochs=30, callbacks=[PublishCheckpoints(conn.publisher, conn.store),
                                     KnowledgeBoard("runs/my_run")])  # TensorBoard

Names are loaded on first use, so ``import carls.trainers`` does not start TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from carls.trainers.callbacks import PublishCheckpoints
    from carls.trainers.errors import DatasetError, ModelError, SpecError, TrainerError
    from carls.trainers.export import SavedModelExporter
    from carls.trainers.feed import augmented, example_batches
    from carls.trainers.knowledge import Knowledge
    from carls.trainers.observe import KnowledgeBoard, StepMetrics, serve_metrics
    from carls.trainers.outputs import ModelHeads
    from carls.trainers.paradigms import (
        Codistillation,
        Curriculum,
        Graph,
        Message,
        Multimodal,
        Paradigm,
        PseudoLabel,
        Teacher,
    )
    from carls.trainers.teacher import publish_teacher
    from carls.trainers.wrapper import KnowledgeModel

__all__ = [
    "Codistillation",
    "Curriculum",
    "DatasetError",
    "Graph",
    "Knowledge",
    "KnowledgeBoard",
    "KnowledgeModel",
    "Message",
    "ModelError",
    "ModelHeads",
    "Multimodal",
    "Paradigm",
    "PseudoLabel",
    "PublishCheckpoints",
    "SavedModelExporter",
    "SpecError",
    "StepMetrics",
    "Teacher",
    "TrainerError",
    "augmented",
    "example_batches",
    "publish_teacher",
    "serve_metrics",
]

_WHERE = {
    "KnowledgeModel": "wrapper",
    "PublishCheckpoints": "callbacks",
    "example_batches": "feed",
    "augmented": "feed",
    "Knowledge": "knowledge",
    "KnowledgeBoard": "observe",
    "StepMetrics": "observe",
    "serve_metrics": "observe",
    "ModelHeads": "outputs",
    "SavedModelExporter": "export",
    "DatasetError": "errors",
    "ModelError": "errors",
    "SpecError": "errors",
    "TrainerError": "errors",
    "Codistillation": "paradigms",
    "Curriculum": "paradigms",
    "Graph": "paradigms",
    "Message": "paradigms",
    "Multimodal": "paradigms",
    "Paradigm": "paradigms",
    "PseudoLabel": "paradigms",
    "Teacher": "paradigms",
    "publish_teacher": "teacher",
}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{where}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
