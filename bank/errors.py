"""Errors of the knowledge bank.

    CarlsError (schemas.errors)
    └── BankError
        ├── BankUnavailableError    Cassandra unreachable, timed out, overloaded (retriable)
        ├── NamespaceError          unknown namespace, or one that already exists
        ├── KnowledgeKindError      a kind the namespace does not declare
        ├── DimensionError          a vector whose length disagrees with the declared one
        ├── ValueRejectedError      NaN/Inf, empty batches, malformed values, invalid
        │                           names or ids (also a ``schemas`` InvalidValueError)
        ├── ExportFormatError       a corrupt, truncated or foreign export file
        ├── BlobMissingError        no such file in the bank's blob store
        ├── BlobCorruptError        a stored file with a missing, truncated or corrupt
        │                           chunk, or not the content its reader expects
        ├── BlobTooLargeError       a file over the size limit (also a ValueRejectedError)
        └── UnreadableUriError      a URI nothing here reads: an unknown scheme, a backend
                                    not installed, a local path outside the allowed root

A read that fails raises; it never comes back as "missing".
"""

from __future__ import annotations

from carls.schemas.errors import CarlsError, InvalidValueError


class BankError(CarlsError):
    """Something went wrong in the knowledge bank."""


class BankUnavailableError(BankError):
    """The backend could not answer; trying again may succeed."""

    retriable = True


class NamespaceError(BankError):
    """The namespace is unknown (or, on create, already exists)."""


class KnowledgeKindError(BankError):
    """The kind is not declared by the namespace."""


class DimensionError(BankError):
    """A vector's length disagrees with the namespace's declared dimension."""


class ValueRejectedError(BankError, InvalidValueError):
    """A value is not acceptable: NaN or Inf, an empty batch, a malformed payload."""


class ExportFormatError(BankError):
    """An export file is corrupt, truncated, or not a carls export."""


class BlobMissingError(BankError):
    """No file of that scope and name is in the bank."""


class BlobCorruptError(BankError):
    """A stored file is incomplete or corrupt, or not the content its reader expects."""


class BlobTooLargeError(ValueRejectedError):
    """A file is over the configured size limit."""


class UnreadableUriError(BankError):
    """A URI of a scheme nothing here reads, or a local path outside the allowed root."""
