"""Watching a ``KnowledgeModel`` train: TensorBoard event files and Prometheus metrics.

``KnowledgeBoard`` is a Keras callback writing one TensorBoard run (a folder of event
files): every loss term of the paradigms (``loss/<term>``, and ``loss/total``), the
staleness of the knowledge read (``knowledge/staleness_mean/<kind>`` and a histogram of
the latest reads, ``knowledge/staleness/<kind>``), the coverage of each kind followed
(``knowledge/coverage/<namespace>/<kind>``), the checkpoints published
(``checkpoints/published``, ``checkpoints/step``) and, from whoever evaluates,
``test/accuracy`` (``scalar``). Steps are the namespace's (an earlier run's checkpoints
come first). ``tensorboard --logdir <log root>`` shows every job as a run.

``StepMetrics`` times each training step for the process's Prometheus metrics
(``carls_trainer_step_seconds``); the reader counts its cache hits and misses itself.

    serve_metrics()                             # /metrics on 9480 (or the next free port)
    board = KnowledgeBoard("runs/my-job")
    model.fit(batches, callbacks=[PublishCheckpoints(...), board, StepMetrics()])
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from carls.streams import metrics

log = logging.getLogger(__name__)


class KnowledgeBoard(keras.callbacks.Callback):  # type: ignore[misc]  # Keras is untyped
    """TensorBoard event files of a ``KnowledgeModel``'s training, in ``logdir``.

    Losses and knowledge are written every ``every_steps`` steps (the mean loss since the
    previous write, as Keras keeps it per epoch) and at the end of training."""

    def __init__(self, logdir: str | Path, every_steps: int = 50) -> None:
        super().__init__()
        if every_steps < 1:
            raise ValueError(f"every_steps: at least 1, got {every_steps}")
        self.logdir = Path(logdir)
        self.every_steps = every_steps
        self._writer: Any = None
        self._off = False
        self._first = 0
        self._done = 0
        self._published = 0
        self._seen: dict[str, tuple[float, int]] = {}  # staleness sums at the last write

    # the steps of the namespace's clock
    def step(self) -> int:
        km = self.model
        done = int(km.optimizer.iterations.numpy()) - self._first
        return int(getattr(km, "step_base", 0) or 0) + done

    def _open(self) -> Any:
        if self._writer is None:
            self.logdir.mkdir(parents=True, exist_ok=True)
            self._writer = tf.summary.create_file_writer(str(self.logdir))
        return self._writer

    def _guarded(self, what: str, fn: Any) -> None:
        """A board that cannot write (a full disk, a folder it may not create) says so
        once and stops writing: it never fails the training it watches."""
        if self._off:
            return
        try:
            fn()
        except Exception as exc:
            self._off = True
            log.warning(
                "TensorBoard run %s: %s failed (%s); no more is written", self.logdir, what, exc
            )

    def scalar(self, name: str, value: float, step: int | None = None) -> None:
        """Write one scalar (e.g. ``test/accuracy`` at an evaluation)."""

        def write() -> None:
            with self._open().as_default(step=self.step() if step is None else step):
                tf.summary.scalar(name, float(value))
            self._writer.flush()

        self._guarded(name, write)

    def on_train_begin(self, logs: Any = None) -> None:
        self._first = int(self.model.optimizer.iterations.numpy())
        self._done = 0
        self._published = 0
        self._guarded("opening", self._open)

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self._done += 1  # counted here: no read of the optimizer's step on every step
        if self._done % self.every_steps == 0:
            self.write(logs)

    def on_train_end(self, logs: Any = None) -> None:
        self.write(logs)

    def write(self, logs: Any = None) -> None:
        """Losses (from Keras' ``logs``), knowledge and checkpoints, at the current step."""
        self._guarded("writing", lambda: self._write(logs))

    def _write(self, logs: Any) -> None:
        km, step = self.model, self.step()
        with self._open().as_default(step=step):
            logs = dict(logs or {})
            terms = {n: float(logs[n]) for n in getattr(km, "term_names", ()) if n in logs}
            if "loss" in logs:
                total = float(logs["loss"])
                tf.summary.scalar("loss/total", total)
                if terms:
                    tf.summary.scalar("loss/supervised", total - sum(terms.values()))
            for name, value in terms.items():
                tf.summary.scalar(f"loss/{name}", value)
            self._knowledge(km)
            self._checkpoints(km)
        self._writer.flush()

    def _knowledge(self, km: Any) -> None:
        knowledge = getattr(km, "knowledge", None)
        reader = getattr(knowledge, "reader", None)
        if reader is None:
            return
        for kind, st in sorted(reader.by_kind.items()):
            seen = st.total - st.missing
            before_sum, before_seen = self._seen.get(kind, (0.0, 0))
            if seen > before_seen:
                mean = (st.sum - before_sum) / (seen - before_seen)
                tf.summary.scalar(f"knowledge/staleness_mean/{kind}", mean)
            self._seen[kind] = (st.sum, seen)
            if st.recent.size:
                tf.summary.histogram(f"knowledge/staleness/{kind}", st.recent.astype(np.float64))
            if st.total:
                tf.summary.scalar(f"knowledge/missing/{kind}", st.missing / st.total)
        for source, fraction in sorted(reader.coverage().items()):
            tf.summary.scalar(f"knowledge/coverage/{source}", fraction)

    def _checkpoints(self, km: Any) -> None:
        publisher = next(
            (cb.checkpoints for cb in _callbacks(km) if hasattr(cb, "checkpoints")), None
        )
        published = list(getattr(publisher, "published", []) or [])
        if published and len(published) != self._published:
            self._published = len(published)
            tf.summary.scalar("checkpoints/published", float(len(published)))
            last = published[-1]
            step = getattr(last, "step", None)
            if step is not None:
                tf.summary.scalar("checkpoints/step", float(step))

    def after_fit(self) -> None:
        """Called by ``KnowledgeModel.fit`` however it ended: the files are flushed."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None


def _callbacks(km: Any) -> list[Any]:
    """The callbacks of the ``fit`` running (``KnowledgeModel.fit`` keeps them)."""
    return list(getattr(km, "fit_callbacks", ()) or ())


def serve_metrics(port: int = 9480, host: str = "0.0.0.0") -> metrics.MetricsServer | None:
    """Serve this process's Prometheus metrics (the trainer's: step times, the reader's
    hits, misses and staleness) at ``http://host:port/metrics``; a taken port moves to
    the next free one of 16. Returns where (``.url``), or None when nothing is free."""
    served = metrics.serve(port, host, "trainer")
    if served is not None:
        log.info("trainer metrics at %s", served.url)
    return served


class StepMetrics(keras.callbacks.Callback):  # type: ignore[misc]  # Keras is untyped
    """Times every training step into ``carls_trainer_step_seconds``."""

    def __init__(self) -> None:
        super().__init__()
        self._began = 0.0

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
        self._began = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        if self._began:
            metrics.STEP_SECONDS.observe(time.perf_counter() - self._began)
