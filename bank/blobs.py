"""Files kept in the knowledge bank: checkpoint artifacts and registered datasets.

A blob is a file cut into chunks (1 MiB by default), each its own row, and one index row
under its **scope** (``checkpoints/<namespace>``, ``datasets``) that names its size,
sha256 and chunk count. A cluster then needs nothing but Kafka and Cassandra for a
checkpoint a trainer wrote on one machine to serve a worker on another.

* **Put** hashes the file, marks the upload pending, writes the chunks, then the index
  row, and only then forgets the pending mark: a reader never sees half a blob, and an
  upload that died (its pending mark older than ``PENDING_STALE_S``) is collected by the
  next ``collect``. Chunks are keyed by the content's sha256 as well as the name, so a
  name put again with other content never mixes the two.
* **Read** streams the chunks in order into a file, checking that each exists and has the
  length the index implies, and checks the whole blob's size and sha256 (and, when the
  caller knows it, the sha256 it expects): a missing, truncated or corrupt chunk raises
  ``BlobCorruptError``; a name that is not there, ``BlobMissingError``.
* **Retention**: ``collect(scope, keep)`` deletes all but the ``keep`` newest blobs of a
  scope (by name: checkpoint names sort by step) and stale pending uploads.

``MemoryBlobs`` and ``CassandraBlobs`` differ only in where the rows live; both are held
to one contract suite (``tests/contract/test_blobs.py``).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from cassandra.cluster import Session

from carls.bank.errors import BlobCorruptError, BlobMissingError, BlobTooLargeError
from carls.bank.session import Call, Store, backend, prepare
from carls.schemas.errors import InvalidValueError

CHUNK_BYTES = 1 << 20
"""Bytes per chunk row (Cassandra is comfortable with cells of about a megabyte)."""
MAX_BYTES = 1 << 30
"""The default size limit of one blob."""
PENDING_STALE_S = 3600.0
"""An upload still pending after this long is taken for dead and collected."""
_PENDING = ".pending/"
_IN_FLIGHT = 8


class BlobInfo(NamedTuple):
    scope: str
    name: str
    sha256: str
    size: int
    chunks: int
    chunk_bytes: int
    created_at: float
    meta: dict[str, Any]


class Sink(Protocol):
    """Where ``read`` writes a blob's bytes (a binary file, or anything with ``write``)."""

    def write(self, data: bytes, /) -> object: ...


class BlobStore(Protocol):
    """Files by (scope, name); see the module's docstring."""

    def put(
        self,
        scope: str,
        name: str,
        source: Path,
        *,
        meta: dict[str, Any] | None = None,
        max_bytes: int = MAX_BYTES,
    ) -> BlobInfo: ...

    def info(self, scope: str, name: str) -> BlobInfo | None: ...

    def entries(self, scope: str) -> list[BlobInfo]:
        """The scope's complete blobs, by name."""
        ...

    def read(self, scope: str, name: str, out: Sink, *, sha256: str | None = None) -> BlobInfo:
        """Write the blob's bytes to ``out``, verified (see the module's docstring)."""
        ...

    def delete(self, scope: str, name: str) -> bool: ...

    def collect(self, scope: str, keep: int | None = None) -> list[str]:
        """Delete stale pending uploads and, with ``keep``, all but the newest ``keep``
        blobs; return the names deleted."""
        ...

    def close(self) -> None: ...


def check_key(scope: str, name: str) -> None:
    """Scopes are ``/``-separated words; names one word (no ``/``), not starting with ``.``."""
    if not isinstance(scope, str) or not scope or scope.startswith("/") or scope.endswith("/"):
        raise InvalidValueError(f"a blob scope like 'datasets', got {scope!r}", field="scope")
    if any(not part or part in (".", "..") for part in scope.split("/")):
        raise InvalidValueError(f"a blob scope like 'datasets', got {scope!r}", field="scope")
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise InvalidValueError(
            f"a file name without '/' that does not start with '.', got {name!r}", field="name"
        )


