"""The keyspace's ``kv`` table: small records (JSON text) by partition and key.

The job store, the workers' checkpoint verdicts and their crash counts keep their records
here; each is a ``KvTable`` with its own partitions."""

from __future__ import annotations

import threading

from cassandra.cluster import Session

from carls.bank.session import Store, backend, prepare


class KvTable(Store):
    def prepare(self, session: Session) -> None:
        self._put = prepare(session, "INSERT INTO kv (namespace, key, value) VALUES (?, ?, ?)")
        self._get = prepare(session, "SELECT value FROM kv WHERE namespace = ? AND key = ?")
        self._items = prepare(session, "SELECT key, value FROM kv WHERE namespace = ?")
        self._insert_new = prepare(
            session, "INSERT INTO kv (namespace, key, value) VALUES (?, ?, ?) IF NOT EXISTS"
        )
        self._swap = prepare(
            session, "UPDATE kv SET value = ? WHERE namespace = ? AND key = ? IF value = ?"
        )
        self._delete = prepare(session, "DELETE FROM kv WHERE namespace = ? AND key = ?")

    def put_records(self, what: str, partition: str, records: dict[str, str]) -> None:
        """Write ``records`` (key -> value) into ``partition``; ``what`` names the work in
        the error a backend failure raises."""
        rows = [(partition, k, v) for k, v in records.items()]
        backend(what, lambda: [self.session.execute(self._put, r) for r in rows])

    def record(self, what: str, partition: str, key: str) -> str | None:
        row = backend(what, lambda: self.session.execute(self._get, (partition, key)).one())
        return None if row is None else str(row[0])

    def records(self, what: str, partition: str) -> dict[str, str]:
        rows = backend(what, lambda: list(self.session.execute(self._items, (partition,))))
        return {r[0]: r[1] for r in rows}

    def swap(self, what: str, partition: str, key: str, expected: str | None, new: str) -> bool:
        """Set ``key`` to ``new`` only if its value is ``expected`` (``None``: absent), as
        one lightweight transaction (Paxos): of processes racing, exactly one wins."""
        values: tuple[str, ...]
        if expected is None:
            statement, values = self._insert_new, (partition, key, new)
        else:
            statement, values = self._swap, (new, partition, key, expected)
        row = backend(what, lambda: self.session.execute(statement, values).one())
        return bool(row[0])

    def delete_record(self, what: str, partition: str, key: str) -> None:
        backend(what, lambda: self.session.execute(self._delete, (partition, key)))


class MemoryKv:
    """The same records in this process's memory (for tests and in-process runs)."""

    def __init__(self) -> None:
        self._rows: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    def put_records(self, what: str, partition: str, records: dict[str, str]) -> None:
        with self._lock:
            self._rows.setdefault(partition, {}).update(records)

    def record(self, what: str, partition: str, key: str) -> str | None:
        with self._lock:
            return self._rows.get(partition, {}).get(key)

    def records(self, what: str, partition: str) -> dict[str, str]:
        with self._lock:
            return dict(self._rows.get(partition, {}))

    def swap(self, what: str, partition: str, key: str, expected: str | None, new: str) -> bool:
        with self._lock:
            rows = self._rows.setdefault(partition, {})
            if rows.get(key) != expected:
                return False
            rows[key] = new
            return True

    def close(self) -> None:
        return None
