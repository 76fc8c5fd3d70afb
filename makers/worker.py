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

Both run under one failure policy (``guarded``; the README's "What happens when things
fail"): bad data is dead-lettered at one point, ``_dead_letter`` (reason, source
topic/partition/offset, the raw bytes or, for a large record, their first 64 KiB with
size and sha256); a server that is away is retried with backoff, nothing committed
meanwhile; a bug stops the worker with nothing committed and is counted against the
records in hand, and a record that crashed ``max_crashes`` workers is dead-lettered as a
suspected poison pill. A checkpoint is believed once it loads: one that does not is
recorded in the bank for every worker, and the one before it serves. An id batch whose
checkpoint step has not come is parked (its partition's commits wait, the others go on).
Progress goes to ``progress``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import json
import logging
import os
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from carls.bank.ann import EXACT_BELOW, HnswParams
from carls.bank.artifacts import ArtifactStore
from carls.bank.errors import DimensionError, NamespaceError
from carls.bank.indexes import SharedIndexes
from carls.bank.protocol import KnowledgeBank
from carls.bank.types import NamespaceSpec
from carls.bank.verdicts import CheckpointVerdicts, RecordCrashes, record_key
from carls.makers.campaigns import CampaignTracker
from carls.makers.checkpoints import ModelCache, warm_up
from carls.makers.errors import BadModelOutputError, CheckpointError
from carls.makers.hypergraphs import HypergraphMaker
from carls.makers.pipeline import MAKERS, Maker, Outcome
from carls.makers.view import ManifestView
from carls.schemas import CheckpointManifest, ExampleBatch, ProgressEvent, decode, encode
from carls.schemas.errors import CarlsError
from carls.streams import metrics
from carls.streams.app import make_app, run_app
from carls.streams.batches import BatchConsumer
from carls.streams.config import KafkaConnection
from carls.streams.deadletter import dead_letter, without_raw
from carls.streams.topics import Topics

log = logging.getLogger(__name__)
T = TypeVar("T")
BROKEN_TTL_S = 10.0
PARKED_RETRY_S = 0.5
"""How often parked id batches look for their checkpoint again."""
CRASHES_TTL_S = 5.0
"""How long a worker trusts its copy of the bank's crash counts."""
"""How often parked id batches look for their checkpoint again."""
"""How long a worker trusts its copy of the bank's broken-checkpoint records."""


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    kafka: KafkaConnection
    topics: Topics
    app_id: str = "carls-makers"
    topic_replication: int = 1
    """Copies of the topics Faust declares for itself."""
    makers: tuple[str, ...] = MAKERS
    neighbours_exact_below: int = EXACT_BELOW
    """Namespaces with fewer ids get exact neighbours, larger ones an HNSW index."""
    hnsw: HnswParams = field(default_factory=HnswParams)
    """The HNSW index's parameters."""
    concurrency: int = 1
    fetch_messages: int = 32
    """Id-batch messages per fetch (each holds up to ``campaign_batch_ids`` ids)."""
    campaign_batch_ids: int = 512
    session_timeout_s: float = 10.0
    max_backoff_s: float = 10.0
    max_step_ahead: int = 1_000_000
    """A manifest this many steps beyond its namespace's newest is dead-lettered."""
    max_crashes: int = 3
    """Crashes while a record was in hand after which it is dead-lettered (poison pill)."""
    park_s: float = 30.0
    """How long an id batch waits, parked, for the checkpoint step it asks for (or for a
    first checkpoint) before the newest known model serves it (or it is dead-lettered)."""
    stats_path: Path | None = None
    data_dir: Path | None = None
    """Where Faust keeps its local files (default: ``<app_id>-data`` in the working dir)."""
    worker: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")


class Makers:
    """The worker's state: bank, model cache, manifest view, and the Faust app.

    The bank, the records of broken checkpoints and crashes, and where checkpoint
    artifacts are found (``artifacts``: the bank's blob store, object stores, and local
    files inside its root) come from the caller (the ``carls worker`` command builds them
    on Cassandra); ``close`` closes the bank and the records."""

    def __init__(
        self,
        cfg: WorkerConfig,
        bank: KnowledgeBank,
        verdicts: CheckpointVerdicts,
        crashes: RecordCrashes,
        artifacts: ArtifactStore,
        indexes: SharedIndexes | None = None,
        hypergraphs: HypergraphMaker | None = None,
    ) -> None:
        self.cfg = cfg
        self.hypergraphs = hypergraphs
        self.bank = bank
        self.verdicts = verdicts
        self.crashes = crashes
        self._crash_seen: dict[str, tuple[float, dict[str, int]]] = {}
        self.cache = ModelCache(artifacts, max_per_namespace=2)
        self.maker = Maker(
            self.bank,
            self.cache,
            cfg.makers,
            worker=f"carls-maker@{cfg.worker}",
            exact_below=cfg.neighbours_exact_below,
            hnsw=cfg.hnsw,
            indexes=indexes,
        )
        self.indexes = indexes
        self.view = ManifestView(cfg.kafka, cfg.topics.checkpoints, cfg.max_step_ahead)
        self.pool = ThreadPoolExecutor(max_workers=cfg.concurrency + 2, thread_name_prefix="maker")
        self.campaigned: dict[str, tuple[float, int]] = {}
        self._broken: dict[tuple[str, float], tuple[float, set[str]]] = {}
        self.parked: list[_Parked] = []
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
            topic_replication_factor=cfg.topic_replication,
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
                metrics.RECORDS.labels(cfg.topics.checkpoints).inc()
                handle = functools.partial(self._on_manifest_records, event)
                try:
                    await self.guarded(self.cfg.app_id, [event.message], handle)
                except Exception as exc:  # a bug: the worker stops, this record uncommitted
                    await self.consumer.crash(exc)
                    return

        self.consumer = BatchConsumer(
            cfg.kafka,
            [cfg.topics.demand, cfg.topics.examples],
            self.ids_group,
            self._on_batches,
            priority=[cfg.topics.demand],
            max_records=cfg.fetch_messages,
            concurrency=cfg.concurrency,
            session_timeout_s=cfg.session_timeout_s,
        )
        app.service(self.consumer)  # started, supervised and stopped with the app

        @app.timer(PARKED_RETRY_S)
        async def _retry_parked() -> None:
            await self.retry_parked()

        @app.task
        async def _start_view() -> None:
            self.view.start()

        if self.hypergraphs is not None:

            @app.timer(self.hypergraphs.every_s)
            async def _hypergraphs() -> None:
                await self.hypergraph_tick()

        if cfg.stats_path is not None:

            @app.timer(1.0)
            async def _write_stats() -> None:
                self.write_stats()

        return app

    async def hypergraph_tick(self) -> None:
        """One look of the hypergraph maker, in the pool; its failures are logged and the
        next look tries again (nothing it does is owed to a record)."""
        assert self.hypergraphs is not None
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self.pool, self.hypergraphs.tick)
        except Exception:
            log.exception("hypergraph maker: a look failed; the next one tries again")

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
            "pool_s": t.pool_s,
            "search_s": t.search_s,
            "busy_s": self.busy_s,
            "span_s": span,
            "consume_s": max(0.0, span - t.fetch_s - t.infer_s - t.write_s - t.pool_s - t.search_s),
            "first_batch_at": self.first_batch_at,
            "last_batch_at": self.last_batch_at,
        }

    def families(self) -> list[Any]:
        """This worker's stage times and consumer lag, for a metrics scrape."""
        st = self.stats()
        stages = {
            stage: float(st[f"{stage}_s"] or 0.0)
            for stage in ("fetch", "infer", "write", "pool", "search")
        }
        stages["consume"] = self.consumer.stats.wait_s  # only grows, as a counter must
        lag = {(self.ids_group, t): float(n) for t, n in self.consumer.lag().items()}
        return [
            metrics.counter(
                "carls_stage_seconds",
                "Seconds spent per stage of making knowledge (consume: waiting on Kafka for "
                "id batches; fetch: reading features from the bank; infer: the model; write: "
                "the bank; pool and search: the neighbour index).",
                stages,
                "stage",
            ),
            metrics.gauge(
                "carls_consumer_lag",
                "Records of the id-batch topics not handled yet, per consumer group and "
                "topic (on the partitions this worker owns).",
                lag,
                ["group", "topic"],
            ),
            metrics.gauge(
                "carls_parked_batches",
                "Id batches parked, waiting for the checkpoint step they ask for.",
                {(): float(len(self.parked))},
                [],
            ),
        ]

    def write_stats(self) -> None:
        if self.cfg.stats_path is not None:
            tmp = self.cfg.stats_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.stats()))
            tmp.replace(self.cfg.stats_path)

    def close(self) -> None:
        self.view.stop()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.bank.close()
        self.verdicts.close()
        self.crashes.close()
        if self.indexes is not None:
            self.indexes.leases.close()

    # Broken checkpoints ---------------------------------------------------------------------
    async def broken(self, spec: NamespaceSpec) -> set[str]:
        """The sha256 of the namespace's checkpoints known not to serve: this worker's own
        findings, and every worker's from the bank (read again every ``BROKEN_TTL_S``)."""
        key = (spec.name, spec.created_at)
        cached = self._broken.get(key)
        if cached is not None and time.monotonic() - cached[0] < BROKEN_TTL_S:
            return cached[1]
        found = await self._run(self.verdicts.broken, spec.name, spec.created_at)
        known = set(found) | (cached[1] if cached is not None else set())
        self._broken[key] = (time.monotonic(), known)
        return known

    async def mark_broken(
        self, spec: NamespaceSpec, manifest: CheckpointManifest, reason: str
    ) -> None:
        """Remember, durably, that ``manifest``'s checkpoint cannot serve."""
        known = await self.broken(spec)
        known.add(manifest.sha256)
        await self._run(
            self.verdicts.mark_broken,
            spec.name,
            spec.created_at,
            manifest.sha256,
            manifest.step,
            reason,
        )

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
        delay = 0.2
        while True:  # until delivered: only then may the record's offset be committed
            try:
                delivered = await self.t_deadletter.send(
                    key=msg.topic.encode(), value=encode(letter)
                )
                await delivered
                metrics.DEAD_LETTERS.labels(metrics.error_label(error)).inc()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never a crash: Kafka away, or the letter refused
                if letter.raw and "TooLarge" in type(exc).__name__:
                    letter = without_raw(letter, type(exc).__name__)
                    continue
                log.warning(
                    "dead letter for %s[%d]@%d not delivered (%r); retrying in %.1f s",
                    msg.topic,
                    msg.partition,
                    msg.offset,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.cfg.max_backoff_s)

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
    async def _on_manifest_records(self, event: Any, _records: Sequence[Any]) -> None:
        await self._on_manifest(event)

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
        broken = await self.broken(spec)
        if manifest.sha256 in broken:
            log.info("ignoring %s step %d: known not to serve", ns, manifest.step)
            return
        if ahead := self.view.too_far_ahead(manifest, broken):
            newest_step = manifest.step - ahead - self.cfg.max_step_ahead
            reason = (
                f"checkpoint {ns} step {manifest.step} is {manifest.step - newest_step} steps "
                f"ahead of the newest, step {newest_step} (at most {self.cfg.max_step_ahead}: "
                "the worker's max_step_ahead); the newest keeps serving"
            )
            await self._dead_letter(event, reason, "StepTooFarAhead")
            return
        self.view.offer(manifest)
        newest = self.view.latest(ns, broken)
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
            reason = f"checkpoint {ns} step {manifest.step} cannot serve ({exc}); the "
            await self.mark_broken(spec, manifest, str(exc))
            await self._dead_letter(event, reason + "previous model keeps serving", exc)
            return
        campaign = f"{ns}@{manifest.step}-{uuid.uuid4().hex[:6]}"
        buckets = [await self._run(self.bank.example_ids, ns, b) for b in range(spec.buckets)]
        total = sum(len(ids) for ids in buckets)
        # A namespace big enough for a neighbour index is refreshed in two phases: every
        # other kind at once while the index is built (here, or loaded if another worker
        # built it), then the neighbours, queried from the index's own vectors.
        staged = (
            "neighbours" in self.maker.kinds_for(spec, ())
            and total >= self.cfg.neighbours_exact_below
        )
        first = tuple(k for k in spec.kinds if k != "neighbours") if staged else ()
        if staged and self.consumer.owns_all(self.cfg.topics.examples):
            # Every batch of the first phase comes to this worker: the pool takes their
            # embeddings as they are made instead of fetching and inferring them again.
            self.maker.collect(spec, manifest, [i for ids in buckets for i in ids])
        # announced before its batches go out, so that every worker's progress on them
        # comes after it (the campaigns' metrics count from the announcement)
        await self._progress(ns, "embedding", manifest.step, 0, total, campaign)
        await self._publish_campaign(ns, manifest.step, campaign, buckets, first)
        log.info("campaign %s: %d ids of %s for step %d", campaign, total, ns, manifest.step)
        if staged:
            await self._run(self.maker.prepare_pool, spec, manifest)
            await self._publish_campaign(ns, manifest.step, campaign, buckets, ("neighbours",))
            log.info("campaign %s: neighbours of %d ids published", campaign, total)
        if "propagated" in self.maker.kinds_for(spec, ()):
            # The whole namespace at once, from the step's pool: here, not per batch.
            try:
                written = await self._run(self.maker.propagate, spec, manifest)
            except CarlsError as exc:  # e.g. a label beyond the kind's classes
                reason = f"labels of {ns} step {manifest.step} not propagated: {exc}"
                await self._dead_letter(event, reason, exc)
            else:
                await self._progress(ns, "propagated", manifest.step, written, total, campaign)
        self.campaigned[ns] = generation

    async def _publish_campaign(
        self,
        ns: str,
        step: int,
        campaign: str,
        buckets: list[list[str]],
        kinds: tuple[str, ...],
    ) -> None:
        """Publish a campaign's id batches (of ``kinds``; all when empty) to ``examples``."""
        suffix = "/" + ",".join(kinds) if kinds else ""
        for bucket, ids in enumerate(buckets):
            for s in range(0, len(ids), self.cfg.campaign_batch_ids):
                batch = ExampleBatch(
                    namespace=ns,
                    ids=ids[s : s + self.cfg.campaign_batch_ids],
                    priority="refresh",
                    step=step,
                    campaign=campaign,
                    kinds=list(kinds),
                )
                key = f"{ns}/{bucket}/{s}{suffix}".encode()
                await self.t_examples.send(key=key, value=encode(batch))

    async def _model_manifest(
        self, spec: NamespaceSpec, step: int, wait_s: float = 30.0
    ) -> CheckpointManifest | None:
        """The manifest to serve namespace ``spec`` with: the newest known not to be
        broken (waiting up to ``wait_s`` for one at least ``step``)."""
        ns = spec.name
        self.view.forget_before(ns, spec.created_at)
        broken = await self.broken(spec)
        manifest = await self._run(self.view.wait_for, ns, step, wait_s, frozenset(broken))
        if manifest is not None and manifest.created_at < spec.created_at:
            return None
        return manifest

    async def _on_batches(self, records: Sequence[Any]) -> None:
        """One fetch of id-batch records (from ``demand`` and/or ``examples``)."""
        started = time.time()
        if self.first_batch_at is None:
            self.first_batch_at = started
        try:
            await self.guarded(self.ids_group, records, self._process_records)
        finally:
            self.busy_s += time.time() - started
            self.last_batch_at = time.time()

    # The failure policy -----------------------------------------------------------------------
    async def guarded(
        self,
        group: str,
        records: Sequence[Any],
        handle: Callable[[Sequence[Any]], Awaitable[None]],
    ) -> None:
        """``handle(records)`` for Kafka ``records`` read in consumer ``group``, under the one
        failure policy of the makers (README, "What happens when things fail"): bad data
        is dead-lettered inside ``handle``; a server away is retried there (``_run``); a
        bug is recorded against the records in the bank and crashes the worker, nothing
        committed. Records that were in hand at a crash are handled one at a time, so a
        later crash blames only its own record; one that crashed ``max_crashes`` workers
        is dead-lettered as a suspected poison pill instead of crashing them forever."""
        counts = await self._crash_counts(group, records)
        if not counts:
            await self._crash_on_bug(group, records, handle)
            return
        for record in records:
            n = counts.get(record_key(record.topic, record.partition, record.offset), 0)
            if n >= self.cfg.max_crashes:
                reason = f"suspected poison pill: {n} workers crashed while handling it"
                await self._dead_letter(record, reason, "PoisonPill")
            else:
                await self._crash_on_bug(group, [record], handle)

    async def _crash_on_bug(
        self,
        group: str,
        records: Sequence[Any],
        handle: Callable[[Sequence[Any]], Awaitable[None]],
    ) -> None:
        try:
            await handle(records)
        except Exception as exc:
            keys = [record_key(r.topic, r.partition, r.offset) for r in records]
            log.exception("a bug while handling %s: the worker stops, nothing committed", keys)
            await self._run(self.crashes.crashed, group, keys, repr(exc)[:500])
            self._crash_seen.clear()  # counts changed: read them again
            raise

    async def _crash_counts(self, group: str, records: Sequence[Any]) -> dict[str, int]:
        """The crash counts of ``records``, from the bank at most every ``CRASHES_TTL_S``."""
        at, counts = self._crash_seen.get(group, (0.0, {}))
        if time.monotonic() - at >= CRASHES_TTL_S:
            counts = await self._run(self.crashes.crashes, group)
            self._crash_seen[group] = (time.monotonic(), counts)
        if not counts:
            return {}
        keys = (record_key(r.topic, r.partition, r.offset) for r in records)
        return {k: counts[k] for k in keys if k in counts}

    async def _process_records(self, records: Sequence[Any]) -> None:
        groups: dict[tuple[str, tuple[str, ...]], list[tuple[Any, ExampleBatch]]] = defaultdict(
            list
        )
        for record in records:
            metrics.RECORDS.labels(record.topic).inc()
            if record.value is None:  # a tombstone: no ids to make knowledge for
                log.info("%s[%d]@%d: a tombstone, skipped", *_where(record))
                continue
            try:
                batch = decode(bytes(record.value), ExampleBatch)
            except CarlsError as exc:
                await self._dead_letter(record, f"undecodable example batch: {exc}", exc)
                continue
            metrics.IDS.labels(record.topic).inc(len(batch.ids))
            groups[(batch.namespace, tuple(batch.kinds))].append((record, batch))
        for (ns, kinds), members in groups.items():
            if not await self._serve(ns, kinds, members):
                for record, _ in members:
                    self.consumer.hold(record)
                self.parked.append(_Parked(ns, kinds, members, time.monotonic()))

    async def retry_parked(self) -> None:
        """Serve the parked id batches whose checkpoint has come (or whose wait is over)."""
        parked, self.parked = self.parked, []
        for p in parked:
            live = [r for r, _ in p.members if self.consumer.owns(r)]
            if not live:  # rebalanced away: the partition's new owner replays them
                continue
            try:
                await self.guarded(self.ids_group, live, functools.partial(self._unpark, p))
            except Exception as exc:  # a bug: the consumer, and so the worker, stops
                await self.consumer.crash(exc)
                return

    async def _unpark(self, p: _Parked, records: Sequence[Any]) -> None:
        keep = {id(r) for r in records}
        members = [(r, b) for r, b in p.members if id(r) in keep]
        if await self._serve(p.namespace, p.kinds, members, p.since):
            for record, _ in members:
                self.consumer.release(record)
        else:
            self.parked.append(dataclasses.replace(p, members=members))

    async def _serve(
        self,
        ns: str,
        kinds: tuple[str, ...],
        members: list[tuple[Any, ExampleBatch]],
        parked_since: float | None = None,
    ) -> bool:
        """Make and write the knowledge of one namespace's id batches, or dead-letter them;
        False (nothing done) while the checkpoint they need has not come and they may
        still wait for it, parked."""
        step = max(b.step or 0 for _, b in members)
        try:
            spec = await self._run(self.bank.namespace, ns)
        except NamespaceError as exc:
            for record, _ in members:
                await self._dead_letter(record, f"unknown namespace: {exc}", exc)
            return True
        manifest = await self._model_manifest(spec, step, wait_s=0.0)
        if manifest is None or manifest.step < step:
            waited = time.monotonic() - parked_since if parked_since is not None else 0.0
            if waited < self.cfg.park_s:
                return False
        ids = [i for _, b in members for i in b.ids]
        outcome: Outcome | None = None
        failures: list[str] = []
        try:
            while manifest is not None and outcome is None:
                try:
                    outcome = await self._run(self.maker.process, spec, manifest, ids, kinds)
                except (CheckpointError, BadModelOutputError, DimensionError) as exc:
                    # Believed until it failed to load: recorded, and the one before serves
                    await self.mark_broken(spec, manifest, str(exc))
                    failures.append(f"step {manifest.step}: {exc}")
                    manifest = await self._model_manifest(spec, 0, wait_s=0.0)
        except CarlsError as exc:  # bad data: unknown namespace, invalid ids ...
            for record, _ in members:
                await self._dead_letter(record, str(exc), exc)
            return True
        if outcome is None:
            why = "; ".join(failures) if failures else f"none published in {self.cfg.park_s:g} s"
            for record, _ in members:
                await self._dead_letter(
                    record, f"no checkpoint of namespace {ns} can serve ({why})", "NoCheckpoint"
                )
            return True
        campaign = members[0][1].campaign
        for kind, n in outcome.written.items():
            metrics.KNOWLEDGE_WRITTEN.labels(kind).inc(n)
            await self._progress(ns, kind, outcome.step, n, None, campaign)
        if outcome.unregistered:  # bad input, kept: each record that named such ids
            unknown = set(outcome.unregistered)
            for record, batch in members:
                missing = [i for i in batch.ids if i in unknown]
                if missing:
                    reason = (
                        f"{len(missing)} of its {len(batch.ids)} ids are not registered "
                        f"examples of namespace {ns} (e.g. {missing[0]!r}); the others were made"
                    )
                    await self._dead_letter(record, reason, "UnregisteredIds")
        return True


