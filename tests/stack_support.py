"""What tests on the real stack share: topics of their own under a unique prefix, ``carls
worker`` subprocesses, committed offsets, dead letters, and the clean-up afterwards."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from carls.bank.blobs import CassandraBlobs
from carls.bank.cassandra import CassandraBank
from carls.bank.errors import NamespaceError
from carls.schemas import DeadLetter, ProgressEvent, decode
from carls.settings import Settings
from carls.streams.groups import wait_stable
from carls.streams.producer import Publisher
from carls.streams.topics import ensure_topics, topic_specs


def prefixed_settings(letter: str) -> Settings:
    """Settings on a fresh topic prefix (``<letter><hex>``), its topics created."""
    settings = Settings(topic_prefix=letter + uuid.uuid4().hex[:10])
    specs = topic_specs(settings.topics, settings.partitions, settings.topic_replication)
    ensure_topics(settings.kafka, specs)
    return settings


def remove(settings: Settings, bank: CassandraBank, namespaces: list[str]) -> None:
    """Drop ``namespaces`` with their stored checkpoints and neighbour indexes, and delete
    the prefix's topics,
    the workers' own among them (best effort: it is unique)."""
    blobs = CassandraBlobs(bank.connection).start()
    for ns in namespaces:
        with contextlib.suppress(NamespaceError):
            bank.drop_namespace(ns)
        blobs.delete_scope(f"checkpoints/{ns}")
        blobs.delete_scope(f"indexes/{ns}")
    admin = KafkaAdminClient(**settings.kafka.kafka_python())
    try:
        with contextlib.suppress(Exception):
            mine = (settings.topic_prefix + ".", settings.topic_prefix + "-")  # and Faust's
            admin.delete_topics([t for t in admin.list_topics() if t.startswith(mine)])
    finally:
        admin.close()


def committed_offsets(settings: Settings, group: str) -> dict[tuple[str, int], int]:
    """``group``'s committed offsets, by (topic, partition)."""
    admin = KafkaAdminClient(**settings.kafka.kafka_python())
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
    finally:
        admin.close()
    return {(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items()}


class ProgressReader:
    """The workers' progress events for one namespace, read from the progress topic as
    they come (from the moment this reader starts)."""

    def __init__(self, settings: Settings, ns: str) -> None:
        self.ns = ns
        self.events: list[ProgressEvent] = []
        self.consumer = KafkaConsumer(**settings.kafka.kafka_python(), enable_auto_commit=False)
        topic = settings.topics.progress
        tps = [TopicPartition(topic, p) for p in self.consumer.partitions_for_topic(topic)]
        self.consumer.assign(tps)
        self.consumer.seek_to_end(*tps)
        for tp in tps:  # resolved now, not at the first poll: nothing later is missed
            self.consumer.position(tp)

    def embedded(self, step: int, until: float = float("inf")) -> int:
        """Ids whose embeddings at ``step`` the workers reported written by ``until``."""
        deadline = time.monotonic() + 5.0  # all that has come so far, within reason
        while time.monotonic() < deadline and (batch := self.consumer.poll(timeout_ms=200)):
            for records in batch.values():
                for r in records:
                    event = decode(r.value, ProgressEvent)
                    if event.namespace == self.ns:
                        self.events.append(event)
        return sum(
            e.processed
            for e in self.events
            if e.kind == "embedding" and e.step == step and e.total is None and e.at <= until
        )

    def close(self) -> None:
        self.consumer.close()


def read_dead_letters(settings: Settings, count: int, timeout: float) -> list[DeadLetter]:
    """The dead letters under ``settings``' prefix, from the start, until ``count`` arrived
    or ``timeout`` passed."""
    topic = settings.topics.deadletter
    consumer = KafkaConsumer(**settings.kafka.kafka_python(), enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        letters: list[DeadLetter] = []
        deadline = time.monotonic() + timeout
        while len(letters) < count and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                letters += [decode(r.value, DeadLetter) for r in records]
        return letters
    finally:
        consumer.close()


class StackEnv:
    """A topic prefix with its topics, the bank, a publisher, ``carls worker`` processes in
    one group (``<prefix>-makers``), and the namespaces the test made; ``close`` stops the
    workers and removes the namespaces and topics."""

    def __init__(self, tmp: Path, letter: str) -> None:
        self.tmp = tmp
        self.settings = prefixed_settings(letter)
        self.prefix = self.settings.topic_prefix
        self.group = f"{self.prefix}-makers"
        self.bank = CassandraBank(self.settings.cassandra).start()
        self.publisher = Publisher(self.settings.kafka, self.settings.topics)
        self.namespaces: list[str] = []
        self.workers: list[subprocess.Popen[bytes]] = []
        self.checkpoints = tmp / "ckpt"
        """The checkpoint store: where trainers write and workers load from."""

    def start_worker(self, *extra: str) -> subprocess.Popen[bytes]:
        """A worker subprocess; its log and Faust data folder land in the test's tmp."""
        log = (self.tmp / f"worker-{len(self.workers)}.log").open("wb")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "carls",
                "worker",
                "--app-id",
                self.group,
                "--session-timeout",
                "6",
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                "CARLS_TOPIC_PREFIX": self.prefix,
                "CARLS_CHECKPOINT_ROOT": str(self.checkpoints),
            },
            cwd=self.tmp,
            start_new_session=True,
        )
        self.workers.append(proc)
        return proc

    def wait_members(self, n: int, timeout: float = 90.0) -> None:
        """Wait until ``n`` workers share the id batches (and the checkpoints are read)."""
        try:
            wait_stable(
                self.settings.kafka,
                {self.group: 1, f"{self.group}-ids": n},
                timeout=timeout,
                check=self.assert_workers_alive,
            )
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{self.worker_logs()}") from exc

    def assert_workers_alive(self) -> None:
        """Fail if a worker exited, unless the test killed it with SIGKILL."""
        for proc in self.workers:
            if proc.poll() is not None and proc.returncode != -signal.SIGKILL:
                raise AssertionError(f"a worker exited ({proc.returncode}):\n{self.worker_logs()}")

    def worker_logs(self) -> str:
        return "\n".join(
            (self.tmp / f"worker-{i}.log").read_text(errors="replace")[-3000:]
            for i in range(len(self.workers))
        )

    def dead_letters(self, count: int, timeout: float = 60.0) -> list[DeadLetter]:
        return read_dead_letters(self.settings, count, timeout)

    def close(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.workers:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
        self.publisher.close()
        try:
            remove(self.settings, self.bank, self.namespaces)
        finally:
            self.bank.close()


def in_background(run: Callable[[], Any], name: str) -> tuple[threading.Thread, dict[str, Any]]:
    """Start ``run`` in a thread; its result lands in ``outcome["state"]``, or what it
    raised in ``outcome["error"]``."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["state"] = run()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=name)
    thread.start()
    return thread, outcome
