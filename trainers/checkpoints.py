"""The checkpoint publisher: save the model as the artifact makers load, announce it.

Saves follow ``schemas.artifacts``: a ``SavedModelExporter``'s SavedModel tar (any Keras
model), or a functional Keras model of standard layers as a ``.keras`` file. Either is
written atomically under the local checkpoint root and needs no trainer code to load;
then it is copied to the store's destination (``bank.artifacts.ArtifactStore``: the
bank's blob store by default, where every worker of a cluster reads it) and a
``CheckpointManifest`` naming it goes to the compacted checkpoints topic keyed by
namespace.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from carls.bank.artifacts import FILE, ArtifactStore, is_local
from carls.bank.protocol import NamespaceLookup
from carls.schemas import CheckpointManifest, ExampleBatch
from carls.schemas.artifacts import FORMAT, SAVED_MODEL, artifact_relpath, fingerprint_of_config
from carls.schemas.errors import CarlsError
from carls.streams import metrics
from carls.streams.manifests import latest_manifest
from carls.streams.producer import Publisher
from carls.trainers.export import SavedModelExporter

log = logging.getLogger(__name__)


def as_store(store: ArtifactStore | Path) -> ArtifactStore:
    """A folder stands for a store that keeps checkpoints in it (one machine)."""
    return store if isinstance(store, ArtifactStore) else ArtifactStore(Path(store), FILE)


def publish_artifact(
    model: Any,
    store: ArtifactStore | Path,
    namespace: str,
    step: int,
    *,
    producer: str = "carls",
) -> CheckpointManifest:
    """Save ``model`` (``save_artifact``) and copy it to the store's destination; return
    the manifest (not yet announced) with the URI every worker reads."""
    artifacts = as_store(store)
    manifest = save_artifact(model, artifacts.root, namespace, step, producer=producer)
    local = Path(urlparse(manifest.uri).path)
    uri = artifacts.publish(local, namespace)
    artifacts.retain_local(local)
    return dataclasses.replace(manifest, uri=uri)


def save_artifact(
    model: Any, store: Path, namespace: str, step: int, *, producer: str = "carls"
) -> CheckpointManifest:
    """Save ``model`` (a ``SavedModelExporter``, or a functional Keras model saved as a
    ``.keras`` file) as ``<store>/<namespace>/step-<step:012d>.<tar|keras>`` and return its
    manifest (not yet published). The file appears atomically: it is written under a
    temporary name in the same folder, flushed to disk, then renamed, so a maker never
    sees half an artifact."""
    exporter = model if isinstance(model, SavedModelExporter) else None
    fmt = SAVED_MODEL if exporter is not None else FORMAT
    final = (store / artifact_relpath(namespace, step, fmt)).resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    # Keras insists on the .keras suffix, so the temporary name keeps the suffix.
    tmp = final.with_name(f".{final.stem}.{uuid.uuid4().hex[:8]}.tmp{final.suffix}")
    try:
        if exporter is not None:
            with tmp.open("wb") as out:
                exporter.write(out)
        else:
            model.save(str(tmp))
        digest = hashlib.sha256()
        with tmp.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
            os.fsync(f.fileno())
        size = tmp.stat().st_size
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    log.info("saved %s step %d: %s (%d bytes)", namespace, step, final, size)
    return CheckpointManifest(
        namespace=namespace,
        step=step,
        uri=final.as_uri(),
        format=fmt,
        sha256=digest.hexdigest(),
        size=size,
        created_at=time.time(),
        model_fingerprint=(
            exporter.fingerprint if exporter is not None else fingerprint_of_config(model.to_json())
        ),
        producer=producer,
    )


class CheckpointPublisher:
    """Saves and publishes a checkpoint every ``every_steps`` steps or ``every_s`` seconds,
    whichever comes first, counted from ``start_step`` (the step the job starts from), into
    ``store`` (an ``ArtifactStore``, or a folder: one machine).

    The model at ``start_step`` is never published: an untrained model's predictions are
    noise, and a peer distilling them, or a trainer taking them as pseudo labels, learns
    that noise. The first checkpoint comes ``every_steps`` steps (or ``every_s`` seconds)
    into the job.

    The artifact is saved in the training thread; its copy to the store's destination and
    its announcement on Kafka go from a thread of its own, in order, retried with backoff
    while the bank or Kafka is away, so an outage never stalls training. A checkpoint over
    the store's size limit raises ``BlobTooLargeError`` from ``publish``. ``close`` waits
    (up to ``announce_wait_s``) for what is still to be announced."""

    def __init__(
        self,
        publisher: Publisher,
        store: ArtifactStore | Path,
        namespace: str,
        producer: str,
        every_steps: int,
        every_s: float | None = None,
        start_step: int = 0,
        announce_wait_s: float = 60.0,
    ) -> None:
        self.publisher = publisher
        self.store = as_store(store)
        self.namespace = namespace
        self.producer = producer
        self.every_steps = every_steps
        self.every_s = every_s
        self.start_step = start_step
        self.announce_wait_s = announce_wait_s
        self.last_step: int | None = None
        self.last_at = time.monotonic()
        self.published: list[CheckpointManifest] = []
        """The checkpoints announced so far, in order."""
        self._queue: queue.Queue[CheckpointManifest | None] = queue.Queue()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    def due(self, step: int) -> bool:
        if step <= self.start_step:
            return False
        last = self.start_step if self.last_step is None else self.last_step
        if step - last >= self.every_steps:
            return True
        return self.every_s is not None and time.monotonic() - self.last_at >= self.every_s

    def publish(self, model: Any, step: int) -> CheckpointManifest:
        """Save the model at ``step``; its announcement is queued."""
        manifest = save_artifact(
            model, self.store.root, self.namespace, step, producer=self.producer
        )
        self.store.check_size(Path(urlparse(manifest.uri).path), self.namespace)
        self.last_step, self.last_at = step, time.monotonic()
        if self._thread is None:
            self._thread = threading.Thread(target=self._announce, name="checkpoints", daemon=True)
            self._thread.start()
        self._queue.put(manifest)
        return manifest

    def close(self) -> None:
        """Wait for the queued announcements (up to ``announce_wait_s``), then stop."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout=self.announce_wait_s)
        if self._thread.is_alive():
            self._closing.set()
            self._thread.join()
        self._thread = None
        self._closing.clear()

    def _announce(self) -> None:
        pause = 0.5
        while True:
            manifest = self._queue.get()
            if manifest is None:
                return
            while True:
                try:
                    if is_local(manifest.uri):  # not yet at the destination
                        local = Path(urlparse(manifest.uri).path)
                        uri = self.store.publish(local, self.namespace)
                        manifest = dataclasses.replace(manifest, uri=uri)
                    self.publisher.manifest(manifest)
                    if is_local(manifest.uri):
                        self.store.retain_local(Path(urlparse(manifest.uri).path))
                    self.published.append(manifest)
                    metrics.CHECKPOINTS_PUBLISHED.inc()
                    log.info("published %s step %d", self.namespace, manifest.step)
                    pause = 0.5
                    break
                except OSError as exc:  # the saved file is gone: nothing to announce
                    log.error("%s step %d: not published: %s", self.namespace, manifest.step, exc)
                    break
                except CarlsError as exc:
                    if not exc.retriable:
                        log.error(
                            "%s step %d: not published: %s", self.namespace, manifest.step, exc
                        )
                        break
                    if self._closing.is_set():
                        left = self._queue.qsize()
                        log.warning(
                            "%s: step %d and %d later checkpoint(s) saved but not announced (%s)",
                            self.namespace,
                            manifest.step,
                            left,
                            exc,
                        )
                        return
                    log.warning(
                        "%s step %d: not announced yet (%s); retrying in %.1f s",
                        self.namespace,
                        manifest.step,
                        exc,
                        pause,
                    )
                    self._closing.wait(pause)
                    pause = min(2 * pause, 8.0)


