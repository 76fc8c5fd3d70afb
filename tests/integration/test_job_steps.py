"""Steps are monotonic inside a namespace, also across jobs."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from carls.bank.cassandra import CassandraBank
from carls.settings import Settings
from carls.streams.manifests import latest_manifest
from carls.streams.producer import Publisher
from carls.streams.topics import ensure_topics, topic_specs
from carls.trainers.runner import Context, JobRun, new_job_id
from carls.trainers.spec import load_spec

pytestmark = pytest.mark.integration


def test_a_second_job_on_a_namespace_numbers_its_checkpoints_after_the_first(
    stack: Settings, tmp_path: Path
) -> None:
    settings = Settings(topic_prefix="s" + uuid.uuid4().hex[:10])
    ensure_topics(
        settings.kafka,
        topic_specs(settings.topics, settings.partitions, settings.topic_replication),
    )
    ns = "t" + uuid.uuid4().hex[:12]
    spec = load_spec(
        {
            "namespace": ns,
            "dataset": {"name": "iris"},
            "model": {"hidden": [16], "embedding_dim": 8},
            "paradigm": {"name": "supervised"},
            "train": {"steps": 200, "checkpoint_every": 100, "eval_every": 100, "publish": True},
        }
    )
    bank = CassandraBank(settings.cassandra).start()
    publisher = Publisher(settings.kafka, settings.topics)
    ctx = Context(bank=bank, publisher=publisher, store=tmp_path / "ckpt")
    try:
        first = JobRun(new_job_id(ns), spec, ctx).run()
        topic = settings.topics.checkpoints
        created = bank.namespace(ns).created_at
        after_first = latest_manifest(settings.kafka, topic, ns, created)
        assert first["step_base"] == 0
        assert after_first is not None
        assert after_first.step == 200
        second = JobRun(new_job_id(ns), spec, ctx).run()
        after_second = latest_manifest(settings.kafka, topic, ns, created)
        assert second["step_base"] == 200
        assert after_second is not None
        assert after_second.step == 400
    finally:
        publisher.close()
        bank.drop_namespace(ns)
        bank.close()
