"""The one place bad records are handled: turned into a ``DeadLetter`` with the reason and
the source topic/partition/offset and the raw bytes, never dropped, never a crash."""

from __future__ import annotations

import logging
import time

from carls.schemas import DeadLetter

log = logging.getLogger(__name__)


def dead_letter(
    reason: str,
    error: BaseException | str,
    topic: str,
    partition: int,
    offset: int,
    raw: bytes,
    worker: str = "",
) -> DeadLetter:
    """Build the dead letter for a record that could not be processed, and log it."""
    kind = error if isinstance(error, str) else type(error).__name__
    log.warning("dead-lettering %s[%d]@%d: %s (%s)", topic, partition, offset, reason, kind)
    return DeadLetter(
        reason=reason or kind,
        error=kind,
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        raw=bytes(raw),
        at=time.time(),
        worker=worker,
    )
