"""Several trainers sharing the jobs topic, on real Kafka: each job runs once, a job group
starts together, a job whose trainer stopped is taken over as the next attempt, and
cancelling stops a job. The trainers run in this process (threads), over one in-memory
bank and job store, as processes on several machines share Cassandra."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from carls.bank.jobs import MemoryJobStore
from carls.bank.memory import MemoryBank
from carls.schemas import TrainingJob
from carls.settings import Settings
from carls.streams.producer import Publisher
from carls.trainers.service import MAX_ATTEMPTS, READY, TrainerService
from carls.trainers.spec import load_spec
from tests.stack_support import prefixed_settings

pytestmark = pytest.mark.integration
LEASE_S = 3.0


class Trainers:
    """Trainer services in threads of this process, on a topic prefix of their own."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.settings = prefixed_settings("j")
        self.bank = MemoryBank()
        self.jobs = MemoryJobStore()
        self.publisher = Publisher(self.settings.kafka, self.settings.topics)
        self.services: list[TrainerService] = []
        self.threads: list[threading.Thread] = []
        self.said: list[str] = []

    def start(self, name: str, slots: int = 1) -> TrainerService:
        service = TrainerService(
            self.settings.kafka,
            self.settings.topics,
            self.bank,
            self.jobs,
            self.tmp / "ckpt",
            f"{self.settings.topic_prefix}-trainers",
            slots=slots,
            say=self.said.append,
            name=name,
            lease_s=LEASE_S,
        )
        thread = threading.Thread(target=service.serve, name=f"trainer-{name}", daemon=True)
        thread.start()
        self.services.append(service)
        self.threads.append(thread)
        return service

    def submit(self, steps: int = 40, group: int = 0, **train: Any) -> list[TrainingJob]:
        """Queue one job (or a group of ``group`` peers) on iris."""
        gid = f"group-{uuid.uuid4().hex[:8]}" if group else None
        records = []
        for _ in range(max(group, 1)):
            ns = "t" + uuid.uuid4().hex[:12]
            spec = load_spec(
                {
                    "namespace": ns,
                    "dataset": {"name": "iris"},
                    "model": {"hidden": [16], "embedding_dim": 8},
                    "paradigm": {"name": "supervised"},
                    "train": {"steps": steps, "eval_every": 20, "checkpoint_every": 20, **train},
                }
            )
            record = TrainingJob(
                job_id=f"{ns}-{uuid.uuid4().hex[:8]}",
                namespace=ns,
                spec=spec.to_dict(),
                submitted_at=time.time(),
                group=gid,
                group_size=max(group, 1),
            )
            self.jobs.put(record.job_id, {"job_id": record.job_id, "state": "queued"})
            records.append(record)
        for record in records:
            self.publisher.job(record)
        return records

    def state(self, job: TrainingJob) -> dict[str, Any]:
        return self.jobs.get(job.job_id) or {}

    def wait(
        self, jobs: list[TrainingJob], states: tuple[str, ...], timeout: float = 240.0
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.state(j).get("state") in states for j in jobs):
                return
            for thread in self.threads:
                assert thread.is_alive(), "\n".join(self.said[-20:])
            time.sleep(0.3)
        got = {j.job_id: self.state(j).get("state") for j in jobs}
        raise AssertionError(
            f"not {states} in {timeout:.0f} s: {got}\n" + "\n".join(self.said[-20:])
        )

    def close(self) -> None:
        for service in self.services:
            service.stop()
        for thread in self.threads:
            thread.join(timeout=60)
        self.publisher.close()


@pytest.fixture
def trainers(stack: Settings, tmp_path: Path) -> Iterator[Trainers]:
    t = Trainers(tmp_path)
    try:
        yield t
    finally:
        t.close()


def test_two_trainers_share_the_jobs_each_runs_once_and_a_group_starts_together(
    trainers: Trainers,
) -> None:
    a, b = trainers.start("a"), trainers.start("b")
    solo = trainers.submit() + trainers.submit() + trainers.submit()
    peers = trainers.submit(steps=80, group=2)
    trainers.wait(solo + peers, ("succeeded",))
    for job in solo + peers:
        state = trainers.state(job)
        assert state["attempts"] == 1 and state["retries"] == [], state
        assert state["trainer"] in ("a", "b")
        assert trainers.jobs.lease(job.job_id).trainer == state["trainer"]  # type: ignore[union-attr]
    assert a.ran + b.ran == 5
    started = [trainers.state(j)["started_at"] for j in peers]
    finished = [trainers.state(j)["finished_at"] for j in peers]
    assert max(started) < min(finished), (started, finished)  # the peers ran at once
    assert {trainers.state(j)["group"] for j in peers} == {peers[0].group}
    # each took its first step, then waited for the other's, before training on
    ready = trainers.jobs.group_members(READY + str(peers[0].group))
    assert sorted(ready) == sorted(j.job_id for j in peers), ready


def test_a_job_whose_trainer_stopped_is_taken_over_and_one_stopped_too_often_fails(
    trainers: Trainers,
) -> None:
    (orphan,) = trainers.submit()
    (poison,) = trainers.submit()
    # Trainers that took these jobs and died: their leases are never renewed.
    assert trainers.jobs.take(orphan.job_id, "died-host-1", 1, None) is not None
    assert trainers.jobs.take(poison.job_id, "died-host-2", MAX_ATTEMPTS, None) is not None
    trainers.start("b")
    trainers.wait([orphan, poison], ("succeeded", "failed"), timeout=240)
    state = trainers.state(orphan)
    assert state["state"] == "succeeded" and state["attempts"] == 2, state
    (retry,) = state["retries"]
    assert retry["attempt"] == 1 and retry["trainer"] == "died-host-1"
    assert "its trainer stopped" in retry["reason"] and retry["by"] == "b"
    failed = trainers.state(poison)
    assert failed["state"] == "failed" and "suspected poison pill" in failed["reason"], failed
    assert "history" not in failed or failed["history"] == []  # it never trained


def test_cancel_stops_a_running_job_and_a_queued_one_never_starts(trainers: Trainers) -> None:
    (queued,) = trainers.submit()
    trainers.jobs.request_cancel(queued.job_id)
    (long,) = trainers.submit(steps=100_000, eval_every=50)
    trainers.start("a", slots=2)
    trainers.wait([long], ("running",))
    trainers.jobs.request_cancel(long.job_id)
    trainers.wait([queued, long], ("cancelled",), timeout=60)
    assert "before it started" in trainers.state(queued)["reason"]
    state = trainers.state(long)
    assert "cancelled" in state["reason"] and 0 < state["step"] < 100_000, state
