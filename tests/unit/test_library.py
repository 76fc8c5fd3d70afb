"""The library API without servers: ``KnowledgeModel`` around users' models (any kind),
the exported artifact, the id-carrying dataset, and bad input refused before anything is
written. The bank is the in-memory one."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

from carls.bank.memory import MemoryBank
from carls.bank.types import KnowledgeBatch, Lineage
from carls.makers.checkpoints import load_model
from carls.trainers import (
    DatasetError,
    KnowledgeModel,
    ModelError,
    augmented,
    example_batches,
)
from carls.trainers.checkpoints import save_artifact
from carls.trainers.export import SavedModelExporter
from carls.trainers.outputs import ModelHeads
from carls.trainers.paradigms import Graph, PseudoLabel
from carls.trainers.wrapper import JOINED
from tests.custom_layer_support import user_module

CLASSES = 3


def functional(dim: int = 6, emb: int = 4) -> keras.Model:
    inp = keras.Input((dim,))
    e = keras.layers.Dense(emb, activation="relu", name="emb")(inp)
    return keras.Model(inp, {"embedding": e, "logits": keras.layers.Dense(CLASSES)(e)})


class Subclassed(keras.Model):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.e = keras.layers.Dense(4, activation="relu")
        self.o = keras.layers.Dense(CLASSES)

    def call(self, x: Any, training: bool = False) -> Any:
        e = self.e(x)
        return e, self.o(e)


def data(n: int = 40, dim: int = 6, labeled: int = 9) -> tuple[list[str], Any, Any]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, CLASSES, n).astype(np.int32)
    x = (rng.normal(size=(n, dim)) + y[:, None]).astype(np.float32)
    labels = np.full(n, -1, np.int32)
    labels[:labeled] = y[:labeled]
    return [f"e{i}" for i in range(n)], x, labels


def compiled_pseudo_label_model() -> tuple[KnowledgeModel, list[str], Any, Any]:
    """A compiled ``KnowledgeModel`` with pseudo labels over ``data()`` and an empty bank."""
    ids, x, labels = data()
    km = KnowledgeModel(
        functional(), [PseudoLabel()], bank=MemoryBank(), namespace="ns", ids=ids, labels=labels
    )
    km.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return km, ids, x, labels


# Which outputs ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "embedding", "logits"),
    [
        (functional, "embedding", "logits"),  # dict keys
        (functional, "emb", "logits"),  # an inner layer and a key
        (
            lambda: keras.Sequential(
                [
                    keras.Input((6,)),
                    keras.layers.Dense(4, name="e"),
                    keras.layers.Dense(CLASSES, name="l"),
                ]
            ),
            "e",
            "l",
        ),
        (Subclassed, 0, 1),  # positions in the returned pair
    ],
)
def test_heads_find_the_named_outputs_of_any_kind_of_model(
    make: Any, embedding: Any, logits: Any
) -> None:
    model = make()
    heads = ModelHeads(model, embedding, logits, input_shape=(6,))
    emb, out = heads(np.zeros((5, 6), np.float32))
    assert tuple(emb.shape) == (5, 4) and tuple(out.shape) == (5, CLASSES)
    assert (heads.shapes.embedding_dim, heads.shapes.classes) == (4, CLASSES)


def test_a_missing_output_is_named_with_what_there_is() -> None:
    with pytest.raises(
        ModelError, match=r"embedding='feat'.*outputs are \['embedding', 'logits'\]"
    ):
        ModelHeads(functional(), "feat", "logits")
    with pytest.raises(ModelError, match="pass embedding= a position"):
        ModelHeads(Subclassed(), "embedding", 1, input_shape=(6,))
    with pytest.raises(ModelError, match="no declared input"):
        ModelHeads(Subclassed(), 0, 1)


def test_outputs_of_the_wrong_rank_or_dtype_are_refused() -> None:
    inp = keras.Input((6,))
    seq = keras.layers.Reshape((2, 3))(inp)
    with pytest.raises(ModelError, match=r"logits output .* rank 2"):
        ModelHeads(keras.Model(inp, {"embedding": inp, "logits": seq}))
    ints = keras.layers.Lambda(lambda t: keras.ops.cast(t, "int32"))(inp)
    with pytest.raises(ModelError, match="dtype int32"):
        ModelHeads(keras.Model(inp, {"embedding": ints, "logits": inp}))


# Bad input before anything is written -------------------------------------------------------
def test_ids_features_and_labels_that_disagree_are_refused_before_any_write() -> None:
    bank = MemoryBank()
    ids, x, labels = data()
    cases = [
        ({"ids": ids[:-1], "labels": labels[:-1], "features": x}, r"features: 40 rows for 39 ids"),
        ({"ids": ids, "labels": labels[:-1], "features": x}, r"labels: expected one label per id"),
        ({"ids": ids, "labels": labels + 5, "features": x}, r"labels: .* outside -1..2"),
        ({"ids": [*ids[:-1], ids[0]], "labels": labels, "features": x}, r"ids: 1 duplicate"),
        ({"ids": ids, "labels": labels, "features": x[:, :4]}, r"features: each example has shape"),
    ]
    for kwargs, message in cases:
        with pytest.raises(DatasetError, match=message):
            KnowledgeModel(functional(), [PseudoLabel()], bank=bank, namespace="ns", **kwargs)
    assert bank.namespaces() == []


def test_a_paradigm_that_cannot_work_with_the_model_fails_at_construction() -> None:
    ids, _, labels = data()
    with pytest.raises(ValueError, match="each may appear once"):
        KnowledgeModel(
            functional(),
            [PseudoLabel(), PseudoLabel()],
            bank=MemoryBank(),
            namespace="ns",
            ids=ids,
            labels=labels,
        )
    with pytest.raises(ModelError, match="jit_compile"):
        KnowledgeModel(functional(), [], bank=None, namespace="ns", ids=ids, labels=labels).compile(
            optimizer="adam", loss="mse", jit_compile=True
        )


# Training with knowledge ---------------------------------------------------------------------
def written(bank: MemoryBank, ns: str, ids: list[str], classes: Any, step: int = 5) -> None:
    probs = np.full((len(ids), CLASSES), 0.02, np.float32)
    probs[np.arange(len(ids)), classes] = 0.96
    bank.write(
        ns,
        "pseudo_label",
        KnowledgeBatch(ids, probs, classes.astype(np.int32), probs.max(1)),
        Lineage(step, "test"),
    )


def test_fit_adds_the_paradigms_terms_and_skips_unlabeled_rows_in_the_supervised_loss() -> None:
    bank = MemoryBank()
    ids, x, labels = data()
    km = KnowledgeModel(
        functional(),
        [PseudoLabel(source="pseudo_label", thresholds="fixed", threshold=0.5)],
        bank=bank,
        namespace="ns",
        ids=ids,
        labels=labels,
        features=x,
    )
    assert km.register_examples() == len(ids)
    truth = np.asarray([round(float(v)) % CLASSES for v in x[:, 0]])
    written(bank, "ns", ids, truth)
    km.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    km.knowledge.reader.refresh(np.arange(len(ids)))  # as the background sweep would
    with km:
        history = km.fit(
            example_batches(ids, x, labels, batch_size=16, labeled_batch_size=8),
            steps_per_epoch=5,
            epochs=2,
            verbose=0,
        )
    assert not km.knowledge.reader._thread.is_alive()
    assert history.history["pseudo"][-1] > 0
    assert km.knowledge.view.stats["pseudo_used"] > 0
    assert history.history["loss"][-1] > history.history["pseudo"][-1] > 0
    # evaluate and predict see the logits, and report only what was compiled
    assert km.predict(x[:4], verbose=0).shape == (4, CLASSES)
    assert set(km.evaluate(x, np.maximum(labels, 0), verbose=0, return_dict=True)) == {
        "loss",
        "accuracy",
    }


def test_examples_put_the_labeled_rows_first_and_carry_ids() -> None:
    ids, x, labels = data()
    ((batch, y),) = example_batches(ids, x, labels, batch_size=16, labeled_batch_size=8).take(1)
    assert batch["features"].shape == (24, 6) and batch["id"].shape == (24,)
    assert (y.numpy()[:8] >= 0).all() and (y.numpy()[8:] == -1).all()
    index = {i: n for n, i in enumerate(ids)}
    rows = [index[i.decode()] for i in batch["id"].numpy()]
    np.testing.assert_array_equal(x[rows], batch["features"].numpy())
    with pytest.raises(DatasetError, match="features: 39 rows for 40 ids"):
        example_batches(ids, x[:-1], labels)


def test_augmented_batches_pick_one_view_per_row_and_cut_out_unlabeled_images() -> None:
    ids, _, labels = data(n=40)
    # 3 views of each 4x4 image: view v of example i is filled with 100 * i + v
    views = (100 * np.arange(40)[:, None] + np.arange(3)[None, :]).astype(np.float32)
    views = np.broadcast_to(views[:, :, None, None, None], (40, 3, 4, 4, 1)).copy()
    batches = augmented(
        example_batches(ids, views, labels, batch_size=16, labeled_batch_size=8),
        cutout=2,
        blank=-1.0,
    )
    ((batch, y),) = batches.take(1)
    f = batch["features"].numpy()
    assert f.shape == (24, 4, 4, 1)
    index = {i: n for n, i in enumerate(ids)}
    for row, id_ in zip(f, batch["id"].numpy(), strict=True):
        kept = row[row != -1.0]
        view = kept[0] - 100 * index[id_.decode()]
        assert view in (0, 1, 2) and (kept == kept[0]).all()
    blanked = (f == -1.0).reshape(24, -1).sum(1)
    labeled = y.numpy() >= 0
    assert (blanked[labeled] == 0).all() and (blanked[~labeled] == 4).all()
    with pytest.raises(DatasetError, match="cutout"):
        augmented(example_batches(ids, views, labels, batch_size=16), cutout=4)


def test_batches_without_ids_are_refused() -> None:
    ids, x, labels = data()
    km = KnowledgeModel(functional(), [], bank=None, namespace="ns", ids=ids, labels=labels)
    km.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(ModelError, match=r"batches of \(\{'id'"):
        km.fit(x, np.maximum(labels, 0), epochs=1, verbose=0)


# The artifact -------------------------------------------------------------------------------


def test_an_exported_model_with_a_custom_layer_serves_where_its_code_is_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user_layers = user_module(tmp_path / "user_code", "user_layers", monkeypatch)

    inp = keras.Input((4, 4, 1))
    h = keras.layers.Conv2D(3, 2, padding="same")(inp)
    h = user_layers.Gate()(keras.layers.Flatten()(h))
    model = keras.Model(inp, {"embedding": h, "logits": keras.layers.Dense(CLASSES)(h)})
    exporter = SavedModelExporter(ModelHeads(model))
    manifest = save_artifact(exporter, tmp_path / "store", "ns", 7)
    assert manifest.format == "tf_saved_model" and manifest.uri.endswith("step-000000000007.tar")
    x = np.random.default_rng(1).normal(size=(5, 16)).astype(np.float32)
    expected = keras.ops.softmax(model(x.reshape(5, 4, 4, 1))["logits"]).numpy()

    probe = textwrap.dedent(
        """
        import json, sys
        import numpy as np
        from carls.schemas import CheckpointManifest
        from pathlib import Path
        from carls.makers.checkpoints import load_model
        assert "user_layers" not in sys.modules
        try:
            import user_layers
        except ImportError:
            pass
        else:
            raise SystemExit("the user's module is importable here")
        m = load_model(CheckpointManifest(**json.loads(sys.argv[1])), Path(sys.argv[3]))
        emb, probs = m.infer(np.asarray(json.loads(sys.argv[2]), np.float32))
        print(json.dumps([m.feature_dim, m.embedding_dim, m.classes, probs.tolist()]))
        """
    )
    import dataclasses
    import json

    out = subprocess.run(
        [
            sys.executable,
            "-c",
            probe,
            json.dumps(dataclasses.asdict(manifest)),
            json.dumps(x.tolist()),
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    feature_dim, emb_dim, classes, probs = json.loads(out.stdout.strip().splitlines()[-1])
    assert (feature_dim, emb_dim, classes) == (16, 48, CLASSES)
    np.testing.assert_allclose(np.asarray(probs), expected, atol=1e-5)
    # and in this process too, through the same loader
    assert load_model(manifest, tmp_path).infer(x)[1].shape == (5, CLASSES)


def test_graph_prepares_neighbours_distributions_for_the_batch() -> None:
    bank = MemoryBank()
    ids, x, labels = data()
    km = KnowledgeModel(
        functional(),
        [Graph(k=3, target="probabilities")],
        bank=bank,
        namespace="ns",
        ids=ids,
        labels=labels,
        features=x,
    )
    km.register_examples()
    arrays = km.knowledge.batch(np.arange(10), step=1)  # bootstrap graph, labeled neighbours
    assert arrays["g_q"].shape == (10, CLASSES)
    usable = arrays["g_w"] > 0
    assert usable.any()
    np.testing.assert_allclose(arrays["g_q"][usable].sum(1), 1.0, rtol=1e-5)


class _Publisher:
    """Records what a ``PublishCheckpoints`` would send to Kafka."""

    def __init__(self) -> None:
        self.manifests: list[Any] = []
        self.batches: list[Any] = []

    def manifest(self, m: Any) -> None:
        self.manifests.append(m)

    def examples(self, batch: Any) -> None:
        self.batches.append(batch)


def _publishing_model(
    monkeypatch: pytest.MonkeyPatch, namespace_step: int, optimizer: Any
) -> KnowledgeModel:
    """A compiled model without paradigms whose namespace stands at ``namespace_step``
    (what ``PublishCheckpoints`` would learn from Kafka)."""
    from carls.trainers import callbacks as callbacks_module

    monkeypatch.setattr(callbacks_module, "namespace_step", lambda *_: namespace_step)
    ids, x, labels = data()
    km = KnowledgeModel(
        functional(), [], bank=MemoryBank(), namespace="ns", ids=ids, labels=labels, features=x
    )
    km.compile(
        optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    return km


def test_publish_checkpoints_serves_the_averaged_weights_and_trains_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from carls.trainers import PublishCheckpoints

    ids, x, labels = data()
    km = _publishing_model(monkeypatch, 1000, keras.optimizers.SGD(0.1))
    km.register_examples()
    pub = _Publisher()
    cb = PublishCheckpoints(pub, tmp_path, every_steps=4, warmup_steps=6, ema=0.5)  # type: ignore[arg-type]
    with km:
        km.fit(
            example_batches(ids, x, labels, batch_size=8),
            steps_per_epoch=11,
            epochs=1,
            verbose=0,
            callbacks=[cb],
        )
    # never the untrained model; steps continue the namespace's numbering; one at the end
    assert [m.step for m in pub.manifests] == [1006, 1010, 1011]
    assert {m.format for m in pub.manifests} == {"tf_saved_model"}
    served = load_model(pub.manifests[-1], tmp_path).infer(x)[1]
    trained = keras.ops.softmax(km.base(x)["logits"]).numpy()
    averaged = functional()
    averaged.set_weights([np.asarray(a) for a in cb._average])
    expected = keras.ops.softmax(averaged(x)["logits"]).numpy()
    np.testing.assert_allclose(served, expected, atol=1e-5)
    assert not np.allclose(served, trained, atol=1e-4)  # training kept its own weights


def test_publish_checkpoints_serves_the_optimizers_own_average(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from carls.trainers import PublishCheckpoints

    ids, x, labels = data()
    optimizer = keras.optimizers.SGD(0.1, use_ema=True, ema_momentum=0.5)
    km = _publishing_model(monkeypatch, 0, optimizer)
    pub = _Publisher()
    cb = PublishCheckpoints(pub, tmp_path, every_steps=4, ema=0.5)  # type: ignore[arg-type]
    with km:
        km.fit(
            example_batches(ids, x, labels, batch_size=8),
            steps_per_epoch=6,
            epochs=1,
            verbose=0,
            callbacks=[cb],
        )
    assert [m.step for m in pub.manifests] == [4, 6] and cb._average == []
    # fit ends with the optimizer's average in the model: the last checkpoint serves it
    served = load_model(pub.manifests[-1], tmp_path).infer(x)[1]
    np.testing.assert_allclose(served, keras.ops.softmax(km.base(x)["logits"]), atol=1e-5)
    first = load_model(pub.manifests[0], tmp_path).infer(x)[1]
    assert not np.allclose(first, served, atol=1e-4)


def test_a_tar_that_is_not_a_saved_model_is_not_a_model(tmp_path: Path) -> None:
    import dataclasses
    import hashlib
    import io
    import tarfile

    from carls.makers.errors import NotAModelError
    from carls.schemas import CheckpointManifest

    path = tmp_path / "step-000000000001.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("carls.json")
        body = b'{"format": "tf_saved_model"}'
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    manifest = CheckpointManifest(
        namespace="ns",
        step=1,
        uri=path.as_uri(),
        format="tf_saved_model",
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        size=path.stat().st_size,
        created_at=0.0,
    )
    with pytest.raises(NotAModelError, match="not a carls SavedModel tar"):
        load_model(manifest, tmp_path)
    with pytest.raises(NotAModelError, match="format 'onnx'"):
        load_model(dataclasses.replace(manifest, format="onnx"), tmp_path)


def test_a_failing_fit_stops_the_knowledge_reader() -> None:
    km, ids, x, labels = compiled_pseudo_label_model()
    strangers = example_batches([f"other-{i}" for i in ids], x, labels, batch_size=8)
    with pytest.raises(Exception, match="not among the ids given to KnowledgeModel"):
        km.fit(strangers, steps_per_epoch=2, epochs=1, verbose=0)
    assert km.knowledge.reader is not None
    assert not km.knowledge.reader._thread.is_alive()


def test_fit_can_be_called_again_and_the_reader_restarts() -> None:
    km, ids, x, labels = compiled_pseudo_label_model()
    batches = example_batches(ids, x, labels, batch_size=8)
    for _ in range(2):
        km.fit(batches, steps_per_epoch=2, epochs=1, verbose=0)
        assert km.knowledge.reader is not None
        assert not km.knowledge.reader._thread.is_alive()
    with km:
        assert km.knowledge.reader._thread.is_alive()
        km.fit(batches, steps_per_epoch=2, epochs=1, verbose=0)
        assert km.knowledge.reader._thread.is_alive()  # the with block keeps it
    assert not km.knowledge.reader._thread.is_alive()
    assert int(km.optimizer.iterations.numpy()) == 6


def test_a_dataset_joined_by_hand_is_not_joined_again() -> None:
    km, ids, x, labels = compiled_pseudo_label_model()
    joins = []
    real = km._join_ids
    km._join_ids = lambda i: joins.append(1) or real(i)  # type: ignore[method-assign]
    km.fit(
        km.join(example_batches(ids, x, labels, batch_size=8)),
        steps_per_epoch=3,
        epochs=1,
        verbose=0,
    )
    assert len(joins) == 1  # fit saw the knowledge already joined and left it


def counting(host: Any, calls: list[int]) -> Any:
    """``host`` that notes how many batches each call covers."""

    def counted(rows: Any, batches: Any) -> Any:
        calls.append(int(batches))
        return host(rows, batches)

    return counted


def test_batches_joined_in_groups_carry_the_same_knowledge_as_joined_one_by_one() -> None:
    bank = MemoryBank()
    ids, x, labels = data()
    truth = np.arange(len(ids)) % CLASSES
    KnowledgeModel(
        functional(), [PseudoLabel()], bank=bank, namespace="ns", ids=ids, labels=labels, features=x
    ).register_examples()
    written(bank, "ns", ids, truth)
    # the same 11 batches each time (a shuffled pipeline reshuffles when iterated again)
    taken = list(example_batches(ids, x, labels, batch_size=8, labeled_batch_size=4).take(11))
    batches = tf.data.Dataset.from_tensor_slices(
        (
            {k: tf.stack([b[k] for b, _ in taken]) for k in ("id", "features")},
            tf.stack([y for _, y in taken]),
        )
    )
    joined = {}
    for group in (1, 8):
        km = KnowledgeModel(
            functional(),
            [PseudoLabel(source="pseudo_label", thresholds="fixed", threshold=0.5)],
            bank=bank,
            namespace="ns",
            ids=ids,
            labels=labels,
        )
        assert km.knowledge.reader is not None
        km.knowledge.reader.refresh(np.arange(len(ids)))
        calls: list[int] = []
        km._host = counting(km._host, calls)  # type: ignore[method-assign]
        out = km.join(batches, group=group)
        assert int(out.cardinality()) == 11  # fit's progress still knows the epoch's length
        joined[group] = [
            (b["id"].numpy(), b["features"].numpy(), y.numpy(), b[JOINED]["pl_class"].numpy())
            for b, y in out
        ]
        # one host call per group of batches (the last group has the 3 left over)
        assert calls == ([1] * 11 if group == 1 else [8, 3])
        assert km._host_steps == 11
    assert len(joined[8]) == 11
    for one, grouped in zip(joined[1], joined[8], strict=True):
        for a, b in zip(one, grouped, strict=True):
            np.testing.assert_array_equal(a, b)
    index = {i: n for n, i in enumerate(ids)}
    for batch_ids, _, y, classes in joined[8]:
        rows = [index[i.decode()] for i in batch_ids]
        np.testing.assert_array_equal(classes[y < 0], truth[rows][y < 0])


def test_a_dataset_of_varying_batch_sizes_is_joined_batch_by_batch() -> None:
    km, ids, x, labels = compiled_pseudo_label_model()
    table = ({"id": tf.constant(ids), "features": tf.constant(x)}, tf.constant(labels))
    varying = (
        tf.data.Dataset.range(13)
        .batch(5)
        .map(lambda i: tf.nest.map_structure(lambda t: tf.gather(t, i), table))
    )
    sizes = [int(b["id"].shape[0]) for b, _ in km.join(varying)]
    assert sizes == [5, 5, 3] and km._host_steps == 3


def test_refreshing_paradigms_refresh_on_schedule_when_batches_come_in_groups() -> None:
    from carls.trainers.knowledge import Knowledge
    from carls.trainers.paradigms import Setup

    ids, _, labels = data()
    plugin = PseudoLabel(refresh_every=5)
    knowledge = Knowledge([plugin], Setup("ns", CLASSES, 4, tuple(ids)), MemoryBank(), labels)
    refreshed: list[int] = []
    plugin.__dict__["refresh"] = lambda view, step: refreshed.append(step)
    rows = np.arange(4)
    for step, n in ((1, 8), (9, 1), (10, 1), (11, 8), (19, 3)):
        knowledge.batch(np.tile(rows, n), step, n)
    # batches 0..20: the 0th, 5th, 10th, 15th and 20th fall in the calls at steps 1, 1, 11,
    # 11 and 19, one refresh per call that holds one or more of them
    assert refreshed == [1, 11, 19]


def test_a_multimodal_model_declares_and_registers_its_modality() -> None:
    from carls.trainers.paradigms import Multimodal

    bank = MemoryBank()
    ids, x, labels = data()
    km = KnowledgeModel(
        functional(),
        [Multimodal(modality="left", others=("right",))],
        bank=bank,
        namespace="task_left",
        ids=ids,
        labels=labels,
        features=x,
    )
    assert km.kinds()["embedding/left"] == km.kinds()["embedding/right"] == 4
    km.register_examples()
    assert bank.namespace("task_left").kinds["embedding/left"] == 4
    assert bank.fetch_examples("task_left", ids[:1]).modalities == ["left"]


def test_a_failed_fit_still_announces_its_checkpoints_and_stops_the_announcer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from carls.trainers import PublishCheckpoints

    ids, x, labels = data()
    km = _publishing_model(monkeypatch, 0, "sgd")
    pub = _Publisher()

    class Crash(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            if batch == 5:
                raise RuntimeError("the user's callback fails")

    with pytest.raises(RuntimeError, match="the user's callback fails"):
        km.fit(
            example_batches(ids, x, labels, batch_size=8),
            steps_per_epoch=10,
            epochs=1,
            verbose=0,
            callbacks=[PublishCheckpoints(pub, tmp_path, every_steps=2), Crash()],  # type: ignore[arg-type]
        )
    assert [m.step for m in pub.manifests] == [2, 4, 6]
    assert not [t for t in threading.enumerate() if t.name == "checkpoints"]
