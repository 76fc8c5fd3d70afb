"""Knowledge makers on the real stack: campaigns, ordering, poison records, bad checkpoints,
and a worker killed mid-campaign."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from carls.bank.artifacts import ArtifactStore
from carls.bank.blobs import CassandraBlobs
from carls.schemas import CheckpointManifest, ExampleBatch, encode
from carls.settings import Settings
from carls.streams.manifests import latest_manifest
from carls.trainers.checkpoints import publish_artifact
from tests.integration.makers_support import MakerEnv, tiny_model
from tests.stack_support import ProgressReader

pytestmark = pytest.mark.integration
KINDS = ("embedding", "pseudo_label", "difficulty", "prediction", "neighbours")


@pytest.fixture
def env(stack: Settings, tmp_path: Path) -> Iterator[MakerEnv]:
    e = MakerEnv(tmp_path)
    try:
        yield e
    finally:
        e.close()


def test_campaigns_cover_every_id_at_the_new_step_and_a_late_older_manifest_changes_nothing(
    env: MakerEnv,
) -> None:
    env.start_worker()
    env.publisher.manifest(env.save(10))
    covered = env.wait_coverage(10, KINDS)
    assert all(c.older == 0 and c.none == 0 for c in covered.values())
    env.publisher.manifest(env.save(20))
    env.wait_coverage(20, KINDS)
    first = env.bank.read(env.ns, "embedding", env.ids[:50], lineage=True)

    late = env.save(15)
    env.publisher.manifest(late)
    tp = env.committed(env.settings.topics.checkpoints)
    env.wait_committed(env.settings.topics.checkpoints, 0, max(tp.values()))  # processed
    for kind in KINDS:
        assert env.coverage(kind).steps == {20: len(env.ids)}
    again = env.bank.read(env.ns, "embedding", env.ids[:50], lineage=True)
    assert np.array_equal(again.values, first.values)
    assert set(again.steps.tolist()) == {20}

    # Neighbours are exact among the step's embeddings, and never the id itself.
    got = env.bank.read(env.ns, "neighbours", env.ids[:3])
    assert got.neighbour_ids is not None
    for i, nids in zip(env.ids[:3], got.neighbour_ids, strict=True):
        assert len(nids) == 5
        assert i not in nids


def test_poison_records_are_dead_lettered_and_never_block_their_partition(env: MakerEnv) -> None:
    env.start_worker()
    env.publisher.manifest(env.save(10))
    env.wait_coverage(10)
    demand = env.settings.topics.demand
    bad_version = json.dumps({"schema": "carls.examples", "version": 99}).encode()
    poison = [env.produce_raw(demand, b"\xff\x00 not json"), env.produce_raw(demand, bad_version)]
    env.publisher.examples(
        ExampleBatch(namespace="nosuchns", ids=["a", "b"], priority="demand"), wait=True
    )
    quarantined = env.bank.quarantine(env.ns, 10, 10, ["prediction"])
    assert quarantined == len(env.ids)
    env.publisher.manifest(env.save(11))  # a valid record after the poison ones
    env.wait_coverage(11, ("prediction",))
    letters = env.dead_letters(3)
    by_offset = {(d.source_topic, d.source_partition, d.source_offset): d for d in letters}
    for partition, offset in poison:
        letter = by_offset[(demand, partition, offset)]
        assert letter.reason
    raws = {d.raw for d in letters}
    assert b"\xff\x00 not json" in raws
    assert bad_version in raws
    assert any("nosuchns" in d.reason for d in letters)


def test_records_near_kafkas_size_limit_are_dead_lettered_and_their_partition_goes_on(
    env: MakerEnv,
) -> None:
    env.start_worker()
    env.publisher.manifest(env.save(10))
    env.wait_coverage(10)
    demand = env.settings.topics.demand
    junk = os.urandom(1_000_000)  # not a record at all, near Kafka's 1 MB default limit
    # a record that decodes and fails a later check (no such namespace), as large
    near = encode(
        ExampleBatch(
            namespace="nosuchns", ids=[f"{i:0190d}" for i in range(4900)], priority="demand"
        )
    )
    assert 900_000 < len(near) < 1_000_000
    # one key: all on one partition, the good batch after the two poison records
    poison = [env.produce_raw(demand, junk, key=b"k"), env.produce_raw(demand, near, key=b"k")]
    good = encode(ExampleBatch(namespace=env.ns, ids=env.ids[:5], priority="demand"))
    partition, offset = env.produce_raw(demand, good, key=b"k")
    assert {p for p, _ in poison} == {partition}
    env.wait_committed(demand, partition, offset)  # the partition went on past both
    env.assert_workers_alive()
    letters = {d.source_offset: d for d in env.dead_letters(2)}
    for (_, at), raw in zip(poison, (junk, near), strict=True):
        letter = letters[at]
        assert letter.raw_size == len(raw)
        assert letter.raw_sha256 == hashlib.sha256(raw).hexdigest()
        assert letter.raw_truncated and raw.startswith(letter.raw) and len(letter.raw) > 0
    assert "nosuchns" in letters[poison[1][1]].reason


def test_bad_checkpoints_are_dead_lettered_and_the_previous_model_keeps_serving(
    env: MakerEnv, tmp_path: Path
) -> None:
    env.start_worker()
    env.publisher.manifest(env.save(10))
    env.wait_coverage(10, KINDS)
    before = env.bank.read(env.ns, "embedding", env.ids, lineage=True)

    good = env.save(20)
    wrong_sha = CheckpointManifest(**{**_fields(good), "sha256": "0" * 64})
    garbage = env.checkpoints / "garbage.keras"
    garbage.write_bytes(os.urandom(4096))
    from carls.makers.checkpoints import file_sha256

    def at(step: int, path: Path) -> CheckpointManifest:
        """A manifest of ``path`` as it is (size and sha256 right)."""
        return CheckpointManifest(
            **{
                **_fields(good),
                "step": step,
                "uri": path.as_uri(),
                "sha256": file_sha256(path),
                "size": path.stat().st_size,
            }
        )

    not_a_model = at(21, garbage)
    missing = CheckpointManifest(
        **{**_fields(good), "step": 22, "uri": (env.checkpoints / "absent.keras").as_uri()}
    )
    wrong_dim = env.save(23, embed=4)
    nan = env.save(24, nan=True)
    outside = tmp_path / "outside" / "a.keras"  # a real model, outside the worker's store
    outside.parent.mkdir()
    outside.write_bytes(Path(env.save(25).uri.removeprefix("file://")).read_bytes())
    escape = at(25, outside)
    bad = (wrong_sha, not_a_model, missing, wrong_dim, nan, escape)
    for n, m in enumerate(bad, start=1):
        env.publisher.manifest(m)  # one at a time: a newer one would supersede it
        assert len(env.dead_letters(n, timeout=60)) == n, env.worker_logs()
    letters = env.dead_letters(len(bad))
    assert len(letters) == len(bad)  # one letter per bad checkpoint, not one per batch
    reasons = " | ".join(d.reason for d in letters)
    assert "sha256" in reasons
    assert "not a model" in reasons.lower() or "NotAModel" in " ".join(d.error for d in letters)
    assert "absent.keras" in reasons
    assert "dimension" in reasons.lower()
    assert "nan" in reasons.lower()
    assert "outside the checkpoint root" in letters[-1].reason

    # Demand is still served, by the last model that loaded; nothing in the bank regressed.
    env.publisher.examples(
        ExampleBatch(namespace=env.ns, ids=env.ids[:10], priority="demand"), wait=True
    )
    after = env.bank.read(env.ns, "embedding", env.ids, lineage=True)
    assert set(after.steps.tolist()) == {10}
    assert np.array_equal(after.values, before.values)


def test_a_worker_with_an_empty_root_of_its_own_serves_checkpoints_from_the_banks_store(
    env: MakerEnv, tmp_path: Path
) -> None:
    blobs = CassandraBlobs(env.settings.cassandra).start()
    scope = f"checkpoints/{env.ns}"
    try:
        trainer = ArtifactStore(tmp_path / "trainer", "bank", blobs, keep=2)
        env.checkpoints = tmp_path / "worker"  # the worker's root: empty, and not the trainer's
        env.start_worker()
        first = publish_artifact(tiny_model(10), trainer, env.ns, 10)
        assert first.uri == f"bank://{scope}/step-000000000010.keras"
        assert not list(trainer.root.rglob("step-*"))  # nothing left on the trainer's disk
        env.publisher.manifest(first)
        env.wait_coverage(10, KINDS)
        before = env.bank.read(env.ns, "embedding", env.ids, lineage=True)

        # A chunk cut short in the store, a scheme nothing reads, an artifact over the
        # worker's limit: each dead-lettered with its reason; step 10 keeps serving.
        cut = publish_artifact(tiny_model(20), trainer, env.ns, 20)
        info = blobs.info(scope, "step-000000000020.keras")
        assert info is not None
        blobs.session.execute(
            "UPDATE blob_chunks SET data = %s "
            "WHERE scope = %s AND name = %s AND sha256 = %s AND chunk = 0",
            (b"cut", scope, info.name, info.sha256),
        )
        # (other digests: a worker ignores a sha256 it has already found broken)
        unknown = dataclasses.replace(
            cut, step=21, uri="nosuch://bucket/step-21.keras", sha256="1" * 64
        )
        huge = dataclasses.replace(cut, step=22, size=(1 << 30) + 1, sha256="2" * 64)
        for n, m in enumerate((cut, unknown, huge), start=1):
            env.publisher.manifest(m)
            assert len(env.dead_letters(n, timeout=60)) == n, env.worker_logs()
        reasons = [d.reason for d in env.dead_letters(3)]
        assert f"chunk 0 of {info.chunks} has 3 bytes" in reasons[0]
        assert "no reader for scheme 'nosuch'" in reasons[1]
        assert "over the limit" in reasons[2]
        after = env.bank.read(env.ns, "embedding", env.ids, lineage=True)
        assert set(after.steps.tolist()) == {10}
        assert np.array_equal(after.values, before.values)

        # The next good checkpoint serves, and the store keeps the newest two.
        env.publisher.manifest(publish_artifact(tiny_model(30), trainer, env.ns, 30))
        env.wait_coverage(30, KINDS)
        assert [i.name for i in blobs.entries(scope)] == [
            "step-000000000020.keras",
            "step-000000000030.keras",
        ]
        assert not list((tmp_path / "worker").rglob("*.keras"))  # fetched copies are gone
    finally:
        blobs.delete_scope(scope)
        blobs.close()


def test_two_workers_share_a_campaign_and_one_killed_midway_leaves_nothing_behind(
    stack: Settings, tmp_path: Path
) -> None:
    env = MakerEnv(tmp_path, examples=30_000, buckets=16)
    try:
        env.start_worker()
        env.start_worker()
        env.wait_members(2)
        env.publisher.manifest(env.save(10))
        env.wait_coverage(10, timeout=180)
        victim = env.workers[0]
        progress = ProgressReader(env.settings, env.ns)
        try:
            # The kill comes as the first batch of the campaign is reported written.
            env.publisher.manifest(env.save(20))
            deadline = time.monotonic() + 120
            while progress.embedded(20) == 0:
                assert time.monotonic() < deadline, "the campaign did not start"
            os.killpg(victim.pid, signal.SIGKILL)
            killed_at = time.time()
            victim.wait(timeout=30)
            covered = env.wait_coverage(20, KINDS, timeout=240)
            for c in covered.values():
                assert (c.at_newest, c.older, c.none) == (len(env.ids), 0, 0)
            before = progress.embedded(20, until=killed_at)
            assert 0 < before < len(env.ids), "the campaign was not caught in the middle"
        finally:
            progress.close()
    finally:
        env.close()


def test_above_the_threshold_one_worker_builds_the_steps_index_and_the_other_loads_it(
    stack: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CARLS_NEIGHBOURS_EXACT_BELOW", "1000")
    monkeypatch.setenv("CARLS_LOG_LEVEL", "INFO")
    env = MakerEnv(tmp_path, examples=8000, buckets=8)
    blobs = CassandraBlobs(env.settings.cassandra).start()
    try:
        env.start_worker()
        env.start_worker()
        env.wait_members(2)
        env.publisher.manifest(env.save(10))
        covered = env.wait_coverage(10, KINDS, timeout=240)
        for c in covered.values():
            assert (c.at_newest, c.older, c.none) == (len(env.ids), 0, 0)
        logs = "".join((env.tmp / f"worker-{i}.log").read_text() for i in range(2))
        assert logs.count("HNSW index, built") == 1, env.worker_logs()
        assert "HNSW index, loaded" in logs, env.worker_logs()
        saved = blobs.entries(f"indexes/{env.ns}")
        assert len(saved) == 1 and "-step-000000000010-" in saved[0].name
        # the neighbours are the step-10 model's, close to exact ones
        assert _recall_at_5_of_step_10(env, 500) >= 0.95
    finally:
        blobs.close()
        env.close()  # the index goes with the namespace


def test_a_lone_worker_builds_the_index_from_its_campaigns_own_embeddings(
    stack: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CARLS_NEIGHBOURS_EXACT_BELOW", "1000")
    monkeypatch.setenv("CARLS_LOG_LEVEL", "INFO")
    env = MakerEnv(tmp_path, examples=6000, buckets=4)
    try:
        env.start_worker()
        env.wait_members(1)
        env.publisher.manifest(env.save(10))
        covered = env.wait_coverage(10, KINDS, timeout=240)
        for c in covered.values():
            assert (c.at_newest, c.older, c.none) == (len(env.ids), 0, 0)
        log = (env.tmp / "worker-0.log").read_text()
        # every first-phase batch came to this worker: no example read twice
        assert "6000 embeddings from the campaign's batches, 0 fetched" in log, log[-3000:]
        assert _recall_at_5_of_step_10(env, 300) >= 0.95
    finally:
        env.close()


def _recall_at_5_of_step_10(env: MakerEnv, count: int) -> float:
    """The bank's neighbours of the first ``count`` ids carry step 10; the share of their
    exact top 5 under the step-10 model's embeddings that they hold."""
    got = env.bank.read(env.ns, "neighbours", env.ids[:count], lineage=True)
    assert set(got.steps.tolist()) == {10} and got.neighbour_ids is not None
    pool = np.asarray(tiny_model(10)(env.features)[0])
    unit = pool / np.linalg.norm(pool, axis=1, keepdims=True)
    hits = 0
    for i, mine in enumerate(got.neighbour_ids):
        scores = unit @ unit[i]
        scores[i] = -np.inf
        hits += len({env.ids[j] for j in np.argsort(-scores)[:5]} & set(mine))
    return hits / (5 * count)


