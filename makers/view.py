"""Every worker's global view of the newest checkpoint manifest of every namespace.

The checkpoints topic is compacted and keyed by namespace, so reading it from the
beginning, without a consumer group, on every worker gives each one the full, current
map; a manifest older than the one already known is ignored, so late arrivals change
nothing. A tombstone (a null value, the way to delete a key of a compacted topic) forgets
the namespace's manifest. Records that do not decode are skipped here: the campaign agent,
which reads the same topic in the worker group, dead-letters them once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection
from typing import Any

from carls.schemas import CheckpointManifest
from carls.streams.config import KafkaConnection
from carls.streams.manifests import follow_from_start, manifest_of

log = logging.getLogger(__name__)


KEEP = 8
"""Manifests kept per namespace: the newest few, so that when the newest cannot serve the
one before it still can."""


class ManifestView:
    """A background thread following the checkpoints topic; every method is thread-safe.

    ``latest`` and ``wait_for`` take the sha256 of checkpoints known not to serve
    (``skip``): what they return is the newest of the rest. A manifest more than
    ``max_ahead`` steps ahead of the namespace's newest is not taken (the campaign agent
    dead-letters it)."""

    def __init__(self, conn: KafkaConnection, topic: str, max_ahead: int | None = None) -> None:
        self._conn = conn
        self._topic = topic
        self.max_ahead = max_ahead
        self._known: dict[str, list[CheckpointManifest]] = {}  # by step, newest last
        self._positions: dict[int, int] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="manifest-view", daemon=True)

    def start(self) -> ManifestView:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=10)

    def _newest(self, namespace: str, skip: Collection[str]) -> CheckpointManifest | None:
        for m in reversed(self._known.get(namespace, ())):
            if m.sha256 not in skip:
                return m
        return None

    def latest(self, namespace: str, skip: Collection[str] = ()) -> CheckpointManifest | None:
        with self._cond:
            return self._newest(namespace, skip)

    def wait_for(
        self, namespace: str, step: int, timeout_s: float, skip: Collection[str] = ()
    ) -> CheckpointManifest | None:
        """The newest manifest once it is at least ``step`` (or whatever is known at timeout)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                m = self._newest(namespace, skip)
                if (m is not None and m.step >= step) or time.monotonic() >= deadline:
                    return m
                self._cond.wait(timeout=max(0.0, min(0.5, deadline - time.monotonic())))

    def wait_offset(self, partition: int, offset: int, timeout_s: float = 30.0) -> bool:
        """Wait until the view has read ``offset`` of ``partition``; return whether it has."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._positions.get(partition, 0) <= offset:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(timeout=min(0.5, left))
            return True

    def forget_before(self, namespace: str, created_at: float) -> bool:
        """Forget the manifests that predate ``created_at`` (the namespace was dropped and
        created again since: its old checkpoints must not outrank the new ones)."""
        with self._cond:
            known = self._known.get(namespace, [])
            kept = [m for m in known if m.created_at >= created_at]
            if len(kept) == len(known):
                return False
            self._known[namespace] = kept
            return True

    def forget(self, namespace: str) -> bool:
        """Forget the namespace's manifests (a tombstone); return whether one was known."""
        with self._cond:
            return bool(self._known.pop(namespace, None))

    def too_far_ahead(self, manifest: CheckpointManifest, skip: Collection[str] = ()) -> int:
        """How many steps ``manifest`` is beyond ``max_ahead`` past the newest known of its
        namespace (0: not too far, or no limit, or nothing known)."""
        with self._cond:
            newest = self._newest(manifest.namespace, skip)
        if self.max_ahead is None or newest is None:
            return 0
        return max(0, manifest.step - newest.step - self.max_ahead)

    def offer(self, manifest: CheckpointManifest) -> bool:
        """Take a manifest (unless known, or too far ahead); return whether it is now the
        newest of its namespace."""
        if self.too_far_ahead(manifest):
            return False
        with self._cond:
            known = self._known.setdefault(manifest.namespace, [])
            if any(m.step == manifest.step and m.sha256 == manifest.sha256 for m in known):
                return False
            known.append(manifest)
            known.sort(key=lambda m: m.step)
            del known[:-KEEP]
            self._cond.notify_all()
            return known[-1] is manifest

    def _run(self) -> None:
        follow_from_start(self._conn, self._topic, self._take, self._stop)

    def _take(self, rec: Any) -> None:
        namespace, manifest = manifest_of(rec)
        if manifest is not None:
            self.offer(manifest)
        elif namespace is not None:  # a tombstone: forget the namespace's manifests
            self.forget(namespace)
        with self._cond:
            self._positions[rec.partition] = rec.offset + 1
            self._cond.notify_all()
