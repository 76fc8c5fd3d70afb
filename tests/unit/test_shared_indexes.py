"""Neighbour indexes built once per (namespace, step) and shared by every worker: saved
indexes answer exactly like the ones saved, one worker builds while the others wait and
load, a builder that dies or fails hands the work on, and old indexes are collected."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from carls.bank.ann import VectorIndex
from carls.bank.blobs import MemoryBlobs
from carls.bank.indexes import MemoryLeases, SharedIndexes, index_name
from carls.bank.memory import MemoryBank
from carls.bank.types import NamespaceSpec, default_kinds
from carls.makers.checkpoints import ModelCache
from carls.makers.pipeline import Maker
from carls.trainers.checkpoints import save_artifact
from tests.integration.makers_support import CLASSES, EMBED, FEATURES, K, tiny_model

SHA = "ab" * 32


def _vectors(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


@pytest.mark.parametrize("exact_below", [10_000, 100], ids=["exact", "hnsw"])
def test_a_saved_index_loads_with_its_ids_and_answers_as_before(
    tmp_path: Path, exact_below: int
) -> None:
    x = _vectors(2000)
    ids = [f"id{i}" for i in range(len(x))]
    built = VectorIndex(x, exact_below=exact_below)
    built.save(tmp_path / "index", ids)
    got_ids, loaded = VectorIndex.load(tmp_path / "index")
    assert got_ids == ids and loaded.exact == built.exact and loaded.size == 2000
    want_rows, want_scores = built.search(x[:50], 10, self_index=np.arange(50))
    rows, scores = loaded.search(x[:50], 10, self_index=np.arange(50))
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores)


def test_a_file_that_is_not_a_saved_index_is_refused(tmp_path: Path) -> None:
    (tmp_path / "other").write_bytes(b"PK\x03\x04 a zip, say")
    with pytest.raises(ValueError, match="not a saved vector index"):
        VectorIndex.load(tmp_path / "other")


class _Builds:
    """A build function that counts its calls (and can be slow, or fail)."""

    def __init__(self, n: int = 500, delay: float = 0.0, fail: bool = False) -> None:
        self.calls = 0
        self.n, self.delay, self.fail = n, delay, fail
        self.lock = threading.Lock()

    def __call__(self) -> tuple[list[str], VectorIndex]:
        with self.lock:
            self.calls += 1
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("out of memory, say")
        return [f"id{i}" for i in range(self.n)], VectorIndex(_vectors(self.n), exact_below=100)


def _shared(blobs: MemoryBlobs, leases: MemoryLeases, who: str, **kw: Any) -> SharedIndexes:
    return SharedIndexes(blobs, leases, who, poll_s=0.02, **kw)


def test_the_first_worker_builds_and_the_others_load_what_it_saved() -> None:
    blobs, leases = MemoryBlobs(), MemoryLeases()
    a, b = _shared(blobs, leases, "a"), _shared(blobs, leases, "b")
    build = _Builds()
    (ids_a, index_a), how_a = a.get("ns", 1.0, 7, SHA, build)
    a.wait_saved()
    (ids_b, index_b), how_b = b.get("ns", 1.0, 7, SHA, build)
    assert (how_a, how_b, build.calls) == ("built", "loaded", 1)
    assert ids_a == ids_b and not index_b.exact
    q = _vectors(20, seed=1)
    np.testing.assert_array_equal(index_a.search(q, 5)[0], index_b.search(q, 5)[0])
    # another step, checkpoint or namespace generation is another index
    _, how = b.get("ns", 1.0, 8, SHA, build)
    _, how2 = b.get("ns", 2.0, 7, SHA, build)
    assert (how, how2, build.calls) == ("built", "built", 3)


def test_workers_asking_at_once_build_it_once() -> None:
    blobs, leases = MemoryBlobs(), MemoryLeases()
    build = _Builds(delay=0.3)
    got: dict[str, str] = {}

    def ask(who: str) -> None:
        _, got[who] = _shared(blobs, leases, who).get("ns", 1.0, 7, SHA, build)

    threads = [threading.Thread(target=ask, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert build.calls == 1
    assert sorted(got.values()) == ["built", "loaded", "loaded", "loaded"]


def test_a_builder_that_died_hands_the_index_on_when_its_lease_runs_out() -> None:
    blobs, leases = MemoryBlobs(), MemoryLeases()
    scope, name = "indexes/ns", index_name(1.0, 7, SHA)
    assert leases.claim(scope, name, "dead-worker", ttl_s=0.3)  # and never renewed
    build = _Builds()
    t0 = time.monotonic()
    _, how = _shared(blobs, leases, "b").get("ns", 1.0, 7, SHA, build)
    assert how == "built" and build.calls == 1
    assert time.monotonic() - t0 >= 0.25  # it waited for the lease, not past it


def test_a_builder_that_fails_releases_its_lease_at_once() -> None:
    blobs, leases = MemoryBlobs(), MemoryLeases()
    a, b = _shared(blobs, leases, "a", lease_s=600.0), _shared(blobs, leases, "b")
    with pytest.raises(RuntimeError, match="out of memory"):
        a.get("ns", 1.0, 7, SHA, _Builds(fail=True))
    assert leases.holder("indexes/ns", index_name(1.0, 7, SHA)) is None
    _, how = b.get("ns", 1.0, 7, SHA, _Builds())
    assert how == "built"


def test_a_long_build_keeps_its_lease() -> None:
    blobs, leases = MemoryBlobs(), MemoryLeases()
    a = _shared(blobs, leases, "a", lease_s=0.3)
    scope, name = "indexes/ns", index_name(1.0, 7, SHA)
    seen: list[str | None] = []

    def slow() -> tuple[list[str], VectorIndex]:
        for _ in range(6):  # twice the lease's term
            time.sleep(0.1)
            seen.append(leases.holder(scope, name))
        return _Builds()()

    a.get("ns", 1.0, 7, SHA, slow)
    a.wait_saved()
    assert seen == ["a"] * 6
    assert leases.holder(scope, name) is None  # released once saved


def test_only_the_newest_indexes_of_a_namespace_are_kept() -> None:
    blobs, leases = MemoryBlobs(), MemoryLeases()
    a = _shared(blobs, leases, "a", keep=2)
    for step in (1, 2, 3):
        a.get("ns", 1.0, step, SHA, _Builds(n=200))
        a.wait_saved()
    names = [i.name for i in blobs.entries("indexes/ns")]
    assert names == [index_name(1.0, 2, SHA), index_name(1.0, 3, SHA)]


def test_two_makers_sharing_indexes_write_the_same_neighbours_from_one_build(
    tmp_path: Path,
) -> None:
    bank = MemoryBank()
    bank.create_namespace(NamespaceSpec("ns", default_kinds(EMBED, CLASSES, K), buckets=4))
    n = 120
    x = np.random.default_rng(0).standard_normal((n, FEATURES)).astype(np.float32)
    ids = [f"e{i}" for i in range(n)]
    bank.register_examples("ns", ids, x, [-1] * n)
    manifest = save_artifact(tiny_model(3), tmp_path, "ns", 3)
    blobs, leases = MemoryBlobs(), MemoryLeases()
    makers = [
        Maker(
            bank,
            ModelCache(tmp_path),
            worker=w,
            exact_below=50,
            indexes=_shared(blobs, leases, w),
        )
        for w in ("a", "b")
    ]
    spec = bank.namespace("ns")
    makers[0].process(spec, manifest, ids[:60], ["neighbours"])
    assert makers[0].indexes is not None
    makers[0].indexes.wait_saved()
    mine = bank.read("ns", "neighbours", ids[:60])

    def must_not_build(*_: Any) -> Any:
        raise AssertionError("the second maker built the index again")

    makers[1]._build_pool = must_not_build  # type: ignore[method-assign]
    makers[1].process(spec, manifest, ids[:60], ["neighbours"])
    theirs = bank.read("ns", "neighbours", ids[:60], lineage=True)
    assert theirs.neighbour_ids == mine.neighbour_ids
    assert set(theirs.steps.tolist()) == {3}
    assert [i.name for i in blobs.entries("indexes/ns")] == [
        index_name(spec.created_at, 3, manifest.sha256)
    ]


def test_a_save_the_bank_times_out_on_is_tried_again() -> None:
    from carls.bank.errors import BankUnavailableError

    class Flaky(MemoryBlobs):
        def __init__(self) -> None:
            super().__init__()
            self.failures = 2

        def put(self, *args: Any, **kw: Any) -> Any:
            if self.failures:
                self.failures -= 1
                raise BankUnavailableError("write a blob's chunks failed: NoHostAvailable")
            return super().put(*args, **kw)

    blobs, leases = Flaky(), MemoryLeases()
    a = _shared(blobs, leases, "a")
    a.get("ns", 1.0, 7, SHA, _Builds())
    a.wait_saved()
    assert blobs.failures == 0
    assert [i.name for i in blobs.entries("indexes/ns")] == [index_name(1.0, 7, SHA)]
    _, how = _shared(blobs, leases, "b").get("ns", 1.0, 7, SHA, _Builds())
    assert how == "loaded"
