"""The keyspace's ``kv`` table: small records (JSON text) by partition and key.

The job store, the workers' checkpoint verdicts and their crash counts keep their records
here; each is a ``KvTable`` with its own partitions."""

from __future__ import annotations

from cassandra.cluster import Session

from carls.bank.session import Store, backend


class KvTable(Store):
    def prepare(self, session: Session) -> None:
        self._put = session.prepare("INSERT INTO kv (namespace, key, value) VALUES (?, ?, ?)")
        self._get = session.prepare("SELECT value FROM kv WHERE namespace = ? AND key = ?")
        self._items = session.prepare("SELECT key, value FROM kv WHERE namespace = ?")

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
