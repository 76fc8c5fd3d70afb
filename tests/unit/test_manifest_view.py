"""What a worker believes about checkpoints, without servers: the manifest view's choice
among a namespace's manifests, and the broken-checkpoint records every worker shares."""

from __future__ import annotations

import hashlib

from carls.bank.verdicts import MemoryVerdicts
from carls.makers.view import KEEP, ManifestView
from carls.schemas import CheckpointManifest
from carls.streams.config import KafkaConnection


def manifest(step: int, ns: str = "ns", created_at: float = 1_700_000_000.0) -> CheckpointManifest:
    return CheckpointManifest(
        namespace=ns,
        step=step,
        uri=f"file:///store/{ns}/step-{step}.keras",
        format="keras",
        sha256=hashlib.sha256(f"{ns}/{step}/{created_at}".encode()).hexdigest(),
        size=10,
        created_at=created_at,
        model_fingerprint="f00d",
        producer="test",
    )


def view(max_ahead: int | None = None) -> ManifestView:
    return ManifestView(KafkaConnection(bootstrap_servers=("unused:9092",)), "t", max_ahead)


def test_a_broken_newest_manifest_leaves_the_one_before_it_serving() -> None:
    v = view()
    good, broken, later = manifest(10), manifest(1000), manifest(20)
    assert v.offer(good) and v.offer(broken)
    assert not v.offer(later)  # older than the newest: known, not the newest
    assert v.latest("ns") == broken
    assert v.latest("ns", skip={broken.sha256}) == later  # step 20 serves, not 10
    assert v.wait_for("ns", 15, 0.0, skip={broken.sha256}) == later
    assert not v.offer(later)  # offered again: nothing changes


def test_the_view_keeps_the_newest_few_and_forgets_on_a_tombstone_or_a_new_generation() -> None:
    v = view()
    for step in range(1, KEEP + 3):
        v.offer(manifest(step))
    newest = v.latest("ns")
    assert newest is not None and newest.step == KEEP + 2
    every = {manifest(s).sha256 for s in range(3, KEEP + 3)}
    assert v.latest("ns", skip=every) is None  # steps 1 and 2 fell out
    assert v.forget_before("ns", 1_800_000_000.0) and v.latest("ns") is None
    v.offer(manifest(5))
    assert v.forget("ns") and v.latest("ns") is None and not v.forget("ns")


def test_a_manifest_far_ahead_of_the_newest_is_not_taken() -> None:
    v = view(max_ahead=100)
    first = manifest(10**9)  # nothing known yet: nothing to be ahead of
    assert v.too_far_ahead(first) == 0
    w = view(max_ahead=100)
    w.offer(manifest(10))
    assert w.too_far_ahead(manifest(110)) == 0
    assert w.too_far_ahead(manifest(10**9)) == 10**9 - 110
    assert not w.offer(manifest(10**9))
    latest = w.latest("ns")
    assert latest is not None and latest.step == 10


def test_broken_checkpoints_are_recorded_per_generation_of_a_namespace() -> None:
    verdicts = MemoryVerdicts()
    verdicts.mark_broken("ns", 1.0, "a" * 64, 1000, "not a model")
    verdicts.mark_broken("other", 1.0, "b" * 64, 5, "NaN outputs")
    assert verdicts.broken("ns", 1.0) == {"a" * 64: "not a model"}
    assert verdicts.broken("ns", 2.0) == {}  # created again since: a clean record
