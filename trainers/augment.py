"""Input-space augmentations: views of each training example, one picked per step.

Views are computed once per job in the raw input space, then standardized like the
model's inputs; a training step picks one view per example at random.

For images (one channel, ``height x width``: ``Dataset.image_shape``):

* ``shift``: the nine one-pixel translations (zero padding);
* ``affine``: the identity plus random small rotations, scalings, shears and translations
  (bilinear), ``views`` per example.

For any features, tabular ones included:

* ``corrupt``: the identity plus views in which a random ``corruption`` fraction of the
  features take the values of the same features in other random training examples: a
  draw from each feature's empirical marginal, as in SCARF (Bahri et al., 2022) and VIME
  (Yoon et al., 2020). The view stays a plausible example with no image prior.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from carls.trainers.errors import SpecError

AUGMENTATIONS = ("none", "shift", "affine", "corrupt")
IMAGE_AUGMENTATIONS = ("shift", "affine")
"""The augmentations that need images (``cutout`` too)."""
F32 = npt.NDArray[np.float32]
ImageShape = tuple[int, int]


def image_of(shape: tuple[int, ...]) -> ImageShape | None:
    """``(height, width)`` when examples of ``shape`` are one-channel images by their
    shape alone (``H x W`` or ``H x W x 1``); flat examples never are (a square number of
    features is no image: ``dataset.image_shape`` says when flat features are pixels)."""
    if len(shape) == 2 or (len(shape) == 3 and shape[2] == 1):
        return int(shape[0]), int(shape[1])
    return None


def check(
    augment: str,
    cutout: int,
    image: ImageShape | None,
    shape: tuple[int, ...],
    multimodal: bool = False,
) -> None:
    """A job's ``train.augment`` and ``train.cutout`` against its examples (``shape``
    each, ``image``: their image shape, None when they are not images); ``SpecError``
    naming the field to fix."""
    for key, on in (("augment", augment != "none"), ("cutout", cutout > 0)):
        if on and multimodal:
            raise SpecError(f"train.{key}", "a multimodal job's columns are not augmented")
    for key, what, on in (
        ("augment", f"augment: {augment}", augment in IMAGE_AUGMENTATIONS),
        ("cutout", "cutout", cutout > 0),
    ):
        if on and image is None:
            raise SpecError(
                f"train.{key}",
                f"{what} works on images, and this job's examples (shape {shape}) are not "
                "images: for tabular features use augment: corrupt (and no cutout); if the "
                "flat features are pixels, say so with dataset.image_shape: [height, width]",
            )
    if cutout and image is not None and cutout >= min(image):
        raise SpecError(
            "train.cutout", f"must be smaller than the images' sides, {image[0]} x {image[1]}"
        )
    if augment not in AUGMENTATIONS:
        raise SpecError(
            "train.augment", f"unknown augmentation {augment!r}; one of {AUGMENTATIONS}"
        )


def views(
    kind: str,
    raw: npt.NDArray[np.float64],
    standardize: Callable[[npt.ArrayLike], F32],
    count: int = 16,
    seed: int = 0,
    *,
    image: ImageShape | None = None,
    corruption: float = 0.3,
) -> F32:
    """``(n, v, d)`` standardized views of ``raw`` ``(n, d)``; view 0 is the example itself.
    ``image`` is the ``(height, width)`` of the image augmentations' examples (default:
    square, ``sqrt(d)`` a side)."""
    if kind == "none":
        return standardize(raw)[:, None, :]
    if kind == "corrupt":
        return _corrupt(raw, standardize, count, seed, corruption)
    if kind not in IMAGE_AUGMENTATIONS:
        raise SpecError("train.augment", f"unknown augmentation {kind!r}; one of {AUGMENTATIONS}")
    h, w = image if image is not None else _square(raw.shape[1])
    if h * w != raw.shape[1]:
        raise SpecError("train.augment", f"{raw.shape[1]} features are not {h} x {w} pixels")
    imgs = raw.reshape(-1, h, w)
    if kind == "shift":
        out = []
        for dy in (0, -1, 1):
            for dx in (0, -1, 1):
                shifted = np.zeros_like(imgs)
                src_y = slice(max(dy, 0), h + min(dy, 0))
                dst_y = slice(max(-dy, 0), h + min(-dy, 0))
                src_x = slice(max(dx, 0), w + min(dx, 0))
                dst_x = slice(max(-dx, 0), w + min(-dx, 0))
                shifted[:, dst_y, dst_x] = imgs[:, src_y, src_x]
                out.append(standardize(shifted.reshape(len(imgs), -1)))
        return np.stack(out, 1)
    return _affine(imgs, standardize, count, seed)


def _square(dim: int) -> ImageShape:
    side = math.isqrt(dim)
    if side * side != dim:
        raise SpecError(
            "train.augment",
            f"needs images; {dim} features are not a square number of pixels "
            "(give the image's shape)",
        )
    return side, side


def _corrupt(
    raw: npt.NDArray[np.float64],
    standardize: Callable[[npt.ArrayLike], F32],
    count: int,
    seed: int,
    corruption: float,
) -> F32:
    rng = np.random.default_rng(2000 + seed)
    n, d = raw.shape
    out = np.empty((n, count, d), np.float32)
    out[:, 0] = standardize(raw)
    columns = np.arange(d)[None, :]
    for j in range(1, count):
        replaced = rng.random((n, d)) < corruption
        donors = rng.integers(0, n, size=(n, d))  # per feature, another example's value
        out[:, j] = standardize(np.where(replaced, raw[donors, columns], raw))
    return out


def _affine(
    imgs: npt.NDArray[np.float64],
    standardize: Callable[[npt.ArrayLike], F32],
    count: int,
    seed: int,
    rot_deg: float = 15.0,
    scale: float = 0.12,
    shear: float = 0.15,
    shift: float = 1.0,
) -> F32:
    from scipy.ndimage import affine_transform

    rng = np.random.default_rng(1000 + seed)
    n, h, w = imgs.shape
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    out = np.empty((n, count, h * w), np.float32)
    out[:, 0] = standardize(imgs.reshape(n, -1))
    for j in range(1, count):
        warped = np.empty_like(imgs)
        for i in range(n):
            a = np.deg2rad(rng.uniform(-rot_deg, rot_deg))
            s = rng.uniform(1 - scale, 1 + scale, 2)
            sh = rng.uniform(-shear, shear)
            m = (
                np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
                @ np.array([[1.0, sh], [0.0, 1.0]])
                @ np.diag(1 / s)
            )
            offset = centre - m @ centre + rng.uniform(-shift, shift, 2)
            warped[i] = affine_transform(
                imgs[i], m, offset=offset, order=1, mode="constant", cval=0.0
            )
        out[:, j] = standardize(warped.reshape(n, -1))
    return out
