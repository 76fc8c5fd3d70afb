"""Progress that moves: bars redrawn in place on a terminal, plain lines elsewhere, JSON
lines for scripts.

``Display`` draws a block of lines: on a terminal it redraws them in place (cursor up,
clear line); when the output is not a terminal (a log file, a pipe) it writes the block
again only when its text changed, and at most every ``plain_every_s`` seconds; with
``as_json`` it writes one JSON object per update to stdout instead. ``Rate`` turns a count
that grows into a rate and an ETA.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, TextIO, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])
BAR_WIDTH = 24


def bar(fraction: float, width: int = BAR_WIDTH) -> str:
    """``[#########...........]`` for a fraction in [0, 1]."""
    f = min(1.0, max(0.0, fraction))
    full = round(f * width)
    return "[" + "#" * full + "." * (width - full) + "]"


def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class Rate:
    """The rate of a growing count over the last ``window_s`` seconds, and the time left
    to reach a total at that rate. ``reset`` starts over (e.g. a new checkpoint step)."""

    def __init__(self, window_s: float = 30.0) -> None:
        self.window_s = window_s
        self._points: deque[tuple[float, float]] = deque()

    def reset(self) -> None:
        self._points.clear()

    def add(self, count: float, at: float | None = None) -> None:
        now = time.monotonic() if at is None else at
        self._points.append((now, count))
        while len(self._points) > 2 and now - self._points[0][0] > self.window_s:
            self._points.popleft()

    @property
    def per_s(self) -> float | None:
        if len(self._points) < 2:
            return None
        (t0, c0), (t1, c1) = self._points[0], self._points[-1]
        return (c1 - c0) / (t1 - t0) if t1 > t0 else None

    def eta_s(self, total: float) -> float | None:
        rate = self.per_s
        if rate is None or rate <= 0 or not self._points:
            return None
        return max(0.0, (total - self._points[-1][1]) / rate)


class Display:
    """Where progress goes: ``update(lines, record)`` on each poll."""

    def __init__(
        self,
        as_json: bool = False,
        stream: TextIO | None = None,
        tty: bool | None = None,
        plain_every_s: float = 10.0,
    ) -> None:
        self.as_json = as_json
        self.stream = stream if stream is not None else sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.plain_every_s = plain_every_s
        self._drawn = 0  # lines drawn last time (terminal)
        self._last_text: str | None = None
        self._last_at = -float("inf")

    def _columns(self) -> int:
        try:
            return os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            return 0

    def new_block(self) -> None:
        """What comes next is drawn below what is there (a new phase), not over it."""
        self._drawn = 0
        self._last_text = None
        self._last_at = -float("inf")

    def update(self, lines: Sequence[str], record: dict[str, Any], final: bool = False) -> None:
        if self.as_json:
            self.stream.write(json.dumps(record, sort_keys=True, default=str) + "\n")
            self.stream.flush()
            return
        text = "\n".join(lines)
        if self.tty:
            # a line wider than the terminal would wrap and the cursor would not come back
            # over it: each is cut to the width; what is left of a longer block is cleared
            columns = self._columns()  # 0: a terminal that does not say (lines kept whole)
            width = max(20, columns - 1) if columns > 0 else None
            up = f"\x1b[{self._drawn}F" if self._drawn else ""
            body = "".join(f"\x1b[2K{line[:width]}\n" for line in lines)
            self.stream.write(up + body + "\x1b[J")
            self._drawn = len(lines)
            self.stream.flush()
            return
        now = time.monotonic()
        changed = text != self._last_text
        if changed and (final or now - self._last_at >= self.plain_every_s):
            stamp = time.strftime("%H:%M:%S")
            self.stream.write("".join(f"{stamp} {line}\n" for line in lines))
            self.stream.flush()
            self._last_text, self._last_at = text, now


def interval_option(what: str) -> Callable[[F], F]:
    """The ``--interval`` option of a command that looks again and again."""
    return click.option(
        "--interval",
        type=click.FloatRange(0.2, 3600),
        default=2.0,
        show_default=True,
        help=f"Seconds between looks ({what}).",
    )
