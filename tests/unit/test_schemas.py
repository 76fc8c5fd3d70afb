"""The wire records: round trips, and every way a record on the wire can be wrong."""

from __future__ import annotations

import json
from typing import Any

import pytest

from carls.schemas import (
    KINDS,
    MAX_ID_BYTES,
    TABLES,
    CheckpointManifest,
    DeadLetter,
    ExampleBatch,
    InvalidValueError,
    MissingFieldError,
    ProgressEvent,
    Record,
    SchemaError,
    TrainingJob,
    UnknownSchemaError,
    UnknownVersionError,
    WrongTypeError,
    decode,
    encode,
    schema_script,
    schema_statements,
    supported_versions,
    validate_id,
    validate_kind,
    validate_name,
)

SHA = "ab" * 32

RECORDS: list[Record] = [
    TrainingJob(
        job_id="job-1",
        namespace="mnist_semi",
        spec={"model": {"layers": [64, 32], "dropout": 0.1}, "tags": ["a", None, True]},
        submitted_at=1_700_000_000.25,
    ),
    CheckpointManifest(
        namespace="mnist",
        step=1200,
        uri="file:///ckpt/mnist/1200.keras",
        format="keras",
        sha256=SHA,
        size=123456,
        created_at=1_700_000_001.5,
        model_fingerprint="f00d",
        producer="trainer-0",
    ),
    ExampleBatch(namespace="mnist", ids=["a", "b/ü", "x" * MAX_ID_BYTES], priority="demand"),
    ExampleBatch(
        namespace="mnist",
        ids=["7"],
        priority="refresh",
        step=1200,
        campaign="c-1200",
        kinds=["embedding", "embedding/image"],
    ),
    ProgressEvent(
        namespace="mnist",
        kind="pseudo_label",
        step=1200,
        processed=920,
        total=1000,
        worker="w1",
        campaign="c-1200",
        at=1_700_000_002.0,
    ),
    ProgressEvent(
        namespace="mnist", kind="difficulty", step=0, processed=0, total=None, worker="", at=0.0
    ),
    DeadLetter(
        reason="undecodable",
        error="SchemaError",
        source_topic="carls.examples",
        source_partition=3,
        source_offset=42,
        raw=bytes(range(256)),
        at=1_700_000_003.0,
        worker="w2",
    ),
]


def wire(record: Record, **changes: Any) -> dict[str, Any]:
    """The JSON object of ``record``, with fields replaced (or removed when given ``...``)."""
    obj: dict[str, Any] = json.loads(encode(record))
    for key, value in changes.items():
        if value is ...:
            del obj[key]
        else:
            obj[key] = value
    return obj


def raw(obj: object) -> bytes:
    return json.dumps(obj).encode()


def batch_obj(**changes: Any) -> dict[str, Any]:
    return wire(ExampleBatch(namespace="mnist", ids=["a", "b"], priority="demand"), **changes)


def manifest_obj(**changes: Any) -> dict[str, Any]:
    return wire(RECORDS[1], **changes)


# --- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_every_record_round_trips_exactly(record: Record) -> None:
    data = encode(record)
    decoded = decode(data)
    assert decoded == record
    assert type(decoded) is type(record)
    assert decode(data, type(record)) == record
    assert encode(decoded) == data


def test_wire_format_is_compact_utf8_json_with_envelope() -> None:
    data = encode(ExampleBatch(namespace="mnist", ids=["é"], priority="demand"))
    assert data.startswith(b'{"schema":"carls.examples","version":1,')
    assert b", " not in data
    assert b": " not in data
    assert "é".encode() in data  # raw UTF-8, not \u escapes


def test_bytes_survive_exactly_and_travel_as_base64() -> None:
    payload = b"\x00\xff\xfe not json {\n" + bytes(range(256))
    letter = DeadLetter(
        reason="r",
        error="E",
        source_topic="t",
        source_partition=0,
        source_offset=0,
        raw=payload,
        at=1.0,
    )
    obj = json.loads(encode(letter))
    assert isinstance(obj["raw"], str)
    assert decode(encode(letter), DeadLetter).raw == payload


