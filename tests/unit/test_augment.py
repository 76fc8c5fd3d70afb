"""Input-space augmentations: the views they make, and which examples they fit."""

from __future__ import annotations

import numpy as np
import pytest

from carls.trainers import augment
from carls.trainers.errors import SpecError


def test_corrupted_views_replace_a_fraction_of_features_by_other_examples_values() -> None:
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(500, 8)) + np.arange(8) * 100  # each column its own range
    out = augment.views("corrupt", raw, lambda x: np.asarray(x, np.float32), 5, corruption=0.3)
    assert out.shape == (500, 5, 8) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, 0], raw.astype(np.float32))  # view 0: the example
    changed = out[:, 1:] != raw.astype(np.float32)[:, None, :]
    assert 0.25 < changed.mean() < 0.31  # 0.3, less the few draws of the example itself
    for j in range(8):  # a replaced value is the same feature of some training example
        column = set(raw[:, j].astype(np.float32).tolist())
        assert set(out[:, 1:, j].ravel().tolist()) <= column
    again = augment.views("corrupt", raw, lambda x: np.asarray(x, np.float32), 5, corruption=0.3)
    np.testing.assert_array_equal(out, again)  # the job's seed fixes its views


def test_image_views_follow_the_images_shape() -> None:
    raw = np.arange(2 * 12, dtype=np.float64).reshape(2, 12)
    out = augment.views("shift", raw, lambda x: np.asarray(x, np.float32), image=(3, 4))
    assert out.shape == (2, 9, 12)
    shifted = out[0, 1].reshape(3, 4)  # dy 0, dx -1: the image moves right, zero padded
    np.testing.assert_array_equal(shifted[:, 0], 0)
    np.testing.assert_array_equal(shifted[:, 1:], raw[0].reshape(3, 4)[:, :3])


@pytest.mark.parametrize(
    ("augment_", "cutout", "image", "field", "words"),
    [
        ("affine", 0, None, "train.augment", "augment: affine works on images"),
        ("none", 2, None, "train.cutout", "cutout works on images"),
        ("none", 4, (4, 6), "train.cutout", "smaller than the images' sides, 4 x 6"),
    ],
)
def test_check_names_what_does_not_fit(
    augment_: str, cutout: int, image: tuple[int, int] | None, field: str, words: str
) -> None:
    with pytest.raises(SpecError) as info:
        augment.check(augment_, cutout, image, (24,))
    assert info.value.field == field and words in info.value.problem


def test_corruption_fits_any_features_and_image_augmentations_declared_images() -> None:
    augment.check("corrupt", 0, None, (5,))
    augment.check("affine", 3, (4, 6), (24,))
    assert augment.image_of((8, 8, 1)) == (8, 8) and augment.image_of((64,)) is None
    assert augment.image_of((8, 8, 3)) is None
