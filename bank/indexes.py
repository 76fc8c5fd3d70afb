"""Neighbour indexes shared by every worker: one built per (namespace, step), not one each.

The first worker that needs the index of a (namespace, generation, step, checkpoint) takes
a **lease** on it (a lightweight transaction in the ``kv`` table, renewed while it works),
builds the index, uses it at once, and saves it to the bank's blob store (scope
``indexes/<namespace>``) in the background. Every other worker finds the lease taken,
waits for the blob, and loads it (sha256-checked, like a checkpoint). A builder that dies
stops renewing; its lease runs out and the next worker that asks takes it over. The
newest ``keep`` indexes of a namespace are kept, older ones deleted.

A lease's expiry is the claimer's wall clock: the machines' clocks must agree to well
within ``lease_s`` (NTP does).
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from carls.bank.ann import VectorIndex
from carls.bank.blobs import BlobInfo, BlobStore
from carls.bank.errors import BlobCorruptError, BlobMissingError
from carls.bank.kv import KvTable, MemoryKv
from carls.bank.retry import retry_unavailable

log = logging.getLogger(__name__)
_LEASES = "__leases__/"
SAVE_ATTEMPTS = 6
"""Tries at putting a built index in the bank before the others are left to build it."""
MAX_INDEX_BYTES = 64 << 30
"""The size limit of one saved index (far above the 1 GiB default of checkpoints: 64-d at
connectivity 16 is about 0.4 GB per million ids)."""

Pool = tuple[list[str], VectorIndex]


class Leases(Protocol):
    """Short-lived exclusive claims on a name, shared by every worker."""

    def claim(self, scope: str, name: str, holder: str, ttl_s: float) -> bool:
        """Hold ``scope/name`` for ``ttl_s`` seconds: True if it was free, had run out, or
        was already ``holder``'s (then renewed); False while another holds it."""
        ...

    def holder(self, scope: str, name: str) -> str | None:
        """Who holds ``scope/name`` now (None when free or run out)."""
        ...

    def release(self, scope: str, name: str, holder: str) -> None:
        """Give ``scope/name`` up, if ``holder`` holds it."""
        ...

    def close(self) -> None: ...


def _lease(holder: str, ttl_s: float) -> str:
    return json.dumps({"holder": holder, "until": time.time() + ttl_s})


def _live(raw: str | None) -> str | None:
    """The holder of a lease record, or None when it is absent or has run out."""
    if raw is None:
        return None
    rec = json.loads(raw)
    return str(rec["holder"]) if rec["holder"] and rec["until"] > time.time() else None


class _KvRecords(Protocol):
    def record(self, what: str, partition: str, key: str) -> str | None: ...
    def swap(self, what: str, partition: str, key: str, expected: str | None, new: str) -> bool: ...


class _KvLeases:
    """Leases over the ``kv`` records (``self``: a ``KvTable`` or a ``MemoryKv``), taken
    and handed on by compare-and-set (in Cassandra a lightweight transaction: of workers
    racing for one, exactly one wins)."""

    def claim(self: _KvRecords, scope: str, name: str, holder: str, ttl_s: float) -> bool:
        partition = _LEASES + scope
        current = self.record("read a lease", partition, name)
        owner = _live(current)
        if owner is not None and owner != holder:
            return False
        return self.swap("take a lease", partition, name, current, _lease(holder, ttl_s))

    def holder(self: _KvRecords, scope: str, name: str) -> str | None:
        return _live(self.record("read a lease", _LEASES + scope, name))

    def release(self: _KvRecords, scope: str, name: str, holder: str) -> None:
        partition = _LEASES + scope
        current = self.record("read a lease", partition, name)
        if current is not None and json.loads(current)["holder"] == holder:
            ended = json.dumps({"holder": "", "until": 0.0})
            self.swap("give a lease up", partition, name, current, ended)


class MemoryLeases(_KvLeases, MemoryKv):
    """Leases in this process's memory (for tests)."""


class CassandraLeases(_KvLeases, KvTable):
    """Leases in the ``kv`` table, partition ``__leases__/<scope>``."""


def index_name(generation: float, step: int, sha256: str) -> str:
    """The blob name of one index: sorts by namespace generation, then step."""
    return f"{_generation(generation)}-step-{step:012d}-{sha256[:16]}"


def _generation(generation: float) -> str:
    return f"g{round(generation * 1000):015d}"


def index_step(name: str) -> int:
    """The step of the index saved under ``name``."""
    return int(name.split("-step-", 1)[1].split("-", 1)[0])


def saved_index(
    blobs: BlobStore, namespace: str, generation: float, step: int | None = None
) -> BlobInfo | None:
    """The newest complete index of this generation of ``namespace`` (at ``step``, if
    given), or None."""
    prefix = f"{_generation(generation)}-step-" + (f"{step:012d}-" if step is not None else "")
    found = [i for i in blobs.entries(f"indexes/{namespace}") if i.name.startswith(prefix)]
    return found[-1] if found else None


def load_index(blobs: BlobStore, namespace: str, name: str, spool: Path | None = None) -> Pool:
    """The ids and index saved as ``name`` for ``namespace`` (read through a temporary
    file in ``spool``; sha256-checked)."""
    with tempfile.NamedTemporaryFile(dir=spool, prefix=".index-") as f:
        blobs.read(f"indexes/{namespace}", name, f)
        f.flush()
        return VectorIndex.load(Path(f.name))


