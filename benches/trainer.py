"""``carls bench trainer``: the cost of reading knowledge in a training step.

One compiled pseudo-label + graph step on digits-sized data, timed three ways in one run,
over the same knowledge: (1) from the knowledge reader while its background refresh runs,
(2) from the same knowledge held in in-memory arrays (the floor), (3) read synchronously
from the bank inside every step (what the reader exists to avoid).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from carls.bank.protocol import KnowledgeBank
from carls.bank.types import KnowledgeBatch, Lineage, NamespaceSpec, default_kinds
from carls.trainers.knowledge import Knowledge
from carls.trainers.paradigms import Setup, from_spec
from carls.trainers.reader import KnowledgeReader
from carls.trainers.spec import load_spec

Say = Callable[[str], None]
N, D, C, K, E = 1257, 64, 10, 10, 128
ROUNDS = 3


class _SyncReader(KnowledgeReader):
    """Reads the batch's knowledge from the bank inside ``get`` (no cache, no thread)."""

    def get(
        self, namespace: str, kind: str, indices: Any, current_step: int, max_staleness: int | None
    ) -> Any:
        self.refresh(np.asarray(indices), only=(namespace, kind))
        return super().get(namespace, kind, indices, current_step, max_staleness)


def run(
    bank: KnowledgeBank, *, steps: int = 300, batch: int = 256, say: Say = lambda _: None
) -> dict[str, Any]:
    import keras
    import tensorflow as tf

    from carls.trainers.model import build

    ns = f"bench_trainer_{uuid.uuid4().hex[:8]}"
    spec = load_spec(
        {
            "namespace": ns,
            "dataset": {"name": "digits"},
            "model": {"hidden": [256], "embedding_dim": E, "dropout": 0.2},
            "paradigm": {
                "name": "pseudo_label_graph",
                "params": {"k": K, "target": "probabilities", "threshold": 0.5, "bootstrap": False},
            },
            "train": {"steps": steps, "batch_size": batch},
        }
    )
    rng = np.random.default_rng(0)
    ids = [f"b{i:05d}" for i in range(N)]
    x = rng.standard_normal((N, D)).astype(np.float32)
    y = rng.integers(0, C, N).astype(np.int32)
    labeled = np.zeros(N, bool)
    labeled[:50] = True
    bank.create_namespace(NamespaceSpec(ns, default_kinds(E, C, K)))
    try:
        say("writing the knowledge the three readers share")
        bank.register_examples(ns, ids, x, y.tolist())
        probs = rng.dirichlet(np.ones(C) * 0.3, N).astype(np.float32)
        bank.write(
            ns,
            "pseudo_label",
            KnowledgeBatch(ids, probs, probs.argmax(1).astype(np.int32), probs.max(1)),
            Lineage(1, "bench"),
        )
        nbrs = [[ids[j] for j in rng.choice(N, K, replace=False)] for _ in range(N)]
        bank.write(
            ns,
            "neighbours",
            KnowledgeBatch(ids, rng.random((N, K)).astype(np.float32), neighbour_ids=nbrs),
            Lineage(1, "bench"),
        )
        paradigms = from_spec(spec)
        setup = Setup(ns, C, E, tuple(ids))
        bank_labels = np.where(labeled, y, -1)
        src = [(ns, "pseudo_label", C), (ns, "neighbours", K)]
        model, _ = build(D, C, spec.model)
        opt = keras.optimizers.Adam(1e-3)
        x_t = tf.constant(x)

        @tf.function(reduce_retracing=True)
        def step_fn(lab_idx: Any, lab_y: Any, data: dict[str, Any]) -> Any:
            with tf.GradientTape() as tape:
                _, lg = model(tf.gather(x_t, lab_idx), training=True)
                loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(lab_y, lg))
                emb_u, lg_u = model(tf.gather(x_t, data["u_idx"]), training=True)
                loss += tf.add_n(list(knowledge.loss(data, emb_u, lg_u).values()))
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return loss

        # The same knowledge three ways; each step's loss terms come from ``knowledge``.
        memory = KnowledgeReader(bank, ids, src)
        knowledge = Knowledge(paradigms, setup, bank, bank_labels, reader=memory)

        def timed(reader: KnowledgeReader, n: int) -> list[float]:
            ready = Knowledge(paradigms, setup, bank, bank_labels, reader=reader)
            lab = np.flatnonzero(labeled)
            out = []
            for s in range(n + 20):
                u = rng.choice(N, batch, replace=False)
                t = time.perf_counter()
                data = ready.batch(u, 1)
                data["u_idx"] = u.astype(np.int32)
                step_fn(
                    tf.constant(lab.astype(np.int32)),
                    tf.constant(y[lab]),
                    {k: tf.constant(v) for k, v in data.items()},
                )
                if s >= 20:
                    out.append((time.perf_counter() - t) * 1000)
            return out

        # The three take turns, ROUNDS times, so a slow spell of this machine (a
        # compaction, another process) falls on all of them rather than on one.
        memory.refresh(np.arange(N))
        t_mem: list[float] = []
        t_reader: list[float] = []
        t_sync: list[float] = []
        refreshed = 0
        per_round = max(1, steps // ROUNDS)
        for r in range(1, ROUNDS + 1):
            say(f"round {r}/{ROUNDS}: in-memory arrays")
            t_mem += timed(memory, per_round)
            say(f"round {r}/{ROUNDS}: knowledge reader (background refresh running)")
            with KnowledgeReader(bank, ids, src) as live:
                live.refresh(np.arange(N))
                t_reader += timed(live, per_round)
                refreshed += live.reads_from_bank
            say(f"round {r}/{ROUNDS}: synchronous bank reads in every step")
            t_sync += timed(_SyncReader(bank, ids, src), per_round)
        fit = fit_overhead(
            bank, spec, ids, x, np.where(labeled, y, -1).astype(np.int32), steps, batch, say
        )
    finally:
        bank.drop_namespace(ns)
    med = {
        k: float(np.median(v))
        for k, v in (("memory", t_mem), ("reader", t_reader), ("sync", t_sync))
    }
    return {
        "steps": steps,
        "rounds": ROUNDS,
        "batch": batch,
        "median_step_ms": med,
        "p90_step_ms": {
            k: float(np.percentile(v, 90))
            for k, v in (("memory", t_mem), ("reader", t_reader), ("sync", t_sync))
        },
        "reader_vs_memory": med["reader"] / med["memory"],
        "sync_vs_memory": med["sync"] / med["memory"],
        "reader_bank_reads_during_run": refreshed,
        "target_reader_vs_memory_le_1.1": med["reader"] / med["memory"] <= 1.1,
        "fit": fit,
        "target_wrapper_fit_vs_plain_fit_le_1.15": all(
            fit[m]["wrapper_vs_plain"] <= 1.15 for m in ("cnn", "mlp")
        ),
    }


def _cnn(classes: int) -> Any:
    """A small CNN on 8x8 images, the shape of ``trainers/examples/digits_cnn.py``'s."""
    import keras

    inp = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(inp)
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(h)
    emb = keras.layers.Dense(64, activation="relu")(keras.layers.Flatten()(h))
    return keras.Model(inp, [emb, keras.layers.Dense(classes)(emb)])


def fit_overhead(
    bank: KnowledgeBank,
    spec: Any,
    ids: list[str],
    x: Any,
    labels: Any,
    steps: int,
    batch: int,
    say: Say,
) -> dict[str, Any]:
    """A ``KnowledgeModel.fit`` step (pseudo labels and graph, knowledge in the reader's
    cache) against the same model's plain ``fit`` on the same batches, in ``ROUNDS``
    interleaved rounds, for two models: the example's small CNN on 8x8 images and the
    built-in 64-256-10 MLP (whose step is so short that the join's fixed cost shows most);
    medians of the per-step times."""
    import keras

    from carls.trainers.feed import example_batches
    from carls.trainers.model import build
    from carls.trainers.wrapper import KnowledgeModel

    class StepTimes(keras.callbacks.Callback):  # type: ignore[misc]
        """Milliseconds between consecutive batches' ends, after the first ten."""

        def __init__(self) -> None:
            super().__init__()
            self.times: list[float] = []
            self._last = 0.0

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            now = time.perf_counter()
            if batch > 10:
                self.times.append((now - self._last) * 1000)
            self._last = now

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    lab = int((labels >= 0).sum())
    per_round = max(20, steps // ROUNDS)
    out: dict[str, Any] = {"batch": batch + lab}

    def mlp() -> Any:
        return build(D, C, spec.model)[0]

    def cnn() -> Any:
        return _cnn(C)

    models: dict[str, tuple[Callable[[], Any], Any]] = {
        "cnn": (cnn, x.reshape(-1, 8, 8, 1)),
        "mlp": (mlp, x),
    }
    for name, (make, features) in models.items():
        plain_base = make()
        plain = keras.Model(plain_base.inputs[0], plain_base.outputs[1])
        plain.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
        km = KnowledgeModel(
            make(),
            from_spec(spec),
            bank=bank,
            namespace=spec.namespace,
            ids=ids,
            labels=labels,
            embedding=0,
            logits=1,
        )
        km.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
        data = example_batches(ids, features, labels, batch_size=batch, labeled_batch_size=lab)
        plain_data = data.map(lambda f, y: (f["features"], keras.ops.maximum(y, 0)))
        t_plain, t_wrap = StepTimes(), StepTimes()
        with km:
            assert km.knowledge.reader is not None
            km.knowledge.reader.refresh(np.arange(len(ids)))
            for r in range(1, ROUNDS + 1):
                say(f"{name}, round {r}/{ROUNDS}: plain fit, then the same model in carls")
                for model, train, times in ((plain, plain_data, t_plain), (km, data, t_wrap)):
                    model.fit(
                        train,
                        shuffle=False,
                        steps_per_epoch=per_round + 11,
                        epochs=1,
                        verbose=0,
                        callbacks=[times],
                    )
        med_plain, med_wrap = float(np.median(t_plain.times)), float(np.median(t_wrap.times))
        out[name] = {
            "plain_ms": med_plain,
            "wrapper_ms": med_wrap,
            "wrapper_vs_plain": med_wrap / med_plain,
        }
    return out