def test_defaults_fill_absent_optional_fields() -> None:
    obj = batch_obj(step=..., campaign=..., kinds=...)
    batch = decode(raw(obj), ExampleBatch)
    assert (batch.step, batch.campaign, batch.kinds) == (None, "", [])


def test_unknown_extra_fields_are_ignored() -> None:
    obj = manifest_obj(added_in_v1_1="whatever", nested={"x": [1]})
    assert decode(raw(obj)) == RECORDS[1]


def test_int_is_accepted_for_float_and_stored_as_float() -> None:
    record = decode(raw(manifest_obj(created_at=17)), CheckpointManifest)
    assert record.created_at == 17.0
    assert isinstance(record.created_at, float)


def test_every_schema_has_version_1_registered() -> None:
    for record in RECORDS:
        assert supported_versions(record.SCHEMA) == (1,)


# --- envelope and framing errors ---------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"\xff\xfe\x00garbage", b"not json at all", b"", b'{"schema": "carls.job"'],
    ids=["not-utf8", "not-json", "empty", "truncated"],
)
def test_garbage_bytes_are_a_schema_error_without_field(data: bytes) -> None:
    with pytest.raises(SchemaError) as info:
        decode(data)
    assert type(info.value) is SchemaError
    assert info.value.field is None


def test_json_array_is_rejected_as_not_an_object() -> None:
    with pytest.raises(SchemaError, match="JSON object, got a JSON array") as info:
        decode(raw([batch_obj()]))
    assert info.value.field is None


def test_unknown_schema_names_the_schema_field() -> None:
    with pytest.raises(UnknownSchemaError, match=r"carls\.nope") as info:
        decode(raw(batch_obj(schema="carls.nope")))
    assert info.value.field == "schema"


def test_unknown_version_says_which_versions_are_supported() -> None:
    with pytest.raises(UnknownVersionError, match="supported versions: 1") as info:
        decode(raw(batch_obj(version=7)))
    assert info.value.field == "version"


@pytest.mark.parametrize("key", ["schema", "version"])
def test_missing_envelope_key_is_named(key: str) -> None:
    with pytest.raises(MissingFieldError) as info:
        decode(raw(batch_obj(**{key: ...})))
    assert info.value.field == key


def test_bool_version_is_a_wrong_type() -> None:
    with pytest.raises(WrongTypeError) as info:
        decode(raw(batch_obj(version=True)))
    assert info.value.field == "version"


def test_expected_type_mismatch_names_both_schemas() -> None:
    with pytest.raises(UnknownSchemaError) as info:
        decode(encode(RECORDS[1]), ExampleBatch)
    assert info.value.field == "schema"
    assert "carls.examples" in str(info.value)
    assert "carls.checkpoint" in str(info.value)


# --- field errors ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["namespace", "step", "sha256", "created_at"])
def test_missing_required_field_is_named(name: str) -> None:
    with pytest.raises(MissingFieldError) as info:
        decode(raw(manifest_obj(**{name: ...})))
    assert info.value.field == name


def test_wrong_type_inside_a_list_names_the_element() -> None:
    with pytest.raises(WrongTypeError, match="expected str, got int") as info:
        decode(raw(batch_obj(ids=["a", "b", "c", 3])))
    assert info.value.field == "ids[3]"


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("step", True, "int"),
        ("size", False, "int"),
        ("step", 12.0, "int"),
        ("step", "12", "int"),
        ("created_at", True, "float"),
        ("uri", None, "str"),
    ],
)
def test_wrong_scalar_types_are_rejected(field: str, value: object, expected: str) -> None:
    with pytest.raises(WrongTypeError, match=f"expected {expected}") as info:
        decode(raw(manifest_obj(**{field: value})))
    assert info.value.field == field


def test_bool_is_not_an_int_in_python_either() -> None:
    with pytest.raises(WrongTypeError) as info:
        ExampleBatch(namespace="mnist", ids=["a"], priority="refresh", step=True)
    assert info.value.field == "step"


