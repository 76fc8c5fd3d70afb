"""Steady-state consumption rate, shared by every consumer ``carls bench makers`` times."""

from __future__ import annotations

import time


class SteadyRate:
    """Records/s once the first ``warmup`` share of ``total`` records went by.

    Start-up (joining a group, the first fetches, records prefetched before the first
    one is handed over) costs each consumer differently; leaving the same share out for
    every consumer compares what they do in the long run.
    """

    def __init__(self, total: int, warmup: float = 0.1) -> None:
        self.total = total
        self.start_at = max(1, int(total * warmup))
        self.seen = 0
        self._t0: float | None = None
        self._seen0 = 0
        self.seconds: float | None = None

    def add(self, n: int) -> bool:
        """Count ``n`` more records; True once ``total`` were seen."""
        self.seen += n
        now = time.perf_counter()
        if self._t0 is None and self.seen >= self.start_at:
            self._t0, self._seen0 = now, self.seen
        if self.seconds is None and self.seen >= self.total and self._t0 is not None:
            self.seconds = now - self._t0
        return self.seconds is not None

    @property
    def timed(self) -> int:
        """Records inside the timed window."""
        return self.seen - self._seen0

    @property
    def per_s(self) -> float:
        if self.seconds is None:
            raise RuntimeError(f"only {self.seen} of {self.total} records seen")
        return self.timed / max(self.seconds, 1e-9)
