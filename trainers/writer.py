"""``KnowledgeWriter``: knowledge a trainer publishes itself (a message channel's messages
and feedback), written to the bank from a thread of its own.

Training never waits on the bank: ``put`` hands a batch over and returns. Only the newest
batch of each kind waits to be written (an older one still queued is replaced: it is
superseded); a bank that is away is retried with backoff while newer batches keep
replacing the queued one. ``close`` writes what is queued, waiting up to ``wait_s``.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from carls.bank.protocol import KnowledgeStore
from carls.bank.types import KnowledgeBatch, Lineage
from carls.schemas.errors import CarlsError

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Sent:
    """What one kind's publications amounted to."""

    batches: int = 0
    rows: int = 0
    bytes: int = 0
    superseded: int = field(default=0)
    """Batches replaced by a newer one before they were written."""


class KnowledgeWriter:
    """Writes ``(kind, batch)`` of ``namespace`` to ``bank`` in the background."""

    def __init__(self, bank: KnowledgeStore, namespace: str, maker: str) -> None:
        self.bank = bank
        self.namespace = namespace
        self.maker = maker
        self.sent: dict[str, Sent] = {}
        self._pending: dict[str, tuple[KnowledgeBatch, int]] = {}
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="knowledge-writer", daemon=True)
        self._thread.start()

    def put(self, kind: str, batch: KnowledgeBatch, step: int) -> None:
        with self._cond:
            if kind in self._pending:
                self.sent.setdefault(kind, Sent()).superseded += 1
            self._pending[kind] = (batch, step)
            self._cond.notify()

    def close(self, wait_s: float = 30.0) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout=wait_s)
        if self._thread.is_alive():
            log.warning(
                "%s: knowledge not yet written after %.0f s is dropped", self.namespace, wait_s
            )

    def _run(self) -> None:
        pause = 0.2
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    return
                kind, (batch, step) = next(iter(self._pending.items()))
                del self._pending[kind]
            try:
                self.bank.write(self.namespace, kind, batch, Lineage(step, self.maker))
            except CarlsError as exc:
                if not exc.retriable:
                    log.error("%s %s step %d: not written: %s", self.namespace, kind, step, exc)
                    continue
                log.warning("%s: bank away (%s); retrying in %.1f s", self.namespace, exc, pause)
                with self._cond:
                    self._pending.setdefault(kind, (batch, step))  # unless a newer came
                    if self._closing:
                        return
                    self._cond.wait(pause)
                pause = min(2 * pause, 8.0)
                continue
            except Exception:  # a bug or an unexpected reply: this batch is lost, not the rest
                log.exception("%s %s step %d: not written", self.namespace, kind, step)
                continue
            pause = 0.2
            s = self.sent.setdefault(kind, Sent())
            s.batches += 1
            s.rows += len(batch.ids)
            s.bytes += int(batch.values.nbytes)
