"""A convolutional network on digits' 8x8 images with 50 labels, trained with plain
``model.fit`` plus knowledge that a ``carls worker`` computes from its checkpoints.

    carls infra up && carls worker &            # the stack and one knowledge maker
    python trainers/examples/digits_cnn.py --seed 0

The model is the user's own: a small CNN returning ``{"embedding", "logits"}``, with
random shifts and rotations as its first layers (active in training only). The input
pipeline is the user's too: standardized pixels, one of 16 random affine views of each
image per step, and a blanked 3x3 square on the unlabeled ones. carls adds pseudo labels
and graph regularization read from the bank; the makers load the exported SavedModel (no
code from this file; an average of the weights, a steadier teacher) and write pseudo
labels, neighbours and embeddings for every example at each checkpoint.
``--supervised`` trains the same model on its 50 labels alone, for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import carls
from carls.trainers import KnowledgeModel, PublishCheckpoints, augment, augmented, example_batches
from carls.trainers.paradigms import Graph, Paradigm, PseudoLabel

LABELED = 50
VIEWS = 16


def digits(seed: int) -> dict[str, Any]:
    """Stratified 70/30 split, ``LABELED`` stratified labels (``-1`` for the rest), pixels
    standardized on the training split (clipped to +-5), and ``VIEWS`` random affine views
    of each training image (view 0 the image itself); ids are ``digits-<row>`` whatever
    the seed."""
    data = load_digits()
    raw = data.images.reshape(len(data.images), -1)
    rows = np.arange(len(raw))
    r_train, r_test = train_test_split(rows, test_size=0.3, stratify=data.target, random_state=seed)
    y_train = data.target[r_train].astype(np.int32)
    labeled, _ = train_test_split(
        np.arange(len(r_train)), train_size=LABELED, stratify=y_train, random_state=seed
    )
    labels = np.full(len(r_train), -1, np.int32)
    labels[labeled] = y_train[labeled]
    mean, scale = raw[r_train].mean(0), raw[r_train].std(0) + 1e-3

    def standardize(pixels: Any) -> Any:
        return np.clip((np.asarray(pixels) - mean) / scale, -5, 5).astype(np.float32)

    image = (-1, 8, 8, 1)
    views = augment.views("affine", raw[r_train], standardize, VIEWS, seed)
    return {
        "ids": [f"digits-{r}" for r in r_train],
        "x": standardize(raw[r_train]).reshape(image),
        "views": views.reshape((len(r_train), VIEWS, 8, 8, 1)),
        "labels": labels,
        "x_test": standardize(raw[r_test]).reshape(image),
        "y_test": data.target[r_test].astype(np.int32),
        "background": standardize(np.zeros((1, 64)))[0],
    }


def build_cnn(
    input_shape: tuple[int, ...] = (8, 8, 1), classes: int = 10, embedding_dim: int = 64
) -> keras.Model:
    """The user's model: any Keras model that returns an embedding and logits. Also a
    job spec's model builder (``carls.trainers.examples.digits_cnn:build_cnn``)."""
    inp = keras.Input(input_shape, name="image")
    x = keras.layers.RandomTranslation(0.125, 0.125, fill_mode="constant")(inp)
    x = keras.layers.RandomRotation(0.04, fill_mode="constant")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    x = keras.layers.Flatten()(x)
    emb = keras.layers.Dense(embedding_dim, activation="relu", name="embedding")(x)
    logits = keras.layers.Dense(classes, name="logits")(keras.layers.Dropout(0.3)(emb))
    return keras.Model(inp, {"embedding": emb, "logits": logits}, name="digits_cnn")


def write_images(path: str | os.PathLike[str]) -> None:
    """Digits as a job spec's dataset file: ``X`` the 1,797 images (N x 8 x 8 x 1, pixels
    in [0, 1]) and ``y`` their labels (see ``digits_cnn.yaml``)."""
    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[..., None]
    np.savez_compressed(path, X=x, y=data.target.astype(np.int64))


def train(
    conn: carls.Connection,
    namespace: str,
    seed: int,
    *,
    steps: int = 4500,
    knowledge: bool = True,
    verbose: int = 0,
) -> dict[str, Any]:
    """Train one seed; return its test accuracy and what the knowledge did."""
    keras.utils.set_random_seed(seed)
    d = digits(seed)
    paradigms: list[Paradigm] = (
        [
            PseudoLabel(source="pseudo_label", thresholds="fixed", threshold=0.8),
            Graph(weight=1.0, k=10, target="probabilities"),
        ]
        if knowledge
        else []
    )
    model = KnowledgeModel(
        build_cnn(),
        paradigms,
        bank=conn.bank,
        namespace=namespace,
        ids=d["ids"],
        labels=d["labels"],
        features=d["x"],
        max_staleness=2000,
    )
    model.register_examples()
    model.compile(
        optimizer=keras.optimizers.AdamW(1e-3, weight_decay=1e-4, use_ema=True, ema_momentum=0.99),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    per_epoch = 100
    callbacks = (
        [
            # The makers serve an average of the weights: steadier pseudo labels.
            PublishCheckpoints(
                conn.publisher, conn.store, every_steps=100, warmup_steps=500, ema=0.99
            )
        ]
        if knowledge
        else []
    )
    # One random view of each example per step, and a blanked 3x3 square on the
    # unlabeled ones: the student sees harder inputs than the makers' teacher.
    batches = augmented(
        example_batches(
            d["ids"], d["views"], d["labels"], batch_size=256, labeled_batch_size=50, seed=seed
        ),
        cutout=3,
        blank=d["background"],
    )
    started = time.monotonic()
    with model:
        history = model.fit(
            batches,
            steps_per_epoch=per_epoch,
            epochs=steps // per_epoch,
            callbacks=callbacks,
            validation_data=(d["x_test"], d["y_test"]),
            validation_freq=15,
            verbose=verbose,
        )
        coverage = model.knowledge.reader.coverage() if model.knowledge.reader else {}
    _, accuracy = model.evaluate(d["x_test"], d["y_test"], verbose=0)
    return {
        "namespace": namespace,
        "seed": seed,
        "test_accuracy": round(float(accuracy), 4),
        # every 1,500 steps, of the weights of the moment (the final figure is of their average)
        "test_accuracy_curve": [round(a, 4) for a in history.history["val_accuracy"]],
        "train_seconds": round(time.monotonic() - started, 1),
        "knowledge_coverage": coverage,
        "knowledge_use": dict(model.knowledge.view.stats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=4500)
    parser.add_argument("--namespace", default=None, help="default: digits_cnn_<random>")
    parser.add_argument("--supervised", action="store_true", help="no knowledge terms")
    parser.add_argument(
        "--write-images",
        metavar="PATH",
        help="only write digits' images as an .npz dataset for a job spec, then exit",
    )
    args = parser.parse_args()
    if args.write_images:
        write_images(args.write_images)
        print(f"wrote {args.write_images}")
        return
    with carls.connect() as conn:
        for seed in args.seed:
            ns = args.namespace or f"digits_cnn_{uuid.uuid4().hex[:6]}"
            result = train(
                conn, f"{ns}_s{seed}", seed, steps=args.steps, knowledge=not args.supervised
            )
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
