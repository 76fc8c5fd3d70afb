"""``KnowledgeModel``: carls knowledge terms around any Keras 3 model, with plain
``compile``/``fit``/``evaluate``.

The user keeps their model (functional, sequential or subclassed) and names which outputs
are the embedding and the logits; the wrapper shares its weights, returns the logits from
``call`` (so the compiled loss and metrics see them), and adds each paradigm's loss terms
in ``train_step``. Training batches carry example ids next to the features
(``{"id": ..., "features": ...}``, see ``carls.trainers.feed.example_batches``); the ids are
looked up in a table inside the graph and the paradigms' knowledge is gathered from the
knowledge reader's local cache on the host (for a ``tf.data`` pipeline, inside the pipeline,
overlapping the previous step), so a step never waits on the bank. Labels of
``-1`` mark unlabeled examples: the supervised term and the metrics skip them.

Everything that can be checked is checked in the constructor, before any step runs and
before anything is written: the named outputs exist, are rank 2 and floating point, the
paradigms' terms build on them, and the ids, labels and features agree.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
import numpy.typing as npt
import tensorflow as tf

from carls.bank.errors import NamespaceError
from carls.bank.protocol import KnowledgeBank
from carls.bank.retry import past, retry_unavailable
from carls.bank.types import NO_LABEL, NamespaceSpec, default_kinds
from carls.schemas import names
from carls.schemas.errors import SchemaError
from carls.trainers.errors import DatasetError, ModelError
from carls.trainers.knowledge import Knowledge
from carls.trainers.outputs import ModelHeads, OutputName
from carls.trainers.paradigms import Graph, Multimodal, Paradigm, Setup
from carls.trainers.paradigms.graph import DEFAULT_K
from carls.trainers.writer import KnowledgeWriter

REGISTER_CHUNK = 5000
REGISTER_RETRY_S = 300.0
"""How long registering examples waits for a bank that times out or is away, then fails."""
log = logging.getLogger(__name__)
JOINED = "carls_knowledge"
"""The key under which ``join`` adds a batch's knowledge to its inputs."""
SUPERVISED_WEIGHT = "carls_supervised_weight"
HINT_EVERY = 10
"""Steps between hints to the reader (and demand to the makers) of the batch's ids."""
JOIN_GROUP = 8
"""Batches joined in one host call by ``KnowledgeModel.join`` (when their size is static)."""


