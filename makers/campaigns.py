"""What every worker hears of the refresh campaigns in flight, for its metrics.

A campaign (a namespace's ids, published again for a new checkpoint) is announced on the
progress topic with its size (``processed`` 0 of ``total``), and each worker then reports
the ids it made per kind. ``CampaignTracker`` follows that topic from the moment the worker
starts, without a consumer group, so each worker sees all workers' progress: a campaign is
in flight from its announcement until every kind heard of has reached its size (a kind
made in a later phase, the neighbours of a large namespace, counts once it is heard of),
or until nothing was heard of it for ``forget_s``. Campaigns announced before the worker
started are not known to it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from carls.schemas import ProgressEvent, decode
from carls.schemas.errors import CarlsError
from carls.streams import metrics
from carls.streams.config import KafkaConnection
from carls.streams.manifests import follow_from_start

log = logging.getLogger(__name__)

EARLY_KEPT = 256
"""Campaigns whose progress is kept before their announcement is heard (the oldest go)."""


@dataclass
class _Campaign:
    total: int
    made: dict[str, int] = field(default_factory=dict)
    heard_at: float = field(default_factory=time.monotonic)

    def done(self) -> bool:
        return bool(self.made) and all(n >= self.total for n in self.made.values())


class CampaignTracker:
    """Campaigns in flight and their coverage per kind; ``take`` one progress event at a
    time (``start`` follows the topic in a thread)."""

    def __init__(
        self, conn: KafkaConnection | None = None, topic: str = "", forget_s: float = 600.0
    ) -> None:
        self.conn, self.topic, self.forget_s = conn, topic, forget_s
        self._campaigns: dict[str, _Campaign] = {}
        self._early: dict[str, dict[str, int]] = {}  # progress of campaigns not announced
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> CampaignTracker:
        if self.conn is not None and self._thread is None:
            conn = self.conn
            self._thread = threading.Thread(
                target=lambda: follow_from_start(
                    conn, self.topic, self._record, self._stop, from_end=True
                ),
                name="campaign-tracker",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _record(self, rec: Any) -> None:
        if rec.value is None:
            return
        with contextlib.suppress(CarlsError):  # progress is advisory: not ours to dead-letter
            self.take(decode(bytes(rec.value), ProgressEvent))

    def take(self, event: ProgressEvent) -> None:
        if not event.campaign:
            return
        with self._lock:
            c = self._campaigns.get(event.campaign)
            if event.total is not None and event.processed == 0:  # the announcement
                if c is None:
                    c = self._campaigns[event.campaign] = _Campaign(event.total)
                    for kind, n in self._early.pop(event.campaign, {}).items():
                        c.made[kind] = c.made.get(kind, 0) + n
                return
            if c is None:  # before its announcement reached this worker (or before it
                # listened): kept a while, for an announcement that may still come
                early = self._early.setdefault(event.campaign, {})
                early[event.kind] = early.get(event.kind, 0) + event.processed
                while len(self._early) > EARLY_KEPT:
                    self._early.pop(next(iter(self._early)))
                return
            c.made[event.kind] = c.made.get(event.kind, 0) + event.processed
            c.heard_at = time.monotonic()

    def in_flight(self) -> dict[str, tuple[int, dict[str, int]]]:
        """Campaign -> (ids, ids made per kind heard of), of those still in flight."""
        now = time.monotonic()
        with self._lock:
            for name, c in list(self._campaigns.items()):
                if c.done() or now - c.heard_at > self.forget_s:
                    del self._campaigns[name]
            return {n: (c.total, dict(c.made)) for n, c in self._campaigns.items()}

    def families(self) -> list[Any]:
        flying = self.in_flight()
        totals: dict[str, list[int]] = {}
        for total, made in flying.values():
            for kind, n in made.items():
                t = totals.setdefault(kind, [0, 0])
                t[0] += min(n, total)
                t[1] += total
        return [
            metrics.gauge(
                "carls_campaigns_in_flight",
                "Refresh campaigns announced and not finished (every worker's, as this "
                "worker heard of them since it started).",
                {(): float(len(flying))},
                [],
            ),
            metrics.gauge(
                "carls_campaign_coverage_ratio",
                "Of the ids of the campaigns in flight, the fraction made, per kind.",
                {(kind,): made / total for kind, (made, total) in totals.items() if total},
                ["kind"],
            ),
        ]
