"""Where checkpoint artifacts and data files live so that every machine can read them.

A file is named by a URI:

* ``bank://<scope>/<name>``: in the knowledge bank's blob store (``bank.blobs``), chunked
  and sha256-verified, so a cluster needs nothing beyond Kafka and Cassandra. Checkpoints
  go to scope ``checkpoints/<namespace>``, registered data files to ``datasets``.
* ``<scheme>://...`` of an object store (``s3://``, ``gs://``, ``az://``, …) through fsspec,
  with whatever backend the user installs (``s3fs``, ``gcsfs``, …).
* ``file://`` or a plain path: one machine only; a worker reads only inside its
  checkpoint root.

``ArtifactStore`` is the one object trainers and workers share: trainers ``publish`` a
checkpoint they saved under ``root`` to the configured destination (``bank``, ``file``,
or an object-store prefix) and keep the newest ``keep`` of each namespace there;
workers ``fetch`` a manifest's URI as a verified local file. ``download`` copies any
remote URI into a file, checking size and sha256 as it streams.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO
from urllib.parse import unquote, urlparse

from carls.bank.blobs import CHUNK_BYTES, MAX_BYTES, BlobInfo, BlobStore, check_key, file_digest
from carls.bank.errors import (
    BankUnavailableError,
    BlobCorruptError,
    BlobMissingError,
    BlobTooLargeError,
    UnreadableUriError,
)
from carls.schemas.artifacts import artifact_relpath
from carls.schemas.errors import InvalidValueError, SchemaError

log = logging.getLogger(__name__)

BANK = "bank"
FILE = "file"
DESTINATIONS = "'bank', 'file' or an object-store URI prefix such as s3://bucket/carls"


def bank_uri(scope: str, name: str) -> str:
    check_key(scope, name)
    return f"{BANK}://{scope}/{name}"


def parse_bank_uri(uri: str) -> tuple[str, str]:
    """The (scope, name) of a ``bank://`` URI."""
    parsed = urlparse(uri)
    if parsed.scheme != BANK:
        raise UnreadableUriError(f"{uri}: not a bank:// URI")
    full = f"{parsed.netloc}{unquote(parsed.path)}"
    scope, _, name = full.rpartition("/")
    try:
        check_key(scope, name)
    except InvalidValueError as exc:
        raise UnreadableUriError(f"{uri}: not a bank://<scope>/<name> URI ({exc})") from exc
    return scope, name


DATASETS = "datasets"
"""The blob scope of registered data files."""
DATA_SUFFIXES = (".npz", ".csv", ".json")


def register_data(
    blobs: BlobStore, path: Path, name: str | None = None, *, max_bytes: int = MAX_BYTES
) -> tuple[str, BlobInfo]:
    """Keep the data file ``path`` in the bank (scope ``datasets``) and return its
    ``bank://`` URI and its entry. Without a ``name`` it is ``<stem>-<sha256[:12]><suffix>``:
    the same bytes always get the same name (registering again writes nothing), and other
    bytes never take an existing one's place."""
    path = Path(path)
    if not path.is_file():
        raise BlobMissingError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix not in DATA_SUFFIXES:
        raise InvalidValueError(
            f"{path.name}: expected a {', '.join(DATA_SUFFIXES)} file", field="path"
        )
    if name is None:
        sha, _ = file_digest(path)
        name = f"{path.stem}-{sha[:12]}{suffix}"
    elif PurePosixPath(name).suffix.lower() != suffix:
        raise InvalidValueError(f"{name!r} must end in {suffix}, as {path.name} does", field="name")
    info = blobs.put(DATASETS, name, path, meta={"source": path.name}, max_bytes=max_bytes)
    return bank_uri(DATASETS, name), info


def is_local(uri: str) -> bool:
    """A ``file://`` URI or a plain path."""
    return urlparse(uri).scheme in ("", FILE)


def _filesystem(uri: str) -> tuple[Any, str]:
    """fsspec's filesystem for ``uri`` and the path within it; ``UnreadableUriError`` when
    fsspec has no backend for the scheme (or the backend is not installed)."""
    scheme = urlparse(uri).scheme
    try:
        import fsspec
        from fsspec.core import url_to_fs
    except ImportError as exc:  # pragma: no cover - fsspec is a dependency
        raise UnreadableUriError(f"{uri}: reading {scheme}:// needs fsspec") from exc
    if scheme not in fsspec.available_protocols():
        raise UnreadableUriError(
            f"{uri}: no reader for scheme {scheme!r}; carls reads bank://, file:// and the "
            "object stores fsspec knows (s3://, gs://, az://, … with their package installed)"
        )
    try:
        fs, path = url_to_fs(uri)
        return fs, str(path)
    except ImportError as exc:
        raise UnreadableUriError(f"{uri}: {exc}") from exc
    except (ValueError, TypeError) as exc:
        raise UnreadableUriError(f"{uri}: {exc}") from exc


def check_uri(uri: str) -> None:
    """Raise ``UnreadableUriError`` unless ``uri`` is local, ``bank://`` or an object store
    with its fsspec backend installed."""
    if is_local(uri):
        return
    if urlparse(uri).scheme == BANK:
        parse_bank_uri(uri)
    else:
        _filesystem(uri)