def _where(record: Any) -> tuple[str, int, int]:
    return record.topic, record.partition, record.offset


@dataclass(frozen=True, slots=True)
class _Parked:
    """Id batches of one namespace waiting for their checkpoint (held uncommitted)."""

    namespace: str
    kinds: tuple[str, ...]
    members: list[tuple[Any, ExampleBatch]]
    since: float


def run_worker(
    cfg: WorkerConfig,
    bank: KnowledgeBank,
    verdicts: CheckpointVerdicts,
    crashes: RecordCrashes,
    artifacts: ArtifactStore,
    loglevel: str = "warning",
    indexes: SharedIndexes | None = None,
    hypergraphs: HypergraphMaker | None = None,
) -> None:
    """Run a worker in the foreground until SIGINT/SIGTERM."""
    if cfg.data_dir is not None:
        cfg.data_dir.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    log.info("TensorFlow ready in %.1f s", warm_up())  # before joining: the first
    # checkpoint then costs a load, not the libraries' start-up
    makers = Makers(cfg, bank, verdicts, crashes, artifacts, indexes, hypergraphs)
    campaigns = CampaignTracker(cfg.kafka, cfg.topics.progress).start()
    collectors = [metrics.register(makers.families), metrics.register(campaigns.families)]
    # Everything imported so far (TensorFlow, Faust) lives as long as the process: keep it
    # out of the collector's scans, which otherwise slow every allocation-heavy fetch.
    gc.freeze()
    try:
        run_app(makers.app, loglevel)
    finally:
        for c in collectors:
            metrics.unregister(c)
        campaigns.stop()
        makers.close()
