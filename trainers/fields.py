"""Validated field types shared by job specs and paradigm plug-ins.

A job spec's YAML and a library user's ``PseudoLabel(threshold=0.8)`` go through the same
pydantic fields, so each parameter is declared once, with its bounds. The types here are
the strict ones a spec wants: an int is an int (not ``2.0``, ``True`` or ``"3"``), a
number is finite (an int is a number), a string is non-empty. File paths are resolved
against the ``base_dir`` of the validation context (the spec file's folder), else the
working directory.

``FieldProblem`` is how a validator names a field below the one it validates (a model
validator naming one of its fields, a list validator naming an item); ``carls.trainers.spec``
turns it into a ``SpecError`` at the full dotted path.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AllowInfNan,
    BeforeValidator,
    Strict,
    StringConstraints,
    ValidationInfo,
)

from carls.schemas import names
from carls.schemas.errors import SchemaError

Int = Annotated[int, Strict()]
"""An int: not a bool, a float or a string."""
Number = Annotated[float, Strict(), AllowInfNan(False)]
"""A finite float; an int is accepted."""
Flag = Annotated[bool, Strict()]
"""``true`` or ``false``, nothing that merely converts to one."""
Text = Annotated[str, StringConstraints(strict=True, min_length=1)]
"""A non-empty string."""


class FieldProblem(ValueError):
    """A validator's problem with ``loc`` below the value it validates (field names and
    list indices), so the error names that field rather than the whole model."""

    def __init__(self, loc: tuple[str | int, ...], problem: str) -> None:
        self.loc = loc
        self.problem = problem
        super().__init__(problem)


def base_dir(info: ValidationInfo) -> Path:
    """The folder relative paths are resolved against: ``context["base_dir"]`` or the cwd."""
    context = info.context if isinstance(info.context, dict) else {}
    base = context.get("base_dir")
    return Path(base) if base is not None else Path.cwd()


def _resolved(value: object, info: ValidationInfo) -> Path | None:
    if value is None:
        return None
    if isinstance(value, Path):
        path = value
    elif isinstance(value, str) and value:
        path = Path(value)
    else:
        raise ValueError(f"expected a file path, got {kind_of(value)}")
    path = path.expanduser()
    if not path.is_absolute():
        path = base_dir(info) / path
    return path.resolve()


resolved_path = BeforeValidator(_resolved)
"""For ``Annotated[Path | None, resolved_path]``: made absolute against ``base_dir``."""


def check_file(path: Path, suffixes: Collection[str]) -> Path:
    """``path`` if it names an existing file with one of ``suffixes``; else ``ValueError``."""
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"{path}: expected a {' or '.join(suffixes)} file")
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    return path


def existing_file(*suffixes: str) -> BeforeValidator:
    """For ``Annotated[Path | None, existing_file(".npz")]``: a resolved path to an existing
    file with one of ``suffixes`` (``None`` passes)."""

    def check(value: object, info: ValidationInfo) -> Path | None:
        path = _resolved(value, info)
        return None if path is None else check_file(path, suffixes)

    return BeforeValidator(check)


def _name(value: str) -> str:
    try:
        return names.validate_name(value, "")
    except SchemaError as exc:
        raise ValueError(str(exc)) from exc


def _modality(value: str) -> str:
    if re.fullmatch(names.MODALITY_PATTERN, value) is None:
        raise ValueError(f"modality names must match {names.MODALITY_PATTERN}, got {value!r}")
    return value


Name = Annotated[str, Strict(), AfterValidator(_name)]
"""A namespace name (``carls.schemas.names.NAME_PATTERN``)."""
Modality = Annotated[str, Strict(), AfterValidator(_modality)]
"""A modality name (``carls.schemas.names.MODALITY_PATTERN``)."""


def kind_of(value: object) -> str:
    """What a value is, for messages: ``null``, ``a list``, ``str 'many'``, ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({value!r})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, os.PathLike):
        return f"path {os.fspath(value)!r}"
    return f"{type(value).__name__} {value!r}"


def unique(items: tuple[Any, ...]) -> None:
    """Raise ``FieldProblem`` at the first item that repeats an earlier one."""
    for i, item in enumerate(items):
        if item in items[:i]:
            raise FieldProblem((i,), f"{item!r} is listed twice")