def namespace_step(publisher: Publisher, bank: NamespaceLookup, namespace: str) -> int:
    """The newest checkpoint step of ``namespace`` (0: none). Steps are monotonic inside a
    namespace: a run on a namespace that already has checkpoints (an earlier job, a
    resumed run) numbers its own after the newest, so makers never rank them below the
    old ones. Checkpoints from before the namespace was (re-)created do not count."""
    created = bank.namespace(namespace).created_at
    prev = latest_manifest(publisher.conn, publisher.topics.checkpoints, namespace, created)
    return prev.step if prev is not None else 0


def demand_publisher(
    publisher: Publisher, namespace: str, campaign: str, batch: int = 512
) -> Callable[[list[str]], None]:
    """A ``KnowledgeReader`` demand callback: asks the makers (once per id) for knowledge
    of ids a trainer's upcoming batches need, in id batches ahead of refresh work."""
    asked: set[str] = set()

    def demand(ids: list[str]) -> None:
        fresh = [i for i in ids if i not in asked]
        for s in range(0, len(fresh), batch):
            part = fresh[s : s + batch]
            publisher.examples(  # a PublishError reaches the reader, which backs off
                ExampleBatch(
                    namespace=namespace, ids=part, priority="demand", campaign=f"demand-{campaign}"
                )
            )
            asked.update(part)  # only once sent: ids Kafka did not take are asked again

    return demand
