"""Outages on the real stack: a server is frozen (SIGSTOP, as in a long GC pause or a
network partition) in the middle of the work. A trainer trains on from its knowledge
reader's cache, its checkpoints announced once Kafka is back, and the job ends recorded,
never stuck in ``running``; makers wait, commit nothing meanwhile, and finish."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from carls.bank.blobs import CassandraBlobs
from carls.bank.jobs import CassandraJobStore
from carls.infra.cassandra import CassandraServer
from carls.settings import Settings
from carls.trainers.runner import Context, JobRun, new_job_id
from carls.trainers.spec import load_spec
from tests.stack_support import StackEnv, in_background

pytestmark = pytest.mark.integration
OUTAGE_S = {"cassandra": 30.0, "kafka": 15.0}


@pytest.fixture
def env(stack: Settings, tmp_path: Path) -> Iterator[StackEnv]:
    e = StackEnv(tmp_path, "o")
    try:
        yield e
    finally:
        e.close()


@pytest.mark.parametrize("server", ["cassandra", "kafka"])
def test_a_training_job_goes_on_through_a_30_s_outage(
    env: StackEnv, stack: Settings, server: str
) -> None:
    from carls.infra.kafka import KafkaServer

    pid = (CassandraServer if server == "cassandra" else KafkaServer)(stack.infra).pid()
    if pid is None:
        pytest.fail(f"the local stack's {server} is not running under `carls infra`")
    ns = f"{env.prefix}_outage"
    env.namespaces.append(ns)
    spec = load_spec(
        {
            "namespace": ns,
            "dataset": {"name": "digits", "test_size": 0.3},
            "model": {"hidden": [64], "embedding_dim": 32},
            "paradigm": {"name": "pseudo_label_graph", "params": {"threshold": 0.5}},
            "train": {
                "steps": 4000,
                "batch_size": 64,
                "labeled_batch_size": 32,
                "checkpoint_every": 200,
                "eval_every": 100,
                "seed": 0,
            },
        }
    )
    jobs = CassandraJobStore(env.settings.cassandra).start()
    blobs = CassandraBlobs(env.settings.cassandra).start()
    store = env.settings.artifact_store(blobs)  # the default: checkpoints go to the bank
    job_id = new_job_id(ns)
    run = JobRun(job_id, spec, Context(env.bank, env.publisher, store, jobs))
    trainer, outcome = in_background(run.run, "outage-trainer")
    try:
        deadline = time.monotonic() + 300
        while run.state["step"] < 300 and trainer.is_alive():  # well into training
            assert time.monotonic() < deadline, "the job did not get going"
            time.sleep(0.2)
        assert trainer.is_alive(), outcome
        before = run.state["step"]
        os.kill(pid, signal.SIGSTOP)
        try:
            frozen_at = time.monotonic()
            while time.monotonic() - frozen_at < OUTAGE_S[server]:  # the outage itself
                time.sleep(1.0)
            during = run.state["step"]
        finally:
            os.kill(pid, signal.SIGCONT)
        trainer.join(timeout=600)
        assert not trainer.is_alive(), "the job did not end within 10 minutes of the outage"
    finally:
        os.kill(pid, signal.SIGCONT)  # whatever happened, the stack goes on for others
    assert "error" not in outcome, outcome
    assert outcome["state"]["state"] == "succeeded"
    assert during > before, "training stalled while the bank was away"
    saved = jobs.get(job_id)
    jobs.close()
    assert saved is not None and saved["state"] == "succeeded"
    assert saved["step"] == 4000 and saved["test_accuracy"] > 0.5
    # every checkpoint saved was stored and announced, those of the outage once the bank
    # and Kafka were back; the store keeps the newest three
    assert saved["checkpoints"] == 4000 // 200
    kept = [e.name for e in blobs.entries(f"checkpoints/{ns}")]
    blobs.close()
    assert kept == [f"step-{s:012d}.tar" for s in (3600, 3800, 4000)]
    assert not list(store.root.glob(f"{ns}/step-*"))
    # the knowledge reader stopped with the job
    assert not [t for t in threading.enumerate() if t.name == "knowledge-reader"]


@pytest.mark.parametrize("server", ["cassandra", "kafka"])
def test_a_campaign_comes_through_a_frozen_server_with_nothing_lost(
    stack: Settings, tmp_path: Path, server: str
) -> None:
    """Makers mid-campaign while Cassandra, or Kafka, stops answering for 10 s: they wait
    (nothing committed meanwhile) and then finish, every id at the new step."""
    from carls.infra.kafka import KafkaServer
    from tests.integration.makers_support import MakerEnv

    kinds = ("embedding", "pseudo_label", "neighbours")
    env = MakerEnv(tmp_path, examples=30_000, buckets=16)
    cls = CassandraServer if server == "cassandra" else KafkaServer
    pid = cls(stack.infra).pid()
    if pid is None:
        pytest.fail(f"the local stack's {server} is not running under `carls infra`")
    try:
        env.start_worker()
        env.wait_members(1)
        env.publisher.manifest(env.save(10))
        # A sample of ids is read, not the whole namespace scanned: a scan of 30,000 rows
        # on a loaded machine took as long as the campaign's first phase, and the outage
        # came after it had ended.
        sample = env.ids[:: len(env.ids) // 256]

        def at_step(kind: str) -> int:
            read = env.bank.read(env.ns, kind, sample, lineage=True)
            return int((read.steps == 10).sum())

        deadline = time.monotonic() + 120
        while at_step("embedding") == 0:  # the campaign is under way
            env.assert_workers_alive()
            assert time.monotonic() < deadline, env.worker_logs()
            time.sleep(0.05)
        # neighbours come last (after the pool of every embedding): not all written yet
        assert at_step("neighbours") < len(sample), "the campaign was over before the outage"
        os.kill(pid, signal.SIGSTOP)
        try:
            frozen_at = time.monotonic()
            while time.monotonic() - frozen_at < 10.0:  # the outage itself
                time.sleep(0.5)
        finally:
            os.kill(pid, signal.SIGCONT)
        covered = env.wait_coverage(10, kinds, timeout=300)
        for c in covered.values():
            assert (c.at_newest, c.older, c.none) == (len(env.ids), 0, 0)
        env.assert_workers_alive()
        assert env.dead_letters(1, timeout=2.0) == []
    finally:
        os.kill(pid, signal.SIGCONT)
        env.close()
