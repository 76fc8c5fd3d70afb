"""The hypergraph maker: the knowledge of multimodal tasks (HyperLearn) that no checkpoint
carries, made by the workers on a timer.

Hypergraph learners announce themselves in the bank (``HypergraphStore.announce``: task,
modality, widths, ``knn``). Every ``every_s`` seconds a worker looks at the announced
tasks; one worker at a time serves a task (a lease in the bank, so two workers never
register two hypergraphs for one change) and, for it:

* **makes the hypergraph** when a learner asked for it (``knn``): kNN hyperedges within
  each modality from the features its learner registered in the bank, and co-occurrence
  hyperedges across the modalities of one item; made again when the modalities or their
  examples change (a modality that joins is in the next hypergraph, which the running
  learners pick up), once the examples have stopped changing for one look. A hypergraph
  registered by hand (``carls hypergraph register``) is the user's and never replaced.
* **fuses** the task's embeddings (``carls.bank.hyperedges.write_fused``: every modality's
  latest embedding side by side, convolved once over the items) into ``<task>_fused``
  when some modality published newer embeddings, at most every ``fuse_every_s``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from carls.bank.errors import NamespaceError
from carls.bank.hyperedges import bank_check, make_hypergraph, write_fused
from carls.bank.hypergraphs import Hypergraph, HypergraphError, HypergraphStore, Learner
from carls.bank.indexes import Leases
from carls.bank.protocol import KnowledgeBank
from carls.schemas.errors import CarlsError

log = logging.getLogger(__name__)
LEASE_SCOPE = "hypergraph-tasks"
SAMPLE = 64
"""Ids per modality whose steps say how new its embeddings are."""
RESCAN_S = 60.0
"""Once a task's hypergraph is current, its examples are listed again only when its
learners' announcements change (a learner starts) or after this long."""


@dataclass(slots=True)
class _Task:
    """What this worker last saw of a task."""

    examples: str | None = None
    """The digest of its modalities' examples at the last look."""
    announced: tuple[Any, ...] = ()
    """Its learners' announcements at the last listing of its examples."""
    rescan_at: float = 0.0
    current: bool = False
    """Its hypergraph was made from (or is a registered one over) the examples last seen."""
    graph: tuple[str, Hypergraph] | None = None
    """The hypergraph read last (blob name, graph)."""
    steps: tuple[Any, ...] | None = None
    """The hypergraph and the modalities' embedding steps of the last fusion."""
    fused_at: float = 0.0
    failed: str | None = None
    """The digest of the examples a hypergraph could not be made from: not tried again
    until the announcements change or ``RESCAN_S`` passes (a bank that was away)."""
    said: set[str] = field(default_factory=set)

    @property
    def failing(self) -> bool:
        return self.failed is not None