def _fields(m: CheckpointManifest) -> dict[str, object]:
    import dataclasses

    return {f.name: getattr(m, f.name) for f in dataclasses.fields(m)}


def test_a_namespace_dropped_and_created_again_is_served_from_its_new_checkpoints(
    env: MakerEnv,
) -> None:
    env.start_worker()
    env.publisher.manifest(env.save(50))
    env.wait_coverage(50)
    spec = env.bank.namespace(env.ns)
    env.bank.drop_namespace(env.ns)
    env.bank.create_namespace(spec)
    env.bank.register_examples(env.ns, env.ids, env.features)
    # The compacted topic still holds step 50 of the old namespace; step 5 of the new one
    # must not be ranked below it.
    env.publisher.manifest(env.save(5))
    covered = env.wait_coverage(5, KINDS)
    assert all(c.steps == {5: len(env.ids)} for c in covered.values())


def test_a_tombstone_on_the_checkpoints_topic_forgets_the_namespaces_manifest(
    env: MakerEnv,
) -> None:
    """A null value under a namespace's key (how a compacted topic deletes a key) means
    "forget this manifest" for the workers and for trainers alike; nothing dies and
    nothing is dead-lettered."""
    env.start_worker()
    env.publisher.manifest(env.save(50))
    env.wait_coverage(50)
    topic = env.settings.topics.checkpoints
    partition, offset = env.produce_raw(topic, None, key=env.ns.encode())
    env.wait_committed(topic, partition, offset)  # the campaign agent went past it
    assert latest_manifest(env.settings.kafka, topic, env.ns) is None  # a trainer's read
    # The worker forgot step 50, so a lower step is served again: examples registered
    # now get step 5's knowledge (the bank keeps the older examples' step 50 rows, as
    # cells are ordered by step).
    new_ids = [f"n{i:04d}" for i in range(100)]
    env.bank.register_examples(env.ns, new_ids, env.features[:100], [-1] * 100)
    env.publisher.manifest(env.save(5))
    env.wait_steps(new_ids, 5)
    env.assert_workers_alive()
    assert latest_manifest(env.settings.kafka, topic, env.ns).step == 5  # type: ignore[union-attr]
    # any dead letter for the tombstone was sent before its offset was committed, above
    assert env.dead_letters(1, timeout=5.0) == []


