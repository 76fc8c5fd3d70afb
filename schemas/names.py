"""Validated identifiers: namespace names, example ids and knowledge kinds.

Names end up in Cassandra keys, Kafka keys and file paths, so they are checked at the
boundary (records, CLI, bank) with these functions; each raises a ``SchemaError`` that
names the offending field.
"""

from __future__ import annotations

import re

from carls.schemas.errors import InvalidValueError, WrongTypeError

NAME_PATTERN = r"^[a-z][a-z0-9_]{0,47}$"
"""Namespaces and keyspaces: lowercase identifier, at most 48 characters (Cassandra's limit)."""

MODALITY_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"
"""The ``<modality>`` of a per-modality embedding kind ``embedding/<modality>``."""

MAX_ID_BYTES = 256
"""Longest example id, counted in UTF-8 bytes."""

KINDS: tuple[str, ...] = (
    "embedding",
    "pseudo_label",
    "difficulty",
    "prediction",
    "neighbours",
    "propagated",
    "instruction",
    "message",
    "feedback",
    "fused",
)
"""The knowledge kinds; ``embedding/<modality>`` is accepted as well."""

_NAME_RE = re.compile(NAME_PATTERN)
_MODALITY_RE = re.compile(MODALITY_PATTERN)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def _require_str(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise WrongTypeError(f"expected str, got {type(value).__name__}", field=field)
    return value


def validate_name(value: str, field: str) -> str:
    """Return ``value`` if it is a valid namespace or keyspace name (see ``NAME_PATTERN``)."""
    _require_str(value, field)
    # fullmatch: ``$`` alone would accept a trailing newline.
    if _NAME_RE.fullmatch(value) is None:
        raise InvalidValueError(f"{value!r} does not match {NAME_PATTERN}", field=field)
    return value


def validate_id(value: str, field: str = "id") -> str:
    """Return ``value`` if it is a non-empty example id of at most ``MAX_ID_BYTES`` UTF-8 bytes."""
    _require_str(value, field)
    if not value:
        raise InvalidValueError("id must not be empty", field=field)
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidValueError("id is not valid Unicode", field=field) from exc
    if size > MAX_ID_BYTES:
        raise InvalidValueError(f"id is {size} UTF-8 bytes, at most {MAX_ID_BYTES}", field=field)
    if _CONTROL_RE.search(value):
        raise InvalidValueError("id contains a control character", field=field)
    return value


def validate_kind(kind: str, field: str = "kind") -> str:
    """Return ``kind`` if it is one of ``KINDS`` or ``embedding/<modality>``."""
    _require_str(kind, field)
    if kind in KINDS:
        return kind
    base, sep, modality = kind.partition("/")
    if base == "embedding" and sep and _MODALITY_RE.fullmatch(modality) is not None:
        return kind
    raise InvalidValueError(
        f"unknown kind {kind!r}; expected one of {', '.join(KINDS)} "
        f"or embedding/<modality> with modality matching {MODALITY_PATTERN}",
        field=field,
    )
