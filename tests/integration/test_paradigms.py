"""The knowledge-using paradigms end to end on the real stack: trainers run in-process
(``JobRun``) against one ``carls worker`` subprocess that makes their knowledge from their
checkpoints, and read it from the bank while they train; and the trainer service, which
marks a job that fails at run time failed and goes on.

Every test has its own topic prefix (so its own worker group) and namespaces, and the jobs
are small (digits, a 64-unit MLP, under a thousand steps)."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka import KafkaProducer

from carls.bank.jobs import MemoryJobStore
from carls.bank.protocol import coverage
from carls.bank.types import Coverage
from carls.schemas import TrainingJob
from carls.settings import Settings
from carls.trainers.runner import Context, JobRun, new_job_id
from carls.trainers.service import serve
from carls.trainers.spec import JobSpec, load_spec
from tests.stack_support import StackEnv, read_dead_letters

pytestmark = pytest.mark.integration
Say = Callable[[str], None]

MODEL = {"hidden": [64], "embedding_dim": 32, "dropout": 0.1}


class Env(StackEnv):
    """A topic prefix with its topics, one ``carls worker`` on it, the bank, a publisher,
    and the namespaces the test made (all removed by ``close``)."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp, "p")

    def namespace(self, suffix: str = "") -> str:
        name = "t" + uuid.uuid4().hex[:12] + suffix
        self.namespaces.append(name)
        return name

    def context(self) -> Context:
        return Context(bank=self.bank, publisher=self.publisher, store=self.tmp / "ckpt")

    def start_worker(self, *extra: str) -> subprocess.Popen[bytes]:
        proc = super().start_worker(*extra)
        self.wait_members(1, timeout=120.0)
        return proc

    # Jobs ---------------------------------------------------------------------------------
    def run_jobs(
        self, specs: list[JobSpec], gate: list[tuple[str, str]] | None = None
    ) -> list[dict[str, Any]]:
        """Run ``specs`` concurrently, each in its own thread (so each reads the others'
        knowledge while it trains); return their final states in order.

        A tiny job is over in seconds, about as long as the worker's first campaign
        takes. So that the jobs meet the makers as long ones do, each job is held once, at
        its first eval, until every ``(namespace, kind)`` of ``gate`` has knowledge in the
        bank; training never waits on the bank otherwise."""
        states: list[dict[str, Any] | None] = [None] * len(specs)
        errors: list[BaseException] = []

        def one(i: int) -> None:
            try:
                spec = specs[i]
                run = JobRun(new_job_id(spec.namespace), spec, self.context())
                if gate:
                    run.say = self._held_once(gate, run)
                states[i] = run.run()
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
        self.assert_workers_alive()
        return [s for s in states if s is not None]

    def _held_once(self, gate: list[tuple[str, str]], run: JobRun, timeout: float = 180.0) -> Say:
        held = threading.Event()

        def say(message: str) -> None:
            if held.is_set() or "test accuracy" not in message:
                return
            held.set()
            deadline = time.monotonic() + timeout

            def waiting() -> list[str]:
                """The gated knowledge not yet in the bank, or (for the kinds the job
                reads) not yet swept into the job's reader as far as the bank has it."""
                reader = run.model.knowledge.reader if run.model is not None else None
                cached = reader.coverage() if reader is not None else {}
                out = []
                for ns, kind in gate:
                    cov = self.coverage(ns, kind)
                    in_bank = (cov.total - cov.none) / cov.total if cov.total else 0.0
                    if cov.at_newest == 0 or cached.get(f"{ns}/{kind}", 1.0) < in_bank:
                        out.append(f"{ns}/{kind}")
                return out

            while missing := waiting():
                self.assert_workers_alive()
                if time.monotonic() > deadline:
                    raise AssertionError(f"no {missing} in {timeout} s\n{self.worker_logs()}")
                time.sleep(0.5)

        return say

    def coverage(self, ns: str, kind: str) -> Coverage:
        return coverage(self.bank, ns, kind)

    def settled(self, ns: str, kind: str, step: int, timeout: float = 60.0) -> Coverage:
        """Coverage of ``kind`` once the makers have caught up with the checkpoint at
        ``step`` (a job's last), or as it is at ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            cov = self.coverage(ns, kind)
            if cov.newest_step == step or time.monotonic() > deadline:
                return cov
            time.sleep(0.5)


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
    states = env.run_jobs(specs, gate=[(a, "prediction"), (b, "prediction")])
    for spec, state in zip(specs, states, strict=True):
        why = describe(state) + "\n" + env.worker_logs()
        assert state["state"] == "succeeded", why
        # Distilling a peer costs no accuracy: the same model trained on the 100 labels
        # alone reaches about 0.9 here; peers distilling an untrained checkpoint's
        # predictions ended between 0.40 and 0.80.
        assert state["test_accuracy"] > 0.85, why
        peer = spec.paradigm.params.peer  # type: ignore[union-attr]
        cov = env.settled(peer, "prediction", spec.train.steps)
        assert cov.newest_step == spec.train.steps and cov.at_newest > 0, f"{cov}\n{why}"
        assert state["knowledge_coverage"][f"{peer}/prediction"] > 0, why
        history = state["history"]
        seen = first_eval(history, "peer_usable")
        assert seen is not None, why
        # Once the peer's predictions were usable, the loss used them.
        assert any(h["loss"].get("codistill", 0.0) > 0 for h in history[seen + 1 :]), why


def test_curriculum_samples_by_the_makers_difficulty(env: Env) -> None:
    ns = env.namespace()
    env.start_worker()
    spec = digits_spec(
        ns,
        {
            "name": "curriculum",
            "params": {"pacing": "linear", "start_fraction": 0.3, "full_at": 0.7},
        },
        train={"steps": 600},
    )
    (state,) = env.run_jobs([spec], gate=[(ns, "difficulty")])
    why = describe(state) + "\n" + env.worker_logs()
    assert state["state"] == "succeeded", why
    assert state["test_accuracy"] > 0.5, why
    cov = env.settled(ns, "difficulty", spec.train.steps)
    assert cov.newest_step == spec.train.steps and cov.at_newest > 0, f"{cov}\n{why}"
    history = state["history"]
    # Every example is labeled: the curriculum ranks all of them by the makers' difficulty.
    seen = first_eval(history, "difficulty_usable")
    assert seen is not None and history[seen]["step"] > 1, why
    assert history[-1]["knowledge_use"]["difficulty_usable"] > 0.5, why


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
    states = env.run_jobs(specs, gate=[(top, "embedding/top"), (bottom, "embedding/bottom")])
    for spec, state, mine, other, other_ns in zip(
        specs, states, ("top", "bottom"), ("bottom", "top"), (bottom, top), strict=True
    ):
        why = describe(state) + "\n" + env.worker_logs()
        assert state["state"] == "succeeded", why
        # The maker writes each namespace's examples under its own modality's kind.
        cov = env.settled(spec.namespace, f"embedding/{mine}", spec.train.steps)
        assert cov.newest_step == spec.train.steps and cov.at_newest > 0, f"{cov}\n{why}"
        assert env.coverage(spec.namespace, f"embedding/{other}").newest_step is None
        assert state["knowledge_coverage"][f"{other_ns}/embedding/{other}"] > 0, why
        history = state["history"]
        seen = first_eval(history, "other_usable")
        assert seen is not None, why
        assert any(h["loss"].get("align", 0.0) > 0 for h in history[seen + 1 :]), why


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
    letters = read_dead_letters(settings, 1, timeout=30.0)
    assert [(d.source_topic, d.source_offset) for d in letters] == [
        (settings.topics.jobs, garbage.offset)
    ]
    assert letters[0].raw == b"\xff not a job"
    assert "not a runnable job" in letters[0].reason
