"""Records to bytes and back.

Wire format: one UTF-8 JSON object, compact separators, holding the envelope keys
``schema`` and ``version`` and then the record's fields; ``bytes`` fields are standard
base64 strings. Example::

    {"schema":"carls.examples","version":1,"namespace":"mnist","ids":["a","b"],...}

Decoding rules:

- Fields are read by the dataclass annotations; ``bool`` and ``int`` are never confused,
  an ``int`` is accepted for a ``float`` field, NaN and infinities are rejected.
- A field with a default may be absent. Unknown extra fields are **ignored**, so a newer
  writer may add optional fields without breaking older readers.
- Every failure is a ``SchemaError`` whose ``field`` names the culprit (``None`` when the
  bytes are not a JSON object at all); callers dead-letter it with that reason.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from typing import Any, TypeVar, overload

from carls.schemas._types import type_name
from carls.schemas.errors import (
    InvalidValueError,
    MissingFieldError,
    SchemaError,
    UnknownSchemaError,
    UnknownVersionError,
    WrongTypeError,
)
from carls.schemas.records import (
    R,
    Record,
    field_types,
    known_schemas,
    record_class,
    supported_versions,
)


def encode(record: Record) -> bytes:
    """The wire bytes of ``record`` (re-validated first, so list/dict fields mutated after
    construction cannot produce bytes that fail to decode)."""
    checked = dataclasses.replace(record)  # runs __init__ and so the full validation
    payload: dict[str, Any] = {"schema": checked.SCHEMA, "version": checked.VERSION}
    for name in field_types(type(checked)):
        value = getattr(checked, name)
        if isinstance(value, bytes):
            value = base64.b64encode(value).decode("ascii")
        payload[name] = value
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


@overload
def decode(data: bytes, expected: None = None) -> Record: ...
@overload
def decode(data: bytes, expected: type[R]) -> R: ...
def decode(data: bytes, expected: type[R] | None = None) -> R | Record:
    """Parse and validate wire bytes; with ``expected``, the record must be of that schema."""
    obj = _parse_object(data)
    schema = _envelope(obj, "schema", str)
    if expected is not None and schema != expected.SCHEMA:
        raise UnknownSchemaError(
            f"expected schema {expected.SCHEMA!r}, got {schema!r}", field="schema"
        )
    versions = supported_versions(schema)
    if not versions:
        raise UnknownSchemaError(
            f"unknown schema {schema!r}; known: {', '.join(known_schemas())}", field="schema"
        )
    version = _envelope(obj, "version", int)
    cls = record_class(schema, version)
    # A future upgrade path plugs in here: map (schema, old version) to a function that
    # rewrites ``obj`` into the newest version's fields before the lookup.
    if cls is None:
        raise UnknownVersionError(
            f"{schema} version {version} is not supported; supported versions: "
            f"{', '.join(map(str, versions))}",
            field="version",
        )
    return cls(**_fields_from_json(cls, obj))


def _parse_object(data: bytes) -> dict[str, Any]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SchemaError(f"record is not UTF-8: {exc}") from exc
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise SchemaError(f"record is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        kind = "array" if isinstance(obj, list) else type(obj).__name__
        raise SchemaError(f"record must be a JSON object, got a JSON {kind}")
    return obj


_E = TypeVar("_E", str, int)


def _envelope(obj: dict[str, Any], key: str, kind: type[_E]) -> _E:
    if key not in obj:
        raise MissingFieldError("envelope key is missing", field=key)
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise WrongTypeError(f"expected {kind.__name__}, got {type_name(value)}", field=key)
    return value


def _fields_from_json(cls: type[Record], obj: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments from a JSON object: presence checked, base64 decoded."""
    defaults = {
        f.name
        for f in dataclasses.fields(cls)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    }
    kwargs: dict[str, Any] = {}
    for name, annotation in field_types(cls).items():
        if name not in obj:
            if name in defaults:
                continue
            raise MissingFieldError("required field is missing", field=name)
        value = obj[name]
        if bytes in (annotation, *getattr(annotation, "__args__", ())) and value is not None:
            value = _from_base64(value, name)
        kwargs[name] = value
    return kwargs


def _from_base64(value: object, field: str) -> bytes:
    if not isinstance(value, str):
        raise WrongTypeError(f"expected base64 str, got {type_name(value)}", field=field)
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise InvalidValueError("not valid base64", field=field) from exc