def test_a_broken_manifest_far_ahead_is_believed_only_once_it_loads_also_after_a_restart(
    env: MakerEnv,
) -> None:
    """A manifest whose file is not a model, at a step far beyond the real ones, must not
    freeze its namespace: the real checkpoints after it are served, by a restarted worker
    too (the verdict lives in the bank); one absurdly far ahead is dead-lettered."""
    from carls.bank.verdicts import CassandraVerdicts
    from carls.makers.checkpoints import file_sha256

    env.start_worker()
    env.publisher.manifest(env.save(10))
    env.wait_coverage(10)
    garbage = env.checkpoints / "garbage.keras"
    garbage.write_bytes(os.urandom(4096))
    broken = CheckpointManifest(
        **{
            **_fields(env.save(11)),
            "step": 5000,
            "uri": garbage.as_uri(),
            "sha256": file_sha256(garbage),
            "size": 4096,
        }
    )
    env.publisher.manifest(broken)
    assert len(env.dead_letters(1)) == 1
    env.publisher.manifest(env.save(20))  # real, and "older" than the broken one
    env.wait_coverage(20, KINDS)
    verdicts = CassandraVerdicts(env.settings.cassandra).start()
    try:
        spec = env.bank.namespace(env.ns)
        assert broken.sha256 in verdicts.broken(env.ns, spec.created_at)
    finally:
        verdicts.close()

    # A new worker reads the whole topic again, the broken manifest included.
    os.killpg(env.workers[0].pid, signal.SIGKILL)
    env.workers[0].wait(timeout=30)
    env.start_worker()
    new_ids = [f"n{i:04d}" for i in range(100)]
    env.bank.register_examples(env.ns, new_ids, env.features[:100], [-1] * 100)
    env.publisher.examples(ExampleBatch(namespace=env.ns, ids=new_ids, priority="demand"))
    env.wait_steps(new_ids, 20)

    far = env.save(10**9)  # a model that loads, a billion steps ahead
    env.publisher.manifest(far)
    letters = env.dead_letters(2)
    assert len(letters) == 2 and "ahead of the newest, step 20" in letters[-1].reason
    assert env.coverage().newest_step == 20


