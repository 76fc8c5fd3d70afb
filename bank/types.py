"""The bank's value types: namespace specs, lineage, batches written and batches read.

Every kind's value for one id is a float32 vector of the kind's declared dimension:

    embedding, embedding/<modality>   the embedding                       (dim = embedding size)
    prediction                        class probabilities                 (dim = classes)
    pseudo_label                      class probabilities, plus ``classes`` and ``confidence``
    difficulty                        one float: loss, or margin          (dim = 1)
    neighbours                        scores, plus ``neighbour_ids``      (dim = k, at most)
    propagated                        class distribution from labels spread over the
                                      neighbour graph                     (dim = classes)
    instruction                       a teacher's weight and admission point
                                      per example                         (dim = 2)
    message                           a sender's learned message          (dim = its size)
    feedback                          a receiver's gradient of its loss
                                      with respect to the message         (dim = its size)

so a batch is one ``(n, dim)`` array, and reads are a single gather on the client.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from carls.bank.errors import DimensionError, KnowledgeKindError, ValueRejectedError
from carls.schemas import names
from carls.schemas.errors import SchemaError

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]

DEFAULT_BUCKETS = 8
MAX_BUCKETS = 4096
MAX_BATCH = 100_000
NO_LABEL = -1


def default_kinds(dim: int, classes: int = 16, k: int = 16) -> dict[str, int]:
    """The five standard kinds for an embedding size, class count and neighbour count."""
    return {
        "embedding": dim,
        "pseudo_label": classes,
        "prediction": classes,
        "difficulty": 1,
        "neighbours": k,
    }


@dataclass(frozen=True, slots=True)
class NamespaceSpec:
    """One training run's corner of the bank: its bucket count and kinds with dimensions.

    ``ttl_s`` maps a kind to a time-to-live in seconds (absent: kept until overwritten).
    """

    name: str
    kinds: Mapping[str, int]
    buckets: int = DEFAULT_BUCKETS
    ttl_s: Mapping[str, int] = field(default_factory=dict)
    created_at: float = 0.0

    def __post_init__(self) -> None:
        validate_name(self.name, "namespace")
        if (
            not isinstance(self.buckets, int)
            or isinstance(self.buckets, bool)
            or not 1 <= self.buckets <= MAX_BUCKETS
        ):
            raise ValueRejectedError(
                f"buckets: must be an int in 1..{MAX_BUCKETS}, got {self.buckets!r}"
            )
        if not self.kinds:
            raise ValueRejectedError("kinds: a namespace needs at least one kind")
        for kind, dim in self.kinds.items():
            validate_kind(kind)
            if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= 65536:
                raise DimensionError(
                    f"kinds[{kind}]: dimension must be an int in 1..65536, got {dim!r}"
                )
        for kind, ttl in self.ttl_s.items():
            if kind not in self.kinds:
                raise KnowledgeKindError(f"ttl_s[{kind}]: not a kind of this namespace")
            if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl <= 0:
                raise ValueRejectedError(f"ttl_s[{kind}]: must be a positive int of seconds")

    def dim(self, kind: str) -> int:
        try:
            return self.kinds[kind]
        except KeyError:
            raise KnowledgeKindError(
                f"namespace {self.name} has no kind {kind!r}; it declares "
                f"{', '.join(sorted(self.kinds))}"
            ) from None


@dataclass(frozen=True, slots=True)
class Lineage:
    """Where knowledge came from: the checkpoint step, the maker and the model fingerprint."""

    step: int
    maker: str
    fingerprint: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.step, int) or isinstance(self.step, bool) or self.step < 0:
            raise ValueRejectedError(f"step: must be a non-negative int, got {self.step!r}")
        if self.step >= 2**62:
            raise ValueRejectedError("step: must be below 2**62")
        if not self.maker:
            raise ValueRejectedError("maker: must name the maker that produced the knowledge")


@dataclass(slots=True)
class KnowledgeBatch:
    """Knowledge for ``ids`` to write: ``values`` is ``(n, d)`` with ``d <= dim`` of the kind
    (``d == dim`` except for neighbours, where fewer than k is allowed)."""

    ids: list[str]
    values: F32
    classes: npt.NDArray[np.int32] | None = None
    confidence: F32 | None = None
    neighbour_ids: list[list[str]] | None = None
    written_at: npt.NDArray[np.float64] | None = None
    """Unix seconds per row; ``None`` means now. Set by import to keep lineage exact."""


@dataclass(slots=True)
class KnowledgeRead:
    """Knowledge for ``ids``, in the order asked.

    ``missing[i]``: no knowledge for ``ids[i]`` (its values are zeros, its step -1).
    ``stale[i]``: present but older than ``current_step - max_staleness``.
    ``usable`` = neither; that is the mask a loss should apply.
    """

    kind: str
    ids: list[str]
    values: F32
    steps: I64
    missing: Bool
    stale: Bool
    classes: npt.NDArray[np.int32] | None = None
    confidence: F32 | None = None
    neighbour_ids: list[list[str]] | None = None
    makers: list[str] | None = None
    fingerprints: list[str] | None = None
    written_at: npt.NDArray[np.float64] | None = None

    @property
    def usable(self) -> Bool:
        return ~self.missing & ~self.stale


@dataclass(slots=True)
class Examples:
    """Features (and labels, ``NO_LABEL`` where unlabeled) of ``ids``, in the order asked."""

    ids: list[str]
    features: F32
    labels: npt.NDArray[np.int32]
    missing: Bool
    modalities: list[str] | None = None


@dataclass(frozen=True, slots=True)
class Coverage:
    """How many of a namespace's registered ids have knowledge of a kind, and how fresh."""

    namespace: str
    kind: str
    total: int
    newest_step: int | None
    at_newest: int
    older: int
    none: int
    steps: Mapping[int, int] = field(default_factory=dict)

    @property
    def fraction_at_newest(self) -> float:
        return self.at_newest / self.total if self.total else 0.0


@dataclass(slots=True)
class Neighbour:
    id: str
    score: float
    step: int


# ---------------------------------------------------------------------------------------
# Names, checked where the types are made (input checks of whole calls: ``bank.rows``).


def validate_name(value: str, field_name: str) -> str:
    try:
        return names.validate_name(value, field_name)
    except SchemaError as exc:
        raise ValueRejectedError(str(exc)) from exc


def validate_id(value: str, field_name: str = "id") -> str:
    try:
        return names.validate_id(value, field_name)
    except SchemaError as exc:
        raise ValueRejectedError(str(exc)) from exc


def validate_kind(value: str, field_name: str = "kind") -> str:
    try:
        return names.validate_kind(value, field_name)
    except SchemaError as exc:
        raise KnowledgeKindError(str(exc)) from exc


def bucket_of(id_: str, buckets: int) -> int:
    """The bucket of an id: CRC-32 of its UTF-8 bytes modulo the bucket count (stable
    across processes and machines, and cheap: this runs for every id of every lookup)."""
    return zlib.crc32(id_.encode()) % buckets