class KnowledgeModel(keras.Model):  # type: ignore[misc]  # Keras is untyped
    """``base`` with the knowledge terms of ``paradigms`` for examples ``ids``.

    Args:
        base: any Keras model whose outputs include an embedding and logits.
        paradigms: the paradigm plug-ins (``carls.trainers.paradigms``); none is plain
            supervised training.
        bank: the knowledge bank the paradigms read (and ``register_examples`` writes).
        namespace: the bank namespace of this training run.
        ids: one unique string id per training example.
        labels: the training labels, ``-1`` for unlabeled examples.
        features: the training features (any shape per example); used for the bootstrap
            neighbour graph and by ``register_examples``.
        embedding, logits: which outputs are which: dict keys, positions in a list of
            outputs, or (functional models) layer names.
        input_shape: the per-example input shape, for a model that does not declare it.
        max_staleness: knowledge more than this many steps behind its source's clock is
            masked out (a frozen source, a teacher, is never stale).
        teach: the namespace also declares the ``instruction`` kind a student's
            ``Teacher`` paradigm reads (see ``publish_teacher``).
    """

    fit_callbacks: tuple[Any, ...] = ()
    """The callbacks of the latest ``fit`` (a ``KnowledgeBoard`` finds the checkpoint
    publisher among them)."""

    def __init__(
        self,
        base: keras.Model,
        paradigms: Sequence[Paradigm] = (),
        *,
        bank: KnowledgeBank | None,
        namespace: str,
        ids: Sequence[str],
        labels: npt.ArrayLike,
        features: npt.ArrayLike | None = None,
        embedding: OutputName = "embedding",
        logits: OutputName = "logits",
        input_shape: Sequence[int] | None = None,
        max_staleness: int | None = 1000,
        teach: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        try:
            names.validate_name(namespace, "namespace")
        except SchemaError as exc:
            raise ModelError(str(exc)) from exc
        self.base = base
        self.teach = teach
        self.heads = ModelHeads(base, embedding, logits, input_shape)
        shapes = self.heads.shapes
        self.namespace = namespace
        self.bank = bank
        self.ids = _check_ids(ids)
        self.labels = _check_labels(labels, len(self.ids), shapes.classes)
        self.features = (
            None if features is None else _check_features(features, len(self.ids), shapes)
        )
        setup = Setup(
            namespace, shapes.classes, shapes.embedding_dim, tuple(self.ids), self.features
        )
        self.knowledge = Knowledge(paradigms, setup, bank, self.labels, max_staleness=max_staleness)
        self._names = sorted(self.knowledge.signature)
        self.term_names = self._check_terms()
        """The paradigms' loss terms, by name (as in ``fit``'s logs)."""
        self.paradigm_layers = self.knowledge.layers()
        """Layers the paradigms add (a message head), trained with the model."""
        self.writer: KnowledgeWriter | None = None
        """Writes what the paradigms publish themselves (messages, feedback)."""
        self._terms = _TermMeans(self.term_names)
        self._rows = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(self.ids), tf.range(len(self.ids), dtype=tf.int64)
            ),
            default_value=-1,
        )
        self.step_base = 0
        """The namespace's step before this run (set by ``PublishCheckpoints``)."""
        self.total_steps: int | None = None
        self._host_steps = 0

    # Set-up --------------------------------------------------------------------------------
    def kinds(self) -> dict[str, int]:
        """The bank kinds (with widths) this run's namespace needs."""
        s = self.heads.shapes
        k = max([p.k for p in self.knowledge.paradigms if isinstance(p, Graph)] or [DEFAULT_K])
        out = default_kinds(s.embedding_dim, s.classes, k)
        for src in self.knowledge.sources:
            if src.namespace == self.namespace:
                out[src.kind] = max(out.get(src.kind, 0), src.dim)
        if self.teach:
            out["instruction"] = 2
        for p in self.knowledge.publishing:
            out[p.own_kind] = p.own_dim
        if (m := self._multimodal()) is not None:  # the makers write this modality's kind
            for modality in (m.modality, *m.others):
                out[f"embedding/{modality}"] = s.embedding_dim
        return out

    def _multimodal(self) -> Multimodal | None:
        return next((p for p in self.knowledge.paradigms if isinstance(p, Multimodal)), None)

    def register_examples(self, buckets: int = 8) -> int:
        """Create the namespace (or check the existing one fits) and register the
        examples' flat features and labels, so makers can make their knowledge."""
        if self.bank is None or self.features is None:
            raise ModelError("register_examples needs the bank and the features")
        kinds = self.kinds()
        try:
            existing: NamespaceSpec | None = self.bank.namespace(self.namespace)
        except NamespaceError:
            existing = None
        if existing is None:
            self.bank.create_namespace(NamespaceSpec(self.namespace, kinds, buckets=buckets))
        else:
            for kind, dim in kinds.items():
                have = existing.kinds.get(kind)
                if have != dim and not (kind == "neighbours" and have is not None and have >= dim):
                    raise ModelError(
                        f"namespace {self.namespace} exists with {kind} of width {have}; "
                        f"this model needs {dim}: use a new namespace or drop the old one"
                    )
        flat = self.features.reshape(len(self.ids), -1)
        m = self._multimodal()
        modality = m.modality if m is not None else None
        written = 0
        deadline = time.monotonic() + REGISTER_RETRY_S
        bank = self.bank
        for s in range(0, len(self.ids), REGISTER_CHUNK):
            part = slice(s, s + REGISTER_CHUNK)
            # a write that timed out on a loaded server is sent again (rows are upserts)
            written += retry_unavailable(
                functools.partial(
                    bank.register_examples,
                    self.namespace,
                    self.ids[part],
                    flat[part],
                    self.labels[part].tolist(),
                    modality=modality,
                ),
                f"registering the examples of {self.namespace}",
                stop=past(deadline),
            )
        return written

    def _check_terms(self) -> list[str]:
        """Build every paradigm's loss once on zeros of the right shapes: a paradigm that
        cannot work with this model fails here, not at the first step."""
        s = self.heads.shapes
        zeros = {
            name: tf.zeros((2, *spec.shape), spec.dtype)
            for name, spec in self.knowledge.signature.items()
        }
        emb = tf.zeros((2, s.embedding_dim))
        logits = tf.zeros((2, s.classes))
        try:
            terms = self.knowledge.loss(zeros, emb, logits)
        except Exception as exc:
            raise ModelError(f"a paradigm's loss does not build on this model: {exc}") from exc
        return sorted(terms)

    # Keras ---------------------------------------------------------------------------------
    def call(self, inputs: Any, training: bool = False) -> Any:
        x = inputs["features"] if isinstance(inputs, Mapping) else inputs
        _, logits = self.heads(x, training=training)
        return logits

    def compile(self, *args: Any, **kwargs: Any) -> None:
        """``keras.Model.compile``; XLA is off because knowledge joins on the host."""
        if kwargs.get("jit_compile") is True:
            raise ModelError("jit_compile=True: the knowledge join runs on the host, not XLA")
        kwargs["jit_compile"] = False
        super().compile(*args, **kwargs)

    def fit(self, *args: Any, **kwargs: Any) -> Any:
        """``keras.Model.fit``, with the knowledge reader running (and stopped afterwards,
        also when training fails, unless a ``with`` block around it keeps it)."""
        callbacks = list(kwargs.pop("callbacks", None) or [])
        # (untracked by Keras: callbacks are no part of the model's state)
        object.__setattr__(self, "fit_callbacks", tuple(callbacks))
        kwargs["callbacks"] = [_Progress(self), *callbacks]
        if self.knowledge.publishing:
            kwargs["callbacks"].append(_PublishKnowledge(self))
        data = args[0] if args else kwargs.get("x")
        if isinstance(data, tf.data.Dataset):
            # a dataset shuffles itself (``example_batches`` does)
            kwargs.setdefault("shuffle", False)
            joined = self.join(data)
            args, kwargs = (
                ((joined, *args[1:]), kwargs) if args else (args, {**kwargs, "x": joined})
            )
        started_here = not self.knowledge.started
        self.knowledge.start()
        try:
            return super().fit(*args, **kwargs)
        finally:
            # Keras skips ``on_train_end`` when training raises: callbacks that hold a
            # thread (checkpoint announcements) release it here in any case.
            for cb in callbacks:
                after_fit = getattr(cb, "after_fit", None)
                if callable(after_fit):
                    try:
                        after_fit()
                    except Exception:  # never hides how fit ended, nor stops the rest
                        log.exception("%s.after_fit failed", type(cb).__name__)
            if started_here:  # outside ``with``: the reader lives as long as this fit
                self.close()

    def train_step(self, data: Any) -> dict[str, Any]:
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if not isinstance(x, Mapping) or "id" not in x or "features" not in x:
            raise ModelError(
                "KnowledgeModel trains on batches of ({'id': ids, 'features': x}, labels); "
                "carls.trainers.example_batches(...) makes them"
            )
        features = x["features"]
        joined = x.get(JOINED)
        if joined is None:  # arrays, or a dataset fit() did not see: join inside the step
            joined = self._join_ids(x["id"])
        knowledge = {n: joined[n] for n in self._names}
        y = tf.reshape(tf.cast(y, tf.int32), (-1,))
        labeled = tf.cast(y >= 0, tf.float32)
        weight = labeled * joined[SUPERVISED_WEIGHT]
        if sample_weight is not None:
            weight = weight * tf.reshape(tf.cast(sample_weight, tf.float32), (-1,))
        # The compiled loss averages over the batch; rescale so it averages over the
        # labeled (weighted) rows instead.
        batch = tf.cast(tf.shape(weight)[0], tf.float32)
        weight = weight * batch / tf.maximum(tf.reduce_sum(weight), 1.0)
        y_safe = tf.maximum(y, 0)
        features = self.knowledge.inputs(knowledge, features)
        with tf.GradientTape() as tape:
            emb, logits = self.heads(features, training=True)
            loss = self.compute_loss(
                x=features, y=y_safe, y_pred=logits, sample_weight=weight, training=True
            )
            terms = self.knowledge.loss(knowledge, emb, logits)
            total = loss + tf.add_n(list(terms.values())) if terms else loss
            scaled = self.optimizer.scale_loss(total)
        variables = self.trainable_variables
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply(grads, variables)
        self._loss_tracker.update_state(total, sample_weight=tf.shape(y)[0])
        for name, value in terms.items():
            self._terms.means[name].update_state(value)
        logs: dict[str, Any] = self.compute_metrics(features, y_safe, logits, sample_weight=labeled)
        # The knowledge terms' means over the epoch; kept out of ``self.metrics`` so that
        # evaluate() reports only the compiled loss and metrics, as for any Keras model.
        return {**logs, **{n: m.result() for n, m in self._terms.means.items()}}

    def _join_ids(self, ids: Any) -> dict[str, Any]:
        """The paradigms' arrays for a batch of ids (or for a group of batches, ``ids``
        of shape ``[batches, batch]``), gathered on the host in one call."""
        lead = tf.shape(ids)
        rows = self._rows.lookup(tf.reshape(ids, (-1,)))
        batches = lead[0] if len(ids.shape) == 2 else tf.constant(1)
        specs = [self.knowledge.signature[n] for n in self._names]
        out = tf.numpy_function(
            self._host, [rows, batches], [*(tf.as_dtype(s.dtype) for s in specs), tf.float32]
        )
        joined = {
            n: tf.reshape(t, tf.concat([lead, s.shape], 0))
            for n, s, t in zip(self._names, specs, out[:-1], strict=True)
        }
        joined[SUPERVISED_WEIGHT] = tf.reshape(out[-1], lead)
        return joined

    def join(self, dataset: Any, group: int = JOIN_GROUP) -> Any:
        """``dataset`` with each batch's knowledge joined to it in the input pipeline, so
        the gather overlaps training (``fit`` does this itself for a ``tf.data.Dataset``).

        When every batch has the same, static size (``example_batches``' do, as does any
        ``batch(..., drop_remainder=True)``), ``group`` batches are joined in one host
        call, as of the first one's step: the host's fixed cost per call is what a short
        training step notices. The step numbers staleness is measured against run ahead
        of training by the pipeline's prefetch, a few groups."""
        spec = dataset.element_spec
        x = spec[0] if isinstance(spec, tuple) else spec
        if not isinstance(x, Mapping) or "id" not in x or JOINED in x:
            return dataset  # not ours to join (train_step explains), or joined already

        def add(x: Any, *rest: Any) -> Any:
            return ({**x, JOINED: self._join_ids(x["id"])}, *rest)

        if group > 1 and _static_batch(spec) is not None:
            joined = dataset.batch(group).map(add).unbatch()
            count = int(dataset.cardinality())
            if count >= 0:  # unbatch forgets it; fit's progress and paradigms need it
                joined = joined.apply(tf.data.experimental.assert_cardinality(count))
            return joined.prefetch(group)
        return dataset.map(add, num_parallel_calls=1, deterministic=True).prefetch(2)

    def _host(self, rows: npt.NDArray[np.int64], batches: Any = 1) -> list[npt.NDArray[Any]]:
        """The paradigms' knowledge for ``batches`` consecutive batches' ``rows`` (one flat
        array), from the reader's cache (host side)."""
        n = int(batches)
        first = self._host_steps + 1
        self._host_steps += n
        if (rows < 0).any():
            raise ModelError(
                f"{int((rows < 0).sum())} example id(s) in the batch are not among the "
                "ids given to KnowledgeModel"
            )
        step = self.step_base + first
        total = self.total_steps
        self.knowledge.view.progress = min(1.0, first / total) if total else 1.0
        for j, batch in enumerate(np.split(rows, n)):  # batches' hints as if one by one
            if (first + j) % HINT_EVERY == 0:
                self.knowledge.hint(batch)
        arrays = self.knowledge.batch(rows, step, n)
        weights = self.knowledge.supervised_weights(rows, step)
        return [
            *(np.asarray(arrays[n], self.knowledge.signature[n].dtype) for n in self._names),
            weights if weights is not None else np.ones(len(rows), np.float32),
        ]

    # Lifecycle -----------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the knowledge reader's thread (also done by ``with``), and write what the
        paradigms published that is not written yet."""
        self.knowledge.close()
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __enter__(self) -> KnowledgeModel:
        self.knowledge.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _PublishKnowledge(keras.callbacks.Callback):  # type: ignore[misc]
    """Publishes what the paradigms publish themselves, at the first step, every ``every``
    steps and at the end, through the model's ``KnowledgeWriter`` (training never waits)."""

    def __init__(self, model: KnowledgeModel) -> None:
        super().__init__()
        self._km = model
        self._first = 0

    def on_train_begin(self, logs: Any = None) -> None:
        km = self._km
        if km.bank is None:
            raise ModelError(f"{km.namespace}: publishing knowledge needs the model's bank")
        if km.writer is None:
            km.writer = KnowledgeWriter(km.bank, km.namespace, f"trainer-{km.namespace}")
        self._first = int(km.optimizer.iterations.numpy())
        # An earlier run's knowledge in this namespace has steps of its own: this run's
        # follow on, or the bank (step-ordered writes) would keep the old rows.
        sample = km.ids[:: max(1, len(km.ids) // 256)]
        for p in km.knowledge.publishing:
            try:
                steps = km.bank.read(km.namespace, p.own_kind, sample, lineage=True).steps
            except NamespaceError:  # not registered: the writer's writes will say so
                continue
            km.step_base = max(km.step_base, int(steps.max(initial=-1)) + 1)

    def _publish(self, every: bool) -> None:
        km = self._km
        done = int(km.optimizer.iterations.numpy()) - self._first
        step = km.step_base + done
        assert km.writer is not None
        for p in km.knowledge.publishing:
            if every or done == 1 or done % p.every == 0:
                batch = p.publish(km.heads, km.knowledge.view, step)
                if batch is not None:
                    km.writer.put(p.own_kind, batch, step)

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self._publish(every=False)

    def on_train_end(self, logs: Any = None) -> None:
        self._publish(every=True)


class _Progress(keras.callbacks.Callback):  # type: ignore[misc]
    """Tells the model how long ``fit`` runs, for paradigms that ramp or pace."""

    def __init__(self, model: KnowledgeModel) -> None:
        super().__init__()
        self._km = model

    def on_train_begin(self, logs: Any = None) -> None:
        epochs, steps = self.params.get("epochs"), self.params.get("steps")
        self._km.total_steps = epochs * steps if epochs and steps else None
        self._km._host_steps = 0
        if self._km.total_steps is None:
            log.warning(
                "fit does not know how many steps it will run (give steps_per_epoch): "
                "paradigms that ramp or pace over training see it as finished"
            )

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        for mean in self._km._terms.means.values():
            mean.reset_state()


class _TermMeans:
    """Running means of the knowledge terms, held outside Keras' tracking (so they are
    not model metrics) and reset at each epoch."""

    def __init__(self, names: Sequence[str]) -> None:
        self.means = {n: keras.metrics.Mean(name=n) for n in names}


def _static_batch(spec: Any) -> int | None:
    """The batch size every element of a dataset with ``spec`` has, if static and shared."""
    sizes = {leaf.shape[0] if leaf.shape.rank else None for leaf in tf.nest.flatten(spec)}
    size = sizes.pop() if len(sizes) == 1 else None
    return size if isinstance(size, int) else None


# Input checks --------------------------------------------------------------------------------
def _check_ids(ids: Sequence[str]) -> list[str]:
    out = [str(i) for i in np.asarray(ids).reshape(-1)] if not isinstance(ids, list) else ids
    if not out:
        raise DatasetError("ids", "no examples")
    if not all(isinstance(i, str) and i for i in out):
        raise DatasetError("ids", "every id must be a non-empty string")
    if len(set(out)) != len(out):
        raise DatasetError("ids", f"{len(out) - len(set(out))} duplicate id(s); ids are unique")
    return list(out)


def _check_labels(labels: npt.ArrayLike, n: int, classes: int) -> npt.NDArray[np.int32]:
    y = np.asarray(labels)
    if y.shape != (n,):
        raise DatasetError("labels", f"expected one label per id ({n}), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DatasetError("labels", f"expected integer class indices, got dtype {y.dtype}")
    bad = (y < NO_LABEL) | (y >= classes)
    if bad.any():
        raise DatasetError(
            "labels",
            f"{int(bad.sum())} label(s) outside -1..{classes - 1} (the model has {classes} "
            f"logits; -1 marks an unlabeled example), e.g. {int(y[bad][0])}",
        )
    return y.astype(np.int32)


def _check_features(features: npt.ArrayLike, n: int, shapes: Any) -> npt.NDArray[np.float32]:
    x = np.asarray(features)
    if len(x) != n:
        raise DatasetError("features", f"{len(x)} rows for {n} ids; give one row per id")
    if tuple(x.shape[1:]) != tuple(shapes.input_shape) and x[0].size != shapes.feature_dim:
        raise DatasetError(
            "features",
            f"each example has shape {x.shape[1:]}, the model takes {shapes.input_shape}",
        )
    if not np.issubdtype(x.dtype, np.number):
        raise DatasetError("features", f"expected numbers, got dtype {x.dtype}")
    x = np.asarray(x, np.float32).reshape((n, *shapes.input_shape))
    if not np.isfinite(x).all():
        raise DatasetError("features", "NaN or Inf in the features")
    return x