class _Verified:
    """A writer that counts and hashes what passes through, refusing more than ``limit``."""

    def __init__(self, out: BinaryIO, limit: int, what: str) -> None:
        self.out, self.limit, self.what = out, limit, what
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        if self.size > self.limit:
            raise BlobTooLargeError(f"{self.what} is over the limit of {self.limit:,} bytes")
        self.digest.update(data)
        return self.out.write(data)


def download(
    uri: str,
    out: BinaryIO,
    blobs: BlobStore | None,
    *,
    sha256: str | None = None,
    size: int | None = None,
    max_bytes: int = MAX_BYTES,
) -> tuple[str, int]:
    """Copy the file at a remote ``uri`` (``bank://`` or an object store) into ``out`` and
    return its (sha256, size), which must equal ``sha256`` and ``size`` when given.

    Raises ``BlobMissingError`` (nothing there), ``BlobCorruptError`` (other bytes than
    expected), ``BlobTooLargeError`` (over ``max_bytes``), ``UnreadableUriError`` (no reader
    for the scheme) or ``BankUnavailableError`` (the store did not answer: retriable)."""
    if size is not None and size > max_bytes:
        raise BlobTooLargeError(
            f"{uri} is {size:,} bytes, over the limit of {max_bytes:,} bytes "
            "(CARLS_ARTIFACT_MAX_MB)"
        )
    sink = _Verified(out, max_bytes, uri)
    if urlparse(uri).scheme == BANK:
        if blobs is None:
            raise UnreadableUriError(f"{uri}: no bank blob store to read it from")
        scope, name = parse_bank_uri(uri)
        blobs.read(scope, name, sink, sha256=sha256)
    elif is_local(uri):
        raise UnreadableUriError(f"{uri}: a local path, not a remote URI")
    else:
        fs, path = _filesystem(uri)
        try:
            with fs.open(path, "rb") as f:
                for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
                    sink.write(chunk)
        except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            raise BlobMissingError(f"{uri}: cannot read it ({type(exc).__name__})") from exc
        except OSError as exc:
            raise BankUnavailableError(f"{uri}: the object store did not answer: {exc}") from exc
    actual = sink.digest.hexdigest()
    if size is not None and sink.size != size:
        raise BlobCorruptError(f"{uri} has {sink.size:,} bytes, not the expected {size:,}")
    if sha256 is not None and actual != sha256:
        raise BlobCorruptError(f"{uri} does not have the expected sha256 ({sha256[:12]}…)")
    return actual, sink.size