def test_ids_must_be_a_list() -> None:
    with pytest.raises(WrongTypeError, match="expected list") as info:
        decode(raw(batch_obj(ids="a")))
    assert info.value.field == "ids"


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_floats_are_rejected(token: str) -> None:
    text = encode(RECORDS[1]).decode().replace('"created_at":1700000001.5', f'"created_at":{token}')
    assert token in text
    with pytest.raises(InvalidValueError) as info:
        decode(text.encode())
    assert info.value.field == "created_at"


def test_nan_inside_a_job_spec_is_rejected_with_its_path() -> None:
    with pytest.raises(InvalidValueError) as info:
        TrainingJob(job_id="j", namespace="n", spec={"opt": {"lr": float("nan")}}, submitted_at=1)
    assert info.value.field == "spec.opt.lr"


def test_spec_must_be_plain_json() -> None:
    with pytest.raises(WrongTypeError) as info:
        TrainingJob(job_id="j", namespace="n", spec={"shape": (1, 2)}, submitted_at=1)
    assert info.value.field == "spec.shape"
    with pytest.raises(WrongTypeError):
        TrainingJob(job_id="j", namespace="n", spec={1: "x"}, submitted_at=1)  # type: ignore[dict-item]


@pytest.mark.parametrize("name", ["MNIST", "1abc", "a-b", "", "a" * 49, "mnist\n", "ns.x"])
def test_bad_namespace_name_is_rejected_on_the_wire(name: str) -> None:
    with pytest.raises(InvalidValueError) as info:
        decode(raw(batch_obj(namespace=name)))
    assert info.value.field == "namespace"


def test_over_long_id_is_rejected_counting_utf8_bytes() -> None:
    too_long = "é" * (MAX_ID_BYTES // 2 + 1)  # fewer characters than the limit, more bytes
    assert len(too_long) < MAX_ID_BYTES
    with pytest.raises(InvalidValueError) as info:
        decode(raw(batch_obj(ids=["ok", too_long])))
    assert info.value.field == "ids[1]"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"ids": []}, "ids"),
        ({"ids": ["a", ""]}, "ids[1]"),
        ({"priority": "urgent"}, "priority"),
        ({"priority": "refresh"}, "step"),  # a refresh batch needs its checkpoint step
        ({"step": -1}, "step"),
        ({"kinds": ["embedding", "colour"]}, "kinds[1]"),
        ({"kinds": ["embedding/"]}, "kinds[0]"),
    ],
)
def test_bad_batch_values_are_rejected(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidValueError) as info:
        decode(raw(batch_obj(**changes)))
    assert info.value.field == field


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"sha256": "AB" * 32}, "sha256"),
        ({"sha256": "ab" * 31}, "sha256"),
        ({"step": -5}, "step"),
        ({"size": -1}, "size"),
        ({"uri": ""}, "uri"),
        ({"created_at": -1.0}, "created_at"),
        ({"step": 2**63}, "step"),
    ],
)
def test_bad_manifest_values_are_rejected(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidValueError) as info:
        decode(raw(manifest_obj(**changes)))
    assert info.value.field == field


def test_invalid_base64_is_rejected() -> None:
    with pytest.raises(InvalidValueError) as info:
        decode(raw(wire(RECORDS[-1], raw="not base64!")))
    assert info.value.field == "raw"
    with pytest.raises(WrongTypeError):
        decode(raw(wire(RECORDS[-1], raw=[1, 2])))


def test_lone_surrogate_is_rejected_before_it_reaches_the_wire() -> None:
    with pytest.raises(InvalidValueError) as info:
        decode(
            b'{"schema":"carls.examples","version":1,"namespace":"m","ids":["\\ud800"],'
            b'"priority":"demand"}'
        )
    assert info.value.field == "ids[0]"


# --- construction in Python --------------------------------------------------------------


def test_records_are_frozen() -> None:
    batch = ExampleBatch(namespace="mnist", ids=["a"], priority="demand")
    with pytest.raises(AttributeError):
        batch.namespace = "other"  # type: ignore[misc]


def test_records_copy_their_lists() -> None:
    ids = ["a"]
    batch = ExampleBatch(namespace="mnist", ids=ids, priority="demand")
    ids.append("b")
    assert batch.ids == ["a"]


