"""The exception tree shared by every carls package.

    CarlsError                      root; ``retriable`` says whether trying again may succeed
    ├── SchemaError                 a record on the wire is not valid (``field`` names where)
    │   ├── UnknownSchemaError      the envelope names a schema this build does not know
    │   ├── UnknownVersionError     a known schema at a version this build cannot read
    │   ├── MissingFieldError       a required field is absent
    │   ├── WrongTypeError          a field holds a value of the wrong type
    │   └── InvalidValueError       a field has the right type but an unacceptable value
    └── (families of the other layers: ``bank.errors``, ``streams.errors``, ...)

Every layer raises its own family, chained with ``raise ... from exc``; nothing turns a
backend failure into "no data".
"""

from __future__ import annotations


class CarlsError(Exception):
    """Root of every error carls raises on purpose."""

    retriable: bool = False


class SchemaError(CarlsError):
    """A record is not what its schema says; ``field`` is the dotted path of the culprit."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class UnknownSchemaError(SchemaError):
    """The record names a schema this build does not know."""


class UnknownVersionError(SchemaError):
    """The record's schema version is not one this build can read."""


class MissingFieldError(SchemaError):
    """A required field is absent."""


class WrongTypeError(SchemaError):
    """A field holds a value of the wrong type."""


class InvalidValueError(SchemaError):
    """A field's value has the right type but is not acceptable (empty, out of range, ...)."""
