"""The versioned records that travel on the topics.

Each record is a frozen, keyword-only dataclass with its wire identity in ``SCHEMA`` and
``VERSION``. Records validate themselves on construction (types first, then value rules),
so an invalid record cannot exist in Python either; list and dict fields are copied.
``schemas.codec`` turns records into bytes and back.

Adding a version: define the new class (e.g. ``TrainingJobV2`` with ``VERSION = 2``),
decorate it with ``@register`` and point the public name at it; the old class stays
registered so old records still decode.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from carls.schemas._types import check_value
from carls.schemas.errors import InvalidValueError
from carls.schemas.names import validate_id, validate_kind, validate_name

PRIORITIES: tuple[str, ...] = ("demand", "refresh")
"""``ExampleBatch.priority`` values; demand batches (from trainers) go ahead of refresh work."""

_SHA256_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """Base of every wire record: validation on construction, identity in ``SCHEMA``/``VERSION``."""

    SCHEMA: ClassVar[str]
    VERSION: ClassVar[int]

    def __post_init__(self) -> None:
        for name, annotation in field_types(type(self)).items():
            object.__setattr__(self, name, check_value(getattr(self, name), annotation, name))
        self._validate()

    def _validate(self) -> None:
        """Value rules beyond the types; subclasses override."""


_FIELD_TYPES: dict[type[Record], dict[str, Any]] = {}


def field_types(cls: type[Record]) -> dict[str, Any]:
    """The resolved annotation of each dataclass field of ``cls``, in field order."""
    types = _FIELD_TYPES.get(cls)
    if types is None:
        hints = typing.get_type_hints(cls)
        types = _FIELD_TYPES[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    return types


R = TypeVar("R", bound=Record)

_REGISTRY: dict[tuple[str, int], type[Record]] = {}


def register(cls: type[R]) -> type[R]:
    """Make ``cls`` decodable under its ``(SCHEMA, VERSION)``."""
    key = (cls.SCHEMA, cls.VERSION)
    if key in _REGISTRY:
        raise ValueError(f"{key} is already registered to {_REGISTRY[key].__name__}")
    _REGISTRY[key] = cls
    return cls


def record_class(schema: str, version: int) -> type[Record] | None:
    """The class registered for ``(schema, version)``, or None."""
    return _REGISTRY.get((schema, version))


def supported_versions(schema: str) -> tuple[int, ...]:
    """The versions of ``schema`` this build can decode, ascending (empty if unknown)."""
    return tuple(sorted(v for s, v in _REGISTRY if s == schema))


def known_schemas() -> tuple[str, ...]:
    """Every registered schema name, sorted."""
    return tuple(sorted({s for s, _ in _REGISTRY}))


def _at_least(value: int | float, minimum: int, field: str) -> None:
    if value < minimum:
        raise InvalidValueError(f"must be >= {minimum}, got {value}", field=field)


def _not_empty(value: str, field: str) -> None:
    if not value:
        raise InvalidValueError("must not be empty", field=field)


def _timestamp(value: float, field: str) -> None:
    if not math.isfinite(value) or value < 0:
        raise InvalidValueError(f"must be unix seconds >= 0, got {value}", field=field)


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class TrainingJob(Record):
    """A job submitted to ``carls.jobs``; ``spec`` is the full job spec, validated by trainers.
    Jobs of one ``group`` (``group_size`` of them) start together."""

    SCHEMA: ClassVar[str] = "carls.job"
    VERSION: ClassVar[int] = 1

    job_id: str
    namespace: str
    spec: dict[str, Any]
    submitted_at: float
    group: str | None = None
    group_size: int = 1

    def _validate(self) -> None:
        validate_id(self.job_id, "job_id")
        validate_name(self.namespace, "namespace")
        _timestamp(self.submitted_at, "submitted_at")
        if self.group is None:
            if self.group_size != 1:
                raise InvalidValueError(
                    "a job without a group has group_size 1", field="group_size"
                )
        else:
            validate_id(self.group, "group")
            if not 2 <= self.group_size <= 64:
                raise InvalidValueError(
                    f"a group has 2 to 64 jobs, got {self.group_size}", field="group_size"
                )


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointManifest(Record):
    """A published checkpoint (``carls.checkpoints``): where the artifact is, how to verify it."""

    SCHEMA: ClassVar[str] = "carls.checkpoint"
    VERSION: ClassVar[int] = 1

    namespace: str
    step: int
    uri: str
    format: str
    sha256: str
    size: int
    created_at: float
    model_fingerprint: str = ""
    producer: str = ""

    def _validate(self) -> None:
        validate_name(self.namespace, "namespace")
        _at_least(self.step, 0, "step")
        _not_empty(self.uri, "uri")
        _not_empty(self.format, "format")
        if _SHA256_RE.fullmatch(self.sha256) is None:
            raise InvalidValueError("must be 64 lowercase hex digits", field="sha256")
        _at_least(self.size, 0, "size")
        _timestamp(self.created_at, "created_at")


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class ExampleBatch(Record):
    """Example ids for makers (``carls.examples``).

    ``step`` is the checkpoint step a refresh campaign works for (required for refresh,
    normally None for demand); empty ``kinds`` asks every maker.
    """

    SCHEMA: ClassVar[str] = "carls.examples"
    VERSION: ClassVar[int] = 1

    namespace: str
    ids: list[str]
    priority: str
    step: int | None = None
    campaign: str = ""
    kinds: list[str] = field(default_factory=list)

    def _validate(self) -> None:
        validate_name(self.namespace, "namespace")
        if not self.ids:
            raise InvalidValueError("must hold at least one id", field="ids")
        for i, example_id in enumerate(self.ids):
            validate_id(example_id, f"ids[{i}]")
        if self.priority not in PRIORITIES:
            raise InvalidValueError(
                f"must be one of {', '.join(PRIORITIES)}, got {self.priority!r}", field="priority"
            )
        if self.step is not None:
            _at_least(self.step, 0, "step")
        elif self.priority == "refresh":
            raise InvalidValueError("a refresh batch must name its checkpoint step", field="step")
        for i, kind in enumerate(self.kinds):
            validate_kind(kind, f"kinds[{i}]")


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class ProgressEvent(Record):
    """How far a maker got with one kind at one step (``processed`` of ``total`` ids)."""

    SCHEMA: ClassVar[str] = "carls.progress"
    VERSION: ClassVar[int] = 1

    namespace: str
    kind: str
    step: int
    processed: int
    total: int | None
    worker: str
    campaign: str = ""
    at: float

    def _validate(self) -> None:
        validate_name(self.namespace, "namespace")
        validate_kind(self.kind, "kind")
        _at_least(self.step, 0, "step")
        _at_least(self.processed, 0, "processed")
        if self.total is not None:
            _at_least(self.total, 0, "total")
        _timestamp(self.at, "at")


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter(Record):
    """A record that could not be processed, with why and where it came from.

    ``raw`` is the original bytes (base64 on the wire), or their first bytes when the
    record was too large to carry whole (``raw_truncated``); ``raw_size`` and
    ``raw_sha256`` describe the original either way (-1 and "" in letters written before
    they existed). Partition/offset are -1 when unknown.
    """

    SCHEMA: ClassVar[str] = "carls.deadletter"
    VERSION: ClassVar[int] = 1

    reason: str
    error: str
    source_topic: str
    source_partition: int
    source_offset: int
    raw: bytes
    at: float
    worker: str = ""
    raw_size: int = -1
    raw_sha256: str = ""
    raw_truncated: bool = False

    def _validate(self) -> None:
        _not_empty(self.reason, "reason")
        _at_least(self.source_partition, -1, "source_partition")
        _at_least(self.source_offset, -1, "source_offset")
        _at_least(self.raw_size, -1, "raw_size")
        if self.raw_sha256 and _SHA256_RE.fullmatch(self.raw_sha256) is None:
            raise InvalidValueError("must be 64 lowercase hex digits", field="raw_sha256")
        _timestamp(self.at, "at")
