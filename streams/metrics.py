"""Prometheus metrics of workers and trainers, served over HTTP (``serve``).

Counters that the hot paths move are module-level ``prometheus_client`` metrics; values a
process already keeps (a worker's stage times, its consumer's lag, the campaigns it hears
of; a trainer reader's staleness) are read when Prometheus scrapes, through collectors the
worker and the trainer register. Labels are low-cardinality only: topics, consumer groups,
stages, kinds and error types; never namespaces, ids or jobs.

The metric names, their labels and a scrape configuration are in the README ("Metrics").
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

PORT_TRIES = 16
"""A port in use: the next ones are tried, so several processes on one machine each serve."""

# Workers --------------------------------------------------------------------------------
RECORDS = Counter("carls_records_consumed", "Records consumed, per topic.", ["topic"])
IDS = Counter("carls_ids_consumed", "Example ids of the id batches consumed, per topic.", ["topic"])
DEAD_LETTERS = Counter(
    "carls_dead_letters", "Records dead-lettered, per reason (the error's type).", ["reason"]
)
MODEL_LOADS = Counter("carls_model_loads", "Checkpoints loaded to serve a namespace.")
MODEL_LOAD_FAILURES = Counter(
    "carls_model_load_failures", "Checkpoints that could not be loaded (not served)."
)
KNOWLEDGE_WRITTEN = Counter(
    "carls_knowledge_written", "Rows of knowledge written to the bank, per kind.", ["kind"]
)

# Trainers -------------------------------------------------------------------------------
STEP_SECONDS = Histogram(
    "carls_trainer_step_seconds",
    "Wall time of one training step (the step and its callbacks).",
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
)
CHECKPOINTS_PUBLISHED = Counter(
    "carls_checkpoints_published", "Checkpoints a trainer exported and announced."
)
READER_HITS = Counter(
    "carls_reader_cache_hits",
    "Knowledge rows a training step read from the reader's cache and found, per kind.",
    ["kind"],
)
READER_MISSES = Counter(
    "carls_reader_cache_misses",
    "Knowledge rows a training step read and did not find (none made yet), per kind.",
    ["kind"],
)
READER_BANK_ROWS = Counter(
    "carls_reader_bank_rows", "Rows the trainer's reader fetched from the bank, per kind.", ["kind"]
)


@dataclass
class _StalenessTotals:
    """Staleness (steps) of every knowledge row read, as cumulative histogram counts."""

    edges: tuple[int, ...] = ()
    counts: dict[str, list[int]] = field(default_factory=dict)
    sums: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, edges: tuple[int, ...], counts: Iterable[int], total: float) -> None:
        with self.lock:
            self.edges = edges
            have = self.counts.setdefault(kind, [0] * (len(edges) + 1))
            for i, c in enumerate(counts):
                have[i] += c
            self.sums[kind] = self.sums.get(kind, 0.0) + total

    def families(self) -> list[Metric]:
        h = HistogramMetricFamily(
            "carls_knowledge_staleness_steps",
            "Staleness of the knowledge rows training steps read (trainer step minus the "
            "step the knowledge was made at), per kind.",
            labels=["kind"],
        )
        with self.lock:
            for kind, counts in sorted(self.counts.items()):
                # a bucket counts values below its edge; staleness is whole steps, so
                # below e is at most e - 1. The rare negative staleness (knowledge from
                # ahead of the clock) counts in the first bucket, so _sum and _count exist.
                merged = [counts[0] + counts[1], *counts[2:]]
                running, buckets = 0, []
                for edge, c in zip((*self.edges[1:], None), merged, strict=True):
                    running += c
                    le = "+Inf" if edge is None else str(edge - 1)
                    buckets.append((le, float(running)))
                h.add_metric([kind], buckets, self.sums.get(kind, 0.0))
        return [h]


STALENESS = _StalenessTotals()


class _Families(Collector):
    def __init__(self, make: Callable[[], list[Metric]]) -> None:
        self.make = make

    def collect(self) -> Iterable[Metric]:
        try:
            return self.make()
        except Exception:  # a scrape never breaks the process it watches
            log.exception("metrics: a collector failed")
            return []


REGISTRY.register(_Families(STALENESS.families))


def register(make: Callable[[], list[Metric]]) -> Collector:
    """Read ``make()`` (metric families) at every scrape; returns the collector, for
    ``unregister``."""
    collector = _Families(make)
    REGISTRY.register(collector)
    return collector


def unregister(collector: Collector) -> None:
    with contextlib.suppress(KeyError):  # not registered
        REGISTRY.unregister(collector)


def counter(name: str, doc: str, values: Mapping[str, float], label: str) -> CounterMetricFamily:
    """A counter family from cumulative values by one label's value."""
    fam = CounterMetricFamily(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        fam.add_metric([key], value)
    return fam


def gauge(name: str, doc: str, values: Mapping[Any, float], labels: list[str]) -> GaugeMetricFamily:
    fam = GaugeMetricFamily(name, doc, labels=labels)
    for key, value in sorted(values.items()):
        fam.add_metric(list(key), value)
    return fam


def error_label(error: BaseException | str) -> str:
    """A dead letter's reason as a label: the error's type, or the short code given."""
    if isinstance(error, BaseException):
        return type(error).__name__
    word = str(error).split(":")[0].strip()
    return word if word.isidentifier() and len(word) <= 40 else "Other"


# Serving --------------------------------------------------------------------------------
@dataclass
class MetricsServer:
    """Where a process serves its metrics (``url``); ``close`` stops serving."""

    port: int
    host: str
    server: Any
    thread: threading.Thread
    started_at: float = field(default_factory=time.time)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve(port: int, host: str = "0.0.0.0", what: str = "carls") -> MetricsServer | None:
    """Serve ``/metrics`` on ``port`` (0: any free port), or on one of the next
    ``PORT_TRIES - 1`` ports when it is taken; ``None`` (said once) when none is free.
    A negative port serves nothing."""
    if port < 0:
        return None
    tries = [0] if port == 0 else range(port, min(port + PORT_TRIES, 65536))
    for p in tries:
        try:
            server, thread = start_http_server(p, addr=host)
        except OSError:
            continue
        bound = int(server.server_address[1])
        if port not in (bound, 0):
            log.info("%s metrics: port %d is taken, serving on %d", what, port, bound)
        return MetricsServer(bound, host, server, thread)
    log.warning(
        "%s metrics: ports %d-%d are all taken; metrics are not served", what, port, tries[-1]
    )
    return None
