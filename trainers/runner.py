"""Running one training job through the public library API: the job's dataset and model
become a ``KnowledgeModel``, batches come from ``example_batches`` (and ``augmented``),
checkpoints go out through ``PublishCheckpoints``, and ``fit`` trains; the job's state is
kept where ``carls job status`` finds it.

The steps of ``JobRun._train``: load the data; check what can be checked before anything
is written (``check_job``: the augmentation fits the examples; ``build_model`` and
``check_model``: the spec's builder, saved model or the built-in MLP builds, takes the
examples and has the named outputs and one logit per class); wrap and compile
(``_wrap``); create or check the namespace and register the examples (``_register``);
make the batches (``_batches``); then ``fit`` with the callbacks that publish checkpoints
and record the history (``_JobLog``). The knowledge reader is closed whatever happens.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from carls.bank.artifacts import ArtifactStore
from carls.bank.blobs import MAX_BYTES
from carls.bank.errors import BankUnavailableError, DimensionError, NamespaceError
from carls.bank.hypergraphs import HypergraphStore
from carls.bank.jobs import JobStore
from carls.bank.protocol import KnowledgeBank
from carls.bank.retry import retry_unavailable
from carls.bank.types import NamespaceSpec
from carls.schemas.errors import CarlsError
from carls.streams.manifests import latest_manifest
from carls.streams.producer import Publisher
from carls.trainers import augment
from carls.trainers.datasets import (
    Dataset,
    hold_out,
    load_dataset,
    validate_against_namespace,
)
from carls.trainers.errors import ModelError, SpecError
from carls.trainers.observe import KnowledgeBoard, StepMetrics
from carls.trainers.outputs import HeadShapes, ModelHeads, OutputName
from carls.trainers.paradigms import HyperLearn, Message, Multimodal, from_spec
from carls.trainers.sources import check_sources
from carls.trainers.spec import JobSpec

log = logging.getLogger(__name__)
FINAL_STATES = ("succeeded", "failed", "cancelled")
"""States a job never leaves."""
STATE_RETRY_S = 60.0
"""How long a job keeps retrying a state write while the bank is unavailable."""
Say = Callable[[str], None]


@dataclass(slots=True)
class Context:
    """What a job runs against: the bank, Kafka (None: no checkpoints or demand are
    published, e.g. a supervised baseline), the checkpoint store, the job store."""

    bank: KnowledgeBank
    publisher: Publisher | None
    store: ArtifactStore | Path
    """Where checkpoints go (a folder: kept there, for one machine)."""
    jobs: JobStore | None = None
    producer: str = "carls-trainer"
    buckets: int = 8
    log_dir: Path | None = None
    """Where the job's TensorBoard run goes (``<log_dir>/<job id>``); None: none written."""


STEP_SAVE_S = 2.0
"""Between evaluations, a job's step is saved this often (its progress, to followers)."""


def new_job_id(namespace: str) -> str:
    return f"{namespace}-{uuid.uuid4().hex[:8]}"


def build_model(
    spec: JobSpec, input_shape: tuple[int, ...], classes: int
) -> tuple[Any, OutputName, OutputName]:
    """``(model, embedding, logits)``: the spec's builder's model, its saved Keras model, or
    the built-in MLP, with the names of its embedding and logits outputs."""
    m = spec.model
    if m.builder is not None:
        build = m.load_builder()
        try:
            model = build(input_shape=input_shape, classes=classes, **m.params)
        except Exception as exc:
            raise ModelError(f"model.builder: {m.builder} failed: {exc}") from exc
        return model, m.embedding, m.logits
    if m.path is not None:
        try:
            model = keras.models.load_model(m.path, compile=False)
        except Exception as exc:
            raise ModelError(f"model.path: {m.path} does not load: {exc}") from exc
        return model, m.embedding, m.logits
    from carls.trainers.model import build as build_mlp

    model, _ = build_mlp(input_shape, classes, m)
    return model, 0, 1


