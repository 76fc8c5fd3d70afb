"""Contract: namespaces and registered examples."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import numpy as np
import pytest
from bank_contract_support import MakeNamespace, bits, unique_name

from carls.bank.errors import DimensionError, KnowledgeKindError, NamespaceError, ValueRejectedError
from carls.bank.protocol import KnowledgeBank, iter_example_ids
from carls.bank.types import NO_LABEL, KnowledgeBatch, Lineage, NamespaceSpec, bucket_of

# Namespaces ------------------------------------------------------------------------------


def test_bank_implements_the_protocol(bank: KnowledgeBank) -> None:
    assert isinstance(bank, KnowledgeBank)


def test_create_get_list_drop(bank: KnowledgeBank, make_namespace: MakeNamespace) -> None:
    kinds = {"embedding": 4, "difficulty": 1}
    spec = make_namespace(kinds=kinds, buckets=5, ttl_s={"difficulty": 3600})
    assert abs(spec.created_at - time.time()) < 120
    got = bank.namespace(spec.name)
    assert (got.name, dict(got.kinds), got.buckets, dict(got.ttl_s)) == (
        spec.name,
        kinds,
        5,
        {"difficulty": 3600},
    )
    assert got.created_at == pytest.approx(spec.created_at, abs=0.01)
    assert spec.name in [s.name for s in bank.namespaces()]

    bank.drop_namespace(spec.name)
    with pytest.raises(NamespaceError):
        bank.namespace(spec.name)
    assert spec.name not in [s.name for s in bank.namespaces()]
    with pytest.raises(NamespaceError):
        bank.drop_namespace(spec.name)


def test_duplicate_create_raises_and_keeps_the_original(
    bank: KnowledgeBank, make_namespace: MakeNamespace
) -> None:
    spec = make_namespace(kinds={"embedding": 4})
    with pytest.raises(NamespaceError):
        bank.create_namespace(NamespaceSpec(spec.name, {"embedding": 9}, buckets=3))
    got = bank.namespace(spec.name)
    assert (dict(got.kinds), got.buckets) == ({"embedding": 4}, spec.buckets)


def test_recreated_namespace_starts_empty_and_accepts_writes(
    bank: KnowledgeBank, make_namespace: MakeNamespace
) -> None:
    spec = make_namespace(kinds={"embedding": 2})
    bank.register_examples(spec.name, ["a"], np.ones((1, 3), np.float32))
    bank.write(
        spec.name,
        "embedding",
        KnowledgeBatch(["a"], np.ones((1, 2), np.float32)),
        Lineage(100, "m"),
    )
    bank.drop_namespace(spec.name)
    again = make_namespace(name=spec.name, kinds={"embedding": 2})
    assert bank.read(again.name, "embedding", ["a"]).missing.all()
    assert bank.fetch_examples(again.name, ["a"]).missing.all()
    bank.register_examples(again.name, ["a"], np.ones((1, 5), np.float32))  # new feature dim
    bank.write(
        again.name,
        "embedding",
        KnowledgeBatch(["a"], np.full((1, 2), 2, np.float32)),
        Lineage(1, "m"),
    )
    read = bank.read(again.name, "embedding", ["a"])
    assert read.steps.tolist() == [1]
    assert read.values.tolist() == [[2.0, 2.0]]


def test_longest_valid_name_works(bank: KnowledgeBank, make_namespace: MakeNamespace) -> None:
    name = ("t_" + uuid.uuid4().hex).ljust(48, "x")
    assert make_namespace(name=name).name == name
    assert bank.namespace(name).name == name


UNKNOWN_NAMESPACE_CALLS: dict[str, Callable[[KnowledgeBank, str], object]] = {
    "namespace": lambda b, n: b.namespace(n),
    "drop": lambda b, n: b.drop_namespace(n),
    "register": lambda b, n: b.register_examples(n, ["a"], np.zeros((1, 2), np.float32)),
    "fetch": lambda b, n: b.fetch_examples(n, ["a"]),
    "example_ids": lambda b, n: b.example_ids(n, 0),
    "write": lambda b, n: b.write(
        n, "embedding", KnowledgeBatch(["a"], np.zeros((1, 8), np.float32)), Lineage(1, "m")
    ),
    "read": lambda b, n: b.read(n, "embedding", ["a"]),
    "scan": lambda b, n: b.scan(n, "embedding", 0),
    "scan_parts": lambda b, n: list(b.scan_parts(n, "embedding", 0, 10)),
    "quarantine": lambda b, n: b.quarantine(n, 0, 10),
}


@pytest.mark.parametrize("call", UNKNOWN_NAMESPACE_CALLS.values(), ids=UNKNOWN_NAMESPACE_CALLS)
def test_unknown_namespace_raises(
    bank: KnowledgeBank, call: Callable[[KnowledgeBank, str], object]
) -> None:
    name = unique_name()
    with pytest.raises(NamespaceError):
        call(bank, name)
    assert name not in [s.name for s in bank.namespaces()]


BAD_NAMES = ["Upper", "1abc", "a" * 49, "a-b", "", "a\n", "_a", "ü"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_namespace_name_rejected(bank: KnowledgeBank, name: str) -> None:
    with pytest.raises(ValueRejectedError):
        NamespaceSpec(name, {"embedding": 4})
    with pytest.raises(ValueRejectedError):
        bank.namespace(name)


# NamespaceSpec validation needs no bank; it is the same for every one.


@pytest.mark.parametrize("buckets", [0, -1, 4097, 2.5, "8"])
def test_bad_bucket_count_rejected(buckets: object) -> None:
    with pytest.raises(ValueRejectedError):
        NamespaceSpec("t_ok", {"embedding": 4}, buckets=buckets)  # type: ignore[arg-type]


@pytest.mark.parametrize("dim", [0, -3, 65537, 1.5, True])
def test_bad_dimension_rejected(dim: object) -> None:
    with pytest.raises(DimensionError):
        NamespaceSpec("t_ok", {"embedding": dim})  # type: ignore[dict-item]


def test_bad_kinds_rejected() -> None:
    with pytest.raises(ValueRejectedError):
        NamespaceSpec("t_ok", {})
    with pytest.raises(KnowledgeKindError):
        NamespaceSpec("t_ok", {"bogus": 4})
    with pytest.raises(KnowledgeKindError):
        NamespaceSpec("t_ok", {"embedding/Text": 4})
    with pytest.raises(KnowledgeKindError):
        NamespaceSpec("t_ok", {"embedding": 4}, ttl_s={"difficulty": 10})
    with pytest.raises(ValueRejectedError):
        NamespaceSpec("t_ok", {"embedding": 4}, ttl_s={"embedding": 0})


# Examples --------------------------------------------------------------------------------


def _features(n: int, dim: int) -> np.ndarray:
    f = np.random.default_rng(7).standard_normal((n, dim)).astype(np.float32)
    f[0, :4] = [-0.0, 1e-45, np.finfo(np.float32).max, np.finfo(np.float32).tiny]
    return f


def test_examples_round_trip_exactly_in_the_order_asked(
    bank: KnowledgeBank, make_namespace: MakeNamespace
) -> None:
    ns = make_namespace().name
    ids = [f"ex{i}" for i in range(40)] + ["b/ü", "ü" * 128]
    feats = _features(len(ids), 6)
    labels = [i % 10 - 1 for i in range(len(ids))]
    assert bank.register_examples(ns, ids, feats, labels=labels, modality="image") == len(ids)

    ask = ["nope", ids[41], ids[3], ids[3], "ex999", ids[0], ids[40]]
    got = bank.fetch_examples(ns, ask)
    assert got.ids == ask
    assert got.missing.tolist() == [True, False, False, False, True, False, False]
    src = [41, 3, 3, 0, 40]
    present = [1, 2, 3, 5, 6]
    np.testing.assert_array_equal(bits(got.features[present]), bits(feats[src]))
    assert got.features.shape == (len(ask), 6)
    assert not got.features[[0, 4]].any()
    assert got.labels.tolist() == [
        NO_LABEL,
        labels[41],
        labels[3],
        labels[3],
        NO_LABEL,
        labels[0],
        labels[40],
    ]
    assert got.modalities is not None
    assert [got.modalities[i] for i in present] == ["image"] * len(present)


def test_examples_without_labels_read_as_unlabeled(
    bank: KnowledgeBank, make_namespace: MakeNamespace
) -> None:
    ns = make_namespace().name
    bank.register_examples(ns, ["a", "b"], np.ones((2, 3), np.float32))
    got = bank.fetch_examples(ns, ["b", "a"])
    assert got.labels.tolist() == [NO_LABEL, NO_LABEL]
    assert not got.missing.any()


def test_registering_again_replaces_features(
    bank: KnowledgeBank, make_namespace: MakeNamespace
) -> None:
    ns = make_namespace().name
    bank.register_examples(ns, ["a", "b"], np.ones((2, 3), np.float32), labels=[1, 2])
    bank.register_examples(ns, ["a"], np.full((1, 3), 5, np.float32), labels=[7])
    got = bank.fetch_examples(ns, ["a", "b"])
    assert got.features.tolist() == [[5, 5, 5], [1, 1, 1]]
    assert got.labels.tolist() == [7, 2]


def test_enumeration_covers_every_id_once(
    bank: KnowledgeBank, make_namespace: MakeNamespace
) -> None:
    spec = make_namespace(buckets=7)
    ids = [f"id{i:04d}" for i in range(300)]
    bank.register_examples(spec.name, ids, np.zeros((300, 2), np.float32))
    seen: list[str] = []
    buckets = []
    for bucket, part in iter_example_ids(bank, spec.name):
        buckets.append(bucket)
        assert part == sorted(part)
        assert all(bucket_of(i, 7) == bucket for i in part)
        seen += part
    assert buckets == list(range(7))
    assert sorted(seen) == ids
    with pytest.raises(ValueRejectedError):
        bank.example_ids(spec.name, 7)


def test_feature_dimension_mismatch_rejected(
    bank: KnowledgeBank, make_namespace: MakeNamespace
) -> None:
    ns = make_namespace().name
    bank.register_examples(ns, ["a"], np.ones((1, 4), np.float32))
    with pytest.raises(DimensionError):
        bank.register_examples(ns, ["b", "c"], np.ones((2, 5), np.float32))
    with pytest.raises(DimensionError):
        bank.register_examples(ns, ["b", "c"], np.ones((3, 4), np.float32))
    with pytest.raises(DimensionError):
        bank.register_examples(ns, ["b"], np.ones(4, np.float32))
    assert bank.fetch_examples(ns, ["b", "c"]).missing.all()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features_rejected_and_nothing_written(
    bank: KnowledgeBank, make_namespace: MakeNamespace, bad: float
) -> None:
    ns = make_namespace().name
    feats = np.ones((5, 3), np.float32)
    feats[4, 1] = bad
    with pytest.raises(ValueRejectedError):
        bank.register_examples(ns, [f"x{i}" for i in range(5)], feats)
    assert bank.fetch_examples(ns, [f"x{i}" for i in range(5)]).missing.all()
    assert [i for _, part in iter_example_ids(bank, ns) for i in part] == []


def test_bad_example_ids_and_labels_rejected(
    bank: KnowledgeBank, make_namespace: MakeNamespace
) -> None:
    ns = make_namespace().name
    one = np.ones((1, 2), np.float32)
    for ids in ([], ["x" * 257], [""]):
        with pytest.raises(ValueRejectedError):
            bank.register_examples(ns, ids, np.ones((len(ids), 2), np.float32))
    with pytest.raises(ValueRejectedError):
        bank.register_examples(ns, ["a"], one, labels=[-2])
    with pytest.raises(ValueRejectedError):
        bank.register_examples(ns, ["a"], one, labels=[1, 2])
    with pytest.raises(ValueRejectedError):
        bank.register_examples(ns, ["a"], one, modality="Bad Modality")
    with pytest.raises(ValueRejectedError):
        bank.fetch_examples(ns, [])
    assert bank.fetch_examples(ns, ["a"]).missing.all()