def test_encode_revalidates_a_mutated_record() -> None:
    batch = ExampleBatch(namespace="mnist", ids=["a"], priority="demand")
    batch.ids.append(7)  # type: ignore[arg-type]
    with pytest.raises(WrongTypeError) as info:
        encode(batch)
    assert info.value.field == "ids[1]"


# --- names -------------------------------------------------------------------------------


def test_validate_name_accepts_and_rejects() -> None:
    assert validate_name("a" * 48, "namespace") == "a" * 48
    assert validate_name("mnist_2", "namespace") == "mnist_2"
    with pytest.raises(InvalidValueError) as info:
        validate_name("Bad", "keyspace")
    assert info.value.field == "keyspace"


def test_validate_id_limit_is_inclusive() -> None:
    assert validate_id("x" * MAX_ID_BYTES) == "x" * MAX_ID_BYTES
    with pytest.raises(InvalidValueError):
        validate_id("x" * (MAX_ID_BYTES + 1))


@pytest.mark.parametrize("kind", [*KINDS, "embedding/text", "embedding/audio_2"])
def test_known_kinds_are_accepted(kind: str) -> None:
    assert validate_kind(kind) == kind


@pytest.mark.parametrize(
    "kind", ["Embedding", "embedding/Text", "prediction/text", "embedding/a/b", "embeddings", ""]
)
def test_unknown_kinds_are_rejected(kind: str) -> None:
    with pytest.raises(InvalidValueError) as info:
        validate_kind(kind)
    assert info.value.field == "kind"


# --- CQL ---------------------------------------------------------------------------------


def test_schema_statements_create_keyspace_then_every_table() -> None:
    statements = schema_statements(
        "carls_test", {"class": "SimpleStrategy", "replication_factor": 1}
    )
    assert statements[0] == (
        "CREATE KEYSPACE IF NOT EXISTS carls_test WITH replication = "
        "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    )
    assert len(statements) == 1 + len(TABLES)
    for table, statement in zip(TABLES, statements[1:], strict=True):
        assert statement.startswith(f"CREATE TABLE IF NOT EXISTS carls_test.{table} (")
        assert not statement.endswith(";")
    knowledge = statements[1 + TABLES.index("knowledge")]
    assert "PRIMARY KEY ((ns, kind, bucket), id)" in knowledge
    assert "value blob" in knowledge
    assert "step bigint" in knowledge


def test_schema_script_is_semicolon_terminated() -> None:
    script = schema_script("carls", {"class": "NetworkTopologyStrategy", "dc1": 3})
    assert script.count(";\n") == 1 + len(TABLES)
    assert "'dc1': 3" in script


@pytest.mark.parametrize("keyspace", ["Carls", "carls; DROP KEYSPACE x", ""])
def test_schema_statements_reject_bad_keyspace(keyspace: str) -> None:
    with pytest.raises(InvalidValueError) as info:
        schema_statements(keyspace, {"class": "SimpleStrategy", "replication_factor": 1})
    assert info.value.field == "keyspace"


def test_replication_needs_a_class_and_quotes_strings() -> None:
    with pytest.raises(InvalidValueError):
        schema_statements("carls", {"replication_factor": 1})
    statement = schema_statements("carls", {"class": "Simple'Strategy"})[0]
    assert "'Simple''Strategy'" in statement


def test_a_job_group_names_itself_and_its_size() -> None:
    member = TrainingJob(
        job_id="j", namespace="n", spec={}, submitted_at=1, group="group-1", group_size=2
    )
    assert decode(encode(member), TrainingJob) == member
    legacy = decode(encode(TrainingJob(job_id="j", namespace="n", spec={}, submitted_at=1)))
    assert (legacy.group, legacy.group_size) == (None, 1)  # type: ignore[attr-defined]
    for group, size, problem in (
        (None, 2, "without a group"),
        ("group-1", 1, "2 to 64"),
        ("", 2, "must not be empty"),
    ):
        with pytest.raises(InvalidValueError, match=problem):
            TrainingJob(
                job_id="j", namespace="n", spec={}, submitted_at=1, group=group, group_size=size
            )
