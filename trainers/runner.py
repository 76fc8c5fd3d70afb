"""Running one training job: data into the bank, a Keras loop that reads knowledge without
waiting, checkpoints out to the makers, and the job's state kept where ``carls job status``
finds it."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from carls.bank.errors import NamespaceError
from carls.bank.jobs import JobStore
from carls.bank.protocol import KnowledgeBank
from carls.bank.types import NamespaceSpec
from carls.streams.producer import Publisher
from carls.trainers import augment
from carls.trainers.checkpoints import CheckpointPublisher, demand_publisher, namespace_step
from carls.trainers.datasets import Dataset, load_dataset, validate_against_namespace
from carls.trainers.knowledge import Knowledge
from carls.trainers.paradigms import Curriculum, Setup, from_spec
from carls.trainers.spec import JobSpec

log = logging.getLogger(__name__)
Say = Callable[[str], None]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@dataclass(slots=True)
class Context:
    """What a job runs against: the bank, Kafka (None: no checkpoints or demand are
    published, e.g. a supervised baseline), the checkpoint store, the job store."""

    bank: KnowledgeBank
    publisher: Publisher | None
    store: Path
    jobs: JobStore | None = None
    producer: str = "carls-trainer"
    buckets: int = 8


def new_job_id(namespace: str) -> str:
    return f"{namespace}-{uuid.uuid4().hex[:8]}"


def prepare_namespace(ctx: Context, spec: JobSpec, ds: Dataset, x: np.ndarray) -> None:
    """Create the namespace if needed (checking an existing one agrees) and register the
    training examples with their features, labels (-1 = unlabeled) and modality."""
    try:
        existing: NamespaceSpec | None = ctx.bank.namespace(spec.namespace)
    except NamespaceError:
        existing = None
    validate_against_namespace(spec, ds, existing)
    if existing is None:
        ctx.bank.create_namespace(
            NamespaceSpec(spec.namespace, spec.kinds(ds.classes), buckets=ctx.buckets)
        )
    modality = None
    if spec.paradigm.name == "multimodal":
        modality = spec.paradigm.params.modality  # type: ignore[union-attr]
    labels = ds.labels_for_bank()
    for s in range(0, len(ds.ids_train), 5000):
        ctx.bank.register_examples(
            spec.namespace,
            ds.ids_train[s : s + 5000],
            x[s : s + 5000],
            labels[s : s + 5000].tolist(),
            modality=modality,
        )


def _inputs(spec: JobSpec, ds: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(train, test, raw train) features this trainer sees (a modality's columns)."""
    if spec.paradigm.name == "multimodal":
        lo, hi = ds.modalities[spec.paradigm.params.modality]  # type: ignore[union-attr]
        return ds.x_train[:, lo:hi], ds.x_test[:, lo:hi], None
    return ds.x_train, ds.x_test, ds.x_train_raw


