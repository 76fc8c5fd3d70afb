"""Consumer groups: the trainers' jobs consumer, and checks of when workers have joined
and been given their partitions."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from kafka import KafkaAdminClient, KafkaConsumer
from kafka.errors import CoordinatorNotAvailableError, NotCoordinatorError

from carls.streams.config import KafkaConnection

# kafka-python cannot parse the member metadata of Faust's own assignor and warns with the
# raw bytes on every describe; the state and member count, all that is read here, are fine.
logging.getLogger("kafka.admin._groups").addFilter(
    lambda record: "member_metadata" not in record.getMessage()
)


def group_members(admin: KafkaAdminClient, group: str) -> tuple[str, int]:
    """The group's state (``Stable``, ``PreparingRebalance``, ``Dead`` ...) and members;
    ``NoCoordinator`` while the cluster has no coordinator for it yet (a new cluster still
    making its offsets topic, or a broker gone and its groups moving)."""
    try:
        described = admin.describe_groups([group]).get(group, {})
    except (CoordinatorNotAvailableError, NotCoordinatorError):
        return "NoCoordinator", 0
    return str(described.get("group_state", "Dead")), len(described.get("members", []))


def wait_stable(
    conn: KafkaConnection,
    groups: Mapping[str, int],
    *,
    timeout: float = 120.0,
    check: Callable[[], None] = lambda: None,
) -> None:
    """Wait until every group in ``groups`` is ``Stable`` with at least its number of
    members. ``check`` runs on each poll (to fail fast when a worker died); raises
    ``TimeoutError`` naming the groups that are not there yet."""
    admin = KafkaAdminClient(**conn.kafka_python())
    try:
        deadline = time.monotonic() + timeout
        while True:
            check()
            seen = {g: group_members(admin, g) for g in groups}
            missing = {g: s for g, s in seen.items() if s[0] != "Stable" or s[1] < groups[g]}
            if not missing:
                return
            if time.monotonic() > deadline:
                detail = ", ".join(
                    f"{g} ({state}, {n} of {groups[g]} members)"
                    for g, (state, n) in missing.items()
                )
                raise TimeoutError(f"consumer groups not ready in {timeout:.0f} s: {detail}")
            time.sleep(0.5)
    finally:
        admin.close()


def job_consumer(conn: KafkaConnection, topic: str, group: str) -> KafkaConsumer:
    """The consumer ``carls trainer`` reads jobs with: one record per poll, offsets
    committed by hand after a job's end is recorded, and up to an hour between polls (a
    job runs between them)."""
    return KafkaConsumer(
        topic,
        **conn.kafka_python(),
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=1,
        max_poll_interval_ms=3_600_000,
    )
