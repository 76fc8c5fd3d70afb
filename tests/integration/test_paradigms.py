"""The knowledge-using paradigms end to end on the real stack: trainers run in-process
(``JobRun``) against one ``carls worker`` subprocess that makes their knowledge from their
checkpoints, and read it from the bank while they train; and the trainer service, which
marks a job that fails at run time failed and goes on.

Every test has its own topic prefix (so its own worker group) and namespaces, and the jobs
are small (digits, a 64-unit MLP, under a thousand steps)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

from bank.cassandra import CassandraBank
from bank.errors import NamespaceError
from bank.jobs import MemoryJobStore
from bank.protocol import coverage
from bank.types import Coverage
from carls.settings import Settings
from schemas import DeadLetter, TrainingJob, decode
from streams.producer import Publisher
from streams.topics import ensure_topics, topic_specs
from trainers.runner import Context, JobRun, new_job_id
from trainers.service import serve
from trainers.spec import JobSpec, load_spec

pytestmark = pytest.mark.integration

MODEL = {"hidden": [64], "embedding_dim": 32, "dropout": 0.1}


class Env:
    """A topic prefix with its topics, one ``carls worker`` on it, the bank, a publisher,
    and the namespaces the test made (all dropped by ``close``)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.prefix = "p" + uuid.uuid4().hex[:10]
        self.settings = Settings(topic_prefix=self.prefix)
        self.group = f"{self.prefix}-makers"
        ensure_topics(
            self.settings.kafka, topic_specs(self.settings.topics, self.settings.partitions)
        )
        self.bank = CassandraBank(self.settings.cassandra)
        self.publisher = Publisher(self.settings.kafka, self.settings.topics)
        self.namespaces: list[str] = []
        self.worker: subprocess.Popen[bytes] | None = None
        self.log = tmp / "worker.log"

    def namespace(self, suffix: str = "") -> str:
        name = "t" + uuid.uuid4().hex[:12] + suffix
        self.namespaces.append(name)
        return name

    def context(self) -> Context:
        return Context(bank=self.bank, publisher=self.publisher, store=self.tmp / "ckpt")

    # The worker ---------------------------------------------------------------------------
    def start_worker(self) -> None:
        """One worker in its own group; its Faust data folder lands in the test's tmp."""
        self.worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "carls",
                "worker",
                "--app-id",
                self.group,
                "--session-timeout",
                "6",
            ],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            env={**os.environ, "CARLS_TOPIC_PREFIX": self.prefix},
            cwd=self.tmp,
            start_new_session=True,
        )
        self._wait_joined()

    def _wait_joined(self, timeout: float = 120.0) -> None:
        admin = KafkaAdminClient(**self.settings.kafka.kafka_python())
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                self.assert_worker_alive()
                group = admin.describe_groups([self.group]).get(self.group, {})
                if group.get("members") and group.get("group_state") == "Stable":
                    return
                time.sleep(0.5)
        finally:
            admin.close()
        raise AssertionError(f"the worker did not join {self.group} in {timeout} s\n{self.logs()}")

    def assert_worker_alive(self) -> None:
        if self.worker is not None and self.worker.poll() is not None:
            raise AssertionError(f"the worker exited ({self.worker.returncode}):\n{self.logs()}")

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    # Jobs ---------------------------------------------------------------------------------
    def run_jobs(self, specs: list[JobSpec]) -> list[dict[str, Any]]:
        """Run ``specs`` concurrently, each in its own thread (so each reads the others'
        knowledge while it trains); return their final states in order."""
        states: list[dict[str, Any] | None] = [None] * len(specs)
        errors: list[BaseException] = []

        def one(i: int) -> None:
            try:
                spec = specs[i]
                states[i] = JobRun(new_job_id(spec.namespace), spec, self.context()).run()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(specs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        assert not any(t.is_alive() for t in threads), "a job did not finish in 600 s"
        if errors:
            raise errors[0]
        self.assert_worker_alive()
        return [s for s in states if s is not None]

    def coverage(self, ns: str, kind: str) -> Coverage:
        return coverage(self.bank, ns, kind)

    # Cleanup ------------------------------------------------------------------------------
    def close(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            self.worker.terminate()
            try:
                self.worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait(timeout=30)
        self.publisher.close()
        try:
            for ns in self.namespaces:
                with contextlib.suppress(NamespaceError):
                    self.bank.drop_namespace(ns)
        finally:
            self.bank.close()
        admin = KafkaAdminClient(**self.settings.kafka.kafka_python())
        try:
            with contextlib.suppress(Exception):  # best effort: the prefix is unique anyway
                admin.delete_topics(
                    [s.name for s in topic_specs(self.settings.topics, self.settings.partitions)]
                )
        finally:
            admin.close()


@pytest.fixture
def env(stack: Settings, tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    try:
        yield e
    finally:
        e.close()


def digits_spec(namespace: str, paradigm: dict[str, Any], **overrides: Any) -> JobSpec:
    train = {
        "steps": 800,
        "batch_size": 64,
        "labeled_batch_size": 32,
        "learning_rate": 0.003,
        "checkpoint_every": 100,
        "eval_every": 100,
        "seed": 0,
        **overrides.pop("train", {}),
    }
    dataset = {"name": "digits", "test_size": 0.3, **overrides.pop("dataset", {})}
    assert not overrides, overrides
    return load_spec(
        {
            "namespace": namespace,
            "dataset": dataset,
            "model": MODEL,
            "paradigm": paradigm,
            "train": train,
        }
    )


def recent(cov: Coverage, final_step: int, every: int) -> bool:
    """Knowledge made from a checkpoint after the first one, within two checkpoints of the
    end (the worker may still be working on the last)."""
    return cov.newest_step is not None and cov.newest_step >= max(every, final_step - 2 * every)


def first_eval(history: list[dict[str, Any]], key: str) -> int | None:
    """The index of the first eval whose ``knowledge_use[key]`` is positive."""
    for i, h in enumerate(history):
        if h["knowledge_use"].get(key, 0.0) > 0:
            return i
    return None


def describe(state: dict[str, Any]) -> str:
    rows = [
        f"step {h['step']}: acc {h['test_accuracy']:.3f} use {h['knowledge_use']} "
        f"loss { {k: round(v, 4) for k, v in h['loss'].items()} }"
        for h in state["history"]
    ]
    return f"{state['job_id']} {state['state']} {state.get('reason')}\n" + "\n".join(rows)


# ---------------------------------------------------------------------------------------


def test_codistillation_peers_read_each_others_stale_predictions(env: Env) -> None:
    a, b = env.namespace("_a"), env.namespace("_b")
    env.start_worker()
    specs = [
        digits_spec(
            ns,
            {"name": "codistillation", "params": {"peer": peer}},
            dataset={"labeled": 100},
        )
        for ns, peer in ((a, b), (b, a))
    ]
    states = env.run_jobs(specs)
    for spec, state in zip(specs, states, strict=True):
        why = describe(state) + "\n" + env.logs()
        assert state["state"] == "succeeded", why
        assert state["test_accuracy"] > 0.5, why
        peer = spec.paradigm.params.peer  # type: ignore[union-attr]
        cov = env.coverage(peer, "prediction")
        assert cov.at_newest > 0 and recent(cov, spec.train.steps, 100), (cov, why)
        history = state["history"]
        seen = first_eval(history, "peer_usable")
        assert seen is not None, why
        # Once the peer's predictions were usable, the loss used them.
        assert any(h["loss"].get("codistill", 0.0) > 0 for h in history[seen + 1 :]), why
        assert state["knowledge_coverage"][f"{peer}/prediction"] > 0, why


def test_curriculum_samples_by_the_makers_difficulty(env: Env) -> None:
    ns = env.namespace()
    env.start_worker()
    spec = digits_spec(
        ns,
        {
            "name": "curriculum",
            "params": {"pacing": "linear", "start_fraction": 0.3, "full_at": 0.7},
        },
        train={"steps": 600, "eval_every": 100},
    )
    (state,) = env.run_jobs([spec])
    why = describe(state) + "\n" + env.logs()
    assert state["state"] == "succeeded", why
    assert state["test_accuracy"] > 0.5, why
    cov = env.coverage(ns, "difficulty")
    assert cov.at_newest > 0 and recent(cov, spec.train.steps, 100), (cov, why)
    history = state["history"]
    # The first checkpoint goes out at step 1; knowledge from it shows up in later evals.
    seen = first_eval(history, "difficulty_usable")
    assert seen is not None, why
    assert history[seen]["step"] > 1


def test_multimodal_trainers_align_with_each_others_embeddings(env: Env) -> None:
    task = "t" + uuid.uuid4().hex[:12]
    top, bottom = f"{task}_top", f"{task}_bottom"
    env.namespaces += [top, bottom]
    env.start_worker()
    modalities = {"top": [0, 32], "bottom": [32, 64]}
    specs = [
        digits_spec(
            ns,
            {"name": "multimodal", "params": {"modality": mine, "others": [other]}},
            dataset={"labeled": 100, "modalities": modalities},
        )
        for ns, mine, other in ((top, "top", "bottom"), (bottom, "bottom", "top"))
    ]
    states = env.run_jobs(specs)
    for spec, state, mine, other_ns in zip(
        specs, states, ("top", "bottom"), (bottom, top), strict=True
    ):
        why = describe(state) + "\n" + env.logs()
        assert state["state"] == "succeeded", why
        cov = env.coverage(spec.namespace, f"embedding/{mine}")
        assert cov.at_newest > 0 and recent(cov, spec.train.steps, 100), (cov, why)
        history = state["history"]
        seen = first_eval(history, "other_usable")
        assert seen is not None, why
        assert any(h["loss"].get("align", 0.0) > 0 for h in history[seen:]), why
        other = "bottom" if mine == "top" else "top"
        assert state["knowledge_coverage"][f"{other_ns}/embedding/{other}"] > 0, why


def _dead_letters(settings: Settings, count: int, timeout: float = 30.0) -> list[DeadLetter]:
    topic = settings.topics.deadletter
    consumer = KafkaConsumer(**settings.kafka.kafka_python(), enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        letters: list[DeadLetter] = []
        deadline = time.monotonic() + timeout
        while len(letters) < count and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                letters += [decode(r.value, DeadLetter) for r in records]
        return letters
    finally:
        consumer.close()


def test_service_marks_a_job_failing_at_run_time_failed_and_runs_the_next(
    env: Env, tmp_path: Path
) -> None:
    settings = env.settings
    # A garbage record first: dead-lettered, and the service goes on.
    producer = KafkaProducer(**settings.kafka.kafka_python())
    try:
        garbage = producer.send(settings.topics.jobs, key=b"junk", value=b"\xff not a job").get(
            timeout=30
        )
    finally:
        producer.close()

    # A job whose dataset file is gone by the time it runs.
    data = tmp_path / "vanishing.csv"
    rng = np.random.default_rng(0)
    rows = ["a,b,c,label"] + [
        f"{x[0]:.3f},{x[1]:.3f},{x[2]:.3f},{i % 2}"
        for i, x in enumerate(rng.standard_normal((60, 3)))
    ]
    data.write_text("\n".join(rows) + "\n")
    bad_ns, good_ns = env.namespace(), env.namespace()
    bad = load_spec(
        {
            "namespace": bad_ns,
            "dataset": {"path": str(data), "label_column": "label"},
            "paradigm": {"name": "supervised"},
            "train": {"steps": 20},
        }
    )
    good = digits_spec(good_ns, {"name": "supervised"}, train={"steps": 100, "eval_every": 50})
    jobs = [
        TrainingJob(
            job_id=new_job_id(spec.namespace),
            namespace=spec.namespace,
            spec=spec.to_dict(),
            submitted_at=time.time(),
        )
        for spec in (bad, good)
    ]
    for job in jobs:
        env.publisher.job(job)
    data.unlink()

    store = MemoryJobStore()
    said: list[str] = []
    ran = serve(
        settings.kafka,
        settings.topics,
        env.bank,
        store,
        tmp_path / "ckpt",
        f"{env.prefix}-trainers",
        say=said.append,
        once=True,
        idle_timeout_s=3.0,
    )
    assert ran == 2, said
    failed, succeeded = (store.get(j.job_id) for j in jobs)
    assert failed is not None and failed["state"] == "failed", (failed, said)
    assert "vanishing.csv" in failed["reason"], failed
    assert succeeded is not None and succeeded["state"] == "succeeded", (succeeded, said)
    assert succeeded["test_accuracy"] > 0.5
    letters = _dead_letters(settings, 1)
    assert [(d.source_topic, d.source_offset) for d in letters] == [
        (settings.topics.jobs, garbage.offset)
    ]
    assert letters[0].raw == b"\xff not a job"
    assert "not a runnable job" in letters[0].reason
    assert json.dumps(failed)  # the state stays JSON for `carls job status`
