"""``publish_teacher``: a user's pre-trained Keras model as a teacher for carls students.

The model's namespace is created (with the ``instruction`` kind a student's ``Teacher``
paradigm reads), the examples it is to teach on are registered, and the model is
published once as a checkpoint; ``carls worker`` processes then make its predictions,
difficulty and per-example instructions, which students read by example id::

    conn = carls.connect()
    publish_teacher(pretrained, conn, namespace="digits_teacher", ids=ids, features=x,
                    labels=y)                       # -1 where unlabeled
    # ... then a student: KnowledgeModel(model, [Teacher(teacher="digits_teacher")], ...)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from carls.schemas import CheckpointManifest
from carls.trainers.checkpoints import CheckpointPublisher, namespace_step
from carls.trainers.export import SavedModelExporter
from carls.trainers.outputs import OutputName
from carls.trainers.wrapper import KnowledgeModel


def publish_teacher(
    model: Any,
    conn: Any,
    *,
    namespace: str,
    ids: Sequence[str],
    features: npt.ArrayLike,
    labels: npt.ArrayLike | None = None,
    embedding: OutputName = "embedding",
    logits: OutputName = "logits",
    buckets: int = 8,
) -> CheckpointManifest:
    """Publish ``model`` (a Keras model with embedding and logits outputs, as
    ``KnowledgeModel`` takes it) as the teacher in ``namespace`` for the examples ``ids``
    with ``features`` (and ``labels``, -1 for unlabeled; default: all unlabeled).

    ``conn`` is a ``carls.connect()`` connection (its bank, publisher and checkpoint
    store). The checkpoint's step follows the namespace's newest (1 for a new one), so a
    model published again replaces the last one's knowledge. Returns the manifest once it
    is announced; the makers' knowledge follows (``carls bank coverage NAMESPACE``).
    """
    n = len(ids)
    y = np.full(n, -1, np.int32) if labels is None else np.asarray(labels)
    km = KnowledgeModel(
        model,
        [],
        bank=conn.bank,
        namespace=namespace,
        ids=ids,
        labels=y,
        features=features,
        embedding=embedding,
        logits=logits,
        teach=True,
    )
    km.register_examples(buckets=buckets)
    step = namespace_step(conn.publisher, conn.bank, namespace) + 1
    publisher = CheckpointPublisher(
        conn.publisher, conn.store, namespace, "carls-teacher", every_steps=1
    )
    try:
        publisher.publish(SavedModelExporter(km.heads), step)
    finally:
        publisher.close()
    if not publisher.published:
        raise RuntimeError(f"{namespace}: the teacher's checkpoint was saved but not announced")
    return publisher.published[-1]
