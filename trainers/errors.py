"""Errors of the trainers.

    CarlsError (schemas.errors)
    └── TrainerError
        ├── SpecError           a job spec is not valid; ``field`` names the culprit
        │   └── DatasetError    the spec reads, but its dataset does not load or fit it
        │                       (also raised by the library for ids and features that
        │                       disagree; ``field`` then names the argument)
        ├── ModelError          a user's model does not fit the library: a named output
        │                       is absent, or an output has the wrong rank or dtype
        └── JobFailedError      a training job stopped before it finished

``field`` is a dotted path into the job spec (``paradigm.params.threshold``), or the spec
file's path when the file itself cannot be read; the message is ``"<field>: <problem>"``.
"""

from __future__ import annotations

from carls.schemas.errors import CarlsError


class TrainerError(CarlsError):
    """Something went wrong in a trainer."""


class SpecError(TrainerError):
    """A job spec is not valid: ``field`` says where, ``problem`` says what."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class DatasetError(SpecError):
    """The job's dataset is missing, malformed, or does not fit the spec."""


class ModelError(TrainerError, ValueError):
    """A model handed to the library lacks a named output, or an output has the wrong
    shape or dtype; raised before any training step and before anything is written."""


class JobFailedError(TrainerError):
    """A training job stopped before it finished."""
