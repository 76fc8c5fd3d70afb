"""Feeding examples with their ids: the batches ``KnowledgeModel.fit`` trains on.

``example_batches`` turns arrays into an endless, shuffled ``tf.data.Dataset`` of
``({"id": ids, "features": x}, labels)`` batches. With ``labeled_batch_size`` each batch
is that many labeled examples (drawn again and again, as they are usually few) followed by
``batch_size`` unlabeled ones, the usual semi-supervised mix. A pipeline of one's own
works as well, as long as its elements have that structure and the ids are among the
model's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from carls.trainers.augment import image_of
from carls.trainers.errors import DatasetError


def example_batches(
    ids: Sequence[str],
    features: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    batch_size: int = 128,
    labeled_batch_size: int | None = None,
    seed: int = 0,
) -> Any:
    """An endless ``tf.data.Dataset`` of id-carrying batches (pass ``steps_per_epoch`` to
    ``fit``). Labels are class indices, ``-1`` for unlabeled examples."""
    import tensorflow as tf

    x = np.asarray(features)
    y = np.asarray(labels)
    id_arr = np.asarray(list(ids), dtype=object).astype(str)
    if len(x) != len(id_arr):
        raise DatasetError("features", f"{len(x)} rows for {len(id_arr)} ids; give one per id")
    if y.shape != (len(id_arr),):
        raise DatasetError("labels", f"expected one label per id ({len(id_arr)}), got {y.shape}")
    if batch_size < 1 or (labeled_batch_size is not None and labeled_batch_size < 1):
        raise DatasetError("batch_size", "batch sizes must be >= 1")
    x = np.asarray(x, np.float32)
    y = y.astype(np.int32)

    def stream(rows: npt.NDArray[np.int64], size: int, salt: int) -> Any:
        table_ids, table_x, table_y = (
            tf.constant(id_arr[rows]),
            tf.constant(x[rows]),
            tf.constant(y[rows]),
        )
        ds = tf.data.Dataset.range(len(rows)).shuffle(len(rows), seed=seed + salt)
        return (
            ds.repeat()
            .batch(size, drop_remainder=len(rows) >= size)
            .map(lambda i: (tf.gather(table_ids, i), tf.gather(table_x, i), tf.gather(table_y, i)))
        )

    def structure(i: Any, f: Any, lab: Any) -> Any:
        return {"id": i, "features": f}, lab

    every = np.arange(len(id_arr))
    if labeled_batch_size is None:
        return stream(every, batch_size, 0).map(structure).prefetch(tf.data.AUTOTUNE)
    labeled, unlabeled = every[y >= 0], every[y < 0]
    if not len(labeled):
        raise DatasetError("labels", "labeled_batch_size is set but no example is labeled")
    if not len(unlabeled):
        unlabeled = every
    both = tf.data.Dataset.zip(
        stream(labeled, labeled_batch_size, 1), stream(unlabeled, batch_size, 2)
    )
    return both.map(
        lambda a, b: structure(*(tf.concat([u, v], 0) for u, v in zip(a, b, strict=True)))
    ).prefetch(tf.data.AUTOTUNE)


def augmented(
    batches: Any,
    *,
    views: bool = True,
    cutout: int = 0,
    blank: npt.ArrayLike = 0.0,
    image_shape: tuple[int, int] | None = None,
) -> Any:
    """``batches`` of ``example_batches`` over precomputed views, trained on one view each.

    With ``views``, the features hold ``V`` views of every example (``N x V x ...``, e.g.
    from ``carls.trainers.augment.views``) and each row of a batch gets one of them at
    random. With ``cutout``, a random ``cutout`` x ``cutout`` square of each unlabeled
    row's image is set to ``blank`` (the background in the model's input space, a scalar
    or one value per pixel). The image is ``image_shape`` (height, width; one channel),
    by default the examples' own ``H x W (x 1)`` or, when flat, a square of ``side²``.
    """
    import math

    import tensorflow as tf

    element = batches.element_spec[0]["features"].shape[1:]
    shape = tuple(element[1:] if views else element)
    pixels = math.prod(shape)
    if image_shape is None:
        side = math.isqrt(pixels)
        image_shape = image_of(shape) or ((side, side) if len(shape) == 1 else None)
    h, w = image_shape or (0, 0)
    if cutout and (h * w != pixels or not 0 < cutout < min(h, w)):
        raise DatasetError(
            "cutout",
            f"needs one-channel images larger than the square; examples are {shape}"
            + (f", given as {h} x {w} images" if image_shape else ""),
        )
    fill = tf.broadcast_to(tf.constant(np.asarray(blank, np.float32).reshape(-1)), (pixels,))

    def blank_square(f: Any) -> Any:
        b = tf.shape(f)[0]
        rows, cols = tf.range(h)[None, :], tf.range(w)[None, :]
        y0 = tf.random.uniform([b, 1], 0, h - cutout + 1, dtype=tf.int32)
        x0 = tf.random.uniform([b, 1], 0, w - cutout + 1, dtype=tf.int32)
        in_y = (rows >= y0) & (rows < y0 + cutout)
        in_x = (cols >= x0) & (cols < x0 + cutout)
        mask = tf.reshape(in_y[:, :, None] & in_x[:, None, :], (b, pixels))
        flat = tf.where(mask, fill[None, :], tf.reshape(f, (b, pixels)))
        return tf.reshape(flat, tf.shape(f))

    def one(features: dict[str, Any], y: Any) -> Any:
        f = features["features"]
        if views:
            pick = tf.random.uniform(tf.shape(f)[:1], 0, tf.shape(f)[1], dtype=tf.int32)
            f = tf.gather(f, pick, batch_dims=1)
        if cutout:  # the unlabeled rows only
            unlabeled = tf.reshape(y < 0, (-1, *([1] * len(shape))))
            f = tf.where(unlabeled, blank_square(f), f)
        return {**features, "features": f}, y

    return batches.map(one, num_parallel_calls=tf.data.AUTOTUNE)