def test_a_batch_waiting_for_a_future_checkpoint_is_parked_and_holds_nothing_else_up(
    env: MakerEnv,
) -> None:
    env.start_worker("--park", "600")  # longer than the test: only its checkpoint frees it
    env.publisher.manifest(env.save(10))
    env.wait_coverage(10)
    examples = env.settings.topics.examples
    future = ExampleBatch(namespace=env.ns, ids=env.ids[:5], priority="refresh", step=1000)
    partition, parked_at = env.produce_raw(examples, encode(future), key=b"same")
    new_ids = [f"n{i:04d}" for i in range(50)]
    env.bank.register_examples(env.ns, new_ids, env.features[:50], [-1] * 50)
    after = ExampleBatch(namespace=env.ns, ids=new_ids, priority="refresh", step=10)
    same, after_at = env.produce_raw(examples, encode(after), key=b"same")
    assert same == partition and after_at > parked_at
    # the batch behind the waiting one, on its partition, is served while it waits
    env.wait_steps(new_ids, 10, timeout=60.0)
    # ... and the partition is not committed past the waiting one (a crash replays it)
    assert env.committed(examples).get(partition, -1) <= parked_at
    # when the checkpoint it waits for comes, that model serves it, and the commits move on
    env.publisher.manifest(env.save(1000))
    env.wait_steps(env.ids[:5], 1000, timeout=120.0)
    env.wait_committed(examples, partition, after_at, timeout=120.0)
    assert env.dead_letters(1, timeout=2.0) == []


def test_a_parked_batch_whose_wait_is_over_is_served_by_the_newest_checkpoint(
    env: MakerEnv,
) -> None:
    env.start_worker("--park", "3")
    env.publisher.manifest(env.save(10))
    env.wait_coverage(10)
    examples = env.settings.topics.examples
    new_ids = [f"n{i:04d}" for i in range(20)]
    env.bank.register_examples(env.ns, new_ids, env.features[:20], [-1] * 20)
    future = ExampleBatch(namespace=env.ns, ids=new_ids, priority="refresh", step=1000)
    partition, at = env.produce_raw(examples, encode(future), key=b"same")
    env.wait_steps(new_ids, 10, timeout=120.0)
    env.wait_committed(examples, partition, at, timeout=120.0)
    assert env.dead_letters(1, timeout=2.0) == []
