"""Where training jobs keep their state (queued, running, succeeded, failed, cancelled),
metrics and history, so ``carls job status`` can answer from any machine; and what lets
several trainers share the jobs: leases, cancel requests and job groups.

* A **lease** says which trainer runs a job, in which attempt, and when it last said so.
  Taking one is a compare-and-set (a Cassandra lightweight transaction): of trainers
  racing for a job, exactly one wins. The holder renews it every few seconds; a lease not
  renewed for ``LEASE_S`` means its trainer stopped, and another may take the job over as
  the next attempt.
* A **cancel request** is a flag any process sets; the trainer holding the job stops it.
* A **job group**: the members of a group record who runs them; a member starts training
  once every member has a trainer.

All of it lives in the keyspace's ``kv`` table, one partition per kind of record.
"""

from __future__ import annotations

import json
import time
from typing import Any, NamedTuple, Protocol

from carls.bank.kv import KvTable, MemoryKv

_PARTITION = "__jobs__"
_LEASES = "__job_leases__"
_CANCELS = "__job_cancels__"
_GROUP = "__job_group__/"

LEASE_S = 30.0
"""A lease not renewed for this long is taken for a stopped trainer's."""


class Lease(NamedTuple):
    trainer: str
    attempt: int
    at: float
    raw: str
    """The stored value: what a compare-and-set compares."""

    def stale(self, lease_s: float = LEASE_S) -> bool:
        """Not renewed for ``lease_s``: its trainer stopped."""
        return time.time() - self.at > lease_s


def _lease(raw: str | None) -> Lease | None:
    if raw is None:
        return None
    data = json.loads(raw)
    return Lease(str(data["trainer"]), int(data["attempt"]), float(data["at"]), raw)


def _lease_value(trainer: str, attempt: int, at: float) -> str:
    return json.dumps({"trainer": trainer, "attempt": attempt, "at": at})


class JobStore(Protocol):
    def put(self, job_id: str, state: dict[str, Any]) -> None: ...

    def get(self, job_id: str) -> dict[str, Any] | None: ...

    def all(self) -> list[dict[str, Any]]: ...

    def lease(self, job_id: str) -> Lease | None: ...

    def take(self, job_id: str, trainer: str, attempt: int, expected: Lease | None) -> Lease | None:
        """Hold ``job_id`` for ``trainer`` in ``attempt`` if its lease is still
        ``expected`` (``None``: nobody ever held it); the new lease, or ``None`` when
        another trainer got there first."""
        ...

    def renew(self, job_id: str, lease: Lease) -> Lease | None:
        """Say again that ``lease``'s trainer runs the job; ``None`` when it lost it."""
        ...

    def release(self, job_id: str, lease: Lease) -> None:
        """Mark the lease ended (renewed far into the past), so a replay of the job's
        record never waits for it."""
        ...

    def request_cancel(self, job_id: str) -> None: ...

    def cancel_requested(self, job_id: str) -> bool: ...

    def join_group(self, group: str, job_id: str, trainer: str) -> None: ...

    def group_members(self, group: str) -> dict[str, str]:
        """The members of ``group`` that have a trainer: job id -> trainer."""
        ...

    def close(self) -> None: ...


class _Kv(Protocol):
    def put_records(self, what: str, partition: str, records: dict[str, str]) -> None: ...
    def record(self, what: str, partition: str, key: str) -> str | None: ...
    def records(self, what: str, partition: str) -> dict[str, str]: ...
    def swap(self, what: str, partition: str, key: str, expected: str | None, new: str) -> bool: ...


def _own_lease(kv: _Kv, job_id: str, trainer: str, attempt: int) -> Lease | None:
    """The job's lease if it is ``trainer``'s of ``attempt`` and not released (a write of
    ours that timed out on the client after the bank had applied it), else None."""
    current = _lease(kv.record("read a job's lease", _LEASES, job_id))
    if current is None or current.at <= 0:
        return None
    return current if (current.trainer, current.attempt) == (trainer, attempt) else None


class _Jobs:
    """The job records over a key-value table (``self``: a ``_Kv``)."""

    def put(self: _Kv, job_id: str, state: dict[str, Any]) -> None:
        self.put_records("save job", _PARTITION, {job_id: json.dumps(state)})

    def get(self: _Kv, job_id: str) -> dict[str, Any] | None:
        raw = self.record("read job", _PARTITION, job_id)
        return None if raw is None else dict(json.loads(raw))

    def all(self: _Kv) -> list[dict[str, Any]]:
        return [dict(json.loads(v)) for v in self.records("list jobs", _PARTITION).values()]

    def lease(self: _Kv, job_id: str) -> Lease | None:
        return _lease(self.record("read a job's lease", _LEASES, job_id))

    def take(
        self: _Kv, job_id: str, trainer: str, attempt: int, expected: Lease | None
    ) -> Lease | None:
        new = _lease_value(trainer, attempt, time.time())
        old = None if expected is None else expected.raw
        if self.swap("take a job", _LEASES, job_id, old, new):
            return _lease(new)
        return _own_lease(self, job_id, trainer, attempt)

    def renew(self: _Kv, job_id: str, lease: Lease) -> Lease | None:
        """The lease renewed; None when another trainer holds it now. A renewal whose
        answer was lost (the client timed out, the bank had applied it) left the lease
        ours with a newer time: that lease is kept, not given up."""
        new = _lease_value(lease.trainer, lease.attempt, time.time())
        if self.swap("renew a job's lease", _LEASES, job_id, lease.raw, new):
            return _lease(new)
        return _own_lease(self, job_id, lease.trainer, lease.attempt)

    def release(self: _Kv, job_id: str, lease: Lease) -> None:
        ended = _lease_value(lease.trainer, lease.attempt, 0.0)
        self.swap("end a job's lease", _LEASES, job_id, lease.raw, ended)

    def request_cancel(self: _Kv, job_id: str) -> None:
        self.put_records("cancel a job", _CANCELS, {job_id: json.dumps({"at": time.time()})})

    def cancel_requested(self: _Kv, job_id: str) -> bool:
        return self.record("read a job's cancel request", _CANCELS, job_id) is not None

    def join_group(self: _Kv, group: str, job_id: str, trainer: str) -> None:
        self.put_records("join a job group", _GROUP + group, {job_id: trainer})

    def group_members(self: _Kv, group: str) -> dict[str, str]:
        return self.records("read a job group", _GROUP + group)


class MemoryJobStore(_Jobs, MemoryKv):
    """Job records in this process's memory (for tests and in-process runs)."""


class CassandraJobStore(_Jobs, KvTable):
    """Job records in the keyspace's ``kv`` table."""
