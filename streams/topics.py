"""The topics carls uses, and their idempotent creation.

Names are ``<prefix>.<role>`` (prefix ``carls`` by default), so tests and parallel
deployments can share one cluster without touching each other's records.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType, NewPartitions, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from carls.streams.config import KafkaConnection
from carls.streams.errors import TopicSetupError

log = logging.getLogger(__name__)

ROLES = ("jobs", "checkpoints", "examples", "demand", "progress", "deadletter")


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    replication: int = 1
    configs: dict[str, str] = field(default_factory=dict)
    grow: bool = False
    """An existing topic with fewer partitions gets more (only where keys carry no order)."""


@dataclass(frozen=True, slots=True)
class Topics:
    """The names of the carls topics under one prefix."""

    prefix: str = "carls"

    @property
    def jobs(self) -> str:
        return f"{self.prefix}.jobs"

    @property
    def checkpoints(self) -> str:
        return f"{self.prefix}.checkpoints"

    @property
    def examples(self) -> str:
        return f"{self.prefix}.examples"

    @property
    def demand(self) -> str:
        """Id batches trainers need soon: makers serve them ahead of ``examples``."""
        return f"{self.prefix}.demand"

    @property
    def progress(self) -> str:
        return f"{self.prefix}.progress"

    @property
    def deadletter(self) -> str:
        return f"{self.prefix}.deadletter"


def topic_specs(topics: Topics, partitions: dict[str, int], replication: int) -> list[TopicSpec]:
    """The declared topics. ``checkpoints`` is compacted and keyed by namespace, so the
    newest manifest of every namespace is kept forever and a new worker learns them all.
    With several copies, a write needs a majority of them in sync."""
    configs = {
        "checkpoints": {
            "cleanup.policy": "compact",
            "min.cleanable.dirty.ratio": "0.1",
            "segment.ms": "3600000",
        },
        "deadletter": {"retention.ms": str(30 * 24 * 3600 * 1000)},
    }
    if replication > 1:  # a write needs a majority of the copies in sync (acks=all)
        durable = {"min.insync.replicas": str(replication // 2 + 1)}
        configs = {role: {**configs.get(role, {}), **durable} for role in ROLES}
    return [
        TopicSpec(
            getattr(topics, role),
            partitions.get(role, 1),
            replication,
            configs.get(role, {}),
            grow=role == "jobs",  # trainers take jobs by lease, not by partition order
        )
        for role in ROLES
    ]


def ensure_topics(
    conn: KafkaConnection, specs: list[TopicSpec], timeout_s: float = 30.0
) -> list[str]:
    """Create the topics that do not exist yet; return the names created.

    An existing topic with fewer partitions than declared is an error (Kafka can add
    partitions, but that reshuffles keys, so it is left to the operator), except for a
    topic declared to ``grow`` (the jobs topic), which is given the partitions it lacks."""
    admin = KafkaAdminClient(**conn.kafka_python(), request_timeout_ms=int(timeout_s * 1000))
    try:
        existing = set(admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if missing:
            # Another process may create one between our list and create: that is fine.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(
                    [
                        NewTopic(s.name, s.partitions, s.replication, topic_configs=s.configs)
                        for s in missing
                    ],
                    timeout_ms=int(timeout_s * 1000),
                )
        for spec in specs:
            if spec.name in existing:
                _check_partitions(admin, spec)
        return [s.name for s in missing]
    except KafkaError as exc:
        raise TopicSetupError(f"could not create topics: {exc}") from exc
    finally:
        admin.close()


def _check_partitions(admin: KafkaAdminClient, spec: TopicSpec) -> None:
    described = admin.describe_topics([spec.name])
    have = len(described[0].get("partitions", [])) if described else 0
    if have < spec.partitions and spec.grow:
        admin.create_partitions({spec.name: NewPartitions(total_count=spec.partitions)})
        log.info("topic %s: %d partitions, grown to %d", spec.name, have, spec.partitions)
        return
    if have < spec.partitions:
        raise TopicSetupError(
            f"topic {spec.name} has {have} partitions, settings declare {spec.partitions}; "
            "add partitions with Kafka's tools or lower the setting"
        )


def topic_configs(conn: KafkaConnection, names: list[str]) -> dict[str, dict[str, str]]:
    """The effective configs of ``names`` as the broker reports them."""
    admin = KafkaAdminClient(**conn.kafka_python())
    try:
        result = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, n) for n in names]
        )
    finally:
        admin.close()
    return _configs_by_topic(result)


def _configs_by_topic(
    result: dict[str, dict[str, dict[str, dict[str, object]]]],
) -> dict[str, dict[str, str]]:
    return {
        name: {key: str(entry.get("value")) for key, entry in configs.items()}
        for name, configs in result.get("topic", {}).items()
    }
