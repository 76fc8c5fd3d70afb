"""The contracts of carls: versioned wire records, their codec and validation, the CQL schema.

No I/O; imports nothing else of ours. See ``schemas.codec`` for the wire format and
``schemas.errors`` for the exception tree.
"""

from carls.schemas.codec import decode, encode
from carls.schemas.cql import TABLES, schema_script, schema_statements
from carls.schemas.errors import (
    CarlsError,
    InvalidValueError,
    MissingFieldError,
    SchemaError,
    UnknownSchemaError,
    UnknownVersionError,
    WrongTypeError,
)
from carls.schemas.names import (
    KINDS,
    MAX_ID_BYTES,
    MODALITY_PATTERN,
    NAME_PATTERN,
    validate_id,
    validate_kind,
    validate_name,
)
from carls.schemas.records import (
    PRIORITIES,
    CheckpointManifest,
    DeadLetter,
    ExampleBatch,
    ProgressEvent,
    Record,
    TrainingJob,
    known_schemas,
    record_class,
    register,
    supported_versions,
)

__all__ = [
    "KINDS",
    "MAX_ID_BYTES",
    "MODALITY_PATTERN",
    "NAME_PATTERN",
    "PRIORITIES",
    "TABLES",
    "CarlsError",
    "CheckpointManifest",
    "DeadLetter",
    "ExampleBatch",
    "InvalidValueError",
    "MissingFieldError",
    "ProgressEvent",
    "Record",
    "SchemaError",
    "TrainingJob",
    "UnknownSchemaError",
    "UnknownVersionError",
    "WrongTypeError",
    "decode",
    "encode",
    "known_schemas",
    "record_class",
    "register",
    "schema_script",
    "schema_statements",
    "supported_versions",
    "validate_id",
    "validate_kind",
    "validate_name",
]