def check_model(
    spec: JobSpec, input_shape: tuple[int, ...], classes: int
) -> tuple[Any, OutputName, OutputName, HeadShapes]:
    """``build_model`` and its outputs checked on a zero batch: ``ModelError`` naming what
    to fix (also what ``carls submit`` runs before queueing a job with a user model)."""
    model, embedding, logits = build_model(spec, input_shape, classes)
    m = spec.model
    where = "model.builder" if m.builder else "model.path" if m.path else "model"
    try:  # a subclassed model declares no inputs: it is given the dataset's shape
        declared = bool(model.inputs)
    except (AttributeError, ValueError):
        declared = False
    shapes = ModelHeads(model, embedding, logits, None if declared else input_shape).shapes
    if shapes.feature_dim != math.prod(input_shape):
        raise ModelError(
            f"{where}: the model takes examples of shape {shapes.input_shape}; the "
            f"dataset's examples have shape {input_shape}"
        )
    if shapes.classes != classes:
        raise ModelError(
            f"{where if where != 'model' else 'model.logits'}: the model has "
            f"{shapes.classes} logits; the dataset has {classes} classes"
        )
    return model, embedding, logits, shapes


@dataclass(slots=True)
class _Inputs:
    """The features this trainer sees (a modality's columns for a multimodal job)."""

    x_train: Any
    x_test: Any
    raw: Any
    """Raw training features for augmentations in input space (None: not augmentable)."""
    image: tuple[int, int] | None = None
    """The examples' image shape (None: they are not images)."""


def _inputs(spec: JobSpec, ds: Dataset) -> _Inputs:
    p = spec.paradigm.params
    if isinstance(p, Multimodal):
        lo, hi = ds.modalities[p.modality]
        return _Inputs(ds.x_train[:, lo:hi], ds.x_test[:, lo:hi], None)
    if isinstance(p, Message):
        if len(ds.input_shape) != 1:
            raise SpecError(
                "paradigm.name",
                f"a message channel needs flat features; the examples are {ds.input_shape}",
            )
        lo, hi = ds.modalities[p.modality] if p.modality is not None else (0, ds.feature_dim)
        train, test = ds.x_train[:, lo:hi], ds.x_test[:, lo:hi]
        if p.role == "receive":  # the message's columns, filled from the bank
            train, test = (np.pad(x, ((0, 0), (0, p.size))) for x in (train, test))
        return _Inputs(train, test, None)
    if isinstance(p, HyperLearn):
        if len(ds.input_shape) != 1:
            raise SpecError(
                "paradigm.name",
                f"a hypergraph learner needs flat features; the examples are {ds.input_shape}",
            )
        if spec.model.builder is not None or spec.model.path is not None:
            raise SpecError(
                "model",
                "a hypergraph learner's first layer is the convolution's weights: it trains "
                "the built-in MLP (model.hidden, model.embedding_dim), not a user model",
            )
        pad = p.width(ds.feature_dim, spec.model.embedding_dim)  # the columns it fills
        train, test = (np.pad(x, ((0, 0), (0, pad))) for x in (ds.x_train, ds.x_test))
        return _Inputs(train, test, None)
    return _Inputs(ds.x_train, ds.x_test, ds.x_train_raw, ds.image_shape)


def transductive(ds: Dataset) -> Dataset:
    """``ds`` with its test examples among the training ones, unlabeled (a hypergraph
    learner's nodes: the others' hyperedges may name them); the test split stays for
    evaluation."""
    from dataclasses import replace

    return replace(
        ds,
        ids_train=[*ds.ids_train, *ds.ids_test],
        x_train=np.concatenate([ds.x_train, ds.x_test]),
        y_train=np.concatenate([ds.y_train, ds.y_test]),
        labeled=np.concatenate([ds.labeled, np.zeros(len(ds.ids_test), bool)]),
        x_train_raw=None,
    )


def _check_augment(spec: JobSpec, inputs: _Inputs) -> None:
    tr = spec.train
    shape = tuple(inputs.x_train.shape[1:])
    augment.check(tr.augment, tr.cutout, inputs.image, shape, multimodal=inputs.raw is None)


def publishes(spec: JobSpec) -> bool:
    """Does the job publish checkpoints? ``train.publish``, by default: when it teaches, or
    its paradigm reads knowledge the makers make from its checkpoints (a supervised job,
    or a student of a teacher alone, keeps the makers idle)."""
    if spec.train.publish is not None:
        return spec.train.publish
    plugins = spec.paradigm.params.plugins()
    return spec.train.teach or any(getattr(p, "needs_checkpoints", True) for p in plugins)


