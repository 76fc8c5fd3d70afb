"""What every bank accepts, and the one form in which every bank keeps knowledge.

Both banks call the same checks before any I/O, so they reject exactly the same input
by construction (``tests/contract`` proves it on each), and both keep a knowledge row as
a ``Stored``: the columns of the Cassandra ``knowledge`` table, which the in-memory bank
holds as they are. ``encode`` turns a checked batch into rows, ``assemble`` turns rows
back into a ``KnowledgeRead``: one implementation of each for both banks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any, NamedTuple, TypeGuard

import numpy as np
import numpy.typing as npt

from carls.bank.errors import DimensionError, ValueRejectedError
from carls.bank.types import (
    F32,
    I64,
    MAX_BATCH,
    NO_LABEL,
    Bool,
    KnowledgeBatch,
    KnowledgeRead,
    Lineage,
    NamespaceSpec,
    validate_id,
    validate_name,
)
from carls.schemas import names

LATEST_TIMESTAMP = 253_402_300_799.0
"""The last second of year 9999: later stamps are no datetime (nor Cassandra timestamp)."""
SEP = "\x1f"
"""Joins a row's neighbour ids in its ``extra`` column (ids never hold control chars)."""


class Stored(NamedTuple):
    """One knowledge row as a bank keeps it: the ``knowledge`` table's columns, by name.

    A read without lineage selects the first six columns only."""

    id: str
    value: bytes
    """The float32 vector, little-endian (fewer than ``dim`` floats for neighbours)."""
    step: int
    klass: int | None = None
    confidence: float | None = None
    extra: bytes | None = None
    """Neighbour ids joined by ``SEP``."""
    maker: str = ""
    fingerprint: str | None = None
    written_at: datetime | None = None


READ_COLUMNS = Stored._fields[:6]
LINEAGE_COLUMNS = Stored._fields


def encode(batch: KnowledgeBatch, lineage: Lineage, now: float) -> dict[str, list[Any]]:
    """The rows of a batch ``check_batch`` returned, written at ``lineage.step``, as
    columns: name -> one value per row, for the columns the batch has values for (a kind
    fills the same columns in every row), in ``Stored`` order. Rows without their own
    ``written_at`` are stamped ``now`` (Unix seconds)."""
    n = len(batch.ids)
    cols: dict[str, list[Any]] = {
        "id": batch.ids,
        "value": [v.tobytes() for v in batch.values],
        "step": [lineage.step] * n,
    }
    if batch.classes is not None:
        cols["klass"] = batch.classes.tolist()
    if batch.confidence is not None:
        cols["confidence"] = batch.confidence.tolist()
    if batch.neighbour_ids is not None:
        cols["extra"] = [SEP.join(row).encode() for row in batch.neighbour_ids]
    cols["maker"] = [lineage.maker] * n
    cols["fingerprint"] = [lineage.fingerprint] * n
    cols["written_at"] = (
        [datetime.fromtimestamp(now, UTC)] * n
        if batch.written_at is None
        else [datetime.fromtimestamp(float(t), UTC) for t in batch.written_at]
    )
    return cols


def stored_rows(columns: dict[str, list[Any]]) -> list[Stored]:
    """The ``Stored`` rows of ``encode``'s columns (absent columns are ``None``)."""
    names = list(columns)
    rows = zip(*columns.values(), strict=True)
    return [Stored(**dict(zip(names, row, strict=True))) for row in rows]


_ID, _VALUE, _STEP, _KLASS, _CONFIDENCE, _EXTRA, _MAKER, _FINGERPRINT, _WRITTEN_AT = map(
    itemgetter, range(len(Stored._fields))
)
"""Column getters by name: ``assemble`` also takes a driver's plain row tuples, selected
in ``Stored`` column order, without building a ``Stored`` per row on the hot read path."""


def assemble(
    kind: str,
    dim: int,
    ids: list[str],
    rows: Sequence[Sequence[Any] | None],
    lineage: bool,
    current_step: int | None = None,
    max_staleness: int | None = None,
) -> KnowledgeRead:
    """A ``KnowledgeRead`` of ``ids`` from their rows (``Stored``, or tuples with its
    columns in its order; ``None``: no knowledge), in the order asked."""
    n = len(ids)
    values = np.zeros((n, dim), np.float32)
    steps = np.full(n, -1, np.int64)
    missing = np.ones(n, bool)
    present = [k for k, r in enumerate(rows) if r is not None]
    hits: list[Sequence[Any]] = [rows[k] for k in present]  # type: ignore[misc]
    if present:
        idx = np.asarray(present)
        missing[idx] = False
        steps[idx] = list(map(_STEP, hits))
        blobs = list(map(_VALUE, hits))
        if kind == "neighbours":
            for k, blob in zip(present, blobs, strict=True):
                v = np.frombuffer(blob, "<f4")
                values[k, : v.shape[0]] = v
        else:
            values[idx] = np.frombuffer(b"".join(blobs), "<f4").reshape(len(present), dim)
    read = KnowledgeRead(
        kind, ids, values, steps, missing, stale_mask(steps, missing, current_step, max_staleness)
    )
    if kind == "pseudo_label":
        read.classes = np.array(
            [NO_LABEL if r is None or _KLASS(r) is None else _KLASS(r) for r in rows], np.int32
        )
        read.confidence = np.array(
            [0.0 if r is None or _CONFIDENCE(r) is None else _CONFIDENCE(r) for r in rows],
            np.float32,
        )
    if kind == "neighbours":
        read.neighbour_ids = [
            _EXTRA(r).decode().split(SEP) if r is not None and _EXTRA(r) else [] for r in rows
        ]
    if lineage:
        read.makers = [_MAKER(r) if r is not None else "" for r in rows]
        read.fingerprints = [(_FINGERPRINT(r) or "") if r is not None else "" for r in rows]
        read.written_at = np.array(
            [_unix(_WRITTEN_AT(r)) if r is not None else 0.0 for r in rows], np.float64
        )
    return read


