"""The ``Paradigm`` protocol: what a learning paradigm reads, prepares and adds to the loss.

A paradigm is a plug-in with three parts, one per place it runs:

* ``bind(setup)`` — once, when a trainer takes it on: returns the ``(namespace, kind,
  dim)`` knowledge it reads (its own namespace's, a peer's, a teacher's, another
  modality's), which the knowledge reader then follows in the background; ``signature()``
  then names the arrays ``prepare`` returns;
* ``prepare(view, rows, step)`` — on the host, from the reader's local cache (a gather;
  it never waits on the bank): numpy arrays for one batch, named as in ``signature``;
  knowledge that is missing or too stale gets weight 0 there;
* ``loss(knowledge, out)`` — inside the compiled step: named loss terms from those arrays
  and the model's ``embedding`` and ``logits`` for the batch.

Optional abilities are separate small protocols: ``Refreshing`` (host work every few
steps, e.g. class weights) and ``Weighting`` (a per-row weight on the supervised term,
e.g. a curriculum). Each paradigm is one module of this package; ``registry.py`` maps the
names job specs use to the classes.

A plug-in is a pydantic model (``Plugin``): its fields are its parameters, validated with
their bounds whether they come from a job spec's ``paradigm.params`` or from a library
user's ``PseudoLabel(threshold=0.8)``; what ``bind`` sets up lives in private attributes.
A job spec's ``paradigm.params`` is a ``ParadigmParams``: a plug-in itself, or a spec-only
entry (``supervised``, ``pseudo_label_graph``) whose ``plugins()`` are the plug-ins it runs.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, Self, cast, runtime_checkable

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

from carls.bank.types import KnowledgeBatch
from carls.trainers.reader import KnowledgeReader, Slice

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
Arrays = dict[str, npt.NDArray[Any]]


@dataclass(frozen=True, slots=True)
class Source:
    """One kind of knowledge a paradigm reads: ``(namespace, kind)`` rows of width ``dim``,
    from any namespace (its own, a peer's, a teacher's, another modality's).

    Staleness is measured on the source's own step clock: the trainer's step for its own
    namespace, the newest step of the kind seen for another namespace. A ``frozen``
    source (a finished teacher, a pre-trained model) is never stale."""

    namespace: str
    kind: str
    dim: int
    frozen: bool = False


@dataclass(frozen=True, slots=True)
class Requirement:
    """Knowledge of another namespace a paradigm cannot work without, checked against the
    bank when a job is submitted: ``namespace`` must exist, declare ``kinds`` and (with
    ``checkpoint``) have published a checkpoint. ``where`` is the parameter naming it."""

    where: tuple[str, ...]
    namespace: str
    kinds: tuple[str, ...]
    checkpoint: bool = False
    dims: Mapping[str, int] = field(default_factory=dict)
    """Widths the kinds must have (a message's size both sides agree on)."""
    exists: bool = True
    """The namespace must exist already (false: a peer that may not have started)."""


@dataclass(frozen=True, slots=True)
class Setup:
    """What a paradigm may know of the trainer it is part of."""

    namespace: str
    classes: int
    embedding_dim: int
    ids: tuple[str, ...] = ()
    features: F32 | None = field(default=None, repr=False, compare=False)
    """The flat training features (for a bootstrap graph), when the trainer has them."""


@dataclass(frozen=True, slots=True)
class ArraySpec:
    """The dtype and the shape past the batch of one prepared array."""

    dtype: str
    shape: tuple[int, ...] = ()


class View:
    """The reader's cache as a paradigm sees it: knowledge under the trainer's staleness
    policy, the labels of the trainer's examples (``-1``: unlabeled), training progress,
    and a place to note usage figures (exponential moving averages)."""

    def __init__(
        self,
        reader: KnowledgeReader | None,
        labels: npt.NDArray[np.int32],
        max_staleness: int | None,
        namespace: str | None = None,
    ) -> None:
        self.reader = reader
        self.namespace = namespace
        """The trainer's own namespace, whose knowledge runs on the trainer's step clock
        (``None``: every source does)."""
        self.labels = labels
        self.labeled = labels >= 0
        self.max_staleness = max_staleness
        self.progress = 0.0
        """Fraction of training done, 0..1 (1 when the length is unknown)."""
        self.stats: dict[str, float] = {}
        self.held_out: npt.NDArray[np.int32] | None = None
        """True labels of the held-out labeled examples (``train.holdout``), -1 for the
        others: unlabeled to training and to the makers, they measure the knowledge."""

    def get(self, source: Source, rows: I64, step: int) -> Slice:
        """Knowledge of ``rows`` with the staleness policy applied (``Slice.usable``) on
        the source's clock: ``step`` (the trainer's) for the trainer's own namespace, the
        newest step seen of the source otherwise; a frozen source is never stale."""
        assert self.reader is not None
        ns, kind = source.namespace, source.kind
        own = self.namespace is None or ns == self.namespace
        clock = step if own and not source.frozen else max(self.reader.clock(ns, kind), 0)
        limit = None if source.frozen else self.max_staleness
        return self.reader.get(ns, kind, rows, clock, limit)

    def newest(self, source: Source) -> int:
        """The newest step of the source's knowledge seen so far (-1: none yet)."""
        assert self.reader is not None
        return self.reader.clock(source.namespace, source.kind)

    def rows(self, source: Source, rows: npt.ArrayLike) -> tuple[F32, I64]:
        """Values and steps (-1: none) of any rows, with no staleness policy."""
        assert self.reader is not None
        return self.reader.rows(source.namespace, source.kind, rows)

    def note(self, key: str, value: float) -> None:
        old = self.stats.get(key)
        self.stats[key] = value if old is None else 0.9 * old + 0.1 * value


@dataclass(frozen=True, slots=True)
class Outputs:
    """The model's outputs for a batch, inside the compiled step (TensorFlow tensors)."""

    embedding: Any
    logits: Any


@runtime_checkable
class Paradigm(Protocol):
    """A learning paradigm as a plug-in (see the module docstring)."""

    name: ClassVar[str]
    needs_checkpoints: ClassVar[bool]
    """Whether it works only when the job publishes checkpoints (it reads knowledge the
    makers make from them, or a peer reads this job's); a teacher's student does not."""

    def bind(self, setup: Setup) -> list[Source]: ...

    def signature(self) -> dict[str, ArraySpec]: ...

    def prepare(self, view: View, rows: I64, step: int) -> Arrays: ...

    def loss(self, knowledge: dict[str, Any], out: Outputs) -> dict[str, Any]: ...


@runtime_checkable
class Refreshing(Protocol):
    """A paradigm with host work every ``refresh_every`` steps (e.g. class weights)."""

    refresh_every: int

    def refresh(self, view: View, step: int) -> None: ...


@runtime_checkable
class Publishing(Protocol):
    """A paradigm whose trainer publishes knowledge itself, every ``every`` steps, as
    ``own_kind`` of its own namespace (a message, a receiver's feedback): ``publish``
    computes it with the model's ``heads``; ``layers`` are what it adds to the model."""

    every: int

    @property
    def own_kind(self) -> str: ...

    @property
    def own_dim(self) -> int: ...

    def layers(self) -> list[Any]: ...

    def inputs(self, knowledge: dict[str, Any], features: Any) -> Any: ...

    def publish(self, heads: Any, view: View, step: int) -> KnowledgeBatch | None: ...


@runtime_checkable
class Following(Protocol):
    """A paradigm with a background thread of its own, run while the trainer trains
    (a hypergraph learner following its task's hypergraph and the other modalities)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


@runtime_checkable
class Weighting(Protocol):
    """A paradigm that weights the supervised term per row (e.g. a curriculum)."""

    def supervised_weights(self, view: View, rows: I64, step: int) -> F32: ...


class ParadigmParams(BaseModel):
    """A job spec's ``paradigm.params``: validated parameters, and the plug-ins they make.

    Subclasses register under ``name`` in ``registry.PARADIGMS``; the job spec's paradigm
    union is built from that registry. Two entries are equal when their type and
    parameters are (a plug-in's state after ``bind`` is not compared).
    """

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    name: ClassVar[str]
    """The name job specs use (``paradigm.name``)."""

    def plugins(self) -> list[Paradigm]:
        """Fresh plug-ins with these parameters: new objects each call, never ``self``."""
        raise NotImplementedError

    def check_against(self, namespace: str, modalities: Collection[str]) -> None:
        """Checks against the rest of a job spec (its namespace, its dataset's modalities);
        raises ``carls.trainers.fields.FieldProblem`` naming a field of these params."""

    def requires(self) -> list[Requirement]:
        """Other namespaces' knowledge these params read, for ``carls submit`` to check
        in the bank (a teacher that exists, declares the kinds and has a checkpoint)."""
        return [r for p in self.plugins() if isinstance(p, ParadigmParams) for r in p.requires()]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BaseModel):
            return NotImplemented
        return type(other) is type(self) and self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]  # mutable: plug-ins keep state after bind


class Plugin(ParadigmParams):
    """Base of the plug-ins: parameters as fields (validated on construction, keywords
    only), state from ``bind`` in private attributes. A plug-in is its own spec params."""

    needs_checkpoints: ClassVar[bool] = True
    reads_unlabeled: ClassVar[bool] = True
    """Whether its prepared arrays are for unlabeled examples too (batches then hold
    them); a paradigm that only feeds the model inputs of labeled ones says False."""

    def plugins(self) -> list[Paradigm]:
        return [self.fresh()]

    def requires(self) -> list[Requirement]:
        return []

    def fresh(self) -> Self:
        """An unbound copy with the same parameters."""
        fresh = type(self).model_construct(
            _fields_set=set(self.model_fields_set), **copy.deepcopy(self.__dict__)
        )
        return cast(Self, fresh)

    def bind(self, setup: Setup) -> list[Source]:
        raise NotImplementedError

    def signature(self) -> dict[str, ArraySpec]:
        raise NotImplementedError

    def prepare(self, view: View, rows: I64, step: int) -> Arrays:
        raise NotImplementedError

    def loss(self, knowledge: dict[str, Any], out: Outputs) -> dict[str, Any]:
        raise NotImplementedError


def mean_over_batch(tf: Any, weighted: Any, logits: Any) -> Any:
    """``sum(weighted) / batch size``: a term's share of the loss, masked rows counting 0."""
    return tf.reduce_sum(weighted) / tf.cast(tf.shape(logits)[0], tf.float32)


def ramp(view: View, burn_in: float) -> float:
    """A term's weight factor: rising linearly from 0 to 1 over the first ``burn_in`` of
    training (1 throughout when ``burn_in`` is 0)."""
    return min(1.0, view.progress / burn_in) if burn_in > 0 else 1.0
