"""``carls trainer``: consume jobs from the jobs topic and run them one after another.

A job's offset is committed after its end (succeeded or failed) is recorded in the job
store, so a trainer that dies mid-job hands the job to the next trainer in the group; a
job that was running when ``MAX_ATTEMPTS`` trainers stopped is marked failed instead of
run again (a suspected poison pill), and one already ended is not run twice. A job that
fails is marked failed with its reason and the trainer goes on to the next one; a record
that is not a job is dead-lettered, a tombstone skipped.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from carls.bank.artifacts import ArtifactStore
from carls.bank.jobs import JobStore
from carls.bank.protocol import KnowledgeBank
from carls.bank.retry import retry_unavailable
from carls.schemas import TrainingJob, decode
from carls.schemas.errors import CarlsError
from carls.streams.config import KafkaConnection
from carls.streams.deadletter import dead_letter
from carls.streams.groups import job_consumer
from carls.streams.producer import Publisher
from carls.streams.topics import Topics
from carls.trainers.runner import Context, JobRun, write_state
from carls.trainers.spec import load_spec

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 3
"""Trainers a job may stop mid-run (crash, kill) before it is marked failed, not rerun."""


def serve(
    conn: KafkaConnection,
    topics: Topics,
    bank: KnowledgeBank,
    jobs: JobStore,
    store: ArtifactStore | Path,
    group: str,
    say: Callable[[str], None] = lambda _: None,
    once: bool = False,
    idle_timeout_s: float = 5.0,
) -> int:
    """Run jobs until stopped (or, with ``once``, until the topic is drained); return how
    many ran."""
    consumer = job_consumer(conn, topics.jobs, group)
    publisher = Publisher(conn, topics)
    ran = 0
    producer = f"carls-trainer@{socket.gethostname()}"
    try:
        idle = 0.0
        while True:
            polled = consumer.poll(timeout_ms=1000)
            if not polled:
                idle += 1.0
                if once and idle >= idle_timeout_s:
                    return ran
                continue
            idle = 0.0
            for records in polled.values():
                for rec in records:
                    ran += _run_one(rec, bank, jobs, publisher, store, producer, say)
                    consumer.commit()
    finally:
        consumer.close()
        publisher.close()


def _run_one(
    rec: Any,
    bank: KnowledgeBank,
    jobs: JobStore,
    publisher: Publisher,
    store: ArtifactStore | Path,
    producer: str,
    say: Callable[[str], None],
) -> int:
    raw = rec.value
    if raw is None:  # a tombstone: nothing to run
        log.info("%s[%d]@%d: a tombstone, skipped", rec.topic, rec.partition, rec.offset)
        return 0
    try:
        job = decode(raw, TrainingJob)
    except CarlsError as exc:
        publisher.dead_letter(
            dead_letter(
                f"not a runnable job: {exc}", exc, rec.topic, rec.partition, rec.offset, raw
            )
        )
        return 0
    prior = _read_state(jobs, job.job_id)
    if prior is not None and prior.get("state") in ("succeeded", "failed"):
        say(f"job {job.job_id} already {prior['state']}: skipped")  # a replay after a crash
        return 0
    attempts = int(prior.get("attempts", 0)) if prior is not None else 0
    reason = ""
    if prior is not None and prior.get("state") == "running" and attempts >= MAX_ATTEMPTS:
        reason = (
            f"the job was running when {attempts} trainers stopped (a crash, an OOM kill?): "
            "suspected poison pill, not run again"
        )
    try:  # checked at submit time; its files may have gone since: the job fails
        spec = load_spec(job.spec)
    except CarlsError as exc:
        reason = reason or f"{type(exc).__name__}: {exc}"
    if reason:
        state: dict[str, Any] = {"job_id": job.job_id, "namespace": job.namespace, **(prior or {})}
        state.update(state="failed", reason=reason, finished_at=time.time())
        write_state(jobs, job.job_id, state, final=True)
        say(f"job {job.job_id} failed: {reason}")
        return 1
    say(f"running job {job.job_id} ({spec.paradigm.name} on {spec.namespace})")
    ctx = Context(bank=bank, publisher=publisher, store=store, jobs=jobs, producer=producer)
    try:
        state = JobRun(job.job_id, spec, ctx, say=say, attempt=attempts + 1).run()
        say(f"job {job.job_id} succeeded: test accuracy {state['test_accuracy']:.4f}")
    except Exception as exc:  # marked failed by JobRun (once the bank took it); go on
        say(f"job {job.job_id} failed: {type(exc).__name__}: {exc}")
    return 1


def _read_state(jobs: JobStore, job_id: str) -> dict[str, Any] | None:
    """The job's recorded state, waiting with backoff while the bank is unavailable (a
    job is run only once what became of its earlier attempts is known)."""
    return retry_unavailable(lambda: jobs.get(job_id), f"job {job_id}: reading its state")
