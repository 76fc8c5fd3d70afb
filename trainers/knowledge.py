"""A trainer's paradigms over one knowledge reader: what to follow, each batch's knowledge,
the loss terms.

``Knowledge`` binds the paradigms to the trainer's examples, starts a ``KnowledgeReader``
for every source they name (deduplicated), and then, per batch, gathers their arrays from
the reader's cache on the host (``batch``) and adds up their loss terms in the compiled
step (``loss``). The training step never waits on the bank. Use it as a context manager,
or call ``close``: the reader's thread stops either way, also when training fails.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from carls.bank.protocol import KnowledgeBank
from carls.trainers.paradigms import (
    ArraySpec,
    Following,
    Outputs,
    Paradigm,
    Publishing,
    Refreshing,
    Setup,
    Source,
    View,
    Weighting,
)
from carls.trainers.reader import KnowledgeReader

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


class Knowledge:
    """``paradigms`` bound to a trainer's examples (``setup.ids``, with ``labels``, -1 for
    unlabeled) and reading ``bank`` in the background.

    ``demand`` (optional) is called with ids that upcoming batches need and the bank has
    no knowledge of yet, so makers make them ahead of refresh work. ``reader`` replaces the
    reader this would start (it must follow ``sources``; benchmarks use it)."""

    def __init__(
        self,
        paradigms: Sequence[Paradigm],
        setup: Setup,
        bank: KnowledgeBank | None,
        labels: npt.ArrayLike,
        *,
        max_staleness: int | None = 1000,
        demand: Callable[[list[str]], None] | None = None,
        reader: KnowledgeReader | None = None,
    ) -> None:
        self.paradigms = list(paradigms)
        self.setup = setup
        names = [p.name for p in self.paradigms]
        if len(set(names)) != len(names):
            raise ValueError(f"paradigms: each may appear once, got {names}")
        sources: dict[tuple[str, str], Source] = {}
        for p in self.paradigms:
            for s in p.bind(setup):
                sources.setdefault((s.namespace, s.kind), s)
        self.sources = list(sources.values())
        self.signature: dict[str, ArraySpec] = {}
        for p in self.paradigms:
            for key, spec in p.signature().items():
                if key in self.signature:
                    raise ValueError(f"paradigms {names}: two of them prepare {key!r}")
                self.signature[key] = spec
        if self.sources and bank is None:
            raise ValueError(f"paradigms {names} read knowledge: give a bank")
        self.reader = reader or (
            KnowledgeReader(
                bank,
                setup.ids,
                [(s.namespace, s.kind, s.dim) for s in self.sources],
                demand=demand,
            )
            if self.sources and bank is not None
            else None
        )
        labels = np.asarray(labels, np.int32)
        if labels.shape != (len(setup.ids),):
            raise ValueError(
                f"labels: expected one per id ({len(setup.ids)}), got shape {labels.shape}"
            )
        self.view = View(self.reader, labels, max_staleness, setup.namespace)
        self._weighting = [p for p in self.paradigms if isinstance(p, Weighting)]
        self._refreshing = [p for p in self.paradigms if isinstance(p, Refreshing)]
        self.publishing = [p for p in self.paradigms if isinstance(p, Publishing)]
        """Paradigms whose trainer publishes knowledge itself (a message channel's)."""
        self._started = False
        self._batches = 0

    @property
    def started(self) -> bool:
        return self._started

    # Lifecycle ---------------------------------------------------------------------------
    def start(self) -> Knowledge:
        if not self._started:
            if self.reader is not None:
                self.reader.start()
            for p in self.paradigms:
                if isinstance(p, Following):
                    p.start()
            self._started = True
        return self

    def close(self) -> None:
        if self._started:
            if self.reader is not None:
                self.reader.stop()
            for p in self.paradigms:
                if isinstance(p, Following):
                    p.stop()
            self._started = False

    def __enter__(self) -> Knowledge:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # The host side ------------------------------------------------------------------------
    @property
    def reads_unlabeled(self) -> bool:
        """Whether any paradigm prepares arrays for unlabeled examples (loss terms on
        them), so batches should hold them."""
        return any(p.signature() and getattr(p, "reads_unlabeled", True) for p in self.paradigms)

    def batch(
        self, rows: npt.ArrayLike, step: int, batches: int = 1
    ) -> dict[str, npt.NDArray[Any]]:
        """Every paradigm's arrays for the batch ``rows`` (indices into ``setup.ids``);
        ``rows`` may hold ``batches`` consecutive batches, prepared as of their first
        ``step``."""
        idx = np.asarray(rows, np.int64)
        first, self._batches = self._batches, self._batches + batches
        for r in self._refreshing:  # on first use, then every ``refresh_every`` batches
            if (first - 1) // r.refresh_every != (self._batches - 1) // r.refresh_every:
                r.refresh(self.view, step)
        out: dict[str, npt.NDArray[Any]] = {}
        for p in self.paradigms:
            out.update(p.prepare(self.view, idx, step))
        return out

    def supervised_weights(self, rows: npt.ArrayLike, step: int) -> F32 | None:
        """The product of the weighting paradigms' per-row weights, or None if none."""
        if not self._weighting:
            return None
        idx = np.asarray(rows, np.int64)
        w = np.ones(len(idx), np.float32)
        for wp in self._weighting:
            w *= wp.supervised_weights(self.view, idx, step)
        return w

    def hint(self, rows: npt.ArrayLike) -> None:
        """Rows that upcoming batches need: the reader refreshes them first."""
        if self.reader is not None:
            self.reader.hint(rows)

    def layers(self) -> list[Any]:
        """Layers the paradigms add to the model (trained with it)."""
        return [layer for p in self.publishing for layer in p.layers()]

    # The compiled side --------------------------------------------------------------------
    def inputs(self, knowledge: dict[str, Any], features: Any) -> Any:
        """The model's inputs for a batch: ``features`` with what paradigms feed the model
        from the bank (a received message) put in."""
        for p in self.publishing:
            features = p.inputs(knowledge, features)
        return features

    def loss(self, knowledge: dict[str, Any], embedding: Any, logits: Any) -> dict[str, Any]:
        """Every paradigm's named loss terms for one batch."""
        out = Outputs(embedding, logits)
        terms: dict[str, Any] = {}
        for p in self.paradigms:
            terms.update(p.loss(knowledge, out))
        return terms