def check_job(spec: JobSpec, ds: Dataset) -> HeadShapes:
    """What a job can check before it writes anything, also run by ``carls submit``: its
    augmentation fits its examples, and its model builds, fits them and has the named
    outputs (``SpecError`` / ``ModelError`` naming what to fix)."""
    inputs = _inputs(spec, ds)
    _check_augment(spec, inputs)
    return check_model(spec, tuple(inputs.x_train.shape[1:]), ds.classes)[3]


def write_state(
    jobs: JobStore,
    job_id: str,
    state: dict[str, Any],
    *,
    final: bool,
    give_up: threading.Event | None = None,
) -> bool:
    """Write a job's state; return whether it was written. While the bank is
    unavailable, a progress record is retried with backoff for up to ``STATE_RETRY_S``
    (or until ``give_up`` is set) and then left for the next one; a ``final`` one (the
    job's start and its end) is retried until the bank takes it, so a job is never left
    ``running``, and its offset is committed only after."""
    deadline = time.monotonic() + STATE_RETRY_S

    def stop(pause: float) -> bool:
        late = time.monotonic() + pause > deadline or (give_up is not None and give_up.is_set())
        return not final and late

    wait = give_up.wait if give_up is not None and not final else time.sleep
    try:
        retry_unavailable(
            # heard_at: when its process last said something (`carls job status` says
            # when a running job has gone quiet for long: its process may be gone)
            lambda: jobs.put(job_id, {**state, "heard_at": time.time()}),
            f"job {job_id}: saving its state",
            stop=stop,
            wait=wait,
        )
    except BankUnavailableError as exc:
        log.warning("job %s: state not saved (%s); training goes on", job_id, exc)
        return False
    return True


class _ProgressWriter:
    """Writes a job's progress records from a thread of its own, the newest first and
    only it, so that a bank outage never stalls training over a progress record."""

    def __init__(self, jobs: JobStore, job_id: str) -> None:
        self.jobs, self.job_id = jobs, job_id
        self._pending: dict[str, Any] | None = None
        self._cond = threading.Condition()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="job-progress", daemon=True)
        self._thread.start()

    def submit(self, state: dict[str, Any]) -> None:
        snapshot = json.loads(json.dumps(state))  # the trainer goes on changing its own
        with self._cond:
            self._pending = snapshot
            self._cond.notify()

    def close(self) -> None:
        """Stop; a record still being retried is given up (the final write follows)."""
        self._closing.set()
        with self._cond:
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closing.is_set():
                    self._cond.wait()
                state, self._pending = self._pending, None
            if state is None:
                return
            write_state(self.jobs, self.job_id, state, final=False, give_up=self._closing)


class StopSignal:
    """Asks a running job to stop at its next step, saying why (the first reason wins)."""

    CANCELLED = "cancelled (carls job cancel)"
    LOST = "its trainer lost the job's lease: another trainer runs it now"

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str | None = None

    def set(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)


class _StopTraining(keras.callbacks.Callback):  # type: ignore[misc]  # Keras is untyped
    def __init__(self, stop: StopSignal) -> None:
        super().__init__()
        self.stop = stop

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        if self.stop.is_set():
            self.model.stop_training = True


class _AfterFirstStep(keras.callbacks.Callback):  # type: ignore[misc]  # Keras is untyped
    """Calls ``then`` once, when the first training step (its tracing included) is done:
    the members of a job group wait there for each other, so none runs ahead while
    another is still building its model."""

    def __init__(self, then: Callable[[], None]) -> None:
        super().__init__()
        self.then: Callable[[], None] | None = then

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        if self.then is not None:
            then, self.then = self.then, None
            then()


