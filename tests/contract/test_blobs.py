"""The bank's blob store, held to one contract in memory and in Cassandra: files come back
byte for byte, and a missing, truncated or corrupt chunk never passes as a file."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from bank_contract_support import Harness, unique_name

from carls.bank import blobs as blobs_module
from carls.bank.blobs import BlobInfo, CassandraBlobs, MemoryBlobs, _Blobs
from carls.bank.errors import BlobCorruptError, BlobMissingError, BlobTooLargeError
from carls.schemas.errors import InvalidValueError

CHUNK = 1000


@dataclass
class Rig:
    store: _Blobs
    other: _Blobs
    """A second handle on the same rows (another process, for Cassandra)."""
    set_chunk: Callable[[BlobInfo, int, bytes], None]
    drop_chunk: Callable[[BlobInfo, int], None]


@pytest.fixture
def rig(harness: Harness) -> Iterator[Rig]:
    if harness.config is None:
        memory = MemoryBlobs(chunk_bytes=CHUNK)

        def set_chunk(info: BlobInfo, i: int, data: bytes) -> None:
            memory.rows.chunks[(info.scope, info.name, info.sha256, i)] = data

        def drop_chunk(info: BlobInfo, i: int) -> None:
            del memory.rows.chunks[(info.scope, info.name, info.sha256, i)]

        yield Rig(memory, memory, set_chunk, drop_chunk)
        return
    store = CassandraBlobs(harness.connection, chunk_bytes=CHUNK).start()
    other = CassandraBlobs(harness.connection, chunk_bytes=CHUNK).start()
    where = "WHERE scope = %s AND name = %s AND sha256 = %s AND chunk = %s"

    def cql_set(info: BlobInfo, i: int, data: bytes) -> None:
        store.session.execute(
            f"UPDATE blob_chunks SET data = %s {where}",
            (data, info.scope, info.name, info.sha256, i),
        )

    def cql_drop(info: BlobInfo, i: int) -> None:
        store.session.execute(
            f"DELETE FROM blob_chunks {where}", (info.scope, info.name, info.sha256, i)
        )

    try:
        yield Rig(store, other, cql_set, cql_drop)
    finally:
        store.close()
        other.close()


def _file(tmp_path: Path, size: int, name: str = "a.bin") -> Path:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path


def _read(store: _Blobs, scope: str, name: str, sha256: str | None = None) -> bytes:
    out = io.BytesIO()
    store.read(scope, name, out, sha256=sha256)
    return out.getvalue()


@pytest.mark.parametrize("size", [0, 1, CHUNK, 3 * CHUNK + 7])
def test_a_file_comes_back_byte_for_byte_from_another_handle(
    rig: Rig, tmp_path: Path, size: int
) -> None:
    scope = f"checkpoints/{unique_name()}"
    source = _file(tmp_path, size)
    info = rig.store.put(scope, "step-1.tar", source, meta={"step": 1})
    assert (info.size, info.chunks) == (size, max(1, -(-size // CHUNK)))
    assert _read(rig.other, scope, "step-1.tar", sha256=info.sha256) == source.read_bytes()
    assert rig.other.info(scope, "step-1.tar") == info
    assert [i.name for i in rig.other.entries(scope)] == ["step-1.tar"]
    assert rig.other.entries(scope)[0].meta == {"step": 1}


def test_putting_new_content_under_a_name_replaces_it_whole(rig: Rig, tmp_path: Path) -> None:
    scope = f"datasets/{unique_name()}"
    one = _file(tmp_path, 5 * CHUNK, "one")
    first = rig.store.put(scope, "d.npz", one)
    again = rig.store.put(scope, "d.npz", one)
    assert again == first  # the same bytes: nothing written
    second = rig.store.put(scope, "d.npz", _file(tmp_path, CHUNK + 1, "two"))
    assert _read(rig.other, scope, "d.npz") == (tmp_path / "two").read_bytes()
    with pytest.raises(BlobCorruptError, match="not the expected"):
        _read(rig.other, scope, "d.npz", sha256=first.sha256)  # a reader of the old one
    assert second.sha256 != first.sha256


def test_a_missing_truncated_or_corrupt_chunk_is_an_error_never_a_file(
    rig: Rig, tmp_path: Path
) -> None:
    scope = f"checkpoints/{unique_name()}"
    source = _file(tmp_path, 3 * CHUNK)
    info = rig.store.put(scope, "m", source)
    rig.set_chunk(info, 1, b"x" * CHUNK)
    with pytest.raises(BlobCorruptError, match="corrupt"):
        _read(rig.other, scope, "m")
    rig.set_chunk(info, 1, b"x" * 10)
    with pytest.raises(BlobCorruptError, match="chunk 1 of 3 has 10 bytes"):
        _read(rig.other, scope, "m")
    rig.set_chunk(info, 1, source.read_bytes()[CHUNK : 2 * CHUNK])
    assert _read(rig.other, scope, "m") == source.read_bytes()
    rig.drop_chunk(info, 2)
    with pytest.raises(BlobCorruptError, match="chunk 2 of 3 is missing"):
        _read(rig.other, scope, "m")
    with pytest.raises(BlobMissingError, match="not in the bank"):
        _read(rig.other, scope, "nothing")


def test_retention_keeps_the_newest_names_and_collects_dead_uploads(
    rig: Rig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scope = f"checkpoints/{unique_name()}"
    for step in (3, 1, 4, 2):
        rig.store.put(scope, f"step-{step:012d}.keras", _file(tmp_path, 2 * CHUNK))
    assert rig.store.collect(scope, keep=2) == [f"step-{s:012d}.keras" for s in (1, 2)]
    assert [i.name for i in rig.other.entries(scope)] == [f"step-{s:012d}.keras" for s in (3, 4)]
    with pytest.raises(BlobMissingError):
        _read(rig.other, scope, f"step-{1:012d}.keras")

    # An upload that died after its first chunk: invisible, then collected once stale.
    class Died(Exception):
        pass

    real = rig.store._rows.put_chunks

    def dies(info: BlobInfo, chunks: Iterator[tuple[int, bytes]]) -> None:
        real(info, iter([next(chunks)]))
        raise Died

    monkeypatch.setattr(rig.store._rows, "put_chunks", dies)
    with pytest.raises(Died):
        rig.store.put(scope, "step-000000000009.keras", _file(tmp_path, 3 * CHUNK))
    monkeypatch.undo()
    assert rig.other.info(scope, "step-000000000009.keras") is None
    assert len(rig.other.entries(scope)) == 2
    assert rig.store.collect(scope) == []  # not stale yet: it may still be uploading
    monkeypatch.setattr(blobs_module, "PENDING_STALE_S", -1.0)
    (dead,) = rig.store.collect(scope)
    assert dead.startswith(".pending/step-000000000009.keras@")
    assert len(rig.other.entries(scope)) == 2


def test_the_size_limit_and_bad_names_are_refused_before_anything_is_written(
    rig: Rig, tmp_path: Path
) -> None:
    scope = f"datasets/{unique_name()}"
    with pytest.raises(BlobTooLargeError, match="over the limit of 1,000 bytes"):
        rig.store.put(scope, "big", _file(tmp_path, 1001), max_bytes=1000)
    assert rig.other.entries(scope) == []
    for bad_scope, bad_name in [("", "a"), ("/x", "a"), ("a/../b", "a"), ("s", "a/b"), ("s", ".p")]:
        with pytest.raises(InvalidValueError):
            rig.store.put(bad_scope, bad_name, _file(tmp_path, 1))


def test_deleting_a_scope_deletes_its_blobs(rig: Rig, tmp_path: Path) -> None:
    scope = f"checkpoints/{unique_name()}"
    for name in ("a", "b"):
        rig.store.put(scope, name, _file(tmp_path, 10))
    assert rig.store.delete_scope(scope) == 2
    assert rig.other.entries(scope) == []
    assert rig.store.delete(scope, "a") is False