class HypergraphMaker:
    """Makes and fuses the hypergraphs of announced tasks (see the module docstring)."""

    def __init__(
        self,
        bank: KnowledgeBank,
        store: HypergraphStore,
        leases: Leases | None,
        holder: str,
        every_s: float = 5.0,
        fuse_every_s: float = 15.0,
    ) -> None:
        self.bank, self.store, self.leases, self.holder = bank, store, leases, holder
        self.every_s, self.fuse_every_s = every_s, fuse_every_s
        self.lease_s = max(60.0, 6 * every_s)
        """How long a task stays this worker's without a look (a look renews it)."""
        self.tasks: dict[str, _Task] = {}
        self.said: set[str] = set()
        self.made = 0
        self.fused = 0

    def tick(self) -> None:
        """One look at every announced task (what the worker's timer runs). Nothing it
        meets stops the worker: a bank that is away, or a task that fails, is said once
        and tried again at the next look."""
        try:
            announced = self.store.learners()
        except CarlsError as exc:
            self._once(self.said, f"announcements unread ({exc})")
            return
        self.said.clear()
        for task in set(self.tasks) - set(announced):  # forgotten, or dropped
            del self.tasks[task]
        for task, learners in sorted(announced.items()):
            state = self.tasks.setdefault(task, _Task())
            try:
                if not self._hold(task):
                    self.tasks.pop(task, None)  # another worker serves it
                    continue
                self._serve(task, learners, state)
            except Exception as exc:  # one task's failure leaves the others served
                quiet = isinstance(exc, (CarlsError, HypergraphError))
                self._once(state.said, f"task {task} left for the next look ({exc})", quiet)
            finally:
                if self.leases is not None and task not in self.tasks:
                    with contextlib.suppress(CarlsError):  # else it runs out by itself
                        self.leases.release(LEASE_SCOPE, task, self.holder)

    def _hold(self, task: str) -> bool:
        """Claim (or renew) the task's lease: True while this worker serves it."""
        if self.leases is None:
            return True
        return self.leases.claim(LEASE_SCOPE, task, self.holder, self.lease_s)

    def _serve(self, task: str, announced: dict[str, Learner], state: _Task) -> None:
        learners = self._living(task, announced)
        if not learners:
            self.tasks.pop(task, None)
            return
        if any(one.knn is not None for one in learners.values()):
            try:
                self.make(task, learners, state)
            except (CarlsError, HypergraphError) as exc:  # the fusion still goes on
                self._once(state.said, f"task {task}: no hypergraph made ({exc})")
        self.fuse(task, learners, state)
        if not state.failing:
            state.said.clear()  # a failure that comes back is said again

    @staticmethod
    def _once(said: set[str], message: str, quiet: bool = True) -> None:
        if message not in said:
            said.add(message)
            if quiet:
                log.warning("hypergraph maker: %s", message)
            else:
                log.exception("hypergraph maker: %s", message)

    # ------------------------------------------------------------------------------------
    def _living(self, task: str, learners: dict[str, Learner]) -> dict[str, Learner]:
        """The learners whose namespace is there; the others' announcements are forgotten
        (their namespace was dropped: a learner announces once its examples are in)."""
        out = {}
        for m, one in learners.items():
            try:
                self.bank.namespace(f"{task}_{m}")
            except NamespaceError:
                self.store.forget(task, m)
                log.info("hypergraph maker: task %s: %s's namespace is gone; forgotten", task, m)
                continue
            out[m] = one
        return out

    def _examples(self, task: str, learners: dict[str, Learner]) -> dict[str, list[str]]:
        """Every announced modality's registered example ids."""
        out: dict[str, list[str]] = {}
        for m in sorted(learners):
            ns = f"{task}_{m}"
            spec = self.bank.namespace(ns)
            ids: list[str] = []
            for b in range(spec.buckets):
                ids += self.bank.example_ids(ns, b)
            if ids:
                out[m] = sorted(ids)
        return out

    def make(self, task: str, learners: dict[str, Learner], state: _Task) -> bool:
        """Make and register the task's hypergraph if its examples changed and have held
        still since the last look; True when one was registered."""
        seen = tuple(sorted(learners.items()))
        still = seen == state.announced and time.monotonic() < state.rescan_at
        if still and (state.current or state.failed is not None):
            return False
        state.announced, state.rescan_at = seen, time.monotonic() + RESCAN_S
        examples = self._examples(task, learners)
        digest = hashlib.sha256()
        for m, ids in examples.items():
            one = learners[m]
            digest.update(f"{m}|{one.knn}|{one.cross_weight}|{one.features}|".encode())
            digest.update("\n".join(ids).encode())
        now = digest.hexdigest()[:32]
        settled = state.examples == now
        state.examples, state.current = now, False
        if not settled or not examples:
            state.failed = None  # new examples: worth a try once they hold still
            return False  # changing (examples still registering) or nothing yet
        newest = self.store.newest(task)
        if newest is not None:
            made = newest.meta.get("made_from")
            if made is None:
                if "registered" not in state.said:
                    state.said.add("registered")
                    log.info("hypergraph maker: task %s has a registered hypergraph; kept", task)
                state.current = True
                return False
            if made == now:
                state.current = True
                return False
        parts = []
        for m, ids in examples.items():
            x = self._features(f"{task}_{m}", ids, learners[m].features)
            parts.append((m, ids, x, learners[m].knn))
        weight = max(one.cross_weight for one in learners.values())
        state.failed = now  # until it is registered
        hg = make_hypergraph(parts, weight)
        if not hg.members:
            return False
        if not self._hold(task):  # the build outlasted the lease: another worker has it
            return False
        info = self.store.register(task, hg, bank_check(self.bank, task), {"made_from": now})
        state.current, state.failed = True, None
        self.made += 1
        log.info(
            "hypergraph maker: task %s: hypergraph %s made from %s (%d hyperedges)",
            task,
            info.name,
            ", ".join(f"{m} {len(ids)}" for m, ids in examples.items()),
            len(hg.members),
        )
        return True

    def _features(self, ns: str, ids: list[str], width: int) -> np.ndarray:
        rows = []
        for s in range(0, len(ids), 4096):
            got = self.bank.fetch_examples(ns, ids[s : s + 4096])
            rows.append(np.asarray(got.features, np.float32).reshape(len(got.ids), -1)[:, :width])
        return np.concatenate(rows)

    def _graph(self, task: str, state: _Task) -> Hypergraph | None:
        info = self.store.newest(task)
        if info is None:
            return None
        if state.graph is None or state.graph[0] != info.name:
            hg = self.store.read(task, info)
            if hg is None:
                return None
            state.graph = (info.name, hg)
        return state.graph[1]

    def _steps(self, task: str, m: str, ids: list[str]) -> int:
        """The newest step among a sample of modality ``m``'s embeddings (-1: none)."""
        try:
            got = self.bank.read(f"{task}_{m}", f"embedding/{m}", ids[:SAMPLE])
        except NamespaceError:
            return -1
        there = ~np.asarray(got.missing, bool)
        return int(np.asarray(got.steps)[there].max()) if there.any() else -1

    def fuse(self, task: str, learners: dict[str, Learner], state: _Task) -> bool:
        """Write the task's fused representation if some modality published newer
        embeddings since the last fusion (and ``fuse_every_s`` has passed); True when
        written."""
        hg = self._graph(task, state)
        if hg is None or not learners:
            return False
        assert state.graph is not None
        steps = tuple(self._steps(task, m, hg.ids_of(m)) for m in hg.modalities)
        if max(steps) < 0:
            return False
        key = (state.graph[0], steps)
        if key == state.steps or time.monotonic() - state.fused_at < self.fuse_every_s:
            return False
        dim = next(iter(learners.values())).embedding_dim
        out = write_fused(self.bank, task, hg, dim, replace=True)  # modalities may change
        state.steps, state.fused_at = key, time.monotonic()
        self.fused += 1
        log.info(
            "hypergraph maker: task %s fused: %d items, modalities %s at steps %s",
            task,
            len(out.ids),
            ", ".join(hg.modalities),
            ", ".join(map(str, steps)),
        )
        return True
