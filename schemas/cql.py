"""The knowledge bank's Cassandra schema (CQL DDL), as text; executing it is the bank's job.

Layout: rows are grouped into a fixed number of buckets per namespace (``namespaces.buckets``)
so a batch lookup is a few ``IN`` queries by bucket and a namespace can be enumerated bucket
by bucket. Vectors are raw little-endian float32 ``blob`` values. Every statement is
idempotent (``IF NOT EXISTS``); compaction and caching are Cassandra's defaults.
"""

from __future__ import annotations

from carls.schemas.errors import InvalidValueError
from carls.schemas.names import validate_name

TABLES: tuple[str, ...] = (
    "namespaces",
    "examples",
    "knowledge",
    "kv",
    "blob_index",
    "blob_chunks",
    "roundtrip",
)
"""The tables ``schema_statements`` creates, in creation order."""

_TABLE_BODIES: dict[str, str] = {
    # One row per namespace; ``kinds`` maps kind -> vector dimension (0 when not a vector);
    # ``settings`` is a JSON object.
    # ``uid`` is fresh on every create, and keys the namespace's examples and knowledge:
    # a dropped and re-created namespace never sees the old rows or their tombstones.
    "namespaces": """(
    name text PRIMARY KEY,
    uid uuid,
    buckets int,
    kinds map<text, int>,
    ttl map<text, int>,
    feature_dim int,
    created_at timestamp,
    settings text
)""",
    # The inputs makers need, registered once per namespace.
    "examples": """(
    ns uuid,
    bucket int,
    id text,
    features blob,
    label int,
    modality text,
    PRIMARY KEY ((ns, bucket), id)
)""",
    # Knowledge with its lineage; ``value`` is a little-endian float32 vector, ``extra`` the
    # neighbour ids (UTF-8, separated by U+001F). Cells are written ``USING TIMESTAMP step``.
    "knowledge": """(
    ns uuid,
    kind text,
    bucket int,
    id text,
    value blob,
    klass int,
    confidence float,
    extra blob,
    step bigint,
    maker text,
    fingerprint text,
    written_at timestamp,
    PRIMARY KEY ((ns, kind, bucket), id)
)""",
    # Generic bank metadata.
    "kv": """(
    namespace text,
    key text,
    value text,
    PRIMARY KEY (namespace, key)
)""",
    # Files kept in the bank (checkpoint artifacts, registered datasets): one row per blob
    # under its scope (``checkpoints/<namespace>``, ``datasets``). ``pending`` rows mark
    # uploads under way, so an upload that died is found and its chunks collected.
    "blob_index": """(
    scope text,
    name text,
    sha256 text,
    size bigint,
    chunks int,
    chunk_bytes int,
    created_at timestamp,
    meta text,
    pending boolean,
    PRIMARY KEY (scope, name)
)""",
    # A blob's bytes, one partition per chunk (no partition grows with the file), keyed by
    # the content's sha256 too: a name given new content never mixes old and new chunks.
    "blob_chunks": """(
    scope text,
    name text,
    sha256 text,
    chunk int,
    data blob,
    PRIMARY KEY ((scope, name, sha256, chunk))
)""",
    # Written and read back by the stack's smoke check.
    "roundtrip": """(
    id text PRIMARY KEY,
    payload blob,
    written_at timestamp
)""",
}


# Float32 vectors do not compress, and a compressed point read inflates a whole chunk: the
# bank's tables are stored uncompressed. Single node or not, reads never repair or hedge.
_TABLE_OPTIONS: dict[str, str] = {
    "examples": " WITH compression = {'enabled': 'false'}",
    "knowledge": " WITH compression = {'enabled': 'false'} AND speculative_retry = 'NONE'",
    "blob_chunks": " WITH compression = {'enabled': 'false'}",
}


def _cql_literal(value: str | int, field: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidValueError(
            f"replication values must be str or int, got {type(value).__name__}", field=field
        )
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("'", "''") + "'"


def _replication_map(replication: dict[str, str | int]) -> str:
    if "class" not in replication:
        raise InvalidValueError(
            "needs a 'class' (e.g. SimpleStrategy or NetworkTopologyStrategy)",
            field="replication",
        )
    items = []
    for key, value in replication.items():
        if not isinstance(key, str) or not key:
            raise InvalidValueError(f"bad replication key {key!r}", field="replication")
        field = f"replication.{key}"
        items.append(f"{_cql_literal(key, field)}: {_cql_literal(value, field)}")
    return "{" + ", ".join(items) + "}"


def schema_statements(keyspace: str, replication: dict[str, str | int]) -> list[str]:
    """The DDL for the bank: the keyspace, then one ``CREATE TABLE`` per entry of ``TABLES``.

    ``replication`` is the keyspace's replication map, e.g.
    ``{"class": "SimpleStrategy", "replication_factor": 1}``. Statements carry no trailing
    semicolon (for ``session.execute``); ``schema_script`` joins them for cqlsh.
    """
    validate_name(keyspace, "keyspace")
    statements = [
        f"CREATE KEYSPACE IF NOT EXISTS {keyspace} "
        f"WITH replication = {_replication_map(replication)}"
    ]
    statements += [
        f"CREATE TABLE IF NOT EXISTS {keyspace}.{table} {_TABLE_BODIES[table]}"
        f"{_TABLE_OPTIONS.get(table, '')}"
        for table in TABLES
    ]
    return statements


def schema_script(keyspace: str, replication: dict[str, str | int]) -> str:
    """``schema_statements`` as one cqlsh script."""
    return "".join(f"{statement};\n" for statement in schema_statements(keyspace, replication))
