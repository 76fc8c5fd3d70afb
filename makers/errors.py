"""Errors of the knowledge makers.

    CarlsError (schemas.errors)
    └── MakerError
        ├── InvalidInputError       arrays of the wrong shape or out-of-range values handed
        │                           to a maker function (also a ``ValueError``)
        ├── CheckpointError         a checkpoint cannot serve
        │   ├── ArtifactMissingError    the manifest's URI names no readable local file
        │   ├── ArtifactCorruptError    the file's size or sha256 differs from the manifest
        │   └── NotAModelError          the file does not load as a Keras model of the
        │                               artifact convention (one input, two rank-2 outputs)
        └── BadModelOutputError     a loaded model produced NaN/Inf or wrongly shaped outputs

A checkpoint error belongs to one manifest: the record goes to the dead-letter topic with
the message as its reason, and the previously loaded model keeps serving.
"""

from __future__ import annotations

from carls.schemas.errors import CarlsError


class MakerError(CarlsError):
    """Something went wrong making knowledge."""


class InvalidInputError(MakerError, ValueError):
    """An argument has the wrong shape, length or value (a caller's mistake)."""


class CheckpointError(MakerError):
    """A checkpoint named by a manifest cannot be used."""


class ArtifactMissingError(CheckpointError):
    """The manifest's URI does not name a readable local file (or uses an unknown scheme)."""


class ArtifactCorruptError(CheckpointError):
    """The artifact's size or sha256 does not match the manifest."""


class NotAModelError(CheckpointError):
    """The artifact is intact but is not a usable model: it fails to load as Keras, or it
    does not have one input and two rank-2 outputs."""


class BadModelOutputError(MakerError):
    """The model's outputs contain NaN/Inf or have the wrong shape."""
