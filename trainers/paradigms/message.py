"""A learned message channel: two models, each seeing its own features, talk through the
bank in a few floats per example.

The sender (``role: send``, model A) computes a message of ``size`` floats per example
from its embedding (``tanh`` of a dense head) and publishes it as the ``message`` kind of
its namespace every ``every`` steps, for its training examples and any others it is given
(a test split). The receiver (``role: receive``, model B) takes A's latest message as
``size`` extra inputs (its features' last ``size`` columns, which it leaves zero: the
message fills them), and every ``every`` steps publishes, as the ``feedback`` kind of its
namespace, the gradient of its loss on each labeled example with respect to that
example's message. The sender trains its message head (and the layers below it) on that
feedback: the term ``weight * <message, feedback>`` moves each message the way that
lowers B's loss. The two processes meet only in the bank; each reads the other's kind on
the other's step clock.

``learned: false`` makes the sender's message fixed instead: its embedding through a
random projection (seeded) and ``tanh``, never trained by feedback: the baseline of the
same size.

Bandwidth: ``4 * size`` bytes per example per publication each way.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field, PrivateAttr

from carls.bank.types import KnowledgeBatch
from carls.trainers.errors import SpecError
from carls.trainers.fields import FieldProblem, Flag, Int, Modality, Name, Number
from carls.trainers.paradigms.base import (
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

F32 = npt.NDArray[np.float32]
_NOT_OWN = "the peer is the other side's namespace, not this one"


class Message(Plugin):
    """One side of a learned low-bandwidth channel between two trainers."""

    name: ClassVar[str] = "message"
    needs_checkpoints: ClassVar[bool] = False
    role: Literal["send", "receive"]
    """``send``: compute and publish the message (model A); ``receive``: take it as input
    and publish the feedback (model B)."""
    peer: Name
    """The other side's namespace."""
    size: Int = Field(8, ge=1, le=256)
    """Floats per message; both sides must agree."""
    learned: Flag = True
    """Sender: train the message on the receiver's feedback (false: a fixed random
    projection of the embedding, the baseline of the same size)."""
    weight: Number = Field(5.0, ge=0)
    """Sender: weight of the feedback term in the loss (on the bench's digits halves,
    size 4: B 0.976, 0.970, 0.976 at 5 against 0.954, 0.982, 0.961 at 1)."""
    every: Int = Field(50, ge=1)
    """Steps between publications of the messages (sender) or the feedback (receiver)."""
    modality: Modality | None = None
    """In a job spec: the ``dataset.modalities`` columns this side sees (None: all)."""
    _setup: Setup | None = PrivateAttr(None)
    _head: Any = PrivateAttr(None)
    _extra: tuple[list[str], F32] | None = PrivateAttr(None)

    # The spec's side ---------------------------------------------------------------------
    def check_against(self, namespace: str, modalities: Collection[str]) -> None:
        if self.peer == namespace:
            raise FieldProblem(("peer",), _NOT_OWN)
        if self.modality is not None and self.modality not in modalities:
            known = ", ".join(sorted(modalities)) or "none"
            raise FieldProblem(
                ("modality",),
                f"unknown modality {self.modality!r}; dataset.modalities declares {known}",
            )

    @property
    def own_kind(self) -> str:
        """The kind this side publishes in its own namespace."""
        return "message" if self.role == "send" else "feedback"

    @property
    def own_dim(self) -> int:
        return self.size

    @property
    def peer_kind(self) -> str | None:
        """The kind this side reads from the peer's (None: a fixed message reads none)."""
        if self.role == "receive":
            return "message"
        return "feedback" if self.learned else None

    def requires(self) -> list[Requirement]:
        kind = self.peer_kind
        if kind is None:
            return []
        return [Requirement(("peer",), self.peer, (kind,), dims={kind: self.size}, exists=False)]

    # The trainer's side ------------------------------------------------------------------
    def bind(self, setup: Setup) -> list[Source]:
        if self.peer == setup.namespace:
            raise SpecError("peer", _NOT_OWN)
        self._setup = setup
        if self.role == "send":
            import keras

            if self.learned:
                self._head = keras.layers.Dense(self.size, activation="tanh", name="message")
            else:
                rng = np.random.default_rng(len(setup.namespace) + self.size)
                proj = rng.normal(0, setup.embedding_dim**-0.5, (setup.embedding_dim, self.size))
                self._head = keras.layers.Dense(
                    self.size,
                    activation="tanh",
                    use_bias=False,
                    trainable=False,
                    kernel_initializer=keras.initializers.Constant(proj.astype(np.float32)),
                    name="fixed_message",
                )
        kind = self.peer_kind
        return [] if kind is None else [Source(self.peer, kind, self.size)]

    def layers(self) -> list[Any]:
        """Layers this plug-in adds to the model (the sender's message head)."""
        return [self._head] if self._head is not None else []

    def also_publish(self, ids: Sequence[str], features: npt.ArrayLike) -> None:
        """Sender: publish messages for these examples too (e.g. the test split, which
        the receiver evaluates on)."""
        self._extra = (list(ids), np.asarray(features, np.float32))

    def signature(self) -> dict[str, ArraySpec]:
        if self.peer_kind is None:
            return {}
        return {
            f"{self.peer_kind}_v": ArraySpec("float32", (self.size,)),
            f"{self.peer_kind}_w": ArraySpec("float32"),
        }

    def prepare(self, view: View, rows: I64, step: int) -> Arrays:
        kind = self.peer_kind
        if kind is None:
            return {}
        got = view.get(Source(self.peer, kind, self.size), rows, step)
        view.note(f"{kind}_usable", float(got.usable.mean()))
        w = got.usable.astype(np.float32)
        return {f"{kind}_v": got.values * w[:, None], f"{kind}_w": w}

    def inputs(self, knowledge: dict[str, Any], features: Any) -> Any:
        """Receiver: the features with their last ``size`` columns replaced by the
        message (zeros where there is none yet)."""
        if self.role != "receive":
            return features
        import tensorflow as tf

        return tf.concat([features[:, : -self.size], knowledge["message_v"]], 1)

    def loss(self, knowledge: dict[str, Any], out: Outputs) -> dict[str, Any]:
        if self.role != "send" or not self.learned:
            return {}
        import tensorflow as tf

        message = self._head(out.embedding)
        inner = tf.reduce_sum(message * knowledge["feedback_v"], 1)
        return {"feedback": self.weight * mean_over_batch(tf, inner, out.logits)}

    def publish(self, heads: Any, view: View, step: int) -> KnowledgeBatch | None:
        """The batch this side publishes now (``own_kind``): the sender's messages of its
        examples, the receiver's feedback of its labeled examples that have a message."""
        assert self._setup is not None and self._setup.features is not None, "bind() first"
        x = self._setup.features
        ids = list(self._setup.ids)
        if self.role == "send":
            if self._extra is not None:
                ids += self._extra[0]
                x = np.concatenate([x, self._extra[1].reshape(len(self._extra[0]), *x.shape[1:])])
            values = np.concatenate(
                [
                    np.asarray(self._head(heads(x[s : s + 1024], training=False)[0]))
                    for s in range(0, len(x), 1024)
                ]
            )
            return KnowledgeBatch(ids, values.astype(np.float32))
        rows = np.flatnonzero(view.labeled)
        msg, steps = view.rows(Source(self.peer, "message", self.size), rows)
        have = steps >= 0
        rows, msg = rows[have], msg[have]
        if not rows.size:
            return None
        grads = [
            self._feedback(heads, x[part], msg[s : s + 1024], view.labels[part])
            for s in range(0, rows.size, 1024)
            for part in [rows[s : s + 1024]]
        ]
        return KnowledgeBatch([ids[r] for r in rows], np.concatenate(grads))

    def _feedback(self, heads: Any, x: F32, message: F32, labels: Any) -> F32:
        import tensorflow as tf

        m = tf.constant(message, tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(m)
            _, logits = heads(tf.concat([tf.constant(x[:, : -self.size]), m], 1), training=False)
            loss = tf.reduce_sum(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
            )
        return np.asarray(tape.gradient(loss, m), np.float32)