def file_digest(path: Path) -> tuple[str, int]:
    """The sha256 and size of a file, read in chunks."""
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class _Rows(Protocol):
    """Where a blob store keeps its rows."""

    def put_index(self, info: BlobInfo, pending: bool) -> None: ...
    def get_index(self, scope: str, name: str) -> BlobInfo | None: ...
    def scan_index(self, scope: str) -> list[tuple[BlobInfo, bool]]: ...
    def delete_index(self, scope: str, name: str) -> None: ...
    def put_chunks(self, info: BlobInfo, chunks: Iterator[tuple[int, bytes]]) -> None: ...
    def get_chunks(self, info: BlobInfo) -> Iterator[bytes | None]: ...
    def delete_chunks(self, info: BlobInfo) -> None: ...


class _Blobs:
    """The logic both stores share, over their rows (``self._rows``)."""

    _rows: _Rows

    def __init__(self, chunk_bytes: int = CHUNK_BYTES) -> None:
        if chunk_bytes < 1:
            raise InvalidValueError(f"must be >= 1, got {chunk_bytes}", field="chunk_bytes")
        self.chunk_bytes = chunk_bytes

    def put(
        self,
        scope: str,
        name: str,
        source: Path,
        *,
        meta: dict[str, Any] | None = None,
        max_bytes: int = MAX_BYTES,
    ) -> BlobInfo:
        check_key(scope, name)
        path = Path(source)
        sha, size = file_digest(path)
        if size > max_bytes:
            raise BlobTooLargeError(
                f"{path} is {size:,} bytes, over the limit of {max_bytes:,} bytes "
                "(raise CARLS_ARTIFACT_MAX_MB to keep larger files)"
            )
        chunks = max(1, -(-size // self.chunk_bytes))
        at = round(time.time(), 3)  # Cassandra keeps milliseconds
        info = BlobInfo(scope, name, sha, size, chunks, self.chunk_bytes, at, meta or {})
        old = self._rows.get_index(scope, name)
        if old is not None and old.sha256 == sha:
            return old  # already there, byte for byte
        marker = info._replace(name=f"{_PENDING}{name}@{sha}")
        self._rows.put_index(marker, pending=True)

        def read_chunks() -> Iterator[tuple[int, bytes]]:
            with path.open("rb") as f:
                for i in range(chunks):
                    yield i, f.read(self.chunk_bytes)

        self._rows.put_chunks(info, read_chunks())
        self._rows.put_index(info, pending=False)
        self._rows.delete_index(scope, marker.name)
        if old is not None:
            self._rows.delete_chunks(old)
        return info

    def info(self, scope: str, name: str) -> BlobInfo | None:
        check_key(scope, name)
        return self._rows.get_index(scope, name)

    def entries(self, scope: str) -> list[BlobInfo]:
        check_key(scope, "x")
        rows = self._rows.scan_index(scope)
        return sorted((i for i, pending in rows if not pending), key=lambda i: i.name)

    def read(self, scope: str, name: str, out: Sink, *, sha256: str | None = None) -> BlobInfo:
        info = self.info(scope, name)
        what = f"{scope}/{name}"
        if info is None:
            raise BlobMissingError(f"{what} is not in the bank")
        if sha256 is not None and sha256 != info.sha256:
            raise BlobCorruptError(
                f"{what} in the bank has sha256 {info.sha256[:12]}…, not the expected "
                f"{sha256[:12]}… (replaced since?)"
            )
        digest, size = hashlib.sha256(), 0
        for i, data in enumerate(self._rows.get_chunks(info)):
            if data is None:
                raise BlobCorruptError(f"{what}: chunk {i} of {info.chunks} is missing")
            want = min(info.chunk_bytes, info.size - i * info.chunk_bytes)
            if len(data) != max(want, 0):
                raise BlobCorruptError(
                    f"{what}: chunk {i} of {info.chunks} has {len(data)} bytes, not {want} "
                    "(truncated or corrupt)"
                )
            digest.update(data)
            size += len(data)
            out.write(data)
        if size != info.size or digest.hexdigest() != info.sha256:
            raise BlobCorruptError(
                f"{what}: its {size:,} bytes do not have the sha256 the index records "
                f"({info.sha256[:12]}…): corrupt"
            )
        return info

    def delete(self, scope: str, name: str) -> bool:
        info = self.info(scope, name)
        if info is None:
            return False
        self._rows.delete_index(scope, name)  # first: a reader then finds nothing, not half
        self._rows.delete_chunks(info)
        return True

    def collect(self, scope: str, keep: int | None = None) -> list[str]:
        check_key(scope, "x")
        if keep is not None and keep < 1:
            raise InvalidValueError(f"must be >= 1, got {keep}", field="keep")
        rows = self._rows.scan_index(scope)
        deleted = []
        now = time.time()
        for info, pending in rows:
            if pending and now - info.created_at > PENDING_STALE_S:
                real = info._replace(name=info.name[len(_PENDING) :].rsplit("@", 1)[0])
                self._rows.delete_chunks(real)
                self._rows.delete_index(scope, info.name)
                deleted.append(info.name)
        if keep is not None:
            complete = sorted(i.name for i, pending in rows if not pending)
            for name in complete[: max(0, len(complete) - keep)]:
                if self.delete(scope, name):
                    deleted.append(name)
        return deleted

    def delete_scope(self, scope: str) -> int:
        """Delete every blob of ``scope`` (pending uploads included); return how many."""
        check_key(scope, "x")
        count = 0
        for info, pending in self._rows.scan_index(scope):
            if pending:
                real = info._replace(name=info.name[len(_PENDING) :].rsplit("@", 1)[0])
                self._rows.delete_chunks(real)
                self._rows.delete_index(scope, info.name)
            elif self.delete(scope, info.name):
                count += 1
        return count


class _MemoryRows:
    def __init__(self) -> None:
        self.index: dict[tuple[str, str], tuple[BlobInfo, bool]] = {}
        self.chunks: dict[tuple[str, str, str, int], bytes] = {}
        self.lock = threading.Lock()

    def put_index(self, info: BlobInfo, pending: bool) -> None:
        with self.lock:
            self.index[(info.scope, info.name)] = (info, pending)

    def get_index(self, scope: str, name: str) -> BlobInfo | None:
        with self.lock:
            row = self.index.get((scope, name))
        return row[0] if row is not None and not row[1] else None

    def scan_index(self, scope: str) -> list[tuple[BlobInfo, bool]]:
        with self.lock:
            return [row for (s, _), row in self.index.items() if s == scope]

    def delete_index(self, scope: str, name: str) -> None:
        with self.lock:
            self.index.pop((scope, name), None)

    def put_chunks(self, info: BlobInfo, chunks: Iterator[tuple[int, bytes]]) -> None:
        for i, data in chunks:
            with self.lock:
                self.chunks[(info.scope, info.name, info.sha256, i)] = bytes(data)

    def get_chunks(self, info: BlobInfo) -> Iterator[bytes | None]:
        for i in range(info.chunks):
            with self.lock:
                yield self.chunks.get((info.scope, info.name, info.sha256, i))

    def delete_chunks(self, info: BlobInfo) -> None:
        with self.lock:
            for i in range(info.chunks):
                self.chunks.pop((info.scope, info.name, info.sha256, i), None)


class MemoryBlobs(_Blobs):
    """Blobs in this process's memory (for unit tests)."""

    def __init__(self, chunk_bytes: int = CHUNK_BYTES) -> None:
        super().__init__(chunk_bytes)
        self._rows = self.rows = _MemoryRows()

    def close(self) -> None:
        return None


class _CassandraRows:
    def __init__(self, session: Session, in_flight: int) -> None:
        self.session = session
        self.in_flight = in_flight
        self._put_index = prepare(
            session,
            "INSERT INTO blob_index (scope, name, sha256, size, chunks, chunk_bytes, "
            "created_at, meta, pending) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        columns = "scope, name, sha256, size, chunks, chunk_bytes, created_at, meta, pending"
        self._get_index = prepare(
            session, f"SELECT {columns} FROM blob_index WHERE scope = ? AND name = ?"
        )
        self._scan_index = prepare(session, f"SELECT {columns} FROM blob_index WHERE scope = ?")
        self._delete_index = prepare(session, "DELETE FROM blob_index WHERE scope = ? AND name = ?")
        key = "scope = ? AND name = ? AND sha256 = ? AND chunk = ?"
        self._put_chunk = prepare(
            session,
            "INSERT INTO blob_chunks (scope, name, sha256, chunk, data) VALUES (?, ?, ?, ?, ?)",
        )
        self._get_chunk = prepare(session, f"SELECT data FROM blob_chunks WHERE {key}")
        self._delete_chunk = prepare(session, f"DELETE FROM blob_chunks WHERE {key}")

    @staticmethod
    def _info(row: Any) -> tuple[BlobInfo, bool]:
        created = row[6]
        at = created.replace(tzinfo=UTC).timestamp() if created is not None else 0.0
        meta = json.loads(row[7]) if row[7] else {}
        info = BlobInfo(row[0], row[1], row[2], int(row[3]), int(row[4]), int(row[5]), at, meta)
        return info, bool(row[8])

    def put_index(self, info: BlobInfo, pending: bool) -> None:
        values = (
            info.scope,
            info.name,
            info.sha256,
            info.size,
            info.chunks,
            info.chunk_bytes,
            datetime.fromtimestamp(info.created_at, UTC),
            json.dumps(info.meta),
            pending,
        )
        backend("write a blob's index", lambda: self.session.execute(self._put_index, values))

    def get_index(self, scope: str, name: str) -> BlobInfo | None:
        row = backend(
            "read a blob's index",
            lambda: self.session.execute(self._get_index, (scope, name)).one(),
        )
        if row is None:
            return None
        info, pending = self._info(row)
        return None if pending else info

    def scan_index(self, scope: str) -> list[tuple[BlobInfo, bool]]:
        rows = backend("list blobs", lambda: list(self.session.execute(self._scan_index, (scope,))))
        return [self._info(r) for r in rows]

    def delete_index(self, scope: str, name: str) -> None:
        backend(
            "delete a blob's index",
            lambda: self.session.execute(self._delete_index, (scope, name)),
        )

    def _windowed(self, what: str, calls: Iterator[Callable[[], Call]]) -> Iterator[Any]:
        """Run the calls with at most ``in_flight`` outstanding; yield results in order."""
        window: list[Call] = []

        def take() -> Any:
            return window.pop(0).result(what)

        for call in calls:
            window.append(backend(what, call))
            if len(window) >= self.in_flight:
                yield take()
        while window:
            yield take()

    def put_chunks(self, info: BlobInfo, chunks: Iterator[tuple[int, bytes]]) -> None:
        key = (info.scope, info.name, info.sha256)

        calls = (
            partial(Call, self.session, self._put_chunk, (*key, i, data)) for i, data in chunks
        )
        for _ in self._windowed("write a blob's chunks", calls):
            pass

    def get_chunks(self, info: BlobInfo) -> Iterator[bytes | None]:
        key = (info.scope, info.name, info.sha256)
        calls = (
            partial(Call, self.session, self._get_chunk, (*key, i)) for i in range(info.chunks)
        )
        for rows in self._windowed("read a blob's chunks", calls):
            row = rows.one()
            yield None if row is None else bytes(row[0])

    def delete_chunks(self, info: BlobInfo) -> None:
        key = (info.scope, info.name, info.sha256)
        calls = (
            partial(Call, self.session, self._delete_chunk, (*key, i)) for i in range(info.chunks)
        )
        for _ in self._windowed("delete a blob's chunks", calls):
            pass


class CassandraBlobs(_Blobs, Store):
    """Blobs in the keyspace's ``blob_index`` and ``blob_chunks`` tables."""

    def __init__(self, connection: Any, chunk_bytes: int = CHUNK_BYTES) -> None:
        _Blobs.__init__(self, chunk_bytes)
        Store.__init__(self, connection)

    def prepare(self, session: Session) -> None:
        self._rows = _CassandraRows(session, _IN_FLIGHT)
