"""``carls trainer``: run the jobs of the jobs topic, several at a time, shared with any
number of other trainers.

The jobs topic's partitions are spread over the trainers of one consumer group; each
trainer runs up to ``slots`` jobs at once, each in a thread of its own, and stops taking
records while its slots are full (the consumer keeps its place in the group).

**A job runs once.** A trainer runs a job only once it holds the job's lease
(``bank.jobs``: a compare-and-set, so of trainers racing for a job exactly one wins) and
renews the lease while the job runs. A record of a job whose lease is alive elsewhere (a
rebalance handed its partition over mid-job) is watched, not run: its offset is committed
once the job ends. **A job whose trainer died is run again**: its lease stops being
renewed, and after ``LEASE_S`` the trainer holding its record (the same partition, now
another trainer's) takes it over as the next attempt; the job's state lists each retry
and why. A job that was running when ``MAX_ATTEMPTS`` trainers stopped is marked failed
instead (a suspected poison pill).

**Job groups** (peers submitted together, ``carls submit a.yaml b.yaml``) start together:
each member, once a trainer holds it, waits until every member has one, whether on other
trainers or in this one (a group's members do not count against the slots, so one trainer
can run a whole group). **Cancelling** (``carls job cancel``) stops a running job at its
next step and marks it cancelled; a queued one is never started.

Offsets are committed per partition up to the first record whose job has not ended. A
record that is not a job is dead-lettered, a tombstone skipped.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carls.bank.artifacts import ArtifactStore
from carls.bank.jobs import LEASE_S, JobStore, Lease
from carls.bank.protocol import KnowledgeBank
from carls.bank.retry import retry_unavailable
from carls.schemas import TrainingJob, decode
from carls.schemas.errors import CarlsError
from carls.streams.config import KafkaConnection
from carls.streams.deadletter import dead_letter
from carls.streams.jobqueue import JobQueue, Ref, ref_of
from carls.streams.producer import Publisher
from carls.streams.topics import Topics
from carls.trainers.runner import FINAL_STATES, Context, JobRun, StopSignal, write_state
from carls.trainers.spec import load_spec

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 3
"""Trainers a job may stop mid-run (crash, kill) before it is marked failed, not rerun."""
GROUP_WAIT_S = 600.0
READY = "ready:"
"""Prefix of the record of a group's members that have taken their first step."""
"""How long a group member waits for the others to find a trainer before it fails."""
Say = Callable[[str], None]


def _read(call: Callable[[], Any], what: str) -> Any:
    """A job-store read, waiting with backoff while the bank is unavailable (a job is
    started or skipped only once what became of it is known)."""
    return retry_unavailable(call, what)


@dataclass(eq=False)
class _Job:
    """A job this trainer runs, or watches while another runs it."""

    job: TrainingJob
    record: Ref | None
    lease: Lease | None = None
    thread: threading.Thread | None = None
    stop: StopSignal = field(default_factory=StopSignal)
    checked_at: float = 0.0

    @property
    def grouped(self) -> bool:
        return self.job.group is not None