@contextlib.contextmanager
def local_copy(
    uri: str,
    blobs: BlobStore | None,
    *,
    suffix: str = "",
    sha256: str | None = None,
    size: int | None = None,
    max_bytes: int = MAX_BYTES,
    folder: Path | None = None,
) -> Iterator[Path]:
    """A verified temporary local copy of a remote ``uri`` (see ``download``), named as
    the URI's last part and ending in ``suffix`` (Keras needs ``.keras``), deleted on exit."""
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    name = PurePosixPath(unquote(urlparse(uri).path)).name or "file"
    if suffix and not name.endswith(suffix):
        name += suffix
    tmp = Path(tempfile.mkdtemp(prefix=".carls-fetch-", dir=folder))
    path = tmp / name
    try:
        with path.open("wb") as out:
            download(uri, out, blobs, sha256=sha256, size=size, max_bytes=max_bytes)
        yield path
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass(frozen=True)
class ArtifactStore:
    """Where checkpoints go and come from.

    ``root`` is this machine's folder: trainers save artifacts there first; a worker reads
    ``file://`` artifacts only inside it and keeps its temporary copies of remote ones
    there. ``destination`` is where trainers publish: ``bank`` (the default: the bank's
    blob store), ``file`` (``root`` itself; one machine) or an object-store URI prefix.
    ``keep`` checkpoints per namespace stay at the destination, older ones are deleted;
    ``max_bytes`` bounds one artifact."""

    root: Path
    destination: str = BANK
    blobs: BlobStore | None = None
    keep: int = 3
    max_bytes: int = MAX_BYTES

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).resolve())
        if self.keep < 1:
            raise InvalidValueError(f"must be >= 1, got {self.keep}", field="keep")
        if self.max_bytes < 1:
            raise InvalidValueError(f"must be >= 1, got {self.max_bytes}", field="max_bytes")
        if self.destination == BANK:
            if self.blobs is None:
                raise InvalidValueError(
                    "the bank destination needs the bank's blob store", field="destination"
                )
        elif self.destination != FILE:
            if "://" not in self.destination or is_local(self.destination):
                raise InvalidValueError(
                    f"{self.destination!r}: expected {DESTINATIONS}", field="destination"
                )
            _filesystem(self.destination)

    # Trainers --------------------------------------------------------------------------
    def check_size(self, path: Path, namespace: str) -> None:
        """``BlobTooLargeError`` (the local file deleted) when ``path`` is over the limit."""
        size = path.stat().st_size
        if size > self.max_bytes:
            path.unlink(missing_ok=True)
            raise BlobTooLargeError(
                f"checkpoint {path.name} of {namespace} is {size:,} bytes, over the limit of "
                f"{self.max_bytes:,} bytes (raise CARLS_ARTIFACT_MAX_MB)"
            )

    def publish(self, path: Path, namespace: str) -> str:
        """Copy the artifact ``path`` (saved under ``root/<namespace>/``) to the destination,
        delete the namespace's checkpoints beyond the newest ``keep`` there, and return
        the URI a manifest carries. A remote destination's local copy is then removed."""
        self.check_size(path, namespace)
        if self.destination == FILE:  # kept where it is; ``retain_local`` once announced
            return path.as_uri()
        if self.destination == BANK:
            assert self.blobs is not None
            scope = f"checkpoints/{namespace}"
            self.blobs.put(scope, path.name, path, max_bytes=self.max_bytes)
            for gone in self.blobs.collect(scope, self.keep):
                log.info("deleted %s/%s from the bank (keeping %d)", scope, gone, self.keep)
            uri = bank_uri(scope, path.name)
        else:
            uri = self._put_object(path, namespace)
        path.unlink(missing_ok=True)
        return uri

    def publish_copy(self, source: Path, namespace: str, step: int, format: str) -> str:
        """``publish`` a copy of an artifact file made elsewhere (``source`` stays)."""
        try:
            target = self.root / artifact_relpath(namespace, step, format)
        except SchemaError as exc:
            raise InvalidValueError(str(exc)) from exc
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.copying")
        shutil.copyfile(source, partial)
        os.replace(partial, target)
        return self.publish(target, namespace)

    def retain_local(self, announced: Path) -> None:
        """With the ``file`` destination: delete the checkpoints of ``announced``'s folder
        beyond the newest ``keep``, but none newer than ``announced`` (the newest one
        announced: later ones may still wait for Kafka)."""
        if self.destination != FILE:
            return
        artifacts = sorted(p for p in announced.parent.glob("step-*") if p.is_file())
        for old in artifacts[: max(0, len(artifacts) - self.keep)]:
            if old.name < announced.name:
                old.unlink(missing_ok=True)

    def _put_object(self, path: Path, namespace: str) -> str:
        prefix = self.destination.rstrip("/")
        uri = f"{prefix}/{namespace}/{path.name}"
        fs, target = _filesystem(uri)
        folder = str(PurePosixPath(target).parent)
        try:
            fs.makedirs(folder, exist_ok=True)
            fs.put_file(str(path), target)
            listed = [str(p) for p in fs.ls(folder, detail=False)]
            names = sorted(p for p in listed if PurePosixPath(p).name.startswith("step-"))
            for old in names[: max(0, len(names) - self.keep)]:
                fs.rm(old)
        except OSError as exc:
            raise BankUnavailableError(f"{uri}: the object store did not take it: {exc}") from exc
        return uri

    # Workers ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def fetch(self, uri: str, sha256: str, size: int, suffix: str = "") -> Iterator[Path]:
        """A verified local file of the artifact at ``uri``: in place for a local one
        (which must lie inside ``root``), a temporary copy for a remote one."""
        if is_local(uri):
            path = self.local_path(uri)
            if not path.is_file():
                raise BlobMissingError(f"{uri} does not exist")
            if path.stat().st_size > self.max_bytes:
                raise BlobTooLargeError(
                    f"{uri} is over the limit of {self.max_bytes:,} bytes (CARLS_ARTIFACT_MAX_MB)"
                )
            with path.open("rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            if path.stat().st_size != size or digest != sha256:
                raise BlobCorruptError(
                    f"{uri} is not the manifest's file (size {size:,} bytes, sha256 {sha256[:12]}…)"
                )
            yield path
            return
        with local_copy(
            uri,
            self.blobs,
            suffix=suffix,
            sha256=sha256,
            size=size,
            max_bytes=self.max_bytes,
            folder=self.root / ".fetched",
        ) as path:
            yield path

    def local_path(self, uri: str) -> Path:
        """The path a ``file://`` URI or a path names, which must lie inside ``root``
        (symlinks followed); a relative path resolves against ``root``."""
        parsed = urlparse(uri)
        if parsed.scheme == FILE:
            if parsed.netloc not in ("", "localhost"):
                raise UnreadableUriError(
                    f"{uri}: file URIs must name a local absolute path (file:///...), "
                    f"not host {parsed.netloc!r}"
                )
            path = Path(unquote(parsed.path))
            if not path.is_absolute():
                raise UnreadableUriError(f"{uri}: a file URI needs an absolute path")
        elif parsed.scheme:
            raise UnreadableUriError(f"{uri}: not a local path")
        else:
            path = Path(uri)
        resolved = (self.root / path).resolve()  # an absolute path replaces the root
        if not resolved.is_relative_to(self.root):
            raise UnreadableUriError(
                f"{uri}: outside the checkpoint root {self.root}; a worker reads local "
                "checkpoints only there (set CARLS_CHECKPOINT_ROOT, or publish checkpoints "
                "to the bank: CARLS_CHECKPOINT_STORE=bank)"
            )
        return resolved
