"""Input-space augmentations for image-like features (a square of pixels per example).

Views are computed once per job in the raw pixel space, then standardized like the
model's inputs; a training step picks one view per example at random.

* ``shift``: the nine one-pixel translations (zero padding);
* ``affine``: the identity plus random small rotations, scalings, shears and translations
  (bilinear), ``views`` per example.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from carls.trainers.errors import SpecError

AUGMENTATIONS = ("none", "shift", "affine")
F32 = npt.NDArray[np.float32]


def image_side(dim: int) -> int:
    side = math.isqrt(dim)
    if side * side != dim:
        raise SpecError(
            "train.augment",
            f"needs square images; {dim} features are not a square number of pixels",
        )
    return side


def is_square_image(shape: tuple[int, ...]) -> bool:
    """Is an example of this shape one square, one-channel image (flat or not)?"""
    if len(shape) == 1:
        return math.isqrt(shape[0]) ** 2 == shape[0]
    return len(shape) in (2, 3) and shape[0] == shape[1] and shape[2:] in ((), (1,))


def check(augment: str, cutout: int, shape: tuple[int, ...], multimodal: bool = False) -> None:
    """A job's ``train.augment`` and ``train.cutout`` against its examples' ``shape``:
    both work on square one-channel images only (``SpecError`` naming the field)."""
    for key, on in (("augment", augment != "none"), ("cutout", cutout > 0)):
        if on and multimodal:
            raise SpecError(f"train.{key}", "a multimodal job's columns are not augmented")
        if on and not is_square_image(shape):
            raise SpecError(
                f"train.{key}",
                f"works on square one-channel images (side², side x side or side x side x 1 "
                f"per example); this job's examples have shape {shape}",
            )
    side = math.isqrt(math.prod(shape))
    if cutout and cutout >= side:
        raise SpecError("train.cutout", f"must be smaller than the images' side, {side}")


def views(
    kind: str,
    raw: npt.NDArray[np.float64],
    standardize: Callable[[npt.ArrayLike], F32],
    count: int = 16,
    seed: int = 0,
) -> F32:
    """``(n, v, d)`` standardized views of ``raw`` ``(n, d)``; view 0 is the example itself."""
    if kind == "none":
        return standardize(raw)[:, None, :]
    side = image_side(raw.shape[1])
    imgs = raw.reshape(-1, side, side)
    if kind == "shift":
        out = []
        for dy in (0, -1, 1):
            for dx in (0, -1, 1):
                shifted = np.zeros_like(imgs)
                src_y = slice(max(dy, 0), side + min(dy, 0))
                dst_y = slice(max(-dy, 0), side + min(-dy, 0))
                src_x = slice(max(dx, 0), side + min(dx, 0))
                dst_x = slice(max(-dx, 0), side + min(-dx, 0))
                shifted[:, dst_y, dst_x] = imgs[:, src_y, src_x]
                out.append(standardize(shifted.reshape(len(imgs), -1)))
        return np.stack(out, 1)
    if kind == "affine":
        return _affine(imgs, standardize, count, seed)
    raise SpecError("train.augment", f"unknown augmentation {kind!r}; one of {AUGMENTATIONS}")


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
    n, side, _ = imgs.shape
    centre = np.array([(side - 1) / 2, (side - 1) / 2])
    out = np.empty((n, count, side * side), np.float32)
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
