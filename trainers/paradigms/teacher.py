"""Teacher-guided training: a finished job or a pre-trained model guides a student.

The teacher is another namespace whose knowledge the makers made from its checkpoints: a
carls job run with ``train.teach: true``, or a user's pre-trained Keras model published
with ``carls.trainers.publish_teacher``. Its knowledge is frozen (a finished teacher's
steps never move on), so it is never stale, however far the student's steps go. The
student reads, for its own example ids:

* ``prediction`` — distillation: KL divergence from the teacher's class probabilities to
  the student's, on every example of a batch, labeled or not (``weight``, at
  ``temperature``);
* ``instruction`` — per-example instructions (``instructions: true``): a weight that
  scales the example's terms (a label the teacher disputes counts less), and a point of
  the schedule at which the example is admitted (``schedule: pace``);
* ``difficulty`` — a curriculum by the teacher's difficulty (``schedule: rank``: the
  easiest fraction of the examples first, growing to all by ``full_at`` of training).

Until an example is admitted, its supervised and distillation terms weigh 0.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, PrivateAttr

from carls.trainers.errors import SpecError
from carls.trainers.fields import FieldProblem, Flag, Name, Number
from carls.trainers.paradigms.base import (
    F32,
    I64,
    Arrays,
    ArraySpec,
    Outputs,
    Plugin,
    Requirement,
    Setup,
    Source,
    View,
    mean_over_batch,
)
from carls.trainers.paradigms.curriculum import easiest

_NOT_OWN = "the teacher is another namespace (a finished job or a published model), not this one"


class Teacher(Plugin):
    """Learn from a teacher's predictions, per-example instructions and difficulty."""

    name: ClassVar[str] = "teacher"
    needs_checkpoints: ClassVar[bool] = False
    teacher: Name
    """The teacher's namespace: a finished job's (``train.teach: true``) or a pre-trained
    model's (``publish_teacher``); its examples must share the student's ids."""
    weight: Number = Field(1.0, ge=0)
    """Weight of the distillation term in the loss (0: no distillation)."""
    temperature: Number = Field(1.0, gt=0)
    """Softmax temperature of the student's logits in the distillation term."""
    instructions: Flag = True
    """Scale each example's terms by the teacher's per-example weight."""
    schedule: Literal["none", "pace", "rank"] = "none"
    """When examples are admitted: all from the start (``none``); at the point of the
    schedule the teacher gives each (``pace``: its ``instruction``'s admission point,
    reached at ``full_at`` of training); or the easiest fraction by the teacher's
    difficulty first (``rank``: from ``start_fraction`` to all at ``full_at``)."""
    start_fraction: Number = Field(0.3, gt=0, le=1)
    """``schedule: rank``: the fraction of the examples admitted at step 0."""
    full_at: Number = Field(0.5, gt=0, le=1)
    """The fraction of training by which every example is admitted."""
    _classes: int = PrivateAttr(0)
    _ranked: tuple[float, I64] | None = PrivateAttr(None)

    def check_against(self, namespace: str, modalities: Collection[str]) -> None:
        if self.teacher == namespace:
            raise FieldProblem(("teacher",), _NOT_OWN)

    def requires(self) -> list[Requirement]:
        dims = {"instruction": 2} if "instruction" in self._kinds() else {}
        return [Requirement(("teacher",), self.teacher, self._kinds(), True, dims)]

    def _kinds(self) -> tuple[str, ...]:
        kinds = ["prediction"]
        if self.instructions or self.schedule == "pace":
            kinds.append("instruction")
        if self.schedule == "rank":
            kinds.append("difficulty")
        return tuple(kinds)

    def _source(self, kind: str) -> Source:
        dims = {"prediction": self._classes, "instruction": 2, "difficulty": 1}
        return Source(self.teacher, kind, dims[kind], frozen=True)

    def bind(self, setup: Setup) -> list[Source]:
        if self.teacher == setup.namespace:
            raise SpecError("teacher", _NOT_OWN)
        self._classes = setup.classes
        return [self._source(kind) for kind in self._kinds()]

    def signature(self) -> dict[str, ArraySpec]:
        assert self._classes, "bind() first"
        return {
            "teacher_p": ArraySpec("float32", (self._classes,)),
            "teacher_w": ArraySpec("float32"),
        }

    def admitted(self, view: View, rows: I64, step: int) -> F32:
        """1 for the rows the schedule admits now, 0 for the others."""
        if self.schedule == "none":
            return np.ones(len(rows), np.float32)
        reached = min(1.0, view.progress / self.full_at)
        if self.schedule == "pace":
            got = view.get(self._source("instruction"), rows, step)
            # an example the teacher has no instruction for waits until every one is in
            at = np.where(got.usable, got.values[:, 1], 1.0)
            return (at <= reached + 1e-6).astype(np.float32)
        fraction = round(self.start_fraction + (1 - self.start_fraction) * reached, 2)
        if self._ranked is None or self._ranked[0] != fraction:  # ranked again per 1 %
            everyone = np.arange(len(view.labels), dtype=np.int64)
            diff = view.get(self._source("difficulty"), everyone, step)
            self._ranked = (fraction, easiest(diff.values, diff.usable, everyone, fraction))
        return np.isin(rows, self._ranked[1]).astype(np.float32)

    def example_weights(self, view: View, rows: I64, step: int) -> F32:
        """The teacher's per-example weights (1 where it gives none) times admission."""
        w = self.admitted(view, rows, step)
        if self.instructions:
            got = view.get(self._source("instruction"), rows, step)
            w *= np.where(got.usable, got.values[:, 0], 1.0).astype(np.float32)
        return w

    def supervised_weights(self, view: View, rows: I64, step: int) -> F32:
        return self.example_weights(view, rows, step)

    def prepare(self, view: View, rows: I64, step: int) -> Arrays:
        assert self._classes, "bind() first"
        got = view.get(self._source("prediction"), rows, step)
        view.note("teacher_usable", float(got.usable.mean()))
        w = got.usable * self.example_weights(view, rows, step)
        return {"teacher_p": got.values.astype(np.float32), "teacher_w": w.astype(np.float32)}

    def loss(self, knowledge: dict[str, Any], out: Outputs) -> dict[str, Any]:
        import tensorflow as tf

        own = tf.nn.log_softmax(out.logits / self.temperature)
        teacher = tf.clip_by_value(knowledge["teacher_p"], 1e-7, 1.0)
        kl = tf.reduce_sum(teacher * (tf.math.log(teacher) - own), 1)
        term = mean_over_batch(tf, knowledge["teacher_w"] * kl, out.logits)
        return {"distill": self.weight * term}
