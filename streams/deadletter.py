"""The one place bad records are handled: turned into a ``DeadLetter`` with the reason and
the source topic/partition/offset and the raw bytes, never dropped, never a crash.

A dead letter always fits on its topic: a record's raw bytes are carried whole up to
``MAX_RAW_BYTES`` and cut to that many beyond (base64 makes them a third larger on the
wire, and the source record may itself be near Kafka's limit); the original's size and
sha256 are carried either way, and the reason is cut to ``MAX_REASON_CHARS``.
"""

from __future__ import annotations

import hashlib
import logging
import time

from carls.schemas import DeadLetter

log = logging.getLogger(__name__)
MAX_RAW_BYTES = 64 * 1024
MAX_REASON_CHARS = 4000


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
    raw = bytes(raw)
    reason = reason or kind
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[: MAX_REASON_CHARS - 20] + f" … ({len(reason)} chars)"
    log.warning("dead-lettering %s[%d]@%d: %s (%s)", topic, partition, offset, reason, kind)
    return DeadLetter(
        reason=reason,
        error=kind[:200],
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        raw=raw[:MAX_RAW_BYTES],
        at=time.time(),
        worker=worker,
        raw_size=len(raw),
        raw_sha256=hashlib.sha256(raw).hexdigest(),
        raw_truncated=len(raw) > MAX_RAW_BYTES,
    )


def without_raw(letter: DeadLetter, why: str) -> DeadLetter:
    """``letter`` with no raw bytes (size and sha256 kept), for when even the cut letter
    cannot be produced; ``why`` is added to the reason."""
    import dataclasses

    return dataclasses.replace(
        letter, raw=b"", raw_truncated=True, reason=f"{letter.reason} [raw bytes left out: {why}]"
    )
