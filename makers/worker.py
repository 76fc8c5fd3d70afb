"""The knowledge makers as a Faust app: thin agents around ``makers.pipeline.Maker``.

Two consumers, each a consumer group in which Kafka shares partitions among the workers:

* the ``campaigns`` agent (group ``<app id>``) reads ``checkpoints``: on a manifest newer
  than any known for its namespace it loads the model once (sha256 verified) and starts a
  **refresh campaign**: the namespace's ids, bucket by bucket, published as id batches to
  ``examples``.
* the id-batch consumer (group ``<app id>-ids``, a ``streams.batches.BatchConsumer``
  service of the same Faust app) reads ``demand`` and ``examples`` a whole fetch at a time
  (Faust's per-record streams cost ~75 us a record; see that module): fetch, infer,
  write. Demand partitions are drained first. Offsets are committed only after the bank
  writes (at least once; writes are idempotent and step-ordered, so a replay is harmless).

Bad records are dead-lettered at one point, ``_dead_letter``: reason, source
topic/partition/offset and the raw bytes. A backend that is away is retried with backoff
and nothing is committed meanwhile. Progress goes to ``progress``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from carls.bank.cassandra import CassandraBank
from carls.bank.errors import DimensionError, NamespaceError
from carls.bank.protocol import KnowledgeBank
from carls.bank.session import CassandraConfig
from carls.bank.types import NamespaceSpec
from carls.makers.checkpoints import ModelCache, warm_up
from carls.makers.errors import BadModelOutputError, CheckpointError
from carls.makers.pipeline import MAKERS, Maker, Outcome
from carls.makers.view import ManifestView
from carls.schemas import CheckpointManifest, ExampleBatch, ProgressEvent, decode, encode
from carls.schemas.errors import CarlsError
from carls.streams.app import make_app
from carls.streams.batches import BatchConsumer
from carls.streams.config import KafkaConnection
from carls.streams.deadletter import dead_letter
from carls.streams.topics import Topics

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    kafka: KafkaConnection
    cassandra: CassandraConfig
    topics: Topics
    app_id: str = "carls-makers"
    checkpoint_root: Path | None = None
    makers: tuple[str, ...] = MAKERS
    concurrency: int = 1
    fetch_messages: int = 32
    """Id-batch messages per fetch (each holds up to ``campaign_batch_ids`` ids)."""
    campaign_batch_ids: int = 512
    session_timeout_s: float = 10.0
    max_backoff_s: float = 10.0
    stats_path: Path | None = None
    data_dir: Path | None = None
    """Where Faust keeps its local files (default: ``<app_id>-data`` in the working dir)."""
    worker: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")


class Makers:
    """The worker's state: bank, model cache, manifest view, and the Faust app."""

    def __init__(self, cfg: WorkerConfig, bank: KnowledgeBank | None = None) -> None:
        self.cfg = cfg
        self.bank: KnowledgeBank = bank or CassandraBank(cfg.cassandra)
        self.cache = ModelCache(max_per_namespace=2, root=cfg.checkpoint_root)
        self.maker = Maker(self.bank, self.cache, cfg.makers, worker=f"carls-maker@{cfg.worker}")
        self.view = ManifestView(cfg.kafka, cfg.topics.checkpoints)
        self.pool = ThreadPoolExecutor(max_workers=cfg.concurrency + 2, thread_name_prefix="maker")
        self.campaigned: dict[str, tuple[float, int]] = {}
        self.failed_checkpoints: set[str] = set()
        self.serving: dict[str, CheckpointManifest] = {}
        self.busy_s = 0.0
        self.first_batch_at: float | None = None
        self.last_batch_at: float | None = None
        self.app = self._build()

    @property
    def ids_group(self) -> str:
        """The consumer group of the id-batch topics (``demand`` and ``examples``)."""
        return f"{self.cfg.app_id}-ids"

    # ------------------------------------------------------------------------------------
    def _build(self) -> Any:
        cfg = self.cfg
        app = make_app(
            cfg.app_id,
            cfg.kafka,
            broker_session_timeout=cfg.session_timeout_s,
            broker_heartbeat_interval=max(1.0, cfg.session_timeout_s / 5),
            broker_rebalance_timeout=cfg.session_timeout_s * 3,
            **({"datadir": str(cfg.data_dir)} if cfg.data_dir is not None else {}),
        )
        raw = {"value_serializer": "raw", "key_serializer": "raw"}
        self.t_checkpoints = app.topic(cfg.topics.checkpoints, **raw)
        self.t_examples = app.topic(cfg.topics.examples, **raw)
        self.t_demand = app.topic(cfg.topics.demand, **raw)
        self.t_progress = app.topic(cfg.topics.progress, **raw)
        self.t_deadletter = app.topic(cfg.topics.deadletter, **raw)

        @app.agent(self.t_checkpoints, name="campaigns")
        async def campaigns(stream: Any) -> None:
            async for event in stream.events():
                try:
                    await self._on_manifest(event)
                except Exception as exc:  # never let one record stop the agent
                    log.exception("unexpected failure on a checkpoint record")
                    await self._dead_letter(event, f"internal error: {exc!r}", exc)

        app.service(  # started, supervised and stopped with the app
            BatchConsumer(
                cfg.kafka,
                [cfg.topics.demand, cfg.topics.examples],
                self.ids_group,
                self._on_batches,
                priority=[cfg.topics.demand],
                max_records=cfg.fetch_messages,
                concurrency=cfg.concurrency,
                session_timeout_s=cfg.session_timeout_s,
            )
        )

        @app.task
        async def _start_view() -> None:
            self.view.start()

        if cfg.stats_path is not None:

            @app.timer(1.0)
            async def _write_stats() -> None:
                self.write_stats()

        return app

    def stats(self) -> dict[str, float | int | None]:
        """Seconds spent per stage (``consume`` = waiting on Kafka and decoding)."""
        t = self.maker.times
        span = (
            (self.last_batch_at or 0.0) - self.first_batch_at
            if self.first_batch_at is not None
            else 0.0
        )
        return {
            "examples": t.examples,
            "fetch_s": t.fetch_s,
            "infer_s": t.infer_s,
            "write_s": t.write_s,
            "busy_s": self.busy_s,
            "span_s": span,
            "consume_s": max(0.0, span - t.fetch_s - t.infer_s - t.write_s),
            "first_batch_at": self.first_batch_at,
            "last_batch_at": self.last_batch_at,
        }

    def write_stats(self) -> None:
        if self.cfg.stats_path is not None:
            tmp = self.cfg.stats_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.stats()))
            tmp.replace(self.cfg.stats_path)

    def close(self) -> None:
        self.view.stop()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.bank.close()

    # ------------------------------------------------------------------------------------
    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking work in the pool; retriable failures back off and retry forever
        (nothing is acknowledged meanwhile); anything else propagates."""
        loop = asyncio.get_running_loop()
        delay = 0.2
        while True:
            try:
                return await loop.run_in_executor(self.pool, fn, *args)
            except CarlsError as exc:
                if not exc.retriable:
                    raise
                log.warning("backend unavailable (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.cfg.max_backoff_s)

    async def _dead_letter(self, record: Any, reason: str, error: BaseException | str) -> None:
        """Dead-letter ``record`` (a Kafka record or a Faust event: topic, partition,
        offset and the raw value)."""
        msg = getattr(record, "message", record)
        letter = dead_letter(
            reason,
            error,
            msg.topic,
            msg.partition,
            msg.offset,
            bytes(msg.value or b""),
            worker=self.cfg.worker,
        )
        await self.t_deadletter.send(key=msg.topic.encode(), value=encode(letter))

    async def _progress(
        self,
        namespace: str,
        kind: str,
        step: int,
        processed: int,
        total: int | None,
        campaign: str = "",
    ) -> None:
        event = ProgressEvent(
            namespace=namespace,
            kind=kind,
            step=step,
            processed=processed,
            total=total,
            worker=self.cfg.worker,
            campaign=campaign,
            at=time.time(),
        )
        await self.t_progress.send(key=namespace.encode(), value=encode(event))

    # ------------------------------------------------------------------------------------
    async def _on_manifest(self, event: Any) -> None:
        if event.value is None:  # a tombstone: the view forgets the namespace's manifest
            key = event.key.decode("utf-8", "replace") if event.key is not None else None
            log.info("tombstone on the checkpoints topic for namespace %s", key)
            if key is not None:
                self.campaigned.pop(key, None)
            return
        try:
            manifest = decode(bytes(event.value), CheckpointManifest)
        except CarlsError as exc:
            await self._dead_letter(event, f"undecodable checkpoint manifest: {exc}", exc)
            return
        ns = manifest.namespace
        msg = event.message
        # The view reads the same topic from the start: once it is past this record it
        # knows whether a newer manifest of the namespace came first.
        await self._run(self.view.wait_offset, msg.partition, msg.offset)
        try:
            spec = await self._run(self.bank.namespace, ns)
        except NamespaceError as exc:
            await self._dead_letter(event, f"unknown namespace: {exc}", exc)
            return
        if manifest.created_at < spec.created_at:
            log.info(
                "ignoring %s step %d: made before the namespace was created again",
                ns,
                manifest.step,
            )
            return
        self.view.forget_before(ns, spec.created_at)
        self.view.offer(manifest)
        newest = self.view.latest(ns)
        if newest is not None and newest.step > manifest.step:
            log.info("ignoring %s step %d: step %d is newer", ns, manifest.step, newest.step)
            return
        generation = (spec.created_at, manifest.step)
        done = self.campaigned.get(ns)
        if done is not None and done[0] == spec.created_at and done[1] >= manifest.step:
            return
        try:
            await self._run(self.maker.probe, spec, manifest)
        except CarlsError as exc:  # not loadable, wrong dimensions, NaN outputs
            self.failed_checkpoints.add(manifest.sha256)
            reason = f"checkpoint {ns} step {manifest.step} cannot serve ({exc}); the "
            await self._dead_letter(event, reason + "previous model keeps serving", exc)
            return
        self.serving[ns] = manifest
        campaign = f"{ns}@{manifest.step}-{uuid.uuid4().hex[:6]}"
        total = 0
        for bucket in range(spec.buckets):
            ids = await self._run(self.bank.example_ids, ns, bucket)
            for s in range(0, len(ids), self.cfg.campaign_batch_ids):
                chunk = ids[s : s + self.cfg.campaign_batch_ids]
                batch = ExampleBatch(
                    namespace=ns,
                    ids=chunk,
                    priority="refresh",
                    step=manifest.step,
                    campaign=campaign,
                )
                await self.t_examples.send(key=f"{ns}/{bucket}/{s}".encode(), value=encode(batch))
            total += len(ids)
        self.campaigned[ns] = generation
        log.info("campaign %s: %d ids of %s for step %d", campaign, total, ns, manifest.step)
        await self._progress(ns, "embedding", manifest.step, 0, total, campaign)

    async def _model_manifest(self, spec: NamespaceSpec, step: int) -> CheckpointManifest | None:
        """The manifest to serve namespace ``spec`` with: the newest known (waiting briefly
        for one at least ``step``), or the last one that loaded if the newest is broken."""
        ns = spec.name
        self.view.forget_before(ns, spec.created_at)
        manifest = await self._run(self.view.wait_for, ns, step, 30.0)
        if manifest is not None and manifest.created_at < spec.created_at:
            return None
        if manifest is not None and manifest.sha256 in self.failed_checkpoints:
            manifest = self.serving.get(ns)
            if manifest is not None and manifest.created_at < spec.created_at:
                return None
        return manifest

    async def _on_batches(self, records: Sequence[Any]) -> None:
        """One fetch of id-batch records (from ``demand`` and/or ``examples``)."""
        started = time.time()
        if self.first_batch_at is None:
            self.first_batch_at = started
        try:
            await self._process_records(records)
        finally:
            self.busy_s += time.time() - started
            self.last_batch_at = time.time()

    async def _process_records(self, records: Sequence[Any]) -> None:
        groups: dict[tuple[str, tuple[str, ...]], list[tuple[Any, ExampleBatch]]] = defaultdict(
            list
        )
        for record in records:
            try:
                batch = decode(bytes(record.value or b""), ExampleBatch)
            except CarlsError as exc:
                await self._dead_letter(record, f"undecodable example batch: {exc}", exc)
                continue
            groups[(batch.namespace, tuple(batch.kinds))].append((record, batch))
        for (ns, kinds), members in groups.items():
            step = max(b.step or 0 for _, b in members)
            try:
                spec = await self._run(self.bank.namespace, ns)
            except NamespaceError as exc:
                for record, _ in members:
                    await self._dead_letter(record, f"unknown namespace: {exc}", exc)
                continue
            manifest = await self._model_manifest(spec, step)
            if manifest is None:
                for record, _ in members:
                    await self._dead_letter(
                        record, f"no checkpoint published for namespace {ns}", "NoCheckpoint"
                    )
                continue
            ids = [i for _, b in members for i in b.ids]
            try:
                outcome: Outcome = await self._run(self.maker.process, spec, manifest, ids, kinds)
            except (CheckpointError, BadModelOutputError, DimensionError) as exc:
                # The model cannot serve: later batches fall back to the last good one.
                self.failed_checkpoints.add(manifest.sha256)
                for record, _ in members:
                    await self._dead_letter(record, f"step {manifest.step} model: {exc}", exc)
                continue
            except CarlsError as exc:  # unknown namespace, invalid ids ...
                for record, _ in members:
                    await self._dead_letter(record, str(exc), exc)
                continue
            except Exception as exc:  # a bug must not stop the partition: keep the record
                log.exception("unexpected failure on an id batch of %s", ns)
                for record, _ in members:
                    await self._dead_letter(record, f"internal error: {exc!r}", exc)
                continue
            self.serving.setdefault(ns, manifest)
            if self.serving[ns].step < manifest.step:
                self.serving[ns] = manifest
            campaign = members[0][1].campaign
            for kind, n in outcome.written.items():
                await self._progress(ns, kind, outcome.step, n, None, campaign)
            if outcome.unregistered:
                log.warning(
                    "%s: %d ids are not registered examples (first: %s)",
                    ns,
                    len(outcome.unregistered),
                    outcome.unregistered[0],
                )


def run_worker(cfg: WorkerConfig, loglevel: str = "warning") -> None:
    """Run a worker in the foreground until SIGINT/SIGTERM."""
    import faust

    if cfg.data_dir is not None:
        cfg.data_dir.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    log.info("TensorFlow ready in %.1f s", warm_up())  # before joining: the first
    makers = Makers(cfg)  # checkpoint then costs a load, not the libraries' start-up
    # Everything imported so far (TensorFlow, Faust) lives as long as the process: keep it
    # out of the collector's scans, which otherwise slow every allocation-heavy fetch.
    gc.freeze()
    worker = faust.Worker(makers.app, loglevel=loglevel, quiet=True)
    try:
        worker.execute_from_commandline()
    finally:
        makers.close()
