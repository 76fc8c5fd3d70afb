"""Where training jobs keep their state (queued, running, succeeded, failed), metrics and
history, so ``carls job status`` can answer from any machine."""

from __future__ import annotations

import json
import threading
from typing import Any, Protocol

from carls.bank.kv import KvTable

_PARTITION = "__jobs__"


class JobStore(Protocol):
    def put(self, job_id: str, state: dict[str, Any]) -> None: ...

    def get(self, job_id: str) -> dict[str, Any] | None: ...

    def all(self) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...


class MemoryJobStore:
    def __init__(self) -> None:
        self._jobs: dict[str, str] = {}
        self._lock = threading.Lock()

    def put(self, job_id: str, state: dict[str, Any]) -> None:
        with self._lock:
            self._jobs[job_id] = json.dumps(state)

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            raw = self._jobs.get(job_id)
        return None if raw is None else dict(json.loads(raw))

    def all(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(json.loads(v)) for v in self._jobs.values()]

    def close(self) -> None:
        return None


class CassandraJobStore(KvTable):
    """Job states as JSON in the keyspace's ``kv`` table (one partition for all jobs)."""

    def put(self, job_id: str, state: dict[str, Any]) -> None:
        self.put_records("save job", _PARTITION, {job_id: json.dumps(state)})

    def get(self, job_id: str) -> dict[str, Any] | None:
        raw = self.record("read job", _PARTITION, job_id)
        return None if raw is None else dict(json.loads(raw))

    def all(self) -> list[dict[str, Any]]:
        return [dict(json.loads(v)) for v in self.records("list jobs", _PARTITION).values()]
