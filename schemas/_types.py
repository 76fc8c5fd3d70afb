"""Type checks for record fields, driven by the dataclass annotations.

Supported annotations: ``str``, ``int``, ``float``, ``bool``, ``bytes``, ``list[X]``,
``dict[str, Any]`` (any JSON value inside) and ``X | None``. ``bool`` is never accepted
as ``int`` or ``float`` and vice versa; ``int`` is accepted as ``float`` and converted.
"""

from __future__ import annotations

import math
import types
from typing import Any, Union, get_args, get_origin

from carls.schemas.errors import InvalidValueError, WrongTypeError

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


def type_name(value: object) -> str:
    """The name used in messages: JSON-ish for ``None``, Python's otherwise."""
    return "null" if value is None else type(value).__name__


def _wrong(expected: str, value: object, path: str) -> WrongTypeError:
    return WrongTypeError(f"expected {expected}, got {type_name(value)}", field=path)


def _check_str(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise _wrong("str", value, path)
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidValueError("string is not valid Unicode", field=path) from exc
    return value


def _check_float(value: object, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong("float", value, path)
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidValueError(f"must be a finite number, got {value}", field=path)
    try:
        return float(value)
    except OverflowError as exc:
        raise InvalidValueError("number is out of float range", field=path) from exc


def _check_json(value: object, path: str) -> Any:
    """A JSON value (what ``json.loads`` can return), copied; finite floats only."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return _check_float(value, path)
    if isinstance(value, str):
        return _check_str(value, path)
    if isinstance(value, list):
        return [_check_json(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict):
        return _check_json_object(value, path)
    raise _wrong("a JSON value", value, path)


def _check_json_object(value: dict[Any, Any], path: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise WrongTypeError(f"object keys must be str, got {type_name(key)}", field=path)
        out[_check_str(key, path)] = _check_json(item, f"{path}.{key}")
    return out


def check_value(value: object, annotation: Any, path: str) -> Any:
    """Return ``value`` checked against ``annotation`` (containers copied, ints as floats)."""
    origin = get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        args = get_args(annotation)
        if value is None and type(None) in args:
            return None
        (inner,) = (arg for arg in args if arg is not type(None))
        return check_value(value, inner, path)
    if origin is list:
        if not isinstance(value, list):
            raise _wrong("list", value, path)
        (item_type,) = get_args(annotation)
        return [check_value(item, item_type, f"{path}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _wrong("object", value, path)
        return _check_json_object(value, path)
    if annotation is str:
        return _check_str(value, path)
    if annotation is bool:
        if not isinstance(value, bool):
            raise _wrong("bool", value, path)
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong("int", value, path)
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise InvalidValueError("integer does not fit in 64 bits", field=path)
        return value
    if annotation is float:
        return _check_float(value, path)
    if annotation is bytes:
        if not isinstance(value, bytes):
            raise _wrong("bytes", value, path)
        return value
    raise TypeError(f"unsupported field annotation {annotation!r} at {path}")