class JobRun:
    """One job from start to finish; ``run()`` returns the final state dict."""

    def __init__(self, job_id: str, spec: JobSpec, ctx: Context, say: Say = lambda _: None):
        self.job_id, self.spec, self.ctx, self.say = job_id, spec, ctx, say
        self.state: dict[str, Any] = {
            "job_id": job_id,
            "namespace": spec.namespace,
            "paradigm": spec.paradigm.name,
            "state": "queued",
            "reason": None,
            "history": [],
            "test_accuracy": None,
            "steps": spec.train.steps,
            "step": 0,
            "spec": spec.to_dict(),
            "created_at": time.time(),
        }

    def save_state(self, **changes: Any) -> None:
        self.state.update(changes)
        if self.ctx.jobs is not None:
            self.ctx.jobs.put(self.job_id, self.state)

    def run(self) -> dict[str, Any]:
        self.save_state(state="running", started_at=time.time())
        try:
            self._train()
        except Exception as exc:
            log.exception("job %s failed", self.job_id)
            self.save_state(
                state="failed", reason=f"{type(exc).__name__}: {exc}", finished_at=time.time()
            )
            raise
        self.save_state(state="succeeded", finished_at=time.time())
        return self.state

    # ------------------------------------------------------------------------------------
    def _train(self) -> None:
        import keras

        spec, ctx, tr = self.spec, self.ctx, self.spec.train
        np.random.seed(tr.seed)
        keras.utils.set_random_seed(tr.seed)
        ds = load_dataset(spec.dataset, tr.seed)
        x_train, x_test, raw = _inputs(spec, ds)
        paradigms = from_spec(spec)
        setup = Setup(
            spec.namespace,
            ds.classes,
            spec.model.embedding_dim,
            tuple(ds.ids_train),
            x_train,
        )
        demand = (
            demand_publisher(ctx.publisher, spec.namespace, self.job_id)
            if ctx.publisher is not None
            else None
        )
        knowledge = Knowledge(
            paradigms,
            setup,
            ctx.bank,
            ds.labels_for_bank(),
            max_staleness=tr.max_staleness,
            demand=demand,
        )
        prepare_namespace(ctx, spec, ds, x_train)
        self.say(
            f"{self.job_id}: {len(ds.ids_train)} training examples "
            f"({int(ds.labeled.sum())} labeled), {ds.classes} classes, paradigm "
            f"{spec.paradigm.name}"
        )

        if tr.augment != "none" and raw is not None:
            views = augment.views(tr.augment, raw, ds.standardize, tr.augment_views, tr.seed)
        else:
            views = x_train[:, None, :]

        from carls.trainers.model import build

        model, artifact = build(x_train.shape[1], ds.classes, spec.model)
        ema = None
        if tr.ema:
            ema, _ = build(x_train.shape[1], ds.classes, spec.model)
            ema.set_weights(model.get_weights())
        opt = keras.optimizers.AdamW(learning_rate=tr.learning_rate, weight_decay=tr.weight_decay)
        opt.build(model.trainable_variables)

        with knowledge:
            self._loop(knowledge, model, ema, artifact, opt, ds, views, x_train, x_test, raw)

    def _loop(
        self,
        knowledge: Knowledge,
        model: Any,
        ema: Any,
        artifact: Any,
        opt: Any,
        ds: Dataset,
        views: np.ndarray,
        x_train: np.ndarray,
        x_test: np.ndarray,
        raw: np.ndarray | None,
    ) -> None:
        import tensorflow as tf

        spec, ctx, tr = self.spec, self.ctx, self.spec.train
        reader = knowledge.reader
        v_all = tf.constant(views)
        n_views = views.shape[1]
        labeled = np.flatnonzero(ds.labeled)
        unlabeled = np.flatnonzero(~ds.labeled)
        pool_u = unlabeled if len(unlabeled) else np.arange(len(ds.ids_train))
        curriculum = next((p for p in knowledge.paradigms if isinstance(p, Curriculum)), None)

        cut = tr.cutout if raw is not None else 0
        side = augment.image_side(x_train.shape[1]) if cut else 0
        blank = tf.constant(
            ds.standardize(np.zeros((1, x_train.shape[1])))[0]
            if cut
            else np.zeros(x_train.shape[1], np.float32)
        )

        def cutout(x: Any) -> Any:
            """Blank a random ``cut`` x ``cut`` square of each image (unlabeled views)."""
            if not cut:
                return x
            b = tf.shape(x)[0]
            grid = tf.range(side)[None, :]
            y0 = tf.random.uniform([b, 1], 0, side - cut + 1, dtype=tf.int32)
            x0 = tf.random.uniform([b, 1], 0, side - cut + 1, dtype=tf.int32)
            in_y = (grid >= y0) & (grid < y0 + cut)
            in_x = (grid >= x0) & (grid < x0 + cut)
            mask = tf.reshape(in_y[:, :, None] & in_x[:, None, :], (b, side * side))
            return tf.where(mask, blank[None, :], x)

        def pick(idx: Any) -> Any:
            v = tf.random.uniform(tf.shape(idx), 0, n_views, dtype=tf.int32)
            return tf.gather_nd(v_all, tf.stack([idx, v], 1))

        def ema_update() -> None:
            if ema is not None:
                for a, b in zip(ema.weights, model.weights, strict=True):
                    a.assign(tr.ema * a + (1 - tr.ema) * b)

        @tf.function(reduce_retracing=True)
        def step_fn(lab_idx: Any, lab_y: Any, batch: dict[str, Any]) -> dict[str, Any]:
            with tf.GradientTape() as tape:
                _, logits_l = model(pick(lab_idx), training=True)
                sup = tf.reduce_mean(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(lab_y, logits_l)
                )
                parts = {"supervised": sup}
                if "u_idx" in batch:
                    emb_u, logits_u = model(cutout(pick(batch["u_idx"])), training=True)
                    parts.update(knowledge.loss(batch, emb_u, logits_u))
                loss = tf.add_n(list(parts.values()))
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            ema_update()
            return parts

        x_test_t = tf.constant(x_test)

        @tf.function
        def predict(m_weights_model: Any) -> Any:
            return m_weights_model(x_test_t, training=False)[1]

        def accuracy() -> float:
            m = ema if ema is not None else model
            return float((np.argmax(predict(m).numpy(), 1) == ds.y_test).mean())

        base = self._step_base()
        view = knowledge.view
        ckpt = (
            CheckpointPublisher(
                ctx.publisher,
                ctx.store,
                spec.namespace,
                ctx.producer,
                tr.checkpoint_every,
                tr.checkpoint_every_s,
                start_step=base,
            )
            if ctx.publisher is not None
            else None
        )
        y = ds.y_train.astype(np.int32)
        rng = np.random.default_rng(tr.seed)
        lab_bs = min(tr.labeled_batch_size, len(labeled))
        term_sums: dict[str, float] = {}
        summed = 0  # steps in term_sums
        staleness_before = 0.0, 0
        t0 = time.monotonic()
        for step in range(1, tr.steps + 1):
            gstep = base + step  # the namespace's step: checkpoints and staleness use it
            view.progress = step / tr.steps
            if curriculum is not None:
                pool = curriculum.pool(view, labeled, gstep)
                lab_idx = rng.choice(pool, min(lab_bs, len(pool)), replace=len(pool) < lab_bs)
            else:
                lab_idx = rng.choice(labeled, lab_bs, replace=False)
            batch: dict[str, Any] = {}
            warm = step <= tr.warmup_steps
            if knowledge.reads_unlabeled and not warm:
                u_idx = rng.choice(pool_u, min(tr.batch_size, len(pool_u)), replace=False)
                batch = knowledge.batch(u_idx, gstep)
                batch["u_idx"] = u_idx.astype(np.int32)
                if step % 10 == 0:
                    knowledge.hint(rng.choice(pool_u, min(4 * tr.batch_size, len(pool_u))))
            parts = step_fn(
                tf.constant(lab_idx.astype(np.int32)),
                tf.constant(y[lab_idx]),
                {k: tf.constant(v) for k, v in batch.items()},
            )
            for k, v in parts.items():
                term_sums[k] = term_sums.get(k, 0.0) + float(v)
            summed += 1
            if ckpt is not None and step >= tr.warmup_steps and ckpt.due(gstep):
                ckpt.publish(artifact, gstep)
            if step % tr.eval_every == 0 or step == tr.steps:
                staleness_before = self._record(
                    step, accuracy(), knowledge, term_sums, summed, staleness_before, t0
                )
                term_sums, summed = {}, 0
        if ckpt is not None and ckpt.last_step != base + tr.steps:
            ckpt.publish(artifact, base + tr.steps)
        self.save_state(  # test_accuracy: the last step's eval, recorded above
            step=tr.steps,
            checkpoints=len(ckpt.published) if ckpt is not None else 0,
            staleness=reader.staleness.as_dict() if reader is not None else None,
            knowledge_coverage=reader.coverage() if reader is not None else None,
            train_seconds=round(time.monotonic() - t0, 2),
        )

    def _record(
        self,
        step: int,
        acc: float,
        knowledge: Knowledge,
        term_sums: dict[str, float],
        summed: int,
        before: tuple[float, int],
        t0: float,
    ) -> tuple[float, int]:
        reader = knowledge.reader
        st = reader.staleness if reader is not None else None
        mean = None
        now = (st.sum, st.total - st.missing) if st is not None else (0.0, 0)
        if st is not None and now[1] > before[1]:
            mean = (now[0] - before[0]) / (now[1] - before[1])
        coverage = reader.coverage() if reader is not None else {}
        entry = {
            "step": step,
            "test_accuracy": acc,
            "staleness_mean": mean,
            "knowledge_coverage": min(coverage.values()) if coverage else None,
            "loss": {k: v / max(1, summed) for k, v in term_sums.items()},
            "knowledge_use": dict(knowledge.view.stats),
            "seconds": time.monotonic() - t0,
        }
        self.state["history"].append(entry)
        self.save_state(step=step, test_accuracy=acc)
        self.say(
            f"{self.job_id}: step {step}/{self.spec.train.steps} test accuracy {acc:.3f}"
            + (f", knowledge staleness {mean:.0f} steps" if mean is not None else "")
        )
        return now

    def _step_base(self) -> int:
        """The namespace's newest checkpoint step: this job's steps follow on from it."""
        pub = self.ctx.publisher
        if pub is None:
            return 0
        base = namespace_step(pub, self.ctx.bank, self.spec.namespace)
        if base:
            self.say(
                f"{self.job_id}: namespace {self.spec.namespace} has checkpoints up to "
                f"step {base}; this job's steps follow on"
            )
        self.save_state(step_base=base)
        return base