class TrainerService:
    """One ``carls trainer``: see the module's docstring. ``serve`` runs until stopped
    (or, with ``once``, until the topic is drained and its jobs have ended)."""

    def __init__(
        self,
        conn: KafkaConnection,
        topics: Topics,
        bank: KnowledgeBank,
        jobs: JobStore,
        store: ArtifactStore | Path,
        group: str,
        *,
        slots: int = 1,
        say: Say = lambda _: None,
        name: str | None = None,
        lease_s: float = LEASE_S,
        log_dir: Path | None = None,
    ) -> None:
        if slots < 1:
            raise ValueError(f"slots: at least 1, got {slots}")
        self.conn, self.topics, self.bank, self.jobs = conn, topics, bank, jobs
        self.store, self.group, self.slots, self.say = store, group, slots, say
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.lease_s = lease_s
        self.log_dir = log_dir
        self.renew_every_s = lease_s / 3
        self.running: dict[str, _Job] = {}
        self.watched: dict[str, _Job] = {}
        self.ran = 0
        self._queue: JobQueue | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._publisher: Publisher | None = None

    def stop(self) -> None:
        """Make ``serve`` return after its current poll; running jobs are left to finish
        only if the process stays (they are daemon threads)."""
        self._stopping.set()

    # ------------------------------------------------------------------------------------
    def serve(self, once: bool = False, idle_timeout_s: float = 5.0) -> int:
        self._queue = queue = JobQueue(self.conn, self.topics.jobs, self.group)
        self._publisher = Publisher(self.conn, self.topics)
        idle_since = time.monotonic()
        try:
            while not self._stopping.is_set():
                self._tend()
                queue.commit()
                room = sum(not j.grouped for j in self.running.values()) < self.slots
                records = queue.poll(0.5, take=room)
                if records or self.running or self.watched:
                    idle_since = time.monotonic()
                elif once and time.monotonic() - idle_since >= idle_timeout_s:
                    return self.ran
                for rec in records:
                    self._accept(rec)
            return self.ran
        finally:
            queue.close()
            self._publisher.close()

    # ------------------------------------------------------------------------------------
    def _finish(self, ref: Ref | None) -> None:
        if self._queue is not None:
            self._queue.done(ref)

    def _dead_letter(self, rec: Any, reason: str, error: BaseException) -> None:
        assert self._publisher is not None
        self._publisher.dead_letter(
            dead_letter(reason, error, rec.topic, rec.partition, rec.offset, rec.value)
        )

    # ------------------------------------------------------------------------------------
    def _accept(self, rec: Any) -> None:
        record = ref_of(rec)
        if rec.value is None:  # a tombstone: nothing to run
            log.info("%s[%d]@%d: a tombstone, skipped", rec.topic, rec.partition, rec.offset)
            self._finish(record)
            return
        try:
            job = decode(rec.value, TrainingJob)
        except CarlsError as exc:
            self._dead_letter(rec, f"not a runnable job: {exc}", exc)
            self._finish(record)
            return
        if job.job_id in self.running:  # ours already (a replay after a rebalance)
            self.running[job.job_id].record = record
            return
        self._consider(_Job(job, record))

    def _consider(self, entry: _Job) -> None:
        """Start ``entry`` if nobody runs it, watch it if someone does, skip it if ended."""
        job = entry.job
        prior = _read(lambda: self.jobs.get(job.job_id), f"job {job.job_id}: reading its state")
        if prior is not None and prior.get("state") in FINAL_STATES:
            self.say(f"job {job.job_id} already {prior['state']}: skipped")
            self.watched.pop(job.job_id, None)
            self._finish(entry.record)
            return
        if _read(lambda: self.jobs.cancel_requested(job.job_id), "reading cancel requests"):
            self._end_unstarted(entry, prior, "cancelled", "cancelled before it started")
            self._count()
            return
        lease = _read(lambda: self.jobs.lease(job.job_id), f"job {job.job_id}: its lease")
        if lease is not None and lease.at > 0 and not lease.stale(self.lease_s):
            self.watched[job.job_id] = entry  # another trainer runs it
            entry.checked_at = time.monotonic()
            return
        attempt = lease.attempt + 1 if lease is not None else 1
        retries = list((prior or {}).get("retries") or [])
        if lease is not None and lease.at > 0:
            retries.append(
                {
                    "attempt": lease.attempt,
                    "trainer": lease.trainer,
                    "reason": f"its trainer stopped (no word from it for {self.lease_s:.0f} s)",
                    "noticed_at": time.time(),
                    "by": self.name,
                }
            )
        taken = _read(
            lambda: self.jobs.take(job.job_id, self.name, attempt, lease),
            f"job {job.job_id}: taking it",
        )
        if taken is None:  # another trainer got there first
            self.watched[job.job_id] = entry
            entry.checked_at = time.monotonic()
            return
        self.watched.pop(job.job_id, None)
        entry.lease = taken
        if attempt > MAX_ATTEMPTS:
            reason = (
                f"the job was running when {attempt - 1} trainers stopped (a crash, an OOM "
                "kill?): suspected poison pill, not run again"
            )
            self._end_unstarted(entry, {**(prior or {}), "retries": retries}, "failed", reason)
            self._count()
            return
        try:  # checked at submit time; its files may have gone since: the job fails
            spec = load_spec(job.spec)
        except CarlsError as exc:
            self._end_unstarted(
                entry,
                {**(prior or {}), "retries": retries},
                "failed",
                f"{type(exc).__name__}: {exc}",
            )
            self._count()
            return
        self.running[job.job_id] = entry
        entry.thread = threading.Thread(
            target=self._run,
            args=(entry, spec, attempt, retries),
            name=f"job-{job.job_id}",
            daemon=True,
        )
        entry.thread.start()

    def _end_unstarted(
        self, entry: _Job, prior: dict[str, Any] | None, state: str, reason: str
    ) -> None:
        job = entry.job
        record = {"job_id": job.job_id, "namespace": job.namespace, **(prior or {})}
        record.update(state=state, reason=reason, finished_at=time.time())
        write_state(self.jobs, job.job_id, record, final=True)
        lease = entry.lease
        if lease is not None:
            _read(lambda: self.jobs.release(job.job_id, lease), "ending a lease")
        self.say(f"job {job.job_id} {state}: {reason}")
        self.watched.pop(job.job_id, None)
        self._finish(entry.record)

    def _run(self, entry: _Job, spec: Any, attempt: int, retries: list[dict[str, Any]]) -> None:
        job = entry.job
        try:
            if job.group is not None and not self._gather(entry):
                return
            self.say(f"running job {job.job_id} ({spec.paradigm.name} on {spec.namespace})")
            ctx = Context(
                bank=self.bank,
                publisher=self._publisher,
                store=self.store,
                jobs=self.jobs,
                producer=f"carls-trainer@{self.name}",
                log_dir=self.log_dir,
            )
            run = JobRun(
                job.job_id,
                spec,
                ctx,
                say=self.say,
                attempt=attempt,
                retries=retries,
                trainer=self.name,
                group=job.group,
                stop=entry.stop,
                after_first_step=(
                    (lambda: self._in_step(entry)) if job.group is not None else None
                ),
            )
            try:
                state = run.run()
                if state["state"] == "succeeded":
                    acc = state["test_accuracy"]
                    self.say(f"job {job.job_id} succeeded: test accuracy {acc:.4f}")
                else:
                    self.say(f"job {job.job_id} {state['state']}: {state.get('reason')}")
            except Exception as exc:  # marked failed by JobRun (once the bank took it)
                self.say(f"job {job.job_id} failed: {type(exc).__name__}: {exc}")
        finally:
            self._count()

    def _count(self) -> None:
        """One more job this trainer ended (ran, failed, cancelled)."""
        with self._lock:
            self.ran += 1

    def _gather(self, entry: _Job) -> bool:
        """Wait until every member of the entry's group has a trainer; False (the job
        marked failed or cancelled) when they do not within ``GROUP_WAIT_S``."""
        job = entry.job
        group = job.group
        assert group is not None
        _read(lambda: self.jobs.join_group(group, job.job_id, self.name), "joining a group")
        deadline = time.monotonic() + GROUP_WAIT_S
        said = False
        while True:
            members = _read(lambda: self.jobs.group_members(group), "reading a group")
            if len(members) >= job.group_size:
                return True
            if not said:
                self.say(
                    f"job {job.job_id}: waiting for the other {job.group_size - len(members)} "
                    f"member(s) of group {job.group} to find a trainer"
                )
                said = True
            if entry.stop.is_set() or time.monotonic() > deadline:
                reason = entry.stop.reason or (
                    f"group {job.group}: only {len(members)} of {job.group_size} members "
                    f"found a trainer within {GROUP_WAIT_S:.0f} s"
                )
                state = "cancelled" if entry.stop.reason == StopSignal.CANCELLED else "failed"
                self._end_unstarted(
                    entry, _read(lambda: self.jobs.get(job.job_id), "job"), state, reason
                )
                return False
            entry.stop.wait(1.0)

    def _in_step(self, entry: _Job) -> None:
        """After its first step, wait until every member of the entry's group has taken
        its own (model built, first step traced), so peers train in step: a member still
        setting up would otherwise leave the others nothing fresh to learn from. Goes on
        alone, saying so, after ``GROUP_WAIT_S`` or when the job is stopped."""
        job = entry.job
        assert job.group is not None
        ready = READY + job.group
        _read(lambda: self.jobs.join_group(ready, job.job_id, self.name), "joining a group")
        deadline = time.monotonic() + GROUP_WAIT_S
        while not entry.stop.is_set():
            members = _read(lambda: self.jobs.group_members(ready), "reading a group")
            if len(members) >= job.group_size:
                return
            if time.monotonic() > deadline:
                self.say(
                    f"job {job.job_id}: only {len(members)} of {job.group_size} members of "
                    f"group {job.group} started training within {GROUP_WAIT_S:.0f} s; "
                    "going on"
                )
                return
            entry.stop.wait(0.2)

    # ------------------------------------------------------------------------------------
    def _tend(self) -> None:
        """Renew leases and pass on cancel requests (every ``renew_every_s``), collect jobs
        that ended, and look again at watched jobs."""
        now = time.monotonic()
        for job_id, entry in list(self.running.items()):
            if entry.thread is not None and not entry.thread.is_alive():
                del self.running[job_id]
                if entry.lease is not None and entry.stop.reason != StopSignal.LOST:
                    lease = entry.lease
                    _read(lambda: self.jobs.release(job_id, lease), "ending a lease")  # noqa: B023
                self._finish(entry.record)
                continue
            if now - entry.checked_at < self.renew_every_s or entry.lease is None:
                continue
            entry.checked_at = now
            try:
                renewed = self.jobs.renew(job_id, entry.lease)
            except CarlsError as exc:  # the bank is away: try again next time
                log.warning("job %s: lease not renewed (%s)", job_id, exc)
                continue
            if renewed is None:
                log.error("job %s: lost its lease; another trainer runs it now", job_id)
                entry.stop.set(StopSignal.LOST)
                continue
            entry.lease = renewed
            try:
                if self.jobs.cancel_requested(job_id):
                    entry.stop.set(StopSignal.CANCELLED)
            except CarlsError:
                pass
        for entry in list(self.watched.values()):
            if now - entry.checked_at >= 2.0:
                entry.checked_at = now
                self._consider(entry)


def serve(
    conn: KafkaConnection,
    topics: Topics,
    bank: KnowledgeBank,
    jobs: JobStore,
    store: ArtifactStore | Path,
    group: str,
    say: Say = lambda _: None,
    once: bool = False,
    idle_timeout_s: float = 5.0,
    slots: int = 1,
    lease_s: float = LEASE_S,
    log_dir: Path | None = None,
) -> int:
    """Run jobs until stopped (or, with ``once``, until the topic is drained and the jobs
    taken have ended); return how many ran."""
    service = TrainerService(
        conn,
        topics,
        bank,
        jobs,
        store,
        group,
        slots=slots,
        say=say,
        lease_s=lease_s,
        log_dir=log_dir,
    )
    return service.serve(once=once, idle_timeout_s=idle_timeout_s)
