"""Calling the bank while it is away: retry with a backoff that doubles, until it answers
or the caller's ``stop`` says to give up (then the last ``BankUnavailableError`` is
raised). Used where waiting is right: a job's state, which a trainer must not lose."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from carls.bank.errors import BankUnavailableError

log = logging.getLogger(__name__)
T = TypeVar("T")


def past(deadline: float) -> Callable[[float], bool]:
    """A ``stop`` for :func:`retry_unavailable`: true once the next pause would end after
    ``deadline`` (a ``time.monotonic()`` time)."""
    return lambda pause: time.monotonic() + pause > deadline


def retry_unavailable(
    call: Callable[[], T],
    what: str,
    *,
    stop: Callable[[float], bool] = lambda _pause: False,
    wait: Callable[[float], object] = time.sleep,
    first_s: float = 0.5,
    most_s: float = 8.0,
) -> T:
    """``call()``; while it raises ``BankUnavailableError``, log and ``wait(pause)`` (0.5 s,
    doubling to 8 s) and call again, unless ``stop(pause)`` is true: then raise it."""
    pause = first_s
    while True:
        try:
            return call()
        except BankUnavailableError as exc:
            if stop(pause):
                raise
            log.warning("%s failed (%s); retrying in %.1f s", what, exc, pause)
            wait(pause)
            pause = min(2 * pause, most_s)
