"""The checkpoint publisher: save the model as the artifact makers load, announce it.

Saves follow ``schemas.artifacts`` (a ``.keras`` file with ``embedding`` and
``probabilities`` outputs, no trainer code needed to load it), written atomically, then a
``CheckpointManifest`` goes to the compacted checkpoints topic keyed by namespace.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

from carls.schemas import CheckpointManifest
from carls.schemas.artifacts import FORMAT, artifact_relpath, fingerprint_of_config
from carls.streams.producer import Publisher

log = logging.getLogger(__name__)


def save_artifact(
    model: Any, store: Path, namespace: str, step: int, *, producer: str = "carls"
) -> CheckpointManifest:
    """Save ``model`` as ``<store>/<namespace>/step-<step:012d>.keras`` and return its
    manifest (not yet published). The file appears atomically: it is written under a
    temporary name in the same folder, flushed to disk, then renamed, so a maker never
    sees half an artifact."""
    final = (store / artifact_relpath(namespace, step)).resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    # Keras insists on the .keras suffix, so the temporary name keeps it.
    tmp = final.with_name(f".{final.stem}.{uuid.uuid4().hex[:8]}.tmp.keras")
    try:
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
        format=FORMAT,
        sha256=digest.hexdigest(),
        size=size,
        created_at=time.time(),
        model_fingerprint=fingerprint_of_config(model.to_json()),
        producer=producer,
    )


class CheckpointPublisher:
    """Saves and publishes a checkpoint every ``every_steps`` steps or ``every_s`` seconds,
    whichever comes first, counted from ``start_step`` (the step the job starts from).

    The model at ``start_step`` is never published: an untrained model's predictions are
    noise, and a peer distilling them, or a trainer taking them as pseudo labels, learns
    that noise. The first checkpoint comes ``every_steps`` steps (or ``every_s`` seconds)
    into the job."""

    def __init__(
        self,
        publisher: Publisher,
        store: Path,
        namespace: str,
        producer: str,
        every_steps: int,
        every_s: float | None = None,
        start_step: int = 0,
    ) -> None:
        self.publisher = publisher
        self.store = store
        self.namespace = namespace
        self.producer = producer
        self.every_steps = every_steps
        self.every_s = every_s
        self.start_step = start_step
        self.last_step: int | None = None
        self.last_at = time.monotonic()
        self.published: list[CheckpointManifest] = []

    def due(self, step: int) -> bool:
        if step <= self.start_step:
            return False
        last = self.start_step if self.last_step is None else self.last_step
        if step - last >= self.every_steps:
            return True
        return self.every_s is not None and time.monotonic() - self.last_at >= self.every_s

    def publish(self, model: Any, step: int) -> CheckpointManifest:
        manifest = save_artifact(model, self.store, self.namespace, step, producer=self.producer)
        self.publisher.manifest(manifest)
        self.last_step, self.last_at = step, time.monotonic()
        self.published.append(manifest)
        log.info("published %s step %d (%d bytes)", self.namespace, step, manifest.size)
        return manifest