class SharedIndexes:
    """Indexes built once per (namespace, generation, step, checkpoint) by whichever
    worker asks first, and loaded from the bank by the others (module docstring)."""

    def __init__(
        self,
        blobs: BlobStore,
        leases: Leases,
        holder: str,
        *,
        lease_s: float = 60.0,
        poll_s: float = 1.0,
        keep: int = 2,
        spool: Path | None = None,
    ) -> None:
        self.blobs = blobs
        self.leases = leases
        self.holder = holder
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.keep = keep
        self.spool = spool
        """Where index files are written and read on their way to and from the bank."""
        self.saving: dict[str, threading.Thread] = {}

    def get(
        self, namespace: str, generation: float, step: int, sha256: str, build: Callable[[], Pool]
    ) -> tuple[Pool, str]:
        """The index for this (namespace, generation, step, checkpoint) and where it came
        from: ``"loaded"`` from the bank, or ``"built"`` here by ``build`` (then saved to
        the bank in the background)."""
        scope, name = f"indexes/{namespace}", index_name(generation, step, sha256)
        waited_since, said = time.monotonic(), 0.0
        while True:
            if self.blobs.info(scope, name) is not None:
                try:
                    return load_index(self.blobs, namespace, name, self.spool), "loaded"
                except (BlobCorruptError, BlobMissingError, ValueError) as exc:
                    log.warning("index %s/%s unusable (%s): building it again", scope, name, exc)
                    self.blobs.delete(scope, name)
            if self.leases.claim(scope, name, self.holder, self.lease_s):
                if self.blobs.info(scope, name) is None:  # not finished just before the claim
                    break
                self.leases.release(scope, name, self.holder)
                continue
            waited = time.monotonic() - waited_since
            if waited - said >= 30.0:
                said = waited
                who = self.leases.holder(scope, name)
                log.info("waiting %.0f s for %s to build index %s/%s", waited, who, scope, name)
            time.sleep(self.poll_s)
        renewing = _Renewal(self, scope, name)
        renewing.start()
        try:
            pool = build()
        except BaseException:
            renewing.finish()
            self.leases.release(scope, name, self.holder)
            raise
        saver = threading.Thread(
            target=self._save, args=(scope, name, pool, renewing), name=f"save-{name}", daemon=True
        )
        self.saving[f"{scope}/{name}"] = saver
        saver.start()
        return pool, "built"

    def wait_saved(self, timeout: float | None = None) -> None:
        """Wait for the background saves started so far (tests, and a clean shutdown)."""
        for thread in list(self.saving.values()):
            thread.join(timeout)

    def _save(self, scope: str, name: str, pool: Pool, renewing: _Renewal) -> None:
        ids, index = pool
        t0 = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory(dir=self.spool, prefix=".index-") as tmp:
                path = Path(tmp) / name
                index.save(path, ids)
                info = self._put(scope, name, path)
            for gone in self.blobs.collect(scope, self.keep):
                log.info("deleted index %s/%s (keeping %d)", scope, gone, self.keep)
            log.info(
                "index %s/%s saved to the bank: %.0f MiB in %.1f s",
                scope,
                name,
                info.size / 2**20,
                time.perf_counter() - t0,
            )
        except Exception as exc:  # the others then build it themselves
            log.warning("index %s/%s not saved to the bank (%s)", scope, name, exc)
        finally:
            renewing.finish()
            self.saving.pop(f"{scope}/{name}", None)
            try:
                self.leases.release(scope, name, self.holder)
            except Exception as exc:  # it runs out on its own
                log.warning("lease on %s/%s not released (%s)", scope, name, exc)

    def _put(self, scope: str, name: str, path: Path) -> BlobInfo:
        """Put the saved index in the blob store, trying again with backoff while the bank
        is unavailable (hundreds of megabytes next to a campaign's writes can time out)."""
        retries = iter(range(SAVE_ATTEMPTS - 1))
        return retry_unavailable(
            lambda: self.blobs.put(scope, name, path, max_bytes=MAX_INDEX_BYTES),
            f"saving index {scope}/{name}",
            stop=lambda _pause: next(retries, None) is None,
            first_s=self.poll_s,
            most_s=60.0,
        )


class _Renewal(threading.Thread):
    """Keeps a lease while its holder builds and saves (every third of its term)."""

    def __init__(self, owner: SharedIndexes, scope: str, name: str) -> None:
        super().__init__(name=f"lease-{name}", daemon=True)
        self.owner, self.scope, self.name = owner, scope, name
        self.done = threading.Event()

    def run(self) -> None:
        o = self.owner
        while not self.done.wait(o.lease_s / 3):
            try:
                if not o.leases.claim(self.scope, self.name, o.holder, o.lease_s):
                    log.warning("lost the lease on %s/%s", self.scope, self.name)
                    return
            except Exception as exc:  # the bank away a moment: try again next time
                log.warning("lease on %s/%s not renewed (%s)", self.scope, self.name, exc)

    def finish(self) -> None:
        self.done.set()
