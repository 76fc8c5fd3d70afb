"""Where training jobs keep their state (queued, running, succeeded, failed), metrics and
history, so ``carls job status`` can answer from any machine."""

from __future__ import annotations

import json
import threading
from typing import Any, Protocol

from carls.bank.cassandra import _backend
from carls.bank.session import CassandraConfig, connect

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


class CassandraJobStore:
    """Job states as JSON in the keyspace's ``kv`` table (one partition for all jobs)."""

    def __init__(self, config: CassandraConfig) -> None:
        self._cluster, self._session = connect(config)
        self._put = self._session.prepare("INSERT INTO kv (namespace, key, value) VALUES (?, ?, ?)")
        self._get = self._session.prepare("SELECT value FROM kv WHERE namespace = ? AND key = ?")
        self._all = self._session.prepare("SELECT value FROM kv WHERE namespace = ?")

    def put(self, job_id: str, state: dict[str, Any]) -> None:
        payload = json.dumps(state)
        _backend(
            "save job", lambda: self._session.execute(self._put, (_PARTITION, job_id, payload))
        )

    def get(self, job_id: str) -> dict[str, Any] | None:
        row = _backend(
            "read job", lambda: self._session.execute(self._get, (_PARTITION, job_id)).one()
        )
        return None if row is None else dict(json.loads(row[0]))

    def all(self) -> list[dict[str, Any]]:
        rows = _backend("list jobs", lambda: list(self._session.execute(self._all, (_PARTITION,))))
        return [dict(json.loads(r[0])) for r in rows]

    def close(self) -> None:
        self._cluster.shutdown()