def _unix(at: datetime | None) -> float:
    """Seconds since the epoch; Cassandra hands back naive datetimes in UTC."""
    return 0.0 if at is None else at.replace(tzinfo=UTC).timestamp()


# ---------------------------------------------------------------------------------------
# The checks every bank runs on a call's arguments before any I/O.


def check_spec(spec: object) -> NamespaceSpec:
    if not isinstance(spec, NamespaceSpec):
        raise ValueRejectedError(f"spec: expected a NamespaceSpec, got {type(spec).__name__}")
    return spec


def check_lineage(lineage: object) -> Lineage:
    if not isinstance(lineage, Lineage):
        raise ValueRejectedError(f"lineage: expected a Lineage, got {type(lineage).__name__}")
    return lineage


def _is_int(value: object) -> TypeGuard[int | np.integer[Any]]:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def check_bucket(spec: NamespaceSpec, bucket: object) -> int:
    if not _is_int(bucket) or not 0 <= int(bucket) < spec.buckets:
        raise ValueRejectedError(f"bucket: must be an int in 0..{spec.buckets - 1}, got {bucket!r}")
    return int(bucket)


def check_part_rows(rows: object) -> int:
    if not _is_int(rows) or isinstance(rows, bool) or rows < 1:
        raise ValueRejectedError(f"rows: parts need a positive int of rows, got {rows!r}")
    return int(rows)


def check_read(
    spec: NamespaceSpec, kind: str, ids: Sequence[str], max_staleness: int | None
) -> list[str]:
    """A read's kind, ids and staleness bound; returns the ids as a list."""
    spec.dim(kind)
    out = check_ids(ids)
    if max_staleness is not None and (not _is_int(max_staleness) or max_staleness < 0):
        raise ValueRejectedError(f"max_staleness: must be an int >= 0, got {max_staleness!r}")
    return out


def check_quarantine(
    spec: NamespaceSpec, from_step: object, to_step: object, kinds: Sequence[str] | None
) -> list[str]:
    """A quarantine's step range and kinds; returns the kinds it covers."""
    for name, step in (("from_step", from_step), ("to_step", to_step)):
        if not _is_int(step):
            raise ValueRejectedError(f"{name}: must be an int, got {step!r}")
    if from_step > to_step or from_step < 0:  # type: ignore[operator]
        raise ValueRejectedError(f"step range {from_step}..{to_step} is empty or negative")
    if isinstance(kinds, str):
        raise ValueRejectedError("kinds: expected a sequence of kinds, got one string")
    chosen = list(spec.kinds) if kinds is None else list(kinds)
    for kind in chosen:
        spec.dim(kind)
    return chosen


def check_examples(
    ids: Sequence[str],
    features: object,
    labels: Sequence[int] | None,
    modality: str | None,
    dim: int | None,
) -> tuple[list[str], F32, npt.NDArray[np.int32], str]:
    """Examples to register: unique ids, finite features of the namespace's dimension
    (``dim``; ``None`` until the first registration fixes it), labels (``NO_LABEL`` =
    unlabeled) and a modality (``""`` = none). Returns them normalised."""
    id_list = check_ids(ids)
    if len(set(id_list)) != len(id_list):
        raise ValueRejectedError("ids: the batch names an id twice")
    try:
        arr = np.asarray(features)
    except ValueError as exc:
        raise DimensionError(f"features: not a rectangular array ({exc})") from exc
    if arr.ndim != 2 or arr.shape[0] != len(id_list) or arr.shape[1] < 1:
        raise DimensionError(f"features: expected shape ({len(id_list)}, dim), got {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise DimensionError(
            f"features: dimension {arr.shape[1]} does not match the namespace's {dim}"
        )
    feats = check_matrix(arr, len(id_list), arr.shape[1], "features")
    return id_list, feats, _check_labels(labels, len(id_list)), _check_modality(modality)


def _check_labels(labels: Sequence[int] | None, n: int) -> npt.NDArray[np.int32]:
    if labels is None:
        return np.full(n, NO_LABEL, dtype=np.int32)
    arr = np.asarray(labels)
    if arr.shape != (n,) or not np.issubdtype(arr.dtype, np.integer):
        raise ValueRejectedError(f"labels: expected {n} ints, got {arr.dtype} {arr.shape}")
    if (arr < NO_LABEL).any() or (arr > np.iinfo(np.int32).max).any():
        raise ValueRejectedError(f"labels: must be class indices, or {NO_LABEL} for unlabeled")
    return arr.astype(np.int32)


def _check_modality(modality: str | None) -> str:
    return "" if modality is None else validate_name(modality, "modality")


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
        if ((written_at < 0) | (written_at > LATEST_TIMESTAMP)).any():
            raise ValueRejectedError(
                f"written_at: Unix seconds must lie in 0..{LATEST_TIMESTAMP:.0f} (year 9999)"
            )
    return KnowledgeBatch(ids, values, classes, confidence, neighbour_ids, written_at)


def stale_mask(
    steps: I64, missing: Bool, current_step: int | None, max_staleness: int | None
) -> Bool:
    if max_staleness is not None and max_staleness < 0:
        raise ValueRejectedError("max_staleness: must be >= 0")
    if max_staleness is None or current_step is None:
        return np.zeros(len(steps), dtype=bool)
    return ~missing & (steps < int(current_step) - int(max_staleness))
