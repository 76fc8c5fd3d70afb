"""The bank's value types: namespace specs, lineage, batches written and batches read.

Every kind's value for one id is a float32 vector of the kind's declared dimension:

    embedding, embedding/<modality>   the embedding                       (dim = embedding size)
    prediction                        class probabilities                 (dim = classes)
    pseudo_label                      class probabilities, plus ``classes`` and ``confidence``
    difficulty                        one float: loss, or margin          (dim = 1)
    neighbours                        scores, plus ``neighbour_ids``      (dim = k, at most)

so a batch is one ``(n, dim)`` array, and reads are a single gather on the client.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping, Sequence
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
# Validation shared by every implementation, so they reject exactly the same input.


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


_FAST_ID_CHARS = names.MAX_ID_BYTES // 4  # ids this short fit in MAX_ID_BYTES whatever they hold
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_ids(ids: Sequence[str], field_name: str = "ids") -> list[str]:
    """Validate a batch of ids (non-empty, not too many, each a valid id); return a list.

    Runs on every lookup, so the common case (short, clean str ids) is checked in bulk."""
    if isinstance(ids, str):
        raise ValueRejectedError(f"{field_name}: expected a sequence of ids, got one string")
    out = ids if isinstance(ids, list) else list(ids)
    if not out:
        raise ValueRejectedError(f"{field_name}: the batch is empty")
    if len(out) > MAX_BATCH:
        raise ValueRejectedError(f"{field_name}: {len(out)} ids in one batch; at most {MAX_BATCH}")
    try:
        joined = "".join(out)
        lengths = list(map(len, out))
        fast = (
            min(lengths) > 0
            and max(lengths) <= _FAST_ID_CHARS
            and _CONTROL.search(joined) is None
            and bool(joined.encode())
        )
    except (TypeError, UnicodeEncodeError):
        fast = False
    if not fast:
        for i, id_ in enumerate(out):
            validate_id(id_, f"{field_name}[{i}]")
    return out


def check_matrix(
    values: object, rows: int, dim: int, what: str, allow_fewer_columns: bool = False
) -> F32:
    try:
        arr = np.asarray(values)
    except ValueError as exc:  # ragged nested lists
        raise DimensionError(f"{what}: not a rectangular array ({exc})") from exc
    if arr.ndim == 1 and dim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2 or arr.shape[0] != rows:
        raise DimensionError(f"{what}: expected shape ({rows}, {dim}), got {arr.shape}")
    if arr.shape[1] != dim and not (allow_fewer_columns and 1 <= arr.shape[1] <= dim):
        raise DimensionError(f"{what}: dimension {arr.shape[1]} does not match the declared {dim}")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueRejectedError(f"{what}: values must be numeric, got {arr.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):  # out-of-range floats become Inf
        out = np.ascontiguousarray(arr, dtype="<f4")
    bad = ~np.isfinite(out).all(axis=1)
    if bad.any():
        raise ValueRejectedError(f"{what}: NaN or Inf in row {int(np.argmax(bad))}")
    return out


def check_batch(spec: NamespaceSpec, kind: str, batch: KnowledgeBatch) -> KnowledgeBatch:
    """Validate a write against the namespace; return a normalised copy."""
    dim = spec.dim(kind)
    ids = check_ids(batch.ids)
    if len(set(ids)) != len(ids):
        raise ValueRejectedError("ids: the batch names an id twice")
    values = check_matrix(
        batch.values, len(ids), dim, f"{kind} values", allow_fewer_columns=kind == "neighbours"
    )
    classes = confidence = None
    neighbour_ids = None
    if kind == "pseudo_label":
        if batch.classes is None or batch.confidence is None:
            raise ValueRejectedError("pseudo_label: needs classes and confidence")
        classes = np.asarray(batch.classes)
        if classes.shape != (len(ids),) or not np.issubdtype(classes.dtype, np.integer):
            raise ValueRejectedError(f"pseudo_label classes: expected {len(ids)} ints")
        if (classes < 0).any() or (classes >= dim).any():
            raise ValueRejectedError(f"pseudo_label classes: must lie in 0..{dim - 1}")
        classes = classes.astype(np.int32)
        confidence = check_matrix(batch.confidence, len(ids), 1, "pseudo_label confidence").reshape(
            -1
        )
    if kind == "neighbours":
        if batch.neighbour_ids is None or len(batch.neighbour_ids) != len(ids):
            raise ValueRejectedError("neighbours: needs one list of neighbour ids per id")
        neighbour_ids = []
        for i, given in enumerate(batch.neighbour_ids):
            row = list(given)
            if len(row) != values.shape[1]:
                raise DimensionError(
                    f"neighbours[{i}]: {len(row)} ids for {values.shape[1]} scores"
                )
            for j, nid in enumerate(row):
                validate_id(nid, f"neighbour_ids[{i}][{j}]")
            neighbour_ids.append(row)
    written_at = None
    if batch.written_at is not None:
        written_at = np.asarray(batch.written_at, dtype=np.float64).reshape(-1)
        if written_at.shape != (len(ids),) or not np.isfinite(written_at).all():
            raise ValueRejectedError(f"written_at: expected {len(ids)} finite timestamps")
    return KnowledgeBatch(ids, values, classes, confidence, neighbour_ids, written_at)


def stale_mask(
    steps: I64, missing: Bool, current_step: int | None, max_staleness: int | None
) -> Bool:
    if max_staleness is not None and max_staleness < 0:
        raise ValueRejectedError("max_staleness: must be >= 0")
    if max_staleness is None or current_step is None:
        return np.zeros(len(steps), dtype=bool)
    return ~missing & (steps < current_step - max_staleness)


def bucket_of(id_: str, buckets: int) -> int:
    """The bucket of an id: CRC-32 of its UTF-8 bytes modulo the bucket count (stable
    across processes and machines, and cheap: this runs for every id of every lookup)."""
    return zlib.crc32(id_.encode()) % buckets
