"""``PublishCheckpoints``: the Keras callback that serves a ``KnowledgeModel`` to makers.

Every ``every_steps`` steps (or ``every_s`` seconds), from ``warmup_steps`` on, it exports
the model as a ``tf_saved_model`` artifact into the checkpoint store (an ``ArtifactStore``:
the bank's blob store by default; or a folder, for one machine) and announces it on
the checkpoints topic; makers load it without the model's code and refresh the
namespace's knowledge. The untrained model is never published: the first checkpoint comes
``max(warmup_steps, every_steps)`` steps into training, and one more at the end. Steps
continue the namespace's numbering (an earlier run's checkpoints stay older). It also
sends the makers demand for ids the trainer's batches need that have no knowledge yet.
With ``ema`` it publishes an exponential moving average of the weights instead of the
weights of the moment: a steadier teacher for the knowledge the makers derive. When the
model's optimizer keeps that average itself (``use_ema=True``), its average is published
(decay: its ``ema_momentum``) and the callback keeps no copy of its own.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import keras
import numpy as np

from carls.bank.artifacts import ArtifactStore
from carls.streams.producer import Publisher
from carls.trainers.checkpoints import CheckpointPublisher, demand_publisher, namespace_step
from carls.trainers.errors import ModelError
from carls.trainers.export import SavedModelExporter
from carls.trainers.wrapper import KnowledgeModel


class PublishCheckpoints(keras.callbacks.Callback):  # type: ignore[misc]  # Keras is untyped
    """Publish a ``KnowledgeModel``'s checkpoints (and demand) while it trains."""

    def __init__(
        self,
        publisher: Publisher,
        store: ArtifactStore | Path,
        *,
        every_steps: int = 200,
        every_s: float | None = None,
        warmup_steps: int = 0,
        producer: str = "carls-trainer",
        demand: bool = True,
        ema: float = 0.0,
    ) -> None:
        super().__init__()
        if every_steps < 1 or warmup_steps < 0 or (every_s is not None and every_s <= 0):
            raise ValueError("every_steps >= 1, warmup_steps >= 0 and every_s > 0 (or None)")
        if not 0.0 <= ema < 1.0:
            raise ValueError(f"ema: a decay in [0, 1), got {ema}")
        self.ema = ema
        self._average: list[Any] = []
        self._from_optimizer = False
        self._first = 0
        self.publisher = publisher
        self.store = store
        self.every_steps, self.every_s, self.warmup_steps = every_steps, every_s, warmup_steps
        self.producer = producer
        self.demand = demand
        self.checkpoints: CheckpointPublisher | None = None
        self._exporter: SavedModelExporter | None = None

    def on_train_begin(self, logs: Any = None) -> None:
        km = self.model
        if not isinstance(km, KnowledgeModel):
            raise ModelError("PublishCheckpoints works with a carls KnowledgeModel")
        if km.bank is None:
            raise ModelError("PublishCheckpoints needs the model's bank")
        km.step_base = namespace_step(self.publisher, km.bank, km.namespace)
        self._first = int(km.optimizer.iterations.numpy())  # steps of earlier fit calls
        if self._exporter is None or self._exporter.heads is not km.heads:
            self._exporter = SavedModelExporter(km.heads)
        self.checkpoints = CheckpointPublisher(
            self.publisher,
            self.store,
            km.namespace,
            self.producer,
            self.every_steps,
            self.every_s,
            start_step=km.step_base,
        )
        opt = km.optimizer
        self._from_optimizer = bool(self.ema and getattr(opt, "use_ema", False))
        own = self.ema and not self._from_optimizer
        self._average = [np.array(v.numpy()) for v in km.base.trainable_weights] if own else []
        reader = km.knowledge.reader
        if self.demand and reader is not None:
            run = f"{km.namespace}-{uuid.uuid4().hex[:8]}"
            reader.demand = demand_publisher(self.publisher, km.namespace, run)

    def _step(self) -> tuple[int, int]:
        done = int(self.model.optimizer.iterations.numpy()) - self._first
        return done, self.model.step_base + done

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        if self.ema and not self._from_optimizer:
            decay = self.ema
            for avg, v in zip(self._average, self.model.base.trainable_weights, strict=True):
                np.multiply(avg, decay, out=avg)
                np.add(avg, (1.0 - decay) * v.numpy(), out=avg)
        done, step = self._step()
        assert self.checkpoints is not None
        if done >= self.warmup_steps and self.checkpoints.due(step):
            self._publish(step)

    def on_train_end(self, logs: Any = None) -> None:
        assert self.checkpoints is not None
        done, step = self._step()
        if done >= 1 and self.checkpoints.last_step != step:
            self._publish(step)
        self.checkpoints.close()  # the last announcements go out before fit returns

    def after_fit(self) -> None:
        """Called by ``KnowledgeModel.fit`` however it ended: when training raised (and
        ``on_train_end`` never ran), the checkpoints saved so far are still announced, up
        to ``announce_wait_s``, and the announcing thread stops."""
        if self.checkpoints is not None:
            self.checkpoints.close()

    def _publish(self, step: int) -> None:
        """Export and announce; with ``ema``, the averaged weights are swapped in for the
        export and the training weights put back after it."""
        assert self.checkpoints is not None and self._exporter is not None
        variables: list[Any] = []
        averages: list[Any] = []
        if self._from_optimizer:  # the optimizer's own average (built at its first step)
            opt = self.model.optimizer
            variables = list(opt._trainable_variables)
            averages = [np.array(a.numpy()) for a in opt._model_variables_moving_average]
        elif self.ema:
            variables, averages = list(self.model.base.trainable_weights), self._average
        kept = [np.array(v.numpy()) for v in variables]
        try:
            for v, avg in zip(variables, averages, strict=True):
                v.assign(avg)
            self.checkpoints.publish(self._exporter, step)
        finally:
            for v, value in zip(variables, kept, strict=True):
                v.assign(value)
