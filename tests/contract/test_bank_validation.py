"""Contract: both banks reject the same input, before anything is written.

Each case below is an input one bank once rejected and the other accepted (or failed on
only after its I/O); both now run the checks of ``bank.rows``, and this suite proves it on
each backend. Every case leaves the namespace as it was.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from bank_contract_support import MakeNamespace, batch_for, lineage

from carls.bank.errors import DimensionError, ValueRejectedError
from carls.bank.protocol import KnowledgeBank, scan_all
from carls.bank.types import KnowledgeBatch

Call = Callable[[KnowledgeBank, str], object]
ONE = np.ones((1, 4), np.float32)

BAD_CALLS: dict[str, tuple[Call, type[Exception]]] = {
    # quarantine: steps must be ints, kinds a sequence of kinds
    "quarantine from a float step": (lambda b, ns: b.quarantine(ns, 1.5, 9), ValueRejectedError),  # type: ignore[arg-type]
    "quarantine to a string step": (lambda b, ns: b.quarantine(ns, 1, "9"), ValueRejectedError),  # type: ignore[arg-type]
    "quarantine a bool step": (lambda b, ns: b.quarantine(ns, True, 9), ValueRejectedError),
    "quarantine kinds as one string": (
        lambda b, ns: b.quarantine(ns, 1, 9, kinds="embedding"),
        ValueRejectedError,
    ),
    # buckets must be ints in range, not bools or floats
    "scan bucket True": (lambda b, ns: b.scan(ns, "embedding", True), ValueRejectedError),
    "scan bucket 1.0": (lambda b, ns: b.scan(ns, "embedding", 1.0), ValueRejectedError),  # type: ignore[arg-type]
    "scan bucket past the last": (lambda b, ns: b.scan(ns, "embedding", 8), ValueRejectedError),
    "ids of bucket '0'": (lambda b, ns: b.example_ids(ns, "0"), ValueRejectedError),  # type: ignore[arg-type]
    # writes need a Lineage, reads a non-negative int staleness bound
    "write without a Lineage": (
        lambda b, ns: b.write(ns, "embedding", batch_for("embedding", 8, ["z"], 1), {"step": 1}),  # type: ignore[arg-type]
        ValueRejectedError,
    ),
    "read with negative staleness": (
        lambda b, ns: b.read(ns, "embedding", ["a"], current_step=5, max_staleness=-1),
        ValueRejectedError,
    ),
    "read with fractional staleness": (
        lambda b, ns: b.read(ns, "embedding", ["a"], current_step=5, max_staleness=0.5),  # type: ignore[arg-type]
        ValueRejectedError,
    ),
    "write stamped after year 9999": (
        lambda b, ns: b.write(
            ns,
            "embedding",
            KnowledgeBatch(["z"], np.ones((1, 8), np.float32), written_at=np.array([1e20])),
            lineage(2),
        ),
        ValueRejectedError,
    ),
    "write stamped before 1970": (
        lambda b, ns: b.write(
            ns,
            "embedding",
            KnowledgeBatch(["z"], np.ones((1, 8), np.float32), written_at=np.array([-1e13])),
            lineage(2),
        ),
        ValueRejectedError,
    ),
    # namespaces are created from a NamespaceSpec
    "create from a dict": (
        lambda b, ns: b.create_namespace({"name": ns + "x", "kinds": {"embedding": 8}}),  # type: ignore[arg-type]
        ValueRejectedError,
    ),
    # examples: labels must fit int32, features must be (n, d) with d >= 1
    "label beyond int32": (
        lambda b, ns: b.register_examples(ns, ["z"], ONE, labels=[2**40]),
        ValueRejectedError,
    ),
    "features of width 0": (
        lambda b, ns: b.register_examples(ns, ["z"], np.ones((1, 0), np.float32)),
        DimensionError,
    ),
    "features as one row": (
        lambda b, ns: b.register_examples(ns, ["z"], np.ones(4, np.float32)),
        DimensionError,
    ),
    "features of another width": (
        lambda b, ns: b.register_examples(ns, ["z"], np.ones((1, 3), np.float32)),
        DimensionError,
    ),
    "ragged features": (
        lambda b, ns: b.register_examples(ns, ["y", "z"], [[1.0, 2.0], [1.0]]),  # type: ignore[arg-type]
        DimensionError,
    ),
}


@pytest.mark.parametrize(("call", "error"), BAD_CALLS.values(), ids=BAD_CALLS)
def test_both_banks_reject_the_same_input_and_change_nothing(
    bank: KnowledgeBank, make_namespace: MakeNamespace, call: Call, error: type[Exception]
) -> None:
    ns = make_namespace().name
    before = batch_for("embedding", 8, ["a", "b"], seed=1)
    bank.write(ns, "embedding", before, lineage(1))
    bank.register_examples(ns, ["a"], ONE, labels=[1])

    with pytest.raises(error):
        call(bank, ns)

    after = scan_all(bank, ns, "embedding")
    assert sorted(after.ids) == ["a", "b"]
    assert (after.steps == 1).all()
    assert sorted(s.name for s in bank.namespaces() if s.name.startswith(ns)) == [ns]
    examples = bank.fetch_examples(ns, ["a", "y", "z"])
    assert examples.missing.tolist() == [False, True, True]
    assert examples.labels[0] == 1
    np.testing.assert_array_equal(examples.features[0], ONE[0])


def test_numpy_ints_are_ints(bank: KnowledgeBank, make_namespace: MakeNamespace) -> None:
    """What users get from numpy (a bucket from an array, steps from a range) is accepted."""
    ns = make_namespace().name
    bank.write(ns, "embedding", KnowledgeBatch(["a"], np.ones((1, 8), np.float32)), lineage(3))
    assert [i for b in np.arange(8) for i in bank.scan(ns, "embedding", b).ids] == ["a"]
    assert bank.quarantine(ns, np.int64(1), np.int32(5)) == 1