class JobRun:
    """One job from start to finish; ``run()`` returns the final state dict.

    ``stop`` ends it early: cancelled (its state says so), or taken over by another
    trainer (nothing more is written: the state is the new attempt's now)."""

    def __init__(
        self,
        job_id: str,
        spec: JobSpec,
        ctx: Context,
        say: Say = lambda _: None,
        attempt: int = 1,
        *,
        retries: list[dict[str, Any]] | None = None,
        trainer: str | None = None,
        group: str | None = None,
        stop: StopSignal | None = None,
        after_first_step: Callable[[], None] | None = None,
    ):
        self.job_id, self.spec, self.ctx, self.say = job_id, spec, ctx, say
        self.after_first_step = after_first_step
        """Called once after the first training step (a job group's start barrier)."""
        self.stop = stop if stop is not None else StopSignal()
        self._progress: _ProgressWriter | None = None
        self.board: KnowledgeBoard | None = None
        """The job's TensorBoard writer (with a ``Context.log_dir``)."""
        self.model: Any = None
        """The job's ``KnowledgeModel``, once built (its reader, its paradigms)."""
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
            "attempts": attempt,
            "retries": list(retries or []),
            "trainer": trainer,
            "group": group,
            "logdir": str(ctx.log_dir / job_id) if ctx.log_dir is not None else None,
        }

    def save_state(self, *, final: bool = False, **changes: Any) -> None:
        """Update the job's state and write it to the job store: progress in the
        background, the job's start and end here and now (``write_state``)."""
        self.state.update(changes)
        if self.ctx.jobs is None:
            return
        if final or self._progress is None:
            write_state(self.ctx.jobs, self.job_id, self.state, final=True)
        else:
            self._progress.submit(self.state)

    def run(self) -> dict[str, Any]:
        self.save_state(final=True, state="running", started_at=time.time())
        if self.ctx.jobs is not None:
            self._progress = _ProgressWriter(self.ctx.jobs, self.job_id)
        try:
            self._train()
        except Exception as exc:
            if self.stop.reason == StopSignal.LOST:
                self._end(write=False)
                raise
            log.exception("job %s failed", self.job_id)
            self._end(state="failed", reason=f"{type(exc).__name__}: {exc}")
            raise
        if self.stop.reason == StopSignal.LOST:
            self.say(f"{self.job_id}: stopped: {StopSignal.LOST}")
            self._end(write=False)
        elif self.stop.reason is not None:
            self._end(state="cancelled", reason=self.stop.reason)
        else:
            self._end(state="succeeded")
        return self.state

    def _end(self, write: bool = True, **changes: Any) -> None:
        if self.board is not None:
            self.board.close()
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        if write:
            self.save_state(final=True, finished_at=time.time(), **changes)

    # ------------------------------------------------------------------------------------
    def _train(self) -> None:
        spec, tr = self.spec, self.spec.train
        started = time.monotonic()
        np.random.seed(tr.seed)
        keras.utils.set_random_seed(tr.seed)
        store = self.ctx.store
        blobs = store.blobs if isinstance(store, ArtifactStore) else None
        limit = store.max_bytes if isinstance(store, ArtifactStore) else MAX_BYTES
        ds = retry_unavailable(  # a bank:// dataset: wait for the bank as for job state
            lambda: load_dataset(spec.dataset, tr.seed, blobs, limit),
            f"{self.job_id}: reading dataset {spec.dataset.display_name}",
            stop=lambda _: time.monotonic() - started > STATE_RETRY_S,
        )
        hyper = isinstance(spec.paradigm.params, HyperLearn)
        if hyper:
            ds = transductive(ds)
        inputs = _inputs(spec, ds)
        _check_augment(spec, inputs)  # check_job's first half; _wrap checks the model
        self._check_sources(ds.classes)
        held = hold_out(ds, tr.holdout, tr.seed)
        km = self._wrap(ds, inputs)
        for p in km.knowledge.publishing:
            if isinstance(p, Message) and p.role == "send":  # the receiver tests on these
                p.also_publish(ds.ids_test, inputs.x_test)
        for p in km.knowledge.paradigms:
            if isinstance(p, HyperLearn):
                if blobs is None:
                    raise SpecError(
                        "paradigm",
                        "a hypergraph learner reads its task's hypergraph from the bank's "
                        "blob store: run it with CARLS_CHECKPOINT_STORE=bank (the default)",
                    )
                p.attach(HypergraphStore(blobs), self.ctx.bank, self.stop.is_set)
        km.knowledge.view.held_out = np.where(held, ds.y_train, -1).astype(np.int32)
        self.model = km
        self._register(ds, km)
        self.say(
            f"{self.job_id}: {len(ds.ids_train)} training examples "
            f"({int(ds.labeled.sum())} labeled"
            + (f", {int(held.sum())} held out" if held.any() else "")
            + f"), {ds.classes} classes, paradigm {spec.paradigm.name}"
        )
        batches = self._batches(ds, inputs, km)
        callbacks: list[Any] = []
        publish = self._publish_checkpoints()
        if publish is not None:
            callbacks.append(publish)
        if self.ctx.log_dir is not None:
            self.board = KnowledgeBoard(self.ctx.log_dir / self.job_id)
            callbacks.append(self.board)
        job_log = _JobLog(self, km, inputs.x_test, ds.y_test, self._test_inputs(ds, km))
        callbacks += [job_log, _StopTraining(self.stop), StepMetrics()]
        if self.after_first_step is not None:
            callbacks.append(_AfterFirstStep(self.after_first_step))
        every = min(tr.eval_every, tr.steps)
        with km:  # the reader stops whatever happens
            km.fit(
                batches,
                steps_per_epoch=every,
                epochs=math.ceil(tr.steps / every),
                callbacks=callbacks,
                verbose=0,
            )
            reader = km.knowledge.reader
            self.save_state(  # test_accuracy: the last step's eval, recorded by _JobLog
                step=job_log.done,
                checkpoints=(
                    len(publish.checkpoints.published)
                    if publish is not None and publish.checkpoints is not None
                    else 0
                ),
                staleness=reader.staleness.as_dict() if reader is not None else None,
                knowledge_coverage=reader.coverage() if reader is not None else None,
                train_seconds=round(time.monotonic() - job_log.t0, 2),
                train_cpu_seconds=round(time.process_time() - job_log.cpu0, 2),
            )

    def _test_inputs(self, ds: Dataset, km: Any) -> Callable[[Any], Any] | None:
        """For a message's receiver: the test features with the sender's latest message
        of each test example put in (read from the bank at each evaluation); for a
        hypergraph learner, its test nodes' filled columns."""
        p = self.spec.paradigm.params
        learner = next((q for q in km.knowledge.paradigms if isinstance(q, HyperLearn)), None)
        if learner is not None:
            test_rows = np.arange(len(ds.ids_test)) + len(ds.ids_train) - len(ds.ids_test)
            return lambda x: learner.fill(x, test_rows)
        if not isinstance(p, Message) or p.role != "receive":
            return None
        bank, peer, ids = self.ctx.bank, p.peer, ds.ids_test

        def fill(x: Any) -> Any:
            out = np.array(x, np.float32)
            try:
                got = bank.read(peer, "message", ids)
            except CarlsError as exc:  # the sender has not started yet, or the bank is away
                if not (isinstance(exc, NamespaceError) or exc.retriable):
                    raise
                log.warning("%s: test messages unread (%s); evaluating without", peer, exc)
                out[:, -p.size :] = 0.0
                return out
            out[:, -p.size :] = np.where(got.missing[:, None], 0.0, got.values)
            return out

        return fill

    def _check_sources(self, classes: int) -> None:
        """What the paradigm reads from other namespaces (a teacher) is there: checked
        at submit time, and again here, since a queued job may run much later."""
        if not self.spec.paradigm.params.requires():
            return
        pub = self.ctx.publisher
        has_checkpoint = None
        if pub is not None:

            def has_checkpoint(namespace: str, since: float) -> bool:
                found = latest_manifest(pub.conn, pub.topics.checkpoints, namespace, since)
                return found is not None

        check_sources(self.spec, self.ctx.bank, has_checkpoint, {"prediction": classes})

    def _wrap(self, ds: Dataset, inputs: _Inputs) -> Any:
        """The ``KnowledgeModel``, with the job's optimizer compiled in; the model, its
        outputs and the paradigms are all checked here, before anything is written."""
        from carls.trainers.wrapper import KnowledgeModel

        spec, tr = self.spec, self.spec.train
        shape = tuple(inputs.x_train.shape[1:])
        model, embedding, logits, shapes = check_model(spec, shape, ds.classes)
        km = KnowledgeModel(
            model,
            from_spec(spec),
            bank=self.ctx.bank,
            namespace=spec.namespace,
            ids=ds.ids_train,
            labels=ds.labels_for_bank(),
            features=inputs.x_train,
            embedding=embedding,
            logits=logits,
            input_shape=shapes.input_shape,
            max_staleness=tr.max_staleness,
            teach=tr.teach,
        )
        km.compile(
            optimizer=keras.optimizers.AdamW(
                learning_rate=tr.learning_rate,
                weight_decay=tr.weight_decay,
                use_ema=tr.ema > 0,
                ema_momentum=tr.ema or 0.99,
            ),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        return km

    def _register(self, ds: Dataset, km: Any) -> None:
        """Create the namespace (or check the existing one fits the job) and register the
        training examples, with their labels (-1: unlabeled) and modality."""
        spec = self.spec
        try:
            existing: NamespaceSpec | None = self.ctx.bank.namespace(spec.namespace)
        except NamespaceError:
            existing = None
        # errors that name the spec's fields, before register_examples checks the kinds
        user_model = spec.model.builder is not None or spec.model.path is not None
        emb = km.heads.shapes.embedding_dim if user_model else None
        validate_against_namespace(spec, ds, existing, emb)
        try:
            km.register_examples(buckets=self.ctx.buckets)
        except DimensionError as exc:
            for p in km.knowledge.paradigms:
                hint = self._width_hint(p) if isinstance(p, HyperLearn) else ""
                if hint:
                    raise DimensionError(f"{exc}: {hint}") from exc
            raise

    def _width_hint(self, learner: HyperLearn) -> str:
        """What a hypergraph learner's changed feature width means, in its own columns
        (the bank sees them padded)."""
        ns = self.spec.namespace
        try:
            spec = self.ctx.bank.namespace(ns)
            for b in range(spec.buckets):
                some = self.ctx.bank.example_ids(ns, b)[:1]
                if some:
                    had = self.ctx.bank.fetch_examples(ns, some).features.reshape(1, -1).shape[1]
                    break
            else:
                return ""
        except CarlsError:
            return ""
        was = learner.own_columns(had)
        return (
            f"modality {learner.modality} had {was} feature columns in {ns}, now "
            f"{learner.own_columns(None)} (a hypergraph learner's examples are its d columns "
            f"padded to 2d + slots * (embedding_dim + 1)); a modality keeps its width in its "
            f"namespace: drop {ns} (carls bank drop {ns}) or train it under a new task"
        )

    def _batches(self, ds: Dataset, inputs: _Inputs, km: Any) -> Any:
        """Endless batches of ``labeled_batch_size`` labeled examples and ``batch_size``
        unlabeled ones (labeled only when no paradigm reads unlabeled examples), with a
        random augmented view of each image and cutout on the unlabeled ones."""
        from carls.trainers.feed import augmented, example_batches

        tr = self.spec.train
        labels = ds.labels_for_bank()
        n_labeled = int(ds.labeled.sum())
        lab_bs = min(tr.labeled_batch_size, n_labeled)
        x = inputs.x_train
        shape = tuple(x.shape[1:])
        n = len(x)
        if tr.augment != "none":
            flat = augment.views(
                tr.augment,
                inputs.raw.reshape(n, -1),
                ds.standardize,
                tr.augment_views,
                tr.seed,
                image=inputs.image,
                corruption=tr.corruption,
            )
            x = flat.reshape((n, flat.shape[1], *shape))
        if not km.knowledge.reads_unlabeled:
            rows = np.flatnonzero(ds.labeled)
            ids = [ds.ids_train[i] for i in rows]
            batches = example_batches(ids, x[rows], labels[rows], batch_size=lab_bs, seed=tr.seed)
        else:
            unlabeled = len(labels) - n_labeled
            batch_size = min(tr.batch_size, unlabeled or len(labels))
            batches = example_batches(
                ds.ids_train,
                x,
                labels,
                batch_size=batch_size,
                labeled_batch_size=lab_bs,
                seed=tr.seed,
            )
        views = x.ndim > inputs.x_train.ndim
        if not views and not tr.cutout:
            return batches
        blank = ds.standardize(np.zeros((1, math.prod(shape))))[0]  # the background
        return augmented(
            batches, views=views, cutout=tr.cutout, blank=blank, image_shape=inputs.image
        )

    def _publish_checkpoints(self) -> Any:
        """The checkpoint callback; None when the job publishes none (``train.publish``:
        by default, one whose paradigm reads no knowledge) or has no Kafka."""
        from carls.trainers.callbacks import PublishCheckpoints

        ctx, tr = self.ctx, self.spec.train
        if ctx.publisher is None or not publishes(self.spec):
            return None
        return PublishCheckpoints(
            ctx.publisher,
            ctx.store,
            every_steps=tr.checkpoint_every,
            every_s=tr.checkpoint_every_s,
            warmup_steps=tr.warmup_steps,
            producer=ctx.producer,
            ema=tr.ema,  # the makers serve the average too: a steadier teacher
        )

    def record(
        self,
        step: int,
        acc: float,
        km: Any,
        losses: dict[str, float],
        before: tuple[float, int],
        t0: float,
    ) -> tuple[float, int]:
        """One history entry: test accuracy, the knowledge's mean staleness since the
        previous entry (``before``: the staleness sums then), coverage, the mean loss terms
        and what the paradigms used; returns the staleness sums now."""
        reader = km.knowledge.reader
        st = reader.staleness if reader is not None else None
        now = (st.sum, st.total - st.missing) if st is not None else (0.0, 0)
        mean = None
        if st is not None and now[1] > before[1]:
            mean = (now[0] - before[0]) / (now[1] - before[1])
        coverage = reader.coverage() if reader is not None else {}
        entry = {
            "step": step,
            "test_accuracy": acc,
            "staleness_mean": mean,
            "knowledge_coverage": min(coverage.values()) if coverage else None,
            "loss": losses,
            "knowledge_use": dict(km.knowledge.view.stats),
            "seconds": time.monotonic() - t0,
        }
        self.state["history"].append(entry)
        if self.board is not None:
            self.board.scalar("test/accuracy", acc)
        self.save_state(step=step, test_accuracy=acc)
        self.say(
            f"{self.job_id}: step {step}/{self.spec.train.steps} test accuracy {acc:.3f}"
            + (f", knowledge staleness {mean:.0f} steps" if mean is not None else "")
        )
        return now


class _JobLog(keras.callbacks.Callback):  # type: ignore[misc]  # Keras is untyped
    """Stops ``fit`` after the job's steps and, every ``eval_every`` steps (an epoch),
    records the test accuracy (of the averaged weights when the job keeps an average) and
    the epoch's mean loss terms in the job's history."""

    def __init__(
        self,
        job: JobRun,
        km: Any,
        x_test: Any,
        y_test: Any,
        test_inputs: Callable[[Any], Any] | None = None,
    ) -> None:
        super().__init__()
        self.job, self.km, self.x_test, self.y_test = job, km, x_test, y_test
        self.test_inputs = test_inputs
        """Makes the test inputs at each evaluation (a receiver's: the latest messages)."""
        self.done = 0
        self.t0 = time.monotonic()
        self.cpu0 = time.process_time()
        self._before: tuple[float, int] = (0.0, 0)
        self._saved_at = time.monotonic()

    def on_train_begin(self, logs: Any = None) -> None:
        self.t0 = time.monotonic()
        self.cpu0 = time.process_time()
        # fit runs whole epochs of eval_every steps; training is the job's steps, after
        # which this callback stops it: paradigms that ramp or pace see that length
        self.km.total_steps = self.job.spec.train.steps
        base = self.km.step_base  # set by PublishCheckpoints, which runs first
        if base:
            self.job.say(
                f"{self.job.job_id}: namespace {self.job.spec.namespace} has checkpoints up "
                f"to step {base}; this job's steps follow on"
            )
        self.job.save_state(step_base=base)

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.done += 1
        if self.done >= self.job.spec.train.steps:
            self.model.stop_training = True
        elif time.monotonic() - self._saved_at >= STEP_SAVE_S:  # for `job status --follow`
            self._saved_at = time.monotonic()
            self.job.save_state(step=self.done)

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        logs = dict(logs or {})
        terms = {n: float(logs[n]) for n in self.km.term_names if n in logs}
        losses = {"supervised": float(logs.get("loss", 0.0)) - sum(terms.values()), **terms}
        self._before = self.job.record(
            self.done, self.accuracy(), self.km, losses, self._before, self.t0
        )

    def accuracy(self) -> float:
        swap = None
        if getattr(self.km.optimizer, "use_ema", False):
            swap = keras.callbacks.SwapEMAWeights()
            swap.set_model(self.km)
            swap.on_test_begin()  # the averaged weights in, for the evaluation
        try:
            x = self.x_test if self.test_inputs is None else self.test_inputs(self.x_test)
            logits = self.km.predict(x, batch_size=1024, verbose=0)
        finally:
            if swap is not None:
                swap.on_test_end()
        return float((np.argmax(logits, 1) == self.y_test).mean())
