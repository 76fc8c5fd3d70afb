"""What workers learned about checkpoints that cannot serve, kept in the bank so that every
worker, and a worker after a restart, knows it.

A checkpoint is judged by its artifact's sha256 within one generation of its namespace (a
namespace dropped and created again starts with a clean record: the same file may fit the
new namespace's dimensions). Records are JSON in the keyspace's ``kv`` table, one
partition per namespace.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Protocol

from carls.bank.kv import KvTable

_PREFIX = "__broken_checkpoints__/"


class CheckpointVerdicts(Protocol):
    def mark_broken(
        self, namespace: str, generation: float, sha256: str, step: int, reason: str
    ) -> None:
        """Record that the checkpoint with ``sha256`` cannot serve ``namespace`` (created
        at ``generation``), and why."""
        ...

    def broken(self, namespace: str, generation: float) -> dict[str, str]:
        """The sha256 of every checkpoint recorded broken for this generation of
        ``namespace``, with its reason."""
        ...

    def close(self) -> None: ...


def _record(generation: float, step: int, reason: str) -> str:
    return json.dumps({"generation": generation, "step": step, "reason": reason, "at": time.time()})


def _for_generation(rows: dict[str, str], generation: float) -> dict[str, str]:
    out = {}
    for sha, raw in rows.items():
        rec = json.loads(raw)
        if rec.get("generation") == generation:
            out[sha] = str(rec.get("reason", ""))
    return out


class MemoryVerdicts:
    def __init__(self) -> None:
        self._rows: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    def mark_broken(
        self, namespace: str, generation: float, sha256: str, step: int, reason: str
    ) -> None:
        with self._lock:
            self._rows.setdefault(namespace, {})[sha256] = _record(generation, step, reason)

    def broken(self, namespace: str, generation: float) -> dict[str, str]:
        with self._lock:
            rows = dict(self._rows.get(namespace, {}))
        return _for_generation(rows, generation)

    def close(self) -> None:
        return None


class CassandraVerdicts(KvTable):
    """Broken-checkpoint records in the ``kv`` table, partition ``__broken_checkpoints__/<ns>``."""

    def mark_broken(
        self, namespace: str, generation: float, sha256: str, step: int, reason: str
    ) -> None:
        record = _record(generation, step, reason)
        self.put_records("record a broken checkpoint", _PREFIX + namespace, {sha256: record})

    def broken(self, namespace: str, generation: float) -> dict[str, str]:
        rows = self.records("read broken checkpoints", _PREFIX + namespace)
        return _for_generation(rows, generation)


# Records that crashed workers -------------------------------------------------------------
_CRASHES = "__crashes__/"


class RecordCrashes(Protocol):
    """How often each Kafka record (``topic/partition/offset``) was being handled when a
    worker of consumer ``group`` crashed, so that a record that crashes every worker is
    set aside (dead-lettered) instead of crashing them forever."""

    def crashed(self, group: str, records: list[str], reason: str) -> None:
        """Count one more crash for each of ``records``."""
        ...

    def crashes(self, group: str) -> dict[str, int]:
        """Every record of ``group`` with its crash count."""
        ...

    def close(self) -> None: ...


def record_key(topic: str, partition: int, offset: int) -> str:
    return f"{topic}/{partition}/{offset}"


class MemoryCrashes:
    def __init__(self) -> None:
        self._rows: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()

    def crashed(self, group: str, records: list[str], reason: str) -> None:
        with self._lock:
            rows = self._rows.setdefault(group, {})
            for key in records:
                rows[key] = rows.get(key, 0) + 1

    def crashes(self, group: str) -> dict[str, int]:
        with self._lock:
            return dict(self._rows.get(group, {}))

    def close(self) -> None:
        return None


class CassandraCrashes(KvTable):
    """Crash counts in the ``kv`` table, partition ``__crashes__/<group>`` (a record's
    count is read, then written one higher: workers crashing on it at the same moment
    may count once for two, which only delays setting it aside by a crash)."""

    def crashed(self, group: str, records: list[str], reason: str) -> None:
        known = self.crashes(group)
        self.put_records(
            "record a crash",
            _CRASHES + group,
            {k: json.dumps({"count": known.get(k, 0) + 1, "reason": reason}) for k in records},
        )

    def crashes(self, group: str) -> dict[str, int]:
        rows = self.records("read crash counts", _CRASHES + group)
        return {k: int(json.loads(v).get("count", 0)) for k, v in rows.items()}
